"""One interface over RMMD and the baselines, for the demo and the Pareto sweeps.

A *run* is one method at one reward weight lambda, started from a shared starting point:

=================  =========================================================  ====================
method             starts from                                                trained by
=================  =========================================================  ====================
``rmmd``           phase-1 MM student + auxiliary (anchor = MM student)        :func:`rmmd_core.step`
``draft1``         phase-1 MM student (two-stage "MM then DRaFT-1")            :class:`DRaFT` K = 1
``draft2``         phase-1 MM student ("MM then DRaFT-2")                      :class:`DRaFT` K = 2
``draftlv``        phase-1 MM student ("MM then DRaFT-LV", n = 2)              :class:`DRaFT` LV
``dipp``           one-step DI generator + its auxiliary                       :class:`DIpp`
``hypernoise``     frozen phase-1 MM student, deterministic sampler (eta = 0)  :class:`HyperNoise`
=================  =========================================================  ====================

Plain MM is the lambda = 0 point shared by every multi-step method; DI (DI++ at lambda = 0) is the
one-step method's. Every run exposes ``step(batch) -> metrics`` and ``sample(n, generator) -> x0``.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from .baselines import BaselineConfig, DIpp, DRaFT, HyperNoise
from .config import RMMDConfig
from .denoiser import Denoiser
from .engine import RMMD
from .sampler import sample
from .step import step as rmmd_step

METHODS = ("rmmd", "draft1", "draft2", "draftlv", "dipp", "hypernoise")
LABELS = {"mm": "MM (lambda=0)", "di": "DI (one step, lambda=0)", "rmmd": "RMMD", "draft1": "MM→DRaFT-1",
          "draft2": "MM→DRaFT-2", "draftlv": "MM→DRaFT-LV(n=2)", "dipp": "DI++ (one step)",
          "hypernoise": "HyperNoise"}


def check_methods(names) -> list[str]:
    bad = [n for n in names if n not in METHODS]
    if bad:
        raise ValueError(f"unknown method(s) {bad}; valid: {list(METHODS)}")
    return list(names)


@dataclass
class StartPoint:
    """What phase 1 produced: the MM student / auxiliary (K steps) and the one-step DI generator / auxiliary."""
    teacher: Denoiser
    mm_student: Denoiser
    mm_aux: Denoiser
    di_generator: Denoiser | None
    di_aux: Denoiser | None
    num_steps: int
    sample_shape: tuple


@dataclass(frozen=True)
class TrainSettings:
    """Shared optimiser settings (every method gets the same lr, clipping and EMA decay)."""
    lr: float = 2e-4
    ema_decay: float = 0.98
    grad_clip: float = 1.0
    draft_anchor: float = 1.0       # DRaFT's L2 anchor weight (fixed; lambda is swept)
    hypernoise_kappa: float = 0.01  # HyperNoise's kappa (fixed; lambda is swept)


class Run:
    """A method at one lambda. ``step(batch)`` trains one iteration; ``sample(n, g)`` draws from the
    current (EMA) model; ``nfe`` is network evaluations per sample."""

    def __init__(self, method: str, lam: float, start: StartPoint, reward, settings: TrainSettings, seed: int = 0):
        check_methods([method])
        self.method, self.lam, self.start, self.seed = method, float(lam), start, seed
        K, shape, s = start.num_steps, start.sample_shape, settings
        bc = BaselineConfig(num_steps=K, reward_weight=lam, anchor_weight=s.draft_anchor, lr=s.lr,
                            grad_clip=s.grad_clip, ema_decay=s.ema_decay)
        self.eta, self.nfe = 1.0, K
        if method == "rmmd":
            cfg = RMMDConfig(num_steps=K, lr=s.lr, ema_decay=s.ema_decay, grad_clip=s.grad_clip)
            self.impl = RMMD(start.teacher, start.mm_student.trainable_copy(), start.mm_aux.trainable_copy(),
                             config=cfg, sample_shape=shape, seed=seed)
            self.impl.start_phase2(reward=reward, reward_weight=lam)
        elif method in ("draft1", "draft2", "draftlv"):
            k, lv = {"draft1": (1, 0), "draft2": (2, 0), "draftlv": (1, 2)}[method]
            self.impl = DRaFT(start.mm_student.trainable_copy(), reward, bc, grad_steps=k, lv_samples=lv,
                              sample_shape=shape, seed=seed)
        elif method == "dipp":
            if start.di_generator is None:
                raise ValueError("method 'dipp' needs the one-step DI generator from phase 1")
            self.impl = DIpp(start.di_generator.trainable_copy(), start.teacher, reward,
                             bc.replace(num_steps=1), auxiliary=start.di_aux.trainable_copy(), sample_shape=shape,
                             seed=seed)
            self.nfe = 1
        else:  # hypernoise
            self.impl = HyperNoise(start.mm_student, reward,
                                   bc.replace(anchor_weight=s.hypernoise_kappa, eta=0.0), sample_shape=shape, seed=seed)
            self.eta = 0.0

    def step(self, batch: int) -> dict:
        if self.method == "rmmd":
            return rmmd_step(self.impl, batch_size=batch)
        return self.impl.step(batch)

    @torch.no_grad()
    def sample(self, n: int, generator: torch.Generator) -> torch.Tensor:
        if self.method == "hypernoise":
            return self.impl.sample(n, generator=generator)
        model = self.impl.ema if self.method == "rmmd" else self.impl.model
        return sample(model, (n, *self.start.sample_shape), num_steps=self.nfe, eta=self.eta,
                      generator=generator).x0
