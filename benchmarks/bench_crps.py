"""Fair ensemble CRPS value + gradient: fused ops vs naive pairwise PyTorch (method.md §c.7, §e K4c).

Methods (each computes crps (B,) and d crps / d ens (M, B, D) for uniform weights, float32):

* ``naive_pairwise``: eager PyTorch of the definition, the M x M broadcast
  ``(x[:, None] - x[None]).abs().sum((0, 1))``, gradient by autograd;
* ``compiled_pairwise``: ``torch.compile`` of the same value function (forward and backward compiled by
  AOTAutograd / Inductor; compile time excluded: one warm-up call first);
* ``reference_sorted``: ``crps_fair_ref`` (eager, ``torch.sort`` + scatter of the rank coefficients);
* ``fused_cpu`` / ``fused_triton`` / ``fused_cuda``: ``rmmd_core.ops.crps_fair`` on that backend (the Triton
  interpreter is never timed: it is a correctness tool, orders of magnitude slower than anything here).

Peak memory is the highest total of live allocations made *during* the call (inputs excluded), from the
PyTorch profiler's allocation events on CPU (``peak_bytes``: every ``c10`` CPU allocation, including the
ones inside C++ kernels; std::vector scratch of the CPU kernel, O(M·64) per thread, is not counted) and
``torch.cuda.max_memory_allocated`` minus the allocation before the call on CUDA. It is reported as a
ratio to the input bytes (ens + target). The gradient output alone is ~M/(M+1) of the inputs, so
``with_grad`` runs cannot go below that; ``--no-grad`` measures the value only.

Speed-ups are ``naive ms / method ms`` and ``compiled ms / method ms`` from the same run and shape.
Naive pairwise runs whose estimated footprint (3 M^2 B D floats: the broadcast, its abs and the backward's
sign) exceeds ``--mem-budget-gb`` are skipped and reported as such.

    python benchmarks/bench_crps.py [--members 2,8,32,64] [--sizes 65536,1048576] [--batch 1]
        [--repeats 3] [--mem-budget-gb 6] [--threads 0] [--no-compile] [--no-grad] [--device cpu|cuda]
        [--json out.json] [--markdown out.md] [--smoke]
"""
from __future__ import annotations

import argparse
import json
import platform
import statistics
import sys
import time
from datetime import datetime, timezone

import torch

from rmmd_core import ops
from rmmd_core.ops.crps_reference import crps_fair_ref


def peak_bytes(fn) -> int:
    """Peak bytes of CPU allocations live at once while ``fn()`` runs (its result freed at the end)."""
    from torch._C._profiler import _EventType
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        out = fn()
        del out
    stack, allocs = list(prof.profiler.kineto_results.experimental_event_tree()), []
    while stack:
        node = stack.pop()
        stack.extend(node.children)
        if node.tag == _EventType.Allocation and node.extra_fields.device.type == "cpu":
            allocs.append((node.start_time_ns, node.extra_fields.alloc_size))  # frees have negative sizes
    allocs.sort(key=lambda a: a[0])
    live = peak = 0
    for _, size in allocs:
        live += size
        peak = max(peak, live)
    return peak


def _cuda_peak(fn, device) -> int:
    torch.cuda.synchronize(device)
    base = torch.cuda.memory_allocated(device)
    torch.cuda.reset_peak_memory_stats(device)
    out = fn()
    torch.cuda.synchronize(device)
    del out
    return torch.cuda.max_memory_allocated(device) - base


def pairwise_value(x: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """crps (B,) by the pairwise definition, uniform weights: materialises (M, M, B, D)."""
    M = x.shape[0]
    skill = (x - target).abs().mean(0)
    spread = (x[:, None] - x[None, :]).abs().sum((0, 1)) / (2 * M * (M - 1))
    return (skill - spread).flatten(1).mean(1)


def _with_grad(value_fn, grad: bool):
    def run(ens, target):
        if not grad:
            with torch.no_grad():
                return value_fn(ens, target)
        x = ens.detach().requires_grad_(True)
        crps = value_fn(x, target)
        (g,) = torch.autograd.grad(crps.sum(), x)
        return crps.detach(), g
    return run


def _methods(device: torch.device, compile_: bool, grad: bool):
    methods = {"naive_pairwise": _with_grad(pairwise_value, grad)}
    if compile_:
        methods["compiled_pairwise"] = _with_grad(torch.compile(pairwise_value, dynamic=False), grad)
    methods["reference_sorted"] = lambda e, t: crps_fair_ref(e, t, with_grad=grad)
    for backend in ("cpu", "triton", "cuda"):
        reasons = ops.backend_reasons("crps_fair", torch.empty(0, device=device))[backend]
        if backend in ("triton", "cuda") and device.type == "cpu":
            reasons = ["not timed: needs a GPU" + (" (the Triton interpreter is a test tool)" if backend == "triton"
                                                   else "")]
        methods[f"fused_{backend}"] = (reasons if reasons else
                                       (lambda b: lambda e, t: ops.crps_fair(e, t, with_grad=grad, backend=b))(backend))
    return methods


def _time(fn, repeats: int, device: torch.device) -> float:
    def sync():
        if device.type == "cuda":
            torch.cuda.synchronize(device)

    sync()
    t0 = time.perf_counter()
    fn()  # warm-up (and compilation)
    sync()
    if time.perf_counter() - t0 > 2.0:
        repeats = 1  # slow baselines at large sizes: one timed call keeps the default run short
    times = []
    for _ in range(repeats):
        sync()
        t0 = time.perf_counter()
        fn()
        sync()
        times.append(time.perf_counter() - t0)
    return 1000 * statistics.median(times)


def bench(members, sizes, batch=1, repeats=3, device="cpu", compile_=True, grad=True, mem_budget_gb=6.0,
          log=print) -> list[dict]:
    dev = torch.device(device)
    methods = _methods(dev, compile_, grad)
    rows = []
    for D in sizes:
        for M in members:
            torch.manual_seed(0)
            ens = torch.randn(M, batch, D, device=dev)
            target = torch.randn(batch, D, device=dev)
            in_bytes = ens.nbytes + target.nbytes
            naive_ms = compiled_ms = None
            for name, fn in methods.items():
                row = dict(method=name, M=M, B=batch, D=D, input_MB=in_bytes / 2**20, ms=None, peak_MB=None,
                           peak_over_inputs=None, speedup_vs_naive=None, speedup_vs_compiled=None, note="")
                if not callable(fn):
                    row["note"] = "; ".join(fn)
                elif name == "naive_pairwise" and 3 * M * M * batch * D * 4 > mem_budget_gb * 2**30:
                    row["note"] = (f"skipped: needs ~{3 * M * M * batch * D * 4 / 2**30:.1f} GiB "
                                   f"> --mem-budget-gb {mem_budget_gb}")
                else:
                    call = (lambda f: lambda: f(ens, target))(fn)
                    row["ms"] = _time(call, repeats, dev)
                    peak = _cuda_peak(call, dev) if dev.type == "cuda" else peak_bytes(call)
                    row["peak_MB"] = peak / 2**20
                    row["peak_over_inputs"] = peak / in_bytes
                    if name == "naive_pairwise":
                        naive_ms = row["ms"]
                    if name == "compiled_pairwise":
                        compiled_ms = row["ms"]
                    if naive_ms is not None:
                        row["speedup_vs_naive"] = naive_ms / row["ms"]
                    if compiled_ms is not None:
                        row["speedup_vs_compiled"] = compiled_ms / row["ms"]
                rows.append(row)
                log(_fmt_row(row))
            del ens, target
    return rows


def _fmt(v, spec):
    return "-" if v is None else format(v, spec)


def _fmt_row(r) -> str:
    return (f"| {r['method']} | {r['M']} | {r['B']} | {r['D']} | {_fmt(r['ms'], '.2f')} | "
            f"{_fmt(r['speedup_vs_naive'], '.1f')} | {_fmt(r['speedup_vs_compiled'], '.1f')} | {_fmt(r['peak_MB'], '.1f')} | {_fmt(r['peak_over_inputs'], '.2f')} | "
            f"{r['note']} |")


HEADER = ("| method | M | B | D | ms | x naive | x compiled | peak MB | peak / inputs | note |\n"
          "|---|---|---|---|---|---|---|---|---|---|")


def _commit() -> str | None:
    import subprocess
    from pathlib import Path

    try:
        return subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, check=True,
                              cwd=Path(__file__).resolve().parent).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return None


def machine() -> dict:
    import os

    load = os.getloadavg() if hasattr(os, "getloadavg") else None
    return dict(date=datetime.now(timezone.utc).isoformat(timespec="seconds"), commit=_commit(),
                platform=platform.platform(),
                processor=platform.processor() or platform.machine(), cpu_count=os.cpu_count(),
                torch_threads=torch.get_num_threads(), torch=torch.__version__, load_average=load,
                cuda=torch.cuda.get_device_name() if torch.cuda.is_available() else None)


def main(argv=None) -> list[dict]:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--members", default="2,8,32,64")
    p.add_argument("--sizes", default="65536,1048576", help="per-sample D values (comma separated), up to 16M")
    p.add_argument("--batch", type=int, default=1)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--mem-budget-gb", type=float, default=6.0)
    p.add_argument("--threads", type=int, default=0, help="torch intra-op threads (0: torch's default)")
    p.add_argument("--no-compile", action="store_true", help="skip torch.compile of the pairwise form")
    p.add_argument("--no-grad", action="store_true", help="value only (no gradient) for every method")
    p.add_argument("--smoke", action="store_true", help="tiny sizes, one repeat, no compile (seconds)")
    p.add_argument("--json")
    p.add_argument("--markdown")
    a = p.parse_args(argv)
    members = [int(m) for m in a.members.split(",")]
    sizes = [int(d) for d in a.sizes.split(",")]
    compile_ = not a.no_compile
    if a.smoke:
        members, sizes, a.repeats, compile_ = [2, 8], [4096], 1, False
    if a.threads > 0:
        torch.set_num_threads(a.threads)
    info = machine()
    print(f"bench_crps on {info}\n{HEADER}")
    rows = bench(members, sizes, a.batch, a.repeats, a.device, compile_, not a.no_grad, a.mem_budget_gb)
    table = HEADER + "\n" + "\n".join(_fmt_row(r) for r in rows) + "\n"
    if a.json:
        with open(a.json, "w") as f:
            json.dump(dict(machine=info, grad=not a.no_grad, rows=rows, argv=sys.argv[1:] if argv is None else argv),
                      f, indent=1)
    if a.markdown:
        with open(a.markdown, "w") as f:
            f.write(f"bench_crps, {info['date']}, commit {info['commit']}, {info['platform']}, {info['cpu_count']} "
                    f"CPUs, torch threads {info['torch_threads']}, load average {info['load_average']}, "
                    f"with_grad={not a.no_grad}\n\n{table}")
    return rows


if __name__ == "__main__":
    main()
