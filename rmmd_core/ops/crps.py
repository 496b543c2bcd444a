"""K4c / K10, fair ensemble CRPS and forecast statistics (method.md §c.7, §e K4c, K10): public entry points,
validation, fake kernels and autograd of ``rmmd_core::crps_fair`` / ``rmmd_core::forecast_stats`` (C++ CPU /
CUDA) and their ``*_triton`` twins (ops/triton/crps.py). The truth is ``ops/crps_reference.py``.

Validation (shapes, weights, mask, NaN targets) happens here, once, in Python; the kernels receive the
already-prepared per-sample-shape weights ``weight (D,)`` float64, the per-sample normaliser
``inv_norm (B,)`` float64 and an optional bool ``mask (B, *S)``. An element is skipped entirely (no
contribution, zero gradient) when its weight is 0, so masked-out NaN targets are never read into the math.
"""

from __future__ import annotations

import math

import torch

from . import dispatch
from ._library import register_op
from .crps_reference import ForecastStats, check_ensemble, crps_fair_m2_ref, crps_fair_ref, forecast_stats_ref

__all__ = ["FORECAST_FIELDS", "crps_fair", "forecast_stats"]

_OP = "rmmd_core::crps_fair"
_OP_TRITON = "rmmd_core::crps_fair_triton"
_STATS_OP = "rmmd_core::forecast_stats"
_STATS_OP_TRITON = "rmmd_core::forecast_stats_triton"
_DATA_DTYPES = (torch.float32, torch.float64, torch.float16, torch.bfloat16)
# Columns of the (V, 5) float64 sums the forecast_stats kernels return, in ForecastStats order.
FORECAST_FIELDS = ("skill", "spread", "mse", "var", "weight")


# ------------------------------------------------------------------------------------------------
# Validation: the rules (and messages) of crps_reference._check_inputs, without materialising a
# float64 (B, *S) weight tensor when no mask is given (the fused ops' memory budget is O(M·D)).
# ------------------------------------------------------------------------------------------------

def _prepare(ens, target, weights, mask):
    """Validate; return ``(weight (D,) or (1,) float64 contiguous, total (B,) float64, mask or None)``.

    ``weight`` is ``weights`` broadcast to the per-sample shape S and flattened, or a single 1 for uniform
    weights (``weights=None``: no D-sized tensor at all); ``total[b]`` is the sample's summed effective
    weight (``sum_s weight[s] * mask[b, s]``).
    """
    check_ensemble(ens, target)
    if ens.dtype not in _DATA_DTYPES:
        raise TypeError(f"ensemble must be float32, float64, float16 or bfloat16, got {ens.dtype}")
    sample_shape = tuple(target.shape[1:])
    D = math.prod(sample_shape)
    if weights is None:
        w = torch.ones(1 if D != 0 else 0, dtype=torch.float64, device=target.device)
    else:
        if not isinstance(weights, torch.Tensor):
            raise TypeError("weights must be a Tensor broadcastable to the per-sample shape")
        if weights.device != target.device:
            raise ValueError(f"weights must be on the ensemble's device {target.device}, got {weights.device}")
        try:
            w = torch.broadcast_to(weights.detach(), sample_shape)
        except RuntimeError:
            raise ValueError(f"weights of shape {tuple(weights.shape)} do not broadcast to the per-sample shape "
                             f"{sample_shape}") from None
        if not bool(torch.isfinite(w).all()) or bool((w < 0).any()):
            raise ValueError("weights must be finite and non-negative")
        w = w.to(torch.float64).contiguous().reshape(-1)  # D values: small next to the (M, B, D) ensemble
    B = target.shape[0]
    if mask is not None:
        if not isinstance(mask, torch.Tensor) or mask.shape != target.shape or mask.dtype != torch.bool:
            raise ValueError(f"mask must be a bool Tensor of the target's shape {tuple(target.shape)}")
        if mask.device != target.device:
            raise ValueError(f"mask must be on the ensemble's device {target.device}, got {mask.device}")
        nan_where = torch.isnan(target) & mask
        total = (mask.reshape(B, -1) * w).sum(1) if B > 0 else w.new_zeros(0)
    else:
        nan_where = torch.isnan(target)
        total = (w.sum() * (D if weights is None else 1)).expand(B)
    if bool(nan_where.any()):
        raise ValueError("target contains NaN where it is not masked out: pass mask= (True = verify here)")
    if bool((total <= 0).any()):
        raise ValueError("every sample needs a positive total weight (weights * mask sum to 0 for some sample)")
    return w, total.contiguous(), (mask.contiguous() if mask is not None else None)


def _common_dtype(ens, target):
    """The kernels read ens and target in one dtype: a mismatched pair is promoted (a copy, only then)."""
    if ens.dtype == target.dtype:
        return ens, target
    dtype = torch.promote_types(ens.dtype, target.dtype)
    return ens.to(dtype), target.to(dtype)


def _check_with_grad(with_grad) -> bool:
    if not isinstance(with_grad, bool):
        raise TypeError(f"with_grad must be a bool, got {type(with_grad).__name__}")
    return with_grad


def _normalise_variable_dim(variable_dim, ndim: int) -> int:
    if isinstance(variable_dim, bool) or not isinstance(variable_dim, int):
        raise TypeError(f"variable_dim must be an int, got {type(variable_dim).__name__}")
    if not -ndim <= variable_dim < ndim:
        raise ValueError(f"variable_dim must index a dimension of the target (ndim {ndim}), got {variable_dim}")
    return variable_dim % ndim


# ------------------------------------------------------------------------------------------------
# Public entry points
# ------------------------------------------------------------------------------------------------

def crps_fair(ens: torch.Tensor, target: torch.Tensor, weights: torch.Tensor | None = None,
              mask: torch.Tensor | None = None, *, with_grad: bool = True, backend: str | None = None):
    """Weighted fair CRPS per forecast and its gradient w.r.t. every member (method.md §c.7, §e K4c)::

        crps[b]   = sum_s wn[b, s] ( (1/M) sum_i |x_i - y|  -  1/(M(M-1)) sum_i (2 rank_i - M - 1) x_i )
        grad[i,b,s] = wn[b, s] ( (1/M) sign(x_i - y) - (2 rank_i - M - 1) / (M(M-1)) )

    with x_i = ens[i, b, s], y = target[b, s], wn = weights * mask normalised to sum 1 per sample, and
    rank_i the 1-based rank of x_i among the M members (ties broken by member index, as a stable sort).
    M = 2 uses the closed form ``½(|x1-y| + |x2-y|) - ½|x1-x2|`` with the symmetric sub-gradient
    ``½ sign(x_i - y) - ½ sign(x_i - x_j)`` (crps_fair_m2_ref; it differs from the rank form only at exact
    ties). Memory is O(M·D): no (M, M, ...) intermediate on any fused backend.

    Numerics: per-element math in float32 (float64 for float64 data), per-sample sums in float32 blocks
    combined in float64; crps and grad are rounded once to the ensemble's dtype. Strided inputs are copied
    once by the fused kernels; grad is contiguous.

    Autograd: d crps[b] / d ens = grad (a sub-gradient), d crps[b] / d target = -sum_i grad[i];
    weights and mask are constants. When ``ens`` or ``target`` requires grad, the gradient is computed
    by the forward kernel even with ``with_grad=False`` (it is what backward returns).

    Args:
        ens: (M, B, *S) float32 / float64 / float16 / bfloat16, M >= 2 members.
        target: (B, *S) floating on ens's device; NaN allowed only where ``mask`` is False. A dtype other
            than ens's is promoted with it (one copy); outputs are in ens's dtype.
        weights: non-negative, finite, broadcastable to S (area x variable), or None (uniform).
        mask: bool (B, *S) or None: True where the target is verified.
        with_grad: also return grad.
        backend: None (``RMMD_CORE_BACKEND``, default auto), "auto", "reference", "cpu", "triton", "cuda".

    Returns:
        ``crps (B,)`` in ens's dtype, and if ``with_grad`` ``grad (M, B, *S)`` in ens's dtype.

    Raises:
        TypeError / ValueError naming the argument; RuntimeError when an explicit backend cannot run.
    """
    with_grad = _check_with_grad(with_grad)
    weight, total, mask_c = _prepare(ens, target, weights, mask)
    tensors = [t for t in (ens, target, weights, mask) if isinstance(t, torch.Tensor)]
    name = dispatch.resolve_backend("crps_fair", *tensors, backend=backend)
    if name == "reference":
        ref = crps_fair_m2_ref if ens.shape[0] == 2 else crps_fair_ref
        if ens.shape[0] == 2:
            crps, grad = ref(ens, target, weights, mask)
            return (crps, grad) if with_grad else crps
        return ref(ens, target, weights, mask, with_grad=with_grad)
    needs_grad = with_grad or (torch.is_grad_enabled() and (ens.requires_grad or target.requires_grad))
    op = torch.ops.rmmd_core.crps_fair_triton if name == "triton" else torch.ops.rmmd_core.crps_fair
    x, y = _common_dtype(ens, target)
    crps, grad = op(x, y, weight, 1.0 / total, mask_c, needs_grad)
    crps, grad = crps.to(ens.dtype), grad.to(ens.dtype)
    return (crps, grad) if with_grad else crps


def forecast_stats(ens: torch.Tensor, target: torch.Tensor, weights: torch.Tensor | None = None,
                   mask: torch.Tensor | None = None, variable_dim: int = 1,
                   backend: str | None = None) -> ForecastStats:
    """Per-variable weighted partial sums of the forecast statistics in one pass (method.md §c.7, §e K10)::

        skill[v]  = sum w (1/M) sum_i |x_i - y|           spread[v] = sum w 1/(2M(M-1)) sum_ij |x_i - x_j|
        mse[v]    = sum w (xbar - y)^2                    var[v]    = sum w 1/(M-1) sum_i (x_i - xbar)^2
        weight[v] = sum w

    summed over every element whose ``variable_dim`` index (of the target) is v, with w = weights * mask
    (not normalised). ``ForecastStats.crps`` and ``.spread_skill_ratio`` (with the sqrt((M+1)/M)
    correction) follow from these sums, which add across batches / lead times / ranks.

    Numerics: per-element math in float32 (float64 for float64 data), float32 block sums combined in
    float64; results are float64 (V,) tensors. No gradient (an evaluation metric).

    Args:
        ens, target, weights, mask, backend: as :func:`crps_fair`.
        variable_dim: dimension of ``target`` that indexes variables (default 1: ``(B, V, ...)``);
            negative values count from the end.

    Returns:
        ForecastStats with float64 (V,) fields and ``members = M``.
    """
    weight, _, mask_c = _prepare(ens, target, weights, mask)
    vdim = _normalise_variable_dim(variable_dim, target.dim())
    tensors = [t for t in (ens, target, weights, mask) if isinstance(t, torch.Tensor)]
    name = dispatch.resolve_backend("forecast_stats", *tensors, backend=backend)
    if name == "reference":
        return forecast_stats_ref(ens.detach(), target.detach(), weights, mask, variable_dim=vdim)
    V = target.shape[vdim]
    inner = math.prod(target.shape[vdim + 1:])
    op = torch.ops.rmmd_core.forecast_stats_triton if name == "triton" else torch.ops.rmmd_core.forecast_stats
    with torch.no_grad():
        sums = op(*_common_dtype(ens, target), weight, mask_c, V, inner)
    return ForecastStats(**{k: sums[:, i] for i, k in enumerate(FORECAST_FIELDS)}, members=ens.shape[0])


# ------------------------------------------------------------------------------------------------
# torch.library registrations: fake (C++ ops; triton_ops trace their launchers) and autograd
# ------------------------------------------------------------------------------------------------

def _check_op_args(op, ens, target, weight, mask):
    torch._check(ens.dim() >= 2 and ens.shape[0] >= 2,
                 lambda: f"rmmd_core::{op}: ens must have shape (M, B, ...) with M >= 2, got {tuple(ens.shape)}")
    torch._check(ens.dtype in _DATA_DTYPES,
                 lambda: f"rmmd_core::{op}: ens must be float32, float64, float16 or bfloat16, got {ens.dtype}")
    torch._check(target.shape == ens.shape[1:],
                 lambda: f"rmmd_core::{op}: target must have shape {tuple(ens.shape[1:])}, got {tuple(target.shape)}")
    torch._check(target.dtype == ens.dtype,
                 lambda: f"rmmd_core::{op}: target has dtype {target.dtype} but ens has dtype {ens.dtype}")
    torch._check(target.device == ens.device,
                 lambda: f"rmmd_core::{op}: target is on {target.device} but ens is on {ens.device}")
    D = math.prod(ens.shape[2:])
    torch._check(weight.dim() == 1 and (weight.shape[0] == D or weight.shape[0] == 1)
                 and weight.dtype == torch.float64,
                 lambda: f"rmmd_core::{op}: weight must be float64 of shape (D,) = ({D},) or (1,), got "
                         f"{tuple(weight.shape)} {weight.dtype}")
    torch._check(weight.device == ens.device,
                 lambda: f"rmmd_core::{op}: weight is on {weight.device} but ens is on {ens.device}")
    if mask is not None:
        torch._check(mask.shape == target.shape and mask.dtype == torch.bool,
                     lambda: f"rmmd_core::{op}: mask must be bool of shape {tuple(target.shape)}, got "
                             f"{tuple(mask.shape)} {mask.dtype}")
        torch._check(mask.device == ens.device,
                     lambda: f"rmmd_core::{op}: mask is on {mask.device} but ens is on {ens.device}")


def _crps_fake(ens, target, weight, inv_norm, mask, with_grad):
    _check_op_args("crps_fair", ens, target, weight, mask)
    B = ens.shape[1]
    torch._check(inv_norm.dim() == 1 and inv_norm.shape[0] == B and inv_norm.dtype == torch.float64,
                 lambda: f"rmmd_core::crps_fair: inv_norm must be float64 of shape (B,) = ({B},), got "
                         f"{tuple(inv_norm.shape)} {inv_norm.dtype}")
    grad = ens.new_empty(ens.shape) if with_grad else ens.new_empty((0,))
    return ens.new_empty((B,)), grad


def _crps_setup_context(ctx, inputs, output):
    _, grad = output
    ctx.with_grad = inputs[5]
    ctx.save_for_backward(grad)


def _crps_backward(ctx, grad_crps, grad_grad):
    """d crps[b] / d ens[i, b] = grad[i, b]; d crps[b] / d target[b] = -sum_i grad[i, b].

    ``grad`` is piecewise constant in the inputs, so the gradient of the ``grad`` output is zero almost
    everywhere and ``grad_grad`` contributes nothing. weight, inv_norm and mask are constants.
    """
    (grad,) = ctx.saved_tensors
    needs_ens, needs_target = ctx.needs_input_grad[0], ctx.needs_input_grad[1]
    if not (needs_ens or needs_target) or grad_crps is None:
        return None, None, None, None, None, None
    if not ctx.with_grad:
        raise RuntimeError("rmmd_core::crps_fair: backward needs the forward's grad output; call the op with "
                           "with_grad=True (rmmd_core.ops.crps_fair does so whenever ens or target requires grad)")
    opmath = torch.float64 if grad.dtype == torch.float64 else torch.float32
    g = grad.to(opmath) * grad_crps.to(opmath).reshape((1, -1) + (1,) * (grad.dim() - 2))
    grad_ens = g.to(grad.dtype) if needs_ens else None
    grad_target = (-g.sum(0)).to(grad.dtype) if needs_target else None
    return grad_ens, grad_target, None, None, None, None


def _stats_fake(ens, target, weight, mask, variables, inner):
    _check_op_args("forecast_stats", ens, target, weight, mask)
    torch._check(variables >= 1 and inner >= 1,
                 lambda: f"rmmd_core::forecast_stats: variables and inner must be >= 1, got {variables}, {inner}")
    return ens.new_empty((variables, len(FORECAST_FIELDS)), dtype=torch.float64)


def _stats_setup_context(ctx, inputs, output):
    pass


def _stats_backward(ctx, grad):
    raise RuntimeError("rmmd_core::forecast_stats is an evaluation metric and has no gradient")


registered_ops: tuple[str, ...] = (
    register_op(_OP, _OP_TRITON, _crps_fake, _crps_backward, _crps_setup_context)
    + (register_op(_STATS_OP, _STATS_OP_TRITON, _stats_fake, _stats_backward, _stats_setup_context)))
