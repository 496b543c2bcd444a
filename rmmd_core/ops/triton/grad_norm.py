"""Triton kernels of the multi-tensor gradient-clipping ops: ``rmmd_core::grad_norm_triton`` and
``rmmd_core::grad_scale_triton``::

    grad_norm:    ||g|| = sqrt(sum_i sum_j g_i[j]^2)      squares summed in float64
    grad_scale_:  g_i[j] <- g_i[j] * coef                 float32 math (float64 for float64), one rounding

Multi-tensor-apply with a chunk table, as ops/triton/ema.py: the launcher cuts every tensor of one dtype
into BLOCK-element chunks and writes, per chunk, the *address* of its first element and its length into
int64 tensors; program c casts the address back to a typed pointer, so one launch covers the whole dtype
group. The norm's programs each write one float64 partial; a one-program finish kernel adds them in a
fixed order (a fixed-shape tree per FINISH_BLOCK slice, slices in order) and takes the square root, so the
result does not depend on the launch configuration. Raw addresses cannot be traced by FakeTensor /
Inductor, so these are plain ``torch.library.custom_op``s (opaque to torch.compile), not ``triton_op``s.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from ..grad_norm_reference import norm_dtype
from ._common import BLOCK, bf16_by_bits, cast_for_store, launchable

_TL_TYPES = {torch.float32: tl.float32, torch.float64: tl.float64, torch.float16: tl.float16,
             torch.bfloat16: tl.bfloat16}
FINISH_BLOCK = 1024


@triton.jit
def _sumsq_kernel(
    addr_ptr,  # (chunks,) int64: address of the chunk's first element
    length_ptr,  # (chunks,) int64: elements in the chunk (<= BLOCK_SIZE)
    partial_ptr,  # (chunks,) float64: this group's slice of the partials
    TYPE: tl.constexpr, BLOCK_SIZE: tl.constexpr,
):
    c = tl.program_id(0)
    g_ptr = tl.load(addr_ptr + c).to(tl.pointer_type(TYPE))
    n = tl.load(length_ptr + c)
    offs = tl.arange(0, BLOCK_SIZE)
    g = tl.load(g_ptr + offs, mask=offs < n, other=0.0)
    if TYPE != tl.float64:
        # via float32 first: the interpreter cannot convert bf16 to float64 directly (exact either way)
        g = g.to(tl.float32).to(tl.float64)
    tl.store(partial_ptr + c, tl.sum(g * g, axis=0))


@triton.jit
def _finish_kernel(partial_ptr, n, out_ptr, FINISH: tl.constexpr):
    offs = tl.arange(0, FINISH)
    acc = tl.zeros((FINISH,), dtype=tl.float64)
    for start in range(0, n, FINISH):  # slices in order; lane k always adds partials k, k + FINISH, ...
        acc += tl.load(partial_ptr + start + offs, mask=start + offs < n, other=0.0)
    total = tl.sum(acc, axis=0)
    tl.store(out_ptr, tl.sqrt(total).to(out_ptr.dtype.element_ty))  # inf stays inf, NaN stays NaN


@triton.jit
def _scale_kernel(
    addr_ptr,  # (chunks,) int64: address of the chunk's first element
    length_ptr,  # (chunks,) int64: elements in the chunk (<= BLOCK_SIZE)
    coef_ptr,  # (1,) float64: the coefficient (exact copy of the caller's)
    TYPE: tl.constexpr, OPMATH: tl.constexpr, BLOCK_SIZE: tl.constexpr, BF16_BITS: tl.constexpr,
):
    c = tl.program_id(0)
    g_ptr = tl.load(addr_ptr + c).to(tl.pointer_type(TYPE))
    n = tl.load(length_ptr + c)
    coef = tl.load(coef_ptr).to(OPMATH)  # to the math type first, as torch's mul reads a scalar
    offs = tl.arange(0, BLOCK_SIZE)
    mask = offs < n
    g = tl.load(g_ptr + offs, mask=mask, other=0.0).to(OPMATH)
    tl.store(g_ptr + offs, cast_for_store(g * coef, g_ptr, BF16_BITS), mask=mask)


def _groups(work: list[torch.Tensor]) -> dict[torch.dtype, list[torch.Tensor]]:
    groups: dict[torch.dtype, list[torch.Tensor]] = {}
    for t in work:
        if t.numel() > 0:
            groups.setdefault(t.dtype, []).append(t)
    return dict(sorted(groups.items(), key=lambda kv: str(kv[0])))  # a fixed group order


def _chunk_table(tensors: list[torch.Tensor], device) -> tuple[torch.Tensor, torch.Tensor]:
    """(address, length) per BLOCK-element chunk of every tensor, as int64 tensors on ``device``."""
    addr, length = [], []
    for t in tensors:
        starts = torch.arange(0, t.numel(), BLOCK, dtype=torch.int64)
        addr.append(t.data_ptr() + starts * t.element_size())
        length.append(torch.clamp(t.numel() - starts, max=BLOCK))
    return torch.cat(addr).to(device), torch.cat(length).to(device)


@torch.library.custom_op("rmmd_core::grad_norm_triton", mutates_args=())
def grad_norm_triton(tensors: list[torch.Tensor]) -> torch.Tensor:
    """Triton launcher; arguments as ``rmmd_core.ops.grad_norm`` (validated there)."""
    if not tensors:
        return torch.zeros((), dtype=torch.float32)
    device = tensors[0].device
    out = torch.empty((), dtype=norm_dtype(tensors), device=device)
    if not launchable(tensors[0]):
        return out
    work = [t.contiguous() for t in tensors]  # strided views read through one contiguous copy
    tables = [(dtype, *_chunk_table(group, device)) for dtype, group in _groups(work).items()]
    partials = torch.empty(max(1, sum(a.numel() for _, a, _ in tables)), dtype=torch.float64, device=device)
    first = 0
    for dtype, addr, length in tables:
        _sumsq_kernel[(addr.numel(),)](addr, length, partials[first:], TYPE=_TL_TYPES[dtype], BLOCK_SIZE=BLOCK)
        first += addr.numel()
    _finish_kernel[(1,)](partials, first, out, FINISH=FINISH_BLOCK)
    return out


@torch.library.custom_op("rmmd_core::grad_scale_triton", mutates_args=("tensors",))
def grad_scale_triton(tensors: list[torch.Tensor], coef: torch.Tensor) -> None:
    """Triton launcher; arguments as ``rmmd_core.ops.grad_scale_`` (validated there)."""
    if not tensors or not launchable(tensors[0]):
        return
    device = tensors[0].device
    coef64 = coef.reshape(1).to(torch.float64)  # exact for every floating coef dtype
    work = [t.contiguous() for t in tensors]  # strided tensors are scaled in a temporary, copied back below
    for dtype, group in _groups(work).items():
        addr, length = _chunk_table(group, device)
        opmath = tl.float64 if dtype == torch.float64 else tl.float32
        _scale_kernel[(addr.numel(),)](addr, length, coef64, TYPE=_TL_TYPES[dtype], OPMATH=opmath, BLOCK_SIZE=BLOCK,
                                       BF16_BITS=bf16_by_bits(dtype, device))
    for t, w in zip(tensors, work):
        if w.data_ptr() != t.data_ptr():
            t.copy_(w)
