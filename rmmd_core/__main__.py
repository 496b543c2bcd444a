"""Command line: ``rmmd demo`` / ``python -m rmmd_core demo``."""
from __future__ import annotations

import argparse
import json
import sys


def _demo(args) -> int:
    from .toy_run import format_rows, run_toy

    kw = dict(fit_steps=300, mm_steps=80, rmmd_steps=60, n_eval=1000) if args.quick else {}
    res = run_toy(num_steps=args.steps, reward_weight=args.reward_weight, seed=args.seed,
                  log=lambda m: print(f"[rmmd demo] {m}", flush=True), **kw)
    print("\n2-D ring task: 4-step students vs the analytic teacher (lower SW is closer)\n")
    print(format_rows(res.rows))
    last = {k: v for k, v in res.history[-1].items()}
    print(f"\nlast RMMD step metrics: {json.dumps(last, default=str)}")
    print(f"\nfinished in {res.seconds:.1f} s")
    return 0


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="rmmd", description="Rewarded Moment Matching Distillation")
    sub = p.add_subparsers(dest="cmd", required=True)
    d = sub.add_parser("demo", help="two-phase MM -> RMMD run on the built-in 2-D task; prints metrics")
    d.add_argument("--quick", action="store_true", help="a short run (seconds) for smoke tests")
    d.add_argument("--steps", type=int, default=4, help="student steps K (default 4)")
    d.add_argument("--reward-weight", type=float, default=0.05, help="lambda of phase 2 (default 0.05)")
    d.add_argument("--seed", type=int, default=0)
    d.set_defaults(func=_demo)
    args = p.parse_args(argv)
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
