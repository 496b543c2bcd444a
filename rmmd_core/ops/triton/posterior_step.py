"""Triton kernel of the posterior / DDIM(eta) step (method.md §a.4, §e K1): ``rmmd_core::posterior_step_triton``.

Forward::

    z_s[i] = A[b] * z_t[i] + C[b] * x_hat[i] + gamma[b] * tl.randn(seed, offset + i),   b = i // D

with i the flat row-major logical index, so the noise is exactly the stream of
``ops/reference.py::philox_randn_ref`` and of ``csrc/common/philox.h`` (integers bit-exact, log / cos to a
few float32 ULP). Backward (registered in ``ops/_library.py``): ``dz_s/dz_t = A[b]``, ``dz_s/dx_hat = C[b]``.

The kernel is ``denoise_step.py``'s with P = A, Q = C and no x̂ output (one body for K1, K2 and K3).

Numerics: loads are upcast to the coefficients' dtype right away (float32, or float64 for float64 data;
the interpreter cannot do bf16 arithmetic and GPUs gain nothing from it), the noise is float32, and the
result is rounded once, to nearest even, at the store. Non-contiguous inputs are copied once by ``.contiguous()`` in the
launcher (the kernel indexes flat memory); the output is always contiguous.

The ``*_dev_triton`` twins take seed / offset as one-element int64 tensors that the kernel loads
(``DEVICE_SEEDS``), for CUDA-graph capture; same stream, bit for bit.
"""

from __future__ import annotations

import torch
from torch.library import triton_op, wrap_triton

from ._common import BLOCK, bf16_by_bits, launchable, num_programs, per_sample
from .denoise_step import _denoise_step_kernel


def _launch_step(out, z, x, A, C, gamma, seed, offset, device_seeds: bool = False) -> None:
    """``out = A z + C x + gamma n`` with the K1 kernel of ``denoise_step.py`` (P = A, Q = C, no x̂ output):
    one kernel body serves the posterior step, re-noise and denoise + step, so their streams and rounding
    agree by construction."""
    numel = z.numel()
    wrap_triton(_denoise_step_kernel)[(num_programs(numel),)](
        out, out, z, x, A, C, gamma, A, C, numel, numel // z.shape[0], seed, offset, BLOCK_SIZE=BLOCK,
        WANT_X0=False, BF16_BITS=bf16_by_bits(z.dtype, z.device), DEVICE_SEEDS=device_seeds)


def _posterior_step(z_t, x_hat, A, C, gamma, seed, offset, device_seeds: bool) -> torch.Tensor:
    z = z_t.contiguous()
    x = x_hat.contiguous()
    out = torch.empty(z_t.shape, dtype=z_t.dtype, device=z_t.device)
    numel = z.numel()
    if numel == 0 or not launchable(out):
        return out
    a, c, g = (per_sample(t, z.dtype) for t in (A, C, gamma))
    _launch_step(out, z, x, a, c, g, seed, offset, device_seeds)
    return out


@triton_op("rmmd_core::posterior_step_triton", mutates_args=())
def posterior_step_triton(z_t: torch.Tensor, x_hat: torch.Tensor, A: torch.Tensor, C: torch.Tensor,
                          gamma: torch.Tensor, seed: int, offset: int) -> torch.Tensor:
    """Triton launcher; arguments as ``rmmd_core.ops.posterior_step`` (validated there)."""
    return _posterior_step(z_t, x_hat, A, C, gamma, seed, offset, False)


@triton_op("rmmd_core::posterior_step_dev_triton", mutates_args=())
def posterior_step_dev_triton(z_t: torch.Tensor, x_hat: torch.Tensor, A: torch.Tensor, C: torch.Tensor,
                              gamma: torch.Tensor, seed: torch.Tensor, offset: torch.Tensor) -> torch.Tensor:
    """As ``posterior_step_triton`` with seed / offset as one-element int64 tensors on z_t's device, loaded by
    the kernel (never read on the host: a CUDA graph replays with whatever they hold)."""
    return _posterior_step(z_t, x_hat, A, C, gamma, seed, offset, True)


def _renoise(x, alpha, sigma, seed, offset, device_seeds: bool) -> torch.Tensor:
    xc = x.contiguous()
    out = torch.empty(x.shape, dtype=x.dtype, device=x.device)
    numel = xc.numel()
    if numel == 0 or not launchable(out):
        return out
    a, g = per_sample(alpha, xc.dtype), per_sample(sigma, xc.dtype)
    _launch_step(out, xc, xc, a, torch.zeros_like(a), g, seed, offset, device_seeds)
    return out


@triton_op("rmmd_core::renoise_triton", mutates_args=())
def renoise_triton(x: torch.Tensor, alpha: torch.Tensor, sigma: torch.Tensor, seed: int, offset: int) -> torch.Tensor:
    """K2 forward re-noise ``alpha x + sigma n`` (method.md §e K2): the K1 kernel with x as both inputs and C = 0.

    The second load of each element hits the cache line of the first (one DRAM read per element), and
    the noise stream is K1's by construction; 0 * x adds an exact zero. Arguments as
    ``rmmd_core.ops.renoise`` (validated there).
    """
    return _renoise(x, alpha, sigma, seed, offset, False)


@triton_op("rmmd_core::renoise_dev_triton", mutates_args=())
def renoise_dev_triton(x: torch.Tensor, alpha: torch.Tensor, sigma: torch.Tensor, seed: torch.Tensor,
                       offset: torch.Tensor) -> torch.Tensor:
    """As ``renoise_triton`` with seed / offset as one-element int64 tensors on x's device (kernel-loaded)."""
    return _renoise(x, alpha, sigma, seed, offset, True)
