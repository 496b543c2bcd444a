"""Command line: ``rmmd demo`` / ``rmmd pareto`` (also ``python -m rmmd_core ...``).

``demo``   the end-to-end comparison on built-in data: phase-1 MM, then RMMD and the baselines at a
           small lambda grid, evaluated at checkpoints, written to a report folder (report.md,
           metrics.json, samples.png, pareto.png, curves.png). ``--task toy2d`` runs the 2-D ring task.
``pareto`` the same pipeline with a wider lambda sweep and more checkpoints (slower).
"""
from __future__ import annotations

import argparse
import datetime
import json
import sys

TASKS = ("shapes", "toy2d")
REWARDS = ("classifier", "grayscale", "laplacian")

# rmmd pareto: three lambdas per method, from "moves a little" to "reward-hacks" within 150 iterations
# (calibrated on the committed shapes checkpoints: at 150 iterations RMMD with lambda = 0.003 and DRaFT-1
# with lambda = 0.01 already push ~85% of samples into the target class)
PARETO_LAMBDAS = {
    "classifier": {"rmmd": (0.0003, 0.001, 0.003), "draft1": (0.001, 0.003, 0.01),
                   "draft2": (0.001, 0.003, 0.01), "draftlv": (0.001, 0.003, 0.01),
                   "dipp": (0.0003, 0.001, 0.003), "hypernoise": (0.001, 0.003, 0.01)},
    "grayscale": {m: (0.1, 0.3, 1.0) for m in ("rmmd", "draft1", "draft2", "draftlv", "dipp", "hypernoise")},
    "laplacian": {m: (0.1, 0.3, 1.0) for m in ("rmmd", "draft1", "draft2", "draftlv", "dipp", "hypernoise")},
}


def _say(msg: str) -> None:
    print(f"[rmmd] {msg}", file=sys.stderr, flush=True)


def _toy(args, out) -> int:
    from .toy_run import format_rows, run_toy

    kw = dict(fit_steps=150, mm_steps=40, rmmd_steps=30, n_eval=500) if args.quick else {}
    res = run_toy(num_steps=args.steps or 4, reward_weight=args.reward_weight, seed=args.seed, log=_say, **kw)
    table = format_rows(res.rows)
    print("\n2-D ring task: students vs the analytic teacher (lower SW is closer)\n\n" + table)
    (out / "metrics.json").write_text(json.dumps({"task": "toy2d", "rows": res.rows, "seconds": res.seconds,
                                                  "last_step": res.history[-1]}, indent=1, default=str) + "\n")
    (out / "report.md").write_text(
        "# RMMD demo report: task `toy2d`\n\nTeacher: exact posterior mean of an 8-mode ring mixture; reward "
        f"R(x) = x_1, lambda = {args.reward_weight}. SW = sliced Wasserstein distance.\n\n{table}\n\n"
        f"Finished in {res.seconds:.1f} s.\n")
    return 0


def _image(args, out, pareto: bool) -> int:
    from .image_demo import DemoSettings, quick_settings, run_image_demo
    from .methods import LABELS
    from .report import write_report
    from .tasks.assets import AssetError
    from .tasks.shapes import ShapesTask

    methods = args.method_list
    try:
        task = ShapesTask(n_ref=args.n_ref or (300 if args.quick else 2000))
    except AssetError as err:
        _say(str(err))
        return 2
    kw = dict(reward=args.reward, target=args.target, methods=methods, seed=args.seed)
    for k in ("iters", "mm_iters", "eval_every", "n_eval", "batch"):
        if getattr(args, k) is not None:
            kw[k] = getattr(args, k)
    if args.steps:
        kw["num_steps"] = args.steps
    if pareto:
        kw = {"iters": 150, "eval_every": 25, "mm_iters": 300, "lambdas": PARETO_LAMBDAS[args.reward], **kw}
    ds = quick_settings(**kw) if args.quick else DemoSettings(**kw)
    res = run_image_demo(task, ds, progress=not args.no_progress, log=_say)
    command = "rmmd " + " ".join(sys.argv[1:]) if args.argv is None else "rmmd " + " ".join(args.argv)
    write_report(out, res, LABELS, command)
    print("\n".join(["", *res["analysis"]["summary"], "", f"report: {out / 'report.md'} "
                     f"({res['timings']['total_s']:.0f} s)"]))
    return 0


def _run(args, pareto: bool) -> int:
    import torch

    from .methods import check_methods

    if args.threads > 0:
        torch.set_num_threads(args.threads)
    from .report import prepare_outdir

    try:  # validate names before touching the output folder
        args.method_list = tuple(check_methods([m.strip() for m in args.methods.split(",") if m.strip()]))
    except ValueError as err:
        _say(str(err))
        return 2

    if args.out is None:
        stamp = datetime.date.today().isoformat()
        args.out = (f"benchmarks/results/pareto-{stamp}-{args.reward}" if pareto else "rmmd_demo_report")
    try:
        out = prepare_outdir(args.out, args.overwrite)
    except FileExistsError as err:
        _say(str(err))
        return 2
    if args.task == "toy2d":
        return _toy(args, out)
    return _image(args, out, pareto)


def _common(p: argparse.ArgumentParser) -> None:
    p.add_argument("--task", choices=TASKS, default="shapes", help="built-in task (default shapes: 16x16 images)")
    p.add_argument("--reward", choices=REWARDS, default="classifier",
                   help="classifier = log p(target class) of the project's classifier (default)")
    p.add_argument("--target", type=int, default=0, help="target class of the classifier reward (0 = disc)")
    p.add_argument("--methods", default="rmmd,draft1,draft2,draftlv,dipp,hypernoise",
                   help="comma-separated subset of rmmd,draft1,draft2,draftlv,dipp,hypernoise")
    p.add_argument("--out", default=None, help="report folder (must not exist unless --overwrite)")
    p.add_argument("--overwrite", action="store_true", help="replace an existing report folder")
    p.add_argument("--quick", action="store_true", help="a tiny run (under 2 minutes) that writes every output")
    p.add_argument("--steps", type=int, default=None, help="student steps K (default 4)")
    p.add_argument("--iters", type=int, default=None, help="phase-2 iterations per (method, lambda)")
    p.add_argument("--mm-iters", dest="mm_iters", type=int, default=None, help="phase-1 iterations")
    p.add_argument("--eval-every", dest="eval_every", type=int, default=None)
    p.add_argument("--n-eval", dest="n_eval", type=int, default=None, help="samples per evaluation")
    p.add_argument("--n-ref", dest="n_ref", type=int, default=None, help="held-out images for the FD")
    p.add_argument("--batch", type=int, default=None)
    p.add_argument("--reward-weight", type=float, default=0.05, help="lambda of the toy2d task")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--no-progress", action="store_true", help="no progress bars")
    p.add_argument("--threads", type=int, default=1,
                   help="torch intra-op threads (default 1: the 16x16 convolutions gain little from more, and "
                        "one thread per process stays fast on shared cores; 0 keeps torch's default)")


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="rmmd", description="Rewarded Moment Matching Distillation")
    sub = p.add_subparsers(dest="cmd", required=True)
    d = sub.add_parser("demo", help="RMMD vs baselines on built-in data; writes a report folder")
    _common(d)
    d.set_defaults(func=lambda a: _run(a, pareto=False))
    q = sub.add_parser("pareto", help="wider lambda sweep per method; fronts + dominance report")
    _common(q)
    q.set_defaults(func=lambda a: _run(a, pareto=True))
    args = p.parse_args(argv)
    args.argv = argv
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
