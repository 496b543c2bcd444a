"""Benchmark every fused op (method.md §e) as GB/s beside a copy moving the same bytes, with peak extra memory.

Providers (one run, same machine, same inputs):
  reference           eager ``rmmd_core.ops.reference`` / ``denoise_reference`` function
  reference_compiled  ``torch.compile(<reference>, dynamic=True)``: one compile per (case, dtype), outside timing
  cpu / triton / cuda every fused backend that can run on the device (the Triton *interpreter* is a
                      correctness tool and is never timed)

Cases and bytes moved per call (reads + writes of N-element tensors; (B,) scalars ignored, noise is
generated in-kernel and moves no bytes):
  posterior_step        z_t, x_hat read, z_s written: 3 N; gamma != 0 (Philox + Box-Muller per element)
  posterior_step_det    the same with gamma == 0 (eta = 0, final step): the bandwidth-bound case
  denoise_step          z_t, F read, z_s written: 3 N (the parameterisation folded into the step)
  denoise_step_x0       the same, also writing x̂: 4 N (last rollout step)
  renoise               x read, x_t written: 2 N
  rmmd_cotangent        x0, m_stu, m_ref, g_R, anchor read, g written: 6 N
  rmmd_cotangent_dmd    + the normaliser's pass over x0, m_ref: 8 N
  aux_loss              o, x0, m_ref read, grad written: 4 N
The copy baseline is ``dst.copy_(src)`` into a preallocated ``dst``, measured in the same run with the same
traffic as the op: a case moving k N elements is compared with a copy of k N / 2 elements (k N moved). A copy
of only N elements would be unfair from 1M elements on this kind of machine: at 4M fp32 its 32 MB stays in a
32 MB L3 (~115 GB/s) while a 6 N op streams 96 MB from DRAM (~30 GB/s). GB/s = bytes / median time;
"% copy" = GB/s over the matched copy's GB/s (100%: the op moves its bytes as fast as a plain copy of the
same bytes). ``copy_n_gbs`` in the JSON keeps the N-element copy. The ops allocate their outputs and the
copy does not: above glibc's mmap threshold (32 MB) each fresh output pays first-touch page faults.

Peak extra memory ("extra MiB"): bytes allocated during one call beyond what the call returns, i.e. the
temporaries (and the one-off copies of strided inputs). On CPU it is read from the c10 CPU allocator's
allocation / free records via ``torch.profiler.profile(profile_memory=True)`` (every torch CPU tensor,
including those made inside our C++ kernels and Inductor's generated code; not stack buffers); on CUDA from
``torch.cuda.max_memory_allocated``. Measured on one extra call outside the timed ones.

Adding an op (other branches: reward ops, EMA, CRPS): call ``register_case(name, Case(...))`` at import of
this module (or from a module listed in ``--extra-cases``), giving the dispatcher op name, the N-element
tensors it moves, an input maker and the reference / fused callables; the rest (providers, copy baseline,
memory, table, JSON, plot, target check) is shared.

Speed targets (reported, never asserted; README): on CPU with 2 threads at >= 4M elements every fused op
at >= 60% of the measured copy bandwidth and >= 1.5x ``torch.compile(reference)``.

    python benchmarks/bench_ops.py --smoke                       # < 30 s: tiny sizes, no compile, no files
    python benchmarks/bench_ops.py                               # default sizes 64K .. 64M, fp32 + bf16
    python benchmarks/bench_ops.py --sizes 4194304 --dtypes float32 --cases renoise aux_loss
Results: markdown on stdout; JSON and a PNG plot under benchmarks/results/ (``--overwrite`` to replace).
"""

from __future__ import annotations

import argparse
import importlib
import json
import math
import os
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.utils.benchmark as benchmark

from rmmd_core import ops
from rmmd_core.ops import reference as ref
from rmmd_core.ops.denoise_reference import denoise_step_ref

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from bench_posterior_step import _environment  # noqa: E402  (device, versions, commit, date)

DEFAULT_SIZES = [2**16, 2**20, 2**22, 2**24, 2**26]
SMOKE_SIZES = [2**12, 2**14]
# The eager reference builds int64 Philox temporaries (~100 bytes per element for the noise ops): above
# this many elements it is skipped by default (at 16M: ~1.5 GB and seconds per call). Raise it with
# --baseline-max-numel. torch.compile(reference) fuses them away and runs at every size.
BASELINE_MAX_NUMEL = 2**22
BATCH = 4
SEED = 1234
SCAL = dict(lam=0.7, lam_reg=0.35, scale=1e-3)
TARGET_NUMEL, TARGET_FRAC_COPY, TARGET_VS_COMPILED = 2**22, 0.6, 1.5


@dataclass(frozen=True)
class Case:
    """One benchmarked call.

    op: dispatcher op name (``rmmd_core.ops.dispatch`` answers which backends can run it).
    moved: N-element tensors read + written per call (the GB/s numerator is moved * N * itemsize).
    inputs: ``(numel, dtype, device) -> args`` (fresh random data, batch BATCH).
    reference: ``args -> outputs``, pure PyTorch (also compiled).
    fused: ``(args, backend) -> outputs`` through the public op with an explicit backend.
    """

    op: str
    moved: int
    inputs: Callable
    reference: Callable
    fused: Callable


CASES: dict[str, Case] = {}


def register_case(name: str, case: Case) -> None:
    """Add a benchmark case (the hook for ops added by other modules); names must be unique."""
    if name in CASES:
        raise ValueError(f"benchmark case {name!r} is already registered")
    CASES[name] = case


def _data(numel, dtype, device, k):
    D = numel // BATCH
    return [torch.randn(BATCH, D, device=device).to(dtype) for _ in range(k)]


def _coefs(device, k, lo=0.2):
    return [torch.rand(BATCH, dtype=torch.float64, device=device) + lo for _ in range(k)]


def _posterior_inputs(noise: bool):
    def make(numel, dtype, device):
        z, x = _data(numel, dtype, device, 2)
        A, C, gamma = _coefs(device, 3)
        return (z, x, A, C, gamma if noise else torch.zeros_like(gamma))
    return make


def _denoise_inputs(numel, dtype, device):
    return (*_data(numel, dtype, device, 2), *_coefs(device, 5))


def _register_builtin_cases() -> None:
    for name, noise in (("posterior_step", True), ("posterior_step_det", False)):
        register_case(name, Case("posterior_step", 3, _posterior_inputs(noise),
                                 lambda a: ref.posterior_step_ref(*a, SEED, 0),
                                 lambda a, b: ops.posterior_step(*a, SEED, 0, backend=b)))
    for name, want in (("denoise_step", False), ("denoise_step_x0", True)):
        register_case(name, Case("denoise_step", 4 if want else 3, _denoise_inputs,
                                 lambda a, w=want: denoise_step_ref(*a, SEED, 0, want_x0=w),
                                 lambda a, b, w=want: ops.denoise_step(*a, SEED, 0, want_x0=w, backend=b)))
    register_case("renoise", Case("renoise", 2, lambda n, d, dev: (*_data(n, d, dev, 1), *_coefs(dev, 2)),
                                  lambda a: ref.renoise_ref(*a, SEED, 0),
                                  lambda a, b: ops.renoise(*a, SEED, 0, backend=b)))
    for name, dmd in (("rmmd_cotangent", False), ("rmmd_cotangent_dmd", True)):
        register_case(name, Case("rmmd_cotangent", 8 if dmd else 6,
                                 lambda n, d, dev: (*_data(n, d, dev, 5), *_coefs(dev, 1, 0.5)),
                                 lambda a, m=dmd: ref.rmmd_cotangent_ref(*a, **SCAL, dmd=m, dmd_eps=1e-4),
                                 lambda a, b, m=dmd: ops.rmmd_cotangent(*a, **SCAL, dmd=m, dmd_eps=1e-4, backend=b)))
    register_case("aux_loss", Case("aux_loss", 4, lambda n, d, dev: (*_data(n, d, dev, 3), *_coefs(dev, 1, 0.5)),
                                   lambda a: ref.aux_loss_ref(*a), lambda a, b: ops.aux_loss(*a, backend=b)))


_register_builtin_cases()


# ---------------------------------------------------------------------------------------------- measuring
def _sync(device: str) -> None:
    if device == "cuda":
        torch.cuda.synchronize()


def _time(fn, device: str, min_run_time: float) -> float:
    """Median seconds per call; warm-up (and compilation) outside the timed region."""
    fn()
    if device == "cuda":
        import triton.testing

        return triton.testing.do_bench(fn, quantiles=[0.5, 0.2, 0.8])[0] * 1e-3  # median, ms -> s
    timer = benchmark.Timer(stmt="fn()", globals={"fn": fn}, num_threads=torch.get_num_threads())
    return timer.blocked_autorange(min_run_time=min_run_time).median


def _copy_gbs(numel: int, dtype, device: str, min_run_time: float, cache: dict) -> float:
    """GB/s of ``dst.copy_(src)`` with ``numel``-element tensors (2 numel elements moved), memoised per run."""
    key = (numel, dtype)
    if key not in cache:
        src = torch.randn(numel, device=device).to(dtype)
        dst = torch.empty_like(src)
        dst.fill_(0)  # first touch outside the timing, as for every later call
        cache[key] = 2 * numel * src.element_size() / _time(lambda: dst.copy_(src), device, min_run_time) / 1e9
    return cache[key]


def _out_bytes(out) -> int:
    if isinstance(out, torch.Tensor):
        return out.numel() * out.element_size()
    return sum(_out_bytes(o) for o in out) if isinstance(out, (tuple, list)) else 0


def peak_extra_bytes(fn, device: str) -> int:
    """Peak bytes allocated during one call of ``fn`` beyond the bytes it returns (see module doc)."""
    if device == "cuda":
        torch.cuda.synchronize()
        base = torch.cuda.memory_allocated()
        torch.cuda.reset_peak_memory_stats()
        out = fn()
        torch.cuda.synchronize()
        return max(0, torch.cuda.max_memory_allocated() - base - _out_bytes(out))
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        out = fn()
    # Kineto's "[memory]" records: +bytes per allocation, -bytes per free, in time order.
    records = sorted((e for e in prof.profiler.kineto_results.events() if e.name() == "[memory]"),
                     key=lambda e: e.start_ns())
    current = peak = 0
    for e in records:
        current += e.nbytes()
        peak = max(peak, current)
    return max(0, peak - _out_bytes(out))


def providers(device: str, op: str, extra: tuple[str, ...] = ()) -> list[str]:
    """What a benchmark times for ``op`` on ``device``: the eager and compiled reference, ``extra`` (a
    benchmark's own torch baselines) and every fused backend that can run there (those auto-dispatch
    would try, plus Triton on CUDA whenever it is available)."""
    names = ["reference", "reference_compiled", *extra]
    probe = torch.empty(1, device=device)
    try:
        fused = ops.dispatch.auto_backends(op, probe)
    except ValueError:  # an op the dispatcher does not know (yet): reference only
        return names
    available = ops.available_backends(op, probe)
    return names + [b for b in ("cpu", "triton", "cuda")
                    if b in fused or (b == "triton" and device == "cuda" and b in available)]


def run(cases, sizes, dtypes, device: str, min_run_time: float, compile_ref: bool, baseline_max: int,
        memory: bool = True, log=print) -> list[dict]:
    rows, compiled, copies = [], {}, {}
    for dtype in dtypes:
        for numel in sizes:
            itemsize = torch.empty((), dtype=dtype).element_size()
            copy_n_gbs = _copy_gbs(numel, dtype, device, min_run_time, copies)
            for name in cases:
                case = CASES[name]
                copy_gbs = _copy_gbs(case.moved * numel // 2, dtype, device, min_run_time, copies)
                args = case.inputs(numel, dtype, device)
                times, extra = {}, {}
                for provider in providers(device, case.op):
                    if provider == "reference" and numel > baseline_max:
                        continue
                    if provider == "reference_compiled":
                        if not compile_ref:
                            continue
                        key = (name, dtype)
                        if key not in compiled:
                            compiled[key] = torch.compile(case.reference, dynamic=True)
                        fn = lambda f=compiled[key]: f(args)  # noqa: E731
                    elif provider == "reference":
                        fn = lambda: case.reference(args)  # noqa: E731
                    else:
                        fn = lambda p=provider: case.fused(args, p)  # noqa: E731
                    t0 = time.perf_counter()
                    times[provider] = _time(fn, device, min_run_time)
                    extra[provider] = peak_extra_bytes(fn, device) if memory else None
                    log(f"  {name} {str(dtype)[6:]} {numel} {provider}: {times[provider] * 1e3:.3f} ms "
                        f"({time.perf_counter() - t0:.1f} s)", file=sys.stderr)
                nbytes = case.moved * numel * itemsize
                for provider, seconds in times.items():
                    gbs = nbytes / seconds / 1e9
                    rows.append(dict(
                        case=name, op=case.op, dtype=str(dtype).replace("torch.", ""), numel=numel,
                        provider=provider, ms=seconds * 1e3, gbs=gbs, copy_gbs=copy_gbs, copy_n_gbs=copy_n_gbs,
                        frac_copy=gbs / copy_gbs,
                        speedup_vs_eager=times["reference"] / seconds if "reference" in times else None,
                        speedup_vs_compiled=(times["reference_compiled"] / seconds
                                             if "reference_compiled" in times else None),
                        extra_mib=None if extra[provider] is None else extra[provider] / 2**20))
                del args
    return rows


# ---------------------------------------------------------------------------------------------- reporting
def _f(value, fmt: str) -> str:
    return "—" if value is None or (isinstance(value, float) and math.isnan(value)) else fmt.format(value)


def markdown(rows: list[dict], env: dict, threads: int) -> str:
    lines = [f"Device: {env['device']}; {threads} threads; torch {env['torch']}, triton {env['triton']}; "
             f"commit {env['commit']}, {env['date']}", "",
             "| case | dtype | elements | provider | ms | GB/s | % copy | × eager | × compiled | extra MiB |",
             "|---|---|---:|---|---:|---:|---:|---:|---:|---:|"]
    for r in rows:
        lines.append(f"| {r['case']} | {r['dtype']} | {r['numel']:,} | {r['provider']} | {r['ms']:.3f} | "
                     f"{r['gbs']:.2f} | {100 * r['frac_copy']:.0f}% | {_f(r['speedup_vs_eager'], '{:.2f}')} | "
                     f"{_f(r['speedup_vs_compiled'], '{:.2f}')} | {_f(r['extra_mib'], '{:.2f}')} |")
    return "\n".join(lines)


def targets(rows: list[dict]) -> str:
    """The README targets per (case, dtype, fused provider) at >= 4M elements: met / missed / not measured."""
    lines = [f"Targets (>= {TARGET_NUMEL:,} elements: >= {100 * TARGET_FRAC_COPY:.0f}% of copy and "
             f">= {TARGET_VS_COMPILED}x torch.compile):"]
    for r in rows:
        if r["numel"] < TARGET_NUMEL or r["provider"].startswith("reference"):
            continue
        bw = r["frac_copy"] >= TARGET_FRAC_COPY
        vs = r["speedup_vs_compiled"]
        vs_ok = None if vs is None else vs >= TARGET_VS_COMPILED
        verdict = "met" if bw and vs_ok else "MISSED" if not bw or vs_ok is False else "bandwidth met, compile n/a"
        lines.append(f"  {r['case']:<20} {r['dtype']:<9} {r['numel']:>11,} {r['provider']:<7} "
                     f"{100 * r['frac_copy']:5.0f}% copy, {_f(vs, '{:.2f}x')} compiled: {verdict}")
    return "\n".join(lines)


def plot(rows: list[dict], path: str, title: str) -> None:
    """GB/s against elements, one panel per (case, dtype), one line per provider, copy dashed."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    cases = list(dict.fromkeys(r["case"] for r in rows))
    dtypes = list(dict.fromkeys(r["dtype"] for r in rows))
    fig, axes = plt.subplots(len(cases), len(dtypes), figsize=(5 * len(dtypes), 2.6 * len(cases)), squeeze=False)
    for i, case in enumerate(cases):
        for j, dtype in enumerate(dtypes):
            ax = axes[i][j]
            sel = [r for r in rows if r["case"] == case and r["dtype"] == dtype]
            for provider in dict.fromkeys(r["provider"] for r in sel):
                pts = sorted((r["numel"], r["gbs"]) for r in sel if r["provider"] == provider)
                ax.plot(*zip(*pts), marker="o", label=provider)
            copy = sorted({(r["numel"], r["copy_gbs"]) for r in sel})
            if copy:
                ax.plot(*zip(*copy), "k--", label="copy")
            ax.set_xscale("log", base=2)
            ax.set_yscale("log")
            ax.set_title(f"{case} ({dtype})", fontsize=9)
            ax.set_xlabel("elements", fontsize=8)
            ax.set_ylabel("GB/s", fontsize=8)
            ax.tick_params(labelsize=7)
            ax.legend(fontsize=6)
    fig.suptitle(title, fontsize=9)
    fig.tight_layout(rect=(0, 0, 1, 1 - 0.3 / fig.get_figheight()))  # leave room for the title
    fig.savefig(path, dpi=80)
    plt.close(fig)


def add_sibling_args(parser, stem: str, dtypes: list[str], smoke_help: str) -> None:
    """The options bench_ops' sibling benchmarks share (bench_rewards_ema, bench_grad_norm): dtypes, device,
    CPU timing budget, smoke mode and the JSON output that :func:`write_json` writes."""
    parser.add_argument("--dtypes", nargs="+", default=dtypes)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--min-run-time", type=float, default=0.3, help="seconds per CPU measurement")
    parser.add_argument("--smoke", action="store_true", help=smoke_help)
    parser.add_argument("--out", default=None, help=f"JSON path (default benchmarks/results/{stem}_<device>_<date>.json)")
    parser.add_argument("--overwrite", action="store_true", help="replace an existing JSON file")


def sibling_row(case: str, dtype, numel: int, provider: str, seconds: float, nbytes: int, copy_gbs: float,
                times: dict, **extra) -> dict:
    """One table / JSON row of a sibling benchmark: ``provider`` took ``seconds`` to move ``nbytes``; ``times``
    holds every provider's seconds for the same case (the eager and compiled references among them)."""
    gbs = nbytes / seconds / 1e9
    return dict(case=case, dtype=str(dtype).replace("torch.", ""), numel=numel, provider=provider, ms=seconds * 1e3,
                gbs=gbs, copy_gbs=copy_gbs, frac_copy=gbs / copy_gbs, speedup_vs_eager=times["reference"] / seconds,
                speedup_vs_compiled=times["reference_compiled"] / seconds, extra_mib=None, **extra)


def finish_sibling(stem: str, args, env: dict, rows: list[dict], footer: str | None = None) -> int:
    """Print a sibling benchmark's table (and ``footer``), then write its JSON unless a smoke run has no
    ``--out``; returns the exit status."""
    print(markdown(rows, env, torch.get_num_threads()))
    if footer:
        print(footer)
    if args.smoke and args.out is None:
        return 0
    return write_json(stem, args.device, env, rows, args.out, args.overwrite)


def write_json(stem: str, device: str, env: dict, rows: list[dict], out: str | None, overwrite: bool) -> int:
    """Write ``{"environment", "threads", "rows"}`` to ``out`` (default
    ``benchmarks/results/<stem>_<device>_<date>.json``) unless it exists and ``overwrite`` is off; returns the
    exit status (1 when refused). Used by the sibling benchmarks (rewards / EMA, gradient norm)."""
    out = out or os.path.join(os.path.dirname(os.path.abspath(__file__)), "results",
                              f"{stem}_{device}_{env['date']}.json")
    if os.path.exists(out) and not overwrite:
        print(f"{out} exists; pass --overwrite to replace it", file=sys.stderr)
        return 1
    os.makedirs(os.path.dirname(out), exist_ok=True)
    with open(out, "w") as f:
        json.dump({"environment": env, "threads": torch.get_num_threads(), "rows": rows}, f, indent=1)
    print(f"wrote {out}")
    return 0


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", type=int, nargs="+", default=None,
                        help=f"elements per tensor, multiples of {BATCH} (default {DEFAULT_SIZES})")
    parser.add_argument("--dtypes", nargs="+", default=["float32", "bfloat16"],
                        choices=["float32", "bfloat16", "float16", "float64"])
    parser.add_argument("--cases", nargs="+", default=None, help="subset of the registered cases (default all)")
    parser.add_argument("--extra-cases", nargs="+", default=[],
                        help="modules to import first; they call bench_ops.register_case (e.g. other branches' ops)")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--threads", type=int, default=None, help="torch.set_num_threads (default: torch's)")
    parser.add_argument("--min-run-time", type=float, default=0.2, help="seconds per CPU measurement")
    parser.add_argument("--baseline-max-numel", type=int, default=BASELINE_MAX_NUMEL,
                        help="skip eager / compiled references above this many elements")
    parser.add_argument("--no-compile", action="store_true", help="skip torch.compile(reference)")
    parser.add_argument("--no-memory", action="store_true", help="skip the peak-extra-memory measurement")
    parser.add_argument("--smoke", action="store_true",
                        help="tiny sizes, float32, short timing, no compile; files only with --out")
    parser.add_argument("--out", default=None,
                        help="JSON path (default benchmarks/results/bench_ops_<device>_<date>.json); the PNG "
                             "goes next to it")
    parser.add_argument("--overwrite", action="store_true", help="replace existing JSON / PNG files")
    parser.add_argument("--note", default="", help="free text stored in the JSON (e.g. machine load)")
    parser.add_argument("--replot", default=None, metavar="JSON", help="only redraw the PNG of a recorded run")
    args = parser.parse_args(argv)
    if args.replot:
        with open(args.replot) as f:
            rec = json.load(f)
        env = rec["environment"]
        png = os.path.splitext(args.replot)[0] + ".png"
        plot(rec["rows"], png, f"{env['device']}, {rec['threads']} threads, torch {env['torch']}, {env['date']}")
        print(f"wrote {png}")
        return 0
    for module in args.extra_cases:
        importlib.import_module(module)
    if args.threads:
        torch.set_num_threads(args.threads)
    sizes = args.sizes or (SMOKE_SIZES if args.smoke else DEFAULT_SIZES)
    if any(n % BATCH or n <= 0 for n in sizes):
        parser.error(f"--sizes must be positive multiples of the batch size {BATCH}")
    dtypes = ["float32"] if args.smoke and args.dtypes == parser.get_default("dtypes") else args.dtypes
    cases = args.cases or list(CASES)
    unknown = [c for c in cases if c not in CASES]
    if unknown:
        parser.error(f"unknown cases {unknown}; registered: {list(CASES)}")
    min_run_time = 0.02 if args.smoke else args.min_run_time
    compile_ref = not (args.no_compile or args.smoke)

    out = None
    if not args.smoke or args.out:
        env_date = _environment()["date"]
        out = args.out or os.path.join(os.path.dirname(os.path.abspath(__file__)), "results",
                                       f"bench_ops_{args.device}_{env_date}.json")
        png = os.path.splitext(out)[0] + ".png"
        if not args.overwrite and (os.path.exists(out) or os.path.exists(png)):
            parser.error(f"{out} or {png} exists; pass --overwrite to replace it")

    env = _environment()
    threads = torch.get_num_threads()
    start = time.perf_counter()
    rows = run(cases, sizes, [getattr(torch, d) for d in dtypes], args.device, min_run_time, compile_ref,
               args.baseline_max_numel, memory=not args.no_memory)
    wall = time.perf_counter() - start
    print(markdown(rows, env, threads))
    print()
    print(targets(rows))
    print(f"\n(total {wall:.0f} s)")
    if out is None:
        return 0
    os.makedirs(os.path.dirname(os.path.abspath(out)), exist_ok=True)
    with open(out, "w") as f:
        json.dump({"environment": env, "threads": threads, "wall_s": wall, "sizes": sizes, "note": args.note,
                   "load_average": os.getloadavg() if hasattr(os, "getloadavg") else None, "rows": rows}, f, indent=1)
    plot(rows, png, f"{env['device']}, {threads} threads, torch {env['torch']}, {env['date']}")
    print(f"wrote {out} and {png}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
