"""The memory claim, as a test: RMMD's saved activations do not grow with K; DRaFT-K's grow ~linearly."""
import importlib.util
import pathlib

spec = importlib.util.spec_from_file_location(
    "bench_memory", pathlib.Path(__file__).resolve().parents[1] / "benchmarks" / "bench_memory.py")
bench_memory = importlib.util.module_from_spec(spec)
spec.loader.exec_module(bench_memory)


def test_saved_activations_rmmd_constant_draft_linear_in_k():
    rows = bench_memory.bench(Ks=(1, 2, 4), batch=4, repeats=1)
    rmmd = {r["K"]: r["saved_MB"] for r in rows if r["method"].startswith("RMMD")}
    draft = {r["K"]: r["saved_MB"] for r in rows if r["method"].startswith("DRaFT")}
    assert all(r["grad_calls"] == (1 if r["method"].startswith("RMMD") else r["K"]) for r in rows)
    assert max(rmmd.values()) <= 1.05 * min(rmmd.values()), rmmd
    step = draft[2] - draft[1]  # one more differentiated UNet call
    assert step > 0.5 * draft[1] and abs((draft[4] - draft[2]) - 2 * step) < 0.1 * step, draft
    assert "| RMMD on-policy | 4 | 1 |" in bench_memory.table(rows)
