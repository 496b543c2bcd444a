"""A complete two-phase run on the built-in 2-D task (used by ``rmmd demo`` and the end-to-end test).

teacher  = exact E[x | z_t] of an 8-mode ring mixture (analytic, no training)
student  = MLP regressed onto the teacher ("starts as a copy of the teacher")
phase 1  = MM (Algorithm 2) to K steps; phase 2 = RMMD with a reward pushing mass to +x
"""
from __future__ import annotations

import time
from dataclasses import dataclass

import torch

from .config import RMMDConfig
from .denoiser import Denoiser
from .engine import RMMD
from .metrics import sliced_wasserstein
from .sampler import sample
from .step import step
from .toy import GaussianMixture, MLPNet, analytic_teacher, fit_denoiser, tilted_grid_samples


def reward_right(x: torch.Tensor, cond=None) -> torch.Tensor:
    """R(x) = x_1: rewards mass on the right half of the ring (differentiable, per sample)."""
    return x[:, 0]


@dataclass
class ToyRunResult:
    rows: list           # one dict per evaluated model: name, nfe, sw_teacher, sw_tilted, reward
    seconds: float
    history: list        # per-iteration metrics of both phases


def run_toy(*, num_steps: int = 4, fit_steps: int = 1500, mm_steps: int = 400, rmmd_steps: int = 300,
            batch: int = 256, reward_weight: float = 0.05, n_eval: int = 4000, seed: int = 0,
            lr: float = 3e-4, config: dict | None = None, mm_from_data: bool = True, log=None) -> ToyRunResult:
    """Run fit -> MM -> RMMD on the 2-D ring and evaluate each stage.

    ``config``: extra :class:`RMMDConfig` fields for both phases; ``mm_from_data``: phase 1 off-policy
    from mixture samples (else data-free from rollouts); ``log(str)`` receives progress.
    """
    t0 = time.perf_counter()
    say = log or (lambda msg: None)
    torch.manual_seed(seed)
    g = torch.Generator().manual_seed(seed)
    mix = GaussianMixture.ring()
    teacher = analytic_teacher(mix, "vp_cosine")
    init = Denoiser(MLPNet(2, hidden=128, depth=3), teacher.schedule, prediction="x0")
    say(f"fitting the MLP student to the analytic teacher ({fit_steps} steps)")
    fit_denoiser(init, teacher, lambda n: mix.sample(n, g), steps=fit_steps, generator=g)

    def evaluate(name: str, den: Denoiser, k: int) -> dict:
        ge = torch.Generator().manual_seed(seed + 1)
        res = sample(den, (n_eval, 2), num_steps=k, generator=ge)
        ref = mix.sample(n_eval, ge)
        tilt = tilted_grid_samples(mix, reward_right, beta_tilt, n_eval, generator=ge)
        return {"name": name, "nfe": res.nfe, "sw_teacher": sliced_wasserstein(res.x0, ref, generator=ge),
                "sw_tilted": sliced_wasserstein(res.x0, tilt, generator=ge),
                "reward": float(reward_right(res.x0).mean())}

    # beta of the tilted reference: under flat w and per-element means, beta = (∫ w ds)/(lambda D) (§c.3)
    beta_tilt = 1.0 / (reward_weight * 2)
    rows = [evaluate("teacher (100 steps)", teacher, 100), evaluate(f"initial student ({num_steps} steps)", init, num_steps)]

    cfg = RMMDConfig(**{"num_steps": num_steps, "lr": lr, "ema_decay": 0.99, **(config or {})})
    eng = RMMD(teacher, init.trainable_copy(), init.trainable_copy(), config=cfg, sample_shape=(2,), seed=seed)
    history = []
    src = "off-policy from data" if mm_from_data else f"data-free, {cfg.variant} rollouts"
    say(f"phase 1: MM to {num_steps} steps ({mm_steps} iterations, {src})")
    for i in range(mm_steps):
        history.append(step(eng, data=mix.sample(batch, g)) if mm_from_data else step(eng, batch_size=batch))
    rows.append(evaluate(f"MM student ({num_steps} steps)", eng.ema or eng.student, num_steps))
    if rmmd_steps == 0:
        return ToyRunResult(rows=rows, seconds=time.perf_counter() - t0, history=history)

    say(f"phase 2: RMMD, lambda={reward_weight} ({rmmd_steps} iterations, on-policy)")
    eng.start_phase2(reward=reward_right, reward_weight=reward_weight)
    for i in range(rmmd_steps):
        history.append(step(eng, batch_size=batch))
    rows.append(evaluate(f"RMMD student ({num_steps} steps)", eng.ema or eng.student, num_steps))
    return ToyRunResult(rows=rows, seconds=time.perf_counter() - t0, history=history)


def format_rows(rows: list) -> str:
    head = "| model | NFE | SW to teacher | SW to tilted optimum | mean reward |\n|---|---|---|---|---|"
    body = "\n".join(f"| {r['name']} | {r['nfe']} | {r['sw_teacher']:.4f} | {r['sw_tilted']:.4f} | {r['reward']:+.4f} |"
                     for r in rows)
    return head + "\n" + body
