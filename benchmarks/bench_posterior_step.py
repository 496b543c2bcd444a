"""Benchmark rmmd_core::posterior_step (method.md §e K1) on CPU, as GB/s beside a same-size copy.

Providers (all from the same run):
  reference           eager ``rmmd_core.ops.reference.posterior_step_ref`` (Philox emulated in int64 ops)
  reference_compiled  ``torch.compile(posterior_step_ref, dynamic=True)`` (one Inductor compile per dtype)
  cpu                 the ATen kernel ``torch.ops.rmmd_core.posterior_step``

Modes: ``noise`` (gamma != 0 for every sample: Philox + Box-Muller per element) and ``deterministic``
(gamma == 0: the kernels skip the noise, so this is the bandwidth-bound case, e.g. DDIM eta = 0).

Bytes per call = reads + writes = 3 * numel * itemsize (z_t, x_hat read; z_s written). The noise is
generated in-kernel and costs no bytes; the (B,) coefficients are negligible. The copy baseline is
``dst.copy_(src)`` at the same numel and dtype (2 * numel * itemsize bytes).

    python benchmarks/bench_posterior_step.py --smoke
    python benchmarks/bench_posterior_step.py --sizes 4194304 --dtypes float32
"""

from __future__ import annotations

import argparse
import csv
import datetime
import os
import platform
import subprocess
import sys

import torch
import torch.utils.benchmark as benchmark

from rmmd_core import ops
from rmmd_core.ops.reference import posterior_step_ref

DEFAULT_SIZES = [2**16, 2**18, 2**20, 2**22, 2**24]
SMOKE_SIZES = [2**12, 2**16]
PROVIDERS = ["reference", "reference_compiled", "cpu"]
MODES = ["noise", "deterministic"]
BATCH = 4
SEED, OFFSET = 1234, 0


def _environment() -> dict[str, str]:
    try:
        commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True,
                                check=True, cwd=os.path.dirname(os.path.abspath(__file__))).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        commit = "uncommitted"
    try:
        import triton
        triton_version = triton.__version__
    except ImportError:
        triton_version = "none"
    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            cpu = next(line.split(":", 1)[1].strip() for line in f if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    return {"device": f"{cpu} ({torch.get_num_threads()} threads)", "torch": torch.__version__,
            "triton": triton_version, "commit": commit, "date": datetime.date.today().isoformat()}


def _median_seconds(fn, min_run_time: float) -> float:
    timer = benchmark.Timer(stmt="fn()", globals={"fn": fn}, num_threads=torch.get_num_threads())
    return timer.blocked_autorange(min_run_time=min_run_time).median


def _make_inputs(numel: int, dtype: torch.dtype, mode: str):
    z = torch.randn(BATCH, numel // BATCH).to(dtype)
    x = torch.randn(BATCH, numel // BATCH).to(dtype)
    A = torch.rand(BATCH, dtype=torch.float64) + 0.5
    C = torch.rand(BATCH, dtype=torch.float64) + 0.1
    gamma = torch.rand(BATCH, dtype=torch.float64) + 0.2 if mode == "noise" else torch.zeros(BATCH, dtype=torch.float64)
    return z, x, A, C, gamma


def _provider_fn(provider: str, compiled: dict, dtype: torch.dtype):
    if provider == "reference":
        return posterior_step_ref
    if provider == "reference_compiled":
        if dtype not in compiled:
            compiled[dtype] = torch.compile(posterior_step_ref, dynamic=True)
        return compiled[dtype]
    return torch.ops.rmmd_core.posterior_step


def run(sizes, dtypes, providers, modes, min_run_time: float) -> list[dict]:
    rows = []
    compiled: dict = {}
    for dtype in dtypes:
        for numel in sizes:
            src = torch.randn(numel).to(dtype)
            dst = torch.empty_like(src)
            itemsize = src.element_size()
            copy_gbps = 2 * numel * itemsize / _median_seconds(lambda: dst.copy_(src), min_run_time) / 1e9
            for mode in modes:
                z, x, A, C, gamma = _make_inputs(numel, dtype, mode)
                times = {}
                for provider in providers:
                    fn = _provider_fn(provider, compiled, dtype)
                    call = lambda fn=fn: fn(z, x, A, C, gamma, SEED, OFFSET)  # noqa: E731
                    call()  # warm-up and compilation stay outside the timed region
                    times[provider] = _median_seconds(call, min_run_time)
                for provider, seconds in times.items():
                    gbps = 3 * numel * itemsize / seconds / 1e9
                    rows.append({
                        "provider": provider, "dtype": str(dtype).removeprefix("torch."), "numel": numel,
                        "mode": mode, "time_us": seconds * 1e6, "GB/s": gbps, "copy GB/s": copy_gbps,
                        "% of copy": 100 * gbps / copy_gbps,
                        "x eager ref": times["reference"] / seconds if "reference" in times else float("nan"),
                        "x compiled ref": (times["reference_compiled"] / seconds
                                           if "reference_compiled" in times else float("nan")),
                    })
    return rows


def _markdown(rows: list[dict], env: dict[str, str]) -> str:
    cols = ["provider", "dtype", "numel", "mode", "time_us", "GB/s", "copy GB/s", "% of copy", "x eager ref",
            "x compiled ref"]
    fmt = {"time_us": "{:.1f}", "GB/s": "{:.2f}", "copy GB/s": "{:.2f}", "% of copy": "{:.1f}",
           "x eager ref": "{:.2f}", "x compiled ref": "{:.2f}"}
    lines = [" | ".join(f"{k}: {v}" for k, v in env.items()), "",
             "| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    for r in rows:
        lines.append("| " + " | ".join(fmt.get(c, "{}").format(r[c]) for c in cols) + " |")
    return "\n".join(lines)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--smoke", action="store_true", help=f"tiny sizes {SMOKE_SIZES}, float32 only")
    parser.add_argument("--sizes", type=int, nargs="+", default=None, help="element counts (multiples of 4)")
    parser.add_argument("--dtypes", nargs="+", default=["float32", "bfloat16"], choices=["float32", "bfloat16", "float16", "float64"])
    parser.add_argument("--providers", nargs="+", default=PROVIDERS, choices=PROVIDERS)
    parser.add_argument("--modes", nargs="+", default=MODES, choices=MODES)
    parser.add_argument("--min-run-time", type=float, default=0.5, help="seconds per measurement")
    parser.add_argument("--csv", default=None, help="also write rows (with environment columns) to this CSV")
    parser.add_argument("--overwrite", action="store_true", help="allow replacing an existing --csv file")
    args = parser.parse_args(argv)

    if "cpu" in args.providers and "cpu" not in ops.available_backends("posterior_step"):
        parser.error(f"cpu provider unavailable: {ops.backend_reasons('posterior_step')['cpu']}")
    sizes = args.sizes or (SMOKE_SIZES if args.smoke else DEFAULT_SIZES)
    dtypes = ["float32"] if args.smoke and args.dtypes == parser.get_default("dtypes") else args.dtypes
    min_run_time = 0.05 if args.smoke else args.min_run_time
    if any(n % BATCH for n in sizes):
        parser.error(f"--sizes must be multiples of the batch size {BATCH}")
    if args.csv and os.path.exists(args.csv) and not args.overwrite:
        parser.error(f"{args.csv} exists; pass --overwrite to replace it")

    env = _environment()
    rows = run(sizes, [getattr(torch, d) for d in dtypes], args.providers, args.modes, min_run_time)
    print(_markdown(rows, env))
    if args.csv:
        os.makedirs(os.path.dirname(os.path.abspath(args.csv)), exist_ok=True)
        with open(args.csv, "w", newline="") as f:
            writer = csv.DictWriter(f, fieldnames=list(rows[0]) + list(env))
            writer.writeheader()
            writer.writerows({**r, **env} for r in rows)
    return 0


if __name__ == "__main__":
    sys.exit(main())
