"""FD-vs-reward Pareto fronts and an honest, numbers-only statement of which front wins where.

A point is a dict with ``fd`` (lower is better) and ``reward`` (higher is better). Point p dominates q
when ``p.fd <= q.fd`` and ``p.reward >= q.reward`` with at least one strict.
"""
from __future__ import annotations


def dominates(p: dict, q: dict) -> bool:
    return p["fd"] <= q["fd"] and p["reward"] >= q["reward"] and (p["fd"] < q["fd"] or p["reward"] > q["reward"])


def pareto_front(points: list[dict]) -> list[dict]:
    """Non-dominated points, sorted by increasing reward (so FD increases along the front)."""
    front = [p for p in points if not any(dominates(q, p) for q in points if q is not p)]
    uniq = {}
    for p in front:  # drop exact duplicates
        uniq.setdefault((p["fd"], p["reward"]), p)
    return sorted(uniq.values(), key=lambda p: (p["reward"], p["fd"]))


def best_fd_at(front: list[dict], reward_level: float) -> float | None:
    """Lowest FD among front points whose reward is at least ``reward_level`` (None if unreachable)."""
    ok = [p["fd"] for p in front if p["reward"] >= reward_level]
    return min(ok) if ok else None


def reward_levels(fronts: dict[str, list[dict]], n: int = 5) -> list[float]:
    """``n`` reward levels evenly spaced from the lowest front-start reward to the highest reward reached."""
    lo = min(min(p["reward"] for p in f) for f in fronts.values() if f)
    hi = max(max(p["reward"] for p in f) for f in fronts.values() if f)
    if n < 2 or hi <= lo:
        return [lo]
    return [lo + (hi - lo) * i / (n - 1) for i in range(n)]


def compare(fronts: dict[str, list[dict]], reference: str = "rmmd", n_levels: int = 5) -> dict:
    """Which front wins where.

    Returns ``{"levels": [{"reward": r, "best": {method: fd or None}, "winner": m, "margin": fd gap to
    the runner-up}], "dominated_share": {a: {b: share of a's front points dominated by b's front}},
    "summary": [sentences]}``. The sentences state facts only (no adjectives chosen by hand).
    """
    fronts = {k: v for k, v in fronts.items() if v}
    levels = []
    for r in reward_levels(fronts, n_levels):
        best = {m: best_fd_at(f, r) for m, f in fronts.items()}
        reached = sorted((fd, m) for m, fd in best.items() if fd is not None)
        winner = reached[0][1] if reached else None
        margin = (reached[1][0] - reached[0][0]) if len(reached) > 1 else None
        levels.append({"reward": r, "best": best, "winner": winner, "margin": margin})
    share = {a: {b: (sum(any(dominates(q, p) for q in fb) for p in fa) / len(fa)) for b, fb in fronts.items() if b != a}
             for a, fa in fronts.items()}
    summary = []
    for lv in levels:
        if lv["winner"] is None:
            continue
        m = f" (next best FD higher by {lv['margin']:.3g})" if lv["margin"] is not None else " (no other method reaches it)"
        summary.append(f"reward >= {lv['reward']:.3g}: lowest FD {lv['best'][lv['winner']]:.3g} by {lv['winner']}{m}")
    if reference in fronts:
        for b in fronts:
            if b == reference:
                continue
            s_ab, s_ba = share[b][reference], share[reference][b]
            if s_ab == 1.0 and s_ba == 0.0:
                verdict = f"{reference} dominates {b}: every point of {b}'s front is dominated by {reference}'s"
            elif s_ba == 1.0 and s_ab == 0.0:
                verdict = f"{b} dominates {reference}: every point of {reference}'s front is dominated by {b}'s"
            else:
                verdict = (f"{reference} vs {b}: neither dominates; {reference} dominates {s_ab:.0%} of {b}'s front "
                           f"points, {b} dominates {s_ba:.0%} of {reference}'s")
            summary.append(verdict)
    winners = {lv["winner"] for lv in levels if lv["winner"]}
    if reference in fronts:
        summary.append(f"{reference} has the lowest FD at {sum(lv['winner'] == reference for lv in levels)} of "
                       f"{len(levels)} reward levels" + ("" if winners != {reference} else " (all of them)"))
    return {"levels": levels, "dominated_share": share, "summary": summary}
