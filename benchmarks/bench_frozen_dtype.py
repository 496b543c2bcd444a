"""What ``RMMDConfig(frozen_dtype='bfloat16')`` does: memory of the frozen networks and the 2-D task metrics.

Runs the built-in two-phase 2-D run (``rmmd_core.toy_run.run_toy``: fit -> MM -> RMMD with the reward
x_1) twice from the same seed, fp32 frozen networks vs bf16 ones, and prints the evaluation rows of
both plus the bytes held by the frozen networks (teacher, phase-1 anchor, frozen auxiliary) on the
diffusers UNet of benchmarks/bench_step.py, where the weights are real parameters (the 2-D teacher is
analytic: it has no weights, and bf16 there only means it runs under bf16 autocast).

    python benchmarks/bench_frozen_dtype.py [--quick] [--json out.json]
"""
from __future__ import annotations

import argparse
import json
import platform
import time

import torch

from rmmd_core import RMMD, RMMDConfig
from rmmd_core.toy_run import format_rows, run_toy


def frozen_bytes(eng: RMMD) -> dict:
    out = {}
    for name in ("teacher", "anchor", "frozen_aux"):
        den = getattr(eng, name)
        out[name] = sum(t.numel() * t.element_size() for t in [*den.parameters(), *den.buffers()]) if den else 0
    return out


def unet_memory() -> dict:
    """Frozen-network bytes of the small UNet engine of bench_step.py, fp32 vs bf16 (phase 2)."""
    import sys
    import os
    sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
    from bench_step import CONFIGS

    rows = {}
    for fd in (None, "bfloat16"):
        spec = CONFIGS["unet-s"]
        teacher = spec.make_teacher()
        eng = RMMD(teacher, config=RMMDConfig(num_steps=1, frozen_dtype=fd), sample_shape=spec.shape, seed=0)
        eng.start_phase2(reward_weight=0.0, anchor_weight=0.1, reference="frozen_aux")
        rows[str(fd)] = frozen_bytes(eng)
    return rows


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--quick", action="store_true", help="short run (shape of the output only)")
    ap.add_argument("--json", default=None)
    args = ap.parse_args(argv)
    torch.set_num_threads(2)
    kw = dict(fit_steps=300, mm_steps=60, rmmd_steps=60, n_eval=1000) if args.quick else {}
    # bf16 in both phases: the analytic teacher runs under bf16 autocast (it has no weights), and in
    # phase 2 the anchor (the MLP phase-1 student) holds bf16 weights
    results = {}
    for fd in (None, "bfloat16"):
        t0 = time.perf_counter()
        res = run_toy(config={"frozen_dtype": fd}, **kw)
        results[str(fd)] = {"rows": res.rows, "seconds": time.perf_counter() - t0}
        print(f"\nfrozen_dtype={fd} ({results[str(fd)]['seconds']:.0f} s)\n{format_rows(res.rows)}", flush=True)
    mem = unet_memory()
    for k, v in mem.items():
        print(f"unet-s frozen networks, frozen_dtype={k}: " + ", ".join(f"{n} {b / 2**20:.2f} MiB" for n, b in v.items()))
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()), "machine": platform.platform(),
                       "torch": torch.__version__, "threads": torch.get_num_threads(), "quick": args.quick,
                       "runs": results, "unet_s_frozen_bytes": mem}, f, indent=1)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
