"""The CRPS references (method.md §c.7): sorted form vs the pairwise definition, gradients, M=2, stats."""
import math

import pytest
import torch

from rmmd_core.ops.crps_reference import (crps_fair_m2_ref, crps_fair_pairwise, crps_fair_ref,
                                           forecast_stats_ref)


@pytest.mark.parametrize("M", [2, 3, 8, 17])
@pytest.mark.parametrize("shape", [(1, 1), (3, 5), (2, 4, 7)])
def test_sorted_form_equals_pairwise(M, shape):
    g = torch.Generator().manual_seed(M)
    ens = torch.randn(M, *shape, generator=g, dtype=torch.float64)
    y = torch.randn(shape, generator=g, dtype=torch.float64)
    w = torch.rand(shape[1:], generator=g, dtype=torch.float64) + 0.1
    v, _ = crps_fair_ref(ens, y, w)
    torch.testing.assert_close(v, crps_fair_pairwise(ens, y, w), rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("M", [2, 5, 16])
def test_gradient_matches_autograd_of_pairwise(M):
    g = torch.Generator().manual_seed(0)
    ens = torch.randn(M, 3, 11, generator=g, dtype=torch.float64)  # continuous values: no ties a.s.
    y = torch.randn(3, 11, generator=g, dtype=torch.float64)
    w = torch.rand(11, generator=g, dtype=torch.float64)
    _, grad = crps_fair_ref(ens, y, w)
    e = ens.clone().requires_grad_(True)
    (ga,) = torch.autograd.grad(crps_fair_pairwise(e, y, w).sum(), e)
    torch.testing.assert_close(grad, ga, rtol=1e-12, atol=1e-12)


def test_m2_closed_form_and_non_contiguous():
    g = torch.Generator().manual_seed(1)
    ens = torch.randn(5, 2, 7, generator=g).permute(1, 0, 2)  # (2, 5, 7), non-contiguous
    y = torch.randn(5, 7, generator=g)
    v2, g2 = crps_fair_m2_ref(ens, y)
    v, gr = crps_fair_ref(ens, y)
    torch.testing.assert_close(v2, v)
    torch.testing.assert_close(g2, gr)


def test_perfect_and_degenerate_ensembles():
    y = torch.randn(4, 6, dtype=torch.float64)
    same = y.expand(3, 4, 6)
    assert float(crps_fair_ref(same, y)[0].abs().max()) < 1e-15  # members all equal the truth
    # a point ensemble's CRPS is its MAE; the fair spread term of identical members is zero
    off = (y + 0.5).expand(4, 4, 6)
    torch.testing.assert_close(crps_fair_ref(off, y)[0], torch.full((4,), 0.5, dtype=torch.float64))


def test_fair_crps_is_unbiased_for_the_true_distribution():
    """For y ~ N(0,1) and members ~ N(0,1), E[CRPS_fair] equals the exact CRPS of N(0,1): 1/sqrt(pi)."""
    g = torch.Generator().manual_seed(2)
    n = 100_000
    ens = torch.randn(3, n, 1, generator=g, dtype=torch.float64)
    y = torch.randn(n, 1, generator=g, dtype=torch.float64)
    v, _ = crps_fair_ref(ens, y)
    se = float(v.std()) / math.sqrt(n)
    assert abs(float(v.mean()) - 1 / math.sqrt(math.pi)) < 5 * se


def test_masking_and_bad_input():
    ens, y = torch.randn(2, 3, 4), torch.randn(3, 4)
    y_nan = y.clone()
    y_nan[0, 1] = float("nan")
    with pytest.raises(ValueError, match="NaN"):
        crps_fair_ref(ens, y_nan)
    mask = ~torch.isnan(y_nan)
    v, gr = crps_fair_ref(ens, y_nan, mask=mask)
    assert bool(torch.isfinite(v).all()) and float(gr[:, 0, 1].abs().max()) == 0.0
    with pytest.raises(ValueError, match="M >= 2"):
        crps_fair_ref(torch.randn(1, 3, 4), y)
    with pytest.raises(ValueError, match="target must have shape"):
        crps_fair_ref(ens, torch.randn(3, 5))
    with pytest.raises(ValueError, match="non-negative"):
        crps_fair_ref(ens, y, weights=-torch.ones(4))
    with pytest.raises(ValueError, match="do not broadcast"):
        crps_fair_ref(ens, y, weights=torch.ones(5))
    with pytest.raises(TypeError, match="ensemble"):
        crps_fair_ref(torch.ones(2, 3, 4, dtype=torch.long), y)


def test_forecast_stats_and_ssr():
    g = torch.Generator().manual_seed(3)
    M, B, V, P = 8, 400, 3, 50
    truth_sd = torch.tensor([1.0, 2.0, 0.5], dtype=torch.float64).view(1, V, 1)
    y = torch.randn(B, V, P, generator=g, dtype=torch.float64) * truth_sd
    ens = torch.randn(M, B, V, P, generator=g, dtype=torch.float64) * truth_sd  # calibrated: SSR ~ 1
    st = forecast_stats_ref(ens, y)
    v, _ = crps_fair_ref(ens, y)
    # the per-variable CRPS averages back to the per-forecast CRPS
    torch.testing.assert_close(st.crps.mean(), v.mean(), rtol=1e-12, atol=1e-12)
    assert bool(((st.spread_skill_ratio - 1).abs() < 0.05).all()), st.spread_skill_ratio
    under = forecast_stats_ref(0.5 * ens, y)  # under-dispersed ensemble
    assert bool((under.spread_skill_ratio < 0.6).all())
