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
