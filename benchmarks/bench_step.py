"""Cost of one ``rmmd_core.step()`` against its floor and against the peer's DMD2 step.

On small and mid-size models a distillation step is its network calls, so the question is what a step
costs on top of them. For each configuration we time, interleaved round by round (so machine load hits
every row alike; cheap configurations several calls per round, row order alternating: time_rows), with
medians:

* ``ours``: ``rmmd_core.step()`` in the phase-1 on-policy mode (continuous variant, K student steps,
  teacher reference, Adam updates of student and auxiliary, EMA), once per fused-op backend
  (``reference`` = pure PyTorch, plus the fused backend of the device: ``cpu`` C++ / ``cuda`` / ``triton``);
  for the diffusers models also ``ours, foreach Adam`` (``RMMDConfig(adam="foreach")``: torch's Adam bit for
  bit, with separate clip and EMA passes, i.e. what the default fused optimiser pass saves) and ``ours,
  fused Adam`` (``RMMDConfig(adam="fused")``, torch's fused kernel), both compared with the default floor; for the UNets ``ours, ckpt student`` (memory);
  on CUDA ``ours, graph rollout`` (``RMMDConfig(graph_rollout=True)``: the rollout as a CUDA graph);
* ``floor``: the SAME network calls (recorded with forward pre-hooks during a real step: same modules,
  inputs, grad modes) replayed with a trivial loss (mean of each recorded output), one backward per
  trained network and the same optimiser steps, taken by what a plain PyTorch trainer runs: its own
  ``torch.optim.Adam(foreach=True)`` with the engine's hyperparameters (the engine's default
  ``rmmd_core.adam.FusedAdam`` makes the same updates, up to torch's sqrt rounding, in one
  ``rmmd_core::adam_update`` pass that also carries the clip and the student's EMA; the JSON keeps
  ``overhead_vs_floor_same_optimizer``, the ratio when the floor steps the engine's own optimisers).
  No schedule math, no cotangent, no EMA, no clipping;
* ``floor+clip+EMA``: the floor plus what a plain PyTorch trainer of the same networks does around its
  optimiser steps when it clips and keeps an EMA as ours does: ``torch.nn.utils.clip_grad_norm_`` (max
  norm = ``grad_clip``) before each step and a ``torch._foreach_lerp_`` EMA of the student (same decay,
  buffers copied) after its step. The overhead over it is what the method itself adds;
* ``peer``: NVIDIA modelopt.torch.fastgen's ``DMDPipeline`` (pip extra ``rmmd_core[peer]``), one
  DMD2 iteration = ``compute_student_loss`` + backward + step + EMA, then ``compute_fake_score_loss``
  + backward + step (its ``student_update_freq = 1`` setting), on copies of the same diffusers
  network, same batch, seed and threads; ``peer floor`` replays its calls the same way, and ``peer
  floor+clip+EMA`` adds the peer's own clipping (clip_grad_norm_) and EMA (``pipe.update_ema()``) calls.

Columns: forward calls and calls recorded with grad per iteration (counted with forward hooks on the
raw networks, for every row), median wall ms per iteration, overhead = row / its floor (the median of
the per-round ratios: both are timed in the same round, so load that drifts between rounds cancels; a
ratio of the two medians is noisier on a shared machine), ms per network
call (ms / (forwards + grad calls), each backward counted as one call), forward-equivalents per
iteration and ms per forward-equivalent (below), the same median and overhead in
process CPU time (with one thread it is the work done, and far less sensitive than wall time to other
processes on a shared machine; with more threads it sums them), and the peak memory of one
iteration above the memory held before it (CPU: RSS high-water mark via /proc/self/clear_refs, in a
subprocess run with a fixed glibc mmap threshold so freed tensors leave the RSS; CUDA:
``max_memory_allocated``). A K sweep (1, 2, 4, 8) of the small UNet shows the peak does not grow with K.

Forward-equivalents: "ms / call" is unfair when two rows mix calls differently (ours: 4 forwards of
which 2 with grad; the peer: 5 of which 2), because a call recorded for backward costs its forward
plus a backward, about 2-3 forwards. So each configuration also gets two calibration rows, timed in
the same interleaved rounds: ``net fwd`` (one no-grad forward of the student network on the inputs of
its differentiable call in our step) and ``net fwd+bwd`` (the same call with grad, then ``mean()``
backward). With ``c = ms(net fwd+bwd) / ms(net fwd)``, a row's iteration is worth
``sum over its calls of (rows / rows_ref) * (c if the call had grad else 1)`` forward-equivalents
(rows: the call's batch, rows_ref: the calibration call's; cost taken as linear in the batch, which
only matters for calls with another batch, e.g. CFG's doubled one), and ``ms / fwd-eq`` divides the
iteration's median by that: the cost of the whole step per unit of network work, comparable across
call mixes. The calibration uses our student network for every row of the configuration (the peer's
networks are copies of the same architecture, same batch).

    python benchmarks/bench_step.py [--threads 2] [--repeats 7] [--configs ...] [--no-peer] [--json out.json]
    python benchmarks/bench_step.py --smoke     # seconds: tiny configs, 1 repeat (run by the test suite)
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import random
import statistics
import subprocess
import sys
import time
from dataclasses import dataclass, field
from typing import Callable

import torch
from torch import nn

from rmmd_core import RMMD, Denoiser, DiscreteVP, RMMDConfig, step
from rmmd_core import ops
from rmmd_core.toy import MLPNet

HERE = os.path.dirname(os.path.abspath(__file__))


# ---------------------------------------------------------------------- configurations
class LargeStateNet(nn.Module):
    """A deliberately small network over a large state: 1x1 convs (C -> 8 -> C) plus a time bias.

    ~4 multiply-adds per value and layer, so at a few million values per sample the element-wise math
    of the step (re-noise, posterior step, cotangent, auxiliary loss) is a visible part of the step."""

    def __init__(self, channels: int = 4, hidden: int = 8):
        super().__init__()
        self.inp = nn.Conv2d(channels, hidden, 1)
        self.out = nn.Conv2d(hidden, channels, 1)
        self.time = nn.Linear(1, hidden)

    def forward(self, z, t):
        h = self.inp(z) + self.time(t.to(z.dtype).view(-1, 1) / 1000)[:, :, None, None]
        return self.out(torch.nn.functional.silu(h))


def _unet(blocks, layers, size):
    import diffusers
    down = ("DownBlock2D",) * (len(blocks) - 1) + ("AttnDownBlock2D",)
    up = ("AttnUpBlock2D",) + ("UpBlock2D",) * (len(blocks) - 1)
    return diffusers.UNet2DModel(sample_size=size, in_channels=3, out_channels=3, layers_per_block=layers,
                                 block_out_channels=blocks, down_block_types=down, up_block_types=up,
                                 norm_num_groups=8)


def _dit(heads, dim, layers, size):
    import diffusers
    # out_channels = 2 * in_channels: DiT's learned-sigma head (the Denoiser keeps the first half)
    return diffusers.DiTTransformer2DModel(num_attention_heads=heads, attention_head_dim=dim, in_channels=3,
                                           out_channels=6, num_layers=layers, sample_size=size, patch_size=2,
                                           num_embeds_ada_norm=10, norm_num_groups=8)


@dataclass
class Spec:
    """One benchmark configuration: a teacher network, the per-sample shape, batch, K, conditioning."""
    name: str
    make_net: Callable[[], nn.Module]
    shape: tuple
    batch: int
    num_steps: int = 1
    kind: str = "diffusers"       # 'diffusers' (DDPM eps-net, index time) | 'toy' (x0, continuous t)
    class_cond: bool = False      # DiT: class labels (0..9)
    peer: bool = True

    def make_teacher(self) -> Denoiser:
        torch.manual_seed(0)
        net = self.make_net()
        if self.kind == "toy":
            return Denoiser(net, "vp_cosine", prediction="x0")
        sch = DiscreteVP.from_diffusers_config(num_train_timesteps=1000)
        return Denoiser(net, sch, prediction="eps", time_input="index")

    def cond(self, device):
        if not self.class_cond:
            return None
        return {"class_labels": torch.arange(self.batch, device=device) % 10}


CONFIGS = {
    "2d": Spec("2d", lambda: MLPNet(2, hidden=128, depth=3), (2,), 256, num_steps=4, kind="toy", peer=False),
    "unet-s": Spec("unet-s", lambda: _unet((32, 64), 1, 16), (3, 16, 16), 16),
    "unet-m": Spec("unet-m", lambda: _unet((64, 128), 1, 16), (3, 16, 16), 16),
    "dit-s": Spec("dit-s", lambda: _dit(4, 16, 2, 16), (3, 16, 16), 16, class_cond=True),
    "dit-m": Spec("dit-m", lambda: _dit(6, 32, 4, 16), (3, 16, 16), 16, class_cond=True),
    # 2 samples x 4 x 1024 x 512 = 2.1M values per sample
    "large": Spec("large", lambda: LargeStateNet(4), (4, 1024, 512), 2, kind="toy", peer=False),
}
SMOKE = {
    "2d": Spec("2d", lambda: MLPNet(2, hidden=32, depth=2), (2,), 64, num_steps=2, kind="toy", peer=False),
    "unet-xs": Spec("unet-xs", lambda: _unet((8, 16), 1, 8), (3, 8, 8), 2),
    "large": Spec("large", lambda: LargeStateNet(4), (4, 128, 128), 2, kind="toy", peer=False),
}
DEFAULT = ("2d", "unet-s", "unet-m", "dit-s", "dit-m", "large")


def fused_backend(device) -> str:
    """The fused backend of ``device`` that auto-dispatch picks for the posterior step."""
    x = torch.zeros(4, device=device)
    name = ops.resolve_backend("posterior_step", x, backend=None)
    return name


# ---------------------------------------------------------------------- call recording and the floor
def _tensor_out(out):
    if hasattr(out, "sample"):
        return out.sample
    if isinstance(out, (tuple, list)):
        return out[0]
    return out


class CallLog:
    """Forward hooks on raw networks: counts every call and, when ``record``, keeps its inputs for replay."""

    def __init__(self, nets: dict):
        self.calls, self.handles, self.record = [], [], False
        self.shapes = []  # (rows, grad) of every recorded call: the forward-equivalent weights
        self.fwd = {n: 0 for n in nets}
        self.grad = {n: 0 for n in nets}
        for name, net in nets.items():
            self.handles.append(net.register_forward_pre_hook(
                lambda mod, args, kwargs, n=name: self._pre(n, mod, args, kwargs), with_kwargs=True))

    def _pre(self, name, mod, args, kwargs):
        self.fwd[name] += 1
        self.grad[name] += int(torch.is_grad_enabled())
        if self.record:
            first = next((a for a in list(args) + list(kwargs.values()) if isinstance(a, torch.Tensor)), None)
            self.shapes.append((int(first.shape[0]) if first is not None and first.dim() else 1,
                                torch.is_grad_enabled()))
            detach = lambda v: v.detach() if isinstance(v, torch.Tensor) else v  # noqa: E731
            self.calls.append((mod, tuple(detach(a) for a in args), {k: detach(v) for k, v in kwargs.items()},
                               torch.is_grad_enabled()))

    def reset(self):
        self.fwd = dict.fromkeys(self.fwd, 0)
        self.grad = dict.fromkeys(self.grad, 0)

    def remove(self):
        for h in self.handles:
            h.remove()


class Floor:
    """Replays recorded ``calls`` (module, args, kwargs, grad) with a trivial loss (mean of each grad-mode
    output), then one backward and one optimiser step per trained network; ``trained``: (module, optimiser).

    ``clip``: when set, ``clip_grad_norm_(module.parameters(), clip)`` before each optimiser step;
    ``ema``: when set, called after the first trained network's (the student's) optimiser step."""

    def __init__(self, calls: list, trained: list, clip: float | None = None, ema: Callable[[], None] | None = None):
        self.calls, self.trained, self.clip, self.ema = calls, trained, clip, ema

    def __call__(self) -> None:
        outs = {id(m): [] for m, _ in self.trained}
        for mod, args, kwargs, grad in self.calls:
            with torch.set_grad_enabled(grad):
                o = _tensor_out(mod(*args, **kwargs))
            if grad:
                outs[id(mod)].append(o)
        for mod, opt in self.trained:
            if outs[id(mod)]:
                opt.zero_grad(set_to_none=True)
                sum(o.float().mean() for o in outs[id(mod)]).backward()
                if self.clip is not None:
                    torch.nn.utils.clip_grad_norm_(mod.parameters(), self.clip)
                opt.step()
                if self.ema is not None and mod is self.trained[0][0]:
                    self.ema()


def plain_adam(opt: torch.optim.Optimizer) -> torch.optim.Adam:
    """A fresh ``torch.optim.Adam(foreach=True)`` over ``opt``'s parameters with its hyperparameters."""
    g = opt.param_groups[0]
    return torch.optim.Adam([p for grp in opt.param_groups for p in grp["params"]], lr=g["lr"], betas=g["betas"],
                            eps=g["eps"], weight_decay=g["weight_decay"], foreach=True)


class PlainEMA:
    """A plain PyTorch trainer's EMA of ``net`` into ``ema_net``: one ``torch._foreach_lerp_`` over the
    parameters (weight ``1 - decay``), buffers copied."""

    def __init__(self, ema_net: nn.Module, net: nn.Module, decay: float):
        self.ema_p, self.p = list(ema_net.parameters()), list(net.parameters())
        self.ema_b, self.b = list(ema_net.buffers()), list(net.buffers())
        self.weight = 1.0 - decay

    @torch.no_grad()
    def __call__(self) -> None:
        torch._foreach_lerp_(self.ema_p, self.p, self.weight)
        for e, b in zip(self.ema_b, self.b):
            e.copy_(b)


# ---------------------------------------------------------------------- rows
@dataclass
class Row:
    config: str
    impl: str                       # 'ours' | 'floor' | 'peer' | 'peer floor'
    backend: str
    num_steps: int
    fn: Callable[[], None] = field(repr=False)
    fwd: int = 0
    grad_calls: int = 0
    times: list = field(default_factory=list)
    cpu_times: list = field(default_factory=list)
    peak_mib: float = float("nan")
    calls: list = field(default_factory=list)   # (rows, grad) per network call of one iteration

    @property
    def ms(self) -> float:
        return 1e3 * statistics.median(self.times) if self.times else float("nan")

    @property
    def cpu_ms(self) -> float:
        return 1e3 * statistics.median(self.cpu_times) if self.cpu_times else float("nan")


def ours_rows(spec: Spec, device, backends, num_steps=None, with_floor=True, checkpoint=False,
              adam: str = "rmmd", graph_rollout: bool = False) -> list:
    """Rows of ``rmmd_core.step()`` per backend (+ the floor of the first). ``checkpoint``: the student's
    network activation-checkpointed as a whole (its graph is recomputed in backward: one more forward,
    which the hooks do not see since checkpoint re-runs ``forward`` directly). ``adam``: the engine's
    Adam implementation (``RMMDConfig.adam``; the row is labelled when not the default). ``graph_rollout``:
    ``RMMDConfig(graph_rollout=True)``; a replayed CUDA graph runs no forward hooks, so such a row takes its
    calls from the engine's metrics and its per-call shapes from the default row (build_rows)."""
    from rmmd_core.activation import checkpoint_activations

    K = spec.num_steps if num_steps is None else num_steps
    rows = []
    for b in backends:
        teacher = spec.make_teacher().to(device)
        cfg = RMMDConfig(num_steps=K, ema_decay=0.999, adam=adam, graph_rollout=graph_rollout)
        eng = RMMD(teacher, config=cfg, sample_shape=spec.shape, seed=0, backend=b)
        if checkpoint:
            checkpoint_activations(eng.student.net, lambda m, net=eng.student.net: m is net)
        cond = spec.cond(device)
        nets = {"student": eng.student.net, "teacher": eng.teacher.net, "aux": eng.auxiliary.net}
        log = CallLog(nets)
        fn = (lambda eng=eng, cond=cond: step(eng, cond=cond, batch_size=spec.batch))
        fn()  # warm-up (also creates the optimiser state)
        log.reset()
        log.record = True
        m = fn()
        log.record = False
        if graph_rollout:
            impl = "ours, graph rollout"
            row = Row(spec.name, impl, b, K, fn, m["calls_total"], m["calls_grad"])
        else:
            assert sum(log.fwd.values()) == m["calls_total"] and sum(log.grad.values()) == m["calls_grad"], (log.fwd,
                                                                                                              m)
            impl = "ours, ckpt student" if checkpoint else "ours" if adam == "rmmd" else f"ours, {adam} Adam"
            row = Row(spec.name, impl, b, K, fn, sum(log.fwd.values()), sum(log.grad.values()), calls=list(log.shapes))
        rows.append(row)
        if with_floor and b == backends[0]:
            # a plain trainer's optimisers: torch's Adam with the engine's hyperparameters (own state)
            trained = [(eng.student.net, plain_adam(eng.student_optimizer)),
                       (eng.auxiliary.net, plain_adam(eng.aux_optimizer))]
            rows.append(Row(spec.name, "floor", "-", K, Floor(log.calls, trained), row.fwd, row.grad_calls,
                            calls=list(log.shapes)))
            plus = Floor(log.calls, trained, clip=cfg.grad_clip,
                         ema=PlainEMA(eng.ema.net, eng.student.net, cfg.ema_decay))
            rows.append(Row(spec.name, "floor+clip+EMA", "-", K, plus, row.fwd, row.grad_calls,
                            calls=list(log.shapes)))
            same = [(eng.student.net, eng.student_optimizer), (eng.auxiliary.net, eng.aux_optimizer)]
            rows.append(Row(spec.name, SAME_OPT_FLOOR, "-", K, Floor(log.calls, same), row.fwd,
                            row.grad_calls, calls=list(log.shapes)))
            rows += calibration_rows(spec.name, K, log.calls)
        log.remove()
    return rows


class NetCall:
    """One call of a private copy of a recorded network call: ``grad=False`` a no-grad forward,
    ``grad=True`` a forward with grad and ``mean()`` backward (gradients dropped each time)."""

    def __init__(self, mod, args, kwargs, grad: bool):
        import copy
        self.mod = copy.deepcopy(mod)
        self.args, self.kwargs, self.grad = args, kwargs, grad

    def __call__(self) -> None:
        if not self.grad:
            with torch.no_grad():
                self.mod(*self.args, **self.kwargs)
            return
        self.mod.zero_grad(set_to_none=True)
        _tensor_out(self.mod(*self.args, **self.kwargs)).float().mean().backward()


def calibration_rows(config: str, K: int, calls: list) -> list:
    """``net fwd`` / ``net fwd+bwd`` rows on the inputs of the step's first differentiable call."""
    mod, args, kwargs, _ = next(c for c in calls if c[3])
    rows = int(next(a for a in list(args) + list(kwargs.values()) if isinstance(a, torch.Tensor)).shape[0])
    return [Row(config, "net fwd", "-", K, NetCall(mod, args, kwargs, False), 1, 0, calls=[(rows, False)]),
            Row(config, "net fwd+bwd", "-", K, NetCall(mod, args, kwargs, True), 1, 1, calls=[(rows, True)])]


def fwd_bwd_ratio(rows: list) -> dict:
    """config -> (c = ms(net fwd+bwd) / ms(net fwd), rows_ref) from the calibration rows."""
    fwd = {r.config: r for r in rows if r.impl == "net fwd"}
    fb = {r.config: r for r in rows if r.impl == "net fwd+bwd"}
    return {k: (fb[k].ms / fwd[k].ms, fwd[k].calls[0][0]) for k in fwd if k in fb and fwd[k].ms > 0}


def _base_config(name: str) -> str:
    return name.split(" K=")[0]


def forward_equivalents(row: Row, ratios: dict) -> float:
    """The row's network calls per iteration in forward-equivalents (see the module docstring)."""
    got = ratios.get(_base_config(row.config))
    if got is None or not row.calls:
        return float("nan")
    c, ref = got
    return sum((n / ref) * (c if grad else 1.0) for n, grad in row.calls)


class _KwargsNet(nn.Module):
    """The peer calls ``model(hidden_states=..., timestep=..., **kw)``; diffusers' UNet/DiT take ``sample``."""

    def __init__(self, net):
        super().__init__()
        self.net = net

    def forward(self, hidden_states, timestep, **kw):
        out = self.net(hidden_states, timestep, return_dict=False, **kw)[0]
        c = hidden_states.shape[1]
        return out[:, :c] if out.shape[1] == 2 * c else out  # DiT learned-sigma head


def peer_available() -> bool:
    try:
        import modelopt.torch.fastgen  # noqa: F401
    except Exception:  # noqa: BLE001 - any import failure means "not usable here"
        return False
    return True


def peer_rows(spec: Spec, device, with_floor=True) -> list:
    import copy

    import modelopt.torch.fastgen as mtf

    torch.manual_seed(0)
    base = spec.make_net().to(device)
    teacher = _KwargsNet(base)
    student, fake = _KwargsNet(copy.deepcopy(base)), _KwargsNet(copy.deepcopy(base))
    student.train(), fake.train()
    cfg = mtf.DMDConfig(pred_type="flow", student_sample_steps=1, num_train_timesteps=1000, student_update_freq=1,
                        ema=mtf.EMAConfig(decay=0.999, fsdp2=False))
    pipe = mtf.DMDPipeline(student, teacher, fake, cfg)
    adam = dict(lr=1e-4, betas=(0.0, 0.99), eps=1e-12, foreach=True)  # the same optimiser as ours
    s_opt, f_opt = torch.optim.Adam(student.parameters(), **adam), torch.optim.Adam(fake.parameters(), **adam)
    g = torch.Generator(device=device).manual_seed(0)
    kw = spec.cond(device) or {}
    shape = (spec.batch, *spec.shape)

    def iteration():
        noise = torch.randn(shape, generator=g, device=device)
        latents = torch.randn(shape, generator=g, device=device)  # unused by the 1-step student input
        loss = pipe.compute_student_loss(latents, noise, **kw)["total"]
        s_opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(student.parameters(), 1.0)  # ours clips too (grad_clip=1)
        s_opt.step()
        pipe.update_ema()
        floss = pipe.compute_fake_score_loss(latents, noise, **kw)["total"]
        f_opt.zero_grad(set_to_none=True)
        floss.backward()
        torch.nn.utils.clip_grad_norm_(fake.parameters(), 1.0)
        f_opt.step()

    log = CallLog({"student": student.net, "teacher": teacher.net, "fake": fake.net})
    iteration()
    log.reset()
    log.record = True
    iteration()
    log.record = False
    row = Row(spec.name, "peer", "modelopt", 1, iteration, sum(log.fwd.values()), sum(log.grad.values()),
              calls=list(log.shapes))
    rows = [row]
    if with_floor:
        trained = [(student.net, s_opt), (fake.net, f_opt)]
        rows.append(Row(spec.name, "peer floor", "-", 1, Floor(log.calls, trained), row.fwd, row.grad_calls,
                        calls=list(log.shapes)))
        rows.append(Row(spec.name, "peer floor+clip+EMA", "-", 1, Floor(log.calls, trained, clip=1.0,
                                                                        ema=pipe.update_ema),
                        row.fwd, row.grad_calls, calls=list(log.shapes)))
    log.remove()
    return rows


# ---------------------------------------------------------------------- timing and memory
def _sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize()


def time_rows(rows: list, repeats: int, device, min_round_s: float = 0.25) -> None:
    """Interleaved: each round runs every row, so load that drifts between rounds hits all rows alike.

    Within a round a configuration's rows each run ``n`` times in a row, ``n`` the same for all of them
    (so :func:`paired_ratio` still pairs calls of the same round) and chosen from the warm-up so that the
    configuration's ``ours`` row takes about ``min_round_s`` per round: the cheap configurations, whose
    overheads sit closest to the noise, get several samples per round instead of one. The row order
    alternates between rounds (forwards, then backwards), so no row always runs right after the same
    other row (cache and frequency state left behind by the previous row then bias no ratio)."""
    warm = {}
    for r in rows:
        _sync(device)
        t0 = time.perf_counter()
        r.fn()  # warm-up
        _sync(device)
        if r.impl == "ours" and r.config not in warm:
            warm[r.config] = time.perf_counter() - t0
    inner = {c: max(1, min(8, round(min_round_s / max(t, 1e-6)))) for c, t in warm.items()}
    for k in range(repeats):
        for r in (rows if k % 2 == 0 else rows[::-1]):
            for _ in range(inner.get(r.config, 1)):
                _sync(device)
                t0, c0 = time.perf_counter(), time.process_time()
                r.fn()
                _sync(device)
                r.times.append(time.perf_counter() - t0)
                r.cpu_times.append(time.process_time() - c0)


def _status_kib(key: str) -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(key + ":"):
                return int(line.split()[1])
    raise KeyError(key)


def peak_mib(fn, device) -> float:
    """Peak memory of one call of ``fn`` above what was held before it (MiB)."""
    import gc
    gc.collect()
    if device.type == "cuda":
        torch.cuda.synchronize()
        base = torch.cuda.memory_allocated()
        torch.cuda.reset_peak_memory_stats()
        fn()
        torch.cuda.synchronize()
        return (torch.cuda.max_memory_allocated() - base) / 2**20
    try:
        base = _status_kib("VmRSS")
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")  # reset the RSS high-water mark (VmHWM) to the current RSS
    except OSError:
        return float("nan")
    fn()
    return (_status_kib("VmHWM") - base) / 1024


def measure_memory(rows: list, device, tries: int = 2) -> None:
    for r in rows:
        r.peak_mib = min(peak_mib(r.fn, device) for _ in range(tries))


# ---------------------------------------------------------------------- driver
def build_rows(names, specs, device, backends, peer: bool, k_sweep) -> list:
    rows = []
    for name in names:
        spec = specs[name]
        rows += ours_rows(spec, device, backends)
        if spec.name.startswith("unet"):  # the memory knob: recompute the student's graph in backward
            rows += ours_rows(spec, device, backends[:1], with_floor=False, checkpoint=True)
        if spec.kind == "diffusers":  # the optimiser choices: torch's foreach Adam (bit-identical to torch's
            # loop; separate clip and EMA passes) and torch's fused Adam (RMMDConfig(adam="fused"))
            rows += ours_rows(spec, device, backends[:1], with_floor=False, adam="foreach")
            rows += ours_rows(spec, device, backends[:1], with_floor=False, adam="fused")
        if device.type == "cuda":  # the rollout as a replayed CUDA graph (eager elsewhere: nothing to time)
            graph = ours_rows(spec, device, backends[:1], with_floor=False, graph_rollout=True)
            base = next(r for r in rows if r.config == spec.name and r.impl == "ours")
            for r in graph:
                r.calls = list(base.calls)
            rows += graph
        if peer and spec.peer:
            rows += peer_rows(spec, device)
    for K in k_sweep:
        spec = specs["unet-s" if "unet-s" in specs else "2d"]
        rows += ours_rows(spec, device, backends[:1], num_steps=K, with_floor=False)
        rows[-1].config += f" K={K}"
    return rows


SAME_OPT_FLOOR = "floor, engine optimisers"  # the floor stepping the engine's own optimiser objects
FLOORS = ("floor", "peer floor", "floor+clip+EMA", "peer floor+clip+EMA", SAME_OPT_FLOOR)


def _floor_keys(r: Row) -> tuple[str, str, str | None]:
    """(its floor, its floor+clip+EMA, its same-optimiser floor or None) row names for row ``r``."""
    peer = r.impl.startswith("peer")
    base = "peer floor" if peer else "floor"
    return base, base + "+clip+EMA", None if peer else SAME_OPT_FLOOR


def paired_ratio(row: Row, floor: Row, cpu: bool = False) -> float:
    """Median over rounds of ``row / floor`` timed in the same round (time_rows interleaves them), which
    cancels load that drifts between rounds better than a ratio of the two medians."""
    a, b = (row.cpu_times, floor.cpu_times) if cpu else (row.times, floor.times)
    pairs = [x / y for x, y in zip(a, b) if y > 0]
    return statistics.median(pairs) if pairs else float("nan")


def paired_ci(row: Row, floor: Row, level: float = 0.95, resamples: int = 2000, seed: int = 0) -> tuple:
    """A ``level`` bootstrap interval of :func:`paired_ratio` (the per-round ratios resampled with
    replacement, the median of each resample; fixed seed, so the interval is reproducible): how far the
    median ratio could move with other rounds on the same machine. ``(nan, nan)`` without rounds."""
    pairs = [x / y for x, y in zip(row.times, floor.times) if y > 0]
    if not pairs:
        return float("nan"), float("nan")
    rng = random.Random(seed)
    medians = sorted(statistics.median(rng.choices(pairs, k=len(pairs))) for _ in range(resamples))
    cut = int(round((1 - level) / 2 * resamples))
    return medians[cut], medians[resamples - 1 - cut]


def _floor_of(r: Row, rows: list, which: int) -> Row | None:
    """The floor row of ``r``: its floor (``which`` 0), floor+clip+EMA (1) or the floor stepping the engine's
    own optimisers (2); None for floors, calibration rows and rows without that floor (or not yet timed)."""
    if r.impl in FLOORS or r.impl.startswith("net "):
        return None
    want = _floor_keys(r)[which]
    f = next((x for x in rows if x.config == r.config and x.impl == want), None) if want else None
    return f if f is not None and f.times else None


def _paired(r: Row, rows: list, which: int) -> float | None:
    """:func:`paired_ratio` of ``r`` over :func:`_floor_of` (None where it has none)."""
    f = _floor_of(r, rows, which)
    return paired_ratio(r, f) if f is not None else None


def _paired_ci(r: Row, rows: list, which: int) -> list | None:
    """:func:`paired_ci` of ``r`` over :func:`_floor_of`, as ``[low, high]`` (None where it has none)."""
    f = _floor_of(r, rows, which)
    return list(paired_ci(r, f)) if f is not None else None


def format_intervals(rows: list) -> str:
    """One line per default-backend ``ours`` / ``peer`` row: its overheads with their 95% bootstrap intervals."""
    out = ["overhead, median of per-round ratios [95% bootstrap interval over rounds]:"]
    for r in rows:
        if r.impl not in ("ours", "peer") or r.backend == "reference":
            continue
        parts = []
        for which, label in ((0, "vs floor"), (1, "vs floor+clip+EMA"), (2, "vs floor with the engine's optimisers")):
            value, ci = _paired(r, rows, which), _paired_ci(r, rows, which)
            if value is not None:
                parts.append(f"{label} {value:.3f} [{ci[0]:.3f}, {ci[1]:.3f}]")
        if parts:
            out.append(f"  {r.config} {r.impl}: " + "; ".join(parts))
    return "\n".join(out)


def format_table(rows: list) -> str:
    """Markdown table of every row. Overheads are the row over its floor and over its floor+clip+EMA, each
    the median of the per-round ratios (:func:`paired_ratio`); the floor+clip+EMA and same-optimiser floor
    rows show their own ratio over the floor (what clipping and the EMA cost; what the engine's optimiser
    saves or costs against torch's)."""
    floors = {(r.config, r.impl): r for r in rows if r.impl in FLOORS}
    ratios = fwd_bwd_ratio(rows)
    head = ("| config | impl | backend | K | fwd | grad calls | ms / iter | overhead vs floor | "
            "overhead vs floor+clip+EMA | ms / call | fwd-eq / iter | ms / fwd-eq | CPU ms / iter | CPU overhead | "
            "CPU overhead vs floor+clip+EMA | peak MiB |\n"
            "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|")
    lines = [head]

    def ratio(r, key, cpu=False):
        f = floors.get(key)
        return f"{paired_ratio(r, f, cpu):.3f}" if f is not None and f.times else ""

    for r in rows:
        base, plus, _ = _floor_keys(r)
        cells = ["", "", "", ""]  # overhead, overhead+, CPU overhead, CPU overhead+
        if r.impl.endswith("+clip+EMA") or r.impl == SAME_OPT_FLOOR:
            cells[0], cells[2] = ratio(r, (r.config, base)), ratio(r, (r.config, base), cpu=True)
        elif r.impl not in FLOORS and not r.impl.startswith("net "):
            cells = [ratio(r, (r.config, base)), ratio(r, (r.config, plus)),
                     ratio(r, (r.config, base), cpu=True), ratio(r, (r.config, plus), cpu=True)]
        per_call = r.ms / (r.fwd + r.grad_calls) if r.fwd else float("nan")
        feq = forward_equivalents(r, ratios)
        lines.append(f"| {r.config} | {r.impl} | {r.backend} | {r.num_steps} | {r.fwd} | {r.grad_calls} | "
                     f"{r.ms:.1f} | {cells[0]} | {cells[1]} | {per_call:.2f} | {feq:.2f} | {r.ms / feq:.2f} | "
                     f"{r.cpu_ms:.1f} | {cells[2]} | {cells[3]} | {r.peak_mib:.1f} |")
    return "\n".join(lines)


def _memory_subprocess(argv, rows) -> None:
    """Peak memory in a fresh process with a fixed glibc mmap threshold: every tensor above 64 KiB is
    mmapped and unmapped on free, so the RSS high-water mark follows live memory (with the default
    dynamic threshold glibc keeps freed blocks and the RSS would not show a step's peak)."""
    env = dict(os.environ, MALLOC_MMAP_THRESHOLD_="65536", MALLOC_TRIM_THRESHOLD_="0")
    cmd = [sys.executable, os.path.abspath(__file__), "--memory-worker", *argv]
    out = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=1800)
    if out.returncode != 0:
        print(f"memory worker failed:\n{out.stderr[-2000:]}", file=sys.stderr)
        return
    peaks = json.loads(out.stdout.strip().splitlines()[-1])
    for r, p in zip(rows, peaks):
        r.peak_mib = p


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--smoke", action="store_true", help="tiny configs, 1 repeat, in-process memory, no peer")
    ap.add_argument("--configs", nargs="+", default=None, help=f"subset of {list(CONFIGS)}")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--repeats", type=int, default=9)
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--no-peer", action="store_true")
    ap.add_argument("--k-sweep", type=int, nargs="*", default=None, help="K values for the memory sweep")
    ap.add_argument("--memory", choices=("subprocess", "inprocess", "off"), default=None)
    ap.add_argument("--json", default=None)
    ap.add_argument("--note", default="", help="free text stored in the JSON (e.g. machine load)")
    ap.add_argument("--memory-worker", action="store_true", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)

    torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    specs = SMOKE if args.smoke else CONFIGS
    names = args.configs or (list(SMOKE) if args.smoke else list(DEFAULT))
    unknown = [n for n in names if n not in specs]
    if unknown:
        ap.error(f"unknown configs {unknown}; choose from {list(specs)}")
    k_sweep = args.k_sweep if args.k_sweep is not None else ([1, 2] if args.smoke else [1, 2, 4, 8])
    repeats = 1 if args.smoke else args.repeats
    memory = args.memory or ("inprocess" if args.smoke or device.type == "cuda" else "subprocess")
    fused = fused_backend(device)
    backends = [fused, "reference"] if fused != "reference" else ["reference"]
    want_peer = not args.no_peer and not args.smoke
    peer = want_peer and peer_available()

    rows = build_rows(names, specs, device, backends, peer, k_sweep)
    if args.memory_worker:
        measure_memory(rows, device)
        print(json.dumps([r.peak_mib for r in rows]))
        return 0

    time_rows(rows, repeats, device, min_round_s=0.0 if args.smoke else 0.25)
    if memory == "inprocess":
        measure_memory(rows, device, tries=1 if args.smoke else 2)
    elif memory == "subprocess":
        _memory_subprocess(list(argv) if argv is not None else sys.argv[1:], rows)

    stamp = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())
    machine = (f"{platform.machine()} {os.cpu_count()} cores, {platform.platform()}, torch {torch.__version__}, "
               f"{args.threads} threads, device {device}"
               + (f" ({torch.cuda.get_device_name(device)})" if device.type == "cuda" else ""))
    print(f"# bench_step {stamp} -- {machine}")
    if not peer:
        print("peer not installed (pip install 'rmmd_core[peer]' for nvidia-modelopt)" if want_peer and not peer
              else "peer not run (--no-peer / --smoke)")
    print(format_table(rows))
    print(format_intervals(rows))
    ratios = fwd_bwd_ratio(rows)
    print("forward+backward / forward (net rows): "
          + ", ".join(f"{k} {c:.2f}" for k, (c, _) in ratios.items()))
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"date": stamp, "machine": machine, "note": args.note, "repeats": repeats,
                       "fwd_bwd_ratio": {k: c for k, (c, _) in ratios.items()},
                       "rows": [{"config": r.config, "impl": r.impl, "backend": r.backend, "num_steps": r.num_steps,
                                 "fwd": r.fwd, "grad_calls": r.grad_calls, "ms_median": r.ms,
                                 "call_rows": [n for n, _ in r.calls], "call_grad": [g for _, g in r.calls],
                                 "fwd_eq": forward_equivalents(r, ratios),
                                 "ms_per_fwd_eq": r.ms / forward_equivalents(r, ratios),
                                 "overhead_vs_floor": _paired(r, rows, 0), "overhead_vs_floor_plus": _paired(r, rows, 1),
                                 "overhead_vs_floor_same_optimizer": _paired(r, rows, 2),
                                 "overhead_vs_floor_ci95": _paired_ci(r, rows, 0),
                                 "overhead_vs_floor_plus_ci95": _paired_ci(r, rows, 1),
                                 "overhead_vs_floor_same_optimizer_ci95": _paired_ci(r, rows, 2),
                                 "samples": len(r.times), "ms_all": [1e3 * t for t in r.times], "cpu_ms_median": r.cpu_ms,
                                 "cpu_ms_all": [1e3 * t for t in r.cpu_times], "peak_mib": r.peak_mib}
                                for r in rows]},
                      f, indent=1)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
