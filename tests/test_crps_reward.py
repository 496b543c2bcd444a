"""CRPSReward and the reward_kwargs path of rmmd_core.step / losses (method.md §c.7).

* value and gradient of -fair CRPS against autograd of the O(M^2) pairwise definition;
* through the engine: the reward part of the student's gradient equals autograd of
  lam * mean_b CRPS_b(x̂0) through the student (the lam*M*D scaling of multi-sample rewards);
* the verifying target reaches the reward but never a network (networks receive cond as kwargs);
* bad input gives named errors.
"""
import pytest
import torch
from torch import nn

import rmmd_core
from rmmd_core import RMMD, Denoiser, RMMDConfig
from rmmd_core.ops.crps_reference import crps_fair_pairwise
from rmmd_core.rewards import CallableReward, CRPSReward, GrayscaleReward

D = 7  # odd per-sample size


class SpyNet(nn.Module):
    """x0-predictor ``x̂ = tanh-MLP([z, t, prev])`` that records every tensor it is given."""

    def __init__(self, dim=D, cond_dim=2 * D):
        super().__init__()
        self.body = nn.Sequential(nn.Linear(dim + 1 + cond_dim, 32), nn.Tanh(), nn.Linear(32, dim))
        self.seen = []

    def forward(self, z, t, **cond):
        self.seen.append({"z": z, "t": t, **cond})
        prev = cond["prev"]
        return z + self.body(torch.cat([z, t.to(z.dtype).view(-1, 1), prev.flatten(1)], 1))


def make_engine(lam=0.3, M=2, seed=0):
    torch.manual_seed(seed)
    teacher = Denoiser(SpyNet(), "vp_cosine", prediction="x0")
    cfg = RMMDConfig(num_steps=3, num_samples=M, reward_weight=lam, anchor_weight=0.0, ema_decay=None,
                     grad_clip=None)
    return RMMD(teacher, config=cfg, reward=CRPSReward(), sample_shape=(D,), seed=seed)


def spies(eng):
    return [eng.teacher.net, eng.student.net, eng.auxiliary.net]


@pytest.mark.parametrize("M", [2, 5])
def test_value_and_grad_match_autograd_of_pairwise(M):
    B = 3
    ens = torch.randn(M, B, 5, 3, dtype=torch.float64)
    y = torch.randn(B, 5, 3, dtype=torch.float64)
    w = torch.rand(5, 1, dtype=torch.float64) + 0.1
    r, g = CRPSReward(weights=w).value_and_grad(ens, target=y)
    x = ens.clone().requires_grad_(True)
    ref = -crps_fair_pairwise(x, y, w)
    (g_ref,) = torch.autograd.grad(ref.sum(), x)
    torch.testing.assert_close(r, ref.detach())
    torch.testing.assert_close(g, g_ref)
    assert bool((r < 0).all())  # -CRPS of an ensemble that misses the target


@pytest.mark.parametrize("data", [True, False], ids=["off_policy", "on_policy"])
def test_engine_reward_gradient_equals_autograd_of_crps(data):
    """d/dθ of the engine objective with lam minus with lam = 0 == d/dθ [lam mean_b CRPS_b(x̂0(θ))]."""
    B, M, lam = 4, 2, 0.3
    eng = make_engine(lam, M)
    prev = torch.randn(B, 2, D)
    y = torch.randn(B, D)
    x = torch.randn(B, D) if data else None
    kw = dict(data=x, cond={"prev": prev}, reward_kwargs={"target": y}, return_intermediates=True)
    out = rmmd_core.losses(eng, generator=torch.Generator().manual_seed(5), **kw)
    params = [p for p in eng.student.parameters()]
    g_lam = torch.autograd.grad(out.student_loss, params, retain_graph=True)
    x0 = out.intermediates["x0"]
    crps = crps_fair_pairwise(x0.view(M, B, D), y)
    g_ref_reward = torch.autograd.grad(lam * crps.mean(), params)

    eng.config = eng.config.replace(reward_weight=0.0)
    out0 = rmmd_core.losses(eng, generator=torch.Generator().manual_seed(5), **kw)
    torch.testing.assert_close(out0.intermediates["x0"], x0)  # same state, same student output
    g_0 = torch.autograd.grad(out0.student_loss, params)
    for a, b, c in zip(g_lam, g_0, g_ref_reward):
        torch.testing.assert_close(a - b, c, rtol=1e-4, atol=1e-6)
    assert any(float(c.abs().max()) > 1e-4 for c in g_ref_reward)  # the reward term is not trivially zero
    # the objective's value carries -lam * mean r = +lam * mean CRPS
    torch.testing.assert_close(out.student_loss.detach() - out0.student_loss.detach(),
                               (lam * crps.mean()).detach().float(), rtol=1e-4, atol=1e-6)
    torch.testing.assert_close(torch.tensor(out.metrics["reward_mean"]), -crps.mean().detach().float(),
                               rtol=1e-4, atol=1e-6)


@pytest.mark.parametrize("data", [True, False], ids=["off_policy", "on_policy"])
def test_target_never_reaches_a_network(data):
    B = 3
    eng = make_engine()
    y = torch.randn(B, D) + 100.0  # far from anything a network sees, so a value match cannot be chance
    prev = torch.randn(B, 2, D)
    for s in spies(eng):
        s.seen.clear()
    m = rmmd_core.step(eng, data=torch.randn(B, D) if data else None, cond={"prev": prev},
                       reward_kwargs={"target": y})
    assert m["reward_mean"] == m["reward_mean"] and m["cot_norm_reward"] > 0  # the reward did see it
    calls = [c for s in spies(eng) for c in s.seen]
    assert len(calls) >= 3
    for c in calls:
        assert set(c) == {"z", "t", "prev"}  # only the declared conditioning key
        for v in c.values():
            if isinstance(v, torch.Tensor) and v.dtype == y.dtype:
                assert v.untyped_storage().data_ptr() != y.untyped_storage().data_ptr()
                assert float((v - 100.0).abs().min()) > 1e-3 if v.numel() else True


def test_per_sample_reward_gets_member_tiled_kwargs():
    B, M = 3, 2
    seen = {}

    def fn(x, cond, target):
        seen["target"] = target
        return -((x - target) ** 2).mean(1)

    eng = make_engine()
    eng.reward = CallableReward(fn)
    y = torch.randn(B, D)
    rmmd_core.losses(eng, cond={"prev": torch.randn(B, 2, D)}, reward_kwargs={"target": y})
    torch.testing.assert_close(seen["target"], y.repeat(M, 1))  # member-major rows j*B + b, like cond


def test_bad_input_named_errors():
    B = 2
    eng = make_engine()
    cond = {"prev": torch.randn(B, 2, D)}
    y = torch.randn(B, D)
    with pytest.raises(TypeError, match="reward_kwargs must be a dict"):
        rmmd_core.losses(eng, cond=cond, reward_kwargs=[y])
    with pytest.raises(ValueError, match=r"reward_kwargs\['target'\] has batch 3, expected 2"):
        rmmd_core.losses(eng, cond=cond, reward_kwargs={"target": torch.randn(3, D)})
    with pytest.raises(ValueError, match="CRPSReward needs the verifying state"):
        rmmd_core.losses(eng, cond=cond)
    with pytest.raises(TypeError, match="CRPSReward does not accept reward_kwargs"):
        rmmd_core.losses(eng, cond=cond, reward_kwargs={"targte": y})
    with pytest.raises(ValueError, match="target must have shape"):
        rmmd_core.losses(eng, cond=cond, reward_kwargs={"target": torch.randn(B, D + 1)})
    eng.reward = GrayscaleReward()
    with pytest.raises(TypeError, match="GrayscaleReward does not accept reward_kwargs"):
        rmmd_core.losses(eng, cond=cond, reward_kwargs={"target": y})
    eng.reward = None
    eng.config = eng.config.replace(reward_weight=0.0)
    with pytest.raises(ValueError, match="engine has no reward"):
        rmmd_core.losses(eng, cond=cond, reward_kwargs={"target": y})
    eng1 = make_engine(M=1)
    with pytest.raises(ValueError, match="M >= 2"):
        rmmd_core.losses(eng1, cond=cond, reward_kwargs={"target": y})
    with pytest.raises(TypeError, match="weights must be a Tensor"):
        CRPSReward(weights=[1.0, 2.0])
