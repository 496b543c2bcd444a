"""Benchmark the image rewards (method.md §e K4a, K4b) and the multi-tensor EMA (K9) as GB/s beside a copy
moving the same bytes.

A separate script from bench_ops.py (same timing, table and JSON conventions, imported from it) so the
two can grow independently. Providers (one run, same machine):
  reference           eager ``rmmd_core.ops.<op>_ref`` (for the EMA: a Python loop over the tensors)
  reference_compiled  ``torch.compile(<op>_ref, dynamic=False)``, compiled outside timing
  foreach             EMA only: ``torch._foreach_lerp_`` (the engine's update before the fused op)
  cpu                 the ATen kernel (CPU tensors)
  triton / cuda       on CUDA tensors only (the Triton interpreter is a correctness tool, never timed)

Cases and bytes moved per call (N = elements):
  grayscale_reward    x (B, 3, H, W) read, grad written: 2 N
  laplacian_reward    x (B, 4, H, W) read, grad written: 2 N (the halo re-reads hit cache)
  ema_update          EMA read + written, params read: 3 N, over a model-like list of tensors (a few
                      large matrices and many small vectors); fp32 EMA, params in the listed dtype

    python benchmarks/bench_rewards_ema.py --smoke
    python benchmarks/bench_rewards_ema.py --sizes 4194304 --dtypes float32 bfloat16
"""

from __future__ import annotations

import argparse
import math
import os
import sys

import torch

from rmmd_core import ops

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from bench_ops import _copy_gbs, _time, add_sibling_args, finish_sibling, providers, sibling_row  # noqa: E402  (same timer, copy baseline and table as bench_ops.py)
from bench_posterior_step import _environment  # noqa: E402

DEFAULT_SIZES = [2**16, 2**20, 2**22]
SMOKE_SIZES = [2**12, 2**14]
BATCH = 4
CASES = {"grayscale_reward": 2, "laplacian_reward": 2, "ema_update": 3}


def _image(case: str, numel: int, dtype, device):
    channels = 3 if case == "grayscale_reward" else 4
    side = max(1, int(math.sqrt(numel // (BATCH * channels))))
    return torch.randn(BATCH, channels, side, side, device=device).to(dtype)


def _model_like(numel: int, dtype, device):
    """(ema fp32, params dtype): 70% of N in 4 matrices, the rest in 96 vectors of odd sizes."""
    big = [int(0.7 * numel) // 4] * 4
    rest = numel - sum(big)
    small = [max(1, rest // 96 + (k % 7) - 3) for k in range(96)]
    shapes = big + small
    params = [torch.randn(n, device=device).to(dtype) for n in shapes]
    ema = [torch.randn(n, device=device) for n in shapes]
    return ema, params


def _foreach(ema, params, beta):
    torch._foreach_lerp_(ema, [p.to(e.dtype) for e, p in zip(ema, params)], 1.0 - beta)


def _fn(case, provider, args, cache):
    if case == "ema_update":
        ema, params = args
        base = {"reference": ops.ema_update_ref, "reference_compiled": _foreach, "foreach": _foreach}.get(provider)
        if provider == "reference_compiled":
            key = (case, len(ema), ema[0].numel(), params[0].dtype)
            cache.setdefault(key, torch.compile(_foreach, dynamic=False))
            base = cache[key]
        if base is not None:
            return lambda: base(ema, params, 0.999)
        return lambda: ops.ema_update(ema, params, 0.999, backend=provider)
    (x,) = args
    ref = getattr(ops, case + "_ref")
    if provider == "reference":
        return lambda: ref(x)
    if provider == "reference_compiled":
        key = (case, tuple(x.shape), x.dtype)
        cache.setdefault(key, torch.compile(ref, dynamic=False))
        return lambda: cache[key](x)
    return lambda: getattr(ops, case)(x, backend=provider)


def run(sizes, dtypes, device: str, min_run_time: float) -> list[dict]:
    rows, cache, copies = [], {}, {}
    for dtype in dtypes:
        itemsize = torch.empty((), dtype=dtype).element_size()
        for numel in sizes:
            for case, n_moved in CASES.items():
                if case == "ema_update":
                    args = _model_like(numel, dtype, device)
                    n = sum(e.numel() for e in args[0])
                    nbytes = n * (2 * 4 + itemsize)  # fp32 EMA read + write, params read
                else:
                    args = (_image(case, numel, dtype, device),)
                    n = args[0].numel()
                    nbytes = n_moved * n * itemsize
                # the copy baseline moves the same bytes (bench_ops.py: a smaller copy would sit in cache)
                copy_gbs = _copy_gbs(nbytes // (2 * itemsize), dtype, device, min_run_time, copies)
                extra = ("foreach",) if case == "ema_update" else ()
                times = {p: _time(_fn(case, p, args, cache), device, min_run_time)
                         for p in providers(device, case, extra)}
                rows += [sibling_row(case, dtype, n, provider, seconds, nbytes, copy_gbs, times)
                         for provider, seconds in times.items()]
    return rows


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", type=int, nargs="+", default=None, help="elements per call")
    add_sibling_args(parser, "bench_rewards_ema", ["float32", "bfloat16"], "tiny sizes, short timing (CI)")
    args = parser.parse_args(argv)
    sizes = args.sizes or (SMOKE_SIZES if args.smoke else DEFAULT_SIZES)
    env = _environment()
    rows = run(sizes, [getattr(torch, d) for d in args.dtypes], args.device, 0.02 if args.smoke else args.min_run_time)
    return finish_sibling("bench_rewards_ema", args, env, rows)


if __name__ == "__main__":
    sys.exit(main())
