"""Baselines (rmmd_core.baselines): each runs on a tiny model, raises a toy reward, and back-propagates
through the number of student calls its definition says (counted with hooks on the network)."""
import pytest
import torch

from rmmd_core import RMMD, Denoiser, RMMDConfig, sample
from rmmd_core.baselines import DIpp, DRaFT, HyperNoise, BaselineConfig, mm_then_draft, reward_value
from rmmd_core.rewards import GrayscaleReward
from rmmd_core.toy import GaussianMixture, MLPNet, analytic_teacher


def reward_right(x, cond=None):
    return x[:, 0]


def _student(seed=0):
    torch.manual_seed(seed)
    return Denoiser(MLPNet(2, hidden=32, depth=2), "vp_cosine", prediction="x0")


def _eval_reward(den, k, n=512, seed=123):
    return float(sample(den, (n, 2), num_steps=k, generator=torch.Generator().manual_seed(seed)).x0[:, 0].mean())


class GradCallCounter:
    """Counts network calls whose output the backward pass actually reaches (a tensor hook fires)."""

    def __init__(self, module):
        self.calls, self.reached = 0, 0
        self.handle = module.register_forward_hook(self._hook)

    def _hook(self, mod, inp, out):
        self.calls += 1
        if out.requires_grad:
            out.register_hook(self._grad)

    def _grad(self, g):
        self.reached += 1

    def remove(self):
        self.handle.remove()


@pytest.mark.parametrize("grad_steps", [1, 2, 4])
def test_draft_k_differentiates_exactly_k_calls(grad_steps):
    st = _student()
    run = DRaFT(st, reward_right, BaselineConfig(num_steps=4, ema_decay=None), grad_steps=grad_steps,
                sample_shape=(2,))
    cnt = GradCallCounter(st.net)
    loss, m = run.losses(16)
    loss.backward()
    cnt.remove()
    assert cnt.calls == 4  # the anchor is a frozen copy: its calls are not on this network
    assert cnt.reached == grad_steps and m["grad_calls"] == grad_steps
    assert all(p.grad is None for p in run.anchor.parameters())


def test_draft_lv_differentiates_n_one_step_calls():
    st = _student()
    run = DRaFT(st, reward_right, BaselineConfig(num_steps=4, ema_decay=None), grad_steps=1, lv_samples=2,
                sample_shape=(2,))
    cnt = GradCallCounter(st.net)
    loss, m = run.losses(16)
    loss.backward()
    cnt.remove()
    assert cnt.reached == 2 and m["grad_calls"] == 2 and run.name == "DRaFT-LV(n=2)"


@pytest.mark.parametrize("grad_steps,lv", [(1, 0), (2, 0), (1, 2)])
def test_draft_raises_the_reward(grad_steps, lv):
    st = _student()
    before = _eval_reward(st, 4)
    run = DRaFT(st, reward_right, BaselineConfig(num_steps=4, lr=1e-2, anchor_weight=0.0, ema_decay=None),
                grad_steps=grad_steps, lv_samples=lv, sample_shape=(2,))
    for _ in range(25):
        m = run.step(64)
    assert m["skipped"] == 0.0
    assert _eval_reward(run.model, 4) > before + 0.5


def test_draft_anchor_pulls_back_to_the_start():
    """With a huge anchor weight and no reward, DRaFT's update keeps the outputs at the start model's."""
    st = _student()
    run = DRaFT(st, reward_right, BaselineConfig(num_steps=2, lr=1e-2, reward_weight=0.0, anchor_weight=1.0,
                                                 ema_decay=None), sample_shape=(2,))
    for _ in range(10):
        m = run.step(32)
    assert m["anchor_l2"] < 1e-6


def test_hypernoise_trains_only_the_noise_net_and_raises_reward():
    # frozen generator: the analytic ring teacher run as a 4-step sampler (spread samples, reward ~ 0)
    st = analytic_teacher(GaussianMixture.ring(), "vp_cosine")
    g = torch.Generator().manual_seed(123)
    before = float(sample(st, (512, 2), num_steps=4, eta=0.0, generator=g).x0[:, 0].mean())
    run = HyperNoise(st, reward_right, BaselineConfig(num_steps=4, eta=0.0, lr=1e-2, anchor_weight=0.01,
                                                      ema_decay=None),
                     noise_net=None, sample_shape=(2,))
    cnt = GradCallCounter(run.student.net)
    for _ in range(25):
        m = run.step(64)
    cnt.remove()
    assert m["grad_calls"] == 4 and cnt.reached == 25 * 4  # gradients pass through all K calls
    assert m["skipped"] == 0.0 and m["noise_penalty"] > 0
    x = run.sample(512, generator=torch.Generator().manual_seed(123), use_ema=False)
    assert float(x[:, 0].mean()) > before + 0.5


def test_hypernoise_leaves_the_student_untouched():
    st = _student()
    ref = [p.detach().clone() for p in st.parameters()]
    run = HyperNoise(st, reward_right, BaselineConfig(num_steps=2, lr=1e-2, ema_decay=None), sample_shape=(2,))
    run.step(32)
    assert all(p.grad is None for p in run.student.parameters())
    assert all(torch.equal(a, p) for a, p in zip(ref, st.parameters()))
    assert all(p.requires_grad for p in st.parameters())  # the caller's module keeps its flags


def test_dipp_step_and_reward():
    teacher = analytic_teacher(GaussianMixture.ring(), "vp_cosine")
    gen = _student()
    before = _eval_reward(gen, 1)
    run = DIpp(gen, teacher, reward_right, BaselineConfig(num_steps=1, lr=1e-2, reward_weight=1.0, ema_decay=None),
               auxiliary=_student(1), sample_shape=(2,))
    cnt = GradCallCounter(gen.net)
    for _ in range(25):
        m = run.step(64)
    cnt.remove()
    assert cnt.reached == 25 and m["grad_calls"] == 1 and m["skipped"] == 0.0 and m["skipped_aux"] == 0.0
    assert _eval_reward(run.model, 1) > before + 0.5


def test_dipp_without_reward_is_plain_di_and_moves_toward_the_teacher():
    """lambda = 0: the one-step generator's samples move toward the ring (radius 2) from a blob at 0."""
    teacher = analytic_teacher(GaussianMixture.ring(), "vp_cosine")
    gen = _student()
    g = torch.Generator().manual_seed(5)
    r0 = float(sample(gen, (512, 2), num_steps=1, generator=g).x0.norm(dim=1).mean())
    run = DIpp(gen, teacher, None, BaselineConfig(num_steps=1, lr=3e-3, reward_weight=0.0, ema_decay=None),
               auxiliary=_student(1), sample_shape=(2,))
    for _ in range(150):
        run.step(128)
    r1 = float(sample(gen, (512, 2), num_steps=1, generator=torch.Generator().manual_seed(5)).x0.norm(dim=1).mean())
    assert abs(r1 - 2.0) < abs(r0 - 2.0) - 0.3, (r0, r1)


def test_mm_then_draft_runs_both_stages():
    teacher = analytic_teacher(GaussianMixture.ring(), "vp_cosine")
    mix = GaussianMixture.ring()
    g = torch.Generator().manual_seed(0)
    eng = RMMD(teacher, _student(), _student(1), config=RMMDConfig(num_steps=2, lr=1e-3), sample_shape=(2,))
    stages = []
    run = mm_then_draft(eng, (mix.sample(32, g) for _ in range(3)), reward_right,
                        BaselineConfig(num_steps=2, ema_decay=None), draft_steps=2, batch_size=8,
                        on_step=lambda stage, m: stages.append(stage))
    assert stages == ["mm"] * 3 + ["draft"] * 2 and eng.iteration == 3 and run.iteration == 2


def test_reward_value_uses_the_closed_form_gradient():
    x = torch.randn(3, 3, 4, 4, requires_grad=True)
    r = GrayscaleReward()
    reward_value(r, x).sum().backward()
    _, g = r.value_and_grad(x.detach())
    assert torch.allclose(x.grad, g)


def test_baseline_bad_input():
    st = _student()
    with pytest.raises(ValueError, match="grad_steps"):
        DRaFT(st, reward_right, BaselineConfig(num_steps=2), grad_steps=3, sample_shape=(2,))
    with pytest.raises(ValueError, match="DRaFT-LV"):
        DRaFT(st, reward_right, BaselineConfig(num_steps=2), grad_steps=2, lv_samples=2, sample_shape=(2,))
    with pytest.raises(ValueError, match="sample_shape"):
        DRaFT(st, reward_right, BaselineConfig(num_steps=2))
    with pytest.raises(ValueError, match="reward"):
        DRaFT(st, None, BaselineConfig(num_steps=2), sample_shape=(2,))
    with pytest.raises(ValueError, match="reward_weight"):
        BaselineConfig(reward_weight=-1)
    with pytest.raises(TypeError, match="Denoiser"):
        HyperNoise(torch.nn.Linear(2, 2), reward_right, sample_shape=(2,))
