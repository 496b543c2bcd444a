"""Pure-PyTorch references of the closed-form image rewards (method.md §e K4a / K4b): the truth the
fused ``grayscale_reward`` / ``laplacian_reward`` backends are tested against.

Both rewards are negative quadratic forms ``R_b(x) = -(1/D) ||M x_b||^2`` of a linear map M, so the
gradient is the symmetric map ``K = -(2/D) M^T M`` applied to x (``grad = K x``), and the backward of
(value, grad) with upstream (Gv, Gg) is ``K (Gv[b] x + Gg)`` (used by the ops' autograd). Math in
float32 (float64 for float64 data); value (B,) in that type, grad rounded once to x0's dtype.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

__all__ = ["LUMA", "avg4", "grayscale_reward_ref", "laplacian_reward_ref", "opmath"]

# ITU-R BT.601 luma weights (method.md §e K4a).
LUMA = (0.299, 0.587, 0.114)


def opmath(dtype: torch.dtype) -> torch.dtype:
    return torch.float64 if dtype == torch.float64 else torch.float32


def _grayscale_map(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    w = x.new_tensor(LUMA).view(1, 3, 1, 1)
    return x - (x * w).sum(1, keepdim=True), w


def grayscale_reward_ref(x0: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """K4a: ``R = -(1/D) sum_{c,p} (x_c - gray)^2``, ``gray = 0.299 x_r + 0.587 x_g + 0.114 x_b``.

    With ``d_c = x_c - gray`` (per pixel): ``dR/dx_k = -(2/D) (d_k - w_k sum_c d_c)``.

    Args:
        x0: (B, 3, H, W) floating; D = 3 H W.

    Returns:
        (value (B,) float32 / float64, grad like x0 in x0's dtype); differentiable.
    """
    x = x0.to(opmath(x0.dtype))
    d, w = _grayscale_map(x)
    D = max(x[0].numel(), 1) if x.shape[0] > 0 else 1
    value = -(d * d).flatten(1).sum(1) / D
    grad = -(2.0 / D) * (d - w * d.sum(1, keepdim=True))
    return value, grad.to(x0.dtype)


def avg4(x: torch.Tensor) -> torch.Tensor:
    """Mean of the 4 neighbours over the last two dims with replicate (Neumann) borders.

    Replicate borders make this map symmetric (each clamped read of a border pixel is matched by the
    border pixel's own folded-back contribution), so avg4 is its own adjoint.
    """
    p = F.pad(x, (1, 1, 1, 1), mode="replicate")
    return 0.25 * (p[..., :-2, 1:-1] + p[..., 2:, 1:-1] + p[..., 1:-1, :-2] + p[..., 1:-1, 2:])


def laplacian_reward_ref(x0: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """K4b: ``R = -(1/D) sum (x - avg4(x))^2`` per channel, replicate borders.

    With ``r = (I - P) x``, P = avg4 (symmetric): ``dR/dx = -(2/D) (I - P) r``, another 5-point stencil.

    Args:
        x0: (B, C, H, W) floating; D = C H W.

    Returns:
        (value (B,) float32 / float64, grad like x0 in x0's dtype); differentiable.
    """
    x = x0.to(opmath(x0.dtype))
    r = x - avg4(x)
    D = max(x[0].numel(), 1) if x.shape[0] > 0 else 1
    value = -(r * r).flatten(1).sum(1) / D
    grad = -(2.0 / D) * (r - avg4(r))
    return value, grad.to(x0.dtype)
