"""Pareto-front helpers: non-dominated sets, FD at a reward level, and the dominance statement."""
from rmmd_core.pareto import best_fd_at, compare, dominates, pareto_front


def P(fd, r, m="a"):
    return {"fd": fd, "reward": r, "method": m}


def test_front_keeps_only_non_dominated_points_sorted_by_reward():
    pts = [P(1, 0), P(2, 1), P(1.5, 0.5), P(3, 0.5), P(2.5, 1.0), P(1, -1)]
    front = pareto_front(pts)
    assert [(p["fd"], p["reward"]) for p in front] == [(1, 0), (1.5, 0.5), (2, 1)]
    assert dominates(P(1, 1), P(1, 0)) and not dominates(P(1, 0), P(1, 0))


def test_best_fd_at_a_reward_level():
    front = [P(1, 0), P(2, 1)]
    assert best_fd_at(front, 0.5) == 2 and best_fd_at(front, -1) == 1 and best_fd_at(front, 2) is None


def test_compare_states_dominance_both_ways():
    good = [P(1, 0), P(1.2, 1), P(1.5, 2)]
    bad = [P(1.1, 0), P(2, 1)]
    out = compare({"rmmd": good, "draft": bad}, n_levels=3)
    assert out["dominated_share"]["draft"]["rmmd"] == 1.0 and out["dominated_share"]["rmmd"]["draft"] == 0.0
    assert any(s.startswith("rmmd dominates draft") for s in out["summary"])
    assert [lv["winner"] for lv in out["levels"]] == ["rmmd"] * 3
    # reversed roles: the statement says the baseline wins, it does not hide it
    out = compare({"rmmd": bad, "draft": good}, n_levels=3)
    assert any(s.startswith("draft dominates rmmd") for s in out["summary"])
    assert "0 of 3" in out["summary"][-1]


def test_compare_mixed_fronts():
    a = [P(1, 0), P(3, 2)]
    b = [P(0.5, -0.5), P(2, 1.5), P(4, 2.5)]
    out = compare({"rmmd": a, "x": b}, n_levels=4)
    assert any("neither dominates" in s for s in out["summary"])
