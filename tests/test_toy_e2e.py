"""End to end on the 2-D ring mixture with its analytic teacher (method.md "Project defaults").

Measured bounds (seed 0, see the README's "2-D task" table for the numbers behind them):
* phase-1 MM to 4 steps must bring the sliced-Wasserstein distance to the teacher's distribution well
  below both the untrained (random-init) student's and the teacher-initialised student's;
* phase-2 RMMD must raise the mean reward clearly while the distance to the teacher stays within
  SW_BOUND: the student moves toward the reward but does not collapse (reward hacking would put all
  mass on the rightmost mode, SW ~ 1.4).
"""
import torch

from rmmd_core import Denoiser, sample
from rmmd_core.metrics import mmd_rbf, sliced_wasserstein
from rmmd_core.toy import GaussianMixture, MLPNet, analytic_teacher
from rmmd_core.toy_run import run_toy

SW_BOUND = 0.6


def test_mm_then_rmmd_on_the_ring():
    res = run_toy(num_steps=4, fit_steps=800, mm_steps=500, rmmd_steps=300, batch=256, reward_weight=0.05,
                  n_eval=3000, seed=0)
    rows = {r["name"].split(" (")[0]: r for r in res.rows}
    teacher, init, mm, rmmd = rows["teacher"], rows["initial student"], rows["MM student"], rows["RMMD student"]

    # an untrained (random-init) 4-step student, for scale
    torch.manual_seed(0)
    mix = GaussianMixture.ring()
    rand = Denoiser(MLPNet(2), "vp_cosine", prediction="x0")
    g = torch.Generator().manual_seed(1)
    x_rand = sample(rand, (3000, 2), num_steps=4, generator=g).x0
    sw_rand = sliced_wasserstein(x_rand, mix.sample(3000, g), generator=g)

    assert teacher["sw_teacher"] < 0.08  # the many-step analytic sampler is (nearly) exact
    assert mm["sw_teacher"] < 0.25 * sw_rand, (mm, sw_rand)
    assert mm["sw_teacher"] < 0.8 * init["sw_teacher"], (mm, init)
    assert mm["nfe"] == 4 and teacher["nfe"] == 100

    assert rmmd["reward"] > mm["reward"] + 0.15, (rmmd, mm)
    assert rmmd["sw_teacher"] < SW_BOUND, rmmd
    # every phase-2 iteration really used the reward, the anchor and one on-policy rollout
    last = res.history[-1]
    assert last["phase"] == "rmmd" and last["state_source"] == "continuous"
    assert last["cot_norm_reward"] > 0 and last["anchor_l2"] >= 0 and last["skipped"] == 0.0


def test_analytic_teacher_is_the_posterior_mean():
    """The closed-form E[x | z_t] agrees with a Monte-Carlo estimate from joint samples."""
    mix = GaussianMixture.ring(n_modes=3, radius=1.0, std=0.3)
    teacher = analytic_teacher(mix, "vp_cosine")
    g = torch.Generator().manual_seed(0)
    x = mix.sample(400_000, g, dtype=torch.float64)
    t = 0.6
    a, s = teacher.schedule.alpha_sigma(torch.tensor(t, dtype=torch.float64))
    z = a * x + s * torch.randn(x.shape, generator=g, dtype=torch.float64)
    # E[x | z in a small box around z0] vs the analytic value at z0 (box half-width 0.05)
    z0 = torch.tensor([0.3, -0.2], dtype=torch.float64)
    box = ((z - z0).abs() < 0.05).all(1)
    mc = x[box].mean(0)
    exact = teacher(z0[None], torch.tensor([t]))[0]
    se = x[box].std(0) / box.sum().sqrt()
    assert bool(((mc - exact).abs() < 5 * se + 0.01).all()), (mc, exact, se)
    # sanity of the distance helpers on identical vs shifted sets
    y = mix.sample(2000, g)
    assert sliced_wasserstein(y, y, generator=g) < 1e-9
    assert mmd_rbf(y, y + 1.0) > mmd_rbf(y, mix.sample(2000, g)) + 0.1
