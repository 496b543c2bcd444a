"""Triton kernel of the multi-tensor EMA (method.md §e K9): ``rmmd_core::ema_update_triton``::

    ema[i] <- beta ema[i] + (1 - beta) params[i]     as lerp(ema, p, w = 1 - beta)

Multi-tensor-apply with a chunk table: the launcher cuts every tensor of one (EMA dtype, param dtype)
group into BLOCK-element chunks and writes, per chunk, the *addresses* of its first EMA and param element
and its length into int64 tensors; program c casts them back to typed pointers, so one launch updates the
whole group in place. Raw addresses cannot be traced by FakeTensor / Inductor, so this is a plain
``torch.library.custom_op`` (opaque to torch.compile) rather than a ``triton_op``.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from ._common import BLOCK, bf16_by_bits, cast_for_store, launchable

_TL_TYPES = {torch.float32: tl.float32, torch.float64: tl.float64, torch.float16: tl.float16,
             torch.bfloat16: tl.bfloat16}


@triton.jit
def _ema_kernel(
    ema_addr_ptr,  # (chunks,) int64: address of the chunk's first EMA element
    param_addr_ptr,  # (chunks,) int64: address of the chunk's first param element
    length_ptr,  # (chunks,) int64: elements in the chunk (<= BLOCK_SIZE)
    w_ptr,  # (1,) opmath: 1 - beta (its dtype is the math dtype)
    EMA_TYPE: tl.constexpr, PARAM_TYPE: tl.constexpr, BLOCK_SIZE: tl.constexpr, BF16_BITS: tl.constexpr,
):
    c = tl.program_id(0)
    e_ptr = tl.load(ema_addr_ptr + c).to(tl.pointer_type(EMA_TYPE))
    p_ptr = tl.load(param_addr_ptr + c).to(tl.pointer_type(PARAM_TYPE))
    n = tl.load(length_ptr + c)
    w = tl.load(w_ptr)
    offs = tl.arange(0, BLOCK_SIZE)
    mask = offs < n
    e = tl.load(e_ptr + offs, mask=mask, other=0.0).to(w.dtype)
    p = tl.load(p_ptr + offs, mask=mask, other=0.0).to(w.dtype)
    small = (w < 0.5) & (w > -0.5)
    new = tl.where(small, e + w * (p - e), p - (p - e) * (1.0 - w))
    tl.store(e_ptr + offs, cast_for_store(new, e_ptr, BF16_BITS), mask=mask)


def _chunk_table(pairs: list[tuple[torch.Tensor, torch.Tensor]], device) -> tuple[torch.Tensor, ...]:
    """(ema address, param address, length) per BLOCK-element chunk of every pair, as int64 tensors."""
    e_addr, p_addr, length = [], [], []
    for e, p in pairs:
        starts = torch.arange(0, e.numel(), BLOCK, dtype=torch.int64)
        e_addr.append(e.data_ptr() + starts * e.element_size())
        p_addr.append(p.data_ptr() + starts * p.element_size())
        length.append(torch.clamp(e.numel() - starts, max=BLOCK))
    return tuple(torch.cat(t).to(device) for t in (e_addr, p_addr, length))


@torch.library.custom_op("rmmd_core::ema_update_triton", mutates_args=("ema",))
def ema_update_triton(ema: list[torch.Tensor], params: list[torch.Tensor], beta: float) -> None:
    """Triton launcher; arguments as ``rmmd_core.ops.ema_update`` (validated there)."""
    if not ema or not launchable(ema[0]):
        return
    device = ema[0].device
    # Contiguous working copies (strided EMAs are copied back below); grouped by dtype pair.
    work = [(e.contiguous(), p.contiguous()) for e, p in zip(ema, params)]
    groups: dict[tuple[torch.dtype, torch.dtype], list[tuple[torch.Tensor, torch.Tensor]]] = {}
    for e, p in work:
        if e.numel() > 0:
            groups.setdefault((e.dtype, p.dtype), []).append((e, p))
    for (e_dtype, p_dtype), pairs in groups.items():
        opmath = torch.float64 if e_dtype == torch.float64 else torch.float32
        e_addr, p_addr, length = _chunk_table(pairs, device)
        w = torch.full((1,), 1.0 - beta, dtype=opmath, device=device)
        _ema_kernel[(e_addr.numel(),)](e_addr, p_addr, length, w, EMA_TYPE=_TL_TYPES[e_dtype],
                                       PARAM_TYPE=_TL_TYPES[p_dtype], BLOCK_SIZE=BLOCK,
                                       BF16_BITS=bf16_by_bits(e_dtype, device))
    for e, (e_work, _) in zip(ema, work):
        if e_work.data_ptr() != e.data_ptr():
            e.copy_(e_work)
