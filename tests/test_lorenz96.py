"""Lorenz-96 simulator: invariants of the equations and the integrator's order."""
import pytest
import torch

from rmmd_core.tasks.lorenz96 import Lorenz96


def test_advection_conserves_energy():
    """The quadratic terms conserve 0.5 sum X^2 (one scale) exactly: with F = 0 only -X damps it."""
    m = Lorenz96(K=40, F=0.0)
    x = torch.randn(5, 40, dtype=torch.float64)
    adv = m.tendency(x) + x  # remove the linear damping
    torch.testing.assert_close((x * adv).sum(1), torch.zeros(5, dtype=torch.float64), atol=1e-12, rtol=0)


def test_two_scale_coupling_conserves_energy():
    """In the two-scale model the coupling terms exchange energy between X and Y without creating any."""
    m = Lorenz96(K=8, J=4, F=0.0, c=10.0, b=10.0, h=1.0)
    s = torch.randn(3, m.state_dim, dtype=torch.float64)
    d = m.tendency(s)
    X, Y = s[:, :8], s[:, 8:]
    # add back the linear damping terms (-X, -c Y) so only advection + coupling remain
    d[:, :8] += X
    d[:, 8:] += m.c * Y
    # both coupling terms carry h c / b, so they move energy 0.5 sum X^2 + 0.5 sum Y^2 between the
    # scales; the fast advection -c b Y_{j+1}(Y_{j+2} - Y_{j-1}) conserves 0.5 sum Y^2 by a cyclic shift
    e_rate = (X * d[:, :8]).sum(1) + (Y * d[:, 8:]).sum(1)
    torch.testing.assert_close(e_rate, torch.zeros(3, dtype=torch.float64), atol=1e-10, rtol=0)


def test_rk4_is_fourth_order():
    m = Lorenz96(K=12)
    x0 = m.initial_state(2, torch.Generator().manual_seed(0)) + torch.randn(2, 12, dtype=torch.float64)
    ref = m.rk4(x0, 0.0005, 400)
    err = [float((m.rk4(x0, dt, round(0.2 / dt)) - ref).abs().max()) for dt in (0.02, 0.01)]
    assert 12 < err[0] / err[1] < 20  # halving dt divides the error by ~2^4


def test_climate_statistics_of_standard_setting():
    """K = 40, F = 8: the attractor's mean is about 2.3 and its standard deviation about 3.6."""
    m = Lorenz96()
    traj = m.trajectories(8, 400, generator=torch.Generator().manual_seed(1))
    assert traj.shape == (8, 400, 40)
    assert 2.0 < float(traj.mean()) < 2.7 and 3.3 < float(traj.std()) < 3.9


def test_bad_parameters():
    with pytest.raises(ValueError, match="K must be"):
        Lorenz96(K=3)
    with pytest.raises(ValueError, match="J must be"):
        Lorenz96(J=2)
    with pytest.raises(ValueError, match="multiple of dt"):
        Lorenz96().trajectories(1, 2, interval=0.015)


# ------------------------------------------------------------------ stochastic (AR(1) red-noise) forcing
def test_ar1_forcing_keeps_its_stationary_law():
    """Exact OU update: from N(0, s^2) it stays N(0, s^2) and the lag-dt correlation is exp(-dt/tau)."""
    m = Lorenz96(K=8, noise_std=1.7, noise_tau=0.5)
    g = torch.Generator().manual_seed(3)
    n = 40_000
    e0 = 1.7 * torch.randn(n, 8, generator=g, dtype=torch.float64)
    e1 = m.ar1_step(e0, 0.2, g)
    phi = torch.exp(torch.tensor(-0.2 / 0.5)).item()
    corr = float((e0 * e1).mean() / (e0.std() * e1.std()))
    # 320k pairs: the standard errors of std and corr are ~0.002; bounds are ~5 of them
    assert abs(float(e1.std()) - 1.7) < 0.015
    assert abs(corr - phi) < 0.01


def test_constant_forcing_equals_a_shifted_F():
    """Within an RK4 step e is held fixed, so a uniform e = c is exactly the deterministic model with F + c."""
    m = Lorenz96(K=12, F=8.0, noise_std=1.0)
    x = torch.randn(4, 12, dtype=torch.float64) * 3
    e = torch.full((4, 12), 0.7, dtype=torch.float64)
    state, _ = m.rk4(x, 0.01, 1, forcing=e, generator=torch.Generator().manual_seed(0))
    torch.testing.assert_close(state, Lorenz96(K=12, F=8.7).rk4(x, 0.01, 1), rtol=0, atol=1e-13)


def test_stochastic_model_gives_a_nondegenerate_next_state():
    """Same start, different noise: the next state (0.2 time units later) is a distribution; same seed: same path."""
    m = Lorenz96(noise_std=4.0, noise_tau=0.5)
    g = torch.Generator().manual_seed(0)
    s, e = m.rk4(m.initial_state(4, g), 0.01, 500, generator=g)
    runs = [m.rk4(s, 0.01, 20, forcing=e, generator=torch.Generator().manual_seed(k))[0] for k in (1, 2, 1)]
    torch.testing.assert_close(runs[0], runs[2], rtol=0, atol=0)
    spread = float((runs[0] - runs[1]).abs().mean())
    assert 0.05 < spread < 3.0
    # trajectories carry the hidden forcing: consecutive states differ from the deterministic flow
    traj = m.trajectories(2, 3, interval=0.2, generator=torch.Generator().manual_seed(1))
    det = Lorenz96().rk4(traj[:, 0], 0.01, 20)
    assert float((traj[:, 1] - det).abs().mean()) > 0.05


def test_deterministic_model_unchanged_by_the_noise_fields():
    a = Lorenz96().trajectories(2, 5, generator=torch.Generator().manual_seed(2))
    b = Lorenz96(noise_std=0.0, noise_tau=3.0).trajectories(2, 5, generator=torch.Generator().manual_seed(2))
    torch.testing.assert_close(a, b, rtol=0, atol=0)


def test_bad_stochastic_parameters():
    with pytest.raises(ValueError, match="noise_std must be >= 0"):
        Lorenz96(noise_std=-1.0)
    with pytest.raises(ValueError, match="noise_tau must be > 0"):
        Lorenz96(noise_std=1.0, noise_tau=0.0)
    with pytest.raises(ValueError, match="forcing must have shape"):
        Lorenz96(K=8, noise_std=1.0).rk4(torch.zeros(2, 8, dtype=torch.float64), 0.01, 1, forcing=torch.zeros(2, 7))
    with pytest.raises(ValueError, match="only for the stochastic model"):
        Lorenz96(K=8).rk4(torch.zeros(2, 8, dtype=torch.float64), 0.01, 1, forcing=torch.zeros(2, 8))
