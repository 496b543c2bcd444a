"""benchmarks/bench_ops.py --smoke: every registered case times, the memory probe measures, files are written.

No timing assertions (speed targets live in the benchmark's own report); this checks that the benchmark
runs every op on every available backend and that its numbers are real measurements."""

from __future__ import annotations

import importlib.util
import json
import pathlib
import sys

import pytest
import torch

_PATH = pathlib.Path(__file__).resolve().parents[1] / "benchmarks" / "bench_ops.py"
sys.path.insert(0, str(_PATH.parent))
_spec = importlib.util.spec_from_file_location("bench_ops", _PATH)
bench_ops = importlib.util.module_from_spec(_spec)
sys.modules.setdefault("bench_ops", bench_ops)  # dataclasses resolve annotations through sys.modules
_spec.loader.exec_module(bench_ops)


def test_smoke_run_covers_every_case_and_writes_json_and_png(tmp_path, capsys):
    out = tmp_path / "bench.json"
    assert bench_ops.main(["--smoke", "--out", str(out)]) == 0
    data = json.loads(out.read_text())
    assert (tmp_path / "bench.png").stat().st_size > 1000
    rows = data["rows"]
    assert {r["case"] for r in rows} == set(bench_ops.CASES)
    for r in rows:
        assert r["ms"] > 0 and r["gbs"] > 0 and r["copy_gbs"] > 0 and r["extra_mib"] is not None
        assert r["provider"] != "reference_compiled"  # --smoke skips compilation
    text = capsys.readouterr().out
    assert "| case | dtype | elements | provider |" in text and "Targets" in text


def test_memory_probe_sees_temporaries_and_not_outputs():
    n = 1 << 16
    x = torch.randn(n)
    # an output only: no extra memory beyond a few bytes
    assert bench_ops.peak_extra_bytes(lambda: x * 2, "cpu") < 1024  # (a 0-d scalar operand may appear)
    # two float32 temporaries alive at once, then one output
    assert bench_ops.peak_extra_bytes(lambda: (x * 2 + 1) * 3, "cpu") >= 4 * n
    # the eager Philox reference materialises int64 counters; the fused CPU kernel needs none
    case = bench_ops.CASES["renoise"]
    args = case.inputs(n, torch.float32, "cpu")
    assert bench_ops.peak_extra_bytes(lambda: case.reference(args), "cpu") >= 8 * n
    if "cpu" in bench_ops.providers("cpu", "renoise"):
        assert bench_ops.peak_extra_bytes(lambda: case.fused(args, "cpu"), "cpu") < 4096


def test_register_case_rejects_duplicates():
    with pytest.raises(ValueError, match="already registered"):
        bench_ops.register_case("renoise", bench_ops.CASES["renoise"])


def test_rewards_ema_smoke_run_times_every_case_against_a_matched_copy(tmp_path, capsys):
    """benchmarks/bench_rewards_ema.py --smoke (make bench runs it): every case and provider times, and the
    copy baseline moves the same bytes as the case."""
    path = _PATH.parent / "bench_rewards_ema.py"
    spec = importlib.util.spec_from_file_location("bench_rewards_ema", path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    out = tmp_path / "rewards.json"
    assert mod.main(["--smoke", "--dtypes", "float32", "--out", str(out)]) == 0
    rows = json.loads(out.read_text())["rows"]
    assert {r["case"] for r in rows} == set(mod.CASES)
    for r in rows:
        assert r["ms"] > 0 and r["gbs"] > 0 and r["copy_gbs"] > 0
    assert "| case | dtype | elements | provider |" in capsys.readouterr().out


def test_grad_norm_smoke_run_times_both_ops_and_reports_the_norm_difference(tmp_path, capsys):
    """benchmarks/bench_grad_norm.py --smoke (make bench runs it): both ops time against eager and compiled
    torch and the fused backend, and the norm's relative difference to get_total_norm is tiny."""
    path = _PATH.parent / "bench_grad_norm.py"
    spec = importlib.util.spec_from_file_location("bench_grad_norm", path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    out = tmp_path / "grad_norm.json"
    assert mod.main(["--smoke", "--out", str(out)]) == 0
    rows = json.loads(out.read_text())["rows"]
    assert {r["case"].split(" ")[0] for r in rows} == set(mod.CASES)
    assert {"reference", "reference_compiled"} <= {r["provider"] for r in rows}
    for r in rows:
        assert r["ms"] > 0 and r["gbs"] > 0 and r["copy_gbs"] > 0
        assert 0.0 <= r["norm_rel_diff"] < 1e-5
    assert "Norm vs torch.nn.utils.get_total_norm" in capsys.readouterr().out


def test_adam_smoke_run_times_every_provider(tmp_path, capsys):
    """benchmarks/bench_adam.py --smoke (make bench runs it): the fused optimiser update times against eager and
    compiled torch, torch's fused Adam and the fused backend, all doing the same clip + Adam + EMA update."""
    path = _PATH.parent / "bench_adam.py"
    spec = importlib.util.spec_from_file_location("bench_adam", path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    out = tmp_path / "adam.json"
    assert mod.main(["--smoke", "--out", str(out)]) == 0
    rows = json.loads(out.read_text())["rows"]
    assert {"reference", "reference_compiled", "torch_fused"} <= {r["provider"] for r in rows}
    for r in rows:
        assert r["case"].startswith("adam_update") and r["ms"] > 0 and r["gbs"] > 0 and r["copy_gbs"] > 0
    assert "| case | dtype | elements | provider |" in capsys.readouterr().out


def test_adam_providers_compute_the_same_update():
    """Every timed provider of bench_adam.py makes the same update (clip, Adam, EMA) on the same state: the
    benchmark compares equal work."""
    path = _PATH.parent / "bench_adam.py"
    spec = importlib.util.spec_from_file_location("bench_adam", path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    import torch

    params = mod.parameter_list("flat-64k", torch.float32, "cpu")[:7]
    torch.manual_seed(0)
    state = mod._state([p.clone() for p in params])
    results = {}
    for provider in ("reference", "torch_fused", "reference_compiled") + (("cpu",) if "cpu" in mod.providers(
            "cpu", "adam_update") else ()):
        copy = [[t.clone() for t in lst] for lst in state]
        mod._fn(provider, copy, {})()
        results[provider] = copy
    for provider, got in results.items():
        for lst, ref in zip(got, results["reference"]):
            for a, b in zip(lst, ref):
                torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-7, msg=provider)
