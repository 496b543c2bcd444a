"""Benchmark the multi-tensor gradient-clipping ops ``grad_norm`` and ``grad_scale_`` on real gradient lists,
beside a copy moving the same bytes, and report how far the float64-accumulated norm is from torch's.

A sibling of bench_rewards_ema.py (same timer, table and JSON conventions, imported from bench_ops.py).
Gradient lists (one run, same machine):
  dit-s / unet-s      the student gradients after one ``rmmd_core.step()`` of benchmarks/bench_step.py's
                      DiT small / UNet small configurations (real gradients: 100+ tensors, mostly small)
  flat-25m            a ~25M-element model-like list (4 large matrices + 96 odd vectors, random values)
Providers:
  reference           eager torch: ``torch.nn.utils.get_total_norm`` / ``torch._foreach_mul_`` (what
                      ``clip_grad_norm_`` and the engine ran before the fused ops)
  reference_compiled  ``torch.compile`` of the same function, compiled outside timing
  cpu                 the ATen kernel (CPU tensors)
  triton / cuda       on CUDA tensors only (the Triton interpreter is a correctness tool, never timed)
Bytes moved per call (N = elements, s = element size): grad_norm N s (read); grad_scale N 2 s (read + write).
The "rel diff" column: |ours - torch| / torch for the norm (float64 vs per-tensor float32 accumulation).

    python benchmarks/bench_grad_norm.py --smoke
    python benchmarks/bench_grad_norm.py --lists dit-s unet-s flat-25m --dtypes float32 bfloat16
"""

from __future__ import annotations

import argparse
import os
import sys

import torch

from rmmd_core import ops

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from bench_ops import _copy_gbs, _time, add_sibling_args, finish_sibling, providers, sibling_row  # noqa: E402  (same timer, copy baseline and table as bench_ops.py)
from bench_posterior_step import _environment  # noqa: E402

CASES = {"grad_norm": 1, "grad_scale": 2}  # streams moved per element
LISTS = ("dit-s", "unet-s", "flat-25m")
SMOKE_LISTS = ("flat-64k",)


def _step_gradients(config: str, device) -> list[torch.Tensor]:
    """The student's gradients after one step of bench_step.py's ``config`` (the engine keeps them)."""
    from bench_step import CONFIGS

    from rmmd_core import RMMD, RMMDConfig, step

    spec = CONFIGS[config]
    teacher = spec.make_teacher().to(device)
    eng = RMMD(teacher, config=RMMDConfig(num_steps=spec.num_steps, ema_decay=None), sample_shape=spec.shape, seed=0)
    step(eng, cond=spec.cond(device), batch_size=spec.batch)
    return [p.grad.detach().clone() for p in eng.student.parameters() if p.grad is not None]


def _model_like(numel: int, device) -> list[torch.Tensor]:
    """70% of N in 4 matrices, the rest in 96 vectors of odd sizes (as bench_rewards_ema.py's EMA lists)."""
    big = [int(0.7 * numel) // 4] * 4
    rest = numel - sum(big)
    small = [max(1, rest // 96 + (k % 7) - 3) for k in range(96)]
    return [1e-3 * torch.randn(n, device=device) for n in big + small]


def gradient_list(name: str, dtype, device) -> list[torch.Tensor]:
    if name == "flat-25m":
        grads = _model_like(25_000_000, device)
    elif name == "flat-64k":
        grads = _model_like(65_536, device)
    else:
        torch.manual_seed(0)
        grads = _step_gradients(name, device)
    return [g.to(dtype) for g in grads]


def _torch_norm(grads):
    return torch.nn.utils.get_total_norm(grads, 2.0, False, None)


def _torch_scale(grads, coef):
    torch._foreach_mul_(grads, coef)


def _fn(case, provider, grads, coef, cache):
    if case == "grad_norm":
        if provider == "reference":
            return lambda: _torch_norm(grads)
        if provider == "reference_compiled":
            key = (case, len(grads), grads[0].dtype, grads[0].numel())
            cache.setdefault(key, torch.compile(_torch_norm, dynamic=False))
            return lambda: cache[key](grads)
        return lambda: ops.grad_norm(grads, backend=provider)
    if provider == "reference":
        return lambda: _torch_scale(grads, coef)
    if provider == "reference_compiled":
        key = (case, len(grads), grads[0].dtype, grads[0].numel())
        cache.setdefault(key, torch.compile(_torch_scale, dynamic=False))
        return lambda: cache[key](grads, coef)
    return lambda: ops.grad_scale_(grads, coef, backend=provider)


def run(lists, dtypes, device: str, min_run_time: float) -> list[dict]:
    rows, cache, copies = [], {}, {}
    for name in lists:
        for dtype in dtypes:
            grads = gradient_list(name, dtype, device)
            n = sum(g.numel() for g in grads)
            itemsize = grads[0].element_size()
            torch_norm = float(_torch_norm(grads))
            rel = abs(float(ops.grad_norm(grads)) - torch_norm) / torch_norm
            # exactly 1: no value changes, so repeated timed calls see the same data (the work is the same)
            coef = torch.ones((), device=device)
            for case, streams in CASES.items():
                nbytes = streams * n * itemsize
                copy_gbs = _copy_gbs(max(1, nbytes // (2 * itemsize)), dtype, device, min_run_time, copies)
                times = {p: _time(_fn(case, p, grads, coef, cache), device, min_run_time)
                         for p in providers(device, case)}
                rows += [sibling_row(f"{case} {name} ({len(grads)} tensors)", dtype, n, provider, seconds, nbytes,
                                     copy_gbs, times, norm_rel_diff=rel) for provider, seconds in times.items()]
    return rows


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--lists", nargs="+", default=None, choices=LISTS + SMOKE_LISTS)
    add_sibling_args(parser, "bench_grad_norm", ["float32"], "a tiny list, short timing (CI)")
    args = parser.parse_args(argv)
    lists = args.lists or (SMOKE_LISTS if args.smoke else LISTS)
    env = _environment()
    rows = run(lists, [getattr(torch, d) for d in args.dtypes], args.device, 0.02 if args.smoke else args.min_run_time)
    seen = {}
    for r in rows:
        seen.setdefault((r["case"].split(" ", 1)[1], r["dtype"]), r["norm_rel_diff"])
    footer = ("\nNorm vs torch.nn.utils.get_total_norm (relative difference): " +
              ", ".join(f"{k[0]} {k[1]}: {v:.2e}" for k, v in seen.items()))
    return finish_sibling("bench_grad_norm", args, env, rows, footer)

if __name__ == "__main__":
    sys.exit(main())
