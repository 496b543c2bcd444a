"""rmmd_core::rmmd_cotangent (method.md §c.6 step 7, §e K5): every backend against
ops/reference.py::rmmd_cotangent_ref (g and the per-sample statistics), strided inputs, dtypes,
gradients against autograd of the reference, opcheck, compile, dispatch and input errors."""

from __future__ import annotations

import pytest
import torch

from rmmd_core import ops
from rmmd_core.ops import dispatch
from rmmd_core.ops.reference import COTANGENT_STATS, rmmd_cotangent_ref

OP = "rmmd_cotangent"
_REASONS = ops.backend_reasons(OP)
HAS_CPU_OP = not _REASONS["cpu"]
HAS_TRITON = not _REASONS["triton"]
needs_cpu_op = pytest.mark.skipif(not HAS_CPU_OP, reason=str(_REASONS["cpu"]))
FUSED = [pytest.param("cpu", marks=needs_cpu_op),
         pytest.param("triton", marks=[pytest.mark.interpreter,
                                       pytest.mark.skipif(not HAS_TRITON, reason=str(_REASONS["triton"]))])]
LOWP = (torch.bfloat16, torch.float16)
# (has g_R, has anchor, dmd): every combination of the optional terms the kernels specialise on.
CONFIGS = {"mm_only": (False, False, False), "reward": (True, False, False), "anchor": (False, True, False),
           "all": (True, True, False), "all_dmd": (True, True, True), "mm_dmd": (False, False, True)}
# 16411 is prime and larger than the CPU chunk (16384) and 4 Triton programs' worth of tiles.
SHAPES = [(1, 1), (3, 7), (5, 3, 11, 13), (2, 16411)]
SCALARS = dict(lam=0.7, lam_reg=0.35, scale=0.37, dmd_eps=1e-3)


def _device(backend: str) -> str:
    return "cuda" if backend in ("cuda",) or (backend == "triton" and not dispatch._triton_interpreter) else "cpu"


def _inputs(shape, dtype, config, device="cpu"):
    has_r, has_a, dmd = CONFIGS[config]
    make = lambda: torch.randn(shape).to(device=device, dtype=dtype)  # noqa: E731
    x0, m_stu, m_ref = make(), make(), make()
    g_R = make() if has_r else None
    anchor = make() if has_a else None
    w = (0.2 + torch.rand(shape[0], dtype=torch.float64)).to(device)
    return (x0, m_stu, m_ref, g_R, anchor, w), dmd


def _call(backend, args, dmd, **over):
    kw = {**SCALARS, **over}
    return ops.rmmd_cotangent(*args, lam=kw["lam"], lam_reg=kw["lam_reg"], scale=kw["scale"], dmd=dmd,
                              dmd_eps=kw["dmd_eps"], backend=backend)


def _upcast(args):
    return tuple(a.detach().cpu().double() if a is not None else None for a in args)


def _max_err(a, b):
    return (a.double().cpu() - b.double().cpu()).abs().max().item() if a.numel() else 0.0


def _assert_close(actual, expected, atol, rtol, what):
    a, e = actual.double().cpu(), expected.double().cpu()
    bad = (a - e).abs() > atol + rtol * e.abs()
    if bad.any():
        idx = bad.nonzero()[:5].tolist()
        pytest.fail(f"{what}: {int(bad.sum())}/{bad.numel()} mismatches (atol={atol:.3g}, rtol={rtol:.3g}, max abs "
                    f"err {_max_err(a, e):.3g}); first at {idx}: got {[a[tuple(i)].item() for i in idx]}, "
                    f"expected {[e[tuple(i)].item() for i in idx]}")


def _check(backend_out, args, dmd, what):
    g, stats = backend_out
    x0 = args[0]
    assert g.shape == x0.shape and g.dtype == x0.dtype and g.is_contiguous(), what
    opmath = torch.float64 if x0.dtype == torch.float64 else torch.float32
    assert stats.shape == (x0.shape[0], len(COTANGENT_STATS)) and stats.dtype == opmath, what
    ref_g, ref_stats = rmmd_cotangent_ref(*args, **{k: v for k, v in SCALARS.items()}, dmd=dmd)
    if x0.dtype in LOWP:
        # Truth: the same (low-precision-valued) inputs in float64; the kernel's error may be at most ~2x
        # the reference's own low-precision error (house style, flash-attention's rule).
        cpu_args = tuple(a.cpu() if a is not None else None for a in args)
        t_g, t_stats = rmmd_cotangent_ref(*_upcast(cpu_args), **SCALARS, dmd=dmd)
        _assert_close(g, t_g, atol=2 * _max_err(ref_g, t_g) + 1e-6, rtol=0.0, what=f"{what} g vs fp64 truth")
        # Statistics are fp32 sums of exactly-representable products: relative error ~ D * 2^-24 at worst.
        _assert_close(stats, t_stats, atol=2 * _max_err(ref_stats, t_stats) + 1e-6, rtol=1e-4,
                      what=f"{what} stats vs fp64 truth")
    elif x0.dtype == torch.float64:
        _assert_close(g, ref_g, atol=1e-12, rtol=1e-12, what=f"{what} g")
        _assert_close(stats, ref_stats, atol=1e-12, rtol=1e-10, what=f"{what} stats")
    else:
        _assert_close(g, ref_g, atol=1e-6, rtol=1e-5, what=f"{what} g")
        _assert_close(stats, ref_stats, atol=1e-6, rtol=2e-5, what=f"{what} stats")


def _matrix():
    """(shape, dtype, config, backend) cases: every optional-term combination in float32; the other dtypes
    run the two combinations that exercise every term (with and without the normaliser), which is where
    their rounding shows; the interpreter runs the large shape in float32 only (speed)."""
    cases = []
    for backend in FUSED:
        for shape in SHAPES:
            for dtype in (torch.float32, torch.float64, torch.bfloat16, torch.float16):
                for config in CONFIGS:
                    if dtype != torch.float32 and config not in ("all", "all_dmd"):
                        continue
                    if backend.values[0] == "triton" and shape[-1] > 1000 and dtype != torch.float32:
                        continue
                    cases.append(pytest.param(shape, dtype, config, backend.values[0], marks=backend.marks,
                                              id=f"{backend.values[0]}-{shape}-{dtype}-{config}"))
    return cases


@pytest.mark.parametrize("shape,dtype,config,backend", _matrix())
def test_matches_reference(shape, dtype, config, backend):
    args, dmd = _inputs(shape, dtype, config, _device(backend))
    _check(_call(backend, args, dmd), args, dmd, f"{backend} {shape} {dtype} {config}")


@needs_cpu_op
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=str)
@pytest.mark.parametrize("config", ["all_dmd", "mm_only"])
def test_cpu_dmd_waves_match_reference(config, dtype):
    """With the DMD normaliser the CPU kernel runs samples in cache-sized waves (4 MB of x0 + m_ref): here
    waves of 2, 2, 1 samples (fp32, D = 200003) or 3, 2 (bf16, D = 300009); the result must not change."""
    shape = (5, 200_003) if dtype == torch.float32 else (5, 3, 100_003)
    args, dmd = _inputs(shape, dtype, config)
    _check(_call("cpu", args, True), args, True, f"cpu waves {shape} {dtype} {config}")


def _layouts():
    return {
        "transposed": lambda: torch.randn(6, 9, 10).transpose(1, 2),
        "sliced_batch": lambda: torch.randn(12, 9, 10)[1::2],
        "batch_not_outermost": lambda: torch.randn(9, 6, 10).permute(1, 0, 2),
        "expanded": lambda: torch.randn(6, 1, 10).expand(6, 9, 10),
    }


@pytest.mark.parametrize("backend", FUSED)
@pytest.mark.parametrize("layout", ["transposed", "sliced_batch", "batch_not_outermost", "expanded"])
def test_non_contiguous_inputs(layout, backend):
    make = _layouts()[layout]
    dev = _device(backend)
    x0, m_stu, m_ref, g_R, anchor = (make().to(dev) for _ in range(5))
    assert not x0.is_contiguous()
    w = (0.5 + torch.rand(x0.shape[0], dtype=torch.float64)).to(dev)
    args = (x0, m_stu, m_ref, g_R, anchor, w)
    out = _call(backend, args, True)
    dense = _call(backend, tuple(a.contiguous() for a in args), True)
    assert torch.equal(out[0], dense[0]) and torch.equal(out[1], dense[1])
    _check(out, args, True, f"{backend} {layout}")


def test_reference_statistics_are_the_definitions():
    # The columns mean what COTANGENT_STATS says, checked in float64 against one-line formulas.
    (x0, m_stu, m_ref, g_R, anchor, w), _ = _inputs((3, 4, 5), torch.float64, "all")
    g, stats = rmmd_cotangent_ref(x0, m_stu, m_ref, g_R, anchor, w, **SCALARS, dmd=True)
    D, s, lam, reg, eps = 20, SCALARS["scale"], SCALARS["lam"], SCALARS["lam_reg"], SCALARS["dmd_eps"]
    f = lambda t: t.flatten(1)  # noqa: E731
    w_eff = w / ((f(x0) - f(m_ref)).abs().mean(1) + eps)
    d, e = f(m_stu) - f(m_ref), f(x0) - f(anchor)
    expected_g = s * (w_eff[:, None] * d - lam * f(g_R) + 2 * reg * e)
    torch.testing.assert_close(f(g), expected_g, rtol=1e-12, atol=1e-14)
    expected = torch.stack([(f(x0) * w_eff[:, None] * d).sum(1) / D, (e * e).sum(1) / D,
                            ((s * w_eff[:, None] * d) ** 2).sum(1), ((s * lam * f(g_R)) ** 2).sum(1),
                            ((2 * s * reg * e) ** 2).sum(1), w_eff], dim=1)
    torch.testing.assert_close(stats, expected, rtol=1e-12, atol=1e-14)


# --------------------------------------------------------------------------------------------------
# Gradients, opcheck, compile
# --------------------------------------------------------------------------------------------------

def _grads(backend, args, dmd, grad_g, grad_stats):
    leaves = [a.detach().clone().requires_grad_(True) if a is not None else None for a in args]
    g, stats = _call(backend, leaves, dmd)
    ((g.double() * grad_g).sum() + (stats.double() * grad_stats).sum()).backward()
    return [leaf.grad if leaf is not None else None for leaf in leaves]


@pytest.mark.parametrize("backend", FUSED)
@pytest.mark.parametrize("config", ["all", "all_dmd", "mm_only"])
def test_gradients_match_reference_autograd(config, backend):
    args, dmd = _inputs((3, 4, 7), torch.float32, config, _device(backend))
    grad_g = torch.randn(args[0].shape, dtype=torch.float64, device=args[0].device)
    grad_stats = torch.randn(3, len(COTANGENT_STATS), dtype=torch.float64, device=args[0].device)
    expected = _grads("reference", args, dmd, grad_g, grad_stats)
    got = _grads(backend, args, dmd, grad_g, grad_stats)
    for name, e, a in zip(("x0", "m_stu", "m_ref", "g_R", "anchor", "w"), expected, got):
        if e is None:
            assert a is None, name
            continue
        torch.testing.assert_close(a, e, rtol=1e-4, atol=1e-5, msg=lambda m: f"grad {name}: {m}")


def test_gradcheck_reference_float64():
    args, _ = _inputs((2, 3, 4), torch.float64, "all")
    leaves = [a.requires_grad_(True) for a in args]
    fn = lambda *t: rmmd_cotangent_ref(*t, **SCALARS, dmd=False)  # noqa: E731
    assert torch.autograd.gradcheck(fn, tuple(leaves))


@needs_cpu_op
@pytest.mark.parametrize("config", ["all", "reward", "all_dmd"])
def test_gradcheck_cpu_op_float64(config):
    args, dmd = _inputs((2, 3, 4), torch.float64, config)
    present = [i for i, a in enumerate(args) if a is not None]

    def fn(*t):
        full = list(args)
        for i, v in zip(present, t):
            full[i] = v
        return ops.rmmd_cotangent(*full, **SCALARS, dmd=dmd, backend="cpu")

    leaves = tuple(args[i].clone().requires_grad_(True) for i in present)
    if dmd:
        # The normaliser is a stop-gradient by definition, so finite differences through x0 / m_ref see a
        # dependency the op does not differentiate; check the inputs it does not touch.
        fn_free = lambda ms, r, a, w: fn(leaves[0].detach(), ms, leaves[2].detach(), r, a, w)  # noqa: E731
        assert torch.autograd.gradcheck(fn_free, (leaves[1], leaves[3], leaves[4], leaves[5]))
    else:
        assert torch.autograd.gradcheck(fn, leaves)


@needs_cpu_op
@pytest.mark.parametrize("requires_grad", [False, True])
@pytest.mark.parametrize("config", ["mm_only", "all", "all_dmd"])
def test_opcheck_cpu(config, requires_grad):
    args, dmd = _inputs((3, 5, 7), torch.float32, config)
    args = tuple(a.requires_grad_(requires_grad) if a is not None else None for a in args)
    torch.library.opcheck(torch.ops.rmmd_core.rmmd_cotangent.default,
                          (*args, SCALARS["lam"], SCALARS["lam_reg"], SCALARS["scale"], dmd, SCALARS["dmd_eps"]))


@pytest.mark.interpreter
@pytest.mark.skipif(not HAS_TRITON, reason=str(_REASONS["triton"]))
@pytest.mark.parametrize("config", ["mm_only", "all_dmd"])
def test_opcheck_triton(config):
    from test_posterior_step_triton import OPCHECK_UTILS

    args, dmd = _inputs((3, 5, 7), torch.float32, config, _device("triton"))
    args = tuple(a.requires_grad_(True) if a is not None else None for a in args)
    torch.library.opcheck(torch.ops.rmmd_core.rmmd_cotangent_triton.default,
                          (*args, SCALARS["lam"], SCALARS["lam_reg"], SCALARS["scale"], dmd, SCALARS["dmd_eps"]),
                          test_utils=OPCHECK_UTILS)


@needs_cpu_op
def test_torch_compile_fullgraph(monkeypatch):
    monkeypatch.delenv(dispatch.BACKEND_ENV, raising=False)
    args, dmd = _inputs((4, 33), torch.float32, "all_dmd")

    def cot_and_norm(*a):
        g, stats = ops.rmmd_cotangent(*a, **SCALARS, dmd=dmd)
        return g * 2.0, stats[:, 2].sum().sqrt()

    torch._dynamo.reset()
    compiled = torch.compile(cot_and_norm, fullgraph=True)
    got, expected = compiled(*args), cot_and_norm(*args)
    assert torch.equal(got[0], expected[0]) and torch.equal(got[1], expected[1])


# --------------------------------------------------------------------------------------------------
# Dispatch and input errors
# --------------------------------------------------------------------------------------------------

@needs_cpu_op
def test_auto_picks_cpu_kernel(monkeypatch):
    monkeypatch.delenv(dispatch.BACKEND_ENV, raising=False)
    x = torch.randn(2, 3)
    assert ops.resolve_backend(OP, x) == "cpu"
    monkeypatch.setenv(dispatch.BACKEND_ENV, "reference")
    assert ops.resolve_backend(OP, x) == "reference"


def _valid():
    (x0, m_stu, m_ref, g_R, anchor, w), _ = _inputs((3, 4), torch.float32, "all")
    return dict(x0=x0, m_stu=m_stu, m_ref=m_ref, g_R=g_R, anchor=anchor, w=w, lam=0.5, lam_reg=0.25, scale=0.1,
                dmd=False, dmd_eps=1e-4)


BAD = {
    "x0_not_tensor": (dict(x0=[1.0]), TypeError, "x0"),
    "x0_0d": (dict(x0=torch.tensor(1.0)), ValueError, "x0"),
    "x0_int": (dict(x0=torch.ones(3, 4, dtype=torch.int32)), TypeError, "x0"),
    "m_stu_shape": (dict(m_stu=torch.randn(3, 5)), ValueError, "m_stu"),
    "m_ref_dtype": (dict(m_ref=torch.randn(3, 4, dtype=torch.float64)), TypeError, "m_ref"),
    "m_ref_device": (dict(m_ref=torch.empty(3, 4, device="meta")), ValueError, "m_ref"),
    "g_R_shape": (dict(g_R=torch.randn(4, 3)), ValueError, "g_R"),
    "anchor_dtype": (dict(anchor=torch.randn(3, 4).half()), TypeError, "anchor"),
    "anchor_not_tensor": (dict(anchor=1.0), TypeError, "anchor"),
    "w_2d": (dict(w=torch.ones(3, 1)), ValueError, "w"),
    "w_wrong_batch": (dict(w=torch.ones(4)), ValueError, "w"),
    "w_int": (dict(w=torch.ones(3, dtype=torch.int64)), TypeError, "w"),
    "w_device": (dict(w=torch.empty(3, device="meta")), ValueError, "w"),
    "lam_tensor": (dict(lam=torch.tensor(0.5)), TypeError, "lam"),
    "scale_nan": (dict(scale=float("nan")), ValueError, "scale"),
    "lam_reg_bool": (dict(lam_reg=True), TypeError, "lam_reg"),
    "dmd_int": (dict(dmd=1), TypeError, "dmd"),
    "dmd_eps_zero": (dict(dmd=True, dmd_eps=0.0), ValueError, "dmd_eps"),
    "backend": (dict(backend="tpu"), ValueError, "backend"),
}


@pytest.mark.parametrize("case", list(BAD))
def test_bad_inputs_name_the_argument(case):
    override, error, name = BAD[case]
    with pytest.raises(error) as info:
        ops.rmmd_cotangent(**{**_valid(), **override})
    message = str(info.value)
    assert message.startswith(name) or f" {name} " in message or f"{name}:" in message, message


@needs_cpu_op
@pytest.mark.parametrize("case,name", [("m_stu_shape", "m_stu"), ("g_R_shape", "g_R"), ("w_2d", "w"),
                                       ("anchor_dtype", "anchor"), ("dmd_eps_zero", "dmd_eps")])
def test_direct_op_checks_name_the_argument(case, name):
    from torch._subclasses.fake_tensor import FakeTensorMode

    kw = {**_valid(), **BAD[case][0]}
    args = [kw[k] for k in ("x0", "m_stu", "m_ref", "g_R", "anchor", "w", "lam", "lam_reg", "scale", "dmd", "dmd_eps")]
    with pytest.raises(RuntimeError, match=rf"\b{name}\b"):
        torch.ops.rmmd_core.rmmd_cotangent(*args)
    with FakeTensorMode() as mode:
        fake = [mode.from_tensor(a) if isinstance(a, torch.Tensor) else a for a in args]
        with pytest.raises(RuntimeError, match=rf"\b{name}\b"):
            torch.ops.rmmd_core.rmmd_cotangent(*fake)
