"""``python -m rmmd_core.info``: versions, build facts, backend availability per op, and a self-test.

Prints (house style "Dispatch"; the idea of ``python -m xformers.info``):

* Python, torch and Triton versions; whether Triton runs compiled or in the interpreter;
* the C++ extension: loaded or why not, CPU / CUDA kernels, OpenMP and ATen threads, and whether the CPU
  noise path is AVX-512, AVX2 or scalar on this machine, which ISA clone the element loops run and whether large
  outputs get huge pages (``rmmd_core::build_info``);
* for every op the dispatcher knows (``rmmd_core.ops.dispatch._OPS``): each backend's availability on CPU
  tensors or the reasons it cannot run (``backend_reasons``), and what ``auto`` picks;
* a one-line self-test per (op, fused backend): the backend against ``ops/reference.py`` on a small random
  input (fixed seed), with the max abs error and the tolerance.

Exit status 0 when every self-test passed, 1 otherwise. ``--no-self-test`` skips them; ``--json`` prints
the same facts as JSON.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
from collections.abc import Callable

import torch

from . import ops
from .ops import dispatch
from .ops.denoise_reference import denoise_step_ref
from .ops.crps_reference import crps_fair_ref, forecast_stats_ref
from .ops.adam_reference import adam_update_ref
from .ops.ema_reference import ema_update_ref
from .ops.grad_norm_reference import grad_norm_ref, grad_scale_ref
from .ops.reference import aux_loss_ref, posterior_step_ref, renoise_ref, rmmd_cotangent_ref
from .ops.reward_reference import grayscale_reward_ref, laplacian_reward_ref

__all__ = ["SELF_TESTS", "collect", "format_report", "main", "self_test"]

_SEED = 20260101
# fp32 inputs of O(1): a few ULP of the noise's log / cos between libm and torch, plus output rounding.
_ATOL, _RTOL = 1e-5, 1e-5


def _rand(*shape) -> torch.Tensor:
    return torch.randn(*shape, dtype=torch.float32)


def _coefs(batch: int, k: int) -> list[torch.Tensor]:
    return [0.2 + torch.rand(batch, dtype=torch.float64) for _ in range(k)]


def _posterior_step(backend: str):
    z, x, (A, C, g) = _rand(3, 257), _rand(3, 257), _coefs(3, 3)
    return ops.posterior_step(z, x, A, C, g, _SEED, 5, backend=backend), posterior_step_ref(z, x, A, C, g, _SEED, 5)


def _renoise(backend: str):
    x, (a, s) = _rand(3, 257), _coefs(3, 2)
    return ops.renoise(x, a, s, _SEED, 5, backend=backend), renoise_ref(x, a, s, _SEED, 5)


def _denoise_step(backend: str):
    z, f, cs = _rand(3, 257), _rand(3, 257), _coefs(3, 5)
    return (ops.denoise_step(z, f, *cs, _SEED, 5, want_x0=True, backend=backend),
            denoise_step_ref(z, f, *cs, _SEED, 5, want_x0=True))


def _rmmd_cotangent(backend: str):
    t, (w,) = [_rand(3, 257) for _ in range(5)], _coefs(3, 1)
    kw = dict(lam=0.7, lam_reg=0.35, scale=0.37, dmd=True, dmd_eps=1e-3)
    return ops.rmmd_cotangent(*t, w, **kw, backend=backend), rmmd_cotangent_ref(*t, w, **kw)


def _aux_loss(backend: str):
    t, (w,) = [_rand(3, 257) for _ in range(3)], _coefs(3, 1)
    return ops.aux_loss(*t, w, backend=backend), aux_loss_ref(*t, w)


def _grayscale_reward(backend: str):
    x = _rand(2, 3, 7, 11)
    return ops.grayscale_reward(x, backend=backend), grayscale_reward_ref(x)


def _laplacian_reward(backend: str):
    x = _rand(2, 3, 7, 11)
    return ops.laplacian_reward(x, backend=backend), laplacian_reward_ref(x)


def _ema_update(backend: str):
    # a mixed-dtype pair list as the engine passes it (fp32 EMA of bf16 params), updated in place
    params = [_rand(257), _rand(5, 3).to(torch.bfloat16)]
    ema = [_rand(257), _rand(5, 3)]
    ema_ref = [e.clone() for e in ema]
    ops.ema_update(ema, params, 0.9, backend=backend)
    ema_update_ref(ema_ref, params, 0.9)
    return ema, ema_ref


def _grad_norm(backend: str):
    # a mixed-dtype gradient list with a strided view, as the engine's clip would see it
    grads = [_rand(257), _rand(5, 3).to(torch.bfloat16), _rand(7, 4).t()]
    return ops.grad_norm(grads, backend=backend), grad_norm_ref(grads)


def _grad_scale(backend: str):
    grads = [_rand(257), _rand(5, 3).to(torch.bfloat16)]
    grads_ref = [g.clone() for g in grads]
    coef = torch.tensor(0.37)
    ops.grad_scale_(grads, coef, backend=backend)
    grad_scale_ref(grads_ref, coef)
    return grads, grads_ref


def _adam_update(backend: str):
    # the engine's fused optimiser step: an fp32 and a bf16 parameter, clip scale, weight decay and an EMA
    params = [_rand(257), _rand(5, 3).to(torch.bfloat16)]
    lists = [params, [0.1 * _rand(*p.shape).to(p.dtype) for p in params],
             [0.1 * _rand(*p.shape).to(p.dtype) for p in params], [(0.1 * _rand(*p.shape)).square().to(p.dtype)
                                                                  for p in params], [_rand(257), _rand(5, 3)]]
    lists_ref = [[t.clone() for t in lst] for lst in lists]
    kw = dict(step_size=1e-2 / (1 - 0.9 ** 3), beta1=0.9, beta2=0.99, eps=1e-8, bias_correction2_sqrt=(1 - 0.99 ** 3) ** 0.5,
              weight_decay=0.01, grad_scale=0.37, ema_decay=0.9)
    ops.adam_update(*lists, **kw, backend=backend)
    adam_update_ref(*lists_ref, **kw)
    return lists, lists_ref


def _crps_fair(backend: str):
    ens, y, w = _rand(5, 2, 3, 37), _rand(2, 3, 37), 0.5 + torch.rand(3, 1)
    return ops.crps_fair(ens, y, w, backend=backend), crps_fair_ref(ens, y, w)


def _forecast_stats(backend: str):
    ens, y = _rand(5, 2, 3, 37), _rand(2, 3, 37)

    def fields(st):
        return st.skill, st.spread, st.mse, st.var, st.weight

    return fields(ops.forecast_stats(ens, y, backend=backend)), fields(forecast_stats_ref(ens, y))


SELF_TESTS: dict[str, Callable[[str], tuple]] = {
    "posterior_step": _posterior_step, "renoise": _renoise, "denoise_step": _denoise_step,
    "rmmd_cotangent": _rmmd_cotangent, "aux_loss": _aux_loss, "grayscale_reward": _grayscale_reward,
    "laplacian_reward": _laplacian_reward, "ema_update": _ema_update, "crps_fair": _crps_fair,
    "forecast_stats": _forecast_stats, "grad_norm": _grad_norm, "grad_scale": _grad_scale,
    "adam_update": _adam_update,
}
"""op -> ``backend -> (outputs, reference outputs)``; ops added elsewhere register here to be self-tested."""


def _flat(out) -> list[torch.Tensor]:
    return [out] if isinstance(out, torch.Tensor) else [t for o in out for t in _flat(o)]


def self_test(op: str, backend: str) -> dict:
    """Run ``SELF_TESTS[op]`` on ``backend``: ``{"ok", "max_err", "tol", "error"}``."""
    gen_state = torch.get_rng_state()
    torch.manual_seed(0)
    try:
        got, want = SELF_TESTS[op](backend)
        errs = []
        ok = True
        for g, w in zip(_flat(got), _flat(want)):
            g, w = g.detach().cpu().double(), w.detach().cpu().double()
            if g.shape != w.shape:
                return {"ok": False, "max_err": None, "tol": _ATOL, "error": f"shape {tuple(g.shape)} != {tuple(w.shape)}"}
            diff = (g - w).abs()
            errs.append(diff.max().item() if diff.numel() else 0.0)
            ok = ok and bool((diff <= _ATOL + _RTOL * w.abs()).all())
        return {"ok": ok, "max_err": max(errs, default=0.0), "tol": _ATOL, "error": None}
    except Exception as err:  # noqa: BLE001  (a diagnostic tool reports, it does not crash)
        return {"ok": False, "max_err": None, "tol": _ATOL, "error": f"{type(err).__name__}: {err}"}
    finally:
        torch.set_rng_state(gen_state)


def _build_info() -> dict[str, str] | str:
    if ops._C_IMPORT_ERROR is not None:
        return f"not loaded: {ops._C_IMPORT_ERROR}"
    if not hasattr(torch.ops.rmmd_core, "build_info"):
        return "loaded, but too old to report build_info (rebuild: pip install --no-build-isolation -e .)"
    return dict(item.split("=", 1) for item in torch.ops.rmmd_core.build_info().split())


def collect(run_self_test: bool = True) -> dict:
    """Every fact the report prints, as plain data."""
    try:
        import triton

        triton_version = triton.__version__
    except ImportError as err:
        triton_version = f"not installed ({err})"
    facts = {
        "python": platform.python_version(), "platform": platform.platform(), "torch": torch.__version__,
        "torch_cuda": torch.version.cuda, "cuda_available": torch.cuda.is_available(), "triton": triton_version,
        "triton_mode": ("unavailable" if ops._TRITON_IMPORT_ERROR is not None else
                        "interpreter (TRITON_INTERPRET=1, CPU tensors)" if ops._TRITON_INTERPRETER else
                        "compiled (GPU tensors)" if torch.cuda.is_available() else
                        "compiled, but no GPU is visible: the triton backend cannot run here"),
        "torch_threads": torch.get_num_threads(), "torch_openmp": bool(torch._C.has_openmp),
        "backend_env": os.environ.get(dispatch.BACKEND_ENV, "(unset: auto)"),
        "extension": _build_info(),
        "extension_file": None if ops._C_IMPORT_ERROR is not None else sys.modules["rmmd_core._C"].__file__,
        "ops": {},
    }
    probe = torch.empty(1)
    for op in dispatch._OPS:
        entry = {"reasons": ops.backend_reasons(op, probe), "auto_cpu": dispatch.resolve_backend(op, probe, backend="auto"),
                 "self_test": {}}
        if run_self_test and op in SELF_TESTS:
            for backend, reasons in entry["reasons"].items():
                if backend != "reference" and not reasons:
                    entry["self_test"][backend] = self_test(op, backend)
        facts["ops"][op] = entry
    return facts


def format_report(facts: dict) -> str:
    lines = [f"rmmd_core info", f"  python {facts['python']} on {facts['platform']}",
             f"  torch {facts['torch']} (CUDA {facts['torch_cuda'] or 'none: CPU build'}; GPU visible: "
             f"{facts['cuda_available']}); threads {facts['torch_threads']}, OpenMP {facts['torch_openmp']}",
             f"  triton {facts['triton']}: {facts['triton_mode']}",
             f"  {dispatch.BACKEND_ENV} = {facts['backend_env']}"]
    ext = facts["extension"]
    if isinstance(ext, str):
        lines.append(f"  rmmd_core._C: {ext}")
    else:
        path = ext.get("noise_path", "avx2" if ext.get("avx2_noise_used") == "1" else "scalar")
        noise = ("AVX-512 (16 lanes)" if path == "avx512" else "AVX2+FMA (8 lanes)" if path == "avx2" else
                 "scalar: RMMD_CORE_CPU_SIMD=0" if ext.get("cpu_avx2_fma") == "1" and ext.get("avx2_path_compiled") == "1"
                 else "scalar: CPU lacks AVX2/FMA" if ext.get("avx2_path_compiled") == "1" else "scalar: not an x86-64 build")
        lines.append(f"  rmmd_core._C: {facts['extension_file']}")
        lines.append(f"    {ext.get('build', '?')} build ({ext.get('compiler', '?')}), OpenMP {ext.get('openmp', '?')}, "
                     f"ATen threads {ext.get('aten_threads', '?')}; CPU noise path: {noise}")
        lines.append(f"    element loops: {ext.get('isa_clone_used', '?')} clone; huge-page outputs: "
                     f"{'on' if ext.get('thp_outputs') == '1' else 'off (RMMD_CORE_THP=0 or not Linux)'}")
    lines.append("")
    lines.append("backends per op (on CPU tensors; 'auto' never picks the Triton interpreter):")
    failures = 0
    for op, entry in facts["ops"].items():
        lines.append(f"  {op}  [auto -> {entry['auto_cpu']}]")
        for backend, reasons in entry["reasons"].items():
            lines.append(f"    {backend:<9} {'available' if not reasons else 'unavailable: ' + '; '.join(reasons)}")
        for backend, res in entry["self_test"].items():
            if res["error"] is not None:
                verdict = f"FAIL ({res['error']})"
            else:
                verdict = f"{'ok' if res['ok'] else 'FAIL'} (max |err| {res['max_err']:.2e}, tol {res['tol']:.0e} + rel)"
            failures += not res["ok"]
            lines.append(f"    self-test {backend} vs reference: {verdict}")
        if op not in SELF_TESTS:
            lines.append("    self-test: none registered (rmmd_core.info.SELF_TESTS)")
    lines.append("")
    lines.append("self-tests: " + ("all passed" if failures == 0 else f"{failures} FAILED"))
    return "\n".join(lines)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m rmmd_core.info", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--no-self-test", action="store_true", help="skip the per-op self-tests")
    parser.add_argument("--json", action="store_true", help="print the facts as JSON")
    args = parser.parse_args(argv)
    facts = collect(run_self_test=not args.no_self_test)
    print(json.dumps(facts, indent=1, default=str) if args.json else format_report(facts))
    failed = any(not r["ok"] for e in facts["ops"].values() for r in e["self_test"].values())
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
