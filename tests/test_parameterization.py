"""Tests for rmmd_core/parameterization.py (method.md §a.1, §a.3), float64 unless stated."""
from __future__ import annotations

import math

import pytest
import torch

from rmmd_core.parameterization import (
    PREDICTIONS,
    check_prediction,
    edm_preconditioning,
    from_x0,
    to_eps,
    to_x0,
    x0_coefficients,
)
from rmmd_core.schedules import EDM, DiscreteVP, RectifiedFlow, Schedule, VPCosine, VPLinear

F64 = torch.float64
SHAPE = (11, 3, 5, 7)  # batch 11, odd per-sample shape (3, 5, 7)

SCHEDS: dict[str, Schedule] = {
    "vp_cosine": VPCosine(),
    "vp_cosine_shift": VPCosine.for_resolution(512),
    "vp_linear": VPLinear(),
    "edm": EDM(),
    "rectified_flow": RectifiedFlow(),
    "discrete_linear": DiscreteVP.from_diffusers_config(),
    "discrete_cos": DiscreteVP.from_diffusers_config(beta_schedule="squaredcos_cap_v2"),
}


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)


def _nonzero_randn(*shape, dtype=F64):
    """Standard normal values pushed away from 0 (never exact zeros)."""
    x = torch.randn(*shape, dtype=dtype)
    return x + 0.1 * torch.where(x >= 0, 1.0, -1.0).to(dtype)


def _setup(s: Schedule, dtype=F64):
    B = SHAPE[0]
    # t spread over the whole clamp range, endpoints included. No t is excluded: in float64 every
    # conversion stays well inside 1e-10 even where it is ill-conditioned (eps/score at alpha -> 1e-4:
    # error ~ (sigma/alpha) * 1e-16 ~ 1e-12; to_eps at sigma -> 1e-4: ~ (alpha/sigma) * 1e-16).
    t = torch.linspace(s.t_min, s.t_max, B, dtype=F64)
    view = (B,) + (1,) * (len(SHAPE) - 1)
    a, sg = (c.view(view) for c in s.alpha_sigma(t))
    da, ds = (c.view(view) for c in s.alpha_sigma_derivatives(t))
    x0, eps = _nonzero_randn(*SHAPE, dtype=dtype), _nonzero_randn(*SHAPE, dtype=dtype)
    z = a.to(dtype) * x0 + sg.to(dtype) * eps
    kw = dict(dalpha=da, dsigma=ds, sigma_data=s.sigma_data)
    return t, a, sg, kw, x0, eps, z


def _rel_err(x, ref):
    return ((x - ref).abs().max() / ref.abs().max()).item()


@pytest.mark.parametrize("pred", PREDICTIONS)
@pytest.mark.parametrize("name", list(SCHEDS))
def test_round_trip(name, pred):
    s = SCHEDS[name]
    t, a, sg, kw, x0, eps, z = _setup(s)
    out = from_x0(x0, eps, a, sg, pred, **kw)
    assert out.shape == SHAPE and out.dtype == F64
    x_hat = to_x0(out, z, a, sg, pred, **kw)
    assert x_hat.shape == SHAPE and x_hat.dtype == F64
    assert _rel_err(x_hat, x0) < 1e-10
    # per-sample too, so a large-norm sample cannot hide a bad one
    for b in range(SHAPE[0]):
        assert _rel_err(x_hat[b], x0[b]) < 1e-10, (b, t[b].item())
    # the implied noise is the one used to build z
    assert _rel_err(to_eps(x_hat, z, a, sg), eps) < 1e-10
    # (B,) coefficients are accepted and reshaped to (B, 1, 1, 1)
    flat = {k: (v.reshape(-1) if isinstance(v, torch.Tensor) else v) for k, v in kw.items()}
    torch.testing.assert_close(to_x0(out, z, a.reshape(-1), sg.reshape(-1), pred, **flat), x_hat, rtol=0, atol=0)


@pytest.mark.parametrize("name", list(SCHEDS))
def test_targets_match_method_table(name):
    """Each target against its §a.1 / §a.3 definition, and x̂ against the table's closed forms."""
    s = SCHEDS[name]
    t, a, sg, kw, x0, eps, z = _setup(s)
    da, ds, sd = kw["dalpha"], kw["dsigma"], kw["sigma_data"]
    tc = lambda x, y: torch.testing.assert_close(x, y, rtol=1e-12, atol=1e-12)  # noqa: E731
    tc(from_x0(x0, eps, a, sg, "x0"), x0)
    tc(from_x0(x0, eps, a, sg, "eps"), eps)
    tc(from_x0(x0, eps, a, sg, "v"), a * eps - sg * x0)
    tc(from_x0(x0, eps, a, sg, "flow", dalpha=da, dsigma=ds), da * x0 + ds * eps)
    tc(from_x0(x0, eps, a, sg, "score", **kw) * sg ** 2, a * x0 - z)
    # EDM target: F = (x0 - c_skip z_ve) / c_out
    _, c_skip, c_out, _ = edm_preconditioning(a, sg, sd)
    tc(from_x0(x0, eps, a, sg, "edm", sigma_data=sd) * c_out, x0 - c_skip * z / a)

    out = torch.randn(SHAPE, dtype=F64)
    tc(to_x0(out, z, a, sg, "eps"), (z - sg * out) / a)
    tc(to_x0(out, z, a, sg, "score"), (z + sg ** 2 * out) / a)
    tc(to_eps(out, z, a, sg), (z - a * out) / sg)
    if s.kind == "vp":  # table row, alpha^2 + sigma^2 = 1
        tc(to_x0(out, z, a, sg, "v"), a * z - sg * out)
    if isinstance(s, RectifiedFlow):  # u = eps - x, x̂ = z - t û, epŝ = z + (1 - t) û
        tv = t.view(-1, 1, 1, 1)
        tc(from_x0(x0, eps, a, sg, "flow", **kw), eps - x0)
        tc(to_x0(out, z, a, sg, "flow", **kw), z - tv * out)
        # to_eps divides by sigma = t_min = 1e-4 at the first sample: error ~ (alpha/sigma) * 1e-16
        torch.testing.assert_close(to_eps(to_x0(out, z, a, sg, "flow", **kw), z, a, sg), z + (1 - tv) * out,
                                   rtol=1e-10, atol=1e-10)


def test_edm_preconditioning_formulas():
    sd = 0.5
    sig = torch.tensor([0.002, 0.1, 0.5, 3.0, 80.0], dtype=F64)
    one = torch.ones_like(sig)
    c_in, c_skip, c_out, c_noise = edm_preconditioning(one, sig, sd)
    # method.md §a.3 (alpha = 1)
    torch.testing.assert_close(c_in, 1 / torch.sqrt(sig ** 2 + sd ** 2), rtol=1e-14, atol=0)
    torch.testing.assert_close(c_skip, sd ** 2 / (sig ** 2 + sd ** 2), rtol=1e-14, atol=0)
    torch.testing.assert_close(c_out, sig * sd / torch.sqrt(sig ** 2 + sd ** 2), rtol=1e-14, atol=0)
    torch.testing.assert_close(c_noise, torch.log(sig) / 4, rtol=1e-14, atol=0)
    # loss weight lambda(sigma) = c_out^{-2}
    torch.testing.assert_close(c_out ** -2, (sig ** 2 + sd ** 2) / (sig * sd) ** 2, rtol=1e-12, atol=0)
    # VP inputs are converted to VE coordinates: s = sigma/alpha, c_in applies to z/alpha
    s = VPCosine()
    a, sg = s.alpha_sigma(torch.tensor([0.1, 0.5, 0.9], dtype=F64))
    got = edm_preconditioning(a, sg, 1.0)
    ref = edm_preconditioning(torch.ones_like(a), sg / a, 1.0)
    for g, r in zip(got, ref):
        torch.testing.assert_close(g, r, rtol=1e-14, atol=0)
    # GenCast, sigma_d = 1 (§a.3)
    c_in, c_skip, c_out, _ = edm_preconditioning(1.0, 2.0, 1.0)
    assert c_in.item() == pytest.approx(5 ** -0.5) and c_skip.item() == pytest.approx(0.2)
    assert c_out.item() == pytest.approx(2 * 5 ** -0.5)


def test_edm_to_x0_is_denoiser_formula():
    """x0 = c_skip z_ve + c_out F with F evaluated at c_in z_ve (method.md §a.3), for a toy F."""
    s = EDM()
    t = torch.rand(SHAPE[0], dtype=F64)
    a, sg = (c.view(-1, 1, 1, 1) for c in s.alpha_sigma(t))
    z = _nonzero_randn(*SHAPE)
    c_in, c_skip, c_out, c_noise = edm_preconditioning(a, sg, s.sigma_data)
    F = torch.tanh(c_in * z / a) * (1 + c_noise)
    torch.testing.assert_close(to_x0(F, z, a, sg, "edm", sigma_data=s.sigma_data), c_skip * z + c_out * F,
                               rtol=1e-14, atol=1e-14)


def test_x0_coefficients_consistent():
    s = VPLinear()
    t = torch.rand(SHAPE[0], dtype=F64)
    a, sg = (c.view(-1, 1, 1, 1) for c in s.alpha_sigma(t))
    da, ds = (c.view(-1, 1, 1, 1) for c in s.alpha_sigma_derivatives(t))
    z, out = _nonzero_randn(*SHAPE), _nonzero_randn(*SHAPE)
    for pred in PREDICTIONS:
        ca, cb = x0_coefficients(a, sg, pred, dalpha=da, dsigma=ds, sigma_data=0.5)
        assert ca.dtype == F64 and ca.shape == (SHAPE[0], 1, 1, 1)
        torch.testing.assert_close(ca * z + cb * out,
                                   to_x0(out, z, a, sg, pred, dalpha=da, dsigma=ds, sigma_data=0.5),
                                   rtol=1e-14, atol=1e-14)


def test_float32_data_with_float64_coefficients():
    """Coefficients in float64, element-wise work and result in the data dtype (Project defaults: Precision)."""
    s = VPCosine()
    t, a, sg, kw, x0, eps, z = _setup(s, dtype=torch.float32)
    for pred in PREDICTIONS:
        out = from_x0(x0, eps, a, sg, pred, **kw)
        assert out.dtype == torch.float32
        x_hat = to_x0(out, z, a, sg, pred, **kw)
        assert x_hat.dtype == torch.float32
        ref = to_x0(out.double(), z.double(), a, sg, pred, **kw)
        # x̂ = ca z + cb out: float32 rounding of the two products and their sum, a few ulps of each term
        # (near alpha -> 0 the eps/score conversions amplify by sigma/alpha, which no dtype can avoid)
        ca, cb = x0_coefficients(a, sg, pred, **kw)
        bound = 4 * torch.finfo(torch.float32).eps * (ca.abs() * z.double().abs() + cb.abs() * out.double().abs())
        assert ((x_hat.double() - ref).abs() <= bound + 1e-30).all(), pred
    assert to_eps(x0, z, a, sg).dtype == torch.float32
    # bf16 data: computed in fp32, returned in bf16
    xb = to_x0(eps.bfloat16(), z.bfloat16(), a, sg, "eps")
    assert xb.dtype == torch.bfloat16


def test_gradients_flow():
    s = VPCosine()
    t, a, sg, kw, x0, eps, z = _setup(s)
    kw = {k: (v[:2] if isinstance(v, torch.Tensor) else v) for k, v in kw.items()}
    for pred in PREDICTIONS:
        out = torch.randn(2, 1, 2, 3, dtype=F64, requires_grad=True)
        zz = z[:2, :1, :2, :3].clone().requires_grad_(True)
        assert torch.autograd.gradcheck(lambda o, q: to_x0(o, q, a[:2], sg[:2], pred, **kw), (out, zz))
        assert torch.autograd.gradcheck(lambda o, q: from_x0(o, q, a[:2], sg[:2], pred, **kw), (out, zz))


def test_check_prediction_and_errors():
    for p in PREDICTIONS:
        assert check_prediction(p) == p
    assert check_prediction("epsilon") == "eps"
    assert check_prediction("v_prediction") == "v"
    assert check_prediction("sample") == "x0"
    with pytest.raises(ValueError) as e:
        check_prediction("velocity")
    for p in PREDICTIONS:
        assert repr(p)[1:-1] in str(e.value)
    z = torch.randn(2, 3)
    one = torch.ones(2, 1)
    with pytest.raises(ValueError, match="x_start"):
        to_x0(z, z, one, one, "x_start")
    with pytest.raises(ValueError, match="x_start"):
        from_x0(z, z, one, one, "x_start")
    with pytest.raises(ValueError, match="dalpha and dsigma"):
        to_x0(z, z, one, one, "flow")
    with pytest.raises(ValueError, match="dsigma"):
        from_x0(z, z, one, one, "flow", dalpha=one)
    with pytest.raises(ValueError, match="sigma_data"):
        to_x0(z, z, one, one, "edm")
    with pytest.raises(ValueError, match="sigma_data"):
        from_x0(z, z, one, one, "edm")
    with pytest.raises(ValueError, match="sigma_data"):
        x0_coefficients(one, one, "edm")


def test_python_float_coefficients():
    z, out = _nonzero_randn(3, 5, 7), _nonzero_randn(3, 5, 7)
    a, s = math.cos(0.3), math.sin(0.3)
    torch.testing.assert_close(to_x0(out, z, a, s, "v"), a * z - s * out, rtol=1e-14, atol=1e-14)
