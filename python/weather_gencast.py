"""GenCast-style weather recipe on stochastic Lorenz-96: teacher -> MM (8 steps) -> RMMD with a CRPS reward.

The RMMD paper's weather result (method.md §c.7, §f.2): a conditional EDM-style GenCast teacher is
distilled to an 8-step student (7.5x fewer network evaluations); phase 2 adds the reward R = -CRPS of
M = 2 student samples against the verifying state and beats the teacher on 93% of targets with better
calibration. This script reproduces that pipeline's *shape* on a system a CPU can simulate, using only
rmmd_core's public API:

* data: one-scale Lorenz-96 (K = 40, F = 8) with additive AR(1) red-noise forcing (the project's own
  RK4 integrator, ``rmmd_core.tasks.lorenz96``), states every 0.2 time units; train / validation / test
  trajectories from independent seeds;
* teacher: EDM-preconditioned circular 1-D conv net predicting the normalised residual
  ``(X^{t+1} - X^t - mu_d)/sd_d`` given the normalised previous two states ``(X^{t-1}, X^t)`` (the GenCast
  set-up), trained with EDM denoising loss, sampled ancestrally with many steps;
* phase 1: MM (Algorithm 2, off-policy from data) to an 8-step DDIM(eta) student;
* phase 2: RMMD with ``CRPSReward`` over M = 2 samples, the target passed as ``reward_kwargs`` (it reaches
  the reward, never a network), off-policy (forward-diffused true residuals) and on-policy (data-free
  student rollouts) from the same phase-1 student;
* evaluation: autoregressive ensemble rollouts from held-out initial conditions; fair CRPS per variable
  and lead, win rate, mean relative CRPS change, spread/skill ratio, NFE speed-up; markdown report,
  metrics JSON and PNG plots.

Usage:
    python python/weather_gencast.py --out benchmarks/results/weather-$(date +%F)   # full: 8-10 min, 1 thread
    python python/weather_gencast.py --quick --out /tmp/weather-quick                  # ~15 s, pipeline check
    --teacher-ckpt PATH   reuse (or create) the teacher checkpoint
    --set FIELD=VALUE     override Settings (e.g. threads=2 on an idle machine, reward_weight=0.3)

Deterministic on CPU with one thread: the same command reproduces the same tables.
"""
from __future__ import annotations

import argparse
import copy
import json
import math
import os
import sys
import time
from dataclasses import asdict, dataclass, replace

import torch
from torch import nn

import rmmd_core
from rmmd_core import RMMD, Denoiser, RMMDConfig, sample
from rmmd_core.ops.crps_reference import crps_fair_ref, forecast_stats_ref
from rmmd_core.rewards import CRPSReward
from rmmd_core.schedules import EDM
from rmmd_core.tasks.lorenz96 import Lorenz96


# ----------------------------------------------------------------------------------------------- settings
@dataclass(frozen=True)
class Settings:
    seed: int = 0
    test_seed: int = 1   # test trajectories' own seed; the development runs that chose lambda used test_seed 0
    threads: int = 1   # measured: at load ~7 on 2 cores, 2 intra-op threads made teacher training 11x slower
    # simulator (see the report for the choice)
    K: int = 40
    F: float = 8.0
    noise_std: float = 4.0
    noise_tau: float = 0.5
    interval: float = 0.2
    n_train_traj: int = 64
    n_val_traj: int = 8
    n_test_traj: int = 128
    traj_len: int = 200
    test_len: int = 30
    # network
    channels: int = 32
    blocks: int = 2
    # schedule: EDM with sigma_data = 1 (residuals are normalised); sigma_max 20 >> 1 is already pure noise
    sigma_min: float = 0.02
    sigma_max: float = 20.0
    # teacher
    teacher_iters: int = 1500
    teacher_batch: int = 128
    teacher_lr: float = 2e-3
    teacher_steps: int = 60          # ancestral sampler steps = NFE per forecast step
    # students
    student_steps: int = 8
    student_eta: float = 0.5         # DDIM(eta = 0.5), the paper's best MM setting
    mm_iters: int = 1000
    mm_batch: int = 64
    mm_lr: float = 1e-4
    rmmd_iters: int = 300
    rmmd_batch: int = 64
    rmmd_lr: float = 3e-5
    reward_weight: float = 0.1       # lambda (the paper: 0.3); anchor lambda/2
    members_train: int = 2           # M of the CRPS reward
    ema_decay: float = 0.99
    # evaluation
    eval_ics: int = 256
    eval_offsets: tuple = (0, 20)   # initial conditions per test trajectory (4 time units apart)
    eval_members: int = 8
    leads: tuple = (1, 2, 3, 4, 6, 8)

    @property
    def max_lead(self) -> int:
        return max(self.leads)


QUICK = dict(n_train_traj=8, n_val_traj=2, n_test_traj=8, traj_len=60, test_len=12, eval_offsets=(0,), channels=16, blocks=2,
             teacher_iters=60, teacher_batch=64, teacher_steps=12, mm_iters=12, mm_batch=32, rmmd_iters=6,
             rmmd_batch=16, eval_ics=8, eval_members=4, leads=(1, 2, 4))


def log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", flush=True)


# ----------------------------------------------------------------------------------------------- data
@dataclass
class Data:
    """Pairs for training: ``prev (N, 2, K)`` raw states (X^{t-1}, X^t), ``prev_n`` the same normalised
    (the network input), ``res (N, K)`` normalised residual (the diffusion target)."""
    prev: torch.Tensor
    prev_n: torch.Tensor
    res: torch.Tensor


class Normaliser:
    """GenCast's InputsAndResiduals analogue: inputs by (mean, std) of X, targets by (mean, std) of dX.
    L96 is translation invariant, so one scalar pair per quantity (all 40 variables are one 'level')."""

    def __init__(self, traj: torch.Tensor):
        d = traj[:, 1:] - traj[:, :-1]
        self.mx, self.sx = float(traj.mean()), float(traj.std())
        self.md, self.sd = float(d.mean()), float(d.std())

    def inputs(self, prev: torch.Tensor) -> torch.Tensor:
        return ((prev - self.mx) / self.sx).float()

    def residual(self, prev: torch.Tensor, nxt: torch.Tensor) -> torch.Tensor:
        return ((nxt - prev[:, -1] - self.md) / self.sd).float()

    def next_state(self, prev: torch.Tensor, res: torch.Tensor) -> torch.Tensor:
        return prev[:, -1] + res.double() * self.sd + self.md


def pairs(traj: torch.Tensor, norm: Normaliser) -> Data:
    """All (X^{t-1}, X^t) -> X^{t+1} triples of ``traj (n, L, K)``."""
    prev = torch.stack([traj[:, :-2], traj[:, 1:-1]], 2).reshape(-1, 2, traj.shape[-1])
    nxt = traj[:, 2:].reshape(-1, traj.shape[-1])
    return Data(prev=prev, prev_n=norm.inputs(prev), res=norm.residual(prev, nxt))


def simulate(s: Settings):
    model = Lorenz96(K=s.K, F=s.F, noise_std=s.noise_std, noise_tau=s.noise_tau)
    sets = {}
    for i, (name, n, L) in enumerate((("train", s.n_train_traj, s.traj_len), ("val", s.n_val_traj, s.traj_len),
                                      ("test", s.n_test_traj, s.test_len))):
        # independent seeds per split; the test split also depends on test_seed (fresh held-out cases)
        g = torch.Generator().manual_seed(1000 * (s.seed + 1) + i + (100 * s.test_seed if name == "test" else 0))
        sets[name] = model.trajectories(n, L, interval=s.interval, generator=g)
    return model, sets


# ----------------------------------------------------------------------------------------------- network
class CircularConvNet(nn.Module):
    """EDM ``F_theta(c_in z, c_noise; prev)`` on the ring of K variables: circular 1-D convs with FiLM time
    conditioning. Locality + translation equivariance are L96's own symmetries (its tendency reaches
    k-2..k+1). z: ``(B, K)``, c_noise: ``(B,)``, prev: ``(B, 2, K)`` normalised (X^{t-1}, X^t)."""

    def __init__(self, channels: int = 48, blocks: int = 4, kernel: int = 5, n_freq: int = 16):
        super().__init__()
        self.register_buffer("freqs", torch.exp(torch.linspace(0.0, math.log(100.0), n_freq)))
        conv = lambda cin, cout: nn.Conv1d(cin, cout, kernel, padding=kernel // 2, padding_mode="circular")  # noqa: E731
        self.inp = conv(3, channels)
        self.emb = nn.Sequential(nn.Linear(2 * n_freq, 128), nn.SiLU(), nn.Linear(128, 128), nn.SiLU())
        self.film = nn.ModuleList(nn.Linear(128, 2 * channels) for _ in range(blocks))
        self.c1 = nn.ModuleList(conv(channels, channels) for _ in range(blocks))
        self.c2 = nn.ModuleList(conv(channels, channels) for _ in range(blocks))
        self.norm = nn.ModuleList(nn.GroupNorm(8 if channels % 8 == 0 else 1, channels) for _ in range(blocks))
        self.out = conv(channels, 1)
        nn.init.zeros_(self.out.weight)
        nn.init.zeros_(self.out.bias)

    def forward(self, z: torch.Tensor, c_noise: torch.Tensor, prev: torch.Tensor) -> torch.Tensor:
        f = c_noise.to(z.dtype).view(-1, 1) * self.freqs.to(z.dtype)
        e = self.emb(torch.cat([f.sin(), f.cos()], 1))
        h = self.inp(torch.cat([z.unsqueeze(1), prev.to(z.dtype)], 1))
        for film, c1, c2, nm in zip(self.film, self.c1, self.c2, self.norm):
            sc, sh = film(e).unsqueeze(-1).chunk(2, 1)
            u = nn.functional.silu(nm(h) * (1 + sc) + sh)
            h = h + c2(nn.functional.silu(c1(u)))
        return self.out(h).squeeze(1)


def make_denoiser(s: Settings) -> Denoiser:
    sch = EDM(sigma_min=s.sigma_min, sigma_max=s.sigma_max, rho=7.0, sigma_data=1.0)
    return Denoiser(CircularConvNet(s.channels, s.blocks), sch, prediction="edm")


def train_teacher(s: Settings, den: Denoiser, train: Data, val: Data, g: torch.Generator) -> dict:
    """EDM denoising: ln sigma ~ N(-0.5, 1.2^2) (EDM's P_mean shifted by ln 2 for sigma_data = 1), loss
    weight 1/c_out^2 = (sigma^2 + 1)/sigma^2, cosine learning rate. Returns the validation loss."""
    sch = den.schedule
    opt = torch.optim.Adam(den.parameters(), lr=s.teacher_lr)
    lr_sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=s.teacher_lr, total_steps=s.teacher_iters,
                                                   pct_start=0.05)
    n = train.res.shape[0]

    def loss_on(x, prev, gen):
        sig = (torch.randn(x.shape[0], generator=gen, dtype=torch.float64) * 1.2 - 0.5).exp()
        sig = sig.clamp(s.sigma_min, s.sigma_max)
        t = sch.t_from_sigma_ve(sig)
        z = x + sig.float().view(-1, 1) * torch.randn(x.shape, generator=gen)
        w = ((sig ** 2 + 1) / sig ** 2).float()
        return (w.view(-1, 1) * (den(z, t, {"prev": prev}) - x) ** 2).mean()

    den.train()
    t0, hist = time.perf_counter(), []
    for it in range(s.teacher_iters):
        idx = torch.randint(0, n, (s.teacher_batch,), generator=g)
        loss = loss_on(train.res[idx], train.prev_n[idx], g)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(den.parameters(), 1.0)
        opt.step()
        lr_sched.step()
        hist.append(float(loss.detach()))
        if (it + 1) % max(1, s.teacher_iters // 10) == 0:
            log(f"teacher it {it + 1}/{s.teacher_iters} loss {sum(hist[-50:]) / len(hist[-50:]):.4f} "
                f"({time.perf_counter() - t0:.0f}s)")
    den.eval()
    gv = torch.Generator().manual_seed(123)
    with torch.no_grad():
        vl = sum(float(loss_on(val.res[i:i + 512], val.prev_n[i:i + 512], gv)) for i in range(0, val.res.shape[0], 512))
    return {"teacher_train_loss_last": sum(hist[-50:]) / len(hist[-50:]),
            "teacher_val_loss": vl / math.ceil(val.res.shape[0] / 512), "teacher_seconds": time.perf_counter() - t0}


# ----------------------------------------------------------------------------------------------- distillation
def make_engine(s: Settings, teacher: Denoiser) -> RMMD:
    cfg = RMMDConfig(num_steps=s.student_steps, eta=s.student_eta, num_samples=1, lr=s.mm_lr,
                     ema_decay=s.ema_decay, grad_clip=1.0)
    return RMMD(teacher, config=cfg, sample_shape=(s.K,), seed=s.seed)


def batch(d: Data, n: int, g: torch.Generator):
    idx = torch.randint(0, d.res.shape[0], (n,), generator=g)
    return d.res[idx], {"prev": d.prev_n[idx]}


def run_phase(eng: RMMD, d: Data, iters: int, bsz: int, g: torch.Generator, *, off_policy: bool, reward: bool,
              name: str) -> list:
    hist, t0 = [], time.perf_counter()
    for it in range(iters):
        res, cond = batch(d, bsz, g)
        kw = {"reward_kwargs": {"target": res}} if reward else {}
        m = rmmd_core.step(eng, data=res if off_policy else None, cond=cond, **kw)
        hist.append({k: m[k] for k in ("mm_surrogate", "reward_mean", "aux_loss", "grad_norm", "nfe")})
        if (it + 1) % max(1, iters // 5) == 0:
            rm = [h["reward_mean"] for h in hist[-20:]]
            log(f"{name} it {it + 1}/{iters} mm {m['mm_surrogate']:+.4f} reward(-CRPS) {sum(rm) / len(rm):+.4f} "
                f"aux {m['aux_loss']:.4f} ({time.perf_counter() - t0:.0f}s)")
    return hist


# ----------------------------------------------------------------------------------------------- evaluation
@torch.no_grad()
def forecast(den: Denoiser, prev: torch.Tensor, norm: Normaliser, s: Settings, steps: int, eta: float,
             seed: int) -> tuple[torch.Tensor, int]:
    """Autoregressive ensemble: ``prev (B, 2, K)`` raw -> ``(M, B, max_lead, K)`` raw states, NFE per step."""
    g = torch.Generator().manual_seed(seed)
    M, B = s.eval_members, prev.shape[0]
    hist = prev.repeat(M, 1, 1)                               # member-major rows m*B + b
    out, nfe = [], None
    for _ in range(s.max_lead):
        r = sample(den, (M * B, s.K), num_steps=steps, cond={"prev": norm.inputs(hist)}, eta=eta, generator=g)
        nfe = r.nfe
        nxt = norm.next_state(hist, r.x0)
        out.append(nxt)
        hist = torch.stack([hist[:, 1], nxt], 1)
    return torch.stack(out, 1).view(M, B, s.max_lead, s.K), nfe


def score(ens: torch.Tensor, truth: torch.Tensor, s: Settings) -> dict:
    """Per lead: CRPS per variable (K,), mean CRPS, spread/skill ratio (pooled over variables), RMSE."""
    out = {}
    for lead in s.leads:
        st = forecast_stats_ref(ens[:, :, lead - 1], truth[:, lead - 1], variable_dim=1)
        M = st.members
        ssr = math.sqrt((M + 1) / M) * math.sqrt(float(st.var.sum() / st.mse.sum()))
        per_ic = crps_fair_ref(ens[:, :, lead - 1], truth[:, lead - 1], with_grad=False)   # (B,) mean over vars
        out[lead] = {"crps_var": st.crps.tolist(), "crps": float(st.crps.mean()), "ssr": ssr,
                     "rmse": math.sqrt(float(st.mse.sum() / st.weight.sum())), "crps_ic": per_ic}
    return out


def compare(student: dict, teacher: dict, s: Settings) -> dict:
    """Win rate over (variable, lead) targets and mean relative CRPS change (positive = better than teacher)."""
    wins, rel = [], []
    for lead in s.leads:
        for cs, ct in zip(student[lead]["crps_var"], teacher[lead]["crps_var"]):
            wins.append(cs < ct)
            rel.append((ct - cs) / ct)
    # paired uncertainty over initial conditions: D_b = mean_lead (ct_b - cs_b) / mean_b' ct_b' (pooled over
    # variables); its mean is the pooled relative CRPS change, its standard error says what noise allows
    d = torch.stack([(teacher[lead]["crps_ic"] - student[lead]["crps_ic"]).double()
                     / teacher[lead]["crps_ic"].double().mean() for lead in s.leads]).mean(0)
    se = float(d.std() / math.sqrt(d.numel())) if d.numel() > 1 else float("nan")
    return {"win_rate": sum(wins) / len(wins), "crps_improvement": sum(rel) / len(rel), "targets": len(wins),
            "pooled_crps_improvement": float(d.mean()), "pooled_crps_improvement_se": se}


# ----------------------------------------------------------------------------------------------- report
def plots(out: str, results: dict, ens_example: dict, truth_example: torch.Tensor, s: Settings) -> list:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    names = list(results)
    files = []
    x = [lead * s.interval for lead in s.leads]
    # CRPS: absolute (left) and relative change vs the teacher (right; the curves overlap on the left)
    fig, (ax, ax2) = plt.subplots(1, 2, figsize=(9, 3.4), dpi=90)
    for n in names:
        crps = [results[n]["scores"][lead]["crps"] for lead in s.leads]
        ref = [results["teacher"]["scores"][lead]["crps"] for lead in s.leads]
        ax.plot(x, crps, marker="o", ms=3, label=n)
        ax2.plot(x, [100 * (r - c) / r for c, r in zip(crps, ref)], marker="o", ms=3, label=n)
    ax.set_ylabel("CRPS (mean over variables)")
    ax2.set_ylabel("CRPS improvement vs teacher (%)")
    ax2.axhline(0.0, color="k", lw=0.8, ls="--")
    for a_ in (ax, ax2):
        a_.set_xlabel("lead time (L96 time units)")
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(os.path.join(out, "crps_vs_lead.png"))
    plt.close(fig)
    files.append("crps_vs_lead.png")
    fig, ax = plt.subplots(figsize=(5, 3.4), dpi=90)
    for n in names:
        ax.plot(x, [results[n]["scores"][lead]["ssr"] for lead in s.leads], marker="o", ms=3, label=n)
    ax.axhline(1.0, color="k", lw=0.8, ls="--")
    ax.set_xlabel("lead time (L96 time units)")
    ax.set_ylabel("spread / skill ratio")
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(os.path.join(out, "ssr_vs_lead.png"))
    plt.close(fig)
    files.append("ssr_vs_lead.png")
    fig, axes = plt.subplots(1, len(ens_example), figsize=(3.2 * len(ens_example), 3.0), dpi=80, sharey=True)
    leads = [i * s.interval for i in range(truth_example.shape[0])]  # lead 0 = the initial state X^t
    for ax, (n, e) in zip(axes, ens_example.items()):
        for m in range(e.shape[0]):
            ax.plot(leads, [float(truth_example[0])] + e[m].tolist(), color="C0", lw=0.7, alpha=0.6)
        ax.plot(leads, truth_example.tolist(), color="k", lw=1.6, label="truth")
        ax.set_title(n, fontsize=8)
        ax.set_xlabel("lead time")
    axes[0].set_ylabel("X_0")
    axes[0].legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(os.path.join(out, "ensemble_example.png"))
    plt.close(fig)
    files.append("ensemble_example.png")
    return files


def report_md(s: Settings, results: dict, comps: dict, meta: dict, quick: bool) -> str:
    names = list(results)
    t_nfe = results["teacher"]["nfe"]
    lines = [f"# Weather recipe (GenCast-style RMMD on stochastic Lorenz-96) — {meta['date']}", "",
             f"Mode: **{'quick (pipeline check only)' if quick else 'full'}**. Command: `{meta['command']}`  ",
             f"Wall time {meta['seconds']:.0f} s on {s.threads} CPU threads (machine shared with other jobs; "
             f"load average at start {meta['load_start']}). torch {torch.__version__}, rmmd_core "
             f"{rmmd_core.__version__}. Seconds per stage: "
             + ", ".join(f"{k} {v:.0f}" for k, v in meta["timing"].items()) + ".", "",
             "## Headline (measured here; the paper's GenCast numbers are a reference, not a target)", "",
             "| model | NFE / step | speed-up | CRPS improvement vs teacher | pooled change ± s.e. | win rate | "
             "SSR (mean over leads) |", "|---|---|---|---|---|---|---|"]
    for n in names:
        r = results[n]
        ssr = sum(r["scores"][lead]["ssr"] for lead in s.leads) / len(s.leads)
        if n == "teacher":
            lines.append(f"| {n} ({s.teacher_steps}-step ancestral) | {r['nfe']} | 1.0x | 0% | – | – | {ssr:.3f} |")
        else:
            c = comps[n]
            lines.append(f"| {n} | {r['nfe']} | {t_nfe / r['nfe']:.1f}x | {100 * c['crps_improvement']:+.2f}% | "
                         f"{100 * c['pooled_crps_improvement']:+.2f} ± {100 * c['pooled_crps_improvement_se']:.2f}% | "
                         f"{100 * c['win_rate']:.1f}% | {ssr:.3f} |")
    lines += ["", "Paper (GenCast 1°, ERA5; method.md §f.2): teacher 59 NFE; best MM +0.82% / 75.0% win; RMMD "
              "off-policy +1.11% / 89.2%; RMMD on-policy **+1.51% / 93.0%**, 7.5x fewer NFE, better calibrated.", "",
              f"Win rate = share of the {comps[names[1]]['targets']} (variable x lead) targets with lower CRPS "
              "than the teacher; CRPS improvement = mean over targets of (CRPS_teacher - CRPS_model)/CRPS_teacher. "
              f"Fair CRPS over {s.eval_members} members, {s.eval_ics} held-out initial conditions "
              "(independent test trajectories). Pooled change ± s.e.: the same relative change pooled over "
              "variables, with its standard error from the paired per-initial-condition differences (what the "
              "evaluation noise allows to resolve).", "",
              "## CRPS per lead (mean over the 40 variables)", "",
              "| lead (steps / time) | " + " | ".join(names) + " |", "|---|" + "---|" * len(names)]
    for lead in s.leads:
        lines.append(f"| {lead} / {lead * s.interval:.1f} | " +
                     " | ".join(f"{results[n]['scores'][lead]['crps']:.4f}" for n in names) + " |")
    lines += ["", "## Spread/skill ratio per lead (1 = calibrated; sqrt((M+1)/M) corrected)", "",
              "| lead | " + " | ".join(names) + " |", "|---|" + "---|" * len(names)]
    for lead in s.leads:
        lines.append(f"| {lead} | " + " | ".join(f"{results[n]['scores'][lead]['ssr']:.3f}" for n in names) + " |")
    lines += ["", "## Ensemble-mean RMSE per lead", "", "| lead | " + " | ".join(names) + " |",
              "|---|" + "---|" * len(names)]
    for lead in s.leads:
        lines.append(f"| {lead} | " + " | ".join(f"{results[n]['scores'][lead]['rmse']:.4f}" for n in names) + " |")
    lines += ["", "Plots: `crps_vs_lead.png`, `ssr_vs_lead.png`, `ensemble_example.png` (variable X_0 of one test "
              "case, every member vs the truth). Raw numbers: `metrics.json`.", "",
              "## Set-up", "",
              f"* System: one-scale Lorenz-96, K = {s.K}, F = {s.F}, plus additive AR(1) (Ornstein-Uhlenbeck) "
              f"forcing e_k with stationary std {s.noise_std} and decorrelation time {s.noise_tau}, RK4 with dt = "
              f"0.01 (e held fixed within a step, advanced exactly). States every {s.interval} time units "
              f"(about one 'day' in Lorenz's scaling). The two-scale model was rejected: measured, its fast "
              "variables barely randomise the next slow state (spread 0.03-0.11 vs mean |dX| 0.8-3.1), so the "
              "next-state distribution would be nearly a point mass and calibration meaningless. With the red "
              f"noise the one-step spread given the full state (X, e) is ~{meta['spread_full']:.2f} and given "
              f"X alone ~{meta['spread_x']:.2f}, against a residual std {meta['sd_residual']:.2f}; chaos then "
              "grows it with lead.",
              f"* Data: {s.n_train_traj} train / {s.n_val_traj} validation / {s.n_test_traj} test trajectories "
              f"(independent seeds), {s.traj_len} states each for train/val ({meta['n_train_pairs']} training "
              f"pairs); {s.eval_ics} test initial conditions: the state pairs at offsets "
              f"{s.eval_offsets} of each test trajectory.",
              f"* Networks: circular 1-D conv net ({s.channels} channels, {s.blocks} FiLM residual blocks, "
              f"{meta['params']} parameters), EDM preconditioning (sigma_data = 1), EDM schedule sigma in "
              f"[{s.sigma_min}, {s.sigma_max}], rho = 7; targets are normalised residuals given the two "
              "previous normalised states (method.md §c.7).",
              f"* Teacher: {s.teacher_iters} Adam iterations, batch {s.teacher_batch}, EDM loss; validation loss "
              f"{meta['teacher_val_loss']:.4f}; sampled with {s.teacher_steps} ancestral posterior steps.",
              f"* Phase 1: MM (Algorithm 2, off-policy from data) to {s.student_steps} DDIM(eta = {s.student_eta}) "
              f"steps, {s.mm_iters} iterations, batch {s.mm_batch}, lr {s.mm_lr}, EMA {s.ema_decay}.",
              f"* Phase 2: RMMD from the phase-1 student, reward = -fair CRPS over M = {s.members_train} "
              f"samples vs the true next residual (`CRPSReward`, target via `reward_kwargs`), lambda = "
              f"{s.reward_weight}, anchor lambda/2, {s.rmmd_iters} iterations, batch {s.rmmd_batch}, lr "
              f"{s.rmmd_lr}; off-policy = forward-diffused true residuals, on-policy = data-free 8-step "
              "student rollouts; both conditioned on the previous two states.",
              ]
    return "\n".join(lines) + "\n"


# ----------------------------------------------------------------------------------------------- main
def one_step_spreads(model: Lorenz96, test: torch.Tensor, s: Settings) -> tuple[float, float]:
    """Ensemble spread of the true next state given (X, e) and given X only (e redrawn), 16 members."""
    g = torch.Generator().manual_seed(7)
    x0 = model.initial_state(8, g)
    st, e = model.rk4(x0, 0.01, 1000, generator=g)
    sub = round(s.interval / 0.01)
    a = torch.stack([model.rk4(st, 0.01, sub, forcing=e, generator=g)[0] for _ in range(16)])
    b = torch.stack([model.rk4(st, 0.01, sub, generator=g)[0] for _ in range(16)])
    return float(a.std(0).mean()), float(b.std(0).mean())


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", required=True, help="report folder (created)")
    p.add_argument("--quick", action="store_true", help="tiny run (< 2 min): checks the pipeline, not the result")
    p.add_argument("--teacher-ckpt", default=None, help="load the teacher from here if it exists, else save it")
    p.add_argument("--set", nargs="*", default=[], metavar="FIELD=VALUE", help="override Settings fields")
    a = p.parse_args(argv)
    s = Settings(**QUICK) if a.quick else Settings()
    for kv in a.set:
        k, v = kv.split("=", 1)
        cur = getattr(s, k)
        s = replace(s, **{k: tuple(int(x) for x in v.split(",")) if isinstance(cur, tuple) else type(cur)(v)})
    torch.set_num_threads(s.threads)
    torch.manual_seed(s.seed)
    os.makedirs(a.out, exist_ok=True)
    t_start = time.perf_counter()
    load_start = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    g = torch.Generator().manual_seed(s.seed)

    log("simulating stochastic Lorenz-96")
    model, sets = simulate(s)
    norm = Normaliser(sets["train"])
    train, val = pairs(sets["train"], norm), pairs(sets["val"], norm)
    spread_full, spread_x = one_step_spreads(model, sets["test"], s)

    teacher = make_denoiser(s)
    params = sum(q.numel() for q in teacher.parameters())
    tmeta = {}
    if a.teacher_ckpt and os.path.exists(a.teacher_ckpt):
        ck = torch.load(a.teacher_ckpt, weights_only=True)
        if ck["settings"] != {k: v for k, v in asdict(s).items() if k.startswith(("teacher", "channels", "blocks",
                                                                                   "sigma", "n_train", "traj",
                                                                                   "noise", "seed"))}:
            raise SystemExit(f"{a.teacher_ckpt} was trained with other settings; delete it or change --teacher-ckpt")
        teacher.net.load_state_dict(ck["net"])
        tmeta = ck["meta"]
        log(f"loaded teacher from {a.teacher_ckpt}")
    else:
        log(f"training the teacher ({params} parameters, {len(train.res)} pairs)")
        tmeta = train_teacher(s, teacher, train, val, g)
        if a.teacher_ckpt:
            key = {k: v for k, v in asdict(s).items() if k.startswith(("teacher", "channels", "blocks", "sigma",
                                                                       "n_train", "traj", "noise", "seed"))}
            torch.save({"net": teacher.net.state_dict(), "meta": tmeta, "settings": key}, a.teacher_ckpt)
    log(f"teacher: {tmeta}")

    # phase 1: MM, off-policy from data
    eng = make_engine(s, teacher)
    log(f"phase 1: MM to {s.student_steps} steps")
    t0 = time.perf_counter()
    h_mm = run_phase(eng, train, s.mm_iters, s.mm_batch, g, off_policy=True, reward=False, name="MM")
    timing = {"teacher_training": tmeta.get("teacher_seconds", 0.0), "mm": time.perf_counter() - t0}
    mm_student = (eng.ema or eng.student).frozen_copy()
    phase1 = copy.deepcopy(eng.state_dict())

    # phase 2: RMMD with the CRPS reward, off- and on-policy from the same phase-1 state
    students, hist = {"MM student": mm_student}, {"mm": h_mm}
    for variant in ("off-policy", "on-policy"):
        e2 = make_engine(s, teacher)
        e2.load_state_dict(copy.deepcopy(phase1))
        e2.start_phase2(reward=CRPSReward(), reward_weight=s.reward_weight, num_samples=s.members_train,
                        lr=s.rmmd_lr)
        for opt in (e2.student_optimizer, e2.aux_optimizer):
            for grp in opt.param_groups:
                grp["lr"] = s.rmmd_lr
        log(f"phase 2: RMMD {variant}, lambda={s.reward_weight}, M={s.members_train}")
        t0 = time.perf_counter()
        hist[variant] = run_phase(e2, train, s.rmmd_iters, s.rmmd_batch, g, off_policy=variant == "off-policy",
                                  reward=True, name=f"RMMD {variant}")
        timing[f"rmmd_{variant}"] = time.perf_counter() - t0
        students[f"RMMD {variant}"] = (e2.ema or e2.student).frozen_copy()

    # evaluation on held-out initial conditions
    w = 2 + s.max_lead
    test = torch.cat([sets["test"][:, o:o + w] for o in s.eval_offsets])[: s.eval_ics]
    if test.shape[1] < w:
        raise SystemExit(f"test_len {s.test_len} too short for offsets {s.eval_offsets} and lead {s.max_lead}")
    prev, truth = test[:, :2], test[:, 2:]
    results, examples = {}, {}
    models = {"teacher": (teacher, s.teacher_steps, 1.0), **{n: (d, s.student_steps, s.student_eta)
                                                              for n, d in students.items()}}
    for i, (n, (den, steps, eta)) in enumerate(models.items()):
        t0 = time.perf_counter()
        ens, nfe = forecast(den, prev, norm, s, steps, eta, seed=10_000 + s.seed)
        results[n] = {"nfe": nfe, "scores": score(ens, truth, s), "seconds": time.perf_counter() - t0}
        examples[n] = ens[:, 0, :, 0]
        log(f"eval {n}: NFE {nfe}, CRPS@lead {s.leads[0]} {results[n]['scores'][s.leads[0]]['crps']:.4f}, "
            f"@lead {s.max_lead} {results[n]['scores'][s.max_lead]['crps']:.4f} ({results[n]['seconds']:.0f}s)")
    comps = {n: compare(results[n]["scores"], results["teacher"]["scores"], s) for n in results if n != "teacher"}
    for n, c in comps.items():
        log(f"{n}: win rate {100 * c['win_rate']:.1f}%, CRPS improvement {100 * c['crps_improvement']:+.2f}%, "
            f"speed-up {results['teacher']['nfe'] / results[n]['nfe']:.1f}x")

    meta = {"date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()), "seconds": time.perf_counter() - t_start,
            "command": "python python/weather_gencast.py " + " ".join(sys.argv[1:] if argv is None else argv),
            "load_start": f"{load_start:.1f}", "params": params, "n_train_pairs": len(train.res),
            "spread_full": spread_full, "spread_x": spread_x, "sd_residual": norm.sd, **tmeta,
            "timing": {**timing, **{f"eval_{n}": r["seconds"] for n, r in results.items()}}}
    files = plots(a.out, results, examples, torch.cat([prev[0, 1:, 0], truth[0, :, 0]]), s)
    with open(os.path.join(a.out, "report.md"), "w") as f:
        f.write(report_md(s, results, comps, meta, a.quick))
    with open(os.path.join(a.out, "metrics.json"), "w") as f:
        slim = {n: {**r, "scores": {lead: {k: v for k, v in sc.items() if k != "crps_ic"}
                                        for lead, sc in r["scores"].items()}} for n, r in results.items()}
        json.dump({"settings": asdict(s), "meta": meta, "results": slim, "comparison": comps,
                   "training": {k: v[-1] for k, v in hist.items()}}, f, indent=1)
    log(f"wrote {a.out}/report.md, metrics.json, {', '.join(files)} in {meta['seconds']:.0f}s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
