"""Triton kernels of the closed-form image rewards with their gradients (method.md §e K4a, K4b):
``rmmd_core::grayscale_reward_triton`` and ``rmmd_core::laplacian_reward_triton``.

* K4a: grid ``(B, chunks)`` over the H W pixels of each sample; a program reads its pixels in all three
  channels, writes their gradient and one partial sum of ``d^2``.
* K4b: grid ``(B C, chunks)`` over the pixels of each plane; a program computes the residual
  ``r = x - avg4(x)`` at its pixels and their four (clamped) neighbours straight from x (25 gathered
  loads, served by L1/L2 on GPUs), writes ``grad = -(2/D)(r - avg4(r))`` and a partial sum of ``r^2``.

The (rows, chunks) partials are summed in torch (negligible next to the pixel pass). Loads are upcast to
fp32 (fp64 for fp64 data) at once; strided inputs are copied once; grad is contiguous.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl
from torch.library import triton_op, wrap_triton

from ..reward_reference import LUMA
from ._common import BLOCK, bf16_by_bits, cast_for_store, launchable, opmath_dtype


@triton.jit
def _grayscale_kernel(
    grad_ptr,  # (B, 3, H, W) output, data dtype
    partial_ptr,  # (B, chunks) opmath: sum of d^2 over the program's pixels
    x_ptr,  # (B, 3, H, W) data
    coef_ptr,  # (4,) opmath: -2 / D and the three luma weights (its dtype is the math dtype)
    hw,  # H W
    BLOCK_SIZE: tl.constexpr, BF16_BITS: tl.constexpr,
):
    b = tl.program_id(0).to(tl.int64)
    chunk = tl.program_id(1).to(tl.int64)
    coef = tl.load(coef_ptr)
    p = chunk * BLOCK_SIZE + tl.arange(0, BLOCK_SIZE).to(tl.int64)
    mask = p < hw
    base = b * 3 * hw
    x0 = tl.load(x_ptr + base + p, mask=mask, other=0.0).to(coef.dtype)
    x1 = tl.load(x_ptr + base + hw + p, mask=mask, other=0.0).to(coef.dtype)
    x2 = tl.load(x_ptr + base + 2 * hw + p, mask=mask, other=0.0).to(coef.dtype)
    # luma weights loaded in the math dtype: a Python constant would be float32 even for float64 data
    w0 = tl.load(coef_ptr + 1)
    w1 = tl.load(coef_ptr + 2)
    w2 = tl.load(coef_ptr + 3)
    gray = x0 * w0 + x1 * w1 + x2 * w2
    d0 = x0 - gray
    d1 = x1 - gray
    d2 = x2 - gray
    s = d0 + d1 + d2
    tl.store(grad_ptr + base + p, cast_for_store(coef * (d0 - w0 * s), grad_ptr, BF16_BITS), mask=mask)
    tl.store(grad_ptr + base + hw + p, cast_for_store(coef * (d1 - w1 * s), grad_ptr, BF16_BITS), mask=mask)
    tl.store(grad_ptr + base + 2 * hw + p, cast_for_store(coef * (d2 - w2 * s), grad_ptr, BF16_BITS), mask=mask)
    tl.store(partial_ptr + b * tl.num_programs(1) + chunk, tl.sum(d0 * d0 + d1 * d1 + d2 * d2, axis=0))


@triton.jit
def _clamp(i, n):
    return tl.minimum(tl.maximum(i, 0), n - 1)


@triton.jit
def _x_at(x_ptr, i, j, height, width, mask, dtype: tl.constexpr):
    return tl.load(x_ptr + _clamp(i, height) * width + _clamp(j, width), mask=mask, other=0.0).to(dtype)


@triton.jit
def _residual_at(x_ptr, i, j, height, width, mask, dtype: tl.constexpr):
    """r = x - avg4(x) at the clamped position (i, j); neighbours clamped again (replicate borders)."""
    i = _clamp(i, height)
    j = _clamp(j, width)
    up = _x_at(x_ptr, i - 1, j, height, width, mask, dtype)
    down = _x_at(x_ptr, i + 1, j, height, width, mask, dtype)
    left = _x_at(x_ptr, i, j - 1, height, width, mask, dtype)
    right = _x_at(x_ptr, i, j + 1, height, width, mask, dtype)
    return _x_at(x_ptr, i, j, height, width, mask, dtype) - 0.25 * (((up + down) + left) + right)


@triton.jit
def _laplacian_kernel(
    grad_ptr,  # (B, C, H, W) output, data dtype
    partial_ptr,  # (B C, chunks) opmath: sum of r^2 over the program's pixels
    x_ptr,  # (B, C, H, W) data
    coef_ptr,  # (1,) opmath: -2 / D
    height, width,
    BLOCK_SIZE: tl.constexpr, BF16_BITS: tl.constexpr,
):
    plane = tl.program_id(0).to(tl.int64)
    chunk = tl.program_id(1).to(tl.int64)
    coef = tl.load(coef_ptr)
    k = chunk * BLOCK_SIZE + tl.arange(0, BLOCK_SIZE).to(tl.int64)
    mask = k < height * width
    i = k // width
    j = k % width
    xp = x_ptr + plane * height * width
    r = _residual_at(xp, i, j, height, width, mask, coef.dtype)
    r_up = _residual_at(xp, i - 1, j, height, width, mask, coef.dtype)
    r_down = _residual_at(xp, i + 1, j, height, width, mask, coef.dtype)
    r_left = _residual_at(xp, i, j - 1, height, width, mask, coef.dtype)
    r_right = _residual_at(xp, i, j + 1, height, width, mask, coef.dtype)
    grad = coef * (r - 0.25 * (((r_up + r_down) + r_left) + r_right))
    tl.store(grad_ptr + plane * height * width + k, cast_for_store(grad, grad_ptr, BF16_BITS), mask=mask)
    r = tl.where(mask, r, 0.0)
    tl.store(partial_ptr + plane * tl.num_programs(1) + chunk, tl.sum(r * r, axis=0))


def _setup(x0: torch.Tensor):
    opmath = opmath_dtype(x0.dtype)
    grad = torch.empty(x0.shape, dtype=x0.dtype, device=x0.device)
    D = x0[0].numel() if x0.shape[0] > 0 else 0
    coef = torch.tensor((-2.0 / max(D, 1),) + LUMA, dtype=opmath, device=x0.device)
    return opmath, grad, D, coef


@triton_op("rmmd_core::grayscale_reward_triton", mutates_args=())
def grayscale_reward_triton(x0: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Triton launcher; arguments as ``rmmd_core.ops.grayscale_reward`` (validated there)."""
    opmath, grad, D, coef = _setup(x0)
    B, hw = x0.shape[0], x0.shape[2] * x0.shape[3]
    chunks = max(1, triton.cdiv(hw, BLOCK))
    partial = torch.zeros(B, chunks, dtype=opmath, device=x0.device)
    if D > 0 and launchable(grad):
        wrap_triton(_grayscale_kernel)[(B, chunks)](grad, partial, x0.contiguous(), coef, hw, BLOCK_SIZE=BLOCK,
                                                    BF16_BITS=bf16_by_bits(x0.dtype, x0.device))
    return -partial.sum(1) / max(D, 1), grad


@triton_op("rmmd_core::laplacian_reward_triton", mutates_args=())
def laplacian_reward_triton(x0: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Triton launcher; arguments as ``rmmd_core.ops.laplacian_reward`` (validated there)."""
    opmath, grad, D, coef = _setup(x0)
    B, C, H, W = x0.shape
    chunks = max(1, triton.cdiv(H * W, BLOCK))
    partial = torch.zeros(B * C, chunks, dtype=opmath, device=x0.device)
    if D > 0 and launchable(grad):
        wrap_triton(_laplacian_kernel)[(B * C, chunks)](grad, partial, x0.contiguous(), coef, H, W, BLOCK_SIZE=BLOCK,
                                                        BF16_BITS=bf16_by_bits(x0.dtype, x0.device))
    return -partial.reshape(B, -1).sum(1) / max(D, 1), grad
