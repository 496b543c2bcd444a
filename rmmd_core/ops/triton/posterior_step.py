"""Triton kernel of the posterior / DDIM(eta) step (method.md §a.4, §e K1): ``rmmd_core::posterior_step_triton``.

Forward::

    z_s[i] = A[b] * z_t[i] + C[b] * x_hat[i] + gamma[b] * tl.randn(seed, offset + i),   b = i // D

with i the flat row-major logical index, so the noise is exactly the stream of
``ops/reference.py::philox_randn_ref`` and of ``csrc/common/philox.h`` (integers bit-exact, log / cos to a
few float32 ULP). Backward (registered in ``ops/_library.py``): ``dz_s/dz_t = A[b]``, ``dz_s/dx_hat = C[b]``.

Numerics: loads are upcast to the coefficients' dtype right away (float32, or float64 for float64 data;
the interpreter cannot do bf16 arithmetic and GPUs gain nothing from it), the noise is float32, and the
result is rounded once, to nearest even, at the store. Non-contiguous inputs are copied once by ``.contiguous()`` in the
launcher (the kernel indexes flat memory); the output is always contiguous.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl
from torch.library import triton_op, wrap_triton

from ._common import BLOCK, bf16_by_bits, cast_for_store, launchable, num_programs, per_sample


@triton.jit
def _posterior_step_kernel(
    out_ptr,  # (numel,) z_s, data dtype
    z_ptr,  # (numel,) z_t
    x_ptr,  # (numel,) x_hat
    a_ptr,  # (B,) A in opmath (fp32, or fp64 for fp64 data)
    c_ptr,  # (B,) C
    g_ptr,  # (B,) gamma
    numel,  # B * D
    per_sample_numel,  # D
    seed,  # Philox key, int64 in [0, 2^63)
    offset,  # Philox counter of element 0, int64
    BLOCK_SIZE: tl.constexpr,
    BF16_BITS: tl.constexpr,  # round bf16 stores in integer arithmetic (interpreter; see _common.py)
):
    pid = tl.program_id(0).to(tl.int64)
    idx = pid * BLOCK_SIZE + tl.arange(0, BLOCK_SIZE).to(tl.int64)
    mask = idx < numel
    b = idx // per_sample_numel
    a = tl.load(a_ptr + b, mask=mask, other=0.0)
    c = tl.load(c_ptr + b, mask=mask, other=0.0)
    g = tl.load(g_ptr + b, mask=mask, other=0.0)
    z = tl.load(z_ptr + idx, mask=mask, other=0.0).to(a.dtype)
    x = tl.load(x_ptr + idx, mask=mask, other=0.0).to(a.dtype)
    # int64 counter: randint4x then puts its high word into c1, as philox.h and the reference do.
    noise = tl.randn(seed, offset + idx).to(a.dtype)
    value = a * z + c * x + g * noise  # same association as the reference: (A z + C x) + gamma n
    tl.store(out_ptr + idx, cast_for_store(value, out_ptr, BF16_BITS), mask=mask)


@triton_op("rmmd_core::posterior_step_triton", mutates_args=())
def posterior_step_triton(z_t: torch.Tensor, x_hat: torch.Tensor, A: torch.Tensor, C: torch.Tensor,
                          gamma: torch.Tensor, seed: int, offset: int) -> torch.Tensor:
    """Triton launcher; arguments as ``rmmd_core.ops.posterior_step`` (validated there)."""
    z = z_t.contiguous()
    x = x_hat.contiguous()
    out = torch.empty(z_t.shape, dtype=z_t.dtype, device=z_t.device)
    numel = z.numel()
    if numel == 0 or not launchable(out):
        return out
    a, c, g = (per_sample(t, z.dtype) for t in (A, C, gamma))
    wrap_triton(_posterior_step_kernel)[(num_programs(numel),)](
        out, z, x, a, c, g, numel, numel // z.shape[0], seed, offset, BLOCK_SIZE=BLOCK,
        BF16_BITS=bf16_by_bits(z.dtype, z.device))
    return out


@triton_op("rmmd_core::renoise_triton", mutates_args=())
def renoise_triton(x: torch.Tensor, alpha: torch.Tensor, sigma: torch.Tensor, seed: int, offset: int) -> torch.Tensor:
    """K2 forward re-noise ``alpha x + sigma n`` (method.md §e K2): the K1 kernel with x as both inputs and C = 0.

    The second load of each element hits the cache line of the first (one DRAM read per element), and
    the noise stream is K1's by construction; 0 * x adds an exact zero. Arguments as
    ``rmmd_core.ops.renoise`` (validated there).
    """
    xc = x.contiguous()
    out = torch.empty(x.shape, dtype=x.dtype, device=x.device)
    numel = xc.numel()
    if numel == 0 or not launchable(out):
        return out
    a, g = per_sample(alpha, xc.dtype), per_sample(sigma, xc.dtype)
    wrap_triton(_posterior_step_kernel)[(num_programs(numel),)](
        out, xc, xc, a, torch.zeros_like(a), g, numel, numel // xc.shape[0], seed, offset, BLOCK_SIZE=BLOCK,
        BF16_BITS=bf16_by_bits(xc.dtype, xc.device))
    return out
