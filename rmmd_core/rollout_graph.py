"""The no-grad K-step student rollout as one replayable unit: a CUDA graph on CUDA, the same code eagerly
elsewhere (issue 7: "capture the no-grad K-step rollout in a CUDA graph where the models allow it").

A rollout of a few-step student is K small network calls plus K fused ``denoise_step`` launches, so on a
GPU its cost is launch latency as much as math. A CUDA graph replays all of those launches at once, but it
freezes every launch argument, and every value the host computed, at capture time. What changes between
iterations therefore lives in *static device buffers* that the caller refills before each replay:

* ``z``: the start noise, ``(B, *sample_shape)``;
* ``seeds``: the rollout's Philox seeds, ``(plan.seeds_needed,)`` int64 on the device. The fused ops read
  them from device memory (``rmmd_core.ops`` *device seeds*: the ``*_dev`` ops), so the same captured
  launches draw fresh noise each replay, bit-identical to passing the same values as ints;
* ``cond``: the conditioning tensors (class labels, text embeddings), copied in place.

Everything else a rollout needs is constant for a given plan and batch: the grid times are pinned tensors
(``RolloutPlan.step_times``) whose schedule values, network times and x̂ coefficients are computed during
the warm-up runs, before capture; the step coefficients come from the plan. The rollout body performs no
device->host read (tested by counting ``aten::_local_scalar_dense`` on CPU), which capture requires.

Off CUDA (or with ``capture=False``) :meth:`RolloutGraph.__call__` runs the body eagerly on the same
buffers, so the plumbing is testable anywhere and results match :func:`rmmd_core.sampler.run_rollout`
with the same seeds bit for bit.

Not capturable: networks that read device values on the host, change shapes with the data, or allocate
with host synchronisation; hooks that must run every call (they run during warm-up and capture only).
The Denoiser's call counters are advanced by the calls one rollout makes on every replay (and left as
they were by the warm-up and capture runs).
"""
from __future__ import annotations

import torch

from .denoiser import Cond, Denoiser
from .sampler import RolloutPlan, run_rollout

__all__ = ["RolloutGraph"]


def _static_cond(cond: Cond) -> Cond:
    """A private copy of ``cond``'s tensors (the static buffers a replay reads); other values are kept."""
    if cond is None:
        return None
    if isinstance(cond, torch.Tensor):
        return cond.detach().clone()
    return {k: v.detach().clone() if isinstance(v, torch.Tensor) else v for k, v in cond.items()}


def _copy_cond(dst: Cond, src: Cond, name: str = "cond") -> None:
    """Copy ``src``'s tensors into the static ``dst`` (same structure, shapes and dtypes required)."""
    if dst is None:
        if src is not None:
            raise ValueError(f"{name} was None when the rollout was captured, got {type(src).__name__}")
        return
    if isinstance(dst, torch.Tensor):
        if not isinstance(src, torch.Tensor) or src.shape != dst.shape or src.dtype != dst.dtype:
            raise ValueError(f"{name} must be a {dst.dtype} tensor of shape {tuple(dst.shape)} (as captured), got "
                             f"{getattr(src, 'dtype', type(src).__name__)} {tuple(getattr(src, 'shape', ()))}")
        dst.copy_(src)
        return
    if not isinstance(src, dict) or set(src) != set(dst):
        raise ValueError(f"{name} must have the captured keys {sorted(dst)}, got "
                         f"{sorted(src) if isinstance(src, dict) else type(src).__name__}")
    for k, v in dst.items():
        if isinstance(v, torch.Tensor):
            _copy_cond(v, src[k], f"{name}[{k!r}]")
        elif src[k] is not v and src[k] != v:
            raise ValueError(f"{name}[{k!r}] was {v!r} when the rollout was captured, got {src[k]!r}")


class RolloutGraph:
    """A replayable no-grad rollout of ``denoiser`` along ``plan`` for start states shaped like ``z_like``.

    Args:
        denoiser: the student (any :class:`Denoiser`; fused steps when ``sampler.can_fuse`` allows).
        plan: the :class:`~rmmd_core.sampler.RolloutPlan` (e.g. ``sampler.rollout_plan``).
        z_like: a ``(B, *sample_shape)`` tensor giving shape, dtype and device of the start noise.
        cond: conditioning of the B samples, copied into static buffers (later calls must pass the same
            structure, shapes and dtypes).
        guidance_scale, backend: as in :func:`~rmmd_core.sampler.run_rollout`.
        capture: capture a CUDA graph (default: when ``z_like`` is on a CUDA device).
        warmup: eager runs before capture (they compute the pinned schedule values and let lazy
            initialisation happen outside the graph; CUDA's recommendation is a few on a side stream).

    Call it with the start noise and a ``(plan.seeds_needed,)`` int64 tensor of Philox seeds (on the
    device; ``sampler.seed_tensor`` draws them) to get ``(x, x_hat)``: the rollout's end state and last x̂
    (None when no step ran), as :func:`run_rollout` returns them. The returned tensors are the static
    output buffers, overwritten by the next call: clone them to keep them.
    """

    def __init__(self, denoiser: Denoiser, plan: RolloutPlan, z_like: torch.Tensor, cond: Cond = None, *,
                 guidance_scale: float | None = None, backend: str | None = None, capture: bool | None = None,
                 warmup: int = 2):
        if not isinstance(z_like, torch.Tensor) or not z_like.is_floating_point() or z_like.dim() < 1:
            raise TypeError(f"z_like must be a floating (B, ...) tensor, got {getattr(z_like, 'dtype', type(z_like))}")
        if not isinstance(warmup, int) or warmup < 1:
            raise ValueError(f"warmup must be an integer >= 1, got {warmup!r}")
        self.denoiser, self.plan = denoiser, plan
        self.guidance_scale, self.backend = guidance_scale, backend
        device = z_like.device
        self.z = torch.zeros_like(z_like, memory_format=torch.contiguous_format)
        self.seeds = torch.zeros(plan.seeds_needed, dtype=torch.int64, device=device)
        self.cond = _static_cond(cond)
        self.capture = device.type == "cuda" if capture is None else bool(capture)
        if self.capture and device.type != "cuda":
            raise ValueError(f"capture=True needs CUDA tensors, got z_like on {device}")
        self.graph = None
        start = counts0 = (denoiser.calls, denoiser.nfe, denoiser.grad_calls)
        if self.capture:
            side = torch.cuda.Stream(device)
            side.wait_stream(torch.cuda.current_stream(device))
            with torch.cuda.stream(side):
                for _ in range(warmup):
                    self._body()
            torch.cuda.current_stream(device).wait_stream(side)
            counts0 = (denoiser.calls, denoiser.nfe, denoiser.grad_calls)
            self.graph = torch.cuda.CUDAGraph()
            with torch.cuda.graph(self.graph):
                self.out = self._body()
        else:
            for _ in range(warmup):
                self._body()
            counts0 = (denoiser.calls, denoiser.nfe, denoiser.grad_calls)
            self.out = self._body()
        # what one rollout adds to the Denoiser's counters (a replay runs no Python: added by hand); the
        # warm-up and capture runs are set-up, not calls of anyone's iteration, so the counters are restored
        self._counts = (denoiser.calls - counts0[0], denoiser.nfe - counts0[1], denoiser.grad_calls - counts0[2])
        denoiser.calls, denoiser.nfe, denoiser.grad_calls = start

    def _body(self):
        seeds = [self.seeds[i] for i in range(self.plan.seeds_needed)]  # 0-d views: device seeds
        with torch.no_grad():
            x, x_hat, _ = run_rollout(self.denoiser, self.z, self.plan, self.cond, guidance_scale=self.guidance_scale,
                                      backend=self.backend, seeds=seeds)
        return x, x_hat

    def __call__(self, z: torch.Tensor, seeds: torch.Tensor, cond: Cond = None):
        if not isinstance(z, torch.Tensor) or z.shape != self.z.shape or z.dtype != self.z.dtype:
            raise ValueError(f"z must be a {self.z.dtype} tensor of shape {tuple(self.z.shape)} (as captured), got "
                             f"{getattr(z, 'dtype', type(z).__name__)} {tuple(getattr(z, 'shape', ()))}")
        if (not isinstance(seeds, torch.Tensor) or seeds.dtype != torch.int64
                or seeds.shape != (self.plan.seeds_needed,)):
            raise ValueError(f"seeds must be an int64 tensor of shape ({self.plan.seeds_needed},) (the plan's "
                             f"seeds_needed), got {getattr(seeds, 'dtype', type(seeds).__name__)} "
                             f"{tuple(getattr(seeds, 'shape', ()))}")
        _copy_cond(self.cond, cond)
        self.z.copy_(z)
        self.seeds.copy_(seeds)
        if self.graph is not None:
            self.graph.replay()
            den = self.denoiser
            den.calls += self._counts[0]
            den.nfe += self._counts[1]
            den.grad_calls += self._counts[2]
            return self.out
        return self._body()
