"""The built-in 2-D task: a Gaussian-mixture "dataset" whose denoiser E[x | z_t] is closed form.

For ``p(x) = sum_k pi_k N(mu_k, diag(s_k^2))`` and ``z = alpha x + sigma eps``:

    p(z | k)     = N(alpha mu_k, diag(alpha^2 s_k^2 + sigma^2))
    E[x | z, k]  = mu_k + alpha s_k^2 / (alpha^2 s_k^2 + sigma^2) * (z - alpha mu_k)
    E[x | z]     = sum_k p(k | z) E[x | z, k]

so the mixture is an exact teacher (method.md "Project defaults": Toy-problem evaluation). The module
also provides a small MLP x-predictor for students and auxiliaries, and the reward-tilted optimum
``p*(x) ∝ p(x) exp(R(x)/beta)`` on a grid.
"""
from __future__ import annotations

import math

import torch
from torch import nn

from .denoiser import Denoiser
from .schedules import Schedule, get_schedule


class GaussianMixture:
    """Diagonal Gaussian mixture. means: ``(K, D)``; stds: ``(K,)`` or ``(K, D)``; weights: ``(K,)``."""

    def __init__(self, means, stds, weights=None):
        self.means = torch.as_tensor(means, dtype=torch.float64)
        if self.means.dim() != 2:
            raise ValueError(f"means must have shape (K, D), got {tuple(self.means.shape)}")
        K, D = self.means.shape
        stds = torch.as_tensor(stds, dtype=torch.float64)
        self.stds = stds.view(K, 1).expand(K, D).clone() if stds.dim() <= 1 else stds
        if self.stds.shape != (K, D) or bool((self.stds <= 0).any()):
            raise ValueError("stds must be positive with shape (K,) or (K, D)")
        w = torch.full((K,), 1.0 / K, dtype=torch.float64) if weights is None else torch.as_tensor(weights, dtype=torch.float64)
        if w.shape != (K,) or bool((w < 0).any()) or float(w.sum()) <= 0:
            raise ValueError("weights must be non-negative with shape (K,) and a positive sum")
        self.weights = w / w.sum()

    @property
    def dim(self) -> int:
        return self.means.shape[1]

    @classmethod
    def ring(cls, n_modes: int = 8, radius: float = 2.0, std: float = 0.15) -> "GaussianMixture":
        """``n_modes`` equal components evenly on a circle (the default 2-D task)."""
        ang = torch.arange(n_modes, dtype=torch.float64) * (2 * math.pi / n_modes)
        return cls(torch.stack([radius * ang.cos(), radius * ang.sin()], 1), torch.full((n_modes,), std))

    def sample(self, n: int, generator: torch.Generator | None = None, dtype=torch.float32) -> torch.Tensor:
        k = torch.multinomial(self.weights, n, replacement=True, generator=generator)
        eps = torch.randn(n, self.dim, generator=generator, dtype=torch.float64)
        return (self.means[k] + self.stds[k] * eps).to(dtype)

    def log_prob(self, x: torch.Tensor) -> torch.Tensor:
        x = x.double()
        d = (x[:, None, :] - self.means[None]) / self.stds[None]
        comp = -0.5 * (d ** 2).sum(-1) - self.stds.log().sum(-1)[None] - 0.5 * self.dim * math.log(2 * math.pi)
        return torch.logsumexp(comp + self.weights.log()[None], 1)

    def posterior_mean(self, z: torch.Tensor, alpha: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
        """E[x | z] for ``z (N, D)``, ``alpha, sigma (N,)`` (float64 internally, returned in z's dtype)."""
        zz = z.double()
        a = alpha.double().view(-1, 1, 1)
        s2 = sigma.double().view(-1, 1, 1) ** 2
        var = a ** 2 * self.stds[None] ** 2 + s2                             # (N, K, D)
        diff = zz[:, None, :] - a * self.means[None]
        logp = -0.5 * (diff ** 2 / var + var.log()).sum(-1) + self.weights.log()[None]
        resp = torch.softmax(logp, 1)                                        # (N, K)
        cond = self.means[None] + a * self.stds[None] ** 2 / var * diff
        return (resp[..., None] * cond).sum(1).to(z.dtype)


class AnalyticTeacherNet(nn.Module):
    """x-prediction network computing the exact E[x | z_t] of a mixture (time input: continuous t)."""

    def __init__(self, mixture: GaussianMixture, schedule: Schedule | str):
        super().__init__()
        self.mixture = mixture
        self.schedule = get_schedule(schedule)

    def forward(self, z: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        alpha, sigma = self.schedule.alpha_sigma(t.double())
        return self.mixture.posterior_mean(z, alpha, sigma)


def analytic_teacher(mixture: GaussianMixture, schedule: Schedule | str = "vp_cosine") -> Denoiser:
    sch = get_schedule(schedule)
    return Denoiser(AnalyticTeacherNet(mixture, sch), sch, prediction="x0", time_input="t")


class MLPNet(nn.Module):
    """Small MLP x-predictor for vector data: ``x̂ = sigmoid(gate) * z + out``, ``[gate, out] = MLP([z, t, fourier(t)])``.

    The learned gate lets the network pass z through at low noise (where x̂ ≈ z) without having to learn
    the identity. ``dropout > 0`` gives the student RMMD's extra randomness ξ. z: ``(B, dim)``, t: ``(B,)``.
    """

    def __init__(self, dim: int = 2, hidden: int = 128, depth: int = 3, n_freq: int = 8, dropout: float = 0.0):
        super().__init__()
        self.register_buffer("freqs", torch.pi * 2.0 ** torch.arange(n_freq, dtype=torch.float32) / 2)
        layers, width = [], dim + 2 * n_freq + 1
        for _ in range(depth):
            layers += [nn.Linear(width, hidden), nn.SiLU()]
            if dropout > 0:
                layers.append(nn.Dropout(dropout))
            width = hidden
        layers.append(nn.Linear(width, 2 * dim))
        self.body = nn.Sequential(*layers)
        self.dim = dim

    def forward(self, z: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        t = t.to(z.dtype).view(-1, 1)
        f = t * self.freqs.to(z.dtype)
        h = self.body(torch.cat([z, t, f.sin(), f.cos()], 1))
        gate, out = h[:, : self.dim], h[:, self.dim:]
        return torch.sigmoid(gate) * z + out


def fit_denoiser(student: Denoiser, teacher: Denoiser, sampler, *, steps: int = 1500, batch: int = 512,
                 lr: float = 2e-3, generator: torch.Generator | None = None) -> float:
    """Regress ``student`` onto ``teacher``'s x-prediction at random t (a stand-in for teacher training).

    ``sampler(n)`` draws clean data. Returns the final mean squared error. Used to make an MLP copy of
    the analytic teacher, so student and auxiliary can start "as copies of the teacher".
    """
    opt = torch.optim.Adam(student.parameters(), lr=lr)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, steps)
    sch = student.schedule
    loss = torch.tensor(float("nan"))
    for _ in range(steps):
        x = sampler(batch)
        t = torch.rand(batch, generator=generator, dtype=torch.float64)
        a, s = sch.alpha_sigma(t)
        z = a.float()[:, None] * x + s.float()[:, None] * torch.randn(x.shape, generator=generator)
        with torch.no_grad():
            target = teacher(z, t)
        w = (1 + a ** 2 / s ** 2).clamp_max(1e3).float()  # emphasise low noise, where x̂ must be sharp
        loss = (w[:, None] * (student(z, t) - target) ** 2).mean()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sched.step()
    return float(loss.detach())


def tilted_grid_samples(mixture: GaussianMixture, reward, beta: float, n: int, *, lim: float = 4.0,
                        res: int = 400, generator: torch.Generator | None = None) -> torch.Tensor:
    """Samples of ``p*(x) ∝ p(x) exp(R(x)/beta)`` drawn on a ``res x res`` grid over ``[-lim, lim]^2``
    (plus uniform jitter within a cell). ``reward`` maps ``(N, 2) -> (N,)``. A reference point only
    (method.md "Project defaults")."""
    if mixture.dim != 2:
        raise ValueError("tilted_grid_samples is for 2-D mixtures")
    ax = torch.linspace(-lim, lim, res, dtype=torch.float64)
    gx, gy = torch.meshgrid(ax, ax, indexing="ij")
    pts = torch.stack([gx.reshape(-1), gy.reshape(-1)], 1)
    logw = mixture.log_prob(pts) + reward(pts.float()).double() / beta
    idx = torch.multinomial(torch.softmax(logw, 0), n, replacement=True, generator=generator)
    cell = 2 * lim / (res - 1)
    jitter = (torch.rand(n, 2, generator=generator, dtype=torch.float64) - 0.5) * cell
    return (pts[idx] + jitter).float()
