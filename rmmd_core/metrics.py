"""Distribution distances between sample sets (used to judge distillation quality on toy tasks)."""
from __future__ import annotations

import torch


def _check_pair(x: torch.Tensor, y: torch.Tensor) -> None:
    if x.dim() != 2 or y.dim() != 2 or x.shape[1] != y.shape[1]:
        raise ValueError(f"x and y must be (N, D) and (M, D) with the same D, got {tuple(x.shape)}, {tuple(y.shape)}")


def sliced_wasserstein(x: torch.Tensor, y: torch.Tensor, n_projections: int = 256,
                       generator: torch.Generator | None = None) -> float:
    """Sliced 2-Wasserstein distance ``sqrt(E_theta W_2^2(theta·x, theta·y))`` between ``x (N, D)``, ``y (M, D)``.

    Each 1-D W_2 is computed exactly from quantiles (both sets resampled to ``min(N, M)`` quantile levels).
    """
    _check_pair(x, y)
    x, y = x.double(), y.double()
    theta = torch.randn(x.shape[1], n_projections, generator=generator, dtype=torch.float64)
    theta = theta / theta.norm(dim=0, keepdim=True)
    px, py = (x @ theta).sort(0).values, (y @ theta).sort(0).values
    n = min(px.shape[0], py.shape[0])
    q = (torch.arange(n, dtype=torch.float64) + 0.5) / n
    ix = (q * px.shape[0]).long().clamp_max(px.shape[0] - 1)
    iy = (q * py.shape[0]).long().clamp_max(py.shape[0] - 1)
    return float(((px[ix] - py[iy]) ** 2).mean().sqrt())


def mmd_rbf(x: torch.Tensor, y: torch.Tensor, bandwidths=(0.1, 0.3, 1.0, 3.0)) -> float:
    """Unbiased squared MMD with a sum of RBF kernels ``exp(-|a-b|^2 / (2 h^2))`` over ``bandwidths``."""
    _check_pair(x, y)
    x, y = x.double(), y.double()

    def k(a, b):
        d2 = torch.cdist(a, b) ** 2
        return sum(torch.exp(-d2 / (2 * h * h)) for h in bandwidths)

    n, m = x.shape[0], y.shape[0]
    kxx, kyy, kxy = k(x, x), k(y, y), k(x, y)
    sxx = (kxx.sum() - kxx.diagonal().sum()) / (n * (n - 1))
    syy = (kyy.sum() - kyy.diagonal().sum()) / (m * (m - 1))
    return float(sxx + syy - 2 * kxy.mean())
