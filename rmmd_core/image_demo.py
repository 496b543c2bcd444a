"""The image-task comparison behind ``rmmd demo`` and ``rmmd pareto``.

1. phase 1 (shared): MM to K steps off-policy from the shapes data (the lambda = 0 point), and a
   one-step DI generator distilled for the same number of iterations (DI++'s starting point);
2. for every method and lambda: train from that start, evaluating Fréchet distance (classifier
   features vs held-out data), mean reward and NFE every ``eval_every`` iterations;
3. Pareto fronts per method over all (lambda, checkpoint) points, and :func:`rmmd_core.pareto.compare`.

Samples for evaluation always use the same noise seed, so differences between rows are the models'.
"""
from __future__ import annotations

import time
from dataclasses import asdict, dataclass, field

import torch

from .baselines import BaselineConfig, DIpp
from .config import RMMDConfig
from .engine import RMMD
from .methods import LABELS, METHODS, Run, StartPoint, TrainSettings, check_methods
from .pareto import compare, pareto_front
from .sampler import sample
from .step import step as rmmd_step

# Default lambda grids. Rewards differ in scale: the classifier reward is a per-sample log-probability
# (its gradient is summed over pixels), the closed-form rewards are per-element means.
DEFAULT_LAMBDAS = {
    "classifier": {"rmmd": (0.0003, 0.001), "draft1": (0.001, 0.003), "draft2": (0.001, 0.003),
                   "draftlv": (0.001, 0.003), "dipp": (0.0003, 0.001), "hypernoise": (0.001, 0.003)},
    "grayscale": {m: (0.3, 1.0) for m in METHODS},
    "laplacian": {m: (0.3, 1.0) for m in METHODS},
}


@dataclass
class DemoSettings:
    reward: str = "classifier"
    target: int = 0
    methods: tuple = METHODS
    lambdas: dict | None = None      # method -> lambdas; None: DEFAULT_LAMBDAS[reward]
    num_steps: int = 4               # K of the student sampler
    teacher_steps: int = 32          # teacher sampler steps for its reference row
    mm_iters: int = 300
    iters: int = 100
    eval_every: int = 50
    batch: int = 32
    n_eval: int = 500
    seed: int = 0
    train: TrainSettings = field(default_factory=TrainSettings)

    def lambda_grid(self) -> dict:
        grid = self.lambdas if self.lambdas is not None else DEFAULT_LAMBDAS[self.reward]
        return {m: tuple(grid[m]) for m in check_methods(self.methods)}

    def to_dict(self) -> dict:
        d = asdict(self)
        d["lambdas"] = {m: list(v) for m, v in self.lambda_grid().items()}
        d["methods"] = list(self.methods)
        return d


def quick_settings(**kw) -> DemoSettings:
    """A tiny run (well under 2 minutes on 2 cores) that still exercises every method and output."""
    base = dict(mm_iters=20, iters=8, eval_every=4, batch=16, n_eval=100, teacher_steps=8,
                lambdas={m: (v[-1],) for m, v in DEFAULT_LAMBDAS[kw.get("reward", "classifier")].items()})
    base.update(kw)
    return DemoSettings(**base)


def _bar(it, progress: bool, **kw):
    if not progress:
        return it
    from tqdm import tqdm
    return tqdm(it, leave=False, dynamic_ncols=True, **kw)


def run_image_demo(task, ds: DemoSettings, *, progress: bool = True, log=print) -> dict:
    """Run the comparison on ``task`` (a :class:`~rmmd_core.tasks.shapes.ShapesTask`); returns a
    JSON-ready dict plus ``"grids"`` (name -> tensor of 16 samples) and ``"curves"``."""
    t_all = time.perf_counter()
    torch.manual_seed(ds.seed)
    reward = task.reward(ds.reward, ds.target)
    K, B, shape, ts = ds.num_steps, ds.batch, task.sample_shape, ds.train
    timings, grids, curves, points, reference = {}, {}, [], [], []

    def ev_gen():
        return torch.Generator().manual_seed(ds.seed + 777)

    def evaluate(name, x):
        e = task.evaluate(x, reward)
        grids[name] = x[:16].clamp(-1, 1).cpu()
        return e

    # ---- reference rows: teacher and phase 1
    t0 = time.perf_counter()
    log(f"teacher: {ds.n_eval} samples with {ds.teacher_steps} steps")
    gt, chunk = ev_gen(), 100  # chunks only to drive the progress bar; one generator keeps it one stream
    xt = torch.cat([sample(task.teacher, (min(chunk, ds.n_eval - i), *shape), num_steps=ds.teacher_steps,
                           generator=gt).x0
                    for i in _bar(range(0, ds.n_eval, chunk), progress, desc="teacher samples", unit="chunk")])
    reference.append({"name": f"teacher ({ds.teacher_steps} steps)", "nfe": ds.teacher_steps,
                      **evaluate("teacher", xt)})
    timings["teacher_eval_s"] = time.perf_counter() - t0

    t0 = time.perf_counter()
    cfg = RMMDConfig(num_steps=K, lr=ts.lr, ema_decay=ts.ema_decay, grad_clip=ts.grad_clip)
    mm = RMMD(task.teacher, config=cfg, sample_shape=shape, seed=ds.seed)
    mm_curve = {"method": "mm", "lam": 0.0, "iteration": [], "mm_surrogate": [], "aux_loss": []}
    for i in _bar(range(ds.mm_iters), progress, desc=f"phase 1: MM to {K} steps"):
        m = rmmd_step(mm, data=task.data(B, ds.seed * 100_000 + i))
        mm_curve["iteration"].append(i + 1)
        mm_curve["mm_surrogate"].append(m["mm_surrogate"])
        mm_curve["aux_loss"].append(m["aux_loss"])
    curves.append(mm_curve)
    timings["mm_phase1_s"] = time.perf_counter() - t0
    xm = sample(mm.ema, (ds.n_eval, *shape), num_steps=K, generator=ev_gen()).x0
    mm_row = {"name": f"MM student ({K} steps)", "nfe": K, **evaluate("MM", xm)}
    reference.append(mm_row)

    di = None
    if "dipp" in ds.methods:
        t0 = time.perf_counter()
        di = DIpp(task.teacher.trainable_copy(), task.teacher, None,
                  BaselineConfig(num_steps=1, reward_weight=0.0, lr=ts.lr, grad_clip=ts.grad_clip,
                                 ema_decay=ts.ema_decay), sample_shape=shape, seed=ds.seed)
        for _ in _bar(range(ds.mm_iters), progress, desc="phase 1: DI to 1 step"):
            di.step(B)
        timings["di_phase1_s"] = time.perf_counter() - t0
        xd = sample(di.model, (ds.n_eval, *shape), num_steps=1, generator=ev_gen()).x0
        reference.append({"name": "DI student (1 step)", "nfe": 1, **evaluate("DI", xd)})
    if "hypernoise" in ds.methods:
        xe = sample(mm.ema, (ds.n_eval, *shape), num_steps=K, eta=0.0, generator=ev_gen()).x0
        reference.append({"name": f"MM student ({K} steps, eta=0)", "nfe": K, **evaluate("MM eta=0", xe)})

    start = StartPoint(task.teacher, mm.ema, mm.auxiliary, di.model if di else None,
                       di.auxiliary if di else None, K, shape)
    # every method's front includes its own lambda = 0 starting point
    start_pt = {"dipp": reference[2] if di else None,
                "hypernoise": reference[-1] if "hypernoise" in ds.methods else None}

    # ---- phase 2: every method at every lambda, evaluated at checkpoints
    for method, lams in ds.lambda_grid().items():
        base = start_pt.get(method) or mm_row
        points.append({"method": method, "label": LABELS[method], "lam": 0.0, "iteration": 0, "fd": base["fd"],
                       "reward": base["reward"], "nfe": base["nfe"]})
        t0 = time.perf_counter()
        for lam in lams:
            run = Run(method, lam, start, reward, ts, seed=ds.seed)
            curve = {"method": method, "lam": lam, "iteration": [], "reward_mean": []}
            for i in _bar(range(ds.iters), progress, desc=f"{LABELS[method]} lambda={lam:g}"):
                m = run.step(B)
                curve["iteration"].append(i + 1)
                curve["reward_mean"].append(m["reward_mean"])
                if (i + 1) % ds.eval_every == 0 or i + 1 == ds.iters:
                    x = run.sample(ds.n_eval, ev_gen())
                    e = evaluate(f"{LABELS[method]} lambda={lam:g}", x)
                    points.append({"method": method, "label": LABELS[method], "lam": lam, "iteration": i + 1,
                                   "fd": e["fd"], "reward": e["reward"], "nfe": run.nfe,
                                   "class_hist": e["class_hist"]})
            curves.append(curve)
            log(f"{LABELS[method]} lambda={lam:g}: FD {points[-1]['fd']:.3f}, reward {points[-1]['reward']:+.3f}")
        timings[f"{method}_s"] = time.perf_counter() - t0

    fronts = {m: pareto_front([p for p in points if p["method"] == m]) for m in ds.lambda_grid()}
    analysis = compare(fronts, reference="rmmd") if "rmmd" in fronts else compare(fronts, reference=next(iter(fronts)))
    timings["total_s"] = time.perf_counter() - t_all
    return {"task": task.name, "reward": ds.reward, "target_class": ds.target, "settings": ds.to_dict(),
            "teacher": task.teacher_meta, "classifier": task.classifier_meta, "reference": reference,
            "points": points, "fronts": fronts, "analysis": analysis, "timings": timings,
            "curves": curves, "grids": grids}
