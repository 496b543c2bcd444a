"""Hypothesis fuzz of every fused op: random shapes (1s and primes), strides (transposed / sliced / permuted
views) and dtypes; the ``cpu`` backend always, and the Triton interpreter on small inputs, against the
pure-PyTorch references. Deterministic for CI (``derandomize=True``) and bounded (``max_examples``): the
whole file stays well under a minute on one core.

Tolerances are tied to the output's dtype: float64 tight; float32 a few ulp of fp32 math (looser for
per-sample sums and for outputs that include the Philox noise, whose log / cos implementations differ in
the last bits); bfloat16 / float16 outputs one rounding step of their dtype away from the reference (both
compute the same fp32 value from the same low-precision inputs and round it once).
"""

from __future__ import annotations

import contextlib
import os

import pytest
import torch

from rmmd_core import ops

hypothesis = pytest.importorskip("hypothesis")
from hypothesis import given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

from test_posterior_step_op import SIMD_PATHS  # noqa: E402
from test_rmmd_cotangent_op import _device  # noqa: E402

FUZZ = settings(max_examples=30, deadline=None, derandomize=True, database=None, print_blob=True)
DTYPES = [torch.float32, torch.float64, torch.bfloat16, torch.float16]
SIZES = [1, 2, 3, 5, 7, 11, 13, 17]
LAYOUTS = ["contiguous", "transposed", "sliced"]
TRITON_MAX_NUMEL = 1500  # the interpreter runs one Python-level program at a time


def _backends(op: str, numel: int) -> list[str]:
    reasons = ops.backend_reasons(op)
    out = [] if reasons["cpu"] else ["cpu"]
    if not reasons["triton"] and numel <= TRITON_MAX_NUMEL:
        out.append("triton")
    return out


def _make(shape, dtype, layout, gen, device="cpu") -> torch.Tensor:
    """A (B, ...) tensor of ``shape`` whose memory layout is ``layout`` (views are made after the dtype cast)."""
    shape = tuple(shape)
    if layout == "transposed" and len(shape) >= 2:
        base = torch.randn(shape[:-2] + (shape[-1], shape[-2]), generator=gen).to(dtype)
        return base.transpose(-1, -2).to(device)
    if layout in ("sliced", "transposed"):
        base = torch.randn(shape[:-1] + (2 * shape[-1],), generator=gen).to(dtype)
        return base[..., ::2].to(device)
    return torch.randn(shape, generator=gen).to(dtype).to(device)


def _coef(batch, gen, device, low=0.1) -> torch.Tensor:
    """(B,) float64 per-sample coefficient, every other one read through a strided view."""
    return (low + torch.rand(2 * batch, generator=gen, dtype=torch.float64))[::2].to(device)


def _assert_close(got, ref, what, kind="elementwise", noise=False):
    """``kind``: "elementwise" (rounded once to the data dtype) or "sum" (opmath per-sample reductions)."""
    assert got.shape == ref.shape and got.dtype == ref.dtype, f"{what}: {got.shape} {got.dtype} vs {ref.shape} {ref.dtype}"
    g, r = got.detach().cpu().double(), ref.detach().cpu().double()
    if ref.dtype == torch.float64:
        atol, rtol = (1e-5 if noise else 1e-12), 1e-10
    elif kind == "sum":
        atol, rtol = 1e-5, 1e-4
    elif ref.dtype == torch.float32:
        atol, rtol = (1e-5 if noise else 1e-6), 1e-5
    else:  # one rounding step of the low-precision dtype, plus fp32-level differences before rounding
        atol, rtol = 1e-5, torch.finfo(ref.dtype).eps
    err = (g - r).abs()
    bad = err > atol + rtol * r.abs()
    assert not bool(bad.any()), (f"{what}: {int(bad.sum())}/{bad.numel()} mismatches, max err {err.max().item():.3g} "
                                 f"(atol={atol:.2g}, rtol={rtol:.2g})")


data_shapes = st.tuples(st.sampled_from([1, 2, 3, 5]),
                        st.lists(st.sampled_from(SIZES), min_size=1, max_size=3)).map(lambda t: (t[0], *t[1]))
common = dict(dtype=st.sampled_from(DTYPES), layout=st.sampled_from(LAYOUTS), seed=st.integers(0, 2**31 - 1))
# The CPU noise paths this CPU can run (RMMD_CORE_CPU_SIMD values, see test_posterior_step_op.SIMD_PATHS).
simd_paths = st.sampled_from([p.values[0] for p in SIMD_PATHS if not any(m.args[0] for m in p.marks)])


@contextlib.contextmanager
def _simd_env(value: str):
    """RMMD_CORE_CPU_SIMD=value for the duration (hypothesis cannot use the function-scoped monkeypatch)."""
    old = os.environ.get("RMMD_CORE_CPU_SIMD")
    os.environ["RMMD_CORE_CPU_SIMD"] = value
    try:
        yield
    finally:
        if old is None:
            del os.environ["RMMD_CORE_CPU_SIMD"]
        else:
            os.environ["RMMD_CORE_CPU_SIMD"] = old


@FUZZ
@given(shape=data_shapes, philox=st.tuples(st.integers(0, 2**63 - 1), st.integers(0, 2**40)), simd=simd_paths,
       **common)
def test_fuzz_posterior_step(shape, dtype, layout, seed, philox, simd):
    gen = torch.Generator().manual_seed(seed)
    for backend in _backends("posterior_step", torch.Size(shape).numel()):
        dev = _device(backend)
        z, x = _make(shape, dtype, layout, gen, dev), _make(shape, dtype, "contiguous", gen, dev)
        A, C, gamma = (_coef(shape[0], gen, dev) for _ in range(3))
        ref = ops.posterior_step_ref(z, x, A, C, gamma, *philox)
        with _simd_env(simd):
            got = ops.posterior_step(z, x, A, C, gamma, *philox, backend=backend)
        _assert_close(got, ref, f"posterior_step {backend} {shape} {dtype} {layout}", noise=True)


@FUZZ
@given(shape=data_shapes, philox=st.tuples(st.integers(0, 2**63 - 1), st.integers(0, 2**40)), simd=simd_paths,
       **common)
def test_fuzz_renoise(shape, dtype, layout, seed, philox, simd):
    gen = torch.Generator().manual_seed(seed)
    for backend in _backends("renoise", torch.Size(shape).numel()):
        dev = _device(backend)
        x = _make(shape, dtype, layout, gen, dev)
        alpha, sigma = _coef(shape[0], gen, dev), _coef(shape[0], gen, dev)
        ref = ops.renoise_ref(x, alpha, sigma, *philox)
        with _simd_env(simd):
            got = ops.renoise(x, alpha, sigma, *philox, backend=backend)
        _assert_close(got, ref, f"renoise {backend} {shape} {dtype} {layout}", noise=True)


@FUZZ
@given(shape=data_shapes, optional=st.tuples(st.booleans(), st.booleans()), dmd=st.booleans(),
       scalars=st.tuples(st.floats(-2, 2), st.floats(0, 2), st.floats(0.01, 2)), **common)
def test_fuzz_rmmd_cotangent(shape, dtype, layout, seed, optional, dmd, scalars):
    gen = torch.Generator().manual_seed(seed)
    lam, lam_reg, scale = scalars
    for backend in _backends("rmmd_cotangent", torch.Size(shape).numel()):
        dev = _device(backend)
        x0, m_stu, m_ref = (_make(shape, dtype, lay, gen, dev) for lay in (layout, "contiguous", layout))
        g_R = _make(shape, dtype, layout, gen, dev) if optional[0] else None
        anchor = _make(shape, dtype, "sliced", gen, dev) if optional[1] else None
        w = _coef(shape[0], gen, dev)
        args = (x0, m_stu, m_ref, g_R, anchor, w, lam, lam_reg, scale, dmd, 1e-3)
        ref_g, ref_stats = ops.rmmd_cotangent_ref(*args)
        g, stats = ops.rmmd_cotangent(*args, backend=backend)
        what = f"rmmd_cotangent {backend} {shape} {dtype} {layout} {optional} dmd={dmd}"
        _assert_close(g, ref_g, what + " g")
        _assert_close(stats, ref_stats, what + " stats", kind="sum")


@FUZZ
@given(shape=data_shapes, **common)
def test_fuzz_aux_loss(shape, dtype, layout, seed):
    gen = torch.Generator().manual_seed(seed)
    for backend in _backends("aux_loss", torch.Size(shape).numel()):
        dev = _device(backend)
        o, x0, m_ref = (_make(shape, dtype, lay, gen, dev) for lay in (layout, "contiguous", layout))
        w = _coef(shape[0], gen, dev)
        ref_loss, ref_grad = ops.aux_loss_ref(o, x0, m_ref, w)
        loss, grad = ops.aux_loss(o, x0, m_ref, w, backend=backend)
        _assert_close(loss, ref_loss, f"aux_loss {backend} {shape} {dtype} {layout} loss", kind="sum")
        _assert_close(grad, ref_grad, f"aux_loss {backend} {shape} {dtype} {layout} grad")


image_shapes = st.tuples(st.sampled_from([1, 2, 3]), st.sampled_from([1, 2, 3, 5]), st.sampled_from(SIZES),
                         st.sampled_from(SIZES + [31, 67]))
IMAGE_LAYOUTS = LAYOUTS + ["channels_last"]


def _image(shape, dtype, layout, gen, device):
    if layout == "channels_last":
        b, c, h, w = shape
        return torch.randn(b, h, w, c, generator=gen).to(dtype).permute(0, 3, 1, 2).to(device)
    return _make(shape, dtype, layout, gen, device)


@FUZZ
@given(shape=image_shapes, dtype=st.sampled_from(DTYPES), layout=st.sampled_from(IMAGE_LAYOUTS),
       seed=st.integers(0, 2**31 - 1), op=st.sampled_from(["grayscale_reward", "laplacian_reward"]))
def test_fuzz_image_rewards(shape, dtype, layout, seed, op):
    if op == "grayscale_reward":
        shape = (shape[0], 3, shape[2], shape[3])
    fn, ref_fn = getattr(ops, op), getattr(ops, op + "_ref")
    gen = torch.Generator().manual_seed(seed)
    for backend in _backends(op, torch.Size(shape).numel()):
        x = _image(shape, dtype, layout, gen, _device(backend))
        ref_value, ref_grad = ref_fn(x)
        value, grad = fn(x, backend=backend)
        _assert_close(value, ref_value, f"{op} {backend} {shape} {dtype} {layout} value", kind="sum")
        _assert_close(grad, ref_grad, f"{op} {backend} {shape} {dtype} {layout} grad")


ema_lists = st.lists(st.tuples(st.lists(st.sampled_from(SIZES + [127, 1031]), min_size=1, max_size=2),
                               st.sampled_from([torch.float32, torch.float64, torch.bfloat16, torch.float16]),
                               st.sampled_from(DTYPES), st.sampled_from(LAYOUTS), st.booleans()),
                     min_size=1, max_size=5)


@FUZZ
@given(entries=ema_lists, beta=st.one_of(st.floats(0.0, 1.0), st.sampled_from([0.0, 0.5, 0.999, 1.0])),
       seed=st.integers(0, 2**31 - 1))
def test_fuzz_ema_update(entries, beta, seed):
    gen = torch.Generator().manual_seed(seed)
    numel = sum(torch.Size(e[0]).numel() for e in entries)
    for backend in _backends("ema_update", numel):
        dev = _device(backend)
        ema, params = [], []
        for shape, e_dtype, p_dtype, layout, strided_ema in entries:
            ema.append(_make(shape, e_dtype, "transposed" if strided_ema else "contiguous", gen, dev))
            params.append(_make(shape, p_dtype, layout, gen, dev))
        expected = [e.clone() for e in ema]
        ops.ema_update_ref(expected, params, beta)
        ops.ema_update(ema, params, beta, backend=backend)
        for i, (got, ref) in enumerate(zip(ema, expected)):
            _assert_close(got, ref, f"ema_update {backend} beta={beta} [{i}] {got.dtype}<-{params[i].dtype}")
