"""rmmd_core::posterior_step_triton (method.md §a.4, §e K1): the Triton kernel against ops/reference.py,
its in-kernel Philox noise, autograd, opcheck and the dispatcher's triton backend.

On machines without a GPU the kernel runs under TRITON_INTERPRET=1 on CPU tensors (tests/conftest.py),
so shapes stay small.
"""

from __future__ import annotations

import math

import pytest
import torch

from rmmd_core import ops
from rmmd_core.ops import dispatch
from rmmd_core.ops.reference import posterior_step_ref
from test_posterior_step_op import SEED, _check_against_reference, _coefficients, _data, _layouts

pytestmark = pytest.mark.interpreter

HAS_TRITON = not ops.backend_reasons("posterior_step")["triton"]  # build-level reasons only
needs_triton = pytest.mark.skipif(not HAS_TRITON, reason=str(ops.backend_reasons("posterior_step")["triton"]))


# Under the interpreter wrap_triton passes the interpreted kernel through unwrapped (torch 2.13), so
# AOTDispatcher traces the launcher with the launch skipped (ops/triton/_common.py::launchable) and
# test_aot_dispatch_dynamic cannot pass; with compiled Triton on a GPU every opcheck test runs.
OPCHECK_UTILS = (("test_schema", "test_autograd_registration", "test_faketensor") if dispatch._triton_interpreter
                 else ("test_schema", "test_autograd_registration", "test_faketensor", "test_aot_dispatch_dynamic"))


def _device() -> str:
    return "cpu" if dispatch._triton_interpreter else "cuda"


@needs_triton
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.bfloat16, torch.float16], ids=str)
@pytest.mark.parametrize("shape", [(1, 1), (3, 7), (5, 3, 11, 13), (2, 1031)], ids=str)
def test_triton_matches_reference(shape, dtype):
    z, x = (t.to(_device()) for t in _data(shape, dtype))
    A, C, gamma = (t.to(_device()) for t in _coefficients(shape[0], zero_gamma=(1,) if shape[0] > 1 else ()))
    out = ops.posterior_step(z, x, A, C, gamma, SEED, 17, backend="triton")
    _check_against_reference(out.cpu(), z.cpu(), x.cpu(), A.cpu(), C.cpu(), gamma.cpu(), SEED, 17,
                             f"triton {shape} {dtype}")


@needs_triton
@pytest.mark.parametrize("layout", ["transposed", "sliced_batch", "batch_not_outermost", "expanded"])
def test_triton_non_contiguous_inputs(layout):
    z = _layouts(torch.float32)[layout].to(_device())
    x = torch.randn(z.shape, device=_device()).transpose(-1, -2).contiguous().transpose(-1, -2)
    A, C, gamma = (t.to(_device()) for t in _coefficients(z.shape[0], zero_gamma=(0,)))
    out = ops.posterior_step(z, x, A, C, gamma, SEED, 5, backend="triton")
    assert out.is_contiguous()
    dense = ops.posterior_step(z.contiguous(), x.contiguous(), A, C, gamma, SEED, 5, backend="triton")
    assert torch.equal(out, dense)  # the noise follows the logical index, not the memory layout
    _check_against_reference(out.cpu(), z.cpu(), x.cpu(), A.cpu(), C.cpu(), gamma.cpu(), SEED, 5, f"triton {layout}")


@needs_triton
@pytest.mark.parametrize("seed,offset", [(0, 2**32 - 50), (2**63 - 1, 2**62 + 2**32 - 17)])
def test_triton_large_seed_and_offset(seed, offset):
    z, x = (t.to(_device()) for t in _data((2, 100), torch.float32))
    A, C, gamma = (t.to(_device()) for t in _coefficients(2))
    out = ops.posterior_step(z, x, A, C, gamma, seed, offset, backend="triton")
    _check_against_reference(out.cpu(), z.cpu(), x.cpu(), A.cpu(), C.cpu(), gamma.cpu(), seed, offset, "triton")
    again = ops.posterior_step(z, x, A, C, gamma, seed, offset, backend="triton")
    assert torch.equal(out, again)  # same seed and offset: same numbers


@needs_triton
def test_triton_noise_statistics():
    # z_s ~ N(A z + C x, gamma^2): standardised residuals have mean 0 and variance 1 (5 standard errors),
    # and two offsets give uncorrelated streams.
    B, D = 2, 4096
    z, x = (t.to(_device()) for t in _data((B, D), torch.float64))
    A, C, gamma = (t.to(_device()) for t in _coefficients(B))
    out = ops.posterior_step(z, x, A, C, gamma, SEED, 0, backend="triton").cpu()
    resid = (out - A.cpu()[:, None] * z.cpu() - C.cpu()[:, None] * x.cpu()) / gamma.cpu()[:, None]
    assert (resid.mean(1).abs() < 5 / math.sqrt(D)).all()
    assert ((resid.var(1) - 1).abs() < 5 * math.sqrt(2 / D)).all()
    other = ops.posterior_step(z, x, A, C, gamma, SEED, B * D, backend="triton").cpu()
    resid2 = (other - A.cpu()[:, None] * z.cpu() - C.cpu()[:, None] * x.cpu()) / gamma.cpu()[:, None]
    r = torch.corrcoef(torch.stack([resid.flatten(), resid2.flatten()]))[0, 1].item()
    assert abs(r) < 5 / math.sqrt(B * D)


@needs_triton
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=str)
def test_triton_gradients_match_reference(dtype):
    z, x = (t.to(_device()) for t in _data((3, 4, 5), dtype))
    A, C, gamma = (t.to(_device()) for t in _coefficients(3))
    grad = torch.randn(z.shape, device=_device()).to(dtype)
    grads = {}
    for backend in ("reference", "triton"):
        z_, x_ = z.clone().requires_grad_(True), x.clone().requires_grad_(True)
        ops.posterior_step(z_, x_, A, C, gamma, SEED, 0, backend=backend).backward(grad)
        grads[backend] = (z_.grad, x_.grad)
    for ref_g, tri_g in zip(grads["reference"], grads["triton"]):
        assert torch.equal(ref_g, tri_g)


@needs_triton
@pytest.mark.parametrize("requires_grad", [False, True])
def test_triton_opcheck(requires_grad):
    z, x = (t.to(_device()).requires_grad_(requires_grad) for t in _data((3, 5, 7), torch.float32))
    A, C, gamma = (t.to(_device()) for t in _coefficients(3, zero_gamma=(1,)))
    torch.library.opcheck(torch.ops.rmmd_core.posterior_step_triton.default, (z, x, A, C, gamma, SEED, 11),
                          test_utils=OPCHECK_UTILS)


@needs_triton
def test_triton_backend_is_explicit_only_on_cpu_tensors(monkeypatch):
    monkeypatch.delenv(dispatch.BACKEND_ENV, raising=False)
    z = torch.randn(2, 3, device=_device())
    if dispatch._triton_interpreter:
        # The interpreter can run CPU tensors, but auto prefers the C++ kernel (or the reference).
        assert "triton" in ops.available_backends("posterior_step", z)
        assert "triton" not in dispatch.auto_backends("posterior_step", z)
        assert ops.resolve_backend("posterior_step", z) in ("cpu", "reference")
        assert ops.resolve_backend("posterior_step", z, backend="triton") == "triton"
    else:
        assert ops.resolve_backend("posterior_step", z) in ("cuda", "triton")
        with pytest.raises(RuntimeError, match="TRITON_INTERPRET"):
            ops.resolve_backend("posterior_step", torch.randn(2, 3), backend="triton")


def test_triton_unavailable_reason_is_reported(monkeypatch):
    saved = (dispatch._extension_error, dispatch._triton_error, dispatch._triton_interpreter)
    try:
        dispatch.refresh(saved[0], ImportError("simulated: no triton"), False)
        with pytest.raises(RuntimeError, match="simulated: no triton"):
            ops.resolve_backend("posterior_step", torch.randn(2, 3), backend="triton")
    finally:
        dispatch.refresh(*saved)
