"""rmmd_core::renoise, the forward re-noise x_t = alpha x + sigma n (method.md §c.6 step 2, §e K2): every
backend against ops/reference.py::renoise_ref, the shared Philox stream, noise statistics, gradients,
opcheck, compile and input errors."""

from __future__ import annotations

import math

import pytest
import torch

from rmmd_core import ops
from rmmd_core.ops import dispatch
from rmmd_core.ops.reference import philox_randn_ref, posterior_step_ref, renoise_ref
from test_posterior_step_op import LOWP, SEED, SIMD_PATHS, TOLERANCES, _assert_close
from test_rmmd_cotangent_op import _device

_REASONS = ops.backend_reasons("renoise")
needs_cpu_op = pytest.mark.skipif(bool(_REASONS["cpu"]), reason=str(_REASONS["cpu"]))
FUSED = [pytest.param("cpu", marks=needs_cpu_op),
         pytest.param("triton", marks=[pytest.mark.interpreter,
                                       pytest.mark.skipif(bool(_REASONS["triton"]), reason=str(_REASONS["triton"]))])]


def _coefs(batch, device="cpu"):
    alpha = (0.1 + torch.rand(batch, dtype=torch.float64)).to(device)
    sigma = (0.2 + torch.rand(batch, dtype=torch.float64)).to(device)
    return alpha, sigma


def _check(out, x, alpha, sigma, seed, offset, what):
    assert out.shape == x.shape and out.dtype == x.dtype and out.is_contiguous(), what
    x, alpha, sigma, out = x.cpu(), alpha.cpu(), sigma.cpu(), out.cpu()
    ref = renoise_ref(x, alpha, sigma, seed, offset)
    if x.dtype in LOWP:
        truth = renoise_ref(x.double(), alpha, sigma, seed, offset)
        _assert_close(out, truth, atol=2 * (ref.double() - truth).abs().max().item() + 1e-6, rtol=0.0,
                      what=f"{what} vs fp64 truth")
    else:
        _assert_close(out, ref, what=what, **TOLERANCES[x.dtype])


@pytest.mark.parametrize("backend", FUSED)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.bfloat16, torch.float16], ids=str)
@pytest.mark.parametrize("shape", [(1, 1), (3, 7), (5, 3, 11, 13), (2, 1031)], ids=str)
def test_matches_reference(shape, dtype, backend):
    x = torch.randn(shape).to(device=_device(backend), dtype=dtype)
    alpha, sigma = _coefs(shape[0], x.device)
    _check(ops.renoise(x, alpha, sigma, SEED, 29, backend=backend), x, alpha, sigma, SEED, 29,
           f"{backend} {shape} {dtype}")


@pytest.mark.parametrize("backend", FUSED)
@pytest.mark.parametrize("layout", ["transposed", "sliced_batch", "expanded"])
def test_non_contiguous_input(layout, backend):
    x = {"transposed": lambda: torch.randn(6, 9, 10).transpose(1, 2),
         "sliced_batch": lambda: torch.randn(12, 9, 10)[1::2],
         "expanded": lambda: torch.randn(6, 1, 10).expand(6, 9, 10)}[layout]().to(_device(backend))
    alpha, sigma = _coefs(6, x.device)
    out = ops.renoise(x, alpha, sigma, SEED, 3, backend=backend)
    assert torch.equal(out, ops.renoise(x.contiguous(), alpha, sigma, SEED, 3, backend=backend))
    _check(out, x, alpha, sigma, SEED, 3, f"{backend} {layout}")


@needs_cpu_op
@pytest.mark.parametrize("simd", SIMD_PATHS)
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16], ids=str)
def test_cpu_noise_paths_match_reference(dtype, simd, monkeypatch):
    # Every CPU noise path (RMMD_CORE_CPU_SIMD); D = 59 and 429 reach each tail of the SIMD loops.
    monkeypatch.setenv("RMMD_CORE_CPU_SIMD", simd)
    for shape in [(3, 59), (4, 3, 11, 13)]:
        x = torch.randn(shape).to(dtype)
        alpha, sigma = _coefs(shape[0])
        _check(ops.renoise(x, alpha, sigma, SEED, 2**32 - 40, backend="cpu"), x, alpha, sigma, SEED, 2**32 - 40,
               f"cpu {simd} {shape} {dtype}")


def test_reference_is_the_posterior_step_with_c_zero_and_shares_its_stream():
    x = torch.randn(3, 50)
    alpha, sigma = _coefs(3)
    out = renoise_ref(x, alpha, sigma, SEED, 7)
    assert torch.equal(out, posterior_step_ref(x, x, alpha, torch.zeros(3, dtype=torch.float64), sigma, SEED, 7))
    noise = philox_randn_ref(150, SEED, 7).view(3, 50)
    torch.testing.assert_close(out, (alpha.float()[:, None] * x + sigma.float()[:, None] * noise), rtol=0, atol=0)


@pytest.mark.parametrize("backend", ["reference", *FUSED])
def test_noise_statistics_and_offsets(backend):
    # x_t ~ N(alpha x, sigma^2): standardised residuals have mean 0, variance 1 (5 standard errors);
    # the same (seed, offset) repeats, a shifted offset gives an uncorrelated stream.
    B, D = 2, 8192
    x = torch.randn(B, D, dtype=torch.float64).to(_device(backend))
    alpha, sigma = _coefs(B, x.device)
    out = ops.renoise(x, alpha, sigma, SEED, 0, backend=backend)
    assert torch.equal(out, ops.renoise(x, alpha, sigma, SEED, 0, backend=backend))
    resid = ((out - alpha[:, None] * x) / sigma[:, None]).cpu()
    assert (resid.mean(1).abs() < 5 / math.sqrt(D)).all()
    assert ((resid.var(1) - 1).abs() < 5 * math.sqrt(2 / D)).all()
    other = ((ops.renoise(x, alpha, sigma, SEED, B * D, backend=backend) - alpha[:, None] * x) / sigma[:, None]).cpu()
    r = torch.corrcoef(torch.stack([resid.flatten(), other.flatten()]))[0, 1].item()
    assert abs(r) < 5 / math.sqrt(B * D)


@pytest.mark.parametrize("backend", FUSED)
def test_gradients_match_reference(backend):
    x = torch.randn(3, 4, 5, device=_device(backend))
    alpha, sigma = _coefs(3, x.device)
    grad = torch.randn(x.shape, device=x.device)
    grads = []
    for name in ("reference", backend):
        leaf = x.clone().requires_grad_(True)
        ops.renoise(leaf, alpha, sigma, SEED, 0, backend=name).backward(grad)
        grads.append(leaf.grad)
    assert torch.equal(grads[0], grads[1])


@needs_cpu_op
def test_gradcheck_cpu_float64():
    x = torch.randn(2, 3, 4, dtype=torch.float64, requires_grad=True)
    alpha, sigma = _coefs(2)
    assert torch.autograd.gradcheck(lambda t: ops.renoise(t, alpha, sigma, SEED, 0, backend="cpu"), (x,))


@needs_cpu_op
@pytest.mark.parametrize("requires_grad", [False, True])
def test_opcheck_cpu(requires_grad):
    x = torch.randn(3, 5, 7, requires_grad=requires_grad)
    alpha, sigma = _coefs(3)
    torch.library.opcheck(torch.ops.rmmd_core.renoise.default, (x, alpha, sigma, SEED, 11))


@pytest.mark.interpreter
@pytest.mark.skipif(bool(_REASONS["triton"]), reason=str(_REASONS["triton"]))
def test_opcheck_triton():
    from test_posterior_step_triton import OPCHECK_UTILS

    x = torch.randn(3, 5, 7, device=_device("triton"), requires_grad=True)
    alpha, sigma = _coefs(3, x.device)
    torch.library.opcheck(torch.ops.rmmd_core.renoise_triton.default, (x, alpha, sigma, SEED, 11),
                          test_utils=OPCHECK_UTILS)


@needs_cpu_op
def test_torch_compile_fullgraph(monkeypatch):
    monkeypatch.delenv(dispatch.BACKEND_ENV, raising=False)
    x = torch.randn(4, 33)
    alpha, sigma = _coefs(4)
    fn = lambda x_, a_, s_: ops.renoise(x_, a_, s_, SEED, 5) * 2.0  # noqa: E731
    torch._dynamo.reset()
    assert torch.equal(torch.compile(fn, fullgraph=True)(x, alpha, sigma), fn(x, alpha, sigma))


BAD = {
    "x_not_tensor": (dict(x=[1.0]), TypeError, "x"),
    "x_0d": (dict(x=torch.tensor(1.0)), ValueError, "x"),
    "x_int": (dict(x=torch.ones(3, 4, dtype=torch.int64)), TypeError, "x"),
    "alpha_2d": (dict(alpha=torch.ones(3, 1)), ValueError, "alpha"),
    "sigma_batch": (dict(sigma=torch.ones(4)), ValueError, "sigma"),
    "sigma_int": (dict(sigma=torch.ones(3, dtype=torch.int32)), TypeError, "sigma"),
    "alpha_device": (dict(alpha=torch.empty(3, device="meta")), ValueError, "alpha"),
    "seed_negative": (dict(seed=-1), ValueError, "seed"),
    "offset_float": (dict(offset=1.5), TypeError, "offset"),
}


@pytest.mark.parametrize("case", list(BAD))
def test_bad_inputs_name_the_argument(case):
    alpha, sigma = _coefs(3)
    kw = {**dict(x=torch.randn(3, 4), alpha=alpha, sigma=sigma, seed=SEED, offset=0), **BAD[case][0]}
    with pytest.raises(BAD[case][1]) as info:
        ops.renoise(**kw)
    message = str(info.value)
    name = BAD[case][2]
    assert message.startswith(name) or f" {name} " in message or f"{name}:" in message, message


@needs_cpu_op
@pytest.mark.parametrize("case,name", [("alpha_2d", "alpha"), ("sigma_batch", "sigma"), ("seed_negative", "seed")])
def test_direct_op_checks_name_the_argument(case, name):
    alpha, sigma = _coefs(3)
    kw = {**dict(x=torch.randn(3, 4), alpha=alpha, sigma=sigma, seed=SEED, offset=0), **BAD[case][0]}
    with pytest.raises(RuntimeError, match=rf"\b{name}\b"):
        torch.ops.rmmd_core.renoise(kw["x"], kw["alpha"], kw["sigma"], kw["seed"], kw["offset"])
