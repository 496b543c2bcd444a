"""rmmd_core::ema_update, the multi-tensor EMA (method.md §e K9): every backend against
ops/ema_reference.py over lists of odd-sized tensors with mixed dtypes and strides, the engine's EMA
against the former torch._foreach_lerp_ update, opcheck, and named errors for bad input."""

from __future__ import annotations

import pytest
import torch

from rmmd_core import ops
from rmmd_core.ops.ema_reference import ema_update_ref
from test_rmmd_cotangent_op import _device

_REASONS = ops.backend_reasons("ema_update")
HAS_CPU_OP = not _REASONS["cpu"]
HAS_TRITON = not _REASONS["triton"]
needs_cpu_op = pytest.mark.skipif(not HAS_CPU_OP, reason=str(_REASONS["cpu"]))
FUSED = [pytest.param("cpu", marks=needs_cpu_op),
         pytest.param("triton", marks=[pytest.mark.interpreter,
                                       pytest.mark.skipif(not HAS_TRITON, reason=str(_REASONS["triton"]))])]
# (EMA dtype, param dtype) pairs: fp32 masters of fp32 / bf16 / fp16 params, fp64, and low-precision EMAs.
PAIRS = [(torch.float32, torch.float32), (torch.float32, torch.bfloat16), (torch.float32, torch.float16),
         (torch.float64, torch.float64), (torch.float32, torch.float64), (torch.bfloat16, torch.bfloat16),
         (torch.float16, torch.float32)]
# Odd sizes: 1, primes, one below / above the CPU chunk (16384) and several Triton programs (1024).
SHAPES = [(1,), (7,), (3, 5), (2, 3, 11), (1021,), (16411,), (131, 127)]


def _lists(device="cpu", pairs=PAIRS, shapes=SHAPES):
    ema, params = [], []
    for k, shape in enumerate(shapes):
        for e_dtype, p_dtype in pairs[k % len(pairs):] + pairs[:k % len(pairs)]:
            ema.append(torch.randn(shape).to(device=device, dtype=e_dtype))
            params.append(torch.randn(shape).to(device=device, dtype=p_dtype))
    return ema, params


def _assert_matches_reference(got, ema_before, params, beta, what):
    expected = [e.clone() for e in ema_before]
    ema_update_ref(expected, params, beta)
    for i, (g, e) in enumerate(zip(got, expected)):
        assert g.dtype == e.dtype and g.shape == e.shape, f"{what} [{i}]"
        # One rounding of the same fp32 / fp64 formula; vectorised code may contract to fma, so allow one
        # ulp of the EMA's dtype (and 2 ulp of fp32 / fp64 math before rounding).
        eps = torch.finfo(g.dtype).eps
        tol = eps * (1 + e.double().abs()) if g.dtype in (torch.bfloat16, torch.float16) else \
            4 * eps * (1 + e.double().abs())
        err = (g.double().cpu() - e.double().cpu()).abs()
        assert bool((err <= tol.cpu()).all()), f"{what} [{i}] {g.dtype}<-{params[i].dtype}: max err {err.max():.3g}"


@pytest.mark.parametrize("backend", FUSED)
@pytest.mark.parametrize("beta", [0.999, 0.9, 0.3, 0.0, 1.0])
def test_matches_reference_on_mixed_lists(beta, backend):
    ema, params = _lists(_device(backend))
    before = [e.clone() for e in ema]
    ops.ema_update(ema, params, beta, backend=backend)
    _assert_matches_reference(ema, before, params, beta, f"{backend} beta={beta}")
    if beta == 1.0:
        assert all(torch.equal(a, b) for a, b in zip(ema, before))
    if beta == 0.0:
        assert all(torch.equal(a, p.to(a.dtype)) for a, p in zip(ema, params))


@pytest.mark.parametrize("backend", FUSED)
def test_non_contiguous_params_and_ema(backend):
    dev = _device(backend)
    params = [torch.randn(9, 10, device=dev).t(), torch.randn(12, 7, device=dev)[::2],
              torch.randn(5, 1, device=dev).expand(5, 4), torch.randn(6, 8, device=dev, dtype=torch.bfloat16)[:, 1::3]]
    ema = [torch.randn(10, 9, device=dev), torch.randn(7, 6, device=dev).t(),  # the second EMA is strided
           torch.randn(5, 4, device=dev), torch.randn(6, 3, device=dev)]
    assert not ema[1].is_contiguous() and not any(p.is_contiguous() for p in params)
    before = [e.clone() for e in ema]
    storage = [e.data_ptr() for e in ema]
    ops.ema_update(ema, params, 0.75, backend=backend)
    assert [e.data_ptr() for e in ema] == storage  # updated in place, strided EMA included
    _assert_matches_reference(ema, before, params, 0.75, f"{backend} strided")


def test_reference_is_the_foreach_lerp():
    ema, params = _lists(pairs=[(torch.float32, torch.float32), (torch.float64, torch.float64)])
    expected = [e.clone() for e in ema]
    torch._foreach_lerp_(expected, params, 1.0 - 0.97)
    ema_update_ref(ema, params, 0.97)
    for a, b in zip(ema, expected):
        torch.testing.assert_close(a, b, rtol=0, atol=4 * torch.finfo(a.dtype).eps)


def test_empty_list_and_empty_tensors_are_fine():
    ops.ema_update([], [], 0.5)
    e, p = torch.empty(0, 3), torch.empty(0, 3)
    ops.ema_update([e], [p], 0.5)


def test_engine_ema_matches_foreach_version():
    """RMMD.update_ema (now the fused op) against the former torch._foreach_lerp_ update, over real steps."""
    from rmmd_core import RMMD, Denoiser, RMMDConfig, step
    from rmmd_core.toy import MLPNet

    torch.manual_seed(3)
    teacher = Denoiser(MLPNet(2, hidden=16, depth=2), "vp_cosine", prediction="x0")
    engine = RMMD(teacher, config=RMMDConfig(num_steps=2, ema_decay=0.8, lr=1e-2), sample_shape=(2,),
                  reward=lambda x, c=None: x[:, 0], seed=0)
    reference = [p.detach().clone() for p in engine.ema.parameters()]
    for _ in range(3):
        step(engine, batch_size=4)
        student = [p.detach() for p in engine.student.parameters()]
        torch._foreach_lerp_(reference, [c.to(e.dtype) for e, c in zip(reference, student)], 1.0 - 0.8)
    moved = False
    for (name, a), b, s0 in zip(engine.ema.named_parameters(), reference, engine.student.parameters()):
        torch.testing.assert_close(a, b, rtol=1e-6, atol=1e-7, msg=lambda m: f"{name}: {m}")
        moved |= not torch.equal(a, s0)
    assert moved  # the EMA lags the student: the comparison is not between copies of the student


@needs_cpu_op
def test_opcheck_cpu():
    ema, params = _lists(pairs=[(torch.float32, torch.bfloat16)], shapes=[(3, 5), (7,)])
    torch.library.opcheck(torch.ops.rmmd_core.ema_update.default, (ema, params, 0.9),
                          test_utils=("test_schema", "test_faketensor", "test_aot_dispatch_dynamic"))


@pytest.mark.interpreter
@pytest.mark.skipif(not HAS_TRITON, reason="triton backend unavailable")
def test_opcheck_triton():
    ema, params = _lists(_device("triton"), pairs=[(torch.float32, torch.float16)], shapes=[(3, 5), (7,)])
    torch.library.opcheck(torch.ops.rmmd_core.ema_update_triton.default, (ema, params, 0.9),
                          test_utils=("test_schema", "test_faketensor"))


def _bad(case):
    ema, params = [torch.randn(3), torch.randn(2, 2)], [torch.randn(3), torch.randn(2, 2)]
    if case == "length":
        return dict(ema=ema, params=params[:1]), ValueError, "params"
    if case == "not_list":
        return dict(ema=ema[0], params=params[0]), TypeError, "ema"
    if case == "ema_int":
        return dict(ema=[ema[0], torch.ones(2, 2, dtype=torch.int32)], params=params), TypeError, "ema[1]"
    if case == "params_int":
        return dict(ema=ema, params=[params[0], torch.ones(2, 2, dtype=torch.int64)]), TypeError, "params[1]"
    if case == "params_not_tensor":
        return dict(ema=ema, params=[params[0], 1.0]), TypeError, "params[1]"
    if case == "shape":
        return dict(ema=ema, params=[params[0], torch.randn(4)]), ValueError, "params[1]"
    if case == "device":
        return dict(ema=ema, params=[params[0], torch.empty(2, 2, device="meta")]), ValueError, "params[1]"
    if case == "ema_device":
        return dict(ema=[ema[0], torch.empty(2, 2, device="meta")], params=params), ValueError, "ema[1]"
    if case in ("beta_high", "beta_low", "beta_nan"):
        return dict(ema=ema, params=params, beta={"beta_high": 1.5, "beta_low": -0.1,
                                                 "beta_nan": float("nan")}[case]), ValueError, "beta"
    if case == "beta_tensor":
        return dict(ema=ema, params=params, beta=torch.tensor(0.5)), TypeError, "beta"
    return dict(ema=ema, params=params, backend="tpu"), ValueError, "backend"


BAD = ["length", "not_list", "ema_int", "params_int", "params_not_tensor", "shape", "device", "ema_device",
       "beta_high", "beta_low", "beta_nan", "beta_tensor", "backend"]


@pytest.mark.parametrize("case", BAD)
def test_bad_inputs_name_the_argument(case):
    kwargs, error, name = _bad(case)
    kwargs.setdefault("beta", 0.9)
    with pytest.raises(error) as info:
        ops.ema_update(**kwargs)
    assert str(info.value).startswith(name), str(info.value)


@needs_cpu_op
@pytest.mark.parametrize("case,name", [("length", "params"), ("beta_high", "beta"), ("shape", r"params\[1\]"),
                                       ("params_int", r"params\[1\]")])
def test_direct_op_checks_name_the_argument(case, name):
    kwargs, _, _ = _bad(case)
    with pytest.raises(RuntimeError, match=name):
        torch.ops.rmmd_core.ema_update(kwargs["ema"], kwargs["params"], kwargs.get("beta", 0.9))


def test_forced_backend_that_cannot_run_raises(monkeypatch):
    from rmmd_core.ops import dispatch

    monkeypatch.setenv(dispatch.BACKEND_ENV, "cuda")
    with pytest.raises(RuntimeError, match="cannot run rmmd_core::ema_update"):
        ops.ema_update([torch.zeros(3)], [torch.ones(3)], 0.5)
