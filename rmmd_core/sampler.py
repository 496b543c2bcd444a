"""K-step posterior / DDIM(eta) sampling (method.md §a.4, §b.2).

The same sampler serves the few-step student (K = 8 by default) and the many-step teacher: only the
grid changes. Per-sample coefficients are computed in float64 (they cancel badly when s is close to t,
method.md "Project defaults": Precision); the element-wise step runs in the fused op
``rmmd_core.ops.posterior_step`` with in-kernel Philox noise.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import torch

from . import ops
from .denoiser import Cond, Denoiser
from .schedule_memo import memo_value, pin
from .schedules import Schedule, get_schedule

GRIDS = ("uniform", "karras")


def check_eta(eta: float) -> float:
    if not (0.0 <= float(eta) <= 1.0):
        raise ValueError(f"eta must be in [0, 1], got {eta}")
    return float(eta)


def time_grid(num_steps: int, schedule: Schedule | str, kind: str = "uniform", rho: float = 7.0) -> torch.Tensor:
    """Decreasing sampling grid ``t_K = 1 > t_{K-1} > ... > t_0 = 0`` (float64, shape ``(K+1,)``).

    ``'uniform'``: ``t_i = i/K`` (matches the training gap delta ~ U(0, 1/K)).
    ``'karras'``: the Karras rho-grid in the VE sigma between the schedule's largest and smallest noise
    levels (method.md §a.2), mapped back to t; rho -> infinity is uniform in log-SNR.
    """
    if not isinstance(num_steps, int) or num_steps < 1:
        raise ValueError(f"num_steps must be an integer >= 1, got {num_steps!r}")
    if kind not in GRIDS:
        raise ValueError(f"grid must be one of {GRIDS}, got {kind!r}")
    schedule = get_schedule(schedule)
    if kind == "uniform":
        return torch.arange(num_steps, -1, -1, dtype=torch.float64) / num_steps
    if rho <= 0:
        raise ValueError(f"rho must be > 0, got {rho}")
    s_max = float(schedule.sigma_ve(torch.tensor(schedule.t_max, dtype=torch.float64)))
    s_min = float(schedule.sigma_ve(torch.tensor(schedule.t_min, dtype=torch.float64)))
    i = torch.arange(num_steps, dtype=torch.float64)
    frac = i / max(num_steps - 1, 1)
    sig = (s_max ** (1 / rho) + frac * (s_min ** (1 / rho) - s_max ** (1 / rho))) ** rho
    t = schedule.t_from_sigma_ve(sig)
    t[0] = 1.0  # start exactly at pure noise
    return torch.cat([t, t.new_zeros(1)])


def posterior_coefficients(schedule: Schedule, t: torch.Tensor, s: torch.Tensor, eta: float = 1.0):
    """Per-sample ``(A, C, gamma)`` of ``z_s = A z_t + C x̂ + gamma xi`` (method.md §a.4), float64.

    Args:
        t, s: ``(B,)`` times with ``0 <= s <= t`` (float64 recommended).
        eta: 1 = the exact posterior q(z_s | z_t, x = x̂) (ancestral), 0 = deterministic DDIM.
    Returns:
        A, C, gamma: ``(B,)`` float64. At ``s == 0`` the step returns x̂ exactly (A = 0, C = 1, gamma = 0).

    ``sigma_{t|s}^2 = -sigma_t^2 expm1(lambda_t - lambda_s)`` is the cancellation-free form.
    """
    eta = check_eta(eta)
    t = torch.as_tensor(t, dtype=torch.float64)
    s = torch.as_tensor(s, dtype=torch.float64, device=t.device)
    if t.shape != s.shape:
        t, s = torch.broadcast_tensors(t, s)
    if bool((s > t + 1e-12).any()):
        raise ValueError("posterior step needs s <= t for every sample")
    return unchecked_posterior_coefficients(schedule, t, s, eta)


def unchecked_posterior_coefficients(schedule: Schedule, t: torch.Tensor, s: torch.Tensor, eta: float):
    """:func:`posterior_coefficients` for float64 ``t, s`` of one shape, ``s <= t`` and ``eta`` in [0, 1]
    already guaranteed by the caller (``losses`` builds ``t = max(t, s)``): no validation, so no
    device->host read of the times."""
    final = s <= 0
    s_safe = torch.where(final, t, s)
    A, C, gamma = _coefficients_from(schedule.alpha_sigma_log_snr(t), schedule.alpha_sigma_log_snr(s_safe), eta)
    one, zero = torch.ones_like(A), torch.zeros_like(A)
    return torch.where(final, zero, A), torch.where(final, one, C), torch.where(final, zero, gamma)


def positive_posterior_coefficients(schedule: Schedule, t: torch.Tensor, s: torch.Tensor, eta: float):
    """:func:`unchecked_posterior_coefficients` when also every ``s > 0`` is guaranteed (``losses`` clamps
    s to at least 1e-4): no s = 0 branch, and the schedule values come through the iteration's memo
    (:mod:`rmmd_core.schedule_memo`), shared with the network calls at the same t and s. The same values:
    at s > 0 the s = 0 branch selects nothing and ``s_safe`` is ``s``."""
    from .schedule_memo import alpha_sigma_log_snr
    return _coefficients_from(alpha_sigma_log_snr(schedule, t), alpha_sigma_log_snr(schedule, s), eta)


def _coefficients_from(at, as_, eta: float):
    """(A, C, gamma) from ``(alpha, sigma, lambda)`` at t and at s > 0 (method.md §a.4)."""
    a_t, sg_t, lam_t = at
    a_s, sg_s, lam_s = as_
    var_ts = -(sg_t ** 2) * torch.expm1(lam_t - lam_s)
    var_ts = var_ts.clamp_min(0)
    gamma = (sg_s if eta == 1.0 else eta * sg_s) * var_ts.sqrt() / sg_t  # 1.0 * x is x: one op fewer
    A = (sg_s ** 2 - gamma ** 2).clamp_min(0).sqrt() / sg_t
    C = a_s - A * a_t
    return A, C, gamma


def _coefficients(schedule, t, s, eta, given, batch: int):
    if given is None:
        return posterior_coefficients(schedule, t, s, eta)
    if all(isinstance(c, torch.Tensor) and c.dtype == torch.float64 and c.shape == (batch,) for c in given):
        return tuple(given)  # already per sample (a rollout plan's, the engine's): no expand views
    return tuple(torch.as_tensor(c, dtype=torch.float64).expand(batch) for c in given)


def draw_seed(generator: torch.Generator | None) -> int:
    """A fresh 62-bit Philox seed from ``generator`` (torch's global RNG when None)."""
    return int(seed_tensor(generator).item())


def seed_tensor(generator: torch.Generator | None) -> torch.Tensor:
    """The ``(1,)`` int64 tensor :func:`draw_seed` reads, on the generator's device. Drawing several of
    these in :func:`draw_seed`'s order and reading them together (:func:`read_seeds`) gives the same
    seeds with one device->host copy instead of one per seed."""
    return torch.randint(0, 2 ** 62, (1,), generator=generator, dtype=torch.int64)


def read_seeds(tensors: list[torch.Tensor]) -> list[int]:
    """The seeds held by :func:`seed_tensor` outputs, in order, in one device->host copy."""
    if not tensors:
        return []
    return (torch.cat(tensors) if len(tensors) > 1 else tensors[0]).tolist()


def posterior_step(schedule: Schedule, z_t: torch.Tensor, x_hat: torch.Tensor, t: torch.Tensor,
                   s: torch.Tensor, eta: float = 1.0, generator: torch.Generator | None = None,
                   backend: str | None = None, coefficients=None, seed: int | None = None) -> torch.Tensor:
    """One posterior / DDIM(eta) step ``z_t -> z_s`` for per-sample times ``t, s`` of shape (B,).

    ``coefficients``: ``(A, C, gamma)`` already computed by :func:`posterior_coefficients` for these
    ``t, s, eta`` (broadcastable to (B,)); a rollout computes all K steps' at once instead of per step.
    ``seed``: the Philox seed when the caller drew it already (:func:`read_seeds`); else one is drawn
    from ``generator``."""
    A, C, gamma = _coefficients(schedule, t, s, eta, coefficients, z_t.shape[0])
    dev = z_t.device
    seed = draw_seed(generator) if seed is None else seed
    return ops.posterior_step(z_t, x_hat, A.to(dev), C.to(dev), gamma.to(dev), seed, 0, backend=backend)


def denoise_step(schedule: Schedule, z_t: torch.Tensor, net_out: torch.Tensor, a: torch.Tensor, c: torch.Tensor,
                 t: torch.Tensor, s: torch.Tensor, eta: float = 1.0, generator: torch.Generator | None = None,
                 backend: str | None = None, want_x0: bool = False, coefficients=None, final: bool | None = None,
                 seed: int | None = None):
    """:func:`posterior_step` from the raw network output ``F`` with ``x̂ = a z_t + c F`` (per-sample (B,)
    a, c, e.g. from ``Denoiser.affine_output``), in one fused pass. Draws one seed from ``generator``,
    as :func:`posterior_step` does, except for steps into s = 0, which draw none (the unfused rollout
    returns x̂ there). Returns z_s, or ``(z_s, x̂)`` with ``want_x0``. ``coefficients``: as in
    :func:`posterior_step`. ``final``: whether every ``s`` is 0, when the caller already knows (a rollout
    does, from its grid), saving a device->host read. ``seed``: as in :func:`posterior_step` (ignored for
    final steps)."""
    A, C, gamma = _coefficients(schedule, t, s, eta, coefficients, z_t.shape[0])
    dev = z_t.device
    if final is None:
        final = bool((torch.as_tensor(s) <= 0).all())
    seed = 0 if final else draw_seed(generator) if seed is None else seed
    coefs = (a, c, A, C)
    if all(x.device == dev for x in coefs):
        # a, c, A, C are functions of the times: for a rollout plan's pinned grid times (and its cached
        # coefficients) the float64 fold is made once per run, not once per step. The tag's ids are safe:
        # the memo entry holds the four tensors, so no other tensor can take their ids while it lives.
        folded = memo_value(t, ("denoise_fold", *map(id, coefs)),
                            lambda: (*coefs, *ops.fold_denoise_coefficients(*coefs)))[4:]
    else:  # moved per call: fresh tensors every time, nothing to share
        a, c, A, C = coefs = tuple(x.to(dev) for x in coefs)
        folded = ops.fold_denoise_coefficients(*coefs)
    gamma = gamma.to(dev)
    return ops.denoise_step(z_t, net_out, a, c, A, C, gamma, seed, 0, want_x0=want_x0, folded=folded,
                            backend=backend)


def can_fuse(denoiser) -> bool:
    """Whether a rollout may replace ``denoiser(z, t)`` + posterior step by ``Denoiser.affine_output`` +
    :func:`denoise_step`: a plain :class:`Denoiser` (a subclass overriding ``forward`` may post-process
    x̂, e.g. clip it, which is not affine) with no hooks on the Denoiser module itself (hooks on its
    ``net`` still run)."""
    return (isinstance(denoiser, Denoiser) and type(denoiser).forward is Denoiser.forward
            and type(denoiser).affine_output is Denoiser.affine_output
            and not (denoiser._forward_hooks or denoiser._forward_pre_hooks))


def prior_sample(schedule: Schedule, shape, *, device=None, dtype=torch.float32,
                 generator: torch.Generator | None = None) -> torch.Tensor:
    """Pure-noise start ``z ~ N(0, prior_std^2 I)`` (prior_std = sigma_max for VE schedules)."""
    z = torch.randn(shape, generator=generator, device=device, dtype=dtype)
    std = schedule.prior_std
    # VP and flow schedules have prior_std 1: multiplying by 1.0 changes no value (not even -0.0 or nan), so
    # the full-size pass is skipped
    return z if isinstance(std, (int, float)) and std == 1.0 else z * std


@dataclass
class SampleResult:
    """Output of :func:`sample`.

    x0: ``(B, ...)`` final samples. nfe: network evaluations per sample (CFG counts 2 per step).
    calls: network calls made. trajectory: the states z_{t_i} when requested (list, K+1 entries).
    """
    x0: torch.Tensor
    nfe: int
    calls: int
    grid: torch.Tensor
    trajectory: list = field(default_factory=list)


def rollout(denoiser: Denoiser, z: torch.Tensor, grid: torch.Tensor, cond: Cond = None, *, eta: float = 1.0,
            stop_index: int = 0, guidance_scale: float | None = None, generator: torch.Generator | None = None,
            backend: str | None = None, trajectory: list | None = None, fused: bool = True):
    """Run the sampler from ``z`` at ``grid[0]`` down to grid point ``t_{stop_index}``.

    ``grid`` is decreasing ``(K+1,)`` (``grid[j] = t_{K-j}``). Returns ``(z, x̂, calls)``: the state at
    ``t_{stop_index}`` and the last x̂ (None when no call was made). ``stop_index = 0`` is a full sample:
    the final step into ``t_0 = 0`` returns x̂ itself, so no posterior step is run there.
    No autograd graph is recorded; callers decide on ``no_grad`` / ``inference_mode``.

    ``fused=True`` (default) runs each step as ``Denoiser.affine_output`` + the fused
    :func:`denoise_step` (one pass from the raw output to z_s; x̂ is written only on the last step) when
    :func:`can_fuse` allows it, else the unfused ``denoiser(z, t)`` + :func:`posterior_step`. Both make the
    same network calls and draw the same seeds, so results agree up to rounding.
    """
    K = grid.numel() - 1
    if not 0 <= stop_index <= K:
        raise ValueError(f"stop_index must be in [0, {K}], got {stop_index}")
    plan = rollout_plan(denoiser.schedule, grid, eta, K - stop_index, z.device)
    return run_rollout(denoiser, z, plan, cond, guidance_scale=guidance_scale, generator=generator, backend=backend,
                       trajectory=trajectory, fused=fused)


@dataclass(frozen=True)
class RolloutPlan:
    """What a rollout of ``steps`` steps down a grid needs besides the network (grid-only, so a trainer
    can keep it between iterations): ``eta``; ``grid`` the first ``steps + 1`` grid points on the samples'
    device (float64); ``ends`` the step targets as Python floats; ``coefficients`` every step's
    ``(A, C, gamma)`` as ``(steps,)`` float64 tensors on that device (empty tuple for 0 steps)."""
    eta: float
    grid: torch.Tensor
    ends: tuple
    coefficients: tuple
    _cache: dict = field(default_factory=dict, compare=False, repr=False)  # per-batch views (_per_batch)

    @property
    def seeds_needed(self) -> int:
        """Philox seeds the rollout draws: one per step that does not end at s = 0."""
        return sum(1 for e in self.ends if e > 0.0)

    def _per_batch(self, key, make):
        """``make()``, kept per ``key`` (a kind and a batch size) for the plan's lifetime."""
        got = self._cache.get(key)
        if got is None:
            if len(self._cache) > 16:  # a few batch sizes per plan at most in practice; bounded anyway
                self._cache.clear()
            got = self._cache[key] = make()
        return got

    def step_coefficients(self, batch: int) -> tuple:
        """``((A_j, C_j, gamma_j) for each step)`` as ``(batch,)`` float64 views of :attr:`coefficients`, made
        once per batch size (a rollout then indexes and expands nothing per step)."""
        return self._per_batch(("coefficients", batch), lambda: tuple(
            tuple(c[j].expand(batch) for c in self.coefficients) for j in range(len(self.ends))))

    def step_times(self, batch: int) -> tuple:
        """``((t_j, s_j) for each step)`` as ``(batch,)`` float64 views of the grid, made once per batch size
        and pinned (:func:`rmmd_core.schedule_memo.pin`): the schedule values, network time and x̂
        coefficients of the grid times are computed on the first rollout and reused by later ones."""
        return self._per_batch(("times", batch), lambda: tuple(
            (pin(self.grid[j].expand(batch)), pin(self.grid[j + 1].expand(batch))) for j in range(len(self.ends))))


def rollout_plan(schedule: Schedule, grid: torch.Tensor, eta: float, steps: int, device) -> RolloutPlan:
    """The :class:`RolloutPlan` of the first ``steps`` steps of the decreasing ``grid`` (see :func:`rollout`)."""
    # Every step's (A, C, gamma) in one float64 call (they depend on the grid only), not K calls.
    coefs = (tuple(c.to(device) for c in posterior_coefficients(schedule, grid[:steps], grid[1:steps + 1], eta))
             if steps else ())
    ends = tuple(grid[1:steps + 1].tolist())  # the step targets as Python floats: one read, not two per step
    return RolloutPlan(check_eta(eta), grid[:steps + 1].to(device), ends, coefs)


def run_rollout(denoiser: Denoiser, z: torch.Tensor, plan: RolloutPlan, cond: Cond = None, *,
                guidance_scale: float | None = None, generator: torch.Generator | None = None,
                backend: str | None = None, trajectory: list | None = None, fused: bool = True,
                seeds: list[int] | None = None):
    """:func:`rollout` with its :class:`RolloutPlan` already made. ``seeds``: the ``plan.seeds_needed``
    Philox seeds already drawn from ``generator`` (:func:`read_seeds`), else they are drawn per step."""
    fused = fused and can_fuse(denoiser)
    B, x_hat, calls = z.shape[0], None, 0
    eta, ends = plan.eta, plan.ends
    steps = len(ends)
    seed_iter = iter(seeds) if seeds is not None else None
    times, step_coefs = plan.step_times(B), plan.step_coefficients(B)
    for j in range(steps):
        t, s = times[j]
        coef_j = step_coefs[j]
        to_zero = ends[j] <= 0.0
        seed = next(seed_iter) if seed_iter is not None and not to_zero else None
        calls += 1
        if fused:
            net_out, a, c = denoiser.affine_output(z, t, cond, guidance_scale=guidance_scale)
            # x̂ is written only where it is returned: the last step (into s = 0 it *is* z_s).
            want_x0 = j == steps - 1 and not to_zero
            res = denoise_step(denoiser.schedule, z, net_out, a, c, t, s, eta, generator, backend, want_x0=want_x0,
                               coefficients=coef_j, final=to_zero, seed=seed)
            z, x_hat = res if want_x0 else (res, res if to_zero else None)
        else:
            x_hat = denoiser(z, t, cond, guidance_scale=guidance_scale)
            if to_zero:
                z = x_hat
            else:
                z = posterior_step(denoiser.schedule, z, x_hat, t, s, eta, generator, backend, coefficients=coef_j,
                                   seed=seed)
        if trajectory is not None:
            trajectory.append(z)
    return z, x_hat, calls


def sample(denoiser: Denoiser, shape, *, num_steps: int = 8, cond: Cond = None, eta: float = 1.0,
           grid: str = "uniform", rho: float = 7.0, guidance_scale: float | None = None,
           generator: torch.Generator | None = None, z: torch.Tensor | None = None, device=None,
           dtype=torch.float32, return_trajectory: bool = False, backend: str | None = None) -> SampleResult:
    """Draw samples with ``num_steps`` posterior / DDIM(eta) steps (method.md §b.2).

    Args:
        denoiser: the x-predictor (student, or teacher with a many-step grid).
        shape: ``(B, ...)`` of the samples.
        num_steps: K >= 1. eta: in [0, 1], 1 = ancestral (default). grid: ``'uniform' | 'karras'``.
        cond: conditioning with batch B. guidance_scale: CFG scale for this sampler (None: the
            denoiser's default). generator: RNG for the start noise and the Philox seeds.
        z: optional start noise (overrides ``shape``).
    Returns:
        :class:`SampleResult` with ``x0`` (B, ...), ``nfe`` per sample and ``calls``.
    """
    sch = denoiser.schedule
    g = time_grid(num_steps, sch, grid, rho)
    if z is None:
        if device is None:
            device = next((p.device for p in denoiser.parameters()), torch.device("cpu"))
        z = prior_sample(sch, shape, device=device, dtype=dtype, generator=generator)
    traj = [z] if return_trajectory else None
    calls0, nfe0 = denoiser.calls, denoiser.nfe
    with torch.no_grad():
        x0, _, _ = rollout(denoiser, z, g, cond, eta=check_eta(eta), guidance_scale=guidance_scale,
                           generator=generator, backend=backend, trajectory=traj)
    return SampleResult(x0=x0, nfe=(denoiser.nfe - nfe0) // z.shape[0], calls=denoiser.calls - calls0,
                        grid=g, trajectory=traj or [])
