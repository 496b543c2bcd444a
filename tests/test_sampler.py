"""Posterior / DDIM(eta) step statistics, time grids and K-step sampling (method.md §a.4, §b.2)."""
import math

import pytest
import torch

from rmmd_core import Denoiser, sample, time_grid
from rmmd_core.sampler import posterior_coefficients, posterior_step
from rmmd_core.schedules import EDM, RectifiedFlow, VPCosine, VPLinear

SCHEDULES = [VPCosine(), VPLinear(), EDM(), RectifiedFlow()]


def q_posterior(schedule, t, s):
    """Closed-form mean coefficients and variance of q(z_s | z_t, x) (method.md §a.4), float64."""
    a_t, s_t = schedule.alpha_sigma(torch.tensor(t, dtype=torch.float64))
    a_s, s_s = schedule.alpha_sigma(torch.tensor(s, dtype=torch.float64))
    a_ts = a_t / a_s
    var_ts = s_t ** 2 - a_ts ** 2 * s_s ** 2
    return a_ts * s_s ** 2 / s_t ** 2, a_s * var_ts / s_t ** 2, var_ts * s_s ** 2 / s_t ** 2


@pytest.mark.parametrize("schedule", SCHEDULES, ids=lambda s: s.name)
@pytest.mark.parametrize("t,s", [(0.9, 0.6), (0.5, 0.45), (0.3, 0.05)])
def test_eta1_matches_true_posterior_moments(schedule, t, s):
    n = 200_000
    g = torch.Generator().manual_seed(1)
    z_t = torch.randn(1, n, generator=g, dtype=torch.float64) * 1.3 + 0.2
    x = torch.randn(1, n, generator=g, dtype=torch.float64)
    cz, cx, var = q_posterior(schedule, t, s)
    mean = cz * z_t + cx * x
    # many independent draws of the same (z_t, x): repeat the pair and compare residual moments
    z_s = posterior_step(schedule, z_t, x, torch.tensor([t]), torch.tensor([s]), 1.0, g)
    resid = (z_s - mean).flatten()
    sd = math.sqrt(float(var))
    # mean of n iid N(0, var): |mean| < 5 sd / sqrt(n); variance: relative error < 5 sqrt(2/n)
    assert abs(float(resid.mean())) < 5 * sd / math.sqrt(n)
    assert abs(float(resid.var()) / float(var) - 1) < 5 * math.sqrt(2 / n)


@pytest.mark.parametrize("schedule", SCHEDULES, ids=lambda s: s.name)
def test_eta0_is_deterministic_ddim(schedule):
    g = torch.Generator().manual_seed(2)
    B = 5
    z_t = torch.randn(B, 3, 7, generator=g, dtype=torch.float64)
    x = torch.randn(B, 3, 7, generator=g, dtype=torch.float64)
    t = torch.rand(B, generator=g, dtype=torch.float64) * 0.8 + 0.15
    s = t * torch.rand(B, generator=g, dtype=torch.float64)
    z_s = posterior_step(schedule, z_t, x, t, s, 0.0, g)
    a_t, s_t = schedule.alpha_sigma(t)
    a_s, s_s = schedule.alpha_sigma(s)
    v = (B, 1, 1)
    eps_hat = (z_t - a_t.view(v) * x) / s_t.view(v)
    expected = a_s.view(v) * x + s_s.view(v) * eps_hat
    torch.testing.assert_close(z_s, expected, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("eta", [0.0, 0.3, 0.5, 1.0])
def test_ddim_eta_noise_scale(eta):
    sch = VPCosine()
    t, s = torch.tensor([0.7], dtype=torch.float64), torch.tensor([0.4], dtype=torch.float64)
    A, C, gamma = posterior_coefficients(sch, t, s, eta)
    _, _, var = q_posterior(sch, 0.7, 0.4)
    assert float(gamma) == pytest.approx(eta * math.sqrt(float(var)), rel=1e-12)
    # the marginal stays right for any eta: A^2 sigma_t^2 + gamma^2 = sigma_s^2 and A alpha_t + C = alpha_s
    a_t, s_t = sch.alpha_sigma(t)
    a_s, s_s = sch.alpha_sigma(s)
    assert float(A ** 2 * s_t ** 2 + gamma ** 2) == pytest.approx(float(s_s ** 2), rel=1e-12)
    assert float(A * a_t + C) == pytest.approx(float(a_s), rel=1e-12)


def test_step_to_zero_returns_x_hat_and_close_times_are_stable():
    sch = VPCosine()
    A, C, gamma = posterior_coefficients(sch, torch.tensor([0.5, 0.3]), torch.tensor([0.0, 0.3 - 1e-9]), 1.0)
    assert (float(A[0]), float(C[0]), float(gamma[0])) == (0.0, 1.0, 0.0)
    # s -> t: identity step without cancellation blow-up
    assert float(A[1]) == pytest.approx(1.0, abs=1e-6) and abs(float(C[1])) < 1e-6 and float(gamma[1]) < 1e-3


def test_posterior_coefficients_reject_bad_input():
    with pytest.raises(ValueError, match="eta"):
        posterior_coefficients(VPCosine(), torch.tensor([0.5]), torch.tensor([0.2]), 1.5)
    with pytest.raises(ValueError, match="s <= t"):
        posterior_coefficients(VPCosine(), torch.tensor([0.2]), torch.tensor([0.5]), 1.0)


@pytest.mark.parametrize("kind", ["uniform", "karras"])
@pytest.mark.parametrize("schedule", SCHEDULES, ids=lambda s: s.name)
def test_time_grid(kind, schedule):
    g = time_grid(8, schedule, kind)
    assert g.shape == (9,) and float(g[0]) == 1.0 and float(g[-1]) == 0.0
    assert bool((g[1:] < g[:-1]).all())
    with pytest.raises(ValueError, match="num_steps"):
        time_grid(0, schedule, kind)
    with pytest.raises(ValueError, match="grid"):
        time_grid(4, schedule, "cosine")


class CountingNet(torch.nn.Module):
    def forward(self, z, t):
        return 0.5 * z


def test_sample_reports_nfe_and_calls():
    den = Denoiser(CountingNet(), "vp_cosine", prediction="x0")
    hooks = []
    den.net.register_forward_hook(lambda *a: hooks.append(1))
    out = sample(den, (6, 3), num_steps=5, generator=torch.Generator().manual_seed(0))
    assert out.x0.shape == (6, 3) and torch.isfinite(out.x0).all()
    assert out.nfe == 5 and out.calls == 5 and len(hooks) == 5


def test_sample_with_cfg_batches_cond_and_uncond_in_one_call():
    class CondNet(torch.nn.Module):
        def forward(self, z, t, y):
            return z * 0 + y.view(-1, 1).to(z.dtype)

    den = Denoiser(CondNet(), "vp_cosine", prediction="x0", cond_key="y", null_cond=lambda c: torch.zeros_like(c))
    hooks = []
    den.net.register_forward_hook(lambda *a: hooks.append(1))
    y = torch.full((4,), 2.0)
    out = sample(den, (4, 3), num_steps=3, cond=y, guidance_scale=1.5)
    # x̂ = x_c + w (x_c - x_u) = 2 + 1.5 * 2 on the last step, which sample() returns
    torch.testing.assert_close(out.x0, torch.full((4, 3), 5.0))
    assert out.calls == 3 and len(hooks) == 3 and out.nfe == 6


def test_prior_sample_is_randn_times_prior_std():
    """VP / flow priors (std 1) are the generator's randn values themselves; VE ones are scaled."""
    from rmmd_core.sampler import prior_sample
    from rmmd_core.schedules import DiscreteVP
    for sch, std in ((DiscreteVP.from_diffusers_config(), 1.0), (EDM(), 80.0)):
        z = prior_sample(sch, (5, 3, 7), generator=torch.Generator().manual_seed(4))
        ref = torch.randn(5, 3, 7, generator=torch.Generator().manual_seed(4))
        assert torch.equal(z, ref * std)
