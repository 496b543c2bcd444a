"""rmmd_core::crps_fair and rmmd_core::forecast_stats (method.md §c.7, §e K4c, K10): every backend against
ops/crps_reference.py (float64 truth), odd / prime shapes, strided inputs, dtypes, gradients and autograd,
ties, masks, opcheck, torch.compile, memory (no M x M intermediate) and input errors."""

from __future__ import annotations

import importlib.util
import math
from pathlib import Path

import pytest
import torch

from rmmd_core import ops
from rmmd_core.ops import dispatch
from rmmd_core.ops.crps import FORECAST_FIELDS
from rmmd_core.ops.crps_reference import (crps_fair_m2_ref, crps_fair_pairwise, crps_fair_ref,
                                          forecast_stats_ref)

_REASONS = ops.backend_reasons("crps_fair")
HAS_CPU_OP = not _REASONS["cpu"]
HAS_TRITON = not _REASONS["triton"]
needs_cpu_op = pytest.mark.skipif(not HAS_CPU_OP, reason=str(_REASONS["cpu"]))
needs_triton = pytest.mark.skipif(not HAS_TRITON, reason=str(_REASONS["triton"]))
FUSED = [pytest.param("cpu", marks=needs_cpu_op),
         pytest.param("triton", marks=[pytest.mark.interpreter, needs_triton])]
LOWP = (torch.bfloat16, torch.float16)
MEMBERS = (2, 3, 8, 17, 33)
REPO = Path(__file__).resolve().parents[1]


def _device(backend: str) -> str:
    return "cuda" if backend == "cuda" or (backend == "triton" and not dispatch._triton_interpreter) else "cpu"


def _inputs(M, shape, dtype=torch.float32, device="cpu", weights=True):
    """Fresh tie-free members (continuous draws), target and (variable x area)-style weights for S = shape[1:]."""
    ens = (1.3 * torch.randn(M, *shape, dtype=torch.float64) + 0.2).to(device=device, dtype=dtype)
    target = torch.randn(*shape, dtype=torch.float64).to(device=device, dtype=dtype)
    w = None
    if weights:
        S = shape[1:]
        w = (0.1 + torch.rand(*S[:1], *([1] * (len(S) - 1)), dtype=torch.float64))  # per-variable
        if len(S) >= 2:
            w = w * (0.5 + torch.rand(S[1], *([1] * (len(S) - 2)), dtype=torch.float64))  # "area"
        w = w.to(device)
    return ens, target, w


def _ref(ens, target, w=None, mask=None):
    """The truth for crps_fair: closed form for M = 2, sorted form otherwise (as the public API)."""
    if ens.shape[0] == 2:
        return crps_fair_m2_ref(ens, target, w, mask)
    return crps_fair_ref(ens, target, w, mask)


def _f64(*ts):
    return tuple(t.detach().cpu().double() if t is not None else None for t in ts)


def _max_err(a, b):
    return (a.double().cpu() - b.double().cpu()).abs().max().item() if a.numel() else 0.0


def _assert_close(actual, expected, atol, rtol, what):
    a, e = actual.double().cpu(), expected.double().cpu()
    assert a.shape == e.shape, f"{what}: shape {tuple(a.shape)} != {tuple(e.shape)}"
    bad = (a - e).abs() > atol + rtol * e.abs()
    if bad.any():
        idx = bad.nonzero()[:5].tolist()
        pytest.fail(f"{what}: {int(bad.sum())}/{bad.numel()} mismatches (atol={atol:.3g}, rtol={rtol:.3g}, max abs "
                    f"err {_max_err(a, e):.3g}); first at {idx}: got {[a[tuple(i)].item() for i in idx]}, "
                    f"expected {[e[tuple(i)].item() for i in idx]}")


def _check_crps(out, ens, target, w, mask, what):
    crps, grad = out
    assert crps.shape == (ens.shape[1],) and crps.dtype == ens.dtype, what
    assert grad.shape == ens.shape and grad.dtype == ens.dtype and grad.is_contiguous(), what
    ref_c, ref_g = _ref(ens.cpu(), target.cpu(), *(t.cpu() if t is not None else None for t in (w, mask)))
    truth_c, truth_g = _ref(*_f64(ens, target, w), mask.cpu() if mask is not None else None)
    if ens.dtype in LOWP:
        # The kernel's error against the float64 truth (same low-precision-valued inputs) may be at most ~2x
        # the reference's own error at this precision (house style).
        _assert_close(crps, truth_c, atol=2 * _max_err(ref_c, truth_c) + 1e-6, rtol=0.0, what=f"{what} crps vs truth")
        _assert_close(grad, truth_g, atol=2 * _max_err(ref_g, truth_g) + 1e-7, rtol=0.0, what=f"{what} grad vs truth")
    elif ens.dtype == torch.float64:
        _assert_close(crps, truth_c, atol=1e-13, rtol=1e-12, what=f"{what} crps")
        _assert_close(grad, truth_g, atol=1e-15, rtol=1e-12, what=f"{what} grad")
    else:
        # float32: per-element math identical up to summation order, per-sample sums in fp32 blocks.
        _assert_close(crps, truth_c, atol=1e-6, rtol=2e-6, what=f"{what} crps")
        _assert_close(grad, ref_g, atol=1e-9, rtol=1e-6, what=f"{what} grad vs fp32 reference")
        _assert_close(grad, truth_g, atol=1e-8, rtol=1e-6, what=f"{what} grad vs truth")


def _matrix():
    cases = []
    for backend in FUSED:
        name = backend.values[0]
        for M in MEMBERS:
            for dtype in (torch.float32, torch.float64, torch.bfloat16, torch.float16):
                shapes = [(1, 7), (2, 3, 11, 13)]
                if name == "cpu" or (dtype == torch.float32 and M == 3):
                    shapes.append((2, 16411))  # prime, > the CPU chunk (16384): several tasks per sample
                for shape in shapes:
                    cases.append(pytest.param(M, shape, dtype, name, marks=backend.marks,
                                              id=f"{name}-M{M}-{shape}-{str(dtype)[6:]}"))
    return cases


@pytest.mark.parametrize("M,shape,dtype,backend", _matrix())
def test_crps_matches_reference(M, shape, dtype, backend):
    ens, target, w = _inputs(M, shape, dtype, _device(backend))
    _check_crps(ops.crps_fair(ens, target, w, backend=backend), ens, target, w, None, f"{backend} M={M} {shape} {dtype}")


@pytest.mark.parametrize("backend", FUSED)
@pytest.mark.parametrize("M", [3, 150])  # 150 > kRankMax: the CPU kernel's stable-sort path
def test_crps_large_member_counts(M, backend):
    ens, target, w = _inputs(M, (2, 37), torch.float32, _device(backend))
    _check_crps(ops.crps_fair(ens, target, w, backend=backend), ens, target, w, None, f"{backend} M={M}")


@pytest.mark.parametrize("backend", FUSED)
@pytest.mark.parametrize("M", [2, 8])
def test_crps_without_grad_and_without_weights(M, backend):
    ens, target, _ = _inputs(M, (3, 5, 7), torch.float32, _device(backend))
    crps = ops.crps_fair(ens, target, with_grad=False, backend=backend)
    assert isinstance(crps, torch.Tensor) and crps.shape == (3,)
    _assert_close(crps, crps_fair_pairwise(*_f64(ens, target)), atol=1e-6, rtol=2e-6, what=f"{backend} no weights")


@pytest.mark.parametrize("backend", FUSED)
@pytest.mark.parametrize("M", [2, 5])
def test_crps_non_contiguous_inputs(M, backend):
    dev = _device(backend)
    ens = torch.randn(6, 3, 2 * M, 9, device=dev).permute(2, 0, 3, 1)[::2]  # (M, 6, 9, 3), strided everywhere
    target = torch.randn(3, 9, 6, device=dev).permute(2, 1, 0)  # (6, 9, 3)
    w = torch.rand(3, 9, device=dev, dtype=torch.float64).t()  # (9, 3) transposed
    assert not ens.is_contiguous() and not target.is_contiguous() and not w.is_contiguous()
    out = ops.crps_fair(ens, target, w, backend=backend)
    dense = ops.crps_fair(ens.contiguous(), target.contiguous(), w.contiguous(), backend=backend)
    assert torch.equal(out[0], dense[0]) and torch.equal(out[1], dense[1])
    _check_crps(out, ens, target, w, None, f"{backend} strided M={M}")


@pytest.mark.parametrize("backend", ["reference"] + FUSED)
@pytest.mark.parametrize("M", [2, 4])
def test_crps_explicit_ties(M, backend):
    """Tied members (and members equal to the target): M = 2 uses the symmetric closed form (sign(0) = 0),
    M > 2 the stable-sort ranks (earlier member first), on every backend."""
    dev = _device(backend) if backend != "reference" else "cpu"
    ens = torch.randn(M, 2, 9, dtype=torch.float64)
    target = torch.randn(2, 9, dtype=torch.float64)
    ens[0, :, :3] = target[:, :3]  # members equal to the target
    ens[1] = ens[0]  # every element has a tie between members 0 and 1
    if M > 2:
        ens[M - 1, :, ::2] = ens[0, :, ::2]  # a triple tie on some elements
    ens, target = ens.to(dev), target.to(dev)
    expected = crps_fair_m2_ref(ens, target) if M == 2 else crps_fair_ref(ens, target)
    got = ops.crps_fair(ens, target, backend=backend)
    _assert_close(got[0], expected[0], 1e-13, 1e-12, f"{backend} tie crps")
    _assert_close(got[1], expected[1], 1e-15, 1e-12, f"{backend} tie grad")
    if M == 2:
        # symmetric: tied members get the same sub-gradient
        assert torch.equal(got[1][0], got[1][1])


@pytest.mark.parametrize("backend", ["reference"] + FUSED)
def test_crps_masked_nan_target(backend):
    dev = _device(backend) if backend != "reference" else "cpu"
    ens, target, w = _inputs(5, (3, 4, 6), torch.float32, dev)
    mask = torch.rand(3, 4, 6, device=dev) > 0.3
    mask[:, 0, 0] = True
    target = torch.where(mask, target, torch.full_like(target, float("nan")))
    crps, grad = ops.crps_fair(ens, target, w, mask, backend=backend)
    assert torch.isfinite(crps).all() and torch.isfinite(grad).all()
    assert (grad[:, ~mask] == 0).all()
    _check_crps((crps, grad), ens, target, w, mask, f"{backend} masked")
    # Same as verifying only the masked-in elements with a zero weight elsewhere.
    clean = torch.where(mask, target, torch.zeros_like(target))
    with pytest.raises(ValueError, match="NaN"):
        ops.crps_fair(ens, target, w, backend=backend)
    _assert_close(crps, ops.crps_fair(ens, clean, w, mask, backend="reference")[0], 1e-6, 1e-6, "masked = zero weight")


def test_crps_mixed_target_dtype_is_promoted():
    ens, target, w = _inputs(4, (2, 9), torch.bfloat16)
    t32 = target.float() + 1e-3  # not representable in bf16
    backend = "cpu" if HAS_CPU_OP else "reference"
    crps, grad = ops.crps_fair(ens, t32, w, backend=backend)
    assert crps.dtype == grad.dtype == torch.bfloat16
    ref_c, ref_g = crps_fair_ref(ens, t32, w)
    _assert_close(crps, ref_c, 1e-2, 0.0, "promoted crps")
    _assert_close(grad, ref_g, 1e-3, 0.0, "promoted grad")


# --------------------------------------------------------------------------------------------------
# Autograd, opcheck, compile
# --------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("backend", FUSED)
@pytest.mark.parametrize("M", [2, 7])
def test_autograd_matches_reference(M, backend):
    ens, target, w = _inputs(M, (3, 4, 5), torch.float64, _device(backend))
    up = torch.randn(3, dtype=torch.float64, device=ens.device)

    def grads(name, with_grad):
        e, t = ens.clone().requires_grad_(True), target.clone().requires_grad_(True)
        out = ops.crps_fair(e, t, w, with_grad=with_grad, backend=name)
        crps = out[0] if with_grad else out
        (crps * up).sum().backward()
        return e.grad, t.grad

    expected = grads("reference", True)
    for with_grad in (True, False):  # with_grad=False still computes the gradient when inputs require it
        got = grads(backend, with_grad)
        for name, a, e in zip(("ens", "target"), got, expected):
            _assert_close(a, e, 1e-14, 1e-12, f"{backend} d/d{name} with_grad={with_grad}")


@needs_cpu_op
@pytest.mark.parametrize("M", [2, 5])
def test_gradcheck_cpu_op_float64(M):
    # Piecewise linear: finite differences (eps 1e-6) never cross a kink on these tie-free inputs.
    ens, target, w = _inputs(M, (2, 3, 4), torch.float64)
    fn = lambda e, t: ops.crps_fair(e, t, w, with_grad=False, backend="cpu")  # noqa: E731
    assert torch.autograd.gradcheck(fn, (ens.requires_grad_(True), target.requires_grad_(True)))


def test_reference_grad_is_the_autograd_gradient():
    # The op's grad output is what autograd of the value gives (tie-free inputs, sign(0) never hit).
    for M in (2, 6):
        ens, target, w = _inputs(M, (2, 3, 5), torch.float64)
        e = ens.clone().requires_grad_(True)
        _ref(e, target, w)[0].sum().backward()
        torch.testing.assert_close(e.grad, _ref(ens, target, w)[1], rtol=1e-12, atol=1e-15)


def _op_args(M=5, shape=(3, 4, 7), dtype=torch.float32, device="cpu", mask=True, with_grad=True):
    ens, target, w = _inputs(M, shape, dtype, device)
    m = (torch.rand(shape, device=device) > 0.2) if mask else None
    weight, total, m = ops.crps._prepare(ens, target, w, m)
    return ens, target, weight, 1.0 / total, m, with_grad


@needs_cpu_op
@pytest.mark.parametrize("M", [2, 5])
@pytest.mark.parametrize("requires_grad", [False, True])
def test_opcheck_cpu(M, requires_grad):
    ens, target, weight, inv, mask, _ = _op_args(M)
    ens.requires_grad_(requires_grad)
    target.requires_grad_(requires_grad)
    torch.library.opcheck(torch.ops.rmmd_core.crps_fair.default, (ens, target, weight, inv, mask, True))
    if not requires_grad:  # no mask, one uniform weight (1,), no gradient output
        uniform, total, _ = ops.crps._prepare(ens, target, None, None)
        assert uniform.shape == (1,)
        torch.library.opcheck(torch.ops.rmmd_core.crps_fair.default, (ens, target, uniform, 1.0 / total, None, False))
    torch.library.opcheck(torch.ops.rmmd_core.forecast_stats.default, (ens.detach(), target.detach(), weight, mask, 4, 7))


@pytest.mark.interpreter
@needs_triton
@pytest.mark.parametrize("M", [2, 5])
def test_opcheck_triton(M):
    from test_posterior_step_triton import OPCHECK_UTILS

    ens, target, weight, inv, mask, _ = _op_args(M, device=_device("triton"))
    torch.library.opcheck(torch.ops.rmmd_core.crps_fair_triton.default,
                          (ens.requires_grad_(True), target, weight, inv, mask, True), test_utils=OPCHECK_UTILS)
    torch.library.opcheck(torch.ops.rmmd_core.forecast_stats_triton.default,
                          (ens.detach(), target, weight, mask, 4, 7), test_utils=OPCHECK_UTILS)


@needs_cpu_op
def test_torch_compile_fullgraph():
    ens, target, weight, inv, mask, _ = _op_args(6, (2, 5, 9))

    def reward_and_grad(e, t):
        crps, grad = torch.ops.rmmd_core.crps_fair(e, t, weight, inv, mask, True)
        stats = torch.ops.rmmd_core.forecast_stats(e, t, weight, mask, 5, 9)
        return -crps.sum(), grad * 2.0, stats[:, 0] - stats[:, 1]

    torch._dynamo.reset()
    compiled = torch.compile(reward_and_grad, fullgraph=True)
    got, expected = compiled(ens, target), reward_and_grad(ens, target)
    for a, b in zip(got, expected):
        assert torch.equal(a, b)


# --------------------------------------------------------------------------------------------------
# Forecast statistics
# --------------------------------------------------------------------------------------------------

def _check_stats(got, expected, dtype, what):
    assert got.members == expected.members
    for k in FORECAST_FIELDS:
        a, e = getattr(got, k), getattr(expected, k)
        assert a.dtype == torch.float64, f"{what} {k}"
        rtol = {torch.float64: 1e-11, torch.float32: 2e-6}.get(dtype, 2e-6)
        _assert_close(a, e, atol=1e-9 if dtype != torch.float64 else 1e-12, rtol=rtol, what=f"{what} {k}")


@pytest.mark.parametrize("backend", FUSED)
@pytest.mark.parametrize("M", MEMBERS)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.bfloat16])
def test_forecast_stats_match_reference(M, dtype, backend):
    ens, target, w = _inputs(M, (2, 5, 7, 3), dtype, _device(backend))
    # float64 truth on the same (dtype-valued) inputs; low precision changes nothing but the inputs.
    expected = forecast_stats_ref(*_f64(ens, target, w))
    for vdim in (1, 0, 3, -2):
        got = ops.forecast_stats(ens, target, w, variable_dim=vdim, backend=backend)
        exp = expected if vdim == 1 else forecast_stats_ref(*_f64(ens, target, w), variable_dim=vdim % 4)
        _check_stats(got, exp, dtype, f"{backend} M={M} {dtype} variable_dim={vdim}")


@pytest.mark.parametrize("backend", FUSED)
def test_forecast_stats_mask_strided_and_derived_quantities(backend):
    dev = _device(backend)
    M = 9
    ens = torch.randn(4, M, 3, 13, device=dev).permute(1, 0, 3, 2)  # (M, 4, 13, 3) strided
    target = torch.randn(4, 3, 13, device=dev).transpose(1, 2)  # (4, 13, 3)
    mask = torch.rand(4, 13, 3, device=dev) > 0.25
    target = torch.where(mask, target, torch.full_like(target, float("nan")))
    w = torch.rand(13, 1, dtype=torch.float64, device=dev) + 0.1
    got = ops.forecast_stats(ens, target, w, mask, variable_dim=2, backend=backend)
    exp = forecast_stats_ref(ens.cpu().double(), target.cpu().double(), w.cpu(), mask.cpu(), variable_dim=2)
    _check_stats(got, exp, torch.float32, f"{backend} masked strided")
    # crps from the stats is the weighted mean of crps_fair over the same elements.
    torch.testing.assert_close(got.crps, exp.crps, rtol=1e-5, atol=1e-7)
    assert torch.isfinite(got.spread_skill_ratio).all()
    ratio = math.sqrt((M + 1) / M) * (got.var / got.mse).sqrt()
    torch.testing.assert_close(got.spread_skill_ratio, ratio)


def test_spread_skill_ratio_is_near_one_for_a_calibrated_ensemble():
    # Members and truth drawn from the same distribution: the corrected SSR is 1 in expectation; with 200k
    # elements its standard error is ~0.3%, so 3% is a loose honest bound (fixed seed).
    M, n = 8, 200_000
    centre = torch.randn(1, n)
    ens, target = centre + torch.randn(M, 1, n), (centre + torch.randn(1, n))
    backend = "cpu" if HAS_CPU_OP else "reference"
    ssr = ops.forecast_stats(ens, target, variable_dim=0, backend=backend).spread_skill_ratio
    assert abs(ssr.item() - 1.0) < 0.03, ssr


# --------------------------------------------------------------------------------------------------
# Memory: no (M, M, ...) intermediate
# --------------------------------------------------------------------------------------------------

def _bench_module():
    spec = importlib.util.spec_from_file_location("bench_crps", REPO / "benchmarks" / "bench_crps.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@needs_cpu_op
def test_fused_op_allocates_no_member_pairs():
    """M = 64 over 2 x 40000 elements: the pairwise form would need M^2 D values (>= 1.3 GB in fp32); the
    fused op allocates its gradient plus O(D) (profiler-measured CPU allocations, see bench_crps.peak_bytes)."""
    bench = _bench_module()
    M, B, D = 64, 2, 40_000
    ens, target = torch.randn(M, B, D), torch.randn(B, D)
    inputs = ens.nbytes + target.nbytes
    peak = bench.peak_bytes(lambda: ops.crps_fair(ens, target, backend="cpu"))
    assert peak <= ens.nbytes + 16 * B * D + 16 * D + 2**16, (peak, inputs)  # grad + O(B D) validation masks
    peak_value = bench.peak_bytes(lambda: ops.crps_fair(ens, target, with_grad=False, backend="cpu"))
    assert peak_value <= 0.1 * inputs, (peak_value, inputs)
    pairs = M * M * B * D * 4
    assert pairs > 1e9 and peak < pairs / 50


def test_benchmark_smoke(tmp_path):
    bench = _bench_module()
    rows = bench.main(["--smoke", "--json", str(tmp_path / "crps.json"), "--markdown", str(tmp_path / "crps.md")])
    assert (tmp_path / "crps.json").exists() and "| method |" in (tmp_path / "crps.md").read_text()
    timed = [r for r in rows if r.get("ms") is not None]
    assert timed and all(r["ms"] > 0 for r in timed)
    assert {r["method"] for r in timed} >= {"naive_pairwise", "reference_sorted"}


# --------------------------------------------------------------------------------------------------
# Dispatch and input errors
# --------------------------------------------------------------------------------------------------

@needs_cpu_op
def test_auto_picks_cpu_kernel(monkeypatch):
    monkeypatch.delenv(dispatch.BACKEND_ENV, raising=False)
    ens, target, _ = _inputs(3, (2, 5))
    assert ops.resolve_backend("crps_fair", ens, target) == "cpu"
    assert ops.resolve_backend("forecast_stats", ens, target) == "cpu"
    monkeypatch.setenv(dispatch.BACKEND_ENV, "reference")
    assert ops.resolve_backend("crps_fair", ens, target) == "reference"


def _valid():
    ens, target, w = _inputs(3, (2, 4, 5))
    return dict(ens=ens, target=target, weights=w, mask=None)


NAN_TARGET = torch.zeros(2, 4, 5).index_fill_(2, torch.tensor([1]), float("nan"))
BAD = {
    "ens_not_tensor": (dict(ens=[1.0]), TypeError, "ensemble"),
    "ens_int": (dict(ens=torch.ones(3, 2, 4, 5, dtype=torch.int32)), TypeError, "ensemble"),
    "one_member": (dict(ens=torch.randn(1, 2, 4, 5)), ValueError, "M >= 2"),
    "ens_1d": (dict(ens=torch.randn(3)), ValueError, "M >= 2"),
    "target_shape": (dict(target=torch.randn(2, 4, 6)), ValueError, "target must have shape"),
    "target_not_float": (dict(target=torch.ones(2, 4, 5, dtype=torch.int64)), TypeError, "target"),
    "target_device": (dict(target=torch.empty(2, 4, 5, device="meta")), ValueError, "target"),
    "target_nan": (dict(target=NAN_TARGET), ValueError, "NaN"),
    "weights_shape": (dict(weights=torch.ones(3, 5)), ValueError, "weights of shape"),
    "weights_negative": (dict(weights=-torch.ones(4, 1)), ValueError, "non-negative"),
    "weights_nan": (dict(weights=torch.tensor(float("nan"))), ValueError, "finite"),
    "weights_not_tensor": (dict(weights=[1.0]), TypeError, "weights"),
    "weights_all_zero": (dict(weights=torch.zeros(4, 5)), ValueError, "positive total weight"),
    "mask_dtype": (dict(mask=torch.ones(2, 4, 5)), ValueError, "mask"),
    "mask_shape": (dict(mask=torch.ones(2, 4, dtype=torch.bool)), ValueError, "mask"),
    "mask_all_false_sample": (dict(mask=torch.zeros(2, 4, 5, dtype=torch.bool)), ValueError, "positive total weight"),
}


@pytest.mark.parametrize("fn", ["crps_fair", "forecast_stats"])
@pytest.mark.parametrize("case", list(BAD))
def test_bad_inputs_are_named(case, fn):
    override, error, text = BAD[case]
    kw = {**_valid(), **override}
    with pytest.raises(error, match=text):
        getattr(ops, fn)(kw["ens"], kw["target"], kw["weights"], kw["mask"], backend="reference")
    if HAS_CPU_OP:  # the fused path validates identically (before any kernel runs)
        with pytest.raises(error, match=text):
            getattr(ops, fn)(kw["ens"], kw["target"], kw["weights"], kw["mask"], backend="cpu")


def test_bad_scalar_arguments_are_named():
    kw = _valid()
    with pytest.raises(TypeError, match="with_grad"):
        ops.crps_fair(kw["ens"], kw["target"], with_grad=1)
    with pytest.raises(ValueError, match="variable_dim"):
        ops.forecast_stats(kw["ens"], kw["target"], variable_dim=3)
    with pytest.raises(TypeError, match="variable_dim"):
        ops.forecast_stats(kw["ens"], kw["target"], variable_dim=1.0)
    with pytest.raises(ValueError, match="backend"):
        ops.crps_fair(kw["ens"], kw["target"], backend="tpu")


@needs_cpu_op
def test_direct_op_checks_name_the_argument():
    from torch._subclasses.fake_tensor import FakeTensorMode

    ens, target, weight, inv, mask, _ = _op_args(4)
    cases = [((ens[:1], target, weight, inv, mask, True), "ens"),
             ((ens, target[:, :2], weight, inv, mask, True), "target"),
             ((ens, target, weight[:3], inv, mask, True), "weight"),
             ((ens, target, weight.float(), inv, mask, True), "weight"),
             ((ens, target, weight, inv[:1], mask, True), "inv_norm"),
             ((ens, target, weight, inv, mask.float(), True), "mask")]
    for args, name in cases:
        with pytest.raises(RuntimeError, match=rf"\b{name}\b"):
            torch.ops.rmmd_core.crps_fair(*args)
        with FakeTensorMode() as mode:
            fake = [mode.from_tensor(a) if isinstance(a, torch.Tensor) else a for a in args]
            with pytest.raises(RuntimeError, match=rf"\b{name}\b"):
                torch.ops.rmmd_core.crps_fair(*fake)
    with pytest.raises(RuntimeError, match="variables"):
        torch.ops.rmmd_core.forecast_stats(ens, target, weight, mask, 0, 7)
