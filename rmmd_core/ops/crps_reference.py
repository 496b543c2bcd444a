"""Pure-PyTorch references for the ensemble-CRPS reward and forecast statistics (method.md §c.7, §e K4c/K10).

These are the truth the fused CRPS kernels are tested against. Layout follows the engine's multi-sample
rewards: the ensemble is member-major ``(M, B, *S)`` (M members of B forecasts), the target ``(B, *S)``,
and ``weights`` broadcast to the per-sample shape ``S`` (area × variable weights).

Fair CRPS of M >= 2 exchangeable members x_1..x_M against a scalar y:

    CRPS = (1/M) sum_i |x_i - y|  -  1/(2 M (M-1)) sum_{i,j} |x_i - x_j|

In sorted form (x_(1) <= ... <= x_(M)), ``sum_{i,j} |x_i - x_j| = 2 sum_i (2i - M - 1) x_(i)``, so nothing
of size M x M is ever built: memory is O(M·D). Its sub-gradient (sign(0) = 0, ties broken by sort
order) is

    dCRPS/dx_i = (1/M) sign(x_i - y) - (2 rank_i - M - 1) / (M (M-1)).
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch


def check_ensemble(ens, target) -> None:
    """The ensemble ``(M >= 2, B, *S)`` and its target ``(B, *S)``: floating tensors on one device."""
    if not isinstance(ens, torch.Tensor) or not ens.is_floating_point():
        raise TypeError("ensemble must be a floating-point Tensor of shape (M, B, ...)")
    if not isinstance(target, torch.Tensor) or not target.is_floating_point():
        raise TypeError("target must be a floating-point Tensor of shape (B, ...)")
    if ens.dim() < 2 or ens.shape[0] < 2:
        raise ValueError(f"ensemble must have shape (M, B, ...) with M >= 2 members, got {tuple(ens.shape)}")
    if tuple(target.shape) != tuple(ens.shape[1:]):
        raise ValueError(f"target must have shape {tuple(ens.shape[1:])} (the ensemble without its member "
                         f"axis), got {tuple(target.shape)}")
    if ens.device != target.device:
        raise ValueError(f"target must be on the ensemble's device {ens.device}, got {target.device}")


def _check_inputs(ens: torch.Tensor, target: torch.Tensor, weights: torch.Tensor | None,
                  mask: torch.Tensor | None) -> torch.Tensor:
    """Validate shapes/values; return the effective per-element weights broadcast to target's shape."""
    check_ensemble(ens, target)
    sample_shape = tuple(target.shape[1:])
    if weights is None:
        w = torch.ones(sample_shape, dtype=torch.float64, device=target.device)
    else:
        if not isinstance(weights, torch.Tensor):
            raise TypeError("weights must be a Tensor broadcastable to the per-sample shape")
        try:
            w = torch.broadcast_to(weights, sample_shape)
        except RuntimeError:
            raise ValueError(f"weights of shape {tuple(weights.shape)} do not broadcast to the per-sample shape "
                             f"{sample_shape}") from None
        if not bool(torch.isfinite(w).all()) or bool((w < 0).any()):
            raise ValueError("weights must be finite and non-negative")
    w = w.to(torch.float64).unsqueeze(0).expand_as(target)  # weights in float64: they are tiny and exact
    if mask is not None:
        if mask.shape != target.shape or mask.dtype != torch.bool:
            raise ValueError(f"mask must be a bool Tensor of the target's shape {tuple(target.shape)}")
        w = w * mask
        nan_where = torch.isnan(target) & mask
    else:
        nan_where = torch.isnan(target)
    if bool(nan_where.any()):
        raise ValueError("target contains NaN where it is not masked out: pass mask= (True = verify here)")
    if bool((w.flatten(1).sum(1) <= 0).any()):
        raise ValueError("every sample needs a positive total weight (weights * mask sum to 0 for some sample)")
    return w


def crps_fair_ref(ens: torch.Tensor, target: torch.Tensor, weights: torch.Tensor | None = None,
                  mask: torch.Tensor | None = None, *, with_grad: bool = True):
    """Weighted fair CRPS per forecast and its gradient w.r.t. every member.

    Args:
        ens: ``(M, B, *S)`` members, M >= 2 (fp32/fp64/bf16/fp16; computed in fp32, fp64 for fp64).
        target: ``(B, *S)`` verifying values (NaN allowed only where ``mask`` is False).
        weights: non-negative, broadcastable to ``S`` (e.g. cos-latitude × per-variable); normalised per
            sample so the value is a weighted *mean* over elements (method.md "Project defaults").
        mask: optional bool ``(B, *S)``: True where the target is verified.
    Returns:
        ``crps (B,)`` and, if ``with_grad``, ``grad (M, B, *S)`` = d crps_b / d ens[i, b] (in ens's dtype).
    """
    w = _check_inputs(ens, target, weights, mask)
    cdt = torch.float64 if ens.dtype == torch.float64 else torch.float32
    x = ens.to(cdt)
    y = torch.where(torch.isnan(target), torch.zeros_like(target), target).to(cdt)
    M = x.shape[0]
    wn = (w / w.flatten(1).sum(1).view(-1, *([1] * (w.dim() - 1)))).to(cdt)   # per-sample weights sum to 1
    sorted_x, order = torch.sort(x, dim=0, stable=True)
    coef = (2 * torch.arange(1, M + 1, dtype=cdt, device=x.device) - M - 1).view(M, *([1] * (x.dim() - 1)))
    skill = (x - y).abs().mean(0)                                    # (1/M) sum_i |x_i - y|
    half_spread = (coef * sorted_x).sum(0) / (M * (M - 1))            # 1/(2M(M-1)) sum_ij |x_i - x_j|
    crps = ((skill - half_spread) * wn).flatten(1).sum(1)
    if not with_grad:
        return crps.to(ens.dtype)
    rank_coef = torch.empty_like(x).scatter_(0, order, coef.expand_as(x))   # (2 rank_i - M - 1) per member
    grad = (torch.sign(x - y) / M - rank_coef / (M * (M - 1))) * wn
    return crps.to(ens.dtype), grad.to(ens.dtype)


def crps_fair_pairwise(ens: torch.Tensor, target: torch.Tensor, weights: torch.Tensor | None = None,
                       mask: torch.Tensor | None = None) -> torch.Tensor:
    """The naive O(M^2) pairwise definition (an M x M broadcast): the benchmark's baseline and a test oracle."""
    w = _check_inputs(ens, target, weights, mask)
    x = ens.double()
    y = torch.where(torch.isnan(target), torch.zeros_like(target), target).double()
    M = x.shape[0]
    wn = (w / w.flatten(1).sum(1).view(-1, *([1] * (w.dim() - 1)))).double()
    skill = (x - y).abs().mean(0)
    spread = (x[:, None] - x[None, :]).abs().sum((0, 1)) / (2 * M * (M - 1))
    return ((skill - spread) * wn).flatten(1).sum(1).to(ens.dtype)


def crps_fair_m2_ref(ens: torch.Tensor, target: torch.Tensor, weights: torch.Tensor | None = None,
                     mask: torch.Tensor | None = None):
    """Closed form for M = 2: ``CRPS = ½(|x1-y| + |x2-y|) - ½|x1-x2|``, grads ``½ sign(x_i-y) - ½ sign(x_i-x_j)``."""
    if ens.dim() < 2 or ens.shape[0] != 2:
        raise ValueError(f"crps_fair_m2_ref needs exactly M = 2 members, got shape {tuple(ens.shape)}")
    w = _check_inputs(ens, target, weights, mask)
    cdt = torch.float64 if ens.dtype == torch.float64 else torch.float32
    x1, x2 = ens[0].to(cdt), ens[1].to(cdt)
    y = torch.where(torch.isnan(target), torch.zeros_like(target), target).to(cdt)
    wn = (w / w.flatten(1).sum(1).view(-1, *([1] * (w.dim() - 1)))).to(cdt)
    val = 0.5 * ((x1 - y).abs() + (x2 - y).abs()) - 0.5 * (x1 - x2).abs()
    g1 = 0.5 * torch.sign(x1 - y) - 0.5 * torch.sign(x1 - x2)
    g2 = 0.5 * torch.sign(x2 - y) - 0.5 * torch.sign(x2 - x1)
    return (val * wn).flatten(1).sum(1).to(ens.dtype), torch.stack([g1 * wn, g2 * wn]).to(ens.dtype)


@dataclass
class ForecastStats:
    """Weighted partial sums over forecasts and grid for each variable (method.md §c.7, §e K10).

    All ``(V,)`` tensors (one entry per variable); ``weight`` is the summed weight, so means are
    ``field / weight``. ``crps = skill - spread``.
    """
    skill: torch.Tensor      # sum w (1/M) sum_i |x_i - y|
    spread: torch.Tensor     # sum w 1/(2M(M-1)) sum_ij |x_i - x_j|
    mse: torch.Tensor        # sum w (xbar - y)^2
    var: torch.Tensor        # sum w (1/(M-1)) sum_i (x_i - xbar)^2
    weight: torch.Tensor     # sum w
    members: int

    @property
    def crps(self) -> torch.Tensor:
        return (self.skill - self.spread) / self.weight

    @property
    def spread_skill_ratio(self) -> torch.Tensor:
        """``SSR = sqrt((M+1)/M) * sqrt(mean var) / sqrt(mean MSE)`` (finite-ensemble corrected)."""
        M = self.members
        return math.sqrt((M + 1) / M) * (self.var / self.mse).sqrt()


def forecast_stats_ref(ens: torch.Tensor, target: torch.Tensor, weights: torch.Tensor | None = None,
                       mask: torch.Tensor | None = None, variable_dim: int = 1) -> ForecastStats:
    """One pass over ``ens (M, B, *S)`` and ``target (B, *S)``: per-variable weighted partial sums.

    ``variable_dim`` is the dimension of ``target`` that indexes variables (default 1: ``(B, V, ...)``).
    """
    w = _check_inputs(ens, target, weights, mask).double()
    x = ens.double()
    y = torch.where(torch.isnan(target), torch.zeros_like(target), target).double()
    M = x.shape[0]
    xbar = x.mean(0)
    sorted_x = torch.sort(x, dim=0).values
    coef = (2 * torch.arange(1, M + 1, dtype=torch.float64, device=x.device) - M - 1).view(M, *([1] * (x.dim() - 1)))
    fields = {
        "skill": (x - y).abs().mean(0),
        "spread": (coef * sorted_x).sum(0) / (M * (M - 1)),
        "mse": (xbar - y) ** 2,
        "var": ((x - xbar) ** 2).sum(0) / (M - 1),
    }
    dims = [d for d in range(target.dim()) if d != variable_dim]

    def reduce(f):
        return (f * w).sum(dims)

    return ForecastStats(**{k: reduce(v) for k, v in fields.items()}, weight=w.sum(dims), members=M)
