"""Benchmark the fused step ops (method.md §e K2, K5, K6) as GB/s beside a copy of the same size.

Providers (one run, same machine):
  reference           eager ``rmmd_core.ops.reference.<op>_ref``
  reference_compiled  ``torch.compile(<op>_ref, dynamic=False)`` (compiled once per size and dtype, outside timing)
  cpu                 the ATen kernel (CPU tensors)
  triton / cuda       on CUDA tensors only (the Triton interpreter is a correctness tool, never timed)

Cases and bytes moved per call (reads + writes of N-element tensors; (B,) scalars ignored):
  rmmd_cotangent      x0, m_stu, m_ref, g_R, anchor read, g written: 6 N; ``rmmd_cotangent_dmd`` adds the
                      normaliser's pass over x0, m_ref: 8 N
  aux_loss            o, x0, m_ref read, grad written: 4 N
  renoise             x read, x_t written: 2 N (noise generated in-kernel)
The copy baseline is ``dst.copy_(src)`` of N elements (2 N). GB/s = bytes / median time; "% copy" is
that over the copy's GB/s, so 100% means the op moves its bytes as fast as a plain copy.

    python benchmarks/bench_ops.py --smoke                  # tiny sizes, no JSON unless --out
    python benchmarks/bench_ops.py --sizes 4194304 --dtypes float32 bfloat16
Results: a markdown table on stdout and JSON under benchmarks/results/ (``--overwrite`` to replace).
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import sys

import torch
import torch.utils.benchmark as benchmark

from rmmd_core import ops
from rmmd_core.ops import reference as ref

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from bench_posterior_step import _environment  # noqa: E402  (device, versions, commit, date)

DEFAULT_SIZES = [2**16, 2**20, 2**22, 2**24]
SMOKE_SIZES = [2**12, 2**14]
BATCH = 4
SEED = 1234
SCAL = dict(lam=0.7, lam_reg=0.35, scale=1e-3)
CASES = {  # name -> (op, N-element tensors moved per call)
    "rmmd_cotangent": ("rmmd_cotangent", 6),
    "rmmd_cotangent_dmd": ("rmmd_cotangent", 8),
    "aux_loss": ("aux_loss", 4),
    "renoise": ("renoise", 2),
}


def _inputs(case: str, numel: int, dtype: torch.dtype, device: str):
    D = numel // BATCH
    t = lambda: torch.randn(BATCH, D, device=device).to(dtype)  # noqa: E731
    w = torch.rand(BATCH, dtype=torch.float64, device=device) + 0.5
    if case.startswith("rmmd_cotangent"):
        return (t(), t(), t(), t(), t(), w)
    if case == "aux_loss":
        return (t(), t(), t(), w)
    return (t(), w, torch.rand(BATCH, dtype=torch.float64, device=device) + 0.2)


def _fn(case: str, provider: str, args, compiled_cache: dict):
    dmd = case.endswith("_dmd")
    op = CASES[case][0]
    if provider in ("reference", "reference_compiled"):
        base = {"rmmd_cotangent": lambda *a: ref.rmmd_cotangent_ref(*a, **SCAL, dmd=dmd, dmd_eps=1e-4),
                "aux_loss": ref.aux_loss_ref,
                "renoise": lambda x, a, s: ref.renoise_ref(x, a, s, SEED, 0)}[op]
        if provider == "reference_compiled":
            key = (case, tuple(args[0].shape), args[0].dtype)
            if key not in compiled_cache:
                compiled_cache[key] = torch.compile(base, dynamic=False)
            base = compiled_cache[key]
        return lambda: base(*args)
    call = {"rmmd_cotangent": lambda: ops.rmmd_cotangent(*args, **SCAL, dmd=dmd, dmd_eps=1e-4, backend=provider),
            "aux_loss": lambda: ops.aux_loss(*args, backend=provider),
            "renoise": lambda: ops.renoise(*args, SEED, 0, backend=provider)}[op]
    return call


def _time(fn, device: str, min_run_time: float) -> float:
    fn()  # warm-up (and compilation) outside the timed region
    if device == "cuda":
        import triton.testing

        return triton.testing.do_bench(fn, quantiles=[0.5, 0.2, 0.8])[0] * 1e-3  # median, ms -> s
    timer = benchmark.Timer(stmt="fn()", globals={"fn": fn}, num_threads=torch.get_num_threads())
    return timer.blocked_autorange(min_run_time=min_run_time).median


def _providers(device: str, op: str) -> list[str]:
    names = ["reference", "reference_compiled"]
    probe = torch.empty(1, device=device)
    for name in ("cpu", "triton", "cuda"):
        if name in ops.dispatch.auto_backends(op, probe) or (name == "triton" and device == "cuda" and
                                                               name in ops.available_backends(op, probe)):
            names.append(name)
    return names


def run(sizes, dtypes, device: str, min_run_time: float) -> list[dict]:
    rows, cache = [], {}
    for dtype in dtypes:
        for numel in sizes:
            src = torch.randn(numel, device=device).to(dtype)
            dst = torch.empty_like(src)
            copy_s = _time(lambda: dst.copy_(src), device, min_run_time)
            copy_gbs = 2 * numel * src.element_size() / copy_s / 1e9
            for case, (op, n_moved) in CASES.items():
                args = _inputs(case, numel, dtype, device)
                times = {}
                for provider in _providers(device, op):
                    times[provider] = _time(_fn(case, provider, args, cache), device, min_run_time)
                nbytes = n_moved * numel * src.element_size()
                for provider, seconds in times.items():
                    gbs = nbytes / seconds / 1e9
                    rows.append(dict(case=case, dtype=str(dtype).replace("torch.", ""), numel=numel, provider=provider,
                                     ms=seconds * 1e3, gbs=gbs, copy_gbs=copy_gbs, frac_copy=gbs / copy_gbs,
                                     speedup_vs_eager=times["reference"] / seconds,
                                     speedup_vs_compiled=times["reference_compiled"] / seconds))
    return rows


def markdown(rows: list[dict], env: dict) -> str:
    lines = [f"Device: {env['device']}; torch {env['torch']}, triton {env['triton']}; commit {env['commit']}, "
             f"{env['date']}", "",
             "| case | dtype | elements | provider | ms | GB/s | % copy | × eager | × compiled |",
             "|---|---|---:|---|---:|---:|---:|---:|---:|"]
    for r in rows:
        lines.append(f"| {r['case']} | {r['dtype']} | {r['numel']:,} | {r['provider']} | {r['ms']:.3f} | "
                     f"{r['gbs']:.2f} | {100 * r['frac_copy']:.0f}% | {r['speedup_vs_eager']:.2f} | "
                     f"{r['speedup_vs_compiled']:.2f} |")
    return "\n".join(lines)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", type=int, nargs="+", default=None, help="elements per tensor")
    parser.add_argument("--dtypes", nargs="+", default=["float32", "bfloat16"])
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--min-run-time", type=float, default=0.3, help="seconds per CPU measurement")
    parser.add_argument("--smoke", action="store_true", help="tiny sizes, short timing (CI)")
    parser.add_argument("--out", default=None, help="JSON path (default benchmarks/results/bench_ops_<device>_<date>.json)")
    parser.add_argument("--overwrite", action="store_true", help="replace an existing JSON file")
    args = parser.parse_args(argv)
    sizes = args.sizes or (SMOKE_SIZES if args.smoke else DEFAULT_SIZES)
    min_run_time = 0.02 if args.smoke else args.min_run_time
    dtypes = [getattr(torch, d) for d in args.dtypes]
    env = _environment()
    rows = run(sizes, dtypes, args.device, min_run_time)
    print(markdown(rows, env))
    if args.smoke and args.out is None:
        return 0
    out = args.out or os.path.join(os.path.dirname(os.path.abspath(__file__)), "results",
                                   f"bench_ops_{args.device}_{env['date']}.json")
    if os.path.exists(out) and not args.overwrite:
        print(f"{out} exists; pass --overwrite to replace it", file=sys.stderr)
        return 1
    os.makedirs(os.path.dirname(out), exist_ok=True)
    with open(out, "w") as f:
        json.dump({"environment": env, "threads": torch.get_num_threads(), "rows": rows}, f, indent=1)
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
