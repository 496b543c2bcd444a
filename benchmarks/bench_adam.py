"""Benchmark one optimiser update of the engine, clip scale + Adam + EMA, on real parameter lists:
``rmmd_core::adam_update`` (one pass) against what torch runs for the same update.

A sibling of bench_grad_norm.py (same timer, table and JSON conventions, imported from bench_ops.py).
Parameter lists (one run, same machine):
  dit-s / unet-s      the student parameters of benchmarks/bench_step.py's DiT small / UNet small (44 / 144
                      tensors, mostly small)
  flat-25m            a ~25M-element model-like list (4 large matrices + 96 odd vectors)
Every provider does the same update: gradients times a clip coefficient, Adam (beta1 = 0.9, beta2 = 0.99,
bias-corrected at step 10), then the EMA of the new weights (decay 0.999).
Providers:
  reference           eager torch as a plain trainer runs it: ``torch._foreach_mul_`` (the clip), the eight
                      ``_foreach_*`` calls of ``torch.optim.Adam(foreach=True)``, ``torch._foreach_lerp_``
                      (the EMA)
  reference_compiled  ``torch.compile`` of the same function, compiled outside timing
  torch_fused         ``torch._fused_adam_`` (``Adam(fused=True)``'s kernel) between the same clip and EMA calls
  cpu                 the ATen kernel (CPU tensors)
  triton / cuda       on CUDA tensors only (the Triton interpreter is a correctness tool, never timed)
Bytes moved per call (N = elements, s = element size): 10 N s (read p, g, m, v, ema; write g, p, m, v, ema):
the clip coefficient is 1 - 2^-24, so the scaled gradients are written by every provider, every call.

    python benchmarks/bench_adam.py --smoke
    python benchmarks/bench_adam.py --lists dit-s unet-s flat-25m --dtypes float32 bfloat16
"""

from __future__ import annotations

import argparse
import os
import sys

import torch

from rmmd_core import ops

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from bench_grad_norm import _model_like  # noqa: E402  (the flat model-like lists)
from bench_ops import _copy_gbs, _time, add_sibling_args, finish_sibling, providers, sibling_row  # noqa: E402
from bench_posterior_step import _environment  # noqa: E402

LISTS = ("dit-s", "unet-s", "flat-25m")
SMOKE_LISTS = ("flat-64k",)
BETA1, BETA2, EPS, LR, STEP, DECAY = 0.9, 0.99, 1e-8, 1e-4, 10, 0.999
# Slightly below 1: the clip really multiplies (and writes) the gradients, as when it bites; values then
# shrink by 2^-24 per call, which changes no timing.
COEF = 1.0 - 2.0 ** -24
STREAMS = 10  # read p, g, m, v, ema; write g, p, m, v, ema


def parameter_list(name: str, dtype, device) -> list[torch.Tensor]:
    """The parameters of a bench_step.py network (or a flat model-like list) in ``dtype`` on ``device``."""
    if name.startswith("flat-"):
        return [t.to(dtype) for t in _model_like({"flat-25m": 25_000_000, "flat-64k": 65_536}[name], device)]
    from bench_step import CONFIGS

    torch.manual_seed(0)
    net = CONFIGS[name].make_net()
    return [p.detach().to(device=device, dtype=dtype) for p in net.parameters()]


def _state(params):
    """(params, grads, exp_avgs, exp_avg_sqs, ema): fresh random values, v > 0."""
    grads = [1e-3 * torch.randn_like(p) for p in params]
    return params, grads, [1e-4 * torch.randn_like(p) for p in params], [1e-6 * torch.rand_like(p) for p in params], \
        [p.clone() for p in params]


def _scalars():
    return LR / (1 - BETA1 ** STEP), (1 - BETA2 ** STEP) ** 0.5


def _torch_update(params, grads, m, v, ema):
    """The eager pipeline: clip multiply, torch's _multi_tensor_adam (non-capturable branch), EMA lerp."""
    step_size, bc2 = _scalars()
    n = len(params)
    torch._foreach_mul_(grads, COEF)
    torch._foreach_lerp_(m, grads, 1 - BETA1)
    torch._foreach_mul_(v, BETA2)
    torch._foreach_addcmul_(v, grads, grads, 1 - BETA2)
    denom = torch._foreach_sqrt(v)
    torch._foreach_div_(denom, [bc2] * n)
    torch._foreach_add_(denom, EPS)
    torch._foreach_addcdiv_(params, m, denom, [-step_size] * n)
    torch._foreach_lerp_(ema, params, 1 - DECAY)


def _torch_fused_update(params, grads, m, v, ema, steps):
    torch._foreach_mul_(grads, COEF)
    torch._fused_adam_(params, grads, m, v, [], steps, lr=LR, beta1=BETA1, beta2=BETA2, weight_decay=0.0, eps=EPS,
                       amsgrad=False, maximize=False)
    torch._foreach_lerp_(ema, params, 1 - DECAY)


def _fn(provider, state, cache):
    if provider == "reference":
        return lambda: _torch_update(*state)
    if provider == "reference_compiled":
        key = (len(state[0]), state[0][0].dtype, sum(p.numel() for p in state[0]))
        cache.setdefault(key, torch.compile(_torch_update, dynamic=False))
        return lambda: cache[key](*state)
    if provider == "torch_fused":
        # the step count stays at STEP - 1 before each call (torch's fused kernel reads it from the tensors)
        steps = [torch.tensor(float(STEP), device=state[0][0].device) for _ in state[0]]
        return lambda: _torch_fused_update(*state, steps)
    step_size, bc2 = _scalars()
    return lambda: ops.adam_update(*state, step_size=step_size, beta1=BETA1, beta2=BETA2, eps=EPS,
                                   bias_correction2_sqrt=bc2, grad_scale=COEF, ema_decay=DECAY, backend=provider)


def run(lists, dtypes, device: str, min_run_time: float) -> list[dict]:
    rows, cache, copies = [], {}, {}
    for name in lists:
        for dtype in dtypes:
            params = parameter_list(name, dtype, device)
            n = sum(p.numel() for p in params)
            itemsize = params[0].element_size()
            nbytes = STREAMS * n * itemsize
            copy_gbs = _copy_gbs(max(1, nbytes // (2 * itemsize)), dtype, device, min_run_time, copies)
            names = providers(device, "adam_update", extra=("torch_fused",))
            times = {}
            for provider in names:
                state = _state([p.clone() for p in params])  # own state per provider: nothing shared
                times[provider] = _time(_fn(provider, state, cache), device, min_run_time)
            rows += [sibling_row(f"adam_update {name} ({len(params)} tensors)", dtype, n, provider, seconds, nbytes,
                                 copy_gbs, times) for provider, seconds in times.items()]
    return rows


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--lists", nargs="+", default=None, choices=LISTS + SMOKE_LISTS)
    add_sibling_args(parser, "bench_adam", ["float32"], "a tiny list, short timing (CI)")
    args = parser.parse_args(argv)
    lists = args.lists or (SMOKE_LISTS if args.smoke else LISTS)
    env = _environment()
    rows = run(lists, [getattr(torch, d) for d in args.dtypes], args.device, 0.02 if args.smoke else args.min_run_time)
    return finish_sibling("bench_adam", args, env, rows)


if __name__ == "__main__":
    sys.exit(main())
