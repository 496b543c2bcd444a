"""Triton kernel of "denoise + step" (method.md §e K1 / K3): ``rmmd_core::denoise_step_triton``.

Forward, on coefficients folded in float64 by ``rmmd_core.ops.denoise_step``
(``ops/denoise_reference.py``)::

    z_s[i] = P[b] * z_t[i] + Q[b] * F[i] + gamma[b] * tl.randn(seed, offset + i),   b = i // D
    x0[i]  = a[b] * z_t[i] + c[b] * F[i]                                              (WANT_X0 only)

The noise is the stream of the posterior-step kernel (same counters), so z_s equals
``posterior_step_triton(z_t, F, P, Q, gamma, seed, offset)`` bit for bit. Backward (ops/denoise_step.py):
``grad_z_t = P g_zs + a g_x0``, ``grad_F = Q g_zs + c g_x0``. Numerics as in ``posterior_step.py``: loads
upcast to the coefficients' dtype, float32 noise, one rounding per store. Non-contiguous inputs are copied
once in the launcher; outputs are contiguous.

``rmmd_core::denoise_step_dev_triton`` is the same kernel with ``DEVICE_SEEDS``: seed and offset are pointers
to one int64 each, loaded in the kernel, so a CUDA graph that captured the launch draws the noise of
whatever seed the caller copied in before the replay.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl
from torch.library import triton_op, wrap_triton

from ._common import BLOCK, bf16_by_bits, cast_for_store, launchable, num_programs, per_sample


@triton.jit
def _denoise_step_kernel(
    zs_ptr,  # (numel,) z_s, data dtype
    x0_ptr,  # (numel,) x0 (WANT_X0), else any valid pointer (never written)
    z_ptr,  # (numel,) z_t
    f_ptr,  # (numel,) raw network output F
    p_ptr,  # (B,) P = A + C a, opmath (fp32, or fp64 for fp64 data)
    q_ptr,  # (B,) Q = C c
    g_ptr,  # (B,) gamma
    a_ptr,  # (B,) a (read only with WANT_X0)
    c_ptr,  # (B,) c
    numel,  # B * D
    per_sample_numel,  # D
    seed,  # Philox key, int64 in [0, 2^63); with DEVICE_SEEDS a pointer to it (one int64)
    offset,  # Philox counter of element 0, int64; with DEVICE_SEEDS a pointer to it
    BLOCK_SIZE: tl.constexpr,
    WANT_X0: tl.constexpr,  # also write x0
    BF16_BITS: tl.constexpr,  # round bf16 stores in integer arithmetic (interpreter; see _common.py)
    DEVICE_SEEDS: tl.constexpr = False,  # seed / offset are read from device memory (CUDA-graph replays)
):
    if DEVICE_SEEDS:
        # One scalar load each per program (cached); the values then enter tl.randn exactly as the int
        # launch arguments do (tl.randn widens the key to uint64 either way), so the streams are identical.
        seed = tl.load(seed)
        offset = tl.load(offset)
    pid = tl.program_id(0).to(tl.int64)
    idx = pid * BLOCK_SIZE + tl.arange(0, BLOCK_SIZE).to(tl.int64)
    mask = idx < numel
    b = idx // per_sample_numel
    p = tl.load(p_ptr + b, mask=mask, other=0.0)
    q = tl.load(q_ptr + b, mask=mask, other=0.0)
    g = tl.load(g_ptr + b, mask=mask, other=0.0)
    z = tl.load(z_ptr + idx, mask=mask, other=0.0).to(p.dtype)
    f = tl.load(f_ptr + idx, mask=mask, other=0.0).to(p.dtype)
    noise = tl.randn(seed, offset + idx).to(p.dtype)
    value = p * z + q * f + g * noise  # the posterior step's association: (P z + Q F) + gamma n
    tl.store(zs_ptr + idx, cast_for_store(value, zs_ptr, BF16_BITS), mask=mask)
    if WANT_X0:
        a = tl.load(a_ptr + b, mask=mask, other=0.0)
        c = tl.load(c_ptr + b, mask=mask, other=0.0)
        tl.store(x0_ptr + idx, cast_for_store(a * z + c * f, x0_ptr, BF16_BITS), mask=mask)


def _denoise_step(z_t, net_out, P, Q, gamma, a, c, seed, offset, want_x0, device_seeds: bool):
    z = z_t.contiguous()
    f = net_out.contiguous()
    z_s = torch.empty(z_t.shape, dtype=z_t.dtype, device=z_t.device)
    x0 = torch.empty(z_t.shape if want_x0 else (0,), dtype=z_t.dtype, device=z_t.device)
    numel = z.numel()
    if numel == 0 or not launchable(z_s):
        return z_s, x0
    p, q, g, ca, cc = (per_sample(t, z.dtype) for t in (P, Q, gamma, a, c))
    wrap_triton(_denoise_step_kernel)[(num_programs(numel),)](
        z_s, x0 if want_x0 else z_s, z, f, p, q, g, ca, cc, numel, numel // z.shape[0], seed, offset,
        BLOCK_SIZE=BLOCK, WANT_X0=want_x0, BF16_BITS=bf16_by_bits(z.dtype, z.device), DEVICE_SEEDS=device_seeds)
    return z_s, x0


@triton_op("rmmd_core::denoise_step_triton", mutates_args=())
def denoise_step_triton(z_t: torch.Tensor, net_out: torch.Tensor, P: torch.Tensor, Q: torch.Tensor,
                        gamma: torch.Tensor, a: torch.Tensor, c: torch.Tensor, seed: int, offset: int,
                        want_x0: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """Triton launcher; arguments as the ``rmmd_core::denoise_step`` schema (validated by ``ops.denoise_step``)."""
    return _denoise_step(z_t, net_out, P, Q, gamma, a, c, seed, offset, want_x0, False)


@triton_op("rmmd_core::denoise_step_dev_triton", mutates_args=())
def denoise_step_dev_triton(z_t: torch.Tensor, net_out: torch.Tensor, P: torch.Tensor, Q: torch.Tensor,
                            gamma: torch.Tensor, a: torch.Tensor, c: torch.Tensor, seed: torch.Tensor,
                            offset: torch.Tensor, want_x0: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """As ``denoise_step_triton`` with seed / offset as one-element int64 tensors on z_t's device, loaded by
    the kernel (never read on the host: a CUDA graph replays with whatever they hold)."""
    return _denoise_step(z_t, net_out, P, Q, gamma, a, c, seed, offset, want_x0, True)
