"""Reward fine-tuning baselines in the same engine (method.md §d), each usable on any :class:`Denoiser`.

=====================  ==============================================================================
:class:`DRaFT`          DRaFT-K: sample with the student's own K-step sampler, back-propagate ``-lambda R``
                        through the last ``grad_steps`` sampler steps (DRaFT-1, DRaFT-2, ...), plus an
                        L2 anchor to the frozen starting model; ``lv_samples = n`` gives DRaFT-LV.
:class:`DIpp`           DI++-style one-step reward distillation: generator ``x̂0 = G(z, t=1)``, forward
                        diffusion ``x_s = alpha_s x̂0 + sigma_s eps``, MM-style cotangent with an online
                        auxiliary ``w(s)(aux(x_s) - teacher(x_s))`` and the reward term ``-lambda grad R``.
:class:`HyperNoise`     a noise network over a frozen K-step student: ``eps' = eps + f_phi(eps)``, loss
                        ``-lambda R(G(eps')) + kappa mean(f_phi(eps)^2)``, gradients through every step.
:func:`mm_then_draft`   two-stage baseline: plain MM (an :class:`~rmmd_core.engine.RMMD` run at lambda = 0)
                        then DRaFT-K on the distilled student.
=====================  ==============================================================================

Plain MM is RMMD at lambda = 0 (``rmmd_core.step`` without a reward). All losses use the project's
reduction (per-sample means over the D values, mean over the batch) so lambda has the same scale as in
RMMD. Every ``.step()`` returns plain-number metrics, skips non-finite updates like ``rmmd_core.step``
(``engine.apply_update``), keeps an EMA of the trained network, and reports ``grad_calls``: the number of
student calls the backward pass goes through (RMMD: 1; DRaFT-K: K; DRaFT-LV: n; HyperNoise: K).
"""
from __future__ import annotations

import copy
from dataclasses import dataclass, replace

import torch
from torch import nn

from .denoiser import Cond, Denoiser, repeat_cond
from .engine import RMMD, apply_update
from .rewards import Reward, as_reward
from .sampler import check_eta, posterior_step, prior_sample, rollout, time_grid


class _RewardValue(torch.autograd.Function):
    """``R(x0) -> (B,)`` whose backward uses the reward's own ``value_and_grad`` (closed form for the
    built-ins, autograd for callables), so any :class:`Reward` is differentiable inside a graph."""

    @staticmethod
    def forward(ctx, x0, reward, cond):
        v, g = reward.value_and_grad(x0.detach(), cond)
        ctx.save_for_backward(g)
        return v.detach().to(x0.dtype)

    @staticmethod
    def backward(ctx, grad_out):
        (g,) = ctx.saved_tensors
        return grad_out.view(-1, *([1] * (g.dim() - 1))).to(g.dtype) * g, None, None


def reward_value(reward: Reward, x0: torch.Tensor, cond: Cond = None) -> torch.Tensor:
    """Differentiable per-sample reward ``(B,)`` of ``x0 (B, ...)``."""
    return _RewardValue.apply(x0, reward, cond)


def _l2(x: torch.Tensor, a: torch.Tensor) -> torch.Tensor:
    """Per-sample ``(1/D)||x - a||^2``, shape ``(B,)``."""
    return ((x - a) ** 2).flatten(1).mean(1)


@dataclass(frozen=True)
class BaselineConfig:
    """Shared knobs. ``num_steps``: the sampler's K (DRaFT, HyperNoise); ``reward_weight``: lambda;
    ``anchor_weight``: weight of the output-space L2 anchor (DRaFT) or kappa (HyperNoise);
    optimiser and EMA as in :class:`~rmmd_core.config.RMMDConfig` (Adam(0, 0.99), clip 1)."""

    num_steps: int = 8
    eta: float = 1.0
    reward_weight: float = 1.0
    anchor_weight: float = 1.0
    lr: float = 1e-4
    betas: tuple = (0.0, 0.99)
    grad_clip: float | None = 1.0
    ema_decay: float | None = 0.999

    def __post_init__(self):
        if not isinstance(self.num_steps, int) or self.num_steps < 1:
            raise ValueError(f"num_steps must be an integer >= 1, got {self.num_steps!r}")
        check_eta(self.eta)
        for name in ("reward_weight", "anchor_weight"):
            if getattr(self, name) < 0:
                raise ValueError(f"{name} must be >= 0, got {getattr(self, name)}")
        if self.lr <= 0:
            raise ValueError(f"lr must be > 0, got {self.lr}")

    def replace(self, **kw) -> "BaselineConfig":
        return replace(self, **kw)


class _Trained:
    """Optimiser + EMA + finite-checked update for one trained module (shared by the baselines)."""

    def __init__(self, module: nn.Module, config: BaselineConfig, seed: int):
        self.config = config
        params = [p for p in module.parameters() if p.requires_grad]
        if not params:
            raise ValueError(f"{type(module).__name__} has no trainable parameters")
        self.optimizer = torch.optim.Adam(params, lr=config.lr, betas=tuple(config.betas), eps=1e-12)
        self._trained = module
        self.ema = copy.deepcopy(module).requires_grad_(False).eval() if config.ema_decay is not None else None
        dev = params[0].device
        self.device = dev
        self.generator = torch.Generator(device=dev).manual_seed(int(seed))
        self.iteration = 0
        self.skipped_updates = 0

    def _update(self, loss: torch.Tensor) -> dict:
        norm, skipped = apply_update(loss, self._trained, self.optimizer, self.config.grad_clip)
        if not skipped and self.ema is not None:
            with torch.no_grad():
                beta = self.config.ema_decay
                for e, p in zip(self.ema.parameters(), self._trained.parameters()):
                    e.lerp_(p.detach(), 1.0 - beta)
        self.iteration += 1
        self.skipped_updates += int(skipped)
        return {"grad_norm": norm, "skipped": float(skipped), "iteration": self.iteration}


def _check_reward(reward):
    r = as_reward(reward)
    if r is None:
        raise ValueError("this baseline needs a reward (callable, Reward or built-in name)")
    if r.multi_sample:
        raise ValueError("multi-sample rewards are supported by RMMD only, not by this baseline")
    return r


class DRaFT(_Trained):
    """DRaFT-K / DRaFT-LV with an L2 anchor (method.md §d.2), on the student's own K-step sampler.

    Args:
        student: trainable :class:`Denoiser` (updated in place; e.g. the phase-1 MM student).
        reward: callable ``(x0, cond) -> (B,)``, :class:`Reward` or built-in name.
        config: :class:`BaselineConfig` (``num_steps`` = the sampler's steps N).
        grad_steps: K, the number of final sampler steps back-propagated through (1 <= K <= N).
        lv_samples: n > 0 selects DRaFT-LV: after a no-grad rollout to x0, re-noise x0 to the last
            grid time ``t_1`` n times with fresh noise and take one differentiable step each; the rewards
            (and anchors) are averaged over the n. Requires ``grad_steps == 1``.
        sample_shape: per-sample shape for the prior noise.

    Loss per iteration (B samples, D values each; G_j the student outputs on the differentiated calls,
    a_j the frozen starting model's output on the same inputs)::

        L = -lambda mean_b R(x0_b) + anchor_weight mean_{b,j} (1/D) ||G_j,b - a_j,b||^2

    DRaFT-K: x0 is the sampler's output, gradients flow through the last K student calls and the
    posterior steps between them (memory grows with K). DRaFT-LV: R is averaged over the n re-noised
    one-step predictions.
    """

    def __init__(self, student: Denoiser, reward, config: BaselineConfig | None = None, *, grad_steps: int = 1,
                 lv_samples: int = 0, sample_shape=None, seed: int = 0):
        config = config or BaselineConfig()
        if not isinstance(student, Denoiser):
            raise TypeError(f"student must be a rmmd_core.Denoiser, got {type(student).__name__}")
        if not isinstance(grad_steps, int) or not 1 <= grad_steps <= config.num_steps:
            raise ValueError(f"grad_steps must be an integer in [1, num_steps={config.num_steps}], got {grad_steps!r}")
        if not isinstance(lv_samples, int) or lv_samples < 0:
            raise ValueError(f"lv_samples must be an integer >= 0, got {lv_samples!r}")
        if lv_samples and grad_steps != 1:
            raise ValueError("DRaFT-LV (lv_samples > 0) differentiates one step: set grad_steps=1")
        if sample_shape is None:
            raise ValueError("DRaFT samples from noise: pass sample_shape=(C, H, W) or (D,)")
        super().__init__(student, config, seed)
        self.student = student
        self.anchor = student.frozen_copy()
        self.reward = _check_reward(reward)
        self.grad_steps, self.lv_samples = grad_steps, lv_samples
        self.sample_shape = tuple(sample_shape)

    @property
    def name(self) -> str:
        return f"DRaFT-LV(n={self.lv_samples})" if self.lv_samples else f"DRaFT-{self.grad_steps}"

    def losses(self, batch_size: int, cond: Cond = None) -> tuple[torch.Tensor, dict]:
        """The loss L above (scalar tensor with graph) and plain-number metrics."""
        cfg, sch, g = self.config, self.student.schedule, self.generator
        N = cfg.num_steps
        grid = time_grid(N, sch)
        z = prior_sample(sch, (batch_size, *self.sample_shape), device=self.device, generator=g)
        calls0 = self.student.calls
        outs, anchors = [], []
        if self.lv_samples:
            with torch.no_grad():
                x0, _, _ = rollout(self.student, z, grid, cond, eta=cfg.eta, generator=g)
            t1 = grid[N - 1].expand(batch_size).to(self.device)
            a_t, s_t = (v.to(x0.dtype).view(-1, *([1] * len(self.sample_shape))) for v in sch.alpha_sigma(t1))
            for _ in range(self.lv_samples):
                z1 = a_t * x0 + s_t * torch.randn(x0.shape, generator=g, device=self.device, dtype=x0.dtype)
                outs.append(self.student(z1, t1, cond))
                with torch.no_grad():
                    anchors.append(self.anchor(z1, t1, cond))
            r = torch.stack([reward_value(self.reward, o, cond) for o in outs]).mean(0)
            final = outs[-1]
        else:
            first_grad = N - self.grad_steps
            for j in range(N):
                t = grid[j].expand(batch_size).to(self.device)
                s = grid[j + 1].expand(batch_size).to(self.device)
                with torch.set_grad_enabled(j >= first_grad):
                    x_hat = self.student(z, t, cond)
                if j >= first_grad:
                    outs.append(x_hat)
                    with torch.no_grad():
                        anchors.append(self.anchor(z.detach(), t, cond))
                with torch.set_grad_enabled(j >= first_grad):
                    z = x_hat if float(grid[j + 1]) <= 0 else posterior_step(sch, z, x_hat, t, s, cfg.eta, g)
            final = z
            r = reward_value(self.reward, final, cond)
        l2 = torch.stack([_l2(o, a) for o, a in zip(outs, anchors)]).mean(0)
        loss = -cfg.reward_weight * r.mean() + cfg.anchor_weight * l2.mean()
        m = {"reward_mean": float(r.detach().mean()), "anchor_l2": float(l2.detach().mean()),
             "loss": float(loss.detach()), "grad_calls": len(outs), "calls": self.student.calls - calls0}
        return loss, m

    def step(self, batch_size: int, cond: Cond = None) -> dict:
        loss, m = self.losses(batch_size, cond)
        m.update(self._update(loss))
        return m

    @property
    def model(self) -> Denoiser:
        """The network to sample from (EMA when kept)."""
        return self.ema if self.ema is not None else self.student


class DIpp(_Trained):
    """DI++-style one-step reward distillation (method.md §d.1) with an online auxiliary.

    Args:
        generator: trainable :class:`Denoiser` used as a one-step generator ``x̂0 = G(z, 1)``, ``z`` prior
            noise (usually a copy of the teacher).
        teacher: frozen reference :class:`Denoiser` (CFG via ``guidance_scale``).
        auxiliary: trainable "fake" denoiser estimating E[x̂0 | x_s]; default a copy of the teacher.
        reward: optional (None gives plain DI, the lambda = 0 point).
        config: ``reward_weight`` = lambda; ``anchor_weight`` is unused.
        weighting: ``'flat'`` (default, as RMMD) or ``'snr'`` w(s).

    One iteration (B samples, D values)::

        x̂0 = G(z, 1);  s ~ U(s_min, 1);  x_s = alpha_s sg(x̂0) + sigma_s eps          (forward diffusion)
        g_b = w(s) (aux(x_s, s) - teacher(x_s, s))                                     (no grad)
        L_G = mean_b (1/D) <x̂0_b, sg(g_b)> - lambda mean_b R(x̂0_b)
        L_aux = mean_b w(s) (1/D) [ ||sg(x̂0) - aux(x_s)||^2 + ||sg(teacher(x_s)) - aux(x_s)||^2 ]

    the MM Algorithm-2 losses with the posterior step replaced by forward diffusion (method.md §b.6).
    """

    def __init__(self, generator: Denoiser, teacher: Denoiser, reward=None, config: BaselineConfig | None = None, *,
                 auxiliary: Denoiser | None = None, sample_shape=None, guidance_scale: float | None = None,
                 weighting: str = "flat", seed: int = 0):
        config = config or BaselineConfig(num_steps=1)
        for n, d in (("generator", generator), ("teacher", teacher)):
            if not isinstance(d, Denoiser):
                raise TypeError(f"{n} must be a rmmd_core.Denoiser, got {type(d).__name__}")
        if sample_shape is None:
            raise ValueError("DIpp samples from noise: pass sample_shape=(C, H, W) or (D,)")
        if weighting not in ("flat", "snr"):
            raise ValueError(f"weighting must be 'flat' or 'snr', got {weighting!r}")
        super().__init__(generator, config, seed)
        self.generator_net = generator
        self.teacher = teacher.requires_grad_(False).eval()
        self.auxiliary = auxiliary if auxiliary is not None else teacher.trainable_copy()
        self.aux_optimizer = torch.optim.Adam([p for p in self.auxiliary.parameters() if p.requires_grad],
                                              lr=config.lr, betas=tuple(config.betas), eps=1e-12)
        self.reward = as_reward(reward)
        if self.reward is not None and self.reward.multi_sample:
            raise ValueError("multi-sample rewards are supported by RMMD only, not by DI++")
        if config.reward_weight > 0 and self.reward is None:
            raise ValueError("reward_weight > 0 needs a reward")
        self.sample_shape = tuple(sample_shape)
        self.guidance_scale, self.weighting = guidance_scale, weighting
        self.name = "DI++"

    def step(self, batch_size: int, cond: Cond = None) -> dict:
        cfg, sch, g = self.config, self.generator_net.schedule, self.generator
        B, dev = batch_size, self.device
        z = prior_sample(sch, (B, *self.sample_shape), device=dev, generator=g)
        one = torch.ones(B, dtype=torch.float64, device=dev)
        x0 = self.generator_net(z, one, cond)
        x0d = x0.detach()
        view = (B,) + (1,) * len(self.sample_shape)
        with torch.no_grad():
            s = torch.rand(B, generator=g, dtype=torch.float64, device=dev).clamp(max(sch.t_min, 1e-3), sch.t_max)
            a_s, s_s = sch.alpha_sigma(s)
            x_s = a_s.to(x0d.dtype).view(view) * x0d + s_s.to(x0d.dtype).view(view) * torch.randn(
                x0d.shape, generator=g, device=dev, dtype=x0d.dtype)
            m_ref = self.teacher(x_s, s, cond, guidance_scale=self.guidance_scale)
            w = (torch.ones_like(s) if self.weighting == "flat" else sch.log_snr(s).exp()).to(x0d.dtype).view(view)
        aux = self.auxiliary(x_s, s, cond)
        g_mm = w * (aux.detach() - m_ref)
        surrogate = (x0 * g_mm).flatten(1).mean(1)
        loss = surrogate.mean()
        r = None
        if self.reward is not None:
            if cfg.reward_weight > 0:
                r = reward_value(self.reward, x0, cond)
            else:  # monitored only: no graph through a reward network's parameters
                with torch.no_grad():
                    r = self.reward(x0d, cond)
            if cfg.reward_weight > 0:
                loss = loss - cfg.reward_weight * r.mean()
        aux_loss = (w * ((x0d - aux) ** 2 + (m_ref - aux) ** 2)).flatten(1).mean(1).mean()
        m = {"mm_surrogate": float(surrogate.detach().mean()), "aux_loss": float(aux_loss.detach()),
             "reward_mean": float(r.detach().mean()) if r is not None else float("nan"), "grad_calls": 1,
             "s_mean": float(s.mean())}
        m.update(self._update(loss))
        norm_aux, skipped_aux = apply_update(aux_loss, self.auxiliary, self.aux_optimizer, cfg.grad_clip)
        m.update(grad_norm_aux=norm_aux, skipped_aux=float(skipped_aux))
        return m

    @property
    def model(self) -> Denoiser:
        return self.ema if self.ema is not None else self.generator_net


class ConvNoiseNet(nn.Module):
    """Default HyperNoise network for images ``(B, C, H, W)``: ``f(eps) = conv(silu(conv(silu(conv(eps)))))``
    with a zero-initialised last layer, so ``eps' = eps + f(eps)`` starts as the identity."""

    def __init__(self, channels: int, width: int = 32):
        super().__init__()
        self.body = nn.Sequential(nn.Conv2d(channels, width, 3, padding=1), nn.SiLU(),
                                  nn.Conv2d(width, width, 3, padding=1), nn.SiLU(),
                                  nn.Conv2d(width, channels, 3, padding=1))
        nn.init.zeros_(self.body[-1].weight)
        nn.init.zeros_(self.body[-1].bias)

    def forward(self, eps: torch.Tensor) -> torch.Tensor:
        return self.body(eps)


class MLPNoiseNet(nn.Module):
    """Default HyperNoise network for vectors ``(B, D)``; zero-initialised output layer."""

    def __init__(self, dim: int, width: int = 64):
        super().__init__()
        self.body = nn.Sequential(nn.Linear(dim, width), nn.SiLU(), nn.Linear(width, width), nn.SiLU(),
                                  nn.Linear(width, dim))
        nn.init.zeros_(self.body[-1].weight)
        nn.init.zeros_(self.body[-1].bias)

    def forward(self, eps: torch.Tensor) -> torch.Tensor:
        return self.body(eps)


class HyperNoise(_Trained):
    """Noise hypernetwork over a frozen K-step student (method.md §d.3).

    Args:
        student: the (distilled) :class:`Denoiser`; a frozen copy is used, the original is untouched.
        reward: as for :class:`DRaFT`. config: ``reward_weight`` = lambda, ``anchor_weight`` = kappa,
            ``num_steps`` = the student's K.
        noise_net: ``f_phi``; default :class:`ConvNoiseNet` (images) or :class:`MLPNoiseNet` (vectors).

    Loss ``L = -lambda mean_b R(G(eps_b + f(eps_b))) + kappa mean(f(eps)^2)`` where G is the frozen
    K-step sampler; gradients flow through all K student calls into phi (the student's weights get no
    gradient). Sample with :meth:`sample`.

    Use a deterministic sampler (``config.eta = 0``, the default here): with the ancestral step
    (eta = 1) on a VP schedule, the first posterior step from t = 1 has ``A = 0`` (alpha_1 = 0), so the
    sample does not depend on the initial noise at all and the noise network gets no gradient.
    """

    def __init__(self, student: Denoiser, reward, config: BaselineConfig | None = None, *,
                 noise_net: nn.Module | None = None, sample_shape=None, seed: int = 0):
        config = config or BaselineConfig(anchor_weight=0.01, eta=0.0)
        if not isinstance(student, Denoiser):
            raise TypeError(f"student must be a rmmd_core.Denoiser, got {type(student).__name__}")
        if sample_shape is None:
            raise ValueError("HyperNoise samples from noise: pass sample_shape=(C, H, W) or (D,)")
        shape = tuple(sample_shape)
        if noise_net is None:
            noise_net = ConvNoiseNet(shape[0]) if len(shape) == 3 else MLPNoiseNet(int(torch.Size(shape).numel()))
        dev = next((p.device for p in student.parameters()), torch.device("cpu"))
        noise_net = noise_net.to(dev)
        super().__init__(noise_net, config, seed)
        self.noise_net = noise_net
        self.student = student.frozen_copy()
        self.reward = _check_reward(reward)
        self.sample_shape = shape
        self.name = "HyperNoise"

    def _run(self, eps: torch.Tensor, net: nn.Module, cond: Cond, g: torch.Generator):
        f = net(eps.view(eps.shape[0], -1) if isinstance(net, MLPNoiseNet) and eps.dim() > 2 else eps).view_as(eps)
        z = (eps + f) * self.student.schedule.prior_std
        grid = time_grid(self.config.num_steps, self.student.schedule)
        x0, _, _ = rollout(self.student, z, grid, cond, eta=self.config.eta, generator=g)
        return x0, f

    def step(self, batch_size: int, cond: Cond = None) -> dict:
        cfg, g = self.config, self.generator
        eps = torch.randn((batch_size, *self.sample_shape), generator=g, device=self.device)
        calls0 = self.student.calls
        x0, f = self._run(eps, self.noise_net, cond, g)
        r = reward_value(self.reward, x0, cond)
        pen = (f ** 2).mean()
        loss = -cfg.reward_weight * r.mean() + cfg.anchor_weight * pen
        m = {"reward_mean": float(r.detach().mean()), "noise_penalty": float(pen.detach()),
             "loss": float(loss.detach()), "grad_calls": self.student.calls - calls0}
        m.update(self._update(loss))
        return m

    @torch.no_grad()
    def sample(self, n: int, cond: Cond = None, generator: torch.Generator | None = None,
               use_ema: bool = True) -> torch.Tensor:
        """``n`` samples ``(n, *sample_shape)`` of the tilted sampler G(eps + f(eps))."""
        net = self.ema if (use_ema and self.ema is not None) else self.noise_net
        eps = torch.randn((n, *self.sample_shape), generator=generator, device=self.device)
        return self._run(eps, net, cond, generator)[0]


def mm_then_draft(engine: RMMD, data_batches, reward, config: BaselineConfig | None = None, *,
                  draft_steps: int, grad_steps: int = 1, lv_samples: int = 0, batch_size: int = 32,
                  cond: Cond = None, on_step=None) -> DRaFT:
    """Two-stage baseline: plain MM on ``engine`` over ``data_batches`` (an iterable of clean batches,
    MM Algorithm 2 off-policy; ``engine`` must have ``reward_weight = 0``), then ``draft_steps`` of
    DRaFT-K / DRaFT-LV on a trainable copy of the distilled student (the EMA when kept).
    ``on_step(stage, metrics)`` is called after every iteration. Returns the :class:`DRaFT` run.
    """
    from .step import step as rmmd_step

    if engine.config.reward_weight != 0:
        raise ValueError("mm_then_draft: stage 1 is plain MM, so the engine's reward_weight must be 0")
    for x in data_batches:
        m = rmmd_step(engine, data=x, cond=repeat_cond(cond, 1) if cond is not None else None)
        if on_step:
            on_step("mm", m)
    start = (engine.ema if engine.ema is not None else engine.student).trainable_copy()
    config = config or BaselineConfig(num_steps=engine.config.num_steps)
    run = DRaFT(start, reward, config, grad_steps=grad_steps, lv_samples=lv_samples,
                sample_shape=engine.sample_shape)
    for _ in range(draft_steps):
        m = run.step(batch_size, cond)
        if on_step:
            on_step("draft", m)
    return run
