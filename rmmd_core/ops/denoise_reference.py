"""Pure-PyTorch reference of the fused "denoise + step" op (method.md §a.1, §a.3, §a.4, §e K1/K3).

Every parameterisation in ``rmmd_core/parameterization.py`` turns the raw network output ``F`` into the
x-prediction affinely, ``x̂ = a[b] z_t + c[b] F`` (``x0_coefficients``), and the posterior / DDIM(eta) step
is affine in ``(z_t, x̂)``: ``z_s = A[b] z_t + C[b] x̂ + gamma[b] n``. So the whole "denoise + step" is

    z_s = (A + C a)[b] z_t + (C c)[b] F + gamma[b] n = P[b] z_t + Q[b] F + gamma[b] n

with ``P, Q`` folded once per sample in float64 (:func:`fold_denoise_coefficients`). Folding in float64 is
also the more accurate order: for eps-prediction near pure noise ``a = 1/alpha_t`` is large and
``A + C a = alpha_s / alpha_t`` comes out of a cancellation that float64 absorbs and float32 element-wise
math would not.
"""

from __future__ import annotations

import torch

from .reference import posterior_step_ref

__all__ = ["denoise_step_ref", "fold_denoise_coefficients"]


def fold_denoise_coefficients(a: torch.Tensor, c: torch.Tensor, A: torch.Tensor,
                              C: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """``(P, Q) = (A + C a, C c)``, per sample, in float64 on ``A``'s device (all inputs detached).

    Args:
        a, c: (B,) x-prediction coefficients, ``x̂ = a z_t + c F`` (``parameterization.x0_coefficients``).
        A, C: (B,) posterior-step coefficients (``sampler.posterior_coefficients``).

    Returns:
        P, Q: (B,) float64.
    """
    def f64(t: torch.Tensor) -> torch.Tensor:
        return t.detach().to(device=A.device, dtype=torch.float64)

    a, c, A, C = f64(a), f64(c), f64(A), f64(C)
    return A + C * a, C * c


def denoise_step_ref(z_t: torch.Tensor, net_out: torch.Tensor, a: torch.Tensor, c: torch.Tensor, A: torch.Tensor,
                     C: torch.Tensor, gamma: torch.Tensor, seed: int | torch.Tensor, offset: int | torch.Tensor = 0,
                     want_x0: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
    """Denoise + posterior step in one expression::

        (P, Q)    = fold_denoise_coefficients(a, c, A, C)                    float64, per sample
        z_s[b, j] = P[b] z_t[b, j] + Q[b] net_out[b, j] + gamma[b] n[b * D + j]
        x0[b, j]  = a[b] z_t[b, j] + c[b] net_out[b, j]                      (only when want_x0)

    ``n`` is the Philox stream of :func:`~rmmd_core.ops.reference.posterior_step_ref` (same seed and offset:
    same numbers), and ``z_s`` is exactly ``posterior_step_ref(z_t, net_out, P, Q, gamma, seed, offset)``.
    Math in float32 (float64 for float64 data), each output rounded once. Coefficients are constants
    (detached); gradients flow to ``z_t`` and ``net_out``.

    Args:
        z_t: (B, ...) float32 / float64 / float16 / bfloat16, the state at time t.
        net_out: like z_t: the raw network output F (after CFG combination, if any).
        a, c: (B,) floating: ``x̂ = a z_t + c F``. A, C, gamma: (B,) floating: the posterior step.
        seed: Philox key in [0, 2**63). offset: first Philox counter, >= 0. Each an int or a one-element
            int64 tensor (not read on the host).
        want_x0: also return x̂; otherwise the second output is an empty ``(0,)`` tensor.

    Returns:
        ``(z_s, x0)``: z_s contiguous like z_t; x0 contiguous like z_t, or ``(0,)`` when not wanted.
    """
    P, Q = fold_denoise_coefficients(a, c, A, C)
    z_s = posterior_step_ref(z_t, net_out, P, Q, gamma, seed, offset)
    if not want_x0:
        return z_s, z_t.new_empty((0,))
    opmath = torch.float64 if z_t.dtype == torch.float64 else torch.float32
    bshape = (z_t.shape[0],) + (1,) * (z_t.dim() - 1)

    def coef(t: torch.Tensor) -> torch.Tensor:
        return t.detach().to(device=z_t.device, dtype=opmath).reshape(bshape)

    x0 = coef(a) * z_t.to(opmath) + coef(c) * net_out.to(opmath)
    return z_s, x0.to(z_t.dtype).contiguous()
