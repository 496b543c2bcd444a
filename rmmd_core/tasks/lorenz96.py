"""Lorenz-96 simulator: the project's own weather analogue (issue 4, method.md §c.7).

One-scale model (K slow variables, cyclic indices, forcing F):

    dX_k/dt = (X_{k+1} - X_{k-2}) X_{k-1} - X_k + F

Two-scale model (Lorenz 1996): each X_k drives J fast variables Y_{j,k} that feed back on it:

    dX_k/dt     = (X_{k+1} - X_{k-2}) X_{k-1} - X_k + F - (h c / b) sum_j Y_{j,k}
    dY_{j,k}/dt = -c b Y_{j+1,k} (Y_{j+2,k} - Y_{j-1,k}) - c Y_{j,k} + (h c / b) X_k

with the fast variables on one ring of length J·K. Observing only X makes the next state a genuine
distribution given past X (the unresolved fast scales play the role of GenCast's sub-grid physics),
which is what a diffusion forecaster and an ensemble CRPS need. Integration: classical RK4, batched
over trajectories, float64.

Stochastic forcing (``noise_std > 0``): measured, the two-scale fast variables barely randomise the next
slow state (ensemble spread 0.03-0.11 against mean |dX| 0.8-3.1 over 0.05-0.2 time units), so the
weather recipe instead adds red-noise forcing, as in stochastic-parameterisation L96 studies
(Arnold et al. 2013, additive AR(1)):

    dX_k/dt = (X_{k+1} - X_{k-2}) X_{k-1} - X_k + F + e_k(t),
    e_k(t + dt) = phi e_k(t) + noise_std sqrt(1 - phi^2) xi,   phi = exp(-dt / noise_tau),  xi ~ N(0, 1)

i.e. an Ornstein-Uhlenbeck process with stationary std ``noise_std`` and decorrelation time
``noise_tau``, sampled exactly at the RK4 step and held constant within it. The unobserved e plays the
role of unresolved physics: the next observed state given past ones is a non-degenerate distribution.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class Lorenz96:
    """Parameters; ``J = 0`` gives the one-scale model. Defaults: K = 40, F = 8 (the standard setting),
    and for two scales J = 8, h = 1, c = 10, b = 10."""

    K: int = 40
    F: float = 8.0
    J: int = 0
    h: float = 1.0
    c: float = 10.0
    b: float = 10.0
    noise_std: float = 0.0
    noise_tau: float = 1.0

    def __post_init__(self):
        if self.K < 4:
            raise ValueError(f"K must be >= 4 (the stencil reaches k-2..k+1), got {self.K}")
        if self.J < 0 or (0 < self.J < 3):
            raise ValueError(f"J must be 0 (one scale) or >= 3, got {self.J}")
        if not self.noise_std >= 0:
            raise ValueError(f"noise_std must be >= 0 (stationary std of the AR(1) forcing), got {self.noise_std}")
        if not self.noise_tau > 0:
            raise ValueError(f"noise_tau must be > 0 (decorrelation time of the AR(1) forcing), got {self.noise_tau}")

    @property
    def state_dim(self) -> int:
        return self.K * (1 + self.J)

    def tendency(self, state: torch.Tensor, forcing: torch.Tensor | None = None) -> torch.Tensor:
        """``d state / dt`` for ``state (N, K)`` or, two-scale, ``(N, K + J K)`` = [X, Y flattened k-major].

        ``forcing``: optional extra forcing ``e (N, K)`` added to dX (the stochastic term)."""
        X = state[:, : self.K]
        dX = (torch.roll(X, -1, 1) - torch.roll(X, 2, 1)) * torch.roll(X, 1, 1) - X + self.F
        if forcing is not None:
            dX = dX + forcing
        if self.J == 0:
            return dX
        Y = state[:, self.K:]                                   # (N, J*K), Y[:, k*J + j] = Y_{j,k}
        coup = self.h * self.c / self.b
        dX = dX - coup * Y.view(-1, self.K, self.J).sum(2)
        dY = (-self.c * self.b * torch.roll(Y, -1, 1) * (torch.roll(Y, -2, 1) - torch.roll(Y, 1, 1))
              - self.c * Y + coup * X.repeat_interleave(self.J, 1))
        return torch.cat([dX, dY], 1)

    def rk4(self, state: torch.Tensor, dt: float, n_steps: int, forcing: torch.Tensor | None = None,
            generator: torch.Generator | None = None):
        """Advance ``state (N, state_dim)`` by ``n_steps`` RK4 steps of size ``dt``.

        Deterministic model (``noise_std == 0``): returns the new state. Stochastic model: ``forcing``
        is the current AR(1) forcing ``e (N, K)`` (None: a draw from its stationary law); each RK4 step
        holds e fixed, then advances it exactly (:meth:`ar1_step`). Returns ``(state, e)``.
        """
        if dt <= 0 or n_steps < 0:
            raise ValueError(f"need dt > 0 and n_steps >= 0, got dt={dt}, n_steps={n_steps}")
        f = self.tendency
        stochastic = self.noise_std > 0
        e = None
        if stochastic:
            e = forcing if forcing is not None else self.noise_std * torch.randn(
                state.shape[0], self.K, generator=generator, dtype=state.dtype, device=state.device)
            if e.shape != (state.shape[0], self.K):
                raise ValueError(f"forcing must have shape {(state.shape[0], self.K)}, got {tuple(e.shape)}")
        elif forcing is not None:
            raise ValueError("forcing= is only for the stochastic model (noise_std > 0)")
        for _ in range(n_steps):
            k1 = f(state, e)
            k2 = f(state + 0.5 * dt * k1, e)
            k3 = f(state + 0.5 * dt * k2, e)
            k4 = f(state + dt * k3, e)
            state = state + (dt / 6.0) * (k1 + 2 * k2 + 2 * k3 + k4)
            if stochastic:
                e = self.ar1_step(e, dt, generator)
        return (state, e) if stochastic else state

    def ar1_step(self, e: torch.Tensor, dt: float, generator: torch.Generator | None = None) -> torch.Tensor:
        """Exact OU / AR(1) update over ``dt``: ``phi e + noise_std sqrt(1 - phi^2) xi``, ``phi = exp(-dt/tau)``.

        Keeps the stationary law N(0, noise_std^2) for any dt; lag-dt autocorrelation is phi."""
        phi = math.exp(-dt / self.noise_tau)
        xi = torch.randn(e.shape, generator=generator, dtype=e.dtype, device=e.device)
        return phi * e + self.noise_std * math.sqrt(1.0 - phi * phi) * xi

    def initial_state(self, n: int, generator: torch.Generator | None = None) -> torch.Tensor:
        """Rest state X = F, Y = 0 plus a small random perturbation (float64, ``(n, state_dim)``)."""
        s = torch.zeros(n, self.state_dim, dtype=torch.float64)
        s[:, : self.K] = self.F
        return s + 0.01 * torch.randn(n, self.state_dim, generator=generator, dtype=torch.float64)

    def trajectories(self, n: int, length: int, *, interval: float = 0.05, dt: float | None = None,
                     spin_up: float = 10.0, generator: torch.Generator | None = None) -> torch.Tensor:
        """``n`` independent trajectories of the slow variables X: ``(n, length, K)`` float64.

        States are recorded every ``interval`` time units (0.05 ≈ 6 h in Lorenz's scaling) after a
        ``spin_up`` onto the attractor. ``dt`` defaults to 0.01 (one scale) or 0.005 (two scales).
        With ``noise_std > 0`` the hidden AR(1) forcing is integrated alongside (from its stationary law)
        and not returned; ``generator`` then also drives the forcing noise.
        """
        if dt is None:
            dt = 0.01 if self.J == 0 else 0.005
        sub = round(interval / dt)
        if sub < 1 or abs(sub * dt - interval) > 1e-9:
            raise ValueError(f"interval {interval} must be a positive multiple of dt {dt}")
        if self.noise_std > 0:  # carry the hidden forcing e along (it is not part of the output)
            s, e = self.rk4(self.initial_state(n, generator), dt, round(spin_up / dt), generator=generator)
        else:
            s = self.rk4(self.initial_state(n, generator), dt, round(spin_up / dt))
        out = torch.empty(n, length, self.K, dtype=torch.float64)
        for i in range(length):
            out[:, i] = s[:, : self.K]
            if self.noise_std > 0:
                s, e = self.rk4(s, dt, sub, forcing=e, generator=generator)
            else:
                s = self.rk4(s, dt, sub)
        return out
