"""Pure-PyTorch references of the multi-tensor gradient-clipping ops (the truth their backends are tested
against):

* ``grad_norm_ref(tensors)``: the global L2 norm ``sqrt(sum_i sum_j t_i[j]^2)`` over a list of floating
  tensors, squares accumulated in float64, the result rounded once into float32 (float64 when any input is
  float64): a 0-d tensor on the tensors' device. An inf element gives inf, a NaN element NaN (the engine
  uses the norm's finiteness as its finite-gradient check).
* ``grad_scale_ref(tensors, coef)``: in place ``t <- t * coef`` for every tensor, in the tensor's math
  type (float32; float64 for float64 tensors), coef (a 0-d / 1-element floating tensor) converted to that
  math type first, the product rounded once: bit-identical to ``torch._foreach_mul_(tensors, coef)``.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

__all__ = ["grad_norm_ref", "grad_scale_ref", "norm_dtype"]


def norm_dtype(tensors: Sequence[torch.Tensor]) -> torch.dtype:
    """float64 when any tensor is float64, else float32: the dtype ``grad_norm`` returns."""
    return torch.float64 if any(t.dtype == torch.float64 for t in tensors) else torch.float32


@torch.no_grad()
def grad_norm_ref(tensors: Sequence[torch.Tensor]) -> torch.Tensor:
    """``sqrt(sum_i sum_j tensors[i][j]^2)`` as a 0-d float32 (float64 if any input is) tensor.

    Args:
        tensors: floating tensors of any shapes and strides on one device; may be empty (then a float32
            zero on the CPU).

    Returns:
        0-d tensor on the tensors' device; squares summed in float64, one rounding at the end.
    """
    if not tensors:
        return torch.zeros((), dtype=torch.float32)
    total = torch.zeros((), dtype=torch.float64, device=tensors[0].device)
    for t in tensors:
        total = total + t.detach().to(torch.float64).square().sum()
    return total.sqrt().to(norm_dtype(tensors))


@torch.no_grad()
def grad_scale_ref(tensors: Sequence[torch.Tensor], coef: torch.Tensor) -> None:
    """In place: ``t <- t * coef`` for every ``t`` in ``tensors`` (see module docstring).

    Args:
        tensors: floating tensors (updated in place), any strides.
        coef: 0-d or 1-element floating tensor on the tensors' device.
    """
    for t in tensors:
        opmath = torch.float64 if t.dtype == torch.float64 else torch.float32
        c = coef.detach().reshape(()).to(opmath)
        t.copy_(t.to(opmath) * c)
