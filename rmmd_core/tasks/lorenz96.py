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
"""
from __future__ import annotations

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

    def __post_init__(self):
        if self.K < 4:
            raise ValueError(f"K must be >= 4 (the stencil reaches k-2..k+1), got {self.K}")
        if self.J < 0 or (0 < self.J < 3):
            raise ValueError(f"J must be 0 (one scale) or >= 3, got {self.J}")

    @property
    def state_dim(self) -> int:
        return self.K * (1 + self.J)

    def tendency(self, state: torch.Tensor) -> torch.Tensor:
        """``d state / dt`` for ``state (N, K)`` or, two-scale, ``(N, K + J K)`` = [X, Y flattened k-major]."""
        X = state[:, : self.K]
        dX = (torch.roll(X, -1, 1) - torch.roll(X, 2, 1)) * torch.roll(X, 1, 1) - X + self.F
        if self.J == 0:
            return dX
        Y = state[:, self.K:]                                   # (N, J*K), Y[:, k*J + j] = Y_{j,k}
        coup = self.h * self.c / self.b
        dX = dX - coup * Y.view(-1, self.K, self.J).sum(2)
        dY = (-self.c * self.b * torch.roll(Y, -1, 1) * (torch.roll(Y, -2, 1) - torch.roll(Y, 1, 1))
              - self.c * Y + coup * X.repeat_interleave(self.J, 1))
        return torch.cat([dX, dY], 1)

    def rk4(self, state: torch.Tensor, dt: float, n_steps: int) -> torch.Tensor:
        """Advance ``state (N, state_dim)`` by ``n_steps`` RK4 steps of size ``dt``."""
        if dt <= 0 or n_steps < 0:
            raise ValueError(f"need dt > 0 and n_steps >= 0, got dt={dt}, n_steps={n_steps}")
        f = self.tendency
        for _ in range(n_steps):
            k1 = f(state)
            k2 = f(state + 0.5 * dt * k1)
            k3 = f(state + 0.5 * dt * k2)
            k4 = f(state + dt * k3)
            state = state + (dt / 6.0) * (k1 + 2 * k2 + 2 * k3 + k4)
        return state

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
        """
        if dt is None:
            dt = 0.01 if self.J == 0 else 0.005
        sub = round(interval / dt)
        if sub < 1 or abs(sub * dt - interval) > 1e-9:
            raise ValueError(f"interval {interval} must be a positive multiple of dt {dt}")
        s = self.rk4(self.initial_state(n, generator), dt, round(spin_up / dt))
        out = torch.empty(n, length, self.K, dtype=torch.float64)
        for i in range(length):
            out[:, i] = s[:, : self.K]
            s = self.rk4(s, dt, sub)
        return out
