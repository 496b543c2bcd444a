"""benchmarks/bench_step.py --smoke: every row runs, our call counts match the hooks, the floor replays
exactly the recorded calls (no wall-clock assertions: times are only checked to exist)."""
import importlib.util
import json
import math
import pathlib
import sys

import pytest

pytest.importorskip("diffusers")
spec = importlib.util.spec_from_file_location(
    "bench_step", pathlib.Path(__file__).resolve().parents[1] / "benchmarks" / "bench_step.py")
bench_step = importlib.util.module_from_spec(spec)
sys.modules["bench_step"] = bench_step  # dataclasses resolve their module through sys.modules
spec.loader.exec_module(bench_step)


def test_smoke_run_table_and_counts(tmp_path, capsys):
    out = tmp_path / "step.json"
    assert bench_step.main(["--smoke", "--threads", "1", "--json", str(out)]) == 0
    text = capsys.readouterr().out
    assert "| config | impl | backend |" in text and "peer not run" in text
    res = json.loads(out.read_text())
    rows = {(r["config"], r["impl"], r["backend"]): r for r in res["rows"]}
    for name, K in (("2d", 2), ("unet-xs", 1), ("large", 1)):
        ours = [r for r in res["rows"] if r["config"] == name and r["impl"] == "ours"]
        assert {r["backend"] for r in ours} >= {"reference"} and len(ours) >= 1
        floor, plus = rows[(name, "floor", "-")], rows[(name, "floor+clip+EMA", "-")]
        for r in ours + [floor, plus]:
            # continuous on-policy: K rollout calls + student + teacher + auxiliary; 2 with grad
            assert r["fwd"] == K + 3 and r["grad_calls"] == 2, r
            assert r["ms_median"] > 0 and math.isfinite(r["ms_median"]) and r["cpu_ms_median"] > 0
        # forward-equivalents: calibration rows (one no-grad forward, one forward+backward of the same call)
        fwd, fb = rows[(name, "net fwd", "-")], rows[(name, "net fwd+bwd", "-")]
        assert (fwd["fwd"], fwd["grad_calls"], fb["fwd"], fb["grad_calls"]) == (1, 0, 1, 1)
        c = res["fwd_bwd_ratio"][name]
        assert c == pytest.approx(fb["ms_median"] / fwd["ms_median"])
        ref = fwd["call_rows"][0]
        for r in ours + [floor, plus]:
            assert len(r["call_rows"]) == r["fwd"] and sum(r["call_grad"]) == r["grad_calls"]
            want = sum(n / ref * (c if g else 1.0) for n, g in zip(r["call_rows"], r["call_grad"]))
            assert r["fwd_eq"] == pytest.approx(want) and r["ms_per_fwd_eq"] == pytest.approx(r["ms_median"] / want)
    assert "fwd-eq / iter" in text and "ms / fwd-eq" in text and "overhead vs floor+clip+EMA" in text
    for r in res["rows"]:  # paired overheads: for our and the peer's rows, not for floors / calibration
        has = r["impl"].startswith("ours") and not r["config"].endswith(("K=1", "K=2"))
        assert (r["overhead_vs_floor"] is not None) == has, r
        if has:
            assert r["overhead_vs_floor"] > 0 and r["overhead_vs_floor_plus"] > 0
            lo, hi = r["overhead_vs_floor_ci95"]  # one round in the smoke run: the interval is the point
            assert lo <= r["overhead_vs_floor"] <= hi
        else:
            assert r["overhead_vs_floor_ci95"] is None
    assert "95% bootstrap interval over rounds" in text
    for impl in ("ours, fused Adam", "ours, foreach Adam"):
        knob = [r for r in res["rows"] if r["impl"] == impl]
        assert [r["config"] for r in knob] == ["unet-xs"] and (knob[0]["fwd"], knob[0]["grad_calls"]) == (4, 2)
    sweep = {r["config"]: r["fwd"] for r in res["rows"] if " K=" in r["config"]}
    assert sweep == {"2d K=1": 4, "2d K=2": 5}


def test_floor_replays_the_recorded_calls():
    import torch

    ours, floor, _, same, *calibration = bench_step.ours_rows(bench_step.SMOKE["2d"], torch.device("cpu"),
                                                              ["reference"])
    assert [r.impl for r in calibration] == ["net fwd", "net fwd+bwd"]
    assert floor.impl == "floor" and isinstance(floor.fn, bench_step.Floor)
    # the floor is a plain trainer: torch's own Adam (the engine's hyperparameters, its own state); the
    # same-optimiser floor steps the engine's FusedAdam objects
    from rmmd_core.adam import FusedAdam
    assert all(type(opt) is torch.optim.Adam and opt.defaults["foreach"] for _, opt in floor.fn.trained)
    assert same.impl == bench_step.SAME_OPT_FLOOR and same.fn.calls is floor.fn.calls
    assert all(isinstance(opt, FusedAdam) for _, opt in same.fn.trained)
    for (_, plain), (_, engine_opt) in zip(floor.fn.trained, same.fn.trained):
        assert [p for g in plain.param_groups for p in g["params"]] == engine_opt.param_groups[0]["params"]
        for k in ("lr", "betas", "eps", "weight_decay"):
            assert plain.defaults[k] == engine_opt.defaults[k]
    counter = {"fwd": 0, "grad": 0}

    def hook(mod, args, kwargs):
        counter["fwd"] += 1
        counter["grad"] += int(torch.is_grad_enabled())

    mods = {id(c[0]): c[0] for c in floor.fn.calls}
    assert len(mods) == 3  # student, teacher, auxiliary
    handles = [m.register_forward_pre_hook(hook, with_kwargs=True) for m in mods.values()]
    before = [p.detach().clone() for _, opt in floor.fn.trained for g in opt.param_groups for p in g["params"]]
    floor.fn()
    for h in handles:
        h.remove()
    assert counter == {"fwd": ours.fwd, "grad": 2}
    after = [p for _, opt in floor.fn.trained for g in opt.param_groups for p in g["params"]]
    assert any(not torch.equal(a, b) for a, b in zip(before, after)), "the floor steps the optimisers"


def test_floor_plus_clips_and_updates_the_ema(monkeypatch):
    """floor+clip+EMA: the floor's calls, plus clip_grad_norm_ before each optimiser step (max norm =
    grad_clip) and a foreach-lerp EMA of the student after its step."""
    import torch

    _, floor, plus, *_ = bench_step.ours_rows(bench_step.SMOKE["2d"], torch.device("cpu"), ["reference"])
    assert plus.impl == "floor+clip+EMA" and plus.fn.calls is floor.fn.calls and plus.fn.clip == 1.0
    clipped = []
    real_clip = torch.nn.utils.clip_grad_norm_

    def counting_clip(params, max_norm, *a, **kw):
        params = list(params)
        clipped.append((len(params), max_norm))
        return real_clip(params, max_norm, *a, **kw)

    monkeypatch.setattr(torch.nn.utils, "clip_grad_norm_", counting_clip)
    ema = plus.fn.ema
    before = [p.clone() for p in ema.ema_p]
    plus.fn()
    n_params = [len(list(mod.parameters())) for mod, _ in plus.fn.trained]
    assert clipped == [(n, 1.0) for n in n_params]
    # the EMA moved towards the student: ema' = ema + (1 - decay) (p - ema)
    for b, e, p in zip(before, ema.ema_p, ema.p):
        torch.testing.assert_close(e, torch.lerp(b, p.detach(), ema.weight))
    assert any(not torch.equal(b, e) for b, e in zip(before, ema.ema_p))


def test_graph_rollout_row_takes_its_calls_from_the_metrics():
    """The ``ours, graph rollout`` row (timed on CUDA only) counts calls from the engine's metrics, since a
    replayed CUDA graph runs no forward hooks; on CPU its rollout runs eagerly with the same counts."""
    import torch

    (row,) = bench_step.ours_rows(bench_step.SMOKE["unet-xs"], torch.device("cpu"), ["reference"],
                                  with_floor=False, graph_rollout=True)
    assert row.impl == "ours, graph rollout" and (row.fwd, row.grad_calls) == (4, 2) and row.calls == []
    row.fn()


def test_time_rows_pairs_calls_within_rounds_and_alternates_order():
    """Every row of a configuration runs the same number of calls per round (sized on its ``ours`` row's
    warm-up), so per-round pairs stay aligned; the row order flips every round."""
    import time as _time

    import torch

    log = []

    def row(config, impl, cost):
        def fn():
            log.append((config, impl))
            _time.sleep(cost)
        return bench_step.Row(config, impl, "-", 1, fn)

    rows = [row("cheap", "ours", 0.002), row("cheap", "floor", 0.002), row("dear", "ours", 0.03),
            row("dear", "floor", 0.03)]
    bench_step.time_rows(rows, 2, torch.device("cpu"), min_round_s=0.01)
    n_cheap = round(0.01 / 0.002)
    assert [len(r.times) for r in rows] == [2 * n_cheap, 2 * n_cheap, 2, 2]
    timed = log[len(rows):]  # after the warm-up calls
    first = [c for i, c in enumerate(timed) if i == 0 or c != timed[i - 1]]
    # runs of the same row collapsed: the second round starts with the row the first one ended with
    assert first == [("cheap", "ours"), ("cheap", "floor"), ("dear", "ours"), ("dear", "floor"),
                     ("dear", "ours"), ("cheap", "floor"), ("cheap", "ours")]
    assert timed.count(("dear", "floor")) == 2 and timed.count(("cheap", "ours")) == 2 * n_cheap


def test_paired_interval_brackets_the_median_and_narrows_with_rounds():
    """paired_ci: a reproducible bootstrap interval of the median per-round ratio."""
    import random

    def rows(n, seed):
        rng = random.Random(seed)
        floor = [1.0 + 0.1 * rng.random() for _ in range(n)]
        ours = [f * (1.05 + 0.04 * (rng.random() - 0.5)) for f in floor]
        mk = lambda t: bench_step.Row("c", "ours", "cpu", 1, fn=None, times=t)  # noqa: E731
        return mk(ours), mk(floor)

    few, many = rows(15, 0), rows(300, 0)
    lo, hi = bench_step.paired_ci(*few)
    assert lo <= bench_step.paired_ratio(*few) <= hi and (lo, hi) == bench_step.paired_ci(*few)
    lo2, hi2 = bench_step.paired_ci(*many)
    assert 1.03 < lo2 <= 1.05 <= hi2 < 1.07 and hi2 - lo2 < hi - lo
    empty = bench_step.Row("c", "ours", "cpu", 1, fn=None)
    assert all(math.isnan(x) for x in bench_step.paired_ci(empty, empty))
