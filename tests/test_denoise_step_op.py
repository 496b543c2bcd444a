"""rmmd_core::denoise_step, "denoise + step" from the raw network output (method.md §e K1 / K3): the fold
into the posterior step is exact for every parameterisation, every backend matches
ops/denoise_reference.py, shares posterior_step's Philox stream, gradients, opcheck, compile, errors."""

from __future__ import annotations

import pytest
import torch

from rmmd_core import ops
from rmmd_core.ops import dispatch
from rmmd_core.ops.denoise_reference import denoise_step_ref, fold_denoise_coefficients
from rmmd_core.ops.reference import posterior_step_ref
from rmmd_core.parameterization import PREDICTIONS, to_x0, x0_coefficients
from rmmd_core.sampler import posterior_coefficients
from rmmd_core.schedules import get_schedule
from test_posterior_step_op import LOWP, SEED, SIMD_PATHS, TOLERANCES, _assert_close
from test_rmmd_cotangent_op import _device

_REASONS = ops.backend_reasons("denoise_step")
needs_cpu_op = pytest.mark.skipif(bool(_REASONS["cpu"]), reason=str(_REASONS["cpu"]))
needs_triton = pytest.mark.skipif(bool(_REASONS["triton"]), reason=str(_REASONS["triton"]))
FUSED = [pytest.param("cpu", marks=needs_cpu_op), pytest.param("triton", marks=[pytest.mark.interpreter, needs_triton])]


def _coefs(batch, device="cpu", zero_gamma=()):
    """Random never-zero float64 (a, c, A, C, gamma); gamma is exactly 0 at ``zero_gamma``."""
    sign = lambda: torch.where(torch.rand(batch) < 0.5, -1.0, 1.0).double()  # noqa: E731
    a = (0.1 + torch.rand(batch, dtype=torch.float64)) * sign()
    c = (0.1 + torch.rand(batch, dtype=torch.float64)) * sign()
    A = 0.3 + torch.rand(batch, dtype=torch.float64)
    C = (0.1 + torch.rand(batch, dtype=torch.float64)) * sign()
    gamma = 0.2 + torch.rand(batch, dtype=torch.float64)
    gamma[list(zero_gamma)] = 0.0
    return tuple(t.to(device) for t in (a, c, A, C, gamma))


def _check(z_s, x0, z, f, coefs, seed, offset, want_x0, what):
    assert z_s.shape == z.shape and z_s.dtype == z.dtype and z_s.is_contiguous(), what
    assert x0.shape == (z.shape if want_x0 else (0,)) and x0.dtype == z.dtype, what
    z, f, z_s, x0 = z.cpu(), f.cpu(), z_s.cpu(), x0.cpu()
    coefs = tuple(t.cpu() for t in coefs)
    ref = denoise_step_ref(z, f, *coefs, seed, offset, want_x0)
    outs = [(z_s, ref[0], "z_s")] + ([(x0, ref[1], "x0")] if want_x0 else [])
    if z.dtype in LOWP:  # flash-attn rule: at most 2x the reference's own low-precision error
        truth = denoise_step_ref(z.double(), f.double(), *coefs, seed, offset, want_x0)
        for (out, r, name), t in zip(outs, truth):
            _assert_close(out, t, atol=2 * (r.double() - t).abs().max().item() + 1e-6, rtol=0.0,
                          what=f"{what} {name} vs fp64 truth")
    else:
        for out, r, name in outs:
            _assert_close(out, r, what=f"{what} {name}", **TOLERANCES[z.dtype])


@pytest.mark.parametrize("backend", FUSED)
@pytest.mark.parametrize("want_x0", [False, True], ids=["z_s", "z_s+x0"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.bfloat16, torch.float16], ids=str)
@pytest.mark.parametrize("shape", [(1, 1), (3, 7), (5, 3, 11, 13), (2, 1031)], ids=str)
def test_matches_reference(shape, dtype, want_x0, backend):
    dev = _device(backend)
    z, f = (torch.randn(shape).to(device=dev, dtype=dtype) for _ in range(2))
    coefs = _coefs(shape[0], dev, zero_gamma=(0,) if shape[0] > 2 else ())
    res = ops.denoise_step(z, f, *coefs, SEED, 17, want_x0=want_x0, backend=backend)
    z_s, x0 = res if want_x0 else (res, z.new_empty(0))
    _check(z_s, x0, z, f, coefs, SEED, 17, want_x0, f"{backend} {shape} {dtype}")


@needs_cpu_op
@pytest.mark.parametrize("simd", SIMD_PATHS)
@pytest.mark.parametrize("want_x0", [False, True], ids=["z_s", "z_s+x0"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16], ids=str)
def test_cpu_noise_paths_match_reference(dtype, want_x0, simd, monkeypatch):
    # Every CPU noise path (RMMD_CORE_CPU_SIMD), with D = 59 and 429 reaching each tail of the SIMD loops
    # and a gamma = 0 sample (the noise-free loop); z_s must stay posterior_step's on the same path.
    monkeypatch.setenv("RMMD_CORE_CPU_SIMD", simd)
    for shape in [(3, 59), (4, 3, 11, 13)]:
        z, f = (torch.randn(shape).to(dtype) for _ in range(2))
        coefs = _coefs(shape[0], zero_gamma=(1,))
        res = ops.denoise_step(z, f, *coefs, SEED, 2**32 - 40, want_x0=want_x0, backend="cpu")
        z_s, x0 = res if want_x0 else (res, z.new_empty(0))
        _check(z_s, x0, z, f, coefs, SEED, 2**32 - 40, want_x0, f"cpu {simd} {shape} {dtype}")
        P, Q = fold_denoise_coefficients(*coefs[:4])
        assert torch.equal(z_s, ops.posterior_step(z, f, P, Q, coefs[4], SEED, 2**32 - 40, backend="cpu"))


@pytest.mark.parametrize("prediction", PREDICTIONS)
@pytest.mark.parametrize("eta", [0.0, 0.5, 1.0])
def test_fold_is_the_unfused_conversion_then_step(prediction, eta):
    # In float64 the fused op equals to_x0 followed by the posterior step, for every parameterisation
    # (all are affine in (z, F)), including the final step into s = 0 (z_s = x̂ exactly).
    sch = get_schedule("edm" if prediction == "edm" else "rectified_flow" if prediction == "flow" else "vp_cosine")
    B = 5
    t = torch.tensor([0.95, 0.7, 0.5, 0.31, 0.1], dtype=torch.float64)
    s = torch.tensor([0.8, 0.55, 0.0, 0.3, 0.0], dtype=torch.float64)
    alpha, sigma = sch.alpha_sigma(t)
    kw = {}
    if prediction == "flow":
        kw["dalpha"], kw["dsigma"] = sch.alpha_sigma_derivatives(t)
    if prediction == "edm":
        kw["sigma_data"] = sch.sigma_data
    a, c = x0_coefficients(alpha, sigma, prediction, **kw)
    A, C, gamma = posterior_coefficients(sch, t, s, eta)
    z, f = torch.randn(B, 3, 4, dtype=torch.float64), torch.randn(B, 3, 4, dtype=torch.float64)
    view = (B, 1, 1)
    x_hat = to_x0(f, z, alpha.view(view), sigma.view(view), prediction,
                  **{k: v.view(view) if isinstance(v, torch.Tensor) else v for k, v in kw.items()})
    z_s, x0 = denoise_step_ref(z, f, a, c, A, C, gamma, SEED, 3, want_x0=True)
    torch.testing.assert_close(x0, x_hat, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(z_s, posterior_step_ref(z, x_hat, A, C, gamma, SEED, 3), rtol=1e-10, atol=1e-10)
    final = s == 0
    assert torch.equal(z_s[final], x0[final])


@pytest.mark.parametrize("backend", FUSED)
def test_z_s_is_posterior_step_on_folded_coefficients(backend):
    # Same kernel family, same Philox counters: bit-identical to posterior_step with (P, Q) on one backend.
    dev = _device(backend)
    z, f = torch.randn(4, 300, device=dev), torch.randn(4, 300, device=dev)
    a, c, A, C, gamma = _coefs(4, dev, zero_gamma=(2,))
    P, Q = fold_denoise_coefficients(a, c, A, C)
    z_s, _ = ops.denoise_step(z, f, a, c, A, C, gamma, SEED, 1234, want_x0=True, backend=backend)
    assert torch.equal(z_s, ops.posterior_step(z, f, P, Q, gamma, SEED, 1234, backend=backend))


@pytest.mark.parametrize("backend", FUSED)
@pytest.mark.parametrize("layout", ["transposed", "sliced_batch", "expanded"])
def test_non_contiguous_inputs(layout, backend):
    make = {"transposed": lambda: torch.randn(6, 9, 10).transpose(1, 2),
            "sliced_batch": lambda: torch.randn(12, 9, 10)[1::2],
            "expanded": lambda: torch.randn(6, 1, 10).expand(6, 9, 10)}[layout]
    dev = _device(backend)
    z, f = make().to(dev), make().to(dev)
    coefs = _coefs(6, dev)
    z_s, x0 = ops.denoise_step(z, f, *coefs, SEED, 3, want_x0=True, backend=backend)
    z_c, x0_c = ops.denoise_step(z.contiguous(), f.contiguous(), *coefs, SEED, 3, want_x0=True, backend=backend)
    assert torch.equal(z_s, z_c) and torch.equal(x0, x0_c) and x0.is_contiguous()
    _check(z_s, x0, z, f, coefs, SEED, 3, True, f"{backend} {layout}")


@pytest.mark.parametrize("backend", FUSED)
@pytest.mark.parametrize("want_x0", [False, True], ids=["z_s", "z_s+x0"])
def test_gradients_match_reference(want_x0, backend):
    dev = _device(backend)
    z, f = torch.randn(3, 4, 5, device=dev), torch.randn(3, 4, 5, device=dev)
    coefs = _coefs(3, dev)
    g_zs, g_x0 = torch.randn(z.shape, device=dev), torch.randn(z.shape, device=dev)
    grads = []
    for name in ("reference", backend):
        zl, fl = z.clone().requires_grad_(True), f.clone().requires_grad_(True)
        res = ops.denoise_step(zl, fl, *coefs, SEED, 0, want_x0=want_x0, backend=name)
        loss = (res[0] * g_zs).sum() + (res[1] * g_x0).sum() if want_x0 else (res * g_zs).sum()
        loss.backward()
        grads.append((zl.grad, fl.grad))
    for (gr_z, gr_f), (gb_z, gb_f) in zip([grads[0]], [grads[1]]):
        torch.testing.assert_close(gb_z, gr_z, rtol=1e-6, atol=1e-6)
        torch.testing.assert_close(gb_f, gr_f, rtol=1e-6, atol=1e-6)


@needs_cpu_op
def test_gradcheck_cpu_float64():
    coefs = _coefs(2)
    z = torch.randn(2, 3, 4, dtype=torch.float64, requires_grad=True)
    f = torch.randn(2, 3, 4, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(
        lambda z_, f_: ops.denoise_step(z_, f_, *coefs, SEED, 0, want_x0=True, backend="cpu"), (z, f))


@needs_cpu_op
@pytest.mark.parametrize("want_x0", [False, True])
@pytest.mark.parametrize("requires_grad", [False, True])
def test_opcheck_cpu(requires_grad, want_x0):
    a, c, A, C, gamma = _coefs(3)
    P, Q = fold_denoise_coefficients(a, c, A, C)
    z = torch.randn(3, 5, 7, requires_grad=requires_grad)
    f = torch.randn(3, 5, 7, requires_grad=requires_grad)
    torch.library.opcheck(torch.ops.rmmd_core.denoise_step.default, (z, f, P, Q, gamma, a, c, SEED, 11, want_x0))


@pytest.mark.interpreter
@needs_triton
@pytest.mark.parametrize("want_x0", [False, True])
def test_opcheck_triton(want_x0):
    from test_posterior_step_triton import OPCHECK_UTILS

    dev = _device("triton")
    a, c, A, C, gamma = _coefs(3, dev)
    P, Q = fold_denoise_coefficients(a, c, A, C)
    z = torch.randn(3, 5, 7, device=dev, requires_grad=True)
    f = torch.randn(3, 5, 7, device=dev, requires_grad=True)
    torch.library.opcheck(torch.ops.rmmd_core.denoise_step_triton.default, (z, f, P, Q, gamma, a, c, SEED, 11, want_x0),
                          test_utils=OPCHECK_UTILS)


@needs_cpu_op
def test_torch_compile_fullgraph(monkeypatch):
    monkeypatch.delenv(dispatch.BACKEND_ENV, raising=False)
    z, f = torch.randn(4, 33), torch.randn(4, 33)
    coefs = _coefs(4)

    def fn(z_, f_, *cs):
        z_s, x0 = ops.denoise_step(z_, f_, *cs, SEED, 5, want_x0=True)
        return z_s * 2.0, x0 + 1.0

    torch._dynamo.reset()
    got, want = torch.compile(fn, fullgraph=True)(z, f, *coefs), fn(z, f, *coefs)
    assert all(torch.equal(g, w) for g, w in zip(got, want))


BAD = {
    "z_not_tensor": (dict(z_t=[1.0]), TypeError, "z_t"),
    "z_0d": (dict(z_t=torch.tensor(1.0)), ValueError, "z_t"),
    "z_int": (dict(z_t=torch.ones(3, 4, dtype=torch.int64)), TypeError, "z_t"),
    "net_out_shape": (dict(net_out=torch.randn(3, 5)), ValueError, "net_out"),
    "net_out_dtype": (dict(net_out=torch.randn(3, 4, dtype=torch.float64)), TypeError, "net_out"),
    "a_2d": (dict(a=torch.ones(3, 1)), ValueError, "a"),
    "c_batch": (dict(c=torch.ones(4)), ValueError, "c"),
    "A_int": (dict(A=torch.ones(3, dtype=torch.int32)), TypeError, "A"),
    "gamma_device": (dict(gamma=torch.empty(3, device="meta")), ValueError, "gamma"),
    "seed_negative": (dict(seed=-1), ValueError, "seed"),
    "offset_float": (dict(offset=1.5), TypeError, "offset"),
    "want_x0_int": (dict(want_x0=1), TypeError, "want_x0"),
}


@pytest.mark.parametrize("case", list(BAD))
def test_bad_inputs_name_the_argument(case):
    a, c, A, C, gamma = _coefs(3)
    kw = {**dict(z_t=torch.randn(3, 4), net_out=torch.randn(3, 4), a=a, c=c, A=A, C=C, gamma=gamma, seed=SEED,
                 offset=0, want_x0=False), **BAD[case][0]}
    with pytest.raises(BAD[case][1]) as info:
        ops.denoise_step(**kw)
    message, name = str(info.value), BAD[case][2]
    assert message.startswith(name) or f" {name} " in message or f"{name}:" in message, message


@needs_cpu_op
@pytest.mark.parametrize("case,name", [("a_2d", "a"), ("c_batch", "c"), ("net_out_shape", "net_out"),
                                       ("seed_negative", "seed")])
def test_direct_op_checks_name_the_argument(case, name):
    a, c, A, C, gamma = _coefs(3)
    kw = {**dict(z_t=torch.randn(3, 4), net_out=torch.randn(3, 4), a=a, c=c, seed=SEED), **BAD[case][0]}
    with pytest.raises(RuntimeError, match=rf"\b{name}\b"):
        torch.ops.rmmd_core.denoise_step(kw["z_t"], kw["net_out"], A, C, gamma, kw["a"], kw["c"], kw["seed"], 0, True)


@pytest.mark.parametrize("backend", FUSED + ["reference"])
def test_folded_coefficients_give_the_same_result(backend):
    """``folded=fold_denoise_coefficients(a, c, A, C)`` (a rollout's fold made once) changes no bit; a
    malformed pair is refused by name."""
    dev = _device(backend)
    z, f = torch.randn(5, 3, 37, device=dev), torch.randn(5, 3, 37, device=dev)
    a, c, A, C, gamma = _coefs(5, dev, zero_gamma=(1,))
    folded = fold_denoise_coefficients(a, c, A, C)
    plain = ops.denoise_step(z, f, a, c, A, C, gamma, SEED, 7, want_x0=True, backend=backend)
    given = ops.denoise_step(z, f, a, c, A, C, gamma, SEED, 7, want_x0=True, folded=folded, backend=backend)
    assert all(torch.equal(x, y) for x, y in zip(plain, given))
    with pytest.raises(TypeError, match="folded must be a"):
        ops.denoise_step(z, f, a, c, A, C, gamma, SEED, 7, folded=folded[0], backend=backend)
    with pytest.raises((TypeError, ValueError), match=r"\bP\b"):
        ops.denoise_step(z, f, a, c, A, C, gamma, SEED, 7, folded=(folded[0][:3], folded[1]), backend=backend)
