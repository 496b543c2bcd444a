"""Helpers shared by the Triton launchers: block sizing and argument preparation."""

from __future__ import annotations

import torch
import triton
import triton.language as tl

# 1024 elements per program: 4 KB of fp32 per stream, enough to saturate HBM with 4 warps, and few
# enough programs that the interpreter (one Python-level program at a time) stays usable in tests.
BLOCK = 1024


def opmath_dtype(dtype: torch.dtype) -> torch.dtype:
    """float64 for float64 data, else float32 (method.md Project defaults: element-wise work in fp32)."""
    return torch.float64 if dtype == torch.float64 else torch.float32


def per_sample(coef: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """A (B,) coefficient as a contiguous tensor of the op's math type (read as-is by the kernels)."""
    return coef.detach().to(dtype=opmath_dtype(dtype)).contiguous()


def num_programs(numel: int, block: int = BLOCK) -> int:
    return max(1, (numel + block - 1) // block)


def bf16_by_bits(out_dtype: torch.dtype, device: torch.device) -> bool:
    """Whether a kernel must round its bf16 stores itself (the ``BF16_BITS`` constexpr switch).

    Triton's interpreter converts float32 to bfloat16 by truncation (triton 3.9), while GPUs and every
    other backend round to nearest even; kernels then round with ``round_to_bf16`` instead. On GPUs the
    hardware conversion is used.
    """
    return out_dtype == torch.bfloat16 and device.type == "cpu"


@triton.jit
def round_to_bf16(value):
    """float32 -> bfloat16 with round-to-nearest-even, in integer arithmetic (finite inputs)."""
    bits = value.to(tl.uint32, bitcast=True)
    bits = bits + 0x7FFF + ((bits >> 16) & 1)
    return (bits >> 16).to(tl.uint16).to(tl.bfloat16, bitcast=True)


@triton.jit
def cast_for_store(value, out_ptr, BF16_BITS: tl.constexpr):
    """``value`` in the element type of ``out_ptr``, rounded to nearest even on every backend."""
    if BF16_BITS:
        return round_to_bf16(value.to(tl.float32))
    return value.to(out_ptr.dtype.element_ty)


def launchable(t: torch.Tensor) -> bool:
    """False for fake / meta tensors (shape propagation): skip the launch, the output shape is all that counts.

    Under TRITON_INTERPRET=1, ``wrap_triton`` hands the interpreted kernel through unchanged (torch 2.13),
    so during FakeTensor tracing (opcheck, torch.compile) the interpreter would otherwise try to read the
    fake tensors' data. Compiled Triton goes through torch's wrapper, which never launches on fakes.
    """
    from torch._subclasses.fake_tensor import is_fake

    return t.device.type != "meta" and not is_fake(t)
