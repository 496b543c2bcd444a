"""The MM / RMMD gradient: analytic fixed point and agreement with autograd of the explicit objective.

Fixed-point test (Gaussian data, everything closed form). Data x ~ N(mu, diag(v)). The student is the
exact posterior-mean map plus a learnable bias b:  x̃(z_t) = mu + k_t (z_t - alpha_t mu) + b,
k_t = alpha_t v / (alpha_t^2 v + sigma_t^2). With gap='grid' (s -> t = min(s + 1/K, 1) is a function of
s), the student's own E[x̃ | z_s, s] is a Gaussian regression, so the auxiliary can be exact too. Then

    E[dL/db] = (1/D) E_s[ (1 - k_s C(t, s)) ] * b        (elementwise over the D dims)

which is zero at b = 0 (the exact posterior-mean student is an MM fixed point) and has the sign of b
otherwise (gradient descent removes the shift).

Why one Gaussian and not a multi-mode mixture: for a deterministic student x̃ = E_q[x | z_t] the chain
z_t -> z_s ~ q(z_s | z_t, x̃) has less variance than q(z_s | z_t), so E_g[x̃ | z_s] = E_q[x | z_s] holds
only in the limit of small gaps; for Gaussian data the *mean* cotangent still vanishes exactly because
E_q[x | z] is linear in z. The multi-mode case is covered end to end in test_toy_e2e.py.
"""
import math

import pytest
import torch
from torch import nn

from rmmd_core import RMMD, Denoiser, RMMDConfig, losses
from rmmd_core.rewards import LaplacianReward
from rmmd_core.sampler import posterior_coefficients
from rmmd_core.schedules import VPCosine
from rmmd_core.toy import GaussianMixture, analytic_teacher

MU = torch.tensor([0.5, -1.0, 2.0], dtype=torch.float64)
VAR = torch.tensor([0.09, 0.25, 0.6], dtype=torch.float64)
K = 4


def k_coef(sch, t):
    a, s = sch.alpha_sigma(t)
    return (a[:, None] * VAR) / (a[:, None] ** 2 * VAR + s[:, None] ** 2)


class ShiftedPosteriorMean(nn.Module):
    """x̃ = E_q[x | z_t] + b, the exact teacher map shifted by a parameter."""

    def __init__(self, sch, b):
        super().__init__()
        self.sch = sch
        self.b = nn.Parameter(torch.as_tensor(b, dtype=torch.float64).clone())

    def forward(self, z, t):
        a, _ = self.sch.alpha_sigma(t.double())
        return MU + k_coef(self.sch, t.double()) * (z - a[:, None] * MU) + self.b


class ExactStudentMoment(nn.Module):
    """E[x̃ | z_s, s] under the off-policy student process with t = min(s + 1/K, 1) (gap='grid')."""

    def __init__(self, sch, student):
        super().__init__()
        self.sch, self.student = sch, student
        self.dummy = nn.Parameter(torch.zeros(()))  # the engine requires a trainable auxiliary

    def forward(self, z_s, s):
        s = s.double()
        t = (s + 1.0 / K).clamp_max(1.0)
        A, C, gamma = posterior_coefficients(self.sch, t, s, 1.0)
        a_t, s_t = self.sch.alpha_sigma(t)
        a_s, _ = self.sch.alpha_sigma(s)
        kt = k_coef(self.sch, t)
        V = a_t[:, None] ** 2 * VAR + s_t[:, None] ** 2
        L = A[:, None] + C[:, None] * kt
        var_zs = L ** 2 * V + gamma[:, None] ** 2
        cov = kt * L * V
        b = self.student.b.detach()
        mean_zs = a_s[:, None] * MU + C[:, None] * b
        return MU + b + cov / var_zs * (z_s - mean_zs) + 0 * self.dummy


def expected_grad(sch, b):
    """(1/D) E_s[(1 - k_s C(t(s), s))] * b by numerical integration over s ~ U(0,1)."""
    s = torch.linspace(0, 1, 200_001, dtype=torch.float64).clamp_min(max(sch.t_min, 1e-4))
    t = (s + 1.0 / K).clamp_max(1.0)
    _, C, _ = posterior_coefficients(sch, t, s, 1.0)
    factor = (1 - k_coef(sch, s) * C[:, None]).mean(0)
    return factor * torch.as_tensor(b, dtype=torch.float64) / MU.numel()


def mm_engine(b):
    sch = VPCosine()
    # the library's closed-form mixture teacher, with one component (the case where E_g is Gaussian too)
    teacher = analytic_teacher(GaussianMixture(MU[None], VAR.sqrt()[None]), sch)
    student_net = ShiftedPosteriorMean(sch, b)
    student = Denoiser(student_net, sch, prediction="x0")
    aux = Denoiser(ExactStudentMoment(sch, student_net), sch, prediction="x0")
    cfg = RMMDConfig(num_steps=K, gap="grid", weighting="flat", ema_decay=None)
    return RMMD(teacher, student, aux, config=cfg, seed=3, dtype=torch.float64), student_net


@pytest.mark.parametrize("b", [[0.0, 0.0, 0.0], [0.4, -0.3, 0.25]])
def test_mm_gradient_matches_closed_form_expectation(b):
    eng, net = mm_engine(b)
    g = torch.Generator().manual_seed(11)
    grads = []
    for _ in range(24):  # 24 independent batches -> mean and standard error of the batch gradient
        x = MU + VAR.sqrt() * torch.randn(4096, 3, generator=g, dtype=torch.float64)
        out = losses(eng, data=x, generator=g)
        (gb,) = torch.autograd.grad(out.student_loss, net.b)
        grads.append(gb)
    G = torch.stack(grads)
    mean, se = G.mean(0), G.std(0) / math.sqrt(G.shape[0])
    exp = expected_grad(eng.student.schedule, b)
    # 4.5 standard errors per coordinate (6 coordinates over both cases: false-alarm rate < 1e-4)
    assert bool(((mean - exp).abs() <= 4.5 * se + 1e-12).all()), (mean, exp, se)
    if any(b):
        bt = torch.tensor(b, dtype=torch.float64)
        assert bool((exp.abs() > 10 * se).all()), "the test must be able to see the correction"
        assert bool((mean * bt > 0).all()), "the MM gradient must point toward removing the shift"


class TinyNet(nn.Module):
    def __init__(self, c=1, dropout=0.0):
        super().__init__()
        self.conv = nn.Conv2d(c + 1, 8, 3, padding=1)
        self.out = nn.Conv2d(8, c, 3, padding=1)
        self.drop = nn.Dropout(dropout)

    def forward(self, z, t):
        tt = t.to(z.dtype).view(-1, 1, 1, 1).expand(-1, 1, *z.shape[2:])
        return self.out(self.drop(torch.tanh(self.conv(torch.cat([z, tt], 1)))))


def smooth_sum_reward(x, cond=None):
    """A nonlinear, non-built-in reward so the engine takes its autograd path."""
    return torch.tanh(x).flatten(1).mean(1) - 0.1 * (x ** 2).flatten(1).mean(1)


@pytest.mark.parametrize("reward,M,weighting", [(smooth_sum_reward, 1, "flat"), (smooth_sum_reward, 2, "dmd"),
                                                ("laplacian", 1, "edm")])
def test_surrogate_gradient_equals_autograd_of_explicit_objective(reward, M, weighting):
    torch.manual_seed(0)
    sch = VPCosine()
    teacher = Denoiser(TinyNet(), sch, prediction="eps")
    eng = RMMD(teacher, config=RMMDConfig(num_steps=3, num_samples=M, weighting=weighting, ema_decay=None),
               sample_shape=(1, 5, 7), seed=1)
    with torch.no_grad():  # move the student away from the teacher so every term is non-zero
        for p in eng.student.parameters():
            p.add_(0.05 * torch.randn_like(p))
    eng.start_phase2(reward=reward, reward_weight=0.7, anchor_weight=0.3)
    with torch.no_grad():
        for p in eng.student.parameters():
            p.add_(0.05 * torch.randn_like(p))
    B = 4
    out = losses(eng, batch_size=B, return_intermediates=True)
    it = out.intermediates
    x0 = it["x0"]
    D = x0[0].numel()
    # the explicit Project-defaults objective, differentiated by autograd end to end
    mm = (x0 * (it["weight"] * (it["m_stu"] - it["m_ref"])).detach()).flatten(1).sum(1) / D
    rw = LaplacianReward() if reward == "laplacian" else None
    per_sample_r = rw(x0) if rw is not None else smooth_sum_reward(x0)
    r = per_sample_r.view(M, B).mean(0)
    l2 = ((x0 - it["anchor"]) ** 2).flatten(1).sum(1) / D
    explicit = mm.mean() - 0.7 * r.mean() + 0.3 * l2.mean()
    params = [p for p in eng.student.parameters()]
    g_explicit = torch.autograd.grad(explicit, params, retain_graph=True)
    g_engine = torch.autograd.grad(out.student_loss, params)
    assert float(out.student_loss.detach()) == pytest.approx(float(explicit.detach()), rel=1e-5, abs=1e-7)
    for ge, gx in zip(g_engine, g_explicit):
        torch.testing.assert_close(ge, gx, rtol=1e-4, atol=1e-7)
    assert all(float(gx.abs().max()) > 0 for gx in g_explicit)
    assert out.metrics["cot_norm_reward"] > 0 and out.metrics["cot_norm_anchor"] > 0
