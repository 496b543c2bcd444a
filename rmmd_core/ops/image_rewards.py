"""K4a / K4b, the closed-form image rewards with their gradients in one pass (method.md §e K4a, K4b): public
entry points, validation, fake kernels and autograd of ``rmmd_core::grayscale_reward`` /
``rmmd_core::laplacian_reward`` (C++ CPU / CUDA) and their ``*_triton`` twins (ops/triton/image_rewards.py).
The truth is ``ops/reward_reference.py``. ``rmmd_core.rewards.GrayscaleReward`` / ``LaplacianReward`` call
these, so the engine uses the fused kernels by default.
"""

from __future__ import annotations

import torch

from . import _checks, dispatch
from ._library import register_op
from .reward_reference import grayscale_reward_ref, laplacian_reward_ref, opmath

__all__ = ["grayscale_reward", "laplacian_reward"]


def _validate(x0, op: str) -> None:
    _checks.data(x0, "x0")
    if op == "grayscale_reward":
        if x0.dim() != 4 or x0.shape[1] != 3:
            raise ValueError(f"x0 must have shape (B, 3, H, W) (3 channels: r, g, b), got {tuple(x0.shape)}")
    elif x0.dim() != 4:
        raise ValueError(f"x0 must have shape (B, C, H, W), got {tuple(x0.shape)}")


def _run(op: str, x0: torch.Tensor, backend: str | None) -> tuple[torch.Tensor, torch.Tensor]:
    _validate(x0, op)
    name = dispatch.resolve_backend(op, x0, backend=backend)
    if name == "reference":
        return (grayscale_reward_ref if op == "grayscale_reward" else laplacian_reward_ref)(x0)
    if name == "triton":
        return getattr(torch.ops.rmmd_core, op + "_triton")(x0)
    return getattr(torch.ops.rmmd_core, op)(x0)


def grayscale_reward(x0: torch.Tensor, backend: str | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Black-and-white reward and its gradient in one pass (method.md §e K4a)::

        gray[b, p]  = 0.299 x[b, 0, p] + 0.587 x[b, 1, p] + 0.114 x[b, 2, p]     (p: pixel)
        d[b, c, p]  = x[b, c, p] - gray[b, p]
        value[b]    = -(1/D) sum_{c, p} d[b, c, p]^2                             (D = 3 H W)
        grad[b,k,p] = -(2/D) (d[b, k, p] - w_k sum_c d[b, c, p])                 = d value[b] / d x[b]

    Numerics: float32 math (float64 for float64 data), grad rounded once, per-sample sums in fp32 blocks.
    Strided x0 is copied once by the C++ and Triton kernels; grad is contiguous. Autograd (every
    backend, plain PyTorch): value and grad are differentiated exactly (grad is linear in x0).

    Args:
        x0: (B, 3, H, W) float32 / float64 / float16 / bfloat16.
        backend: None (``RMMD_CORE_BACKEND``, default auto), "auto", "reference", "cpu", "triton", "cuda".

    Returns:
        (value, grad): value (B,) float32 (float64 for float64 data); grad like x0, contiguous.

    Raises:
        TypeError / ValueError naming x0; RuntimeError when an explicit backend cannot run.
    """
    return _run("grayscale_reward", x0, backend)


def laplacian_reward(x0: torch.Tensor, backend: str | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Laplacian-smoothness reward and its gradient in one pass (method.md §e K4b)::

        P x[i, j]  = (x[i-, j] + x[i+, j] + x[i, j-] + x[i, j+]) / 4    i- = max(i-1, 0), i+ = min(i+1, H-1), ...
        r          = x - P x                                           (per (b, c) plane, replicate borders)
        value[b]   = -(1/D) sum r[b]^2                                 (D = C H W)
        grad       = -(2/D) (r - P r)                                  = d value[b] / d x[b]

    P with replicate borders is symmetric, so the adjoint of the stencil (borders folded back) is the
    same stencil; grad is a 13-point stencil of x, computed in one pass with a halo of 2.
    Numerics, strides and autograd as :func:`grayscale_reward`.

    Args:
        x0: (B, C, H, W) float32 / float64 / float16 / bfloat16.
        backend: None (``RMMD_CORE_BACKEND``, default auto), "auto", "reference", "cpu", "triton", "cuda".

    Returns:
        (value, grad): value (B,) float32 (float64 for float64 data); grad like x0, contiguous.
    """
    return _run("laplacian_reward", x0, backend)


# ------------------------------------------------------------------------------------------------
# torch.library registrations: fake (C++ op only; triton_ops trace their launcher) and autograd
# ------------------------------------------------------------------------------------------------

def _grayscale_fake(x0):
    _checks.fake_data("grayscale_reward", x0, "x0")
    torch._check(x0.dim() == 4 and x0.shape[1] == 3,
                 lambda: f"rmmd_core::grayscale_reward: x0 must have shape (B, 3, H, W), got {tuple(x0.shape)}")
    return x0.new_empty((x0.shape[0],), dtype=opmath(x0.dtype)), x0.new_empty(x0.shape)


def _laplacian_fake(x0):
    _checks.fake_data("laplacian_reward", x0, "x0")
    torch._check(x0.dim() == 4,
                 lambda: f"rmmd_core::laplacian_reward: x0 must have shape (B, C, H, W), got {tuple(x0.shape)}")
    return x0.new_empty((x0.shape[0],), dtype=opmath(x0.dtype)), x0.new_empty(x0.shape)


def _setup_context(ctx, inputs, output):
    ctx.x_dtype = inputs[0].dtype
    ctx.save_for_backward(output[1])  # grad = K x0: the value's own gradient, reused as is


def _make_backward(reference):
    def backward(ctx, grad_value, grad_grad):
        """value = x^T K x / 2 and grad = K x with K symmetric, so d/dx = Gv[b] grad + K Gg.

        The value's part reuses the forward's grad output, so autograd of ``value`` gives exactly the
        closed-form gradient the engine uses; K Gg (only needed when grad itself is differentiated) is the
        reference's gradient map applied to Gg, in the op's math type.
        """
        (grad,) = ctx.saved_tensors
        op_dtype = opmath(ctx.x_dtype)
        out = None
        if grad_value is not None:
            out = grad_value.to(op_dtype).reshape((-1,) + (1,) * (grad.dim() - 1)) * grad.to(op_dtype)
        if grad_grad is not None:
            k_gg = reference(grad_grad.to(op_dtype))[1]
            out = k_gg if out is None else out + k_gg
        return None if out is None else out.to(ctx.x_dtype)

    return backward


registered_ops: tuple[str, ...] = (
    register_op("rmmd_core::grayscale_reward", "rmmd_core::grayscale_reward_triton", _grayscale_fake,
                _make_backward(grayscale_reward_ref), _setup_context)
    + register_op("rmmd_core::laplacian_reward", "rmmd_core::laplacian_reward_triton", _laplacian_fake,
                  _make_backward(laplacian_reward_ref), _setup_context))
