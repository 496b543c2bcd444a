"""rmmd_core::grad_norm / rmmd_core::grad_scale, the multi-tensor gradient-clipping ops: every backend
against ops/grad_norm_reference.py over lists of odd-sized tensors with mixed dtypes and strides, the norm's
independence of the thread count, inf / NaN propagation, bit-equality of grad_scale_ with
torch._foreach_mul_, the reference against float64 math and torch's get_total_norm, opcheck, and named
errors for bad input."""

from __future__ import annotations

import pytest
import torch

from rmmd_core import ops
from rmmd_core.ops.grad_norm_reference import grad_norm_ref, grad_scale_ref
from test_rmmd_cotangent_op import _device

_REASONS = ops.backend_reasons("grad_norm")
HAS_CPU_OP = not _REASONS["cpu"]
HAS_TRITON = not _REASONS["triton"]
needs_cpu_op = pytest.mark.skipif(not HAS_CPU_OP, reason=str(_REASONS["cpu"]))
needs_triton = [pytest.mark.interpreter, pytest.mark.skipif(not HAS_TRITON, reason=str(_REASONS["triton"]))]
BACKENDS = ["reference", pytest.param("cpu", marks=needs_cpu_op), pytest.param("triton", marks=needs_triton),
            pytest.param("cuda", marks=pytest.mark.skipif(bool(_REASONS["cuda"]), reason=str(_REASONS["cuda"])))]
DTYPES = [torch.float32, torch.bfloat16, torch.float16, torch.float64]
# Odd sizes: 1, primes, one above the CPU / CUDA chunk (16384) and several Triton programs (1024).
SHAPES = [(1,), (7,), (3, 5), (2, 3, 11), (1021,), (16411,), (131, 127)]


def _list(device="cpu", dtypes=(torch.float32, torch.bfloat16, torch.float16), shapes=SHAPES, scale=1.0):
    return [(scale * torch.randn(shape)).to(device=device, dtype=dtypes[k % len(dtypes)])
            for k, shape in enumerate(shapes)]


def _exact_norm(tensors) -> float:
    """The float64 norm of the values as stored (the truth for float32 / bf16 / fp16 inputs)."""
    return float(torch.cat([t.detach().double().cpu().flatten() for t in tensors]).norm())


def _assert_norm_close(got, tensors, what):
    expected = grad_norm_ref([t.cpu() for t in tensors])
    assert got.shape == () and got.dtype == expected.dtype, what
    assert got.device == tensors[0].device, what
    # A float64 sum whose order differs between backends (chunk partials, lanes, trees): ~1e-15 relative,
    # bounded by 64 eps of float64; a float32 result is that sum rounded once: one float32 ulp at most.
    rel = 64 * torch.finfo(torch.float64).eps if got.dtype == torch.float64 else torch.finfo(torch.float32).eps
    tol = rel * float(expected.abs()) + 1e-300
    err = abs(float(got.cpu().double()) - float(expected.double()))
    assert err <= tol, f"{what}: {float(got)} vs {float(expected)} (err {err:.3g}, tol {tol:.3g})"


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("dtypes", [(torch.float32,), (torch.bfloat16, torch.float16, torch.float32),
                                    (torch.float32, torch.float64)], ids=["fp32", "mixed-low", "with-fp64"])
def test_norm_matches_reference(backend, dtypes):
    torch.manual_seed(0)
    tensors = _list(_device(backend), dtypes)
    got = ops.grad_norm(tensors, backend=backend)
    assert got.dtype == (torch.float64 if torch.float64 in dtypes else torch.float32)
    _assert_norm_close(got, tensors, f"{backend} {dtypes}")


def test_reference_is_the_float64_norm_and_close_to_torch():
    torch.manual_seed(1)
    tensors = _list(dtypes=(torch.float32,), scale=1e-3)
    ref = grad_norm_ref(tensors)
    assert abs(float(ref) - _exact_norm(tensors)) <= torch.finfo(torch.float32).eps * _exact_norm(tensors)
    torch_norm = torch.nn.utils.get_total_norm(tensors, 2.0)
    # torch: per-tensor float32 norms, then a float32 norm of those; a few ulp of float32 apart
    torch.testing.assert_close(ref, torch_norm, rtol=4e-6, atol=0)
    wide = [t.double() for t in tensors]
    torch.testing.assert_close(grad_norm_ref(wide), torch.nn.utils.get_total_norm(wide, 2.0), rtol=1e-13, atol=0)


@needs_cpu_op
def test_cpu_norm_does_not_depend_on_the_thread_count():
    torch.manual_seed(2)
    # many chunks (16384 elements each) of several tensors, plus small ones, so threads split the table
    tensors = _list(shapes=[(5,), (70001,), (3, 7), (40000,), (99991,), (13,)],
                    dtypes=(torch.float32, torch.bfloat16, torch.float32))
    threads = torch.get_num_threads()
    try:
        results = []
        for n in (1, 2, 3, 4):
            torch.set_num_threads(n)
            results.append(ops.grad_norm(tensors, backend="cpu"))
    finally:
        torch.set_num_threads(threads)
    assert all(torch.equal(r, results[0]) for r in results), [float(r) for r in results]
    _assert_norm_close(results[0], tensors, "cpu threads")


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("dtype", DTYPES)
def test_norm_propagates_inf_and_nan(backend, dtype):
    dev = _device(backend)
    torch.manual_seed(3)

    def with_value(value, index):
        tensors = _list(dev, (dtype,), shapes=[(7,), (20000,), (3, 5)])
        tensors[1][index] = value  # in the second chunk of the long tensor
        return tensors

    inf = ops.grad_norm(with_value(float("-inf"), 17000), backend=backend)
    assert torch.isinf(inf) and inf > 0
    nan = ops.grad_norm(with_value(float("nan"), 3), backend=backend)
    assert torch.isnan(nan)
    both = with_value(float("inf"), 17000)
    both[0][2] = float("nan")
    assert torch.isnan(ops.grad_norm(both, backend=backend))
    # squares overflow the input dtype, not the float64 sum (float64 itself: squares up to 1e300)
    big = with_value(min(torch.finfo(dtype).max, 1e150), 5)
    got = ops.grad_norm(big, backend=backend)
    assert torch.isfinite(got)
    _assert_norm_close(got, big, f"{backend} {dtype} max")


@pytest.mark.parametrize("backend", BACKENDS)
def test_norm_reads_non_contiguous_views(backend):
    dev = _device(backend)
    torch.manual_seed(4)
    tensors = [torch.randn(9, 10, device=dev).t(), torch.randn(12, 7, device=dev)[::2],
               torch.randn(5, 1, device=dev).expand(5, 4), torch.randn(6, 8, device=dev, dtype=torch.bfloat16)[:, 1::3],
               torch.randn(300, 131, device=dev)[:, 3:]]
    assert not any(t.is_contiguous() for t in tensors)
    got = ops.grad_norm(tensors, backend=backend)
    _assert_norm_close(got, tensors, f"{backend} strided")
    assert abs(float(got) - _exact_norm(tensors)) <= 2 * torch.finfo(torch.float32).eps * _exact_norm(tensors)


@pytest.mark.parametrize("backend", BACKENDS)
def test_empty_list_and_empty_tensors(backend):
    dev = _device(backend)
    zero = ops.grad_norm([], backend=backend)
    assert zero.shape == () and zero.dtype == torch.float32 and zero.device.type == "cpu" and float(zero) == 0.0
    got = ops.grad_norm([torch.empty(0, 3, device=dev), torch.empty(0, device=dev, dtype=torch.float64)],
                        backend=backend)
    assert float(got) == 0.0 and got.dtype == torch.float64 and got.device.type == torch.device(dev).type
    x = torch.tensor([3.0, 4.0], device=dev)
    assert float(ops.grad_norm([torch.empty(0, device=dev), x], backend=backend)) == 5.0
    ops.grad_scale_([], torch.tensor(0.5), backend=backend)
    e = torch.empty(0, 3, device=dev)
    ops.grad_scale_([e], torch.tensor(0.5, device=dev), backend=backend)


# ------------------------------------------------------------------------------------------ grad_scale_


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("coef", [0.37, 1e-3, 1.0, 1 / 3], ids=["0.37", "1e-3", "1", "third"])
def test_scale_is_bit_identical_to_foreach_mul(backend, coef):
    dev = _device(backend)
    torch.manual_seed(5)
    tensors = [t for dtype in DTYPES for t in _list(dev, (dtype,), shapes=SHAPES[:6])]
    expected = [t.clone() for t in tensors]
    c = torch.tensor(coef, dtype=torch.float32, device=dev)
    torch._foreach_mul_(expected, c)
    storage = [t.data_ptr() for t in tensors]
    ops.grad_scale_(tensors, c, backend=backend)
    assert [t.data_ptr() for t in tensors] == storage
    for i, (g, e) in enumerate(zip(tensors, expected)):
        assert torch.equal(g, e), f"{backend} [{i}] {g.dtype}: max diff {(g.double() - e.double()).abs().max():.3g}"


@pytest.mark.parametrize("backend", BACKENDS)
def test_scale_non_contiguous_in_place_and_coef_forms(backend):
    dev = _device(backend)
    torch.manual_seed(6)
    base = [torch.randn(9, 10, device=dev), torch.randn(12, 7, device=dev, dtype=torch.bfloat16),
            torch.randn(8, 6, device=dev, dtype=torch.float16), torch.randn(5, 11, device=dev, dtype=torch.float64)]
    for coef in (torch.tensor([0.3], device=dev), torch.tensor(0.3, device=dev, dtype=torch.float64),
                 torch.tensor([[0.3]], device=dev, dtype=torch.bfloat16)):
        got_base = [b.clone() for b in base]
        exp_base = [b.clone() for b in base]
        views = lambda bs: [bs[0].t(), bs[1][::2], bs[2][:, 1::2], bs[3].t()[2:]]  # noqa: E731
        got, exp = views(got_base), views(exp_base)
        assert not any(v.is_contiguous() for v in got)
        ops.grad_scale_(got, coef, backend=backend)
        torch._foreach_mul_(exp, coef.reshape(()))
        for g, e in zip(got_base, exp_base):  # the views were scaled in place; the rest is untouched
            assert torch.equal(g, e), f"{backend} coef {coef.dtype} {g.dtype}"


def test_scale_reference_is_foreach_mul():
    torch.manual_seed(7)
    tensors = [t for dtype in DTYPES for t in _list(dtypes=(dtype,), shapes=SHAPES[:5])]
    expected = [t.clone() for t in tensors]
    c = torch.tensor(0.123456789)
    torch._foreach_mul_(expected, c)
    grad_scale_ref(tensors, c)
    assert all(torch.equal(a, b) for a, b in zip(tensors, expected))


def test_clip_by_global_norm_matches_clip_grads_with_norm():
    """grad_norm + grad_scale_ with clip_grads_with_norm_'s coefficient is clip_grad_norm_ (norm ~1e-7 apart)."""
    torch.manual_seed(8)
    grads = _list(dtypes=(torch.float32,), scale=0.1)
    before = [g.clone() for g in grads]
    params = [torch.nn.Parameter(torch.zeros_like(g)) for g in grads]
    for p, g in zip(params, grads):
        p.grad = g.clone()
    torch_total = torch.nn.utils.get_total_norm(grads, 2.0)
    total = ops.grad_norm(grads)
    torch.testing.assert_close(total, torch_total, rtol=4e-6, atol=0)
    assert float(torch_total) > 1.0  # so the clip below scales
    torch.nn.utils.clip_grads_with_norm_(params, 1.0, torch_total)
    ops.grad_scale_(grads, torch.clamp(1.0 / (torch_total + 1e-6), max=1.0))  # the same coefficient: same bits
    assert all(torch.equal(g, p.grad) for g, p in zip(grads, params))
    assert not any(torch.equal(g, b) for g, b in zip(grads, before))  # it did clip


# ------------------------------------------------------------------------------------------ opcheck


@needs_cpu_op
def test_opcheck_cpu():
    tensors = _list(dtypes=(torch.float32, torch.bfloat16), shapes=[(3, 5), (7,)])
    torch.library.opcheck(torch.ops.rmmd_core.grad_norm.default, (tensors,),
                          test_utils=("test_schema", "test_faketensor", "test_aot_dispatch_dynamic"))
    torch.library.opcheck(torch.ops.rmmd_core.grad_scale.default, (tensors, torch.tensor(0.5)),
                          test_utils=("test_schema", "test_faketensor", "test_aot_dispatch_dynamic"))


@pytest.mark.interpreter
@pytest.mark.skipif(not HAS_TRITON, reason="triton backend unavailable")
def test_opcheck_triton():
    dev = _device("triton")
    tensors = _list(dev, dtypes=(torch.float32, torch.float16), shapes=[(3, 5), (7,)])
    torch.library.opcheck(torch.ops.rmmd_core.grad_norm_triton.default, (tensors,),
                          test_utils=("test_schema", "test_faketensor"))
    torch.library.opcheck(torch.ops.rmmd_core.grad_scale_triton.default, (tensors, torch.tensor(0.5, device=dev)),
                          test_utils=("test_schema", "test_faketensor"))


# ------------------------------------------------------------------------------------------ bad input


def _bad(case):
    tensors = [torch.randn(3), torch.randn(2, 2)]
    coef = torch.tensor(0.5)
    return {
        "not_list": (dict(tensors=tensors[0]), TypeError, "tensors"),
        "int": (dict(tensors=[tensors[0], torch.ones(2, dtype=torch.int32)]), TypeError, "tensors[1]"),
        "not_tensor": (dict(tensors=[tensors[0], 1.0]), TypeError, "tensors[1]"),
        "device": (dict(tensors=[tensors[0], torch.empty(2, device="meta")]), ValueError, "tensors[1]"),
        "coef_float": (dict(tensors=tensors, coef=0.5), TypeError, "coef"),
        "coef_shape": (dict(tensors=tensors, coef=torch.ones(2)), ValueError, "coef"),
        "coef_int": (dict(tensors=tensors, coef=torch.tensor(1)), TypeError, "coef"),
        "coef_device": (dict(tensors=tensors, coef=torch.tensor(0.5, device="meta")), ValueError, "coef"),
        "backend": (dict(tensors=tensors, coef=coef, backend="tpu"), ValueError, "backend"),
    }[case]


@pytest.mark.parametrize("case", ["not_list", "int", "not_tensor", "device", "backend"])
def test_bad_norm_inputs_name_the_argument(case):
    kwargs, error, name = _bad(case)
    kwargs.pop("coef", None)
    with pytest.raises(error) as info:
        ops.grad_norm(**kwargs)
    assert str(info.value).startswith(name), str(info.value)


@pytest.mark.parametrize("case", ["not_list", "int", "not_tensor", "device", "coef_float", "coef_shape", "coef_int",
                                  "coef_device", "backend"])
def test_bad_scale_inputs_name_the_argument(case):
    kwargs, error, name = _bad(case)
    kwargs.setdefault("coef", torch.tensor(0.5))
    with pytest.raises(error) as info:
        ops.grad_scale_(**kwargs)
    assert str(info.value).startswith(name), str(info.value)


@needs_cpu_op
@pytest.mark.parametrize("case,name", [("int", r"tensors\[1\]"), ("coef_shape", "coef"), ("coef_int", "coef")])
def test_direct_op_checks_name_the_argument(case, name):
    kwargs, _, _ = _bad(case)
    with pytest.raises(RuntimeError, match=name):
        torch.ops.rmmd_core.grad_scale(kwargs["tensors"], kwargs.get("coef", torch.tensor(0.5)))
    if case == "int":
        with pytest.raises(RuntimeError, match=name):
            torch.ops.rmmd_core.grad_norm(kwargs["tensors"])


def test_forced_backend_that_cannot_run_raises(monkeypatch):
    from rmmd_core.ops import dispatch

    monkeypatch.setenv(dispatch.BACKEND_ENV, "cuda")
    with pytest.raises(RuntimeError, match="cannot run rmmd_core::grad_norm"):
        ops.grad_norm([torch.ones(3)])
    with pytest.raises(RuntimeError, match="cannot run rmmd_core::grad_scale"):
        ops.grad_scale_([torch.ones(3)], torch.tensor(0.5))


def test_dtensor_gradients_stay_on_torchs_path():
    """FSDP2 (DTensor) gradients: the public op refuses them by name, and the engine's backward_checks falls
    back to torch's get_total_norm / clip_grads_with_norm_ (one-process gloo group, a 1-device mesh)."""
    dist = pytest.importorskip("torch.distributed")
    if not dist.is_available():
        pytest.skip("torch built without distributed")
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.tensor import Shard, distribute_tensor

    from rmmd_core.engine import backward_checks

    dist.init_process_group("gloo", store=dist.HashStore(), rank=0, world_size=1)
    try:
        mesh = init_device_mesh("cpu", (1,))
        torch.manual_seed(9)
        lin = torch.nn.Linear(5, 3)
        for name in ("weight", "bias"):
            setattr(lin, name, torch.nn.Parameter(distribute_tensor(getattr(lin, name).detach(), mesh, [Shard(0)])))
        opt = torch.optim.SGD(lin.parameters(), lr=0.1)
        loss = 10 * (lin.weight.to_local().square().sum() + lin.bias.to_local().sum())
        checks = backward_checks(loss, lin, opt, 1.0, "cpu")
        with pytest.raises(TypeError, match=r"^tensors\[0\] is a DTensor"):
            ops.grad_norm([lin.weight.grad])
        grads = [p.grad.full_tensor() for p in (lin.weight, lin.bias)]
        expected = float(torch.cat([g.flatten() for g in grads]).norm())
        assert checks.backend_norm is None and hasattr(checks.total, "full_tensor")  # torch's DTensor norm
        norm, skipped = checks.finish({k: float(v) for k, v in checks.tensors.items()})
        assert not skipped and norm == pytest.approx(expected, rel=1e-6) and norm > 1.0
        assert checks.backend_scale is None  # clipped by clip_grads_with_norm_, not by the fused op
        clipped = torch.cat([p.grad.full_tensor().flatten() for p in (lin.weight, lin.bias)])
        assert float(clipped.norm()) == pytest.approx(1.0, rel=1e-5)
    finally:
        dist.destroy_process_group()


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_host_clip_coefficient_equals_torchs_tensor_math(dtype):
    """engine.clip_coefficient reproduces clip_grads_with_norm_'s ``max_norm / (total + 1e-6)`` bit for bit
    from the read norm (norms over 24 decades, near the clip threshold, tiny and huge clips), so the
    engine's clip decision and multiplier equal torch's without the device ops."""
    from rmmd_core.engine import clip_coefficient

    g = torch.Generator().manual_seed(17)
    norms = torch.cat([torch.exp(torch.empty(4000, dtype=torch.float64).uniform_(-28, 28, generator=g)),
                       1.0 + torch.empty(1000, dtype=torch.float64).uniform_(-1e-5, 1e-5, generator=g),
                       torch.tensor([0.0, 1e-6, 1.0 - 1e-6, 1.0, 3e38], dtype=torch.float64)]).to(dtype)
    devices = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])
    for dev, clip in [(d, c) for d in devices for c in (1.0, 0.37, 1e-3, 123.4, 1e-30, 1e30)]:
        # torch's expression on the device, elementwise (the 0-d kernels round each operation the same way)
        expected = torch.clamp(float(clip) / (norms.to(dev) + 1e-6), max=1.0).tolist()
        for n, e in zip(norms.tolist(), expected):
            got = min(clip_coefficient(clip, n, dtype), 1.0)
            assert got == e, (clip, n, got, e)
