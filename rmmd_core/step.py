"""One RMMD / MM iteration: :func:`losses` (tensors only) and :func:`step` (losses + updates).

Follows method.md §c.6 (reference pseudocode) with the Project-defaults loss reduction:

    L = mean_n [ (1/D) <x̂0_n, sg(w(s_n) (m_stu - m_ref))> ] - lambda mean_b r_b + lambda_reg mean_n (1/D) ||x̂0_n - a_n||^2

over the N = B·M student samples (M rollouts per conditioning), D values per sample. Its gradient with
respect to x̂0 is the cotangent

    g = [ w(s)(m_stu - m_ref) - lambda ĝ_R + 2 lambda_reg (x̂0 - a) ] / (N·D),   ĝ_R = M·D·dr/dx̂0,

back-propagated through exactly ONE student call per sample, so activation memory does not grow
with K (rollouts run under no_grad). Phase 1 (plain MM, Algorithm 2) is the same computation with
lambda = lambda_reg = 0: off-policy when a data batch is given (forward-diffused data), else data-free
from the student's own rollouts ("continuous" or "discrete"/backward-simulation variant).
"""
from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field

import torch

from . import ops
from .denoiser import Cond, batch_of, check_cond_batch, repeat_cond
from .engine import RMMD, apply_update, backward_checks
from .sampler import (RolloutPlan, can_fuse, check_eta, positive_posterior_coefficients, posterior_step, prior_sample,
                      read_seeds, rollout_plan, run_rollout, seed_tensor, time_grid)
from .schedule_memo import iteration_memo, schedule_call


@dataclass
class StepLosses:
    """What :func:`losses` returns.

    student_loss: scalar whose *value* is the objective L above and whose *gradient* w.r.t. the student
        parameters is the RMMD/MM gradient; None when this iteration does not update the student
        (``student_update_every > 1``).
    aux_loss: scalar auxiliary loss ``mean_n w_aux(s) (1/D)[||sg(x̂0) - φ(z_s)||^2 + ||sg(m_ref) - φ(z_s)||^2]``.
    metrics: plain numbers (see :func:`step`).
    intermediates: the tensors of the iteration when requested (for tests and debugging).
    """
    student_loss: torch.Tensor | None
    aux_loss: torch.Tensor
    metrics: dict
    intermediates: dict = field(default_factory=dict)


def time_weight(kind: str, schedule, s: torch.Tensor, x0=None, m_ref=None, eps: float = 1e-4) -> torch.Tensor:
    """Per-sample MM weight w(s), shape ``(N,)`` float64 (method.md §b.5; DMD normaliser §d.4)."""
    if kind == "flat":
        return torch.ones_like(s, dtype=torch.float64)
    if kind == "snr":
        return schedule.log_snr(s).exp()
    if kind == "edm":
        sig, sd = schedule.sigma_ve(s), schedule.sigma_data
        return (sig ** 2 + sd ** 2) / (sig * sd) ** 2
    if kind == "dmd":  # 1 / mabs(x̂0 - m_ref), per sample
        mabs = (x0 - m_ref).detach().abs().flatten(1).mean(1).double()
        return 1.0 / (mabs + eps)
    raise ValueError(f"unknown weighting {kind!r}")


class _SurrogateLoss(torch.autograd.Function):
    """A scalar whose value is the objective and whose gradient w.r.t. x̂_0 is the given cotangent.

    forward(x0 (N, ...), value (), cot like x0) -> value;  backward: dL/dx0 = grad_out * cot.
    This is how the fused cotangent (K5) becomes the backward of the student surrogate (method.md §c.6
    step 7): one backward through the student, no extra full-size pass to build a linear surrogate.
    """

    @staticmethod
    def forward(ctx, x0, value, cot):
        ctx.save_for_backward(cot)
        return value.clone()  # forward runs without grad: the clone records nothing

    @staticmethod
    def backward(ctx, grad_out):
        (cot,) = ctx.saved_tensors
        return (grad_out.to(cot.dtype) * cot), None, None


def surrogate_loss(x0: torch.Tensor, value: torch.Tensor, cot: torch.Tensor) -> torch.Tensor:
    """Scalar with ``value`` (a 0-d tensor, no grad) and gradient ``cot`` (like x0) w.r.t. ``x0``."""
    # value and cot come from no-grad fused ops in the engine (detached already: no alias op needed)
    return _SurrogateLoss.apply(x0, value.detach() if value.requires_grad else value,
                                cot.detach() if cot.requires_grad else cot)


class _AuxLoss(torch.autograd.Function):
    """mean_n w_aux(s_n) (1/D)[||x0 - o||^2 + ||m_ref - o||^2] whose backward is the fused K6 gradient.

    forward(o (N, ...), x0, m_ref like o, w (N,)) -> scalar in o's dtype; the op returns the per-sample
    losses and dL/do in one pass, so backward is one multiply by grad_out. x0, m_ref and w are targets
    and constants (no gradient), exactly as the unfused loss on detached inputs.
    """

    @staticmethod
    def forward(ctx, o, x0, m_ref, w, backend):
        # forward runs with grad disabled, so the op records no graph: the inputs need no detach
        loss, grad = ops.aux_loss(o, x0, m_ref, w, backend=backend)
        ctx.save_for_backward(grad)
        return loss.mean().to(o.dtype)

    @staticmethod
    def backward(ctx, grad_out):
        (grad,) = ctx.saved_tensors
        return grad_out.to(grad.dtype) * grad, None, None, None, None


def fused_aux_loss(o: torch.Tensor, x0: torch.Tensor, m_ref: torch.Tensor, w: torch.Tensor,
                   backend: str | None = None) -> torch.Tensor:
    """Auxiliary loss of method.md §c.6 step 8 (scalar) with the fused K6 op as its backward (w: (N,))."""
    return _AuxLoss.apply(o, x0, m_ref, w, backend)


def _backend_metrics(op_tensors: dict, backend: str | None, used: dict | None = None) -> dict:
    """``backend``: the one backend every fused op ran on, else ``op=name`` pairs; plus ``backend_<op>``.

    ``op_tensors``: op -> its tensors, resolved with ``backend`` (memoised, no tensor work); ``used``:
    op -> backend name already known (e.g. a reward's own choice, see ``Reward.backend_used``)."""
    used = {**{op: ops.resolve_backend(op, *tensors, backend=backend) for op, tensors in op_tensors.items()},
            **(used or {})}
    return {"backend": _backend_summary(used), **{f"backend_{op}": name for op, name in used.items()}}


def _backend_summary(used: dict) -> str:
    names = set(used.values())
    return names.pop() if len(names) == 1 else ",".join(f"{op}={name}" for op, name in used.items())


def add_backend_metric(metrics: dict, op: str, name: str | None) -> None:
    """Add ``backend_<op> = name`` (None: the op did not run) and recompute the ``backend`` summary."""
    add_backend_metrics(metrics, {op: name})


def add_backend_metrics(metrics: dict, names: dict) -> None:
    """:func:`add_backend_metric` for every ``op: name`` of ``names``, with one recomputation of the summary."""
    added = False
    for op, name in names.items():
        if name is not None:
            metrics[f"backend_{op}"] = name
            added = True
    if added:
        used = {k[len("backend_"):]: v for k, v in metrics.items() if k.startswith("backend_")}
        metrics["backend"] = _backend_summary(used)


def _check_output(name: str, out: torch.Tensor, like: torch.Tensor) -> None:
    if out.shape != like.shape:
        raise ValueError(f"{name} has shape {tuple(out.shape)}, expected {tuple(like.shape)} (the student output)")
    if out.device != like.device:
        raise ValueError(f"{name} is on {out.device}, expected {like.device} (the student output's device)")
    if out.dtype != like.dtype:
        raise TypeError(f"{name} has dtype {out.dtype}, expected {like.dtype} (the student output's dtype)")


def _batch_and_shape(engine: RMMD, data, cond, batch_size):
    B = None
    if data is not None:
        if not isinstance(data, torch.Tensor) or not data.is_floating_point():
            raise TypeError(f"data must be a floating-point Tensor, got {getattr(data, 'dtype', type(data))}")
        B = data.shape[0]
        shape = tuple(data.shape[1:])
        if engine.sample_shape is not None and shape != engine.sample_shape:
            raise ValueError(f"data has per-sample shape {shape}, expected sample_shape {engine.sample_shape}")
    else:
        if engine.sample_shape is None:
            raise ValueError("data-free steps need the per-sample shape: pass sample_shape= to RMMD(...)")
        shape = engine.sample_shape
    if batch_size is not None:
        if B is not None and batch_size != B:
            raise ValueError(f"batch_size={batch_size} does not match the batch of data ({B})")
        B = batch_size
    if B is None:
        B = batch_of(cond)
    if B is None:
        raise ValueError("cannot infer the batch size: pass data, a batched cond, or batch_size=")
    if not isinstance(B, int) or B < 1:
        raise ValueError(f"batch_size must be an integer >= 1, got {B!r}")
    check_cond_batch(cond, B)
    return B, shape


def _sample_times(n: int, K: int, gap: str, generator, device):
    """Continuous variant / off-policy: s ~ U(0,1), delta ~ U(0,1/K) (or 1/K), t = min(s + delta, 1)."""
    s = torch.rand(n, generator=generator, dtype=torch.float64, device=device)
    delta = (torch.rand(n, generator=generator, dtype=torch.float64, device=device) / K if gap == "uniform"
             else torch.full((n,), 1.0 / K, dtype=torch.float64, device=device))
    return s, (s + delta).clamp_max(1.0)


def _rollout_plan(engine: RMMD, sch, K: int, steps: int, device) -> RolloutPlan:
    """The student rollout's grid, coefficients and step targets for this config, cached on the engine
    (they depend on the schedule and the config only; recomputing them was ~100 small float64 ops and a
    host read of the grid per iteration). Keyed on everything they depend on, the schedule by identity
    and its scalar parameters (not repr: DiscreteVP's reads its table), so a config change
    (``start_phase2``) or a swapped schedule makes a new plan."""
    cfg = engine.config
    key = (id(sch), tuple(sch._params().items()), K, cfg.grid, float(cfg.rho), float(cfg.eta), steps, str(device))
    cache = engine.__dict__.setdefault("_rollout_plans", {})
    hit = cache.get(key)
    if hit is not None and hit[0] is sch:
        return hit[1]
    if len(cache) > 64:  # e.g. the discrete variant's K stop points, per config: bounded anyway
        cache.clear()
    plan = rollout_plan(sch, time_grid(K, sch, cfg.grid, cfg.rho), cfg.eta, steps, device)
    cache[key] = (sch, plan)
    return plan


def _student_rollout(engine: RMMD, z: torch.Tensor, plan: RolloutPlan, cond: Cond, generator, seeds: list[int],
                     seed_t: list[torch.Tensor]) -> torch.Tensor:
    """The no-grad student rollout from ``z`` along ``plan`` (its state at the plan's end), with the seeds
    already drawn: ``seeds`` as ints, ``seed_t`` the same values as device tensors. With
    ``config.graph_rollout`` (single process) through a :class:`~rmmd_core.rollout_graph.RolloutGraph`
    cached per plan, batch and conditioning layout, fed the device seeds; its output buffer is copied,
    so what this iteration keeps (e.g. in an autograd graph) is not overwritten by the next replay."""
    n = plan.seeds_needed
    from .distributed import is_distributed  # local import: keeps torch.distributed out of the package import
    if not engine.config.graph_rollout or is_distributed():
        return run_rollout(engine.student, z, plan, cond, generator=generator, backend=engine.backend,
                           seeds=seeds[:n])[0]
    from .rollout_graph import RolloutGraph
    layout = (None if cond is None else (cond.shape, cond.dtype) if isinstance(cond, torch.Tensor)
              else tuple((k, (v.shape, v.dtype) if isinstance(v, torch.Tensor) else v) for k, v in cond.items()))
    key = (id(engine.student), id(plan), z.shape, z.dtype, z.device, layout, engine.backend)
    cache = engine.__dict__.setdefault("_rollout_graphs", {})
    hit = cache.get(key)
    if hit is None or hit[0] is not engine.student or hit[1] is not plan:
        if len(cache) > 16:
            cache.clear()
        hit = cache[key] = (engine.student, plan, RolloutGraph(engine.student, plan, z, cond, backend=engine.backend))
    dev_seeds = torch.cat(seed_t[:n]) if n else torch.zeros(0, dtype=torch.int64, device=z.device)
    return hit[2](z, dev_seeds.to(z.device), cond)[0].clone()


def check_reward_kwargs(engine: RMMD, reward_kwargs, B: int) -> dict:
    """Validate ``reward_kwargs`` (reward-only inputs such as a verifying target) and return a plain dict.

    They go to the reward's ``value_and_grad`` only, never to a network (unlike ``cond``, which every
    network receives as keyword arguments). Batched tensors must have the conditioning batch B.
    """
    if reward_kwargs is None:
        return {}
    if not isinstance(reward_kwargs, Mapping):
        raise TypeError(f"reward_kwargs must be a dict of keyword arguments for the reward, "
                        f"got {type(reward_kwargs).__name__}")
    bad = [k for k in reward_kwargs if not isinstance(k, str) or not k.isidentifier()]
    if bad:
        raise TypeError(f"reward_kwargs keys must be keyword-argument names, got {bad!r}")
    if reward_kwargs and engine.reward is None:
        raise ValueError(f"reward_kwargs {sorted(reward_kwargs)} given but the engine has no reward: "
                         "pass reward= to RMMD(...) or start_phase2(reward=...)")
    check_cond_batch(reward_kwargs, B, "reward_kwargs")
    if reward_kwargs:
        engine.reward.check_kwargs(reward_kwargs)
    return dict(reward_kwargs)


def _reward_terms(engine: RMMD, x0: torch.Tensor, cond_n: Cond, cond: Cond, B: int, M: int, need_grad: bool,
                  reward_kwargs: dict):
    """Per-conditioning reward r (B,) and dr/dx̂0 (N, ...) (None if not needed).

    Multi-sample rewards get the members as (M, B, ...) and ``reward_kwargs`` as given (batch B); per-sample
    rewards get (N, ...) and batched ``reward_kwargs`` tiled member-major like ``cond``. Scaling: the engine
    minimises ``-lam mean_b r_b``, so the cotangent's reward part is ``-lam (1/B) dr_b/dx̂0`` (see losses()).
    """
    rw, backend = engine.reward, engine.backend
    if rw.multi_sample:
        xs = x0.detach().view(M, B, *x0.shape[1:])
        r, G = rw.engine_value_and_grad(xs, cond, backend, need_grad, **reward_kwargs)
        return r.detach(), (G.reshape_as(x0) if need_grad else None)
    kw_n = repeat_cond(reward_kwargs, M) if reward_kwargs else {}
    v, G = rw.engine_value_and_grad(x0.detach(), cond_n, backend, need_grad, **kw_n)
    return v.detach().view(M, B).mean(0), (G / M if need_grad else None)


def _losses(engine: RMMD, data: torch.Tensor | None = None, cond: Cond = None, *, batch_size: int | None = None,
            generator: torch.Generator | None = None, return_intermediates: bool = False,
            reward_kwargs: dict | None = None) -> tuple[StepLosses, dict]:
    """:func:`losses` with the scalar metrics still on the device: returns ``(out, scalars)``, where
    ``scalars`` maps metric names to 0-d tensors whose values ``out.metrics`` lacks (None / defaults).
    :func:`step` reads them together with its finite checks and gradient norms in one copy.
    """
    cfg = engine.config
    g = generator if generator is not None else engine.generator
    B, shape = _batch_and_shape(engine, data, cond, batch_size)
    reward_kwargs = check_reward_kwargs(engine, reward_kwargs, B)
    M, K = cfg.num_samples, cfg.num_steps
    N = B * M
    lam, lam_reg = cfg.reward_weight, cfg.lambda_reg
    if lam > 0 and engine.reward is None:
        raise ValueError("reward_weight > 0 needs a reward: pass reward= to RMMD(...) or start_phase2(reward=...)")
    if lam_reg > 0 and engine.anchor is None:
        raise ValueError("anchor_weight > 0 needs the frozen phase-1 student: call engine.start_phase2() first, "
                         "or set anchor_weight=0")
    if cfg.reference == "frozen_aux" and engine.frozen_aux is None:
        raise ValueError("reference='frozen_aux' needs a frozen phase-1 auxiliary: call engine.start_phase2() first")
    engine.apply_frozen_dtype()  # marker check; casts frozen networks swapped in since the last call
    student, sch = engine.student, engine.student.schedule
    device = data.device if data is not None else engine.device
    dtype = data.dtype if data is not None else engine.dtype
    cond_n = repeat_cond(cond, M)
    nets = {"student": student, "teacher": engine.teacher, "aux": engine.auxiliary, "anchor": engine.anchor,
            "frozen_aux": engine.frozen_aux}
    calls0 = {k: (d.calls, d.nfe, d.grad_calls) for k, d in nets.items() if d is not None}
    s_floor = max(sch.t_min, 1e-4)  # keeps the moment time off s = 0, where every x-predictor is the identity

    # 1. training state z_t at time t, and the moment time s < t (no grad anywhere here)
    # Every Philox seed of the iteration is drawn from g in the order of the unbatched code (rollout steps,
    # then the times, then re-noise and posterior step: the networks in between never touch g) and read in
    # ONE device->host copy before the first network call, so no read waits for a network on the device.
    with torch.no_grad():
        seed_t = []
        if data is not None:
            source = "data"
            x = data.repeat(M, *([1] * len(shape)))
            s, t = _sample_times(N, K, cfg.gap, g, device)
            seed_t += [seed_tensor(g), seed_tensor(g)]  # re-noise, posterior step
            seeds = read_seeds(seed_t)
        else:
            source = cfg.variant
            z = prior_sample(sch, (N, *shape), device=device, dtype=dtype, generator=g)
            if cfg.variant == "continuous":
                plan = _rollout_plan(engine, sch, K, K, device)
                seed_t += [seed_tensor(g) for _ in range(plan.seeds_needed)]
                s, t = _sample_times(N, K, cfg.gap, g, device)
                seed_t += [seed_tensor(g), seed_tensor(g)]  # re-noise, posterior step
                seeds = read_seeds(seed_t)
                x = _student_rollout(engine, z, plan, cond_n, g, seeds, seed_t)
            else:  # discrete: stop at a random student step i* in {1..K} (one per batch)
                i_star = int(torch.randint(1, K + 1, (1,), generator=g, device=device).item())
                plan = _rollout_plan(engine, sch, K, K - i_star, device)
                seed_t += [seed_tensor(g) for _ in range(plan.seeds_needed)]
                t = plan.grid[K - i_star].expand(N).clone()
                delta = (torch.rand(N, generator=g, dtype=torch.float64, device=device) / K if cfg.gap == "uniform"
                         else torch.full((N,), 1.0 / K, dtype=torch.float64, device=device))
                seed_t.append(seed_tensor(g))  # posterior step
                seeds = read_seeds(seed_t)
                z_t = _student_rollout(engine, z, plan, cond_n, g, seeds, seed_t)
                s = t - delta
        s = s.clamp_min(s_floor)
        t = torch.maximum(t, s)
        fused_ops = {}  # op -> tensors, for the metrics' backend names
        if source != "data" and can_fuse(student):  # the rollout's steps ran as fused denoise_step calls
            fused_ops["denoise_step"] = (z,)              # (else as posterior_step, reported below anyway)
        if source != "discrete":  # forward (re-)noise of the clean / rolled-out sample, fused K2 op
            a_t, sg_t = schedule_call(sch, "alpha_sigma", t)
            z_t = ops.renoise(x, a_t.to(device), sg_t.to(device), seeds[-2], 0, backend=engine.backend)
            fused_ops["renoise"] = (x,)

    # 2. the one differentiable student call
    update_student = engine.wants_student_update()
    with torch.set_grad_enabled(update_student):
        x0 = student(z_t, t, cond_n)
    x0d = x0.detach()

    # 3. posterior step down to s (no gradient through z_s)
    with torch.no_grad():
        # s <= t by construction (t = max(t, s) above): the coefficients skip posterior_coefficients'
        # validation, which reads the times back to the host
        z_s = posterior_step(sch, z_t, x0d, t, s, cfg.eta, g, engine.backend,
                             coefficients=positive_posterior_coefficients(sch, t, s, check_eta(cfg.eta)),
                             seed=seeds[-1])
        # 4. reference moment and anchor (frozen networks, no graph)
        if cfg.reference == "teacher":
            m_ref = engine.teacher(z_s, s, cond_n, guidance_scale=cfg.guidance_scale)
        else:
            m_ref = engine.frozen_aux(z_s, s, cond_n)
        _check_output("teacher output" if cfg.reference == "teacher" else "frozen auxiliary output", m_ref, x0d)
        a = None
        if lam_reg > 0 and update_student:
            a = engine.anchor(z_t, t, cond_n)
            _check_output("anchor output", a, x0d)
    # the auxiliary call serves both the student's m_stu (detached) and its own loss
    aux_out = engine.auxiliary(z_s, s, cond_n)
    _check_output("auxiliary output", aux_out, x0d)
    m_stu = aux_out.detach()

    # 5-6. reward and the output-space cotangent, assembled by the fused K5 op (method.md §e)
    D = x0d[0].numel()
    view = (N,) + (1,) * (x0d.dim() - 1)
    r, G = (None, None)
    if engine.reward is not None:
        r, G = _reward_terms(engine, x0d, cond_n, cond, B, M, need_grad=lam > 0 and update_student,
                              reward_kwargs=reward_kwargs)
    dmd = cfg.weighting == "dmd"
    # The DMD normaliser is computed inside the op (its first pass), so w is 1 there; other weightings
    # are per-sample functions of s, computed in float64 (method.md Project defaults).
    w = torch.ones(N, dtype=torch.float64, device=device) if dmd else time_weight(cfg.weighting, sch, s).to(device)
    g_R = G.to(x0d.dtype) if G is not None else None
    # g = [w (m_stu - m_ref) - lam M D dr/dx0 + 2 lam_reg (x0 - a)] / (N D): lam M D is the op's lam.
    cot, stats = ops.rmmd_cotangent(x0d, m_stu, m_ref, g_R, a, w, lam=float(lam * M * D) if G is not None else 0.0,
                                    lam_reg=float(lam_reg) if a is not None else 0.0, scale=1.0 / (N * D), dmd=dmd,
                                    dmd_eps=float(cfg.dmd_eps), backend=engine.backend)
    surrogate = stats[:, 0]
    l2 = stats[:, 1] if a is not None else None
    value = surrogate.mean()
    if r is not None and lam > 0:
        value = value - lam * r.mean()
    if l2 is not None:
        value = value + lam_reg * l2.mean()
    student_loss = None
    if update_student:
        student_loss = surrogate_loss(x0, value, cot)  # value = objective, gradient = cotangent

    # 8. auxiliary loss on the same z_s
    w_aux = time_weight(cfg.effective_aux_weighting, sch, s).to(device)
    aux_loss = fused_aux_loss(aux_out, x0d, m_ref, w_aux, engine.backend)

    calls = {k: d.calls - calls0[k][0] for k, d in nets.items() if d is not None}
    grad_calls = sum(d.grad_calls - calls0[k][2] for k, d in nets.items() if d is not None)
    nfe = sum(d.nfe - calls0[k][1] for k, d in nets.items() if d is not None) / N
    nan = float("nan")
    # every scalar metric in ONE device->host copy (each float() of a CUDA tensor is a sync)
    scalars = {"mm_surrogate": surrogate.mean(), "student_loss": value, "aux_loss": aux_loss.detach(),
               "cot_norm_mm": stats[:, 2].sum().sqrt(), "t_mean": t.mean(), "s_mean": s.mean()}
    if r is not None:
        scalars["reward_mean"] = r.mean()
    if l2 is not None:
        scalars["anchor_l2"] = l2.mean()
    if G is not None:
        scalars["cot_norm_reward"] = stats[:, 3].sum().sqrt()
    if a is not None:
        scalars["cot_norm_anchor"] = stats[:, 4].sum().sqrt()
    metrics = {
        "phase": engine.phase,
        "state_source": source,
        # the scalar metrics' slots, in this order; filled from one host read (read_scalars)
        "mm_surrogate": None, "reward_mean": nan, "anchor_l2": nan, "student_loss": None, "aux_loss": None,
        "cot_norm_mm": None, "cot_norm_reward": 0.0, "cot_norm_anchor": 0.0, "t_mean": None, "s_mean": None,
        "nfe": nfe,
        **{f"calls_{k}": v for k, v in calls.items()},
        # network calls this iteration (all networks; a CFG call with cond + null rows batched is one call)
        # and how many of them ran with autograd recording (the ones the backward passes go through)
        "calls_total": sum(calls.values()),
        "calls_grad": grad_calls,
        "student_update": update_student,
        **_backend_metrics({"posterior_step": (z_t,), **fused_ops, "rmmd_cotangent": (x0d, w),
                            "aux_loss": (aux_out, w_aux)}, engine.backend,
                           used=engine.reward.backend_used(x0d, engine.backend) if r is not None else None),
    }
    inter = {}
    if return_intermediates:
        inter = dict(x0=x0, z_t=z_t, z_s=z_s, t=t, s=s, m_ref=m_ref, m_stu=m_stu, anchor=a, reward=r,
                     reward_grad=G, weight=stats[:, 5].to(x0d.dtype).view(view), cotangent=cot, cot_stats=stats,
                     aux_out=aux_out, aux_weight=w_aux)
    return StepLosses(student_loss, aux_loss, metrics, inter), scalars


def read_scalars(tensors: dict) -> dict:
    """``{name: float}`` of 0-d / 1-element tensors in ONE device->host copy (each ``float()`` of a CUDA
    tensor is a sync). ``stack`` / ``cat`` promote float32 / bool values to float64 exactly before the read."""
    if not tensors:
        return {}
    vals = list(tensors.values())
    with torch.no_grad():  # no graph, so no detach per value
        # 0-d values (the engine's): one stack instead of a reshape per value and a cat
        flat = torch.stack(vals) if all(v.dim() == 0 for v in vals) else torch.cat([v.reshape(1) for v in vals])
        if flat.dtype != torch.float64:
            flat = flat.to(torch.float64)
    return dict(zip(tensors, flat.tolist()))


def losses(engine: RMMD, data: torch.Tensor | None = None, cond: Cond = None, *, batch_size: int | None = None,
           generator: torch.Generator | None = None, return_intermediates: bool = False,
           reward_kwargs: dict | None = None) -> StepLosses:
    """Compute one iteration's student and auxiliary losses without stepping anything.

    For trainers that own backward and optimisers (Accelerate, Lightning, FSDP): call
    ``(out.student_loss + out.aux_loss).backward()`` (their parameters are disjoint), step your
    optimisers, then ``engine.update_ema()``. :func:`step` does exactly that with finite checks.

    Args:
        engine: the :class:`~rmmd_core.engine.RMMD` state.
        data: optional clean batch ``(B, *sample_shape)``: off-policy state (MM Algorithm 2).
            Without it the state comes from the student's own rollouts (``config.variant``).
        cond: conditioning for the B samples (dict of kwargs for the networks, or a tensor).
        batch_size: B when neither ``data`` nor ``cond`` carries it.
        generator: RNG for noise, times and Philox seeds (default: the engine's).
        reward_kwargs: extra keyword arguments for the reward only (e.g. ``{"target": y}``, the verifying
            next state of :class:`~rmmd_core.rewards.CRPSReward`, batch B). Unlike ``cond`` they never
            reach a network, so a reward may see the answer without the student seeing it.
    """
    with iteration_memo():
        out, scalars = _losses(engine, data, cond, batch_size=batch_size, generator=generator,
                               return_intermediates=return_intermediates, reward_kwargs=reward_kwargs)
    out.metrics.update(read_scalars(scalars))
    return out


def step(engine: RMMD, data: torch.Tensor | None = None, cond: Cond = None, *, batch_size: int | None = None,
         generator: torch.Generator | None = None, reward_kwargs: dict | None = None) -> dict:
    """One full RMMD / MM iteration: losses, backward, finite checks, clipping, optimiser steps, EMA.

    Args: as :func:`losses`.

    Returns a dict of plain numbers (plus two short strings): ``mm_surrogate`` (the MM surrogate
    ``mean (1/D)<x̂0, w(m_stu - m_ref)>``), ``reward_mean`` (nan without a reward), ``anchor_l2``
    (nan without an anchor), ``student_loss`` (the objective's value), ``aux_loss``, per-term cotangent
    norms ``cot_norm_mm / cot_norm_reward / cot_norm_anchor``, ``grad_norm`` (student, before
    clipping), ``grad_norm_aux``, ``nfe`` (network evaluations per student sample in this iteration),
    ``calls_<network>``, ``calls_total`` (all network calls), ``calls_grad`` (calls recorded for
    backward: 2 when both networks update, 1 on auxiliary-only iterations), ``skipped`` /
    ``skipped_student`` / ``skipped_aux`` (a non-finite loss or gradient skips that update and leaves
    weights and optimiser state untouched), ``t_mean``,
    ``s_mean``, ``iteration``, ``phase`` (``'mm' | 'rmmd'``), ``state_source``, ``backend`` (the one
    backend every fused op ran on, else ``op=name`` pairs) and ``backend_<op>`` for each fused op that ran
    this iteration (``posterior_step``, ``denoise_step`` (fused rollout steps), ``renoise``,
    ``rmmd_cotangent``, ``aux_loss``, the reward's op ``grayscale_reward`` / ``laplacian_reward`` /
    ``crps_fair`` for the built-in rewards, ``ema_update`` on iterations that update the EMA, ``grad_norm`` and,
    when a gradient was clipped, ``grad_scale`` on the single-process path). Built-in
    rewards without a ``backend`` of their own run on the engine's backend.
    """
    with iteration_memo():  # schedule values shared between the calls at the same t / s (schedule_memo)
        out, scalars = _losses(engine, data, cond, batch_size=batch_size, generator=generator,
                               reward_kwargs=reward_kwargs)
    m = out.metrics
    clip = engine.config.grad_clip
    # The auxiliary first: its backward frees its graph before the student's backward runs, so with an
    # activation-checkpointed student (rmmd_core.checkpoint_activations) the student's recomputed
    # activations never coexist with the auxiliary's. The two losses share no parameters and every
    # cross term is detached, so the order changes no value.
    grad_norm, skipped_s = float("nan"), False
    ema_done_on = None  # backend of the student's EMA when it ran inside its optimiser's step (engine.ema_fold)
    ran_on = {}  # op -> backend of the update's fused ops (metrics backend_<op>), added in one go at the end
    from .distributed import is_distributed  # local import: keeps torch.distributed out of the package import
    if is_distributed() or torch.is_anomaly_enabled():
        # ranks must agree on skipping before a wrapped module's backward (gradient all-reduce), and anomaly
        # mode raises in the backward of a non-finite loss: the per-module path, checks before backward
        m.update(read_scalars(scalars))
        grad_norm_aux, skipped_a = apply_update(out.aux_loss, engine.auxiliary, engine.aux_optimizer, clip)
        if out.student_loss is not None:
            grad_norm, skipped_s = apply_update(out.student_loss, engine.student, engine.student_optimizer, clip)
    else:
        # Single process: both backwards first (the aux optimiser step does not touch the student's graph),
        # then the metrics, both finite checks, gradient norms and clip decisions in ONE host read, then
        # both optimiser steps. A non-finite loss is detected after its backward (its gradients are
        # dropped), so weights, optimiser state and every metric are those of apply_update.
        # The losses' values are among the scalars read (aux_loss; student_loss is the objective the surrogate
        # returns), so their finite checks are made on the host from that read (loss_read).
        checks = {"aux": backward_checks(out.aux_loss, engine.auxiliary, engine.aux_optimizer, clip, engine.backend,
                                         loss_read=True)}
        if out.student_loss is not None:
            checks["student"] = backward_checks(out.student_loss, engine.student, engine.student_optimizer, clip,
                                                engine.backend, loss_read=True)
        values = read_scalars({**scalars, **{f"{k}/{n}": v for k, c in checks.items() for n, v in c.tensors.items()}})
        m.update({k: values[k] for k in scalars})
        loss_value = {"aux": values["aux_loss"], "student": values["student_loss"]}

        def read(k):
            return {**{n: values[f"{k}/{n}"] for n in checks[k].tensors}, "finite": math.isfinite(loss_value[k])}
        grad_norm_aux, skipped_a = checks["aux"].finish(read("aux"))
        if out.student_loss is not None:
            # with the engine's FusedAdam, the clip and the EMA ride in the optimiser's one pass
            grad_norm, skipped_s = checks["student"].finish(read("student"), engine.ema_fold())
        for c in checks.values():  # the gradient norm / clip ops (engine.backward_checks)
            for op, name in (("grad_norm", c.backend_norm), ("grad_scale", c.backend_scale)):
                if name is not None:
                    ran_on[op] = name
        if out.student_loss is not None and checks["student"].ema_done:
            ema_done_on = engine.student_optimizer.ema_backend
    for opt, ran in ((engine.aux_optimizer, not skipped_a),
                     (engine.student_optimizer, out.student_loss is not None and not skipped_s)):
        name = getattr(opt, "last_backend", None)
        if ran and name is not None:  # the optimisers' fused op (rmmd_core.adam.FusedAdam; None: torch's step ran)
            ran_on["adam_update"] = name
    if out.student_loss is not None:
        if not skipped_s:
            engine.student_updates += 1
            ran_on["ema_update"] = engine.update_ema(params_done=ema_done_on)
    add_backend_metrics(m, ran_on)
    engine.iteration += 1
    engine.skipped_updates += int(skipped_s or skipped_a)
    m.update(grad_norm=grad_norm, grad_norm_aux=grad_norm_aux, skipped=float(skipped_s or skipped_a),
             skipped_student=float(skipped_s), skipped_aux=float(skipped_a), iteration=engine.iteration)
    m["student_update"] = float(m["student_update"])
    return m
