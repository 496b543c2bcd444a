"""Modes of one iteration: network calls (counted by hooks), one differentiable call, variants, EMA."""
import copy

import pytest
import torch

from rmmd_core import RMMD, Denoiser, RMMDConfig, losses, step
from rmmd_core.toy import MLPNet


def make_engine(**cfg):
    torch.manual_seed(0)
    teacher = Denoiser(MLPNet(2, hidden=16, depth=2), "vp_cosine", prediction="x0")
    return RMMD(teacher, config=RMMDConfig(**cfg), sample_shape=(2,), seed=0)


def hook_counts(eng):
    """Per network: [calls, calls with grad enabled], counted by forward hooks on the raw modules."""
    counts = {}
    nets = {"student": eng.student, "teacher": eng.teacher, "aux": eng.auxiliary, "anchor": eng.anchor,
            "frozen_aux": eng.frozen_aux}
    for name, den in nets.items():
        if den is None:
            continue
        counts[name] = [0, 0]

        def hook(mod, args, out, n=name):
            counts[n][0] += 1
            counts[n][1] += int(torch.is_grad_enabled())
        den.net.register_forward_hook(hook)
    return counts


@pytest.mark.parametrize("K", [1, 4, 8])
def test_one_differentiable_student_call_whatever_k(K):
    eng = make_engine(num_steps=K)
    counts = hook_counts(eng)
    m = step(eng, batch_size=6)  # continuous on-policy: K rollout calls + 1 differentiable call
    assert counts["student"] == [K + 1, 1]
    assert counts["teacher"] == [1, 0] and counts["aux"] == [1, 1]
    assert m["calls_student"] == K + 1 and m["nfe"] == K + 3


def test_call_counts_per_mode():
    eng = make_engine(num_steps=4)
    counts = hook_counts(eng)
    step(eng, data=torch.randn(5, 2))  # off-policy phase 1: no rollout
    assert counts == {"student": [1, 1], "teacher": [1, 0], "aux": [1, 1]}

    eng = make_engine(num_steps=4)
    eng.start_phase2(reward=lambda x, c: -x.pow(2).sum(1), reward_weight=0.1, reference="frozen_aux")
    counts = hook_counts(eng)
    m = step(eng, batch_size=5)
    # the frozen phase-1 auxiliary replaces the teacher call; the anchor adds one no-grad call
    assert counts == {"student": [5, 1], "teacher": [0, 0], "aux": [1, 1], "anchor": [1, 0], "frozen_aux": [1, 0]}
    assert m["calls_teacher"] == 0 and m["phase"] == "rmmd"


def test_discrete_variant_trains_at_grid_times():
    eng = make_engine(num_steps=4, variant="discrete")
    counts = hook_counts(eng)
    seen_t = set()
    for _ in range(12):
        before = counts["student"][0]
        m = step(eng, batch_size=3)
        t = round(m["t_mean"], 6)
        seen_t.add(t)
        rollout_calls = counts["student"][0] - before - 1
        assert t == pytest.approx(1 - rollout_calls / 4), "stopped after i calls means t = t_{K-i}"
        assert m["s_mean"] < m["t_mean"] and m["state_source"] == "discrete"
    assert seen_t <= {1.0, 0.75, 0.5, 0.25} and len(seen_t) >= 3


def test_student_update_ratio_and_ema():
    eng = make_engine(num_steps=2, student_update_every=3, ema_decay=0.5)
    with torch.no_grad():  # at init student = aux = teacher and the MM cotangent is exactly zero
        for p in eng.auxiliary.parameters():
            p.add_(0.1 * torch.randn_like(p))
    counts = hook_counts(eng)
    updates = []
    for _ in range(6):
        s0 = [p.detach().clone() for p in eng.student.parameters()]
        e0 = [p.detach().clone() for p in eng.ema.parameters()]
        m = step(eng, batch_size=4)
        moved = any(not torch.equal(a, b) for a, b in zip(s0, eng.student.parameters()))
        updates.append(moved)
        assert m["student_update"] == float(moved)
        if moved:  # EMA: p_ema <- 0.5 p_ema + 0.5 p
            for e_old, e_new, p in zip(e0, eng.ema.parameters(), eng.student.parameters()):
                torch.testing.assert_close(e_new, 0.5 * e_old + 0.5 * p.detach())
    assert updates == [True, False, False, True, False, False]
    # iterations without a student update make no differentiable student call
    assert counts["student"][1] == 2


def test_losses_api_matches_step():
    """losses() + a manual backward/optimiser step gives the same weights as step()."""
    a, b = make_engine(num_steps=3, grad_clip=None), make_engine(num_steps=3, grad_clip=None)
    b.student.load_state_dict(a.student.state_dict())
    b.auxiliary.load_state_dict(a.auxiliary.state_dict())
    b.ema.load_state_dict(a.ema.state_dict())
    step(a, batch_size=8)
    out = losses(b, batch_size=8)
    b.student_optimizer.zero_grad()
    b.aux_optimizer.zero_grad()
    (out.student_loss + out.aux_loss).backward()
    b.student_optimizer.step()
    b.aux_optimizer.step()
    b.update_ema()
    for pa, pb in zip(a.student.parameters(), b.student.parameters()):
        torch.testing.assert_close(pa, pb, rtol=0, atol=0)
    for pa, pb in zip(a.auxiliary.parameters(), b.auxiliary.parameters()):
        torch.testing.assert_close(pa, pb, rtol=0, atol=0)
    for pa, pb in zip(a.ema.parameters(), b.ema.parameters()):
        torch.testing.assert_close(pa, pb, rtol=0, atol=0)


def test_multi_sample_reward_gets_members_per_conditioning():
    seen = {}

    def spread_reward(x, cond):  # (M, B, D) -> (B,): rewards ensemble spread
        seen["shape"] = tuple(x.shape)
        seen["cond"] = cond
        return (x[0] - x[1]).abs().mean(-1)

    spread_reward.multi_sample = True
    eng = make_engine(num_steps=2, num_samples=2)
    eng.start_phase2(reward=spread_reward, reward_weight=0.2)
    m = step(eng, batch_size=3)
    assert seen["shape"] == (2, 3, 2) and m["cot_norm_reward"] > 0 and m["calls_student"] == 3


def test_start_phase2_freezes_copies():
    eng = make_engine(num_steps=2)
    step(eng, batch_size=4)
    eng.start_phase2(reward=lambda x, c: x[:, 0], reward_weight=0.3)
    assert eng.phase == "rmmd" and eng.config.reward_weight == 0.3 and eng.config.lambda_reg == 0.15
    assert all(not p.requires_grad for p in eng.anchor.parameters())
    assert eng.anchor.net is not eng.student.net
    snapshot = copy.deepcopy(eng.anchor.state_dict())
    step(eng, batch_size=4)  # training the student must not move the frozen anchor
    for k, v in eng.anchor.state_dict().items():
        assert torch.equal(v, snapshot[k])
