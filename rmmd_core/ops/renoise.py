"""K2, forward (re-)noise with in-kernel Philox noise (method.md §c.6 step 2, §e K2): public entry point,
validation, fake kernel and autograd of ``rmmd_core::renoise`` (C++ CPU / CUDA) and
``rmmd_core::renoise_triton``. The truth is ``ops/reference.py::renoise_ref``.
"""

from __future__ import annotations

import torch

from . import _checks, dispatch
from ._library import register_op
from .reference import renoise_ref

__all__ = ["renoise"]

_OP = "rmmd_core::renoise"
_OP_TRITON = "rmmd_core::renoise_triton"


def _validate(x, alpha, sigma, seed, offset) -> tuple[int, int]:
    _checks.data(x, "x")
    for name, coef in (("alpha", alpha), ("sigma", sigma)):
        _checks.per_sample(coef, name, x, "x")
    return _checks.integer(seed, "seed", upper=2**63), _checks.integer(offset, "offset", upper=2**63)


def renoise(x: torch.Tensor, alpha: torch.Tensor, sigma: torch.Tensor, seed: int, offset: int = 0,
            backend: str | None = None) -> torch.Tensor:
    """Forward (re-)noise ``x_t = alpha x + sigma eps`` with in-kernel noise (method.md §c.6 step 2, §e K2)::

        x_t[b, j] = alpha[b] * x[b, j] + sigma[b] * n[b * D + j],    n[i] = tl.randn(seed, offset + i)

    The noise is the Philox stream of :func:`posterior_step` (same seed and offset: same numbers on every
    backend; successive calls sharing a seed should advance ``offset`` by ``x.numel()``). float32 math
    (float64 for float64 data), rounded once. Non-contiguous x is copied once by the C++ and Triton
    kernels; the output is contiguous. Autograd: grad_x = alpha[b] * grad; alpha, sigma get none.

    Args:
        x: (B, ...) float32 / float64 / float16 / bfloat16: the clean or rolled-out sample.
        alpha, sigma: (B,) floating on x's device (compute them in float64).
        seed: int in [0, 2**63); offset: int in [0, 2**63).
        backend: None (``RMMD_CORE_BACKEND``, default auto), "auto", "reference", "cpu", "triton", "cuda".

    Returns:
        x_t: new contiguous tensor with x's shape, dtype and device.
    """
    seed, offset = _validate(x, alpha, sigma, seed, offset)
    name = dispatch.resolve_backend("renoise", x, alpha, sigma, backend=backend)
    if name == "reference":
        return renoise_ref(x, alpha, sigma, seed, offset)
    if name == "triton":
        return torch.ops.rmmd_core.renoise_triton(x, alpha, sigma, seed, offset)
    return torch.ops.rmmd_core.renoise(x, alpha, sigma, seed, offset)


def _fake(x, alpha, sigma, seed, offset):
    _checks.fake_data("renoise", x, "x")
    for name, coef in (("alpha", alpha), ("sigma", sigma)):
        _checks.fake_per_sample("renoise", coef, name, x, "x")
    _checks.fake_non_negative("renoise", seed, "seed")
    _checks.fake_non_negative("renoise", offset, "offset")
    return x.new_empty(x.shape)


def _setup_context(ctx, inputs, output):
    ctx.save_for_backward(inputs[1] if ctx.needs_input_grad[0] else None)


def _backward(ctx, grad):
    """d x_t / d x = alpha[b]; alpha, sigma, seed, offset are constants (as in the reference)."""
    (alpha,) = ctx.saved_tensors
    if alpha is None:
        return None, None, None, None, None
    opmath = torch.float64 if grad.dtype == torch.float64 else torch.float32
    shape = (grad.shape[0],) + (1,) * (grad.dim() - 1)
    return (grad.to(opmath) * alpha.to(opmath).reshape(shape)).to(grad.dtype), None, None, None, None


registered_ops: tuple[str, ...] = register_op(_OP, _OP_TRITON, _fake, _backward, _setup_context)
