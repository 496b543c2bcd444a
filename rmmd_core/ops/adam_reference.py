"""Pure-PyTorch reference of the fused optimiser update ``adam_update`` (clip scale + Adam + EMA in one pass,
method.md §e K9 for the EMA): the truth the ``cpu`` / ``triton`` / ``cuda`` backends are tested against.

For every tensor i, in the math type of ``params[i]`` (float32 for float32 / bfloat16 / float16, float64 for
float64), every scalar rounded to that type once::

    g  = grads[i]                                         read as stored
    g  = round_g(g * grad_scale);  grads[i] <- g           only when grad_scale != 1 (the clip, written back)
    g  = g + weight_decay * p                             only when weight_decay != 0 (torch's L2 Adam)
    m  = lerp(m, g, 1 - beta1)                            e + w (x - e) if |w| < 0.5, else x - (x - e)(1 - w)
    v  = v * beta2 + ((1 - beta2) * g) * g
    m, v rounded to their dtype and stored; the stored values are used below
    d  = sqrt(v) / bias_correction2_sqrt + eps             sqrt correctly rounded (IEEE)
    p  = p + ((-step_size) * m) / d                       rounded to the param dtype and stored
    ema[i] <- lerp(ema[i], p, 1 - ema_decay)              only when ema is non-empty; in the EMA's math type

``step_size = lr / (1 - beta1^k)`` and ``bias_correction2_sqrt = sqrt(1 - beta2^k)`` come from the caller
(the optimiser's step count k), as torch's ``_multi_tensor_adam`` computes them. For float32 / float64 the
order of operations is that of torch's foreach Adam (``lerp_``, ``mul_``, ``addcmul_``, ``sqrt``, ``div_``,
``add_``, ``addcdiv_``), so the update equals torch's up to its rounding of sqrt (torch's vectorised CPU sqrt
is not correctly rounded; every backend here is) and, on CUDA, of ``tensor / scalar`` (torch multiplies by the
reciprocal there): ~1 ulp of the update. Compare GPU backends with this reference run on CPU copies for the
same reason. For bfloat16 / float16 the new v is rounded once (torch rounds after ``mul_`` and again after
``addcmul_``).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch

__all__ = ["adam_update_ref"]


def _opmath(dtype: torch.dtype) -> torch.dtype:
    return torch.float64 if dtype == torch.float64 else torch.float32


def _scalar(value: float, dtype: torch.dtype) -> float:
    """``value`` rounded to ``dtype`` (the kernels convert each scalar to their math type once)."""
    return torch.tensor(value, dtype=dtype).item()


def _sqrt_rn(x: torch.Tensor) -> torch.Tensor:
    """IEEE (correctly rounded) sqrt, as the kernels compute it. torch's vectorised CPU sqrt is not: ~20% of
    float32 and ~1% of float64 results are 1 ulp off. float32 goes through float64 (exact: a double holds
    more than 2 * 24 + 2 bits); float64 through NumPy, whose sqrt is the hardware's IEEE instruction."""
    if x.dtype == torch.float64:
        return torch.from_numpy(np.sqrt(x.detach().cpu().numpy())).to(x.device)
    return x.to(torch.float64).sqrt().to(x.dtype)


def _lerp(start: torch.Tensor, end: torch.Tensor, weight: float) -> torch.Tensor:
    """torch.lerp's two-sided form (weight already rounded to the math type)."""
    if abs(weight) < 0.5:
        return start + weight * (end - start)
    return end - (end - start) * (1.0 - weight)


@torch.no_grad()
def adam_update_ref(params: Sequence[torch.Tensor], grads: Sequence[torch.Tensor], exp_avgs: Sequence[torch.Tensor],
                    exp_avg_sqs: Sequence[torch.Tensor], ema: Sequence[torch.Tensor], step_size: float, beta1: float,
                    beta2: float, eps: float, bias_correction2_sqrt: float, weight_decay: float = 0.0,
                    grad_scale: float = 1.0, ema_decay: float = 0.0) -> None:
    """In place, for every i: the update of the module docstring.

    Args:
        params, grads, exp_avgs, exp_avg_sqs: equal-length lists; ``grads[i]`` / ``exp_avgs[i]`` /
            ``exp_avg_sqs[i]`` have ``params[i]``'s shape and dtype (any strides).
        ema: empty, or one tensor per param (same shape, any floating dtype).
        step_size: lr / (1 - beta1^k); beta1, beta2, eps: Adam's; bias_correction2_sqrt: sqrt(1 - beta2^k).
        weight_decay: L2 coefficient added to the gradient (0: none).
        grad_scale: multiplies the gradient first (the clip coefficient; 1: none, grads untouched).
        ema_decay: the EMA's beta (used only when ema is non-empty).
    """
    for i, (p, g_in, m, v) in enumerate(zip(params, grads, exp_avgs, exp_avg_sqs)):
        op = _opmath(p.dtype)
        g = g_in.to(op)
        if grad_scale != 1.0:
            g = (g * _scalar(grad_scale, op)).to(g_in.dtype)
            g_in.copy_(g)
            g = g.to(op)
        p_op = p.to(op)
        if weight_decay != 0.0:
            g = g + _scalar(weight_decay, op) * p_op
        m_new = _lerp(m.to(op), g, _scalar(1.0 - beta1, op))
        v_new = v.to(op) * _scalar(beta2, op) + (_scalar(1.0 - beta2, op) * g) * g
        m.copy_(m_new)
        v.copy_(v_new)
        denom = _sqrt_rn(v.to(op)) / _scalar(bias_correction2_sqrt, op) + _scalar(eps, op)
        p.copy_(p_op + (_scalar(-step_size, op) * m.to(op)) / denom)
        if len(ema):
            e = ema[i]
            e_op = _opmath(e.dtype)
            e.copy_(_lerp(e.to(e_op), p.to(e_op), _scalar(1.0 - ema_decay, e_op)))
