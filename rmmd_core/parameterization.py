"""Conversions between a network's output and the x-prediction (method.md §a.1, §a.3).

With ``z = alpha x + sigma eps`` (method.md §a.1) every supported parameterisation is affine in
``(z, out)``, so each conversion is ``x0 = a * z + b * out`` with per-sample coefficients ``a, b`` built
from ``alpha, sigma`` (and ``alpha', sigma'`` or ``sigma_data``):

    name     network target               x0 from the output                             method.md
    'x0'     x                            out                                            §a.1 table
    'eps'    eps                          (z - sigma out) / alpha                        §a.1 table
    'v'      v = alpha eps - sigma x      (alpha z - sigma out) / (alpha^2 + sigma^2)    §a.1 (general form)
    'flow'   u = alpha' x + sigma' eps    (sigma' z - sigma out) / Delta,                §a.1 general flow
                                          Delta = sigma' alpha - sigma alpha'
    'score'  grad log p = -eps / sigma    (z + sigma^2 out) / alpha                      §a.1 table
    'edm'    F (raw EDM network)          c_skip z / alpha + c_out out                   §a.3

For 'v' the general inverse is exact for any (alpha, sigma) and equals the table row ``alpha z - sigma v``
when ``alpha^2 + sigma^2 = 1``. For 'flow' with rectified flow (alpha = 1 - t, sigma = t) ``Delta = 1``,
``u = eps - x`` and ``x0 = z - t u``. For 'edm' the network is evaluated at ``c_in * z / alpha`` (VE
coordinates, see :func:`edm_preconditioning`); that input scaling is the caller's job (``Denoiser``).

Shapes and dtypes: ``out``, ``z``, ``x0``, ``eps`` share one shape (e.g. ``(B, C, H, W)``); ``alpha``,
``sigma``, ``dalpha``, ``dsigma`` are tensors (or numbers) broadcastable to it, normally ``(B, 1, ..., 1)``;
a 1-D ``(B,)`` coefficient is reshaped to ``(B, 1, ..., 1)`` for convenience. The coefficients ``a, b`` are
formed in the coefficients' own dtype (float64 when the caller passes float64, method.md "Project
defaults": Precision), then cast to the data dtype; the element-wise work runs in the data dtype upcast to
at least float32, and the result has the data dtype (that of ``promote_types(out, z)``).
"""
from __future__ import annotations

import torch
from torch import Tensor

__all__ = [
    "PREDICTIONS",
    "check_prediction",
    "x0_coefficients",
    "to_x0",
    "to_eps",
    "from_x0",
    "edm_preconditioning",
]

PREDICTIONS = ("x0", "eps", "v", "flow", "score", "edm")

# diffusers / common spellings accepted by check_prediction, mapped to the canonical names above.
_ALIASES = {"sample": "x0", "x": "x0", "epsilon": "eps", "v_prediction": "v"}

Coef = Tensor | float


def check_prediction(name: str) -> str:
    """Return the canonical prediction name (one of :data:`PREDICTIONS`).

    Also accepts the diffusers spellings 'epsilon', 'sample', 'v_prediction' and 'x'.

    Raises:
        ValueError: unknown name; the message lists the valid names.
    """
    if isinstance(name, str):
        key = name.strip().lower()
        key = _ALIASES.get(key, key)
        if key in PREDICTIONS:
            return key
    raise ValueError(f"unknown prediction {name!r}; valid names: {', '.join(PREDICTIONS)} "
                     f"(aliases: {', '.join(f'{k}->{v}' for k, v in _ALIASES.items())})")


# ---------------------------------------------------------------------------------------------- helpers
def _coef(c: Coef, like: Tensor | None = None) -> Tensor:
    if isinstance(c, Tensor):
        return c if c.is_floating_point() else c.to(torch.float64)
    return torch.as_tensor(c, dtype=torch.float64, device=None if like is None else like.device)


def _shape_for(c: Tensor, data: Tensor) -> Tensor:
    """(B,) per-sample coefficient -> (B, 1, ..., 1) against data of shape (B, ...)."""
    if c.dim() == 1 and data.dim() >= 2 and c.shape[0] == data.shape[0] and c.shape[0] != 1:
        return c.view((c.shape[0],) + (1,) * (data.dim() - 1))
    return c


def _work_dtype(*ts: Tensor) -> tuple[torch.dtype, torch.dtype]:
    """(result dtype, compute dtype): the data dtype and that dtype upcast to at least float32."""
    out = ts[0].dtype
    for t in ts[1:]:
        out = torch.promote_types(out, t.dtype)
    if not out.is_floating_point:
        out = torch.get_default_dtype()
    return out, torch.promote_types(out, torch.float32)


def _combine(a: Tensor, u: Tensor, b: Tensor, v: Tensor) -> Tensor:
    """a * u + b * v with coefficients cast to the data's compute dtype."""
    res, work = _work_dtype(u, v)
    a = _shape_for(a, u).to(device=u.device, dtype=work)
    b = _shape_for(b, u).to(device=u.device, dtype=work)
    return (a * u.to(work) + b * v.to(work)).to(res)


_REQUIRED_WHAT = {"flow": "the schedule's time derivatives d alpha/dt and d sigma/dt",
                  "edm": "the data standard deviation used by the EDM preconditioning"}


def _require(prediction: str, **kw) -> None:
    missing = [k for k, v in kw.items() if v is None]
    if missing:
        raise ValueError(f"prediction={prediction!r} needs {' and '.join(missing)} "
                         f"({_REQUIRED_WHAT[prediction]}), got None")


def _pair(alpha: Coef, sigma: Coef) -> tuple[Tensor, Tensor]:
    """alpha, sigma as tensors broadcast to a common shape."""
    alpha = _coef(alpha)
    return torch.broadcast_tensors(alpha, _coef(sigma, alpha))


# ---------------------------------------------------------------------------------------------- EDM
def edm_preconditioning(alpha: Coef, sigma: Coef, sigma_data: Coef) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """EDM preconditioning (method.md §a.3) for any schedule, in VE coordinates.

    With ``z_ve = z / alpha`` and ``s = sigma / alpha`` (method.md §a.2, "Conversions from VP"):

        c_in   = 1 / sqrt(s^2 + sd^2)          (applied to z_ve: the network input is c_in * z / alpha)
        c_skip = sd^2 / (s^2 + sd^2)
        c_out  = s sd / sqrt(s^2 + sd^2)
        c_noise = log(s) / 4

    so that ``x0 = c_skip * z_ve + c_out * F(c_in * z_ve; c_noise)``. For EDM itself (alpha = 1) these are
    exactly the §a.3 formulas.

    Args:
        alpha, sigma: tensors (any broadcastable shapes, e.g. ``(B, 1, ..., 1)``) or numbers.
        sigma_data: ``sd``, number or tensor.

    Returns:
        ``(c_in, c_skip, c_out, c_noise)``, each of the broadcast shape of the inputs, in their dtype.
    """
    alpha, sigma = _pair(alpha, sigma)
    sd = _coef(sigma_data, alpha)
    s = sigma / alpha
    r = torch.rsqrt(s * s + sd * sd)
    c_in = r
    c_skip = sd * sd * r * r
    c_out = s * sd * r
    c_noise = torch.log(s) / 4
    return c_in, c_skip, c_out, c_noise


# ---------------------------------------------------------------------------------------------- conversions
def x0_coefficients(alpha: Coef, sigma: Coef, prediction: str, *, dalpha: Coef | None = None,
                    dsigma: Coef | None = None, sigma_data: Coef | None = None) -> tuple[Tensor, Tensor]:
    """Coefficients ``(a, b)`` with ``x0 = a * z + b * out`` for the given parameterisation (see module table).

    Computed in the dtype of the coefficients (pass float64); shapes broadcast from the inputs. Fused ops
    can take these per-sample scalars instead of re-deriving each parameterisation.
    """
    p = check_prediction(prediction)
    alpha, sigma = _pair(alpha, sigma)
    if p == "x0":
        return torch.zeros_like(alpha), torch.ones_like(alpha)
    if p == "eps":
        return 1 / alpha, -sigma / alpha
    if p == "v":
        n = alpha * alpha + sigma * sigma
        return alpha / n, -sigma / n
    if p == "flow":
        _require(p, dalpha=dalpha, dsigma=dsigma)
        da, ds = _coef(dalpha, alpha), _coef(dsigma, alpha)
        delta = ds * alpha - sigma * da
        return ds / delta, -sigma / delta
    if p == "score":
        return 1 / alpha, sigma * sigma / alpha
    # 'edm'
    _require(p, sigma_data=sigma_data)
    _, c_skip, c_out, _ = edm_preconditioning(alpha, sigma, sigma_data)
    return c_skip / alpha, c_out


def to_x0(out: Tensor, z: Tensor, alpha: Coef, sigma: Coef, prediction: str, *, dalpha: Coef | None = None,
          dsigma: Coef | None = None, sigma_data: Coef | None = None) -> Tensor:
    """Convert a network output to the x-prediction ``x̂`` (method.md §a.1, §a.3).

    Args:
        out: network output, shape ``(B, ...)`` (for 'edm' the raw ``F`` evaluated at ``c_in * z / alpha``).
        z: the noisy input ``z_t = alpha x + sigma eps``, same shape as ``out``.
        alpha, sigma: schedule values, broadcastable to ``z`` (``(B, 1, ..., 1)``; ``(B,)`` is reshaped).
        prediction: one of :data:`PREDICTIONS` (or an alias accepted by :func:`check_prediction`).
        dalpha, dsigma: ``d alpha/dt``, ``d sigma/dt``; required for 'flow'.
        sigma_data: required for 'edm'.

    Returns:
        ``x̂`` with the shape of ``z`` and the dtype ``promote_types(out.dtype, z.dtype)``.

    Raises:
        ValueError: unknown prediction, or a required keyword missing (the message names it).
    """
    p = check_prediction(prediction)
    if p == "x0":
        res, _ = _work_dtype(out, z)
        return out.to(res)
    a, b = x0_coefficients(alpha, sigma, p, dalpha=dalpha, dsigma=dsigma, sigma_data=sigma_data)
    return _combine(a, z, b, out)


def to_eps(x0: Tensor, z: Tensor, alpha: Coef, sigma: Coef) -> Tensor:
    """Implied noise ``epŝ = (z - alpha x0) / sigma`` (method.md §a.1, x-pred row).

    Shapes as in :func:`to_x0`; returns the shape of ``z`` in ``promote_types(x0.dtype, z.dtype)``.
    """
    alpha, sigma = _pair(alpha, sigma)
    return _combine(1 / sigma, z, -alpha / sigma, x0)


def from_x0(x0: Tensor, eps: Tensor, alpha: Coef, sigma: Coef, prediction: str, *, dalpha: Coef | None = None,
            dsigma: Coef | None = None, sigma_data: Coef | None = None) -> Tensor:
    """The network *target* for clean ``x0`` and noise ``eps`` (so ``z = alpha x0 + sigma eps``).

        'x0'        x0
        'eps'       eps
        'v'         alpha eps - sigma x0
        'flow'      dalpha x0 + dsigma eps
        'score'     -eps / sigma   ( = (alpha x0 - z) / sigma^2 )
        'edm'       F = (x0 - c_skip z_ve) / c_out = (s x0 - sd^2 eps) / (sd sqrt(s^2 + sd^2)),  s = sigma/alpha

    The EDM form is the simplified closed form (no cancellation). ``to_x0(from_x0(x0, eps, ...), z, ...)``
    returns ``x0`` for every parameterisation. Used to train teachers and for round-trip tests.

    Args:
        x0, eps: shape ``(B, ...)``; other arguments as in :func:`to_x0`.

    Returns:
        The target, shape of ``x0``, dtype ``promote_types(x0.dtype, eps.dtype)``.
    """
    p = check_prediction(prediction)
    alpha, sigma = _pair(alpha, sigma)
    if p == "x0":
        res, _ = _work_dtype(x0, eps)
        return x0.to(res)
    if p == "eps":
        res, _ = _work_dtype(x0, eps)
        return eps.to(res)
    if p == "v":
        return _combine(-sigma, x0, alpha, eps)
    if p == "flow":
        _require(p, dalpha=dalpha, dsigma=dsigma)
        da, ds = _coef(dalpha, alpha), _coef(dsigma, alpha)
        return _combine(da, x0, ds, eps)
    if p == "score":
        return _combine(torch.zeros_like(sigma), x0, -1 / sigma, eps)
    # 'edm'
    _require(p, sigma_data=sigma_data)
    sd = _coef(sigma_data, alpha)
    s = sigma / alpha
    r = torch.rsqrt(s * s + sd * sd)
    return _combine(s * r / sd, x0, -sd * r, eps)

