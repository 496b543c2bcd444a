"""Time the no-grad K-step student rollout eagerly and as a :class:`rmmd_core.rollout_graph.RolloutGraph`.

On CUDA the graph row replays a captured CUDA graph (launch latency of K network calls and K fused steps
paid once); elsewhere the graph row runs the same body eagerly on static buffers, so the ratio is ~1 and
only shows what the buffer copies cost. Each round runs every row once (interleaved), medians of
``--repeats`` rounds; the same start noise, Philox seeds and labels go to both rows, and the outputs are
checked equal before timing.

Rows, per bench_step.py configuration (same diffusers networks, batch 16 at 3x16x16) and K:
  eager   ``sampler.run_rollout`` under no_grad, seeds as Python ints (what ``rmmd_core.step`` does)
  graph   ``RolloutGraph(student, plan, z, cond)(z, seeds, cond)``

    python benchmarks/bench_rollout_graph.py [--configs dit-s unet-s] [--ks 1 4 8] [--json out.json]
    python benchmarks/bench_rollout_graph.py --smoke     # seconds (run by the test suite)
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import time

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from bench_step import CONFIGS, SMOKE  # noqa: E402  (the same network configurations)

from rmmd_core.rollout_graph import RolloutGraph  # noqa: E402
from rmmd_core.sampler import rollout_plan, run_rollout, time_grid  # noqa: E402


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def make_rows(spec, K: int, device: torch.device) -> list[dict]:
    """The eager and graph rows of one configuration and K (callables with their inputs bound)."""
    den = spec.make_teacher().to(device).eval()
    plan = rollout_plan(den.schedule, time_grid(K, den.schedule), 1.0, K, device)
    g = torch.Generator(device=device).manual_seed(0)
    z = torch.randn((spec.batch, *spec.shape), generator=g, device=device)
    cond = spec.cond(device)
    seeds = torch.randint(0, 2**62, (plan.seeds_needed,), generator=g, device=device, dtype=torch.int64)
    seed_ints = seeds.tolist()
    graph = RolloutGraph(den, plan, z, cond)

    def eager():
        with torch.no_grad():
            return run_rollout(den, z, plan, cond, seeds=seed_ints)[0]

    def replay():
        return graph(z, seeds, cond)[0]

    torch.testing.assert_close(replay(), eager(), rtol=0, atol=0)  # same seeds, same numbers
    name = f"{spec.name} K={K}"
    return [dict(config=name, impl="eager", fn=eager, times=[]),
            dict(config=name, impl="graph" if graph.capture else "graph (eager: no CUDA)", fn=replay, times=[])]


def time_rows(rows: list[dict], repeats: int, device: torch.device) -> None:
    for r in rows:
        r["fn"]()
    for _ in range(repeats):
        for r in rows:
            _sync(device)
            t0 = time.perf_counter()
            r["fn"]()
            _sync(device)
            r["times"].append(time.perf_counter() - t0)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--configs", nargs="+", default=None, help=f"subset of {list(CONFIGS)}")
    ap.add_argument("--ks", type=int, nargs="+", default=None, help="rollout lengths K (default 1 4 8)")
    ap.add_argument("--repeats", type=int, default=21)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--smoke", action="store_true", help="a tiny network, K in (1, 2), 2 rounds")
    ap.add_argument("--json", default=None)
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    specs = SMOKE if args.smoke else CONFIGS
    names = args.configs or (["unet-xs"] if args.smoke else ["unet-s", "dit-s", "dit-m"])
    unknown = [n for n in names if n not in specs]
    if unknown:
        ap.error(f"unknown configs {unknown}; choose from {list(specs)}")
    ks = args.ks or ([1, 2] if args.smoke else [1, 4, 8])
    rows = [r for n in names for K in ks for r in make_rows(specs[n], K, device)]
    time_rows(rows, 2 if args.smoke else args.repeats, device)
    stamp = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())
    machine = (f"{platform.machine()} {os.cpu_count()} cores, torch {torch.__version__}, {args.threads} threads, "
               f"device {device}" + (f" ({torch.cuda.get_device_name(device)})" if device.type == "cuda" else ""))
    print(f"# bench_rollout_graph {stamp} -- {machine}")
    print("| config | impl | ms / rollout | eager / this |\n|---|---|---|---|")
    eager_ms = {}
    for r in rows:
        r["ms"] = 1e3 * statistics.median(r["times"])
        if r["impl"] == "eager":
            eager_ms[r["config"]] = r["ms"]
        print(f"| {r['config']} | {r['impl']} | {r['ms']:.3f} | {eager_ms[r['config']] / r['ms']:.2f} |")
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"date": stamp, "machine": machine, "repeats": len(rows[0]["times"]),
                       "rows": [{"config": r["config"], "impl": r["impl"], "ms_median": r["ms"],
                                 "ms_all": [1e3 * t for t in r["times"]]} for r in rows]}, f, indent=1)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
