"""Count the ATen ops and device->host reads of one ``rmmd_core.step()`` and where they come from.

The networks are replaced by a one-parameter stand-in (``out = w * z``), so what is left is the engine's
own work around the network calls: schedule math, the fused ops' entry points, rollout, metrics, finite
checks, clipping, optimiser steps and EMA. Configuration follows ``bench_step.py --configs dit-s``
(DiscreteVP, eps prediction, DDPM index time, class labels, K = 1, EMA) unless changed by the flags.

    python benchmarks/profile_step.py [--mode default|off-policy|discrete|rmmd] [--stack] [--iters N]
                                      [--sweep-mb MB]

Prints ops per step by name (and, with ``--stack``, the rmmd_core call site of every op), the number of
``aten::_local_scalar_dense`` calls (each one is a device->host sync on CUDA) and the CPU ms per step.

``--sweep-mb MB``: each stand-in network call also streams an MB-megabyte buffer through the caches (one
in-place multiply), as a real network's activations and weights do, and the CPU ms are reported with the
sweeps' own time subtracted: the engine's work as it runs between real network calls, with cold caches.
"""
from __future__ import annotations

import argparse
import collections
import os
import sys
import time
import traceback

import torch
from torch import nn
from torch.utils._python_dispatch import TorchDispatchMode

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from rmmd_core import RMMD, Denoiser, DiscreteVP, RMMDConfig, step  # noqa: E402

SYNC_OPS = ("aten::_local_scalar_dense",)


class StandIn(nn.Module):
    """``net(z, t, class_labels=None) = w z``: one parameter, one multiply (plus, with a ``sweep`` buffer,
    one in-place pass over it, outside autograd: the cache traffic of a real network)."""

    sweep: torch.Tensor | None = None  # set by cpu_ms(sweep_mb=...) on the class
    calls = 0  # forward calls while sweeping

    def __init__(self):
        super().__init__()
        self.w = nn.Parameter(torch.tensor(0.5))

    def forward(self, z, t, class_labels=None):
        if StandIn.sweep is not None:
            StandIn.calls += 1
            with torch.no_grad():
                StandIn.sweep.mul_(1.0)
        return self.w * z


class OpLog(TorchDispatchMode):
    """Every ATen op dispatched (name, and the innermost rmmd_core frame with ``stack=True``)."""

    def __init__(self, stack: bool = False):
        super().__init__()
        self.stack = stack
        self.ops = collections.Counter()
        self.sites = collections.Counter()

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        name = str(func.overloadpacket.__name__)
        self.ops[name] += 1
        if self.stack:
            frames = [f for f in traceback.extract_stack() if "rmmd_core" in f.filename
                      and "profile_step" not in f.filename]
            site = (f"{os.path.relpath(frames[-1].filename)}:{frames[-1].lineno} {frames[-1].name}"
                    if frames else "<outside rmmd_core>")
            self.sites[(name, site)] += 1
        return func(*args, **(kwargs or {}))


def make_engine(mode: str, seed: int = 0, num_steps: int = 1, size: int = 16,
                batch: int = 16) -> tuple[RMMD, dict]:
    """An engine on stand-in networks in ``mode`` and the ``step`` kwargs of one batch (also used by
    tests/test_step_syncs.py, with smaller sizes: op and read counts do not depend on them)."""
    torch.manual_seed(seed)
    sch = DiscreteVP.from_diffusers_config(num_train_timesteps=1000)
    teacher = Denoiser(StandIn(), sch, prediction="eps", time_input="index")
    cfg = dict(num_steps=num_steps, ema_decay=0.999)
    if mode == "discrete":
        cfg.update(variant="discrete", num_steps=4)
    eng = RMMD(teacher, config=RMMDConfig(**cfg), sample_shape=(3, size, size), seed=seed)
    kw = {"cond": {"class_labels": torch.arange(batch) % 10}, "batch_size": batch}
    if mode == "off-policy":
        kw["data"] = torch.randn(batch, 3, size, size, generator=torch.Generator().manual_seed(1))
    if mode == "rmmd":
        eng.start_phase2(reward="grayscale", reward_weight=0.5)
    return eng, kw


def count(mode: str, stack: bool = False):
    eng, kw = make_engine(mode)
    step(eng, **kw)  # warm-up: optimiser state, cached lists
    log = OpLog(stack)
    with log:
        step(eng, **kw)
    return log


def cpu_ms(mode: str, iters: int, sweep_mb: float = 0.0) -> float:
    """Median CPU ms per step (5 rounds of ``iters``); with ``sweep_mb``, each network call also sweeps that
    many MB (StandIn) and the sweeps' own CPU time, measured alone for the same number of calls, is
    subtracted."""
    StandIn.sweep = torch.ones(int(sweep_mb * 2 ** 18)) if sweep_mb > 0 else None
    try:
        eng, kw = make_engine(mode)
        for _ in range(3):
            step(eng, **kw)
        StandIn.calls = 0
        best = []
        for _ in range(5):
            t0 = time.process_time()
            for _ in range(iters):
                step(eng, **kw)
            best.append((time.process_time() - t0) * 1e3 / iters)
        ms = sorted(best)[len(best) // 2]
        if StandIn.sweep is not None:
            calls = StandIn.calls // 5  # per round of iters steps
            t0 = time.process_time()
            with torch.no_grad():
                for _ in range(calls):
                    StandIn.sweep.mul_(1.0)
            ms -= (time.process_time() - t0) * 1e3 / iters
        return ms
    finally:
        StandIn.sweep = None


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--mode", default="default", choices=("default", "off-policy", "discrete", "rmmd"))
    p.add_argument("--stack", action="store_true", help="group ops by rmmd_core call site")
    p.add_argument("--iters", type=int, default=50)
    p.add_argument("--top", type=int, default=60)
    p.add_argument("--sweep-mb", type=float, default=0.0,
                   help="MB each stand-in network call streams through the caches (cold-cache engine cost)")
    a = p.parse_args(argv)
    torch.set_num_threads(1)
    log = count(a.mode, a.stack)
    total = sum(log.ops.values())
    syncs = sum(log.ops[n.split("::")[1]] for n in SYNC_OPS)
    print(f"mode={a.mode}: {total} ATen ops per step, {syncs} device->host reads (_local_scalar_dense)")
    for name, n in log.ops.most_common(a.top):
        print(f"  {n:4d} {name}")
    if a.stack:
        print("by call site:")
        for (name, site), n in sorted(log.sites.items(), key=lambda kv: kv[0][1]):
            print(f"  {n:4d} {name:32s} {site}")
    print(f"CPU ms per step (median of 5 x {a.iters}, 1 thread): {cpu_ms(a.mode, a.iters):.3f}")
    if a.sweep_mb > 0:
        print(f"CPU ms per step with {a.sweep_mb:g} MB swept per network call, sweeps subtracted: "
              f"{cpu_ms(a.mode, a.iters, a.sweep_mb):.3f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
