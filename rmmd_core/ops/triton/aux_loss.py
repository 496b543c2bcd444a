"""Triton kernel of the auxiliary loss with its output gradient (method.md §c.6 step 8, §e K6):
``rmmd_core::aux_loss_triton``::

    loss[b] = w[b] (1/D) (||x0 - o||^2 + ||m_ref - o||^2)[b],    grad = (2 w[b] / (B D)) ((o - x0) + (o - m_ref))

Grid ``(B, chunks)`` as in ``rmmd_cotangent.py``: each program writes grad for its chunk and one partial
sum; the (B, chunks) partials are summed in torch (negligible next to the N-element pass). Loads are
upcast to fp32 (fp64 for fp64 data) at once; strided inputs are copied once; grad is contiguous.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl
from torch.library import triton_op, wrap_triton

from ._common import BLOCK, bf16_by_bits, cast_for_store, launchable, opmath_dtype
from .rmmd_cotangent import TILES


@triton.jit
def _aux_loss_kernel(
    grad_ptr,  # (B * D,) output, data dtype
    partial_ptr,  # (B, chunks) opmath: sum (o - x0)^2 + (o - m_ref)^2 over the chunk
    o_ptr, x0_ptr, m_ref_ptr,  # (B * D,) data
    coef_ptr,  # (B,) opmath: 2 w[b] / (B D)
    per_sample_numel,  # D
    BLOCK_SIZE: tl.constexpr, TILES_PER_PROGRAM: tl.constexpr, BF16_BITS: tl.constexpr,
):
    b = tl.program_id(0).to(tl.int64)
    chunk = tl.program_id(1).to(tl.int64)
    chunks = tl.num_programs(1).to(tl.int64)
    base = b * per_sample_numel
    coef = tl.load(coef_ptr + b)
    acc = tl.zeros([BLOCK_SIZE], dtype=coef.dtype)
    for tile in range(TILES_PER_PROGRAM):
        j = (chunk * TILES_PER_PROGRAM + tile) * BLOCK_SIZE + tl.arange(0, BLOCK_SIZE).to(tl.int64)
        mask = j < per_sample_numel
        o = tl.load(o_ptr + base + j, mask=mask, other=0.0).to(coef.dtype)
        e_x = o - tl.load(x0_ptr + base + j, mask=mask, other=0.0).to(coef.dtype)
        e_m = o - tl.load(m_ref_ptr + base + j, mask=mask, other=0.0).to(coef.dtype)
        acc += e_x * e_x + e_m * e_m
        tl.store(grad_ptr + base + j, cast_for_store(coef * (e_x + e_m), grad_ptr, BF16_BITS), mask=mask)
    tl.store(partial_ptr + b * chunks + chunk, tl.sum(acc, axis=0))


@triton_op("rmmd_core::aux_loss_triton", mutates_args=())
def aux_loss_triton(o: torch.Tensor, x0: torch.Tensor, m_ref: torch.Tensor,
                    w: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Triton launcher; arguments as ``rmmd_core.ops.aux_loss`` (validated there)."""
    opmath = opmath_dtype(o.dtype)
    B = o.shape[0]
    D = o.numel() // B if B > 0 else 0
    grad = torch.empty(o.shape, dtype=o.dtype, device=o.device)
    chunks = max(1, triton.cdiv(D, BLOCK * TILES))
    partial = torch.zeros(B, chunks, dtype=opmath, device=o.device)
    w_op = w.detach().to(opmath)
    if B > 0 and D > 0 and launchable(grad):
        coef = ((2.0 / (B * D)) * w_op).contiguous()
        wrap_triton(_aux_loss_kernel)[(B, chunks)](
            grad, partial, o.contiguous(), x0.contiguous(), m_ref.contiguous(), coef, D, BLOCK_SIZE=BLOCK,
            TILES_PER_PROGRAM=TILES, BF16_BITS=bf16_by_bits(o.dtype, o.device))
    return w_op * partial.sum(1) / max(D, 1), grad
