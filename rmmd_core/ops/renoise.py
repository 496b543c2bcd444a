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
# Device-seed twins (one-element int64 seed / offset tensors, for CUDA-graph capture): same arity, same
# fake (its seed checks take ints or tensors) and autograd.
_OP_DEV = "rmmd_core::renoise_dev"
_OP_DEV_TRITON = "rmmd_core::renoise_dev_triton"


def _validate(x, alpha, sigma, seed, offset):
    _checks.data(x, "x")
    for name, coef in (("alpha", alpha), ("sigma", sigma)):
        _checks.per_sample(coef, name, x, "x")
    return _checks.philox_key(seed, "seed", x, "x"), _checks.philox_key(offset, "offset", x, "x")


def renoise(x: torch.Tensor, alpha: torch.Tensor, sigma: torch.Tensor, seed: int | torch.Tensor,
            offset: int | torch.Tensor = 0, backend: str | None = None) -> torch.Tensor:
    """Forward (re-)noise ``x_t = alpha x + sigma eps`` with in-kernel noise (method.md §c.6 step 2, §e K2)::

        x_t[b, j] = alpha[b] * x[b, j] + sigma[b] * n[b * D + j],    n[i] = tl.randn(seed, offset + i)

    The noise is the Philox stream of :func:`posterior_step` (same seed and offset: same numbers on every
    backend; successive calls sharing a seed should advance ``offset`` by ``x.numel()``). float32 math
    (float64 for float64 data), rounded once. Non-contiguous x is copied once by the C++ and Triton
    kernels; the output is contiguous. Autograd: grad_x = alpha[b] * grad; alpha, sigma get none.

    Args:
        x: (B, ...) float32 / float64 / float16 / bfloat16: the clean or rolled-out sample.
        alpha, sigma: (B,) floating on x's device (compute them in float64).
        seed: int in [0, 2**63); offset: int in [0, 2**63). Either may be a one-element int64 tensor on x's
            device instead (a device seed for CUDA-graph capture, read by the kernel; bit-identical results;
            see :func:`~rmmd_core.ops.posterior_step`).
        backend: None (``RMMD_CORE_BACKEND``, default auto), "auto", "reference", "cpu", "triton", "cuda".

    Returns:
        x_t: new contiguous tensor with x's shape, dtype and device.
    """
    seed, offset = _validate(x, alpha, sigma, seed, offset)
    name = dispatch.resolve_backend("renoise", x, alpha, sigma, backend=backend)
    if name == "reference":
        return renoise_ref(x, alpha, sigma, seed, offset)
    keys = dispatch.device_philox_args(seed, offset, x.device)
    if keys is not None:
        op = torch.ops.rmmd_core.renoise_dev_triton if name == "triton" else torch.ops.rmmd_core.renoise_dev
        return op(x, alpha, sigma, *keys)
    if name == "triton":
        return torch.ops.rmmd_core.renoise_triton(x, alpha, sigma, seed, offset)
    return torch.ops.rmmd_core.renoise(x, alpha, sigma, seed, offset)


def _fake(x, alpha, sigma, seed, offset):
    _checks.fake_data("renoise", x, "x")
    for name, coef in (("alpha", alpha), ("sigma", sigma)):
        _checks.fake_per_sample("renoise", coef, name, x, "x")
    _checks.fake_philox("renoise", seed, "seed", x, "x")
    _checks.fake_philox("renoise", offset, "offset", x, "x")
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


registered_ops: tuple[str, ...] = (register_op(_OP, _OP_TRITON, _fake, _backward, _setup_context)
                                   + register_op(_OP_DEV, _OP_DEV_TRITON, _fake, _backward, _setup_context))
