"""Pure-PyTorch reference of the multi-tensor EMA update (method.md §e K9): the truth the fused
``ema_update`` backends are tested against.

For every pair ``(e, p)``: ``e <- beta e + (1 - beta) p``, written as ``torch.lerp(e, p, 1 - beta)``
evaluates it (the form of the engine's former ``torch._foreach_lerp_``)::

    w = 1 - beta;   e + w (p - e)          if |w| < 0.5
                    p - (p - e) (1 - w)    otherwise

in the EMA's math type (float32; float64 for a float64 EMA), p read in its own dtype and converted,
the result rounded once into e (in place).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

__all__ = ["ema_update_ref"]


@torch.no_grad()
def ema_update_ref(ema: Sequence[torch.Tensor], params: Sequence[torch.Tensor], beta: float) -> None:
    """In place: ``ema[i] <- beta ema[i] + (1 - beta) params[i]`` for every i (see module docstring).

    Args:
        ema: tensors updated in place (any floating dtype; math in fp32, fp64 for fp64).
        params: tensors with the same shapes, any floating dtype, any strides.
        beta: decay in [0, 1].
    """
    for e, p in zip(ema, params):
        opmath = torch.float64 if e.dtype == torch.float64 else torch.float32
        e_op = e.to(opmath)
        # p rounded to the math type first (the kernels convert on load the same way)
        p_op = p.to(opmath)
        weight = torch.tensor(1.0 - beta, dtype=opmath).item()  # the weight rounded to opmath
        if abs(weight) < 0.5:
            new = e_op + weight * (p_op - e_op)
        else:
            new = p_op - (p_op - e_op) * (1.0 - weight)
        e.copy_(new)
