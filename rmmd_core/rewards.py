"""Differentiable rewards ``R(x0, cond) -> Tensor[B]`` (method.md §c.1, §e K4a/K4b).

Any callable with that signature works as a reward; its gradient is taken with autograd. The built-in
closed-form rewards also expose ``value_and_grad`` so the engine skips autograd for them. Rewards are
per-element means (method.md "Project defaults": Loss reduction), so lambda does not depend on
resolution.

A reward with ``multi_sample = True`` receives all M members of each conditioning at once, shaped
``(M, B, ...)``, and returns one value per conditioning ``(B,)`` (e.g. the fair CRPS, method.md §c.7).

Reward-only inputs (``reward_kwargs=`` of :func:`rmmd_core.step` / :func:`rmmd_core.losses`, e.g. the
verifying ``target`` of :class:`CRPSReward`) arrive as keyword arguments of ``value_and_grad``; they never
reach a network.
"""
from __future__ import annotations

import abc
import inspect

import torch

from . import ops
from .ops.reward_reference import LUMA  # noqa: F401  (ITU-R BT.601 luma weights, method.md §e K4a)


class Reward(abc.ABC):
    """Base class: subclasses implement ``value_and_grad``; ``__call__`` returns the value only.

    Rewards computed by a fused op (the built-ins) set ``fused_op`` to the op's name in
    ``rmmd_core.ops`` and take a ``backend`` (None: follow the engine's backend, see
    :meth:`engine_value_and_grad`); the engine reports the backend that op ran on as the step metric
    ``backend_<fused_op>``.
    """

    multi_sample = False
    fused_op: str | None = None  # e.g. "grayscale_reward"; None: not a fused op (no backend metric)
    backend: str | None = None

    def __call__(self, x0: torch.Tensor, cond=None, **reward_kwargs) -> torch.Tensor:
        return self.value_and_grad(x0, cond, **reward_kwargs)[0]

    def effective_backend(self, engine_backend: str | None = None) -> str | None:
        """The backend request of this reward's fused op inside an engine: the reward's own ``backend``
        when set, else the engine's (None there too: ``RMMD_CORE_BACKEND``, default auto)."""
        return self.backend if self.backend is not None else engine_backend

    def engine_value_and_grad(self, x0: torch.Tensor, cond=None, backend: str | None = None,
                              need_grad: bool = True, /, **reward_kwargs):
        """What the engine calls: ``(R, dR/dx0)`` (grad None when ``need_grad`` is False).

        ``backend``: the engine's backend; fused rewards run their op on :meth:`effective_backend`.
        The default ignores it and calls ``value_and_grad`` (or, for the value only, ``__call__``
        under ``no_grad``), so user subclasses need nothing new. The four leading arguments are
        positional-only, so ``reward_kwargs`` may use any name (even ``backend``)."""
        if need_grad:
            return self.value_and_grad(x0, cond, **reward_kwargs)
        with torch.no_grad():
            return self(x0, cond, **reward_kwargs), None

    def backend_used(self, x0: torch.Tensor, engine_backend: str | None = None) -> dict[str, str]:
        """``{fused_op: backend name}`` that :meth:`engine_value_and_grad` runs on for ``x0`` ({} if not fused)."""
        if self.fused_op is None:
            return {}
        return {self.fused_op: ops.resolve_backend(self.fused_op, x0, backend=self.effective_backend(engine_backend))}

    @abc.abstractmethod
    def value_and_grad(self, x0: torch.Tensor, cond=None):
        """Return ``(R[B], dR_b/dx0 [B, ...])``: per-sample values and each value's input gradient.

        Subclasses that need reward-only inputs declare them as keyword arguments (see :class:`CRPSReward`)."""

    def _kwargs_target(self):
        return self.value_and_grad

    def check_kwargs(self, reward_kwargs: dict) -> None:
        """Raise TypeError, naming the reward and the keys, if it cannot take these ``reward_kwargs``."""
        try:
            inspect.signature(self._kwargs_target()).bind(None, None, **reward_kwargs)
        except TypeError as err:
            raise TypeError(f"reward {type(self).__name__} does not accept reward_kwargs {sorted(reward_kwargs)} "
                            f"({err})") from None


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

    fused_op = "grayscale_reward"

    def __init__(self, backend: str | None = None):
        # None: the engine's backend inside rmmd_core.step, else RMMD_CORE_BACKEND, default auto
        self.backend = backend

    def value_and_grad(self, x0, cond=None):
        return self._run(x0, self.backend)

    def engine_value_and_grad(self, x0, cond=None, backend=None, need_grad=True, /):
        value, grad = self._run(x0, self.effective_backend(backend))
        return value, (grad if need_grad else None)

    def _run(self, x0, backend):
        _check_image(x0, "GrayscaleReward", 3)
        value, grad = ops.grayscale_reward(x0, backend=backend)
        return value.to(x0.dtype), grad


class LaplacianReward(Reward):
    """Laplacian smoothness: ``R = -(1/D) sum (x - avg4(x))^2`` per channel, replicate borders.

    x0: ``(B, C, H, W)``; D = CHW. With ``r = x - avg4(x) = (I - P) x``, the gradient is the 5-point
    stencil ``dR/dx = -(2/D) (I - P)^T r`` (P is symmetric with replicate borders), computed with the value
    in one pass by the fused op :func:`rmmd_core.ops.laplacian_reward` (method.md §e K4b).
    """

    fused_op = "laplacian_reward"

    def __init__(self, backend: str | None = None):
        # None: the engine's backend inside rmmd_core.step, else RMMD_CORE_BACKEND, default auto
        self.backend = backend

    def value_and_grad(self, x0, cond=None):
        return self._run(x0, self.backend)

    def engine_value_and_grad(self, x0, cond=None, backend=None, need_grad=True, /):
        value, grad = self._run(x0, self.effective_backend(backend))
        return value, (grad if need_grad else None)

    def _run(self, x0, backend):
        _check_image(x0, "LaplacianReward")
        value, grad = ops.laplacian_reward(x0, backend=backend)
        return value.to(x0.dtype), grad


class CallableReward(Reward):
    """Adapts any differentiable ``fn(x0, cond) -> Tensor[B]``; gradient by autograd."""

    def __init__(self, fn, multi_sample: bool = False):
        if not callable(fn):
            raise TypeError(f"reward must be callable, got {type(fn).__name__}")
        self.fn = fn
        self.multi_sample = bool(multi_sample or getattr(fn, "multi_sample", False))

    def _kwargs_target(self):
        return self.fn

    def value_and_grad(self, x0, cond=None, **reward_kwargs):
        x = x0.detach().requires_grad_(True)
        with torch.enable_grad():
            v = self.fn(x, cond, **reward_kwargs)
            if not isinstance(v, torch.Tensor):
                raise TypeError(f"reward returned {type(v).__name__}, expected a Tensor of shape (B,)")
            (g,) = torch.autograd.grad(v.sum(), x, allow_unused=True)
        if g is None:
            g = torch.zeros_like(x)
        return v.detach(), g


class CRPSReward(Reward):
    """Ensemble reward ``R_b = -CRPS_fair(x[:, b], target_b)``, a weighted mean over elements (method.md §c.7, §e K4c).

    Multi-sample: ``value_and_grad(x0 (M, B, *S), cond, *, target (B, *S), mask=None)`` with M >= 2 members
    per conditioning (``RMMDConfig(num_samples=M)``); ``target`` is passed as ``reward_kwargs={"target": y}``
    so it reaches the reward but not the networks. ``weights`` (non-negative, broadcast to ``S``; e.g.
    cos-latitude × per-variable) are normalised per sample. Fair CRPS and its sub-gradient
    ``dCRPS/dx_i = (1/M) sign(x_i - y) - (2 rank_i - M - 1)/(M (M-1))`` (times the normalised weight) come
    from one op call; returns ``(-crps (B,), -grad (M, B, *S))``.
    """

    multi_sample = True
    fused_op = "crps_fair"

    def __init__(self, weights: torch.Tensor | None = None, backend: str | None = None):
        if weights is not None and not isinstance(weights, torch.Tensor):
            raise TypeError(f"CRPSReward: weights must be a Tensor or None, got {type(weights).__name__}")
        self.weights = weights
        # None: the engine's backend inside rmmd_core.step, else RMMD_CORE_BACKEND, default auto
        self.backend = backend

    def value_and_grad(self, x0, cond=None, *, target=None, mask=None):
        return self._run(x0, target, mask, self.backend)

    def engine_value_and_grad(self, x0, cond=None, backend=None, need_grad=True, /, *, target=None,
                              mask=None):
        value, grad = self._run(x0, target, mask, self.effective_backend(backend))
        return value, (grad if need_grad else None)

    def _run(self, x0, target, mask, backend):
        if target is None:
            raise ValueError("CRPSReward needs the verifying state: pass reward_kwargs={'target': y} with y of "
                             "shape (B, ...) to rmmd_core.step / losses")
        if not isinstance(x0, torch.Tensor) or x0.dim() < 2 or x0.shape[0] < 2:
            raise ValueError(f"CRPSReward: x0 must be the ensemble (M, B, ...) with M >= 2 members "
                             f"(set RMMDConfig(num_samples=2) or more), got {tuple(getattr(x0, 'shape', ()))}")
        w = self.weights.to(x0.device) if self.weights is not None else None
        target = target.to(x0.dtype) if isinstance(target, torch.Tensor) and target.is_floating_point() else target
        # the fused K4c op (sorted/rank form, O(M·D) memory; closed form for M = 2)
        crps, grad = ops.crps_fair(x0, target, w, mask, with_grad=True, backend=backend)
        return -crps, -grad


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
