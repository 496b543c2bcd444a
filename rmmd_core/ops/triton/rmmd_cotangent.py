"""Triton kernels of the RMMD cotangent assembly (method.md §c.6 step 7, §e K5): ``rmmd_core::rmmd_cotangent_triton``.

Math (see ``ops/rmmd_cotangent.py`` for the full contract)::

    w_eff[b] = dmd ? w[b] / (mean_j |x0 - m_ref|[b, j] + eps) : w[b]
    g        = scale * (w_eff (m_stu - m_ref) - lam g_R + 2 lam_reg (x0 - a))

Grid ``(B, chunks)``: each program owns CHUNK = TILES * BLOCK elements of one sample, writes g for them
and its partial sums (x0.d, d.d, g_R.g_R, e.e) to a (B, chunks, 4) fp32 buffer; the per-sample
statistics are then a (B, chunks) reduction, done in torch (B * chunks * 4 values, negligible next to
the N-element pass). The DMD normaliser is a first kernel of the same shape over x0 and m_ref (two-pass,
as method.md §e recommends for large states). Loads are upcast to fp32 (fp64 for fp64 data) at once.
Non-contiguous inputs are copied once by ``.contiguous()``; g is always contiguous.
"""

from __future__ import annotations

from typing import Optional

import torch
import triton
import triton.language as tl
from torch.library import triton_op, wrap_triton

from ._common import BLOCK, bf16_by_bits, cast_for_store, launchable, opmath_dtype

# 4 tiles of BLOCK per program: 4096 elements, so an ImageNet-64 sample (D = 12288) is 3 programs and a
# 5.3M-value weather state ~1300, enough to fill a GPU either way.
TILES = 4


@triton.jit
def _abs_partial_kernel(
    partial_ptr,  # (B, chunks) opmath: sum |x0 - m_ref| over the program's chunk
    x0_ptr, m_ref_ptr,  # (B * D,) data
    per_sample_numel,  # D
    BLOCK_SIZE: tl.constexpr, TILES_PER_PROGRAM: tl.constexpr,
):
    b = tl.program_id(0).to(tl.int64)
    chunk = tl.program_id(1).to(tl.int64)
    chunks = tl.num_programs(1).to(tl.int64)
    base = b * per_sample_numel
    acc = tl.zeros([BLOCK_SIZE], dtype=partial_ptr.dtype.element_ty)
    for tile in range(TILES_PER_PROGRAM):
        j = (chunk * TILES_PER_PROGRAM + tile) * BLOCK_SIZE + tl.arange(0, BLOCK_SIZE).to(tl.int64)
        mask = j < per_sample_numel
        x = tl.load(x0_ptr + base + j, mask=mask, other=0.0).to(acc.dtype)
        r = tl.load(m_ref_ptr + base + j, mask=mask, other=0.0).to(acc.dtype)
        acc += tl.abs(x - r)
    tl.store(partial_ptr + b * chunks + chunk, tl.sum(acc, axis=0))


@triton.jit
def _cotangent_kernel(
    g_ptr,  # (B * D,) output, data dtype
    partial_ptr,  # (B, chunks, 4) opmath partial sums: x0.d, d.d, g_R.g_R, e.e
    x0_ptr, m_stu_ptr, m_ref_ptr, g_r_ptr, anchor_ptr,  # (B * D,) data (g_r / anchor: x0 when absent)
    w_eff_ptr,  # (B,) opmath
    coef_ptr,  # (3,) opmath: scale lam, 2 scale lam_reg, scale (a tensor, so fp64 data gets fp64 scalars)
    per_sample_numel,  # D
    HAS_R: tl.constexpr, HAS_A: tl.constexpr,
    BLOCK_SIZE: tl.constexpr, TILES_PER_PROGRAM: tl.constexpr, BF16_BITS: tl.constexpr,
):
    b = tl.program_id(0).to(tl.int64)
    chunk = tl.program_id(1).to(tl.int64)
    chunks = tl.num_programs(1).to(tl.int64)
    base = b * per_sample_numel
    we = tl.load(w_eff_ptr + b)
    lam_s = tl.load(coef_ptr + 0)
    reg_s = tl.load(coef_ptr + 1)
    scale = tl.load(coef_ptr + 2)
    s_xd = tl.zeros([BLOCK_SIZE], dtype=we.dtype)
    s_dd = tl.zeros([BLOCK_SIZE], dtype=we.dtype)
    s_rr = tl.zeros([BLOCK_SIZE], dtype=we.dtype)
    s_ee = tl.zeros([BLOCK_SIZE], dtype=we.dtype)
    for tile in range(TILES_PER_PROGRAM):
        j = (chunk * TILES_PER_PROGRAM + tile) * BLOCK_SIZE + tl.arange(0, BLOCK_SIZE).to(tl.int64)
        mask = j < per_sample_numel
        x = tl.load(x0_ptr + base + j, mask=mask, other=0.0).to(we.dtype)
        d = (tl.load(m_stu_ptr + base + j, mask=mask, other=0.0).to(we.dtype)
             - tl.load(m_ref_ptr + base + j, mask=mask, other=0.0).to(we.dtype))
        g_mm = we * d
        g = g_mm * scale  # association of the reference: ((w d) scale - (scale lam) r) + (2 scale lam_reg) e
        s_xd += x * g_mm
        s_dd += d * d
        if HAS_R:
            r = tl.load(g_r_ptr + base + j, mask=mask, other=0.0).to(we.dtype)
            g = g - lam_s * r
            s_rr += r * r
        if HAS_A:
            e = x - tl.load(anchor_ptr + base + j, mask=mask, other=0.0).to(we.dtype)
            g = g + reg_s * e
            s_ee += e * e
        tl.store(g_ptr + base + j, cast_for_store(g, g_ptr, BF16_BITS), mask=mask)
    out = partial_ptr + (b * chunks + chunk) * 4
    tl.store(out + 0, tl.sum(s_xd, axis=0))
    tl.store(out + 1, tl.sum(s_dd, axis=0))
    tl.store(out + 2, tl.sum(s_rr, axis=0))
    tl.store(out + 3, tl.sum(s_ee, axis=0))


@triton_op("rmmd_core::rmmd_cotangent_triton", mutates_args=())
def rmmd_cotangent_triton(x0: torch.Tensor, m_stu: torch.Tensor, m_ref: torch.Tensor, g_R: Optional[torch.Tensor],
                          anchor: Optional[torch.Tensor], w: torch.Tensor, lam: float, lam_reg: float, scale: float,
                          dmd: bool, dmd_eps: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Triton launcher; arguments as ``rmmd_core.ops.rmmd_cotangent`` (validated there)."""
    opmath = opmath_dtype(x0.dtype)
    B = x0.shape[0]
    D = x0.numel() // B if B > 0 else 0
    x, ms, mr = x0.contiguous(), m_stu.contiguous(), m_ref.contiguous()
    r = g_R.contiguous() if g_R is not None else x
    a = anchor.contiguous() if anchor is not None else x
    g = torch.empty(x0.shape, dtype=x0.dtype, device=x0.device)
    chunks = max(1, triton.cdiv(D, BLOCK * TILES))
    w_eff = w.detach().to(opmath)
    partial = torch.zeros(B, chunks, 4, dtype=opmath, device=x0.device)
    run = B > 0 and D > 0 and launchable(g)
    if dmd:
        abs_part = torch.zeros(B, chunks, dtype=opmath, device=x0.device)
        if run:
            wrap_triton(_abs_partial_kernel)[(B, chunks)](abs_part, x, mr, D, BLOCK_SIZE=BLOCK,
                                                          TILES_PER_PROGRAM=TILES)
        w_eff = w_eff / (abs_part.sum(1) / max(D, 1) + dmd_eps)
    w_eff = w_eff.contiguous()
    coef = torch.tensor([lam * scale, 2.0 * lam_reg * scale, scale], dtype=opmath, device=x0.device)
    if run:
        wrap_triton(_cotangent_kernel)[(B, chunks)](
            g, partial, x, ms, mr, r, a, w_eff, coef, D,
            HAS_R=g_R is not None, HAS_A=anchor is not None, BLOCK_SIZE=BLOCK, TILES_PER_PROGRAM=TILES,
            BF16_BITS=bf16_by_bits(x0.dtype, x0.device))
    sums = partial.sum(1)
    inv_d = 1.0 / max(D, 1)
    zero = torch.zeros_like(w_eff)
    stats = torch.stack([
        sums[:, 0] * inv_d,
        sums[:, 3] * inv_d if anchor is not None else zero,
        (scale * w_eff) ** 2 * sums[:, 1],
        (scale * lam) ** 2 * sums[:, 2] if g_R is not None else zero,
        (2.0 * scale * lam_reg) ** 2 * sums[:, 3] if anchor is not None else zero,
        w_eff,
    ], dim=1)
    return g, stats
