"""Activation memory and step time: RMMD's on-policy step vs DRaFT-K, K in {1, 2, 4, 8}, shapes task.

RMMD differentiates ONE student call per sample whatever K is (the K-step rollout runs without grad);
DRaFT-K back-propagates through the last K calls of a K-step sampler (here: all of them). We measure

* ``saved_MB``: bytes of every tensor autograd saves for backward during the loss computation
  (``torch.autograd.graph.saved_tensors_hooks``): the activation memory, exact and device independent;
  RMMD's number includes the online auxiliary's graph (one more network call), DRaFT has none;
* ``peak_MB`` (CUDA only): ``torch.cuda.max_memory_allocated`` over one full step;
* ``step_ms``: median wall time of a full training step (losses, backward, optimiser), after warm-up.

    python benchmarks/bench_memory.py [--batch 32] [--repeats 5] [--device cpu|cuda] [--json out.json]
"""
from __future__ import annotations

import argparse
import json
import statistics
import sys
import time

import torch

from rmmd_core import RMMD, RMMDConfig, losses, step
from rmmd_core.baselines import BaselineConfig, DRaFT
from rmmd_core.tasks.shapes import ShapesTask


class SavedBytes:
    """Context manager summing the bytes autograd saves for backward (each storage counted once)."""

    def __init__(self):
        self.bytes, self._seen = 0, set()

    def _pack(self, t):
        key = (t.untyped_storage().data_ptr(), t.dtype)
        if key not in self._seen:
            self._seen.add(key)
            self.bytes += t.untyped_storage().nbytes()
        return t

    def __enter__(self):
        self._ctx = torch.autograd.graph.saved_tensors_hooks(self._pack, lambda t: t)
        self._ctx.__enter__()
        return self

    def __exit__(self, *exc):
        self._ctx.__exit__(*exc)


def _time(fn, repeats: int, device) -> float:
    fn()  # warm-up
    ts = []
    for _ in range(repeats):
        if device.type == "cuda":
            torch.cuda.synchronize()
        t0 = time.perf_counter()
        fn()
        if device.type == "cuda":
            torch.cuda.synchronize()
        ts.append(time.perf_counter() - t0)
    return 1000 * statistics.median(ts)


def _peak(fn, device) -> float | None:
    if device.type != "cuda":
        return None
    torch.cuda.synchronize()
    torch.cuda.reset_peak_memory_stats()
    fn()
    torch.cuda.synchronize()
    return torch.cuda.max_memory_allocated() / 2 ** 20


def bench(Ks=(1, 2, 4, 8), batch: int = 32, repeats: int = 5, device: str = "cpu") -> list[dict]:
    dev = torch.device(device)
    task = ShapesTask(n_ref=10)
    teacher = task.teacher.to(dev)
    reward = task.reward("classifier")
    reward.classifier.to(dev)
    rows = []
    for K in Ks:
        eng = RMMD(teacher, config=RMMDConfig(num_steps=K), sample_shape=task.sample_shape)
        eng.start_phase2(reward=reward, reward_weight=0.01)
        with SavedBytes() as sb:
            losses(eng, batch_size=batch)
        rows.append({"method": "RMMD on-policy", "K": K, "grad_calls": 1, "saved_MB": sb.bytes / 2 ** 20,
                     "peak_MB": _peak(lambda: step(eng, batch_size=batch), dev),
                     "step_ms": _time(lambda: step(eng, batch_size=batch), repeats, dev)})
        dr = DRaFT(teacher.trainable_copy(), reward, BaselineConfig(num_steps=K), grad_steps=K,
                   sample_shape=task.sample_shape)
        with SavedBytes() as sb:
            loss, m = dr.losses(batch)
        del loss
        rows.append({"method": f"DRaFT-K (K={K})", "K": K, "grad_calls": m["grad_calls"], "saved_MB": sb.bytes / 2 ** 20,
                     "peak_MB": _peak(lambda: dr.step(batch), dev), "step_ms": _time(lambda: dr.step(batch), repeats, dev)})
    return rows


def table(rows: list[dict]) -> str:
    head = ("| method | K | differentiated calls | saved activations (MB) | peak (MB, CUDA) | step (ms) |\n"
            "|---|---|---|---|---|---|")
    body = []
    for r in rows:
        peak = "–" if r["peak_MB"] is None else f"{r['peak_MB']:.0f}"
        body.append(f"| {r['method']} | {r['K']} | {r['grad_calls']} | {r['saved_MB']:.1f} | {peak} | {r['step_ms']:.0f} |")
    return "\n".join([head, *body])


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--batch", type=int, default=32)
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--json", default=None)
    a = p.parse_args(argv)
    rows = bench(batch=a.batch, repeats=a.repeats, device=a.device)
    print(f"shapes task (TinyUNet, 16x16), batch {a.batch}, device {a.device}, torch {torch.__version__}\n")
    print(table(rows))
    if a.json:
        with open(a.json, "w") as f:
            json.dump({"batch": a.batch, "device": a.device, "rows": rows}, f, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
