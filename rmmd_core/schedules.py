"""Noise schedules in continuous time (method.md §a.1, §a.2).

Conventions (method.md §a.1): continuous ``t in [0, 1]``, ``t = 1`` the noisiest, and

    z_t = alpha_t x + sigma_t eps,        lambda_t = log(alpha_t^2 / sigma_t^2)   (log-SNR, decreasing in t).

A :class:`Schedule` maps ``t`` to ``(alpha_t, sigma_t)``, to ``lambda_t`` and back (closed forms of the
method.md §a.2 table), to the closed-form time derivatives ``(d alpha/dt, d sigma/dt)`` (needed by the
general flow-velocity parameterisation, §a.1) and to the VE noise level ``sigma_t / alpha_t`` (§a.2,
"Conversions from VP").

Every method

* accepts a tensor of any shape (or a Python number) and returns tensors of the same shape;
* computes in the input's floating dtype (integer tensors and Python numbers become float64, the
  precision the engine uses for per-sample coefficients, method.md "Project defaults": Precision);
* first clamps ``t`` into ``[t_min, t_max]``, which keeps the log-SNR finite (§a.2 "Endpoints").
  Derivatives are those of the closed-form formula at the clamped time (not of the clamp).
"""
from __future__ import annotations

import math
from abc import ABC, abstractmethod
from collections.abc import Sequence

import torch
from torch import Tensor

__all__ = [
    "Schedule",
    "VPCosine",
    "VPLinear",
    "EDM",
    "RectifiedFlow",
    "DiscreteVP",
    "SCHEDULES",
    "get_schedule",
    "karras_sigmas",
]

TensorLike = Tensor | float | int


def _as_float_tensor(x: TensorLike) -> Tensor:
    """Tensors keep their floating dtype and device; numbers and integer tensors become float64."""
    if isinstance(x, Tensor):
        return x if x.is_floating_point() else x.to(torch.float64)
    return torch.as_tensor(x, dtype=torch.float64)


def _softplus(x: Tensor) -> Tensor:
    """log(1 + e^x) to full relative precision for every x (torch's softplus is linear above 20)."""
    return x.clamp(min=0) + torch.log1p(torch.exp(-x.abs()))


def _check_finite(cls: str, **kw: float) -> None:
    for k, v in kw.items():
        try:
            ok = not isinstance(v, (bool, str)) and math.isfinite(float(v))
        except (TypeError, ValueError, RuntimeError):
            ok = False
        if not ok:
            raise ValueError(f"{cls}: {k} must be a finite number, got {v!r}")


def _check_sigma_data(cls: str, sigma_data: float) -> float:
    _check_finite(cls, sigma_data=sigma_data)
    if sigma_data <= 0:
        raise ValueError(f"{cls}: sigma_data must be > 0, got {sigma_data}")
    return float(sigma_data)


def _check_t_range(cls: str, t_min: float, t_max: float, *, lo_open: bool, hi_open: bool) -> None:
    """Validate 0 (<|<=) t_min < t_max (<|<=) 1; open ends are where the log-SNR is infinite."""
    _check_finite(cls, t_min=t_min, t_max=t_max)
    if t_min < 0 or (lo_open and t_min == 0):
        raise ValueError(f"{cls}: t_min must be {'> 0' if lo_open else '>= 0'} (log-SNR is infinite at t = 0), "
                         f"got {t_min}")
    if t_max > 1 or (hi_open and t_max == 1):
        raise ValueError(f"{cls}: t_max must be {'< 1' if hi_open else '<= 1'} (log-SNR is infinite at t = 1), "
                         f"got {t_max}")
    if t_min >= t_max:
        raise ValueError(f"{cls}: t_min must be < t_max, got t_min={t_min}, t_max={t_max}")


class Schedule(ABC):
    """Abstract noise schedule ``t -> (alpha_t, sigma_t)`` on continuous ``t in [t_min, t_max]``.

    Attributes:
        name: registry name ('vp_cosine', 'vp_linear', 'edm', 'rectified_flow', 'discrete_vp').
        kind: 'vp' (alpha^2 + sigma^2 = 1), 've' (alpha = 1) or 'flow' (alpha = 1 - t, sigma = t).
        t_min, t_max: every method clamps ``t`` into this range first.
        sigma_data: data standard deviation used for EDM preconditioning (method.md §a.3).

    Subclasses implement ``alpha_sigma``, ``log_snr``, ``t_from_log_snr`` and
    ``alpha_sigma_derivatives``; all take a tensor of any shape and return tensors of that shape.
    """

    name: str = "schedule"
    kind: str = "vp"
    t_min: float = 0.0
    t_max: float = 1.0
    sigma_data: float = 1.0

    # ------------------------------------------------------------------ helpers
    def _t(self, t: TensorLike) -> Tensor:
        return _as_float_tensor(t).clamp(self.t_min, self.t_max)

    # ------------------------------------------------------------------ interface
    @abstractmethod
    def alpha_sigma(self, t: TensorLike) -> tuple[Tensor, Tensor]:
        """``(alpha_t, sigma_t)`` at the clamped ``t``; each has the shape and dtype of ``t``."""

    def log_snr(self, t: TensorLike) -> Tensor:
        """``lambda_t = log(alpha_t^2 / sigma_t^2)``, strictly decreasing in ``t``; shape of ``t``."""
        a, s = self.alpha_sigma(t)
        return 2 * (torch.log(a) - torch.log(s))

    def alpha_sigma_log_snr(self, t: TensorLike) -> tuple[Tensor, Tensor, Tensor]:
        """``(*alpha_sigma(t), log_snr(t))``, the same values; schedules whose alpha and sigma come from
        lambda (:class:`DiscreteVP`) evaluate lambda once (the posterior step needs all three)."""
        a, s = self.alpha_sigma(t)
        return a, s, self.log_snr(t)

    @abstractmethod
    def t_from_log_snr(self, lam: TensorLike) -> Tensor:
        """Inverse of :meth:`log_snr` (closed form, method.md §a.2), clamped into ``[t_min, t_max]``."""

    @abstractmethod
    def alpha_sigma_derivatives(self, t: TensorLike) -> tuple[Tensor, Tensor]:
        """``(d alpha/dt, d sigma/dt)`` in closed form at the clamped ``t``; shape of ``t``."""

    def sigma_ve(self, t: TensorLike) -> Tensor:
        """VE noise level ``sigma_t / alpha_t`` of ``z_t / alpha_t = x + (sigma_t/alpha_t) eps`` (§a.2)."""
        a, s = self.alpha_sigma(t)
        return s / a

    def t_from_sigma_ve(self, s: TensorLike) -> Tensor:
        """Inverse of :meth:`sigma_ve`, through ``lambda = -2 log s``; clamped into ``[t_min, t_max]``."""
        return self.t_from_log_snr(-2 * torch.log(_as_float_tensor(s)))

    @property
    def prior_std(self) -> float:
        """Std of ``z_{t_max}`` when ``x`` is negligible: 1 for VP and flow schedules."""
        return 1.0

    def _params(self) -> dict:
        return {"t_min": self.t_min, "t_max": self.t_max, "sigma_data": self.sigma_data}

    def __repr__(self) -> str:
        args = ", ".join(f"{k}={v!r}" for k, v in self._params().items())
        return f"{type(self).__name__}({args})"


# ---------------------------------------------------------------------------------------------- VP cosine
class VPCosine(Schedule):
    """Variance-preserving cosine schedule, optionally shifted (method.md §a.2).

    Unshifted: ``alpha = cos(pi t/2)``, ``sigma = sin(pi t/2)``, ``lambda = -2 log tan(pi t/2)``.
    Shifted (simple-diffusion / SiD2): ``lambda = lambda_cos(t) + shift``; alpha and sigma follow from
    lambda (``alpha^2 = sigmoid(lambda)``), which in closed form is, with ``k = e^shift``, ``c = cos(pi t/2)``,
    ``s = sin(pi t/2)`` and ``N = k c^2 + s^2``:

        alpha = sqrt(k) c / sqrt(N),     sigma = s / sqrt(N).

    Inverse: ``t = (2/pi) arctan(exp(-(lambda - shift)/2))``.

    Args:
        t_min, t_max: clamp range, ``0 < t_min < t_max < 1`` (lambda is infinite at 0 and 1).
        shift: log-SNR shift; ``shift = 2 log(r_base / r)`` for resolution r (see :meth:`for_resolution`).
            Negative shifts (higher resolution) make every t noisier.
        sigma_data: data std for EDM preconditioning.
    """

    name = "vp_cosine"
    kind = "vp"

    def __init__(self, t_min: float = 1e-4, t_max: float = 1 - 1e-4, shift: float = 0.0, sigma_data: float = 1.0):
        _check_t_range("VPCosine", t_min, t_max, lo_open=True, hi_open=True)
        _check_finite("VPCosine", shift=shift)
        self.t_min, self.t_max = float(t_min), float(t_max)
        self.shift = float(shift)
        self.sigma_data = _check_sigma_data("VPCosine", sigma_data)

    @classmethod
    def for_resolution(cls, r: float, r_base: float = 64, **kwargs) -> "VPCosine":
        """Shifted cosine for resolution ``r`` relative to ``r_base``: ``shift = 2 log(r_base / r)``."""
        _check_finite("VPCosine.for_resolution", r=r, r_base=r_base)
        if r <= 0:
            raise ValueError(f"VPCosine.for_resolution: r must be > 0, got {r}")
        if r_base <= 0:
            raise ValueError(f"VPCosine.for_resolution: r_base must be > 0, got {r_base}")
        return cls(shift=2 * math.log(r_base / r), **kwargs)

    def _trig(self, t: TensorLike):
        t = self._t(t)
        h = (math.pi / 2) * t
        return torch.cos(h), torch.sin(h)

    def alpha_sigma(self, t):
        c, s = self._trig(t)
        if self.shift == 0.0:
            return c, s
        k = math.exp(self.shift)
        rn = torch.rsqrt(k * c * c + s * s)
        return math.sqrt(k) * c * rn, s * rn

    def log_snr(self, t):
        t = self._t(t)
        return -2 * torch.log(torch.tan((math.pi / 2) * t)) + self.shift

    def t_from_log_snr(self, lam):
        lam = _as_float_tensor(lam)
        t = (2 / math.pi) * torch.atan(torch.exp(-(lam - self.shift) / 2))
        return t.clamp(self.t_min, self.t_max)

    def alpha_sigma_derivatives(self, t):
        c, s = self._trig(t)
        w = math.pi / 2
        if self.shift == 0.0:
            return -w * s, w * c
        k = math.exp(self.shift)
        n = k * c * c + s * s
        rn = torch.rsqrt(n)
        dn = math.pi * c * s * (1 - k)  # dN/dt
        da = math.sqrt(k) * (-w * s * rn - 0.5 * c * rn / n * dn)
        ds = w * c * rn - 0.5 * s * rn / n * dn
        return da, ds

    def sigma_ve(self, t):
        # sigma/alpha = tan(pi t/2) / sqrt(k): one op, no cancellation
        t = self._t(t)
        return torch.tan((math.pi / 2) * t) * math.exp(-self.shift / 2)

    def _params(self):
        return {"t_min": self.t_min, "t_max": self.t_max, "shift": self.shift, "sigma_data": self.sigma_data}


# ---------------------------------------------------------------------------------------------- VP linear
class VPLinear(Schedule):
    """Continuous-time DDPM / VP-SDE schedule with linear beta(t) = beta_min + (beta_max - beta_min) t (§a.2).

    With ``B(t) = beta_min t + (beta_max - beta_min) t^2 / 2`` (the integral of beta):

        alpha = exp(-B/2),   sigma = sqrt(1 - e^{-B}),   lambda = -log(expm1(B)),
        t(lambda) = 2 B / (beta_min + sqrt(beta_min^2 + 2 (beta_max - beta_min) B)),  B = log(1 + e^{-lambda})

    (the last is the table's ``(-b0 + sqrt(b0^2 + 2 d B)) / d`` rationalised to avoid cancellation at small B).
    Derivatives: ``alpha' = -beta(t) alpha / 2``, ``sigma' = beta(t) alpha^2 / (2 sigma)``.

    Args:
        beta_min, beta_max: ``0 <= beta_min < beta_max``.
        t_min, t_max: clamp range, ``0 < t_min < t_max <= 1`` (lambda is infinite at t = 0).
        sigma_data: data std for EDM preconditioning.
    """

    name = "vp_linear"
    kind = "vp"

    def __init__(self, beta_min: float = 0.1, beta_max: float = 20.0, t_min: float = 1e-4, t_max: float = 1.0,
                 sigma_data: float = 1.0):
        _check_finite("VPLinear", beta_min=beta_min, beta_max=beta_max)
        if beta_min < 0:
            raise ValueError(f"VPLinear: beta_min must be >= 0, got {beta_min}")
        if beta_max <= beta_min:
            raise ValueError(f"VPLinear: beta_max must be > beta_min, got beta_max={beta_max}, beta_min={beta_min}")
        _check_t_range("VPLinear", t_min, t_max, lo_open=True, hi_open=False)
        self.beta_min, self.beta_max = float(beta_min), float(beta_max)
        self.t_min, self.t_max = float(t_min), float(t_max)
        self.sigma_data = _check_sigma_data("VPLinear", sigma_data)

    def _b_int_scalar(self, t: float) -> float:
        return self.beta_min * t + 0.5 * (self.beta_max - self.beta_min) * t * t

    def _b_int(self, t: Tensor) -> Tensor:
        return self.beta_min * t + 0.5 * (self.beta_max - self.beta_min) * t * t

    def alpha_sigma(self, t):
        b = self._b_int(self._t(t))
        return torch.exp(-0.5 * b), torch.sqrt(-torch.expm1(-b))

    def log_snr(self, t):
        return -torch.log(torch.expm1(self._b_int(self._t(t))))

    def t_from_log_snr(self, lam):
        lam = _as_float_tensor(lam)
        # clamping B to [B(t_min), B(t_max)] is clamping t (B is increasing); it also keeps lambda = +-inf
        # away from 0/0 and inf/inf below
        b = _softplus(-lam).clamp(self._b_int_scalar(self.t_min), self._b_int_scalar(self.t_max))
        d = self.beta_max - self.beta_min
        t = 2 * b / (self.beta_min + torch.sqrt(self.beta_min ** 2 + 2 * d * b))
        return t.clamp(self.t_min, self.t_max)

    def alpha_sigma_derivatives(self, t):
        t = self._t(t)
        a, s = self.alpha_sigma(t)
        beta = self.beta_min + (self.beta_max - self.beta_min) * t
        return -0.5 * beta * a, 0.5 * beta * a * a / s

    def _params(self):
        return {"beta_min": self.beta_min, "beta_max": self.beta_max, "t_min": self.t_min, "t_max": self.t_max,
                "sigma_data": self.sigma_data}


# ---------------------------------------------------------------------------------------------- EDM / VE
class EDM(Schedule):
    """EDM / VE schedule: ``alpha = 1`` and Karras rho-interpolation of sigma in continuous t (§a.2).

        sigma(t) = (a + t (b - a))^rho,   a = sigma_min^{1/rho},  b = sigma_max^{1/rho}
        lambda   = -2 log sigma(t),        t(lambda) = (e^{-lambda/(2 rho)} - a) / (b - a)
        sigma'(t) = rho (a + t (b - a))^{rho - 1} (b - a)

    ``sigma(0) = sigma_min`` and ``sigma(1) = sigma_max``; t is clamped to ``[0, 1]`` (the log-SNR is finite
    there since ``sigma_min > 0``). The pure-noise prior is ``N(0, sigma_max^2 I)``.

    Args:
        sigma_min, sigma_max: ``0 < sigma_min < sigma_max``.
        rho: ``> 0``; 7 is EDM's sampling default, large rho approaches a geometric (log-SNR-uniform) grid.
        sigma_data: data std for EDM preconditioning (method.md §a.3), 0.5 for EDM image models.
    """

    name = "edm"
    kind = "ve"

    def __init__(self, sigma_min: float = 0.002, sigma_max: float = 80.0, rho: float = 7.0, sigma_data: float = 0.5):
        _check_karras("EDM", sigma_min, sigma_max, rho)
        self.sigma_min, self.sigma_max, self.rho = float(sigma_min), float(sigma_max), float(rho)
        self.t_min, self.t_max = 0.0, 1.0
        self.sigma_data = _check_sigma_data("EDM", sigma_data)
        self._a = self.sigma_min ** (1 / self.rho)
        self._b = self.sigma_max ** (1 / self.rho)

    def _base(self, t: TensorLike) -> Tensor:
        return self._a + self._t(t) * (self._b - self._a)

    def sigma_ve(self, t):
        return self._base(t) ** self.rho

    def alpha_sigma(self, t):
        s = self.sigma_ve(t)
        return torch.ones_like(s), s

    def log_snr(self, t):
        return -2 * self.rho * torch.log(self._base(t))

    def t_from_log_snr(self, lam):
        lam = _as_float_tensor(lam)
        t = (torch.exp(-lam / (2 * self.rho)) - self._a) / (self._b - self._a)
        return t.clamp(self.t_min, self.t_max)

    def t_from_sigma_ve(self, s):
        t = (_as_float_tensor(s) ** (1 / self.rho) - self._a) / (self._b - self._a)
        return t.clamp(self.t_min, self.t_max)

    def alpha_sigma_derivatives(self, t):
        base = self._base(t)
        ds = self.rho * base ** (self.rho - 1) * (self._b - self._a)
        return torch.zeros_like(ds), ds

    @property
    def prior_std(self) -> float:
        """``sigma_max``: the std of ``z_1 = x + sigma_max eps`` when ``x`` is negligible."""
        return self.sigma_max

    def _params(self):
        return {"sigma_min": self.sigma_min, "sigma_max": self.sigma_max, "rho": self.rho,
                "sigma_data": self.sigma_data}


def _check_karras(cls: str, sigma_min: float, sigma_max: float, rho: float) -> None:
    _check_finite(cls, sigma_min=sigma_min, sigma_max=sigma_max, rho=rho)
    if sigma_min <= 0:
        raise ValueError(f"{cls}: sigma_min must be > 0, got {sigma_min}")
    if sigma_max <= sigma_min:
        raise ValueError(f"{cls}: sigma_max must be > sigma_min, got sigma_max={sigma_max}, sigma_min={sigma_min}")
    if rho <= 0:
        raise ValueError(f"{cls}: rho must be > 0, got {rho}")


# ---------------------------------------------------------------------------------------------- rectified flow
class RectifiedFlow(Schedule):
    """Rectified flow / linear interpolant: ``alpha = 1 - t``, ``sigma = t`` (§a.2).

        lambda = 2 log((1 - t)/t),   t(lambda) = 1 / (1 + e^{lambda/2}),   alpha' = -1,  sigma' = 1.

    Args:
        t_min, t_max: clamp range, ``0 < t_min < t_max < 1``.
        sigma_data: data std for EDM preconditioning.
    """

    name = "rectified_flow"
    kind = "flow"

    def __init__(self, t_min: float = 1e-4, t_max: float = 1 - 1e-4, sigma_data: float = 1.0):
        _check_t_range("RectifiedFlow", t_min, t_max, lo_open=True, hi_open=True)
        self.t_min, self.t_max = float(t_min), float(t_max)
        self.sigma_data = _check_sigma_data("RectifiedFlow", sigma_data)

    def alpha_sigma(self, t):
        t = self._t(t)
        return 1 - t, t

    def log_snr(self, t):
        t = self._t(t)
        return 2 * (torch.log1p(-t) - torch.log(t))

    def t_from_log_snr(self, lam):
        return torch.sigmoid(-_as_float_tensor(lam) / 2).clamp(self.t_min, self.t_max)

    def alpha_sigma_derivatives(self, t):
        t = self._t(t)
        return torch.full_like(t, -1.0), torch.ones_like(t)


# ---------------------------------------------------------------------------------------------- discrete VP
_DIFFUSERS_BETA_SCHEDULES = ("linear", "scaled_linear", "squaredcos_cap_v2")


class DiscreteVP(Schedule):
    """VP schedule of a model trained on N discrete steps (DDPM / diffusers), on continuous t.

    Time ``t in [0, 1]`` maps to the fractional step index ``u = t (N - 1)``. The log-SNR
    ``lambda_i = log(abar_i / (1 - abar_i))`` of the table is interpolated linearly in u:

        lambda(t) = (1 - w) lambda_i + w lambda_{i+1},   i = min(floor(u), N - 2),  w = u - i,

    so ``lambda(i/(N-1)) = lambda_i`` and ``alpha^2 = sigmoid(lambda) = abar_i`` at integer indices.
    ``alpha^2 = sigmoid(lambda)``, ``sigma^2 = sigmoid(-lambda)`` (§a.2: any VP schedule from lambda alone).
    Derivatives: with ``lambda' = (lambda_{i+1} - lambda_i)(N - 1)`` (piecewise constant; the right
    derivative at interior knots), ``alpha' = alpha sigma^2 lambda' / 2``, ``sigma' = -alpha^2 sigma lambda' / 2``.

    Args:
        alphas_cumprod: ``(N,)`` values ``abar_i`` in (0, 1), N >= 2, with strictly decreasing log-SNR
            (``ValueError`` otherwise). Stored as a float64 tensor ``self.alphas_cumprod``.
        sigma_data: data std for EDM preconditioning.

    Attributes:
        alphas_cumprod: ``(N,)`` float64, the table as given.
        log_snr_table: ``(N,)`` float64, ``lambda_i``.
        num_train_timesteps: N.
    """

    name = "discrete_vp"
    kind = "vp"

    def __init__(self, alphas_cumprod: Tensor | Sequence[float], sigma_data: float = 1.0):
        ac = torch.as_tensor(alphas_cumprod).detach().to(device="cpu", dtype=torch.float64).clone()
        if ac.dim() != 1 or ac.numel() < 2:
            raise ValueError(f"DiscreteVP: alphas_cumprod must be 1-D with at least 2 entries, got shape "
                             f"{tuple(ac.shape)}")
        if not torch.isfinite(ac).all() or (ac <= 0).any() or (ac >= 1).any():
            bad = int(torch.nonzero(~(torch.isfinite(ac) & (ac > 0) & (ac < 1)))[0])
            raise ValueError(f"DiscreteVP: alphas_cumprod must lie in the open interval (0, 1) (finite log-SNR), "
                             f"got alphas_cumprod[{bad}] = {ac[bad].item()!r}")
        lam = torch.log(ac) - torch.log1p(-ac)
        dl = lam[1:] - lam[:-1]
        if (dl >= 0).any():
            i = int(torch.nonzero(dl >= 0)[0])
            raise ValueError(
                f"DiscreteVP: alphas_cumprod must be strictly decreasing (strictly decreasing log-SNR), got "
                f"alphas_cumprod[{i}] = {ac[i].item()!r} <= alphas_cumprod[{i + 1}] = {ac[i + 1].item()!r}")
        self.alphas_cumprod = ac
        self.log_snr_table = lam
        self.num_train_timesteps = ac.numel()
        self.t_min, self.t_max = 0.0, 1.0
        self.sigma_data = _check_sigma_data("DiscreteVP", sigma_data)
        self._cache: dict = {}

    # ---------------------------------------------------------------- constructors
    @classmethod
    def from_betas(cls, betas: Tensor | Sequence[float], **kwargs) -> "DiscreteVP":
        """``alphas_cumprod = cumprod(1 - betas)``, computed in the dtype of ``betas`` when it is a floating
        tensor (float32 betas reproduce diffusers bit for bit), else in float64."""
        b = betas if isinstance(betas, Tensor) and betas.is_floating_point() else torch.as_tensor(
            betas, dtype=torch.float64)
        if b.dim() != 1:
            raise ValueError(f"DiscreteVP.from_betas: betas must be 1-D, got shape {tuple(b.shape)}")
        if not torch.isfinite(b).all() or (b <= 0).any() or (b >= 1).any():
            raise ValueError("DiscreteVP.from_betas: betas must lie in the open interval (0, 1)")
        return cls(torch.cumprod(1.0 - b, dim=0), **kwargs)

    @classmethod
    def from_diffusers_config(cls, beta_start: float = 1e-4, beta_end: float = 0.02, num_train_timesteps: int = 1000,
                              beta_schedule: str = "linear", *, trained_betas=None,
                              rescale_betas_zero_snr: bool = False, sigma_data: float = 1.0,
                              **ignored) -> "DiscreteVP":
        """The ``alphas_cumprod`` of ``diffusers.DDPMScheduler(...)`` with the same arguments.

        Reproduces diffusers' float32 formulas (``diffusers/schedulers/scheduling_ddpm.py``):

        * 'linear': ``betas = linspace(beta_start, beta_end, N)``;
        * 'scaled_linear': ``betas = linspace(sqrt(beta_start), sqrt(beta_end), N)^2``;
        * 'squaredcos_cap_v2': ``betas_i = min(1 - abar(t_{i+1})/abar(t_i), 0.999)``, ``t_i = i/N``,
          ``abar(t) = cos((t + 0.008)/1.008 * pi/2)^2`` (GLIDE cosine);
        * ``trained_betas`` overrides ``beta_schedule`` as in diffusers;

        then ``alphas_cumprod = cumprod(1 - betas)`` in float32. ``rescale_betas_zero_snr=True`` gives
        ``abar_{N-1} = 0`` (infinite log-SNR) and is rejected. Other keys of a diffusers scheduler config
        (``prediction_type``, ``clip_sample``, ``timestep_spacing``, ``_class_name``, ...) do not change
        ``alphas_cumprod`` and are ignored, so ``from_diffusers_config(**scheduler.config)`` works.
        """
        if rescale_betas_zero_snr:
            raise ValueError("DiscreteVP.from_diffusers_config: rescale_betas_zero_snr=True makes the final "
                             "alphas_cumprod 0 (infinite log-SNR), which a DiscreteVP cannot represent")
        n = int(num_train_timesteps)
        if n < 2:
            raise ValueError(f"DiscreteVP.from_diffusers_config: num_train_timesteps must be >= 2, got {n}")
        if trained_betas is not None:
            betas = torch.tensor(trained_betas, dtype=torch.float32)
        elif beta_schedule == "linear":
            betas = torch.linspace(beta_start, beta_end, n, dtype=torch.float32)
        elif beta_schedule == "scaled_linear":
            betas = torch.linspace(beta_start ** 0.5, beta_end ** 0.5, n, dtype=torch.float32) ** 2
        elif beta_schedule == "squaredcos_cap_v2":
            def abar(s: float) -> float:
                return math.cos((s + 0.008) / 1.008 * math.pi / 2) ** 2

            betas = torch.tensor([min(1 - abar((i + 1) / n) / abar(i / n), 0.999) for i in range(n)],
                                 dtype=torch.float32)
        else:
            raise ValueError(f"DiscreteVP.from_diffusers_config: beta_schedule must be one of "
                             f"{_DIFFUSERS_BETA_SCHEDULES}, got {beta_schedule!r}")
        return cls.from_betas(betas, sigma_data=sigma_data)

    # ---------------------------------------------------------------- helpers
    def _tables(self, like: Tensor) -> tuple[Tensor, Tensor]:
        """The lambda table and its differences ``lambda_{i+1} - lambda_i`` in ``like``'s dtype and device
        (cached). The differences are the same subtractions _segment's callers would make per sample."""
        key = (like.device, like.dtype)
        hit = self._cache.get(key)
        if hit is None:
            tab = self.log_snr_table.to(device=like.device, dtype=like.dtype)
            hit = (tab, tab[1:] - tab[:-1])
            self._cache[key] = hit
        return hit

    def _table(self, like: Tensor) -> Tensor:
        return self._tables(like)[0]

    def _segment(self, t: TensorLike):
        """(lambda_i, lambda_{i+1} - lambda_i, w) for the clamped t, each of t's shape."""
        u = self.index(t)
        i = (u.detach() if u.requires_grad else u).floor().clamp(0, self.num_train_timesteps - 2)
        w = u - i
        tab, dtab = self._tables(u)
        il = i.long()
        return tab[il], dtab[il], w

    # ---------------------------------------------------------------- interface
    def index(self, t: TensorLike) -> Tensor:
        """Fractional training-step index ``u = t (N - 1)`` of the clamped t, in ``[0, N - 1]``."""
        return self._t(t) * (self.num_train_timesteps - 1)

    def t_from_index(self, u: TensorLike) -> Tensor:
        """Inverse of :meth:`index`: ``t = u / (N - 1)``, clamped."""
        return (_as_float_tensor(u) / (self.num_train_timesteps - 1)).clamp(self.t_min, self.t_max)

    def log_snr(self, t):
        l0, dl, w = self._segment(t)
        return l0 + w * dl

    def alpha_sigma(self, t):
        lam = self.log_snr(t)
        return torch.sqrt(torch.sigmoid(lam)), torch.sqrt(torch.sigmoid(-lam))

    def alpha_sigma_log_snr(self, t):
        lam = self.log_snr(t)  # alpha_sigma's own lambda, computed once
        return torch.sqrt(torch.sigmoid(lam)), torch.sqrt(torch.sigmoid(-lam)), lam

    def t_from_log_snr(self, lam):
        lam = _as_float_tensor(lam)
        tab = self._table(lam)
        n = self.num_train_timesteps
        flat = lam.reshape(-1)
        # the table decreases: search -lambda in the increasing -table; i with lambda_i >= lam >= lambda_{i+1}
        i = (torch.searchsorted(-tab, -flat.contiguous(), right=True) - 1).clamp(0, n - 2)
        l0, l1 = tab[i], tab[i + 1]
        w = ((l0 - flat) / (l0 - l1)).clamp(0, 1)
        return ((i.to(flat.dtype) + w) / (n - 1)).reshape(lam.shape).clamp(self.t_min, self.t_max)

    def alpha_sigma_derivatives(self, t):
        l0, dl, w = self._segment(t)
        lam = l0 + w * dl
        dlam = dl * (self.num_train_timesteps - 1)
        a2, s2 = torch.sigmoid(lam), torch.sigmoid(-lam)
        a, s = torch.sqrt(a2), torch.sqrt(s2)
        return 0.5 * a * s2 * dlam, -0.5 * a2 * s * dlam

    def __repr__(self) -> str:
        ac = self.alphas_cumprod
        return (f"DiscreteVP(num_train_timesteps={self.num_train_timesteps}, alphas_cumprod[0]={ac[0].item():.6g}, "
                f"alphas_cumprod[-1]={ac[-1].item():.6g}, sigma_data={self.sigma_data!r})")


# ---------------------------------------------------------------------------------------------- registry
SCHEDULES: dict[str, type[Schedule]] = {
    "vp_cosine": VPCosine,
    "vp_linear": VPLinear,
    "edm": EDM,
    "rectified_flow": RectifiedFlow,
    "discrete_vp": DiscreteVP,
}


def get_schedule(name: str | Schedule, **kwargs) -> Schedule:
    """Build a schedule by name, or return a :class:`Schedule` instance unchanged.

    Args:
        name: one of ``'vp_cosine', 'vp_linear', 'edm', 'rectified_flow', 'discrete_vp'`` (case and '-' vs
            '_' ignored), or a ``Schedule`` (then ``kwargs`` must be empty).
        **kwargs: constructor arguments. For 'discrete_vp': ``alphas_cumprod=...`` (constructor),
            ``betas=...`` (:meth:`DiscreteVP.from_betas`), or diffusers config keys
            (:meth:`DiscreteVP.from_diffusers_config`; no kwargs gives DDPM's linear 1e-4..0.02, N = 1000).

    Raises:
        ValueError: unknown name (the message lists the valid names), or kwargs given with an instance.
    """
    if isinstance(name, Schedule):
        if kwargs:
            raise ValueError(f"get_schedule: got a Schedule instance {name!r} and extra arguments {sorted(kwargs)}")
        return name
    if not isinstance(name, str):
        raise ValueError(f"get_schedule: expected a schedule name or a Schedule, got {type(name).__name__}; "
                         f"valid names: {', '.join(SCHEDULES)}")
    key = name.strip().lower().replace("-", "_")
    if key not in SCHEDULES:
        raise ValueError(f"unknown schedule {name!r}; valid names: {', '.join(SCHEDULES)}")
    if key == "discrete_vp":
        if "alphas_cumprod" in kwargs:
            return DiscreteVP(**kwargs)
        if "betas" in kwargs:
            kw = dict(kwargs)
            return DiscreteVP.from_betas(kw.pop("betas"), **kw)
        return DiscreteVP.from_diffusers_config(**kwargs)
    return SCHEDULES[key](**kwargs)


def karras_sigmas(n: int, sigma_min: float, sigma_max: float, rho: float = 7.0, dtype: torch.dtype = torch.float64,
                  device: torch.device | str | None = None) -> Tensor:
    """Karras step grid (method.md §a.2), decreasing from ``sigma_max`` to ``sigma_min``:

        sigma_i = (sigma_max^{1/rho} + i/(n-1) (sigma_min^{1/rho} - sigma_max^{1/rho}))^rho,   i = 0..n-1.

    The endpoints are set exactly. ``n = 1`` gives ``[sigma_max]``. This is ``EDM.sigma_ve(1 - i/(n-1))``.

    Returns:
        ``(n,)`` tensor of ``dtype`` on ``device``.
    """
    if isinstance(n, bool) or not isinstance(n, int) or n < 1:
        raise ValueError(f"karras_sigmas: n must be an int >= 1, got {n!r}")
    _check_karras("karras_sigmas", sigma_min, sigma_max, rho)
    if n == 1:
        return torch.tensor([sigma_max], dtype=dtype, device=device)
    a, b = sigma_max ** (1 / rho), sigma_min ** (1 / rho)
    ramp = torch.arange(n, dtype=torch.float64, device=device) / (n - 1)
    sig = (a + ramp * (b - a)) ** rho
    sig[0], sig[-1] = sigma_max, sigma_min
    return sig.to(dtype)
