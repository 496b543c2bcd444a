"""`RMMDConfig`: every knob of one RMMD / MM iteration, validated on construction.

Defaults follow method.md "Project defaults"; each field's comment says where a choice was made.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass, fields, replace

from .sampler import GRIDS

WEIGHTINGS = ("flat", "snr", "edm", "dmd")
VARIANTS = ("continuous", "discrete")
FROZEN_DTYPES = ("bfloat16",)
REFERENCES = ("teacher", "frozen_aux")
GAPS = ("uniform", "grid")
ADAM_IMPLS = ("rmmd", "foreach", "fused")


@dataclass(frozen=True)
class RMMDConfig:
    """Configuration of :func:`rmmd_core.step`.

    Sampler:
        num_steps: K, student steps (default 8, the papers' headline setting).
        eta: DDIM(eta) for rollouts and the training posterior step; 1 = ancestral (default).
        grid, rho: inference grid of the rollout (``'uniform'`` default, ``'karras'`` with rho).
    Training state (method.md §c.4, §c.6):
        variant: on-policy state when no data batch is given: ``'continuous'`` (full no-grad rollout,
            re-noised at a continuous t; default) or ``'discrete'`` (rollout stopped at a random student
            step i* ~ U{1..K}, one per batch: DMD2-style backward simulation, training times = inference
            times). With a data batch the state is off-policy (MM Algorithm 2).
        gap: how far below t the moment time s lies: ``'uniform'`` delta ~ U(0, 1/K) (default, MM
            re-implementations) or ``'grid'`` delta = 1/K (one grid interval; §g.4).
    Objective (method.md "Project defaults": Loss reduction):
        reward_weight: lambda >= 0.
        anchor_weight: lambda_reg >= 0; None means lambda/2 (the reported setting); 0 disables the L2
            anchor to the frozen phase-1 student.
        reference: reference moment: ``'teacher'`` (default, guided when guidance_scale is set) or
            ``'frozen_aux'`` (the frozen phase-1 auxiliary; saves the teacher call).
        guidance_scale: CFG scale on the reference moment only (DMD2 convention); None = unguided.
        weighting: MM time weight w(s): ``'flat'`` (default, chosen by measurement on the 2-D task —
            see README "Choices"), ``'snr'`` alpha_s^2/sigma_s^2, ``'edm'`` (sigma^2+sd^2)/(sigma sd)^2 in
            VE sigma, ``'dmd'`` per-sample 1/(mabs(x̂0 - m_ref) + dmd_eps).
        dmd_eps: epsilon of the DMD normaliser (explicit: it sets the scale where it stops mattering).
        aux_weighting: w_aux(s) of the auxiliary loss; None = same as ``weighting`` (flat for 'dmd').
        num_samples: M independent rollouts per conditioning (2 for CRPS-style rewards).
    Updates:
        student_update_every: update the student on every n-th call, the auxiliary on every call
            (n = 1 is MM's 1:1 alternation with both updated from one batch; DMD2 uses 5).
        ema_decay: EMA of the student weights (None disables).
        grad_clip: max global grad norm for each network (None disables).
        lr, betas, eps: for the optimisers the engine creates when none are passed
            (Adam(beta1 = 0, beta2 = 0.99, eps = 1e-12), method.md "Project defaults").
        adam: implementation of those optimisers: ``'rmmd'`` (default; :class:`~rmmd_core.adam.FusedAdam`, the
            fused op ``rmmd_core.ops.adam_update`` on the engine's backend: clip, Adam and the student's EMA in
            one pass over the weights; torch's update up to ~1 ulp of rounding), ``'foreach'`` (torch's
            multi-tensor Adam, bit for bit, then separate clip and EMA passes) or ``'fused'`` (torch's fused
            kernel; rounds differently, ~1e-7 relative).
    Speed:
        graph_rollout: run the on-policy no-grad student rollout through a cached
            :class:`~rmmd_core.rollout_graph.RolloutGraph`: captured as a CUDA graph on CUDA (launches
            replayed at once, Philox seeds read from device memory), the same code eagerly elsewhere
            (bit-identical to the default). Single process only; the student's hooks run at capture only.
    Memory:
        frozen_dtype: None (default: frozen networks keep their weights' dtype) or ``'bfloat16'``: the
            teacher, the phase-1 anchor and the frozen phase-1 auxiliary hold bf16 weights (half their
            fp32 memory) and run under bf16 autocast; their outputs are cast back to fp32 before any
            loss math. Trained networks, the EMA and optimiser state are untouched (see README
            "Performance" for what it does to the metrics).
    """

    num_steps: int = 8
    eta: float = 1.0
    grid: str = "uniform"
    rho: float = 7.0
    variant: str = "continuous"
    gap: str = "uniform"
    reward_weight: float = 0.0
    anchor_weight: float | None = None
    reference: str = "teacher"
    guidance_scale: float | None = None
    weighting: str = "flat"
    dmd_eps: float = 1e-4
    aux_weighting: str | None = None
    num_samples: int = 1
    student_update_every: int = 1
    ema_decay: float | None = 0.999
    grad_clip: float | None = 1.0
    lr: float = 1e-4
    betas: tuple = (0.0, 0.99)
    eps: float = 1e-12
    adam: str = "rmmd"
    frozen_dtype: str | None = None
    graph_rollout: bool = False

    def __post_init__(self):
        def need(cond, field, expected):
            if not cond:
                raise ValueError(f"{field} must be {expected}, got {getattr(self, field)!r}")

        need(isinstance(self.num_steps, int) and self.num_steps >= 1, "num_steps", "an integer >= 1")
        need(0.0 <= self.eta <= 1.0, "eta", "in [0, 1]")
        need(self.grid in GRIDS, "grid", f"one of {GRIDS}")
        need(self.rho > 0, "rho", "> 0")
        need(self.variant in VARIANTS, "variant", f"one of {VARIANTS}")
        need(self.gap in GAPS, "gap", f"one of {GAPS}")
        need(self.reward_weight >= 0, "reward_weight", ">= 0")
        need(self.anchor_weight is None or self.anchor_weight >= 0, "anchor_weight", ">= 0 or None")
        need(self.reference in REFERENCES, "reference", f"one of {REFERENCES}")
        need(self.guidance_scale is None or self.guidance_scale >= 0, "guidance_scale", ">= 0 or None")
        need(self.weighting in WEIGHTINGS, "weighting", f"one of {WEIGHTINGS}")
        need(self.aux_weighting is None or self.aux_weighting in WEIGHTINGS[:3], "aux_weighting",
             f"None or one of {WEIGHTINGS[:3]}")
        need(self.dmd_eps > 0, "dmd_eps", "> 0")
        need(isinstance(self.num_samples, int) and self.num_samples >= 1, "num_samples", "an integer >= 1")
        need(isinstance(self.student_update_every, int) and self.student_update_every >= 1,
             "student_update_every", "an integer >= 1")
        need(self.ema_decay is None or 0.0 <= self.ema_decay < 1.0, "ema_decay", "in [0, 1) or None")
        need(self.grad_clip is None or self.grad_clip > 0, "grad_clip", "> 0 or None")
        need(self.lr > 0, "lr", "> 0")
        need(len(self.betas) == 2 and all(0 <= b < 1 for b in self.betas), "betas", "two numbers in [0, 1)")
        need(self.eps > 0, "eps", "> 0")
        need(self.adam in ADAM_IMPLS, "adam", f"one of {ADAM_IMPLS}")
        need(isinstance(self.graph_rollout, bool), "graph_rollout", "a bool")
        need(self.frozen_dtype is None or self.frozen_dtype in FROZEN_DTYPES, "frozen_dtype",
             f"None or one of {FROZEN_DTYPES}")

    @property
    def lambda_reg(self) -> float:
        """Effective L2-anchor weight: lambda/2 unless set explicitly."""
        return self.reward_weight / 2 if self.anchor_weight is None else self.anchor_weight

    @property
    def effective_aux_weighting(self) -> str:
        if self.aux_weighting is not None:
            return self.aux_weighting
        return "flat" if self.weighting == "dmd" else self.weighting

    def replace(self, **changes) -> "RMMDConfig":
        unknown = set(changes) - {f.name for f in fields(self)}
        if unknown:
            raise ValueError(f"unknown RMMDConfig fields {sorted(unknown)}")
        return replace(self, **changes)

    def to_dict(self) -> dict:
        return asdict(self)
