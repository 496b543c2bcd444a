"""Triton kernels of the fair ensemble CRPS and the forecast statistics (method.md §c.7, §e K4c, K10):
``rmmd_core::crps_fair_triton`` and ``rmmd_core::forecast_stats_triton``.

Math (full contract in ``ops/crps.py``), per element with members x_i, target y, weight wn::

    c_i  = 2 rank_i - M - 1      (1-based stable rank: x_j < x_i, or x_j == x_i with j < i, puts j first)
    crps = wn ((1/M) sum_i |x_i - y| - (1/(M(M-1))) sum_i c_i x_i)
    grad = wn (sign(x_i - y)/M - c_i/(M(M-1)))          (M = 2: ½ sign(x_i - y) - ½ sign(x_i - x_j))

Ranks by comparison in registers, no sort: a program loads the (M_PAD, BLOCK) tile of its elements'
members once, then for each member i re-reads row i (a cache hit) and counts, per element, the members
ordered before it: O(M^2) compares, O(M) registers per element, no M x M tensor in memory.

Grids (chunks on axis 0, whose limit is 2^31 - 1): crps ``(chunks, B)`` with per-(sample, chunk) partial sums; stats ``(chunks, V)`` over the
``P = outer * inner`` elements of each variable (target viewed as (outer, V, inner)), partial sums
``(V, chunks, 5)``. Partials are combined in float64 by torch (deterministic, tiny). Loads are upcast to
float32 (float64 for float64 data) at once; non-contiguous inputs are copied once by ``.contiguous()``.
"""

from __future__ import annotations

from typing import Optional

import torch
import triton
import triton.language as tl
from torch.library import triton_op, wrap_triton

from ._common import bf16_by_bits, cast_for_store, launchable, opmath_dtype


def _block(m_pad: int) -> int:
    """Elements per program: the (M_PAD, BLOCK) member tile stays at 4096 values (16 KB of fp32)."""
    return max(16, min(1024, 4096 // m_pad))


@triton.jit
def _sign(v):
    return tl.where(v > 0, 1.0, tl.where(v < 0, -1.0, 0.0)).to(v.dtype)


@triton.jit
def _crps_kernel(
    partial_ptr,  # (B, chunks) opmath: sum of wn * crps over the program's elements
    grad_ptr,  # (M * N,) data dtype (unused without WITH_GRAD)
    ens_ptr,  # (M * N,) data, member-major
    target_ptr,  # (N,) data
    weight_ptr,  # (D,) float64, or (1,) with w_stride = 0
    inv_norm_ptr,  # (B,) float64
    mask_ptr,  # (N,) uint8 (unused without HAS_MASK)
    N, D, w_stride,
    M: tl.constexpr, M_PAD: tl.constexpr, BLOCK: tl.constexpr,
    WITH_GRAD: tl.constexpr, HAS_MASK: tl.constexpr, BF16_BITS: tl.constexpr,
):
    chunk = tl.program_id(0).to(tl.int64)
    b = tl.program_id(1).to(tl.int64)
    chunks = tl.num_programs(0).to(tl.int64)
    j = chunk * BLOCK + tl.arange(0, BLOCK).to(tl.int64)
    valid = j < D
    e = b * D + j
    opmath = partial_ptr.dtype.element_ty
    wn64 = tl.load(weight_ptr + j * w_stride, mask=valid, other=0.0) * tl.load(inv_norm_ptr + b)
    if HAS_MASK:
        wn64 = tl.where(tl.load(mask_ptr + e, mask=valid, other=0) != 0, wn64, 0.0)
    wn = wn64.to(opmath)
    # A zero-weight element contributes nothing; y = 0 keeps a masked NaN target out of the math.
    y = tl.where(wn != 0, tl.load(target_ptr + e, mask=valid, other=0.0).to(opmath), 0.0)
    if M == 2:
        x1 = tl.load(ens_ptr + e, mask=valid, other=0.0).to(opmath)
        x2 = tl.load(ens_ptr + N + e, mask=valid, other=0.0).to(opmath)
        val = 0.5 * (tl.abs(x1 - y) + tl.abs(x2 - y)) - 0.5 * tl.abs(x1 - x2)
        if WITH_GRAD:
            g1 = (0.5 * _sign(x1 - y) - 0.5 * _sign(x1 - x2)) * wn
            g2 = (0.5 * _sign(x2 - y) - 0.5 * _sign(x2 - x1)) * wn
            tl.store(grad_ptr + e, cast_for_store(g1, grad_ptr, BF16_BITS), mask=valid)
            tl.store(grad_ptr + N + e, cast_for_store(g2, grad_ptr, BF16_BITS), mask=valid)
        total = val * wn
    else:
        members = tl.arange(0, M_PAD)
        in_ens = members < M
        tile = tl.load(ens_ptr + members[:, None].to(tl.int64) * N + e[None, :],
                       mask=in_ens[:, None] & valid[None, :], other=0.0).to(opmath)
        skill = tl.zeros([BLOCK], dtype=opmath)
        lin = tl.zeros([BLOCK], dtype=opmath)
        for i in range(M):
            xi = tl.load(ens_ptr + i * N + e, mask=valid, other=0.0).to(opmath)
            before = (tile < xi[None, :]) | ((tile == xi[None, :]) & (members[:, None] < i))
            cnt = tl.sum(tl.where(before & in_ens[:, None], 1.0, 0.0).to(opmath), axis=0)
            c = 2.0 * cnt + (1 - M)
            skill += tl.abs(xi - y)
            lin += c * xi
            if WITH_GRAD:
                g = (_sign(xi - y) / M - c / (M * (M - 1))) * wn
                tl.store(grad_ptr + i * N + e, cast_for_store(g, grad_ptr, BF16_BITS), mask=valid)
        total = (skill / M - lin / (M * (M - 1))) * wn
    tl.store(partial_ptr + b * chunks + chunk, tl.sum(tl.where(valid, total, 0.0), axis=0))


@triton.jit
def _stats_kernel(
    partial_ptr,  # (V, chunks, 5) opmath: skill, spread, mse, var, weight sums
    ens_ptr, target_ptr,  # (M * N,), (N,) data
    weight_ptr,  # (D,) float64, or (1,) with w_stride = 0
    mask_ptr,  # (N,) uint8 (unused without HAS_MASK)
    N, D, V, inner, P, w_stride,
    M: tl.constexpr, M_PAD: tl.constexpr, BLOCK: tl.constexpr, HAS_MASK: tl.constexpr,
):
    chunk = tl.program_id(0).to(tl.int64)
    v = tl.program_id(1).to(tl.int64)
    chunks = tl.num_programs(0).to(tl.int64)
    p = chunk * BLOCK + tl.arange(0, BLOCK).to(tl.int64)
    valid = p < P
    e = (p // inner) * V * inner + v * inner + p % inner
    opmath = partial_ptr.dtype.element_ty
    w64 = tl.load(weight_ptr + (e % D) * w_stride, mask=valid, other=0.0)
    if HAS_MASK:
        w64 = tl.where(tl.load(mask_ptr + e, mask=valid, other=0) != 0, w64, 0.0)
    w = w64.to(opmath)
    y = tl.where(w != 0, tl.load(target_ptr + e, mask=valid, other=0.0).to(opmath), 0.0)
    members = tl.arange(0, M_PAD)
    in_ens = members < M
    both = in_ens[:, None] & valid[None, :]
    tile = tl.load(ens_ptr + members[:, None].to(tl.int64) * N + e[None, :], mask=both, other=0.0).to(opmath)
    mean = tl.sum(tile, axis=0) / M
    dev = tl.where(both, tile - mean[None, :], 0.0)
    var = tl.sum(dev * dev, axis=0) / (M - 1)
    skill = tl.sum(tl.where(both, tl.abs(tile - y[None, :]), 0.0), axis=0) / M
    lin = tl.zeros([BLOCK], dtype=opmath)
    for i in range(M):
        xi = tl.load(ens_ptr + i * N + e, mask=valid, other=0.0).to(opmath)
        before = (tile < xi[None, :]) | ((tile == xi[None, :]) & (members[:, None] < i))
        cnt = tl.sum(tl.where(before & in_ens[:, None], 1.0, 0.0).to(opmath), axis=0)
        lin += (2.0 * cnt + (1 - M)) * xi
    err = mean - y
    out = partial_ptr + (v * chunks + chunk) * 5
    tl.store(out + 0, tl.sum(w * skill, axis=0))
    tl.store(out + 1, tl.sum(w * (lin / (M * (M - 1))), axis=0))
    tl.store(out + 2, tl.sum(w * err * err, axis=0))
    tl.store(out + 3, tl.sum(w * var, axis=0))
    tl.store(out + 4, tl.sum(w, axis=0))


def _mask_arg(mask: Optional[torch.Tensor], fallback: torch.Tensor) -> torch.Tensor:
    # bool as uint8 (same bytes): the interpreter and every Triton version read uint8 pointers the same way.
    return mask.contiguous().view(torch.uint8) if mask is not None else fallback


@triton_op("rmmd_core::crps_fair_triton", mutates_args=())
def crps_fair_triton(ens: torch.Tensor, target: torch.Tensor, weight: torch.Tensor, inv_norm: torch.Tensor,
                     mask: Optional[torch.Tensor], with_grad: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """Triton launcher; arguments as ``torch.ops.rmmd_core.crps_fair`` (validated by ``ops.crps_fair``)."""
    opmath = opmath_dtype(ens.dtype)
    M, B = ens.shape[0], ens.shape[1]
    N = target.numel()
    D = N // B if B > 0 else 0
    x, y = ens.contiguous(), target.contiguous()
    grad = torch.empty(ens.shape, dtype=ens.dtype, device=ens.device) if with_grad else ens.new_empty((0,))
    m_pad = triton.next_power_of_2(M)
    block = _block(m_pad)
    chunks = max(1, triton.cdiv(D, block))
    partial = torch.zeros(B, chunks, dtype=opmath, device=ens.device)
    if N > 0 and launchable(x):
        wrap_triton(_crps_kernel)[(chunks, B)](
            partial, grad if with_grad else x, x, y, weight.contiguous(), inv_norm.contiguous(), _mask_arg(mask, y),
            N, D, 0 if weight.numel() == 1 else 1, M=M, M_PAD=m_pad, BLOCK=block, WITH_GRAD=with_grad, HAS_MASK=mask is not None,
            BF16_BITS=bf16_by_bits(ens.dtype, ens.device))
    crps = partial.to(torch.float64).sum(1).to(opmath).to(ens.dtype)
    return crps, grad


@triton_op("rmmd_core::forecast_stats_triton", mutates_args=())
def forecast_stats_triton(ens: torch.Tensor, target: torch.Tensor, weight: torch.Tensor, mask: Optional[torch.Tensor],
                          variables: int, inner: int) -> torch.Tensor:
    """Triton launcher; arguments as ``torch.ops.rmmd_core.forecast_stats`` (validated by ``ops.forecast_stats``)."""
    opmath = opmath_dtype(ens.dtype)
    M, B = ens.shape[0], ens.shape[1]
    N = target.numel()
    D = N // B if B > 0 else 0
    x, y = ens.contiguous(), target.contiguous()
    P = N // variables
    m_pad = triton.next_power_of_2(M)
    block = _block(m_pad)
    chunks = max(1, triton.cdiv(P, block))
    partial = torch.zeros(variables, chunks, 5, dtype=opmath, device=ens.device)
    if N > 0 and launchable(x):
        wrap_triton(_stats_kernel)[(chunks, variables)](
            partial, x, y, weight.contiguous(), _mask_arg(mask, y), N, D, variables, inner, P,
            0 if weight.numel() == 1 else 1,
            M=M, M_PAD=m_pad, BLOCK=block, HAS_MASK=mask is not None)
    return partial.to(torch.float64).sum(1)
