"""Tests for rmmd_core/schedules.py against the formulas of method.md §a.2 (float64)."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from rmmd_core.schedules import (
    EDM,
    SCHEDULES,
    DiscreteVP,
    RectifiedFlow,
    Schedule,
    VPCosine,
    VPLinear,
    get_schedule,
    karras_sigmas,
)

F64 = torch.float64


def _schedules() -> dict[str, Schedule]:
    return {
        "vp_cosine": VPCosine(),
        "vp_cosine_shift": VPCosine.for_resolution(256),  # shift = 2 log(64/256) < 0
        "vp_cosine_shift_pos": VPCosine(shift=1.3, t_min=1e-3, t_max=0.995),
        "vp_linear": VPLinear(),
        "vp_linear_b0": VPLinear(beta_min=0.0, beta_max=12.0, t_min=1e-3, t_max=0.9),
        "edm": EDM(),
        "edm_rho100": EDM(sigma_min=0.02, sigma_max=50.0, rho=100.0, sigma_data=1.0),
        "rectified_flow": RectifiedFlow(),
        "discrete_linear": DiscreteVP.from_diffusers_config(),
        "discrete_cos": DiscreteVP.from_diffusers_config(beta_schedule="squaredcos_cap_v2", num_train_timesteps=37),
    }


SCHEDS = _schedules()
IDS = list(SCHEDS)


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)


def _t_in(s: Schedule, n: int = 211) -> torch.Tensor:
    """Random t strictly inside [t_min, t_max] plus both endpoints, float64, odd length."""
    u = torch.rand(n - 2, dtype=F64)
    t = s.t_min + (s.t_max - s.t_min) * u
    return torch.cat([torch.tensor([s.t_min, s.t_max], dtype=F64), t])


# ---------------------------------------------------------------------------------------------- references
def _ref_alpha_sigma(name: str, s: Schedule, t: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """method.md §a.2 table, written independently in numpy."""
    if name.startswith("vp_cosine"):
        lam = -2 * np.log(np.tan(np.pi * t / 2)) + s.shift
        return np.sqrt(1 / (1 + np.exp(-lam))), np.sqrt(1 / (1 + np.exp(lam)))
    if name.startswith("vp_linear"):
        b0, b1 = s.beta_min, s.beta_max
        big_b = b0 * t + 0.5 * (b1 - b0) * t ** 2
        # sigma = sqrt(1 - alpha^2) = sqrt(1 - e^{-B}); expm1 keeps the reference accurate at small t
        return np.exp(-0.5 * big_b), np.sqrt(-np.expm1(-big_b))
    if name.startswith("edm"):
        a, b = s.sigma_min ** (1 / s.rho), s.sigma_max ** (1 / s.rho)
        return np.ones_like(t), (a + t * (b - a)) ** s.rho
    if name == "rectified_flow":
        return 1 - t, t
    if name.startswith("discrete"):
        lam_tab = np.log(s.alphas_cumprod.numpy() / (1 - s.alphas_cumprod.numpy()))
        u = t * (len(lam_tab) - 1)
        lam = np.interp(u, np.arange(len(lam_tab)), lam_tab)
        return np.sqrt(1 / (1 + np.exp(-lam))), np.sqrt(1 / (1 + np.exp(lam)))
    raise AssertionError(name)


@pytest.mark.parametrize("name", IDS)
def test_alpha_sigma_match_formulas(name):
    s = SCHEDS[name]
    t = _t_in(s)
    a, sg = s.alpha_sigma(t)
    ra, rs = _ref_alpha_sigma(name, s, t.numpy())
    assert a.shape == t.shape and sg.shape == t.shape and a.dtype == F64
    np.testing.assert_allclose(a.numpy(), ra, rtol=1e-12, atol=0)
    np.testing.assert_allclose(sg.numpy(), rs, rtol=1e-12, atol=0)
    lam = s.log_snr(t)
    np.testing.assert_allclose(lam.numpy(), np.log(ra ** 2 / rs ** 2), rtol=1e-10, atol=1e-10)


def test_unshifted_cosine_is_cos_sin():
    s = VPCosine()
    t = _t_in(s)
    a, sg = s.alpha_sigma(t)
    torch.testing.assert_close(a, torch.cos(math.pi * t / 2), rtol=0, atol=0)
    torch.testing.assert_close(sg, torch.sin(math.pi * t / 2), rtol=0, atol=0)


def test_shifted_cosine_shift_and_for_resolution():
    base, hi = VPCosine(), VPCosine.for_resolution(128, r_base=32)
    assert hi.shift == pytest.approx(2 * math.log(32 / 128))
    t = _t_in(base)
    torch.testing.assert_close(hi.log_snr(t) - base.log_snr(t), torch.full_like(t, hi.shift), rtol=0, atol=1e-12)
    assert VPCosine.for_resolution(64).shift == 0.0
    # higher resolution -> lower log-SNR -> t_from_log_snr of the same lambda is earlier
    assert (hi.log_snr(t) < base.log_snr(t)).all()


@pytest.mark.parametrize("name", IDS)
def test_log_snr_strictly_decreasing(name):
    s = SCHEDS[name]
    t = torch.linspace(s.t_min, s.t_max, 1001, dtype=F64)
    lam = s.log_snr(t)
    assert torch.isfinite(lam).all()
    assert (lam[1:] < lam[:-1]).all()


@pytest.mark.parametrize("name", IDS)
def test_t_from_log_snr_round_trip(name):
    s = SCHEDS[name]
    t = _t_in(s).reshape(1, 211)
    back = s.t_from_log_snr(s.log_snr(t))
    assert back.shape == t.shape
    torch.testing.assert_close(back, t, rtol=1e-12, atol=1e-12)
    # and lambda -> t -> lambda on the attainable range
    lo, hi = s.log_snr(s.t_max).item(), s.log_snr(s.t_min).item()
    lam = lo + (hi - lo) * torch.rand(3, 5, 7, dtype=F64)
    torch.testing.assert_close(s.log_snr(s.t_from_log_snr(lam)), lam, rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize("name", IDS)
def test_clamping(name):
    s = SCHEDS[name]
    t = torch.tensor([-0.5, -1e-9, 1 + 1e-9, 2.0], dtype=F64)
    tc = torch.tensor([s.t_min, s.t_min, s.t_max, s.t_max], dtype=F64)
    for f in (s.log_snr, s.sigma_ve):
        torch.testing.assert_close(f(t), f(tc), rtol=0, atol=0)
    for x, y in zip(s.alpha_sigma(t) + s.alpha_sigma_derivatives(t), s.alpha_sigma(tc) + s.alpha_sigma_derivatives(tc)):
        assert torch.isfinite(x).all()
        torch.testing.assert_close(x, y, rtol=0, atol=0)
    # inverse clamps too
    back = s.t_from_log_snr(torch.tensor([1e4, -1e4, float("inf"), -float("inf")], dtype=F64))
    torch.testing.assert_close(back, torch.tensor([s.t_min, s.t_max, s.t_min, s.t_max], dtype=F64), rtol=0, atol=1e-14)


@pytest.mark.parametrize("name", IDS)
def test_derivatives_autograd_and_finite_differences(name):
    s = SCHEDS[name]
    margin = 1e-3 * (s.t_max - s.t_min)
    t = s.t_min + margin + (s.t_max - s.t_min - 2 * margin) * torch.rand(3, 5, 7, dtype=F64)
    if isinstance(s, DiscreteVP):
        # piecewise-linear log-SNR: keep t away from the knots so the two-sided difference is one-sided
        n1 = s.num_train_timesteps - 1
        u = t * n1
        t = (u.floor() + 0.25 + 0.5 * (u - u.floor())) / n1
    da, ds = s.alpha_sigma_derivatives(t)
    assert da.shape == t.shape and ds.shape == t.shape

    tg = t.clone().requires_grad_(True)
    a, sg = s.alpha_sigma(tg)
    # EDM's alpha = 1 does not depend on t (no graph): its gradient is zero
    ga, gs = (torch.autograd.grad(x.sum(), tg, retain_graph=True)[0] if x.requires_grad else torch.zeros_like(t)
              for x in (a, sg))
    torch.testing.assert_close(da, ga, rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(ds, gs, rtol=1e-10, atol=1e-12)

    h = 1e-6 * min(1.0, s.t_max - s.t_min)
    if isinstance(s, DiscreteVP):
        h = 0.1 / (s.num_train_timesteps - 1) * 1e-3
    (ap, sp), (am, sm) = s.alpha_sigma(t + h), s.alpha_sigma(t - h)
    torch.testing.assert_close(da, (ap - am) / (2 * h), rtol=1e-6, atol=1e-7)
    torch.testing.assert_close(ds, (sp - sm) / (2 * h), rtol=1e-6, atol=1e-7)


@pytest.mark.parametrize("name", [n for n in IDS if SCHEDS[n].kind == "vp"])
def test_vp_unit_variance(name):
    s = SCHEDS[name]
    a, sg = s.alpha_sigma(_t_in(s))
    torch.testing.assert_close(a ** 2 + sg ** 2, torch.ones_like(a), rtol=0, atol=1e-14)


def test_kinds_and_names():
    kinds = {"vp_cosine": "vp", "vp_linear": "vp", "edm": "ve", "rectified_flow": "flow", "discrete_vp": "vp"}
    for name, cls in SCHEDULES.items():
        assert cls.name == name and cls.kind == kinds[name]
    assert set(SCHEDULES) == set(kinds)


def test_edm_endpoints_and_prior():
    s = EDM()
    assert s.t_min == 0.0 and s.t_max == 1.0 and s.sigma_data == 0.5 and s.prior_std == 80.0
    a, sg = s.alpha_sigma(torch.tensor([0.0, 1.0], dtype=F64))
    torch.testing.assert_close(a, torch.ones(2, dtype=F64), rtol=0, atol=0)
    torch.testing.assert_close(sg, torch.tensor([0.002, 80.0], dtype=F64), rtol=1e-14, atol=0)
    da, _ = s.alpha_sigma_derivatives(torch.rand(9, dtype=F64))
    assert (da == 0).all()
    for other in (VPCosine(), VPLinear(), RectifiedFlow(), DiscreteVP.from_diffusers_config()):
        assert other.prior_std == 1.0 and other.sigma_data == 1.0


def test_rectified_flow_table():
    s = RectifiedFlow()
    t = _t_in(s)
    torch.testing.assert_close(s.log_snr(t), 2 * torch.log((1 - t) / t), rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(s.sigma_ve(t), t / (1 - t), rtol=1e-14, atol=0)
    da, ds = s.alpha_sigma_derivatives(t)
    assert (da == -1).all() and (ds == 1).all()


@pytest.mark.parametrize("name", IDS)
def test_sigma_ve_round_trip(name):
    s = SCHEDS[name]
    t = _t_in(s)
    a, sg = s.alpha_sigma(t)
    sv = s.sigma_ve(t)
    torch.testing.assert_close(sv, sg / a, rtol=1e-12, atol=0)
    torch.testing.assert_close(s.t_from_sigma_ve(sv), t, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(s.log_snr(t), -2 * torch.log(sv), rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize("name", IDS)
def test_dtype_shape_and_python_floats(name):
    s = SCHEDS[name]
    t32 = (s.t_min + (s.t_max - s.t_min) * torch.rand(3, 5, 7)).float()
    for out in (*s.alpha_sigma(t32), s.log_snr(t32), *s.alpha_sigma_derivatives(t32), s.sigma_ve(t32),
                s.t_from_log_snr(s.log_snr(t32))):
        assert out.dtype == torch.float32 and out.shape == (3, 5, 7)
    a64, s64 = s.alpha_sigma(t32.double())
    torch.testing.assert_close(s.alpha_sigma(t32)[0], a64.float(), rtol=1e-5, atol=1e-6)
    a, sg = s.alpha_sigma(0.5)
    assert isinstance(a, torch.Tensor) and a.dtype == F64 and a.dim() == 0
    assert isinstance(s.t_from_log_snr(0.0), torch.Tensor)
    if isinstance(s, DiscreteVP):
        assert s.index(1).dtype == F64 and s.index(1).item() == s.num_train_timesteps - 1


def test_repr_shows_parameters():
    assert repr(VPLinear(beta_min=0.2, beta_max=10.0)).startswith("VPLinear(beta_min=0.2, beta_max=10.0,")
    assert "rho=7.0" in repr(EDM()) and "sigma_max=80.0" in repr(EDM())
    assert "shift=" in repr(VPCosine(shift=0.5))
    assert "num_train_timesteps=1000" in repr(DiscreteVP.from_diffusers_config())
    assert "t_min=0.0001" in repr(RectifiedFlow())


# ---------------------------------------------------------------------------------------------- DiscreteVP
@pytest.mark.parametrize("kw", [
    dict(beta_schedule="linear"),
    dict(beta_schedule="scaled_linear", beta_start=0.00085, beta_end=0.012),
    dict(beta_schedule="squaredcos_cap_v2"),
    dict(beta_schedule="linear", beta_start=3e-4, beta_end=0.03, num_train_timesteps=101),
])
def test_discrete_matches_diffusers(kw):
    diffusers = pytest.importorskip("diffusers")
    ref = diffusers.DDPMScheduler(**kw).alphas_cumprod
    s = DiscreteVP.from_diffusers_config(**kw)
    assert s.num_train_timesteps == ref.numel()
    assert torch.equal(s.alphas_cumprod, ref.double())
    # alpha^2 at integer indices reproduces the table (to float64 rounding of sigmoid(logit(.)))
    n = ref.numel()
    t = torch.arange(n, dtype=F64) / (n - 1)
    torch.testing.assert_close(s.index(t), torch.arange(n, dtype=F64), rtol=0, atol=1e-10)
    a, sg = s.alpha_sigma(t)
    torch.testing.assert_close(a ** 2, ref.double(), rtol=1e-12, atol=0)
    torch.testing.assert_close(sg ** 2, 1 - ref.double(), rtol=1e-12, atol=0)


def test_discrete_from_diffusers_full_config():
    diffusers = pytest.importorskip("diffusers")
    sch = diffusers.DDPMScheduler(beta_schedule="scaled_linear", beta_start=0.00085, beta_end=0.012,
                                  prediction_type="v_prediction", clip_sample=False)
    s = DiscreteVP.from_diffusers_config(**sch.config)
    assert torch.equal(s.alphas_cumprod, sch.alphas_cumprod.double())
    with pytest.raises(ValueError, match="rescale_betas_zero_snr"):
        DiscreteVP.from_diffusers_config(rescale_betas_zero_snr=True)
    with pytest.raises(ValueError, match="beta_schedule"):
        DiscreteVP.from_diffusers_config(beta_schedule="quadratic")


def test_discrete_from_betas_and_index():
    betas = torch.linspace(1e-4, 0.02, 50, dtype=F64)
    s = DiscreteVP.from_betas(betas)
    torch.testing.assert_close(s.alphas_cumprod, torch.cumprod(1 - betas, 0), rtol=0, atol=0)
    t = torch.rand(3, 5, 7, dtype=F64)
    torch.testing.assert_close(s.index(t), t * 49, rtol=0, atol=0)
    torch.testing.assert_close(s.t_from_index(s.index(t)), t, rtol=1e-15, atol=1e-15)
    # linear interpolation of lambda between knots
    lam = s.log_snr_table
    torch.testing.assert_close(s.log_snr(torch.tensor(10.25 / 49, dtype=F64)), 0.75 * lam[10] + 0.25 * lam[11],
                               rtol=1e-13, atol=0)


def test_discrete_validation():
    with pytest.raises(ValueError, match="alphas_cumprod.*strictly decreasing"):
        DiscreteVP([0.9, 0.5, 0.6, 0.1])
    with pytest.raises(ValueError, match="alphas_cumprod.*strictly decreasing"):
        DiscreteVP([0.9, 0.5, 0.5, 0.1])
    with pytest.raises(ValueError, match="alphas_cumprod.*open interval"):
        DiscreteVP([1.0, 0.5, 0.1])
    with pytest.raises(ValueError, match="alphas_cumprod.*open interval"):
        DiscreteVP([0.9, 0.5, 0.0])
    with pytest.raises(ValueError, match="alphas_cumprod.*1-D"):
        DiscreteVP([0.5])
    with pytest.raises(ValueError, match="betas"):
        DiscreteVP.from_betas([0.1, 1.5])


# ---------------------------------------------------------------------------------------------- karras grid
def test_karras_sigmas():
    sig = karras_sigmas(17, 0.002, 80.0)
    assert sig.shape == (17,) and sig.dtype == F64
    assert sig[0].item() == 80.0 and sig[-1].item() == 0.002
    assert (sig[1:] < sig[:-1]).all()
    # method.md §a.2 formula, and = EDM.sigma_ve on the reversed uniform t grid
    i = torch.arange(17, dtype=F64)
    a, b = 80.0 ** (1 / 7), 0.002 ** (1 / 7)
    torch.testing.assert_close(sig, (a + i / 16 * (b - a)) ** 7, rtol=1e-13, atol=0)
    torch.testing.assert_close(sig, EDM().sigma_ve(1 - i / 16), rtol=1e-13, atol=0)
    assert karras_sigmas(5, 0.1, 10.0, dtype=torch.float32).dtype == torch.float32
    torch.testing.assert_close(karras_sigmas(1, 0.1, 10.0), torch.tensor([10.0], dtype=F64))
    # large rho approaches a geometric grid (uniform in log-SNR)
    big = karras_sigmas(9, 0.02, 50.0, rho=1e6)
    torch.testing.assert_close(big, torch.logspace(math.log10(50.0), math.log10(0.02), 9, dtype=F64), rtol=1e-4,
                               atol=0)
    with pytest.raises(ValueError, match="n"):
        karras_sigmas(0, 0.1, 1.0)
    with pytest.raises(ValueError, match="sigma_max"):
        karras_sigmas(4, 1.0, 0.5)


# ---------------------------------------------------------------------------------------------- validation
@pytest.mark.parametrize("ctor, arg", [
    (lambda: VPLinear(beta_min=-0.1), "beta_min"),
    (lambda: VPLinear(beta_min=1.0, beta_max=1.0), "beta_max"),
    (lambda: VPLinear(t_min=0.0), "t_min"),
    (lambda: VPLinear(t_min=0.5, t_max=0.5), "t_min"),
    (lambda: VPLinear(t_max=1.5), "t_max"),
    (lambda: EDM(sigma_min=0.0), "sigma_min"),
    (lambda: EDM(sigma_min=-1.0), "sigma_min"),
    (lambda: EDM(sigma_min=1.0, sigma_max=1.0), "sigma_max"),
    (lambda: EDM(rho=0.0), "rho"),
    (lambda: EDM(sigma_max=float("inf")), "sigma_max"),
    (lambda: EDM(sigma_data=0.0), "sigma_data"),
    (lambda: VPCosine(t_min=0.6, t_max=0.4), "t_min"),
    (lambda: VPCosine(t_min=0.0), "t_min"),
    (lambda: VPCosine(t_max=1.0), "t_max"),
    (lambda: VPCosine(shift=float("nan")), "shift"),
    (lambda: VPCosine.for_resolution(0), "r"),
    (lambda: RectifiedFlow(t_min=0.9, t_max=0.1), "t_min"),
    (lambda: RectifiedFlow(t_max=1.0), "t_max"),
    (lambda: RectifiedFlow(sigma_data=-1.0), "sigma_data"),
])
def test_bad_constructor_args(ctor, arg):
    with pytest.raises(ValueError, match=rf"\b{arg}\b"):
        ctor()


def test_get_schedule():
    assert isinstance(get_schedule("vp_cosine"), VPCosine)
    assert isinstance(get_schedule("VP-Linear", beta_max=10.0), VPLinear)
    assert get_schedule("edm", sigma_max=100.0).sigma_max == 100.0
    assert isinstance(get_schedule("rectified_flow"), RectifiedFlow)
    s = EDM()
    assert get_schedule(s) is s
    with pytest.raises(ValueError, match="extra arguments"):
        get_schedule(s, rho=3.0)
    d = get_schedule("discrete_vp", beta_schedule="squaredcos_cap_v2", num_train_timesteps=20)
    assert isinstance(d, DiscreteVP) and d.num_train_timesteps == 20
    assert get_schedule("discrete_vp", alphas_cumprod=[0.9, 0.5, 0.1]).num_train_timesteps == 3
    assert get_schedule("discrete_vp", betas=[0.1, 0.2, 0.3]).num_train_timesteps == 3
    with pytest.raises(ValueError) as e:
        get_schedule("karras")
    for name in ("vp_cosine", "vp_linear", "edm", "rectified_flow", "discrete_vp"):
        assert name in str(e.value)
    with pytest.raises(ValueError, match="vp_cosine"):
        get_schedule(3)


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_discrete_vp_interpolation_is_the_explicit_formula(dtype):
    """DiscreteVP's cached table differences give exactly ``lambda_i + w (lambda_{i+1} - lambda_i)`` (the same
    subtraction per sample), at random times, the table's knots and both ends; derivatives likewise."""
    sch = DiscreteVP.from_diffusers_config(num_train_timesteps=1000)
    g = torch.Generator().manual_seed(3)
    t = torch.cat([torch.rand(997, generator=g, dtype=torch.float64), torch.arange(0, 1000, 37) / 999.0,
                   torch.tensor([0.0, 1.0, -0.5, 1.5])]).to(dtype)
    u = t.clamp(0, 1) * 999
    i = u.floor().clamp(0, 998)
    tab = sch.log_snr_table.to(dtype)
    l0, l1, w = tab[i.long()], tab[i.long() + 1], u - i
    assert torch.equal(sch.log_snr(t), l0 + w * (l1 - l0))
    lam = l0 + w * (l1 - l0)
    a, s = torch.sqrt(torch.sigmoid(lam)), torch.sqrt(torch.sigmoid(-lam))
    da, ds = sch.alpha_sigma_derivatives(t)
    dlam = (l1 - l0) * 999
    assert torch.equal(da, 0.5 * a * torch.sigmoid(-lam) * dlam)
    assert torch.equal(ds, -0.5 * torch.sigmoid(lam) * s * dlam)
