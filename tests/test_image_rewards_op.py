"""rmmd_core::grayscale_reward / laplacian_reward (method.md §e K4a, K4b): every backend against
ops/reward_reference.py, dtypes, odd and prime shapes, strided inputs, gradients against autograd of the
reference, opcheck, compile, input errors, and the built-in Reward classes running on the fused op."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from rmmd_core import ops
from rmmd_core.ops import dispatch
from rmmd_core.ops.reward_reference import grayscale_reward_ref, laplacian_reward_ref
from rmmd_core.rewards import GrayscaleReward, LaplacianReward
from test_rmmd_cotangent_op import LOWP, _assert_close, _device, _max_err

OPS = {"grayscale_reward": (ops.grayscale_reward, grayscale_reward_ref),
       "laplacian_reward": (ops.laplacian_reward, laplacian_reward_ref)}
_REASONS = {op: ops.backend_reasons(op) for op in OPS}
HAS_CPU_OP = not _REASONS["laplacian_reward"]["cpu"]
HAS_TRITON = not _REASONS["laplacian_reward"]["triton"]
needs_cpu_op = pytest.mark.skipif(not HAS_CPU_OP, reason=str(_REASONS["laplacian_reward"]["cpu"]))
FUSED = [pytest.param("cpu", marks=needs_cpu_op),
         pytest.param("triton", marks=[pytest.mark.interpreter, pytest.mark.skipif(
             not HAS_TRITON, reason=str(_REASONS["laplacian_reward"]["triton"]))])]
DTYPES = [torch.float32, torch.float64, torch.bfloat16, torch.float16]
# (B, C, H, W): single pixels, single rows / columns (borders fold onto themselves), primes, and a plane
# of 131 x 127 = 16637 pixels, more than one CPU chunk / band (16384) and several Triton programs.
SHAPES = {"grayscale_reward": [(1, 3, 1, 1), (2, 3, 1, 13), (3, 3, 7, 11), (2, 3, 131, 127)],
          "laplacian_reward": [(1, 1, 1, 1), (2, 3, 1, 5), (2, 2, 13, 1), (3, 2, 7, 11), (1, 1, 131, 127)]}
CASES = [(op, shape) for op in OPS for shape in SHAPES[op]]


def _check(out, x, op, what):
    value, grad = out
    opmath = torch.float64 if x.dtype == torch.float64 else torch.float32
    assert value.shape == (x.shape[0],) and value.dtype == opmath, what
    assert grad.shape == x.shape and grad.dtype == x.dtype and grad.is_contiguous(), what
    ref = OPS[op][1]
    ref_value, ref_grad = ref(x)
    if x.dtype in LOWP:  # error <= 2x the reference's own error at this precision (vs float64 truth)
        truth_value, truth_grad = ref(x.detach().cpu().double())
        _assert_close(grad, truth_grad, atol=2 * _max_err(ref_grad, truth_grad) + 1e-9, rtol=0.0, what=f"{what} grad")
        _assert_close(value, truth_value, atol=2 * _max_err(ref_value, truth_value) + 1e-6, rtol=1e-4,
                      what=f"{what} value")
    elif x.dtype == torch.float64:
        _assert_close(grad, ref_grad, atol=1e-14, rtol=1e-12, what=f"{what} grad")
        _assert_close(value, ref_value, atol=1e-13, rtol=1e-11, what=f"{what} value")
    else:
        _assert_close(grad, ref_grad, atol=1e-8, rtol=1e-5, what=f"{what} grad")
        _assert_close(value, ref_value, atol=1e-6, rtol=1e-5, what=f"{what} value")


@pytest.mark.parametrize("backend", FUSED)
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("op,shape", CASES, ids=str)
def test_matches_reference(op, shape, dtype, backend):
    x = torch.randn(shape).to(device=_device(backend), dtype=dtype)
    _check(OPS[op][0](x, backend=backend), x, op, f"{op} {backend} {shape} {dtype}")


@pytest.mark.parametrize("backend", FUSED)
@pytest.mark.parametrize("layout", ["channels_last", "transposed_hw", "sliced"])
@pytest.mark.parametrize("op", list(OPS))
def test_non_contiguous_inputs(op, layout, backend):
    make = {"channels_last": lambda: torch.randn(3, 9, 10, 3).permute(0, 3, 1, 2),
            "transposed_hw": lambda: torch.randn(3, 3, 10, 9).transpose(2, 3),
            "sliced": lambda: torch.randn(6, 3, 19, 21)[::2, :, 1::2, ::2]}[layout]
    x = make().to(_device(backend))
    assert not x.is_contiguous()
    out = OPS[op][0](x, backend=backend)
    dense = OPS[op][0](x.contiguous(), backend=backend)
    assert torch.equal(out[0], dense[0]) and torch.equal(out[1], dense[1])
    _check(out, x, op, f"{op} {backend} {layout}")


def _direct(op, x):
    """The definitions of method.md §e, differentiated by autograd (independent of the reference)."""
    if op == "grayscale_reward":
        w = torch.tensor([0.299, 0.587, 0.114], dtype=x.dtype).view(1, 3, 1, 1)
        return -((x - (x * w).sum(1, keepdim=True)) ** 2).flatten(1).mean(1)
    p = F.pad(x, (1, 1, 1, 1), mode="replicate")
    avg = (p[..., :-2, 1:-1] + p[..., 2:, 1:-1] + p[..., 1:-1, :-2] + p[..., 1:-1, 2:]) / 4
    return -((x - avg) ** 2).flatten(1).mean(1)


@pytest.mark.parametrize("op,shape", [("grayscale_reward", (2, 3, 5, 7)), ("laplacian_reward", (2, 2, 5, 7)),
                                      ("laplacian_reward", (1, 1, 1, 4))], ids=str)
def test_reference_grad_is_the_gradient_of_the_value(op, shape):
    x = torch.randn(shape, dtype=torch.float64, requires_grad=True)
    value, grad = OPS[op][1](x)
    (auto,) = torch.autograd.grad(_direct(op, x).sum(), x)
    torch.testing.assert_close(value, _direct(op, x).detach(), rtol=1e-12, atol=1e-14)
    torch.testing.assert_close(grad.detach(), auto, rtol=1e-12, atol=1e-14)


@pytest.mark.parametrize("backend", FUSED)
@pytest.mark.parametrize("op", list(OPS))
def test_gradients_match_reference_autograd(op, backend):
    x = torch.randn(3, 3, 6, 5, device=_device(backend))
    g_value = torch.randn(3, device=x.device)
    g_grad = torch.randn(x.shape, device=x.device)

    def grads(fn):
        leaf = x.detach().clone().requires_grad_(True)
        value, grad = fn(leaf)
        ((value * g_value).sum() + (grad * g_grad).sum()).backward()
        return leaf.grad

    expected = grads(OPS[op][1])  # autograd through the pure-PyTorch reference
    torch.testing.assert_close(grads(lambda t: OPS[op][0](t, backend=backend)), expected, rtol=1e-4, atol=1e-7)


@needs_cpu_op
@pytest.mark.parametrize("op", list(OPS))
def test_gradcheck_cpu_op_float64(op):
    x = torch.randn(2, 3, 4, 5, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda t: OPS[op][0](t, backend="cpu"), (x,))
    assert torch.autograd.gradgradcheck(lambda t: OPS[op][0](t, backend="cpu"), (x,))


@needs_cpu_op
@pytest.mark.parametrize("requires_grad", [False, True])
@pytest.mark.parametrize("op", list(OPS))
def test_opcheck_cpu(op, requires_grad):
    x = torch.randn(2, 3, 5, 7, requires_grad=requires_grad)
    torch.library.opcheck(getattr(torch.ops.rmmd_core, op).default, (x,))


@pytest.mark.interpreter
@pytest.mark.skipif(not HAS_TRITON, reason="triton backend unavailable")
@pytest.mark.parametrize("op", list(OPS))
def test_opcheck_triton(op):
    from test_posterior_step_triton import OPCHECK_UTILS

    x = torch.randn(2, 3, 5, 7, device=_device("triton"), requires_grad=True)
    torch.library.opcheck(getattr(torch.ops.rmmd_core, op + "_triton").default, (x,), test_utils=OPCHECK_UTILS)


@needs_cpu_op
def test_torch_compile_fullgraph(monkeypatch):
    monkeypatch.delenv(dispatch.BACKEND_ENV, raising=False)
    x = torch.randn(2, 3, 8, 9)

    def fn(t):
        v1, g1 = ops.grayscale_reward(t)
        v2, g2 = ops.laplacian_reward(t)
        return v1 + v2, g1 - 2 * g2

    torch._dynamo.reset()
    got, expected = torch.compile(fn, fullgraph=True)(x), fn(x)
    assert torch.equal(got[0], expected[0]) and torch.equal(got[1], expected[1])


@pytest.mark.parametrize("reward,op", [(GrayscaleReward(), "grayscale_reward"), (LaplacianReward(), "laplacian_reward")])
def test_reward_classes_run_the_fused_op(reward, op, monkeypatch):
    """The engine's built-in rewards go through the dispatcher: RMMD_CORE_BACKEND selects the kernel."""
    calls = []
    real = ops.dispatch.resolve_backend

    def spy(name, *tensors, backend=None):
        calls.append(name)
        return real(name, *tensors, backend=backend)

    monkeypatch.setattr(ops.dispatch, "resolve_backend", spy)
    x = torch.randn(2, 3, 6, 7, dtype=torch.bfloat16)
    value, grad = reward.value_and_grad(x)
    assert calls == [op]
    assert value.dtype == x.dtype and grad.dtype == x.dtype and grad.shape == x.shape
    ref_value, ref_grad = OPS[op][1](x)
    # bf16 outputs of fp32 math: at most one bf16 rounding step apart from the reference's
    torch.testing.assert_close(grad.float(), ref_grad.float(), rtol=2 ** -7, atol=1e-7)
    torch.testing.assert_close(value.float(), ref_value.to(x.dtype).float(), rtol=2 ** -7, atol=1e-7)


BAD = {
    "not_tensor": ([[1.0]], TypeError),
    "int": (torch.ones(2, 3, 4, 4, dtype=torch.int32), TypeError),
    "0d": (torch.tensor(1.0), ValueError),
    "3d": (torch.randn(3, 4, 4), ValueError),
}


@pytest.mark.parametrize("case", list(BAD))
@pytest.mark.parametrize("op", list(OPS))
def test_bad_inputs_name_the_argument(op, case):
    x, error = BAD[case]
    with pytest.raises(error, match=r"^x0 "):
        OPS[op][0](x)


def test_grayscale_needs_three_channels():
    with pytest.raises(ValueError, match=r"x0 must have shape \(B, 3, H, W\)"):
        ops.grayscale_reward(torch.randn(2, 4, 5, 5))
    with pytest.raises(ValueError, match="backend"):
        ops.grayscale_reward(torch.randn(2, 3, 5, 5), backend="tpu")


@needs_cpu_op
@pytest.mark.parametrize("op,x", [("grayscale_reward", torch.randn(2, 4, 3, 3)),
                                  ("laplacian_reward", torch.randn(2, 3, 3)),
                                  ("laplacian_reward", torch.ones(2, 1, 3, 3, dtype=torch.int64))])
def test_direct_op_checks_name_the_argument(op, x):
    from torch._subclasses.fake_tensor import FakeTensorMode

    with pytest.raises(RuntimeError, match=r"\bx0\b"):
        getattr(torch.ops.rmmd_core, op)(x)
    with FakeTensorMode() as mode:
        with pytest.raises(RuntimeError, match=r"\bx0\b"):
            getattr(torch.ops.rmmd_core, op)(mode.from_tensor(x))


@pytest.mark.parametrize("op", list(OPS))
def test_forced_backend_that_cannot_run_raises(op, monkeypatch):
    monkeypatch.setenv(dispatch.BACKEND_ENV, "cuda")
    with pytest.raises(RuntimeError, match=f"backend 'cuda' .*{dispatch.BACKEND_ENV}.* cannot run rmmd_core::{op}"):
        OPS[op][0](torch.randn(1, 3, 2, 2))
    monkeypatch.setenv(dispatch.BACKEND_ENV, "reference")
    value, grad = OPS[op][0](torch.randn(1, 3, 2, 2, dtype=torch.float64))
    assert value.dtype == torch.float64 and grad.shape == (1, 3, 2, 2)


def test_reward_class_backend_argument():
    x = torch.randn(2, 3, 4, 5, dtype=torch.float64)
    v_ref, g_ref = LaplacianReward(backend="reference").value_and_grad(x)
    expected = laplacian_reward_ref(x)
    assert torch.equal(v_ref, expected[0]) and torch.equal(g_ref, expected[1])
    with pytest.raises(ValueError, match="backend argument"):
        GrayscaleReward(backend="tpu").value_and_grad(x)
