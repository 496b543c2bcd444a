"""Differentiable rewards ``R(x0, cond) -> Tensor[B]`` (method.md §c.1, §e K4a/K4b).

Any callable with that signature works as a reward; its gradient is taken with autograd. The built-in
closed-form rewards also expose ``value_and_grad`` so the engine skips autograd for them. Rewards are
per-element means (method.md "Project defaults": Loss reduction), so lambda does not depend on
resolution.

A reward with ``multi_sample = True`` receives all M members of each conditioning at once, shaped
``(M, B, ...)``, and returns one value per conditioning ``(B,)`` (e.g. the fair CRPS, method.md §c.7).
"""
from __future__ import annotations

import abc

import torch

from . import ops
from .ops.reward_reference import LUMA  # noqa: F401  (ITU-R BT.601 luma weights, method.md §e K4a)


class Reward(abc.ABC):
    """Base class: subclasses implement ``value_and_grad``; ``__call__`` returns the value only."""

    multi_sample = False

    def __call__(self, x0: torch.Tensor, cond=None) -> torch.Tensor:
        return self.value_and_grad(x0, cond)[0]

    @abc.abstractmethod
    def value_and_grad(self, x0: torch.Tensor, cond=None):
        """Return ``(R[B], dR_b/dx0 [B, ...])``: per-sample values and each value's input gradient."""


def _check_image(x0: torch.Tensor, name: str, channels: int | None = None) -> None:
    if not isinstance(x0, torch.Tensor) or not x0.is_floating_point():
        raise TypeError(f"{name}: x0 must be a floating-point Tensor")
    if x0.dim() != 4:
        raise ValueError(f"{name}: x0 must have shape (B, C, H, W), got {tuple(x0.shape)}")
    if channels is not None and x0.shape[1] != channels:
        raise ValueError(f"{name}: x0 must have {channels} channels, got {x0.shape[1]}")


class GrayscaleReward(Reward):
    """Black-and-white reward: ``R = -(1/D) sum_{c,p} (x_c - gray)^2``, ``gray = 0.299 r + 0.587 g + 0.114 b``.

    x0: ``(B, 3, H, W)``; D = 3HW. Gradient (closed form), with ``d_c = x_c - gray``:
    ``dR/dx_k = -(2/D) (d_k - w_k sum_c d_c)``. Value and gradient come from the fused op
    :func:`rmmd_core.ops.grayscale_reward` (method.md §e K4a; backend from ``RMMD_CORE_BACKEND``, default
    auto) in fp32 math (fp64 for fp64 input). Returns ``(R[B], dR/dx0[B,3,H,W])`` in x0's dtype.
    """

    def __init__(self, backend: str | None = None):
        self.backend = backend  # None: RMMD_CORE_BACKEND, default auto (see rmmd_core.ops.dispatch)

    def value_and_grad(self, x0, cond=None):
        _check_image(x0, "GrayscaleReward", 3)
        value, grad = ops.grayscale_reward(x0, backend=self.backend)
        return value.to(x0.dtype), grad


class LaplacianReward(Reward):
    """Laplacian smoothness: ``R = -(1/D) sum (x - avg4(x))^2`` per channel, replicate borders.

    x0: ``(B, C, H, W)``; D = CHW. With ``r = x - avg4(x) = (I - P) x``, the gradient is the 5-point
    stencil ``dR/dx = -(2/D) (I - P)^T r`` (P is symmetric with replicate borders), computed with the value
    in one pass by the fused op :func:`rmmd_core.ops.laplacian_reward` (method.md §e K4b).
    """

    def __init__(self, backend: str | None = None):
        self.backend = backend  # None: RMMD_CORE_BACKEND, default auto (see rmmd_core.ops.dispatch)

    def value_and_grad(self, x0, cond=None):
        _check_image(x0, "LaplacianReward")
        value, grad = ops.laplacian_reward(x0, backend=self.backend)
        return value.to(x0.dtype), grad


class CallableReward(Reward):
    """Adapts any differentiable ``fn(x0, cond) -> Tensor[B]``; gradient by autograd."""

    def __init__(self, fn, multi_sample: bool = False):
        if not callable(fn):
            raise TypeError(f"reward must be callable, got {type(fn).__name__}")
        self.fn = fn
        self.multi_sample = bool(multi_sample or getattr(fn, "multi_sample", False))

    def value_and_grad(self, x0, cond=None):
        x = x0.detach().requires_grad_(True)
        with torch.enable_grad():
            v = self.fn(x, cond)
            if not isinstance(v, torch.Tensor):
                raise TypeError(f"reward returned {type(v).__name__}, expected a Tensor of shape (B,)")
            (g,) = torch.autograd.grad(v.sum(), x, allow_unused=True)
        if g is None:
            g = torch.zeros_like(x)
        return v.detach(), g


BUILTIN = {"grayscale": GrayscaleReward, "laplacian": LaplacianReward}


def as_reward(reward) -> Reward | None:
    """None, a :class:`Reward`, a built-in name (``'grayscale' | 'laplacian'``) or a callable -> Reward."""
    if reward is None or isinstance(reward, Reward):
        return reward
    if isinstance(reward, str):
        if reward not in BUILTIN:
            raise ValueError(f"unknown reward {reward!r}; valid names: {sorted(BUILTIN)}")
        return BUILTIN[reward]()
    return CallableReward(reward)
