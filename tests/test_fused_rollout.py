"""The fused sampler path (Denoiser.affine_output + ops.denoise_step) equals the unfused one
(Denoiser.forward + posterior_step) up to rounding, for every parameterisation, eta, CFG and dtype; it
makes the same network calls and draws the same Philox seeds (method.md §e K1 / K3)."""

from __future__ import annotations

import pytest
import torch
from torch import nn

import rmmd_core.sampler as sampler
from rmmd_core import Denoiser
from rmmd_core.parameterization import PREDICTIONS, edm_preconditioning, from_x0
from rmmd_core.sampler import can_fuse, rollout, time_grid
from rmmd_core.schedules import get_schedule

SCHEDULE = {"x0": "vp_cosine", "eps": "vp_cosine", "v": "vp_linear", "flow": "rectified_flow", "score": "vp_cosine",
            "edm": "edm"}


class SmoothNet(nn.Module):
    """A plausible, parameter-free network for any parameterisation: its x̂ is a nonlinear perturbation of
    the Bayes denoiser of N(0, I) data, ``x̂ = 0.8 alpha z / (alpha^2 + sigma^2) + 0.2 tanh(z) (+ y)``,
    returned as the parameterisation's target (``from_x0``), so rollouts stay O(1) for every prediction
    and the affine conversion back to x̂ is exercised. Runs in its input's dtype."""

    def __init__(self, schedule, prediction):
        super().__init__()
        self.schedule, self.prediction = get_schedule(schedule), prediction

    def forward(self, z_in, t, y=None):
        view = (-1,) + (1,) * (z_in.dim() - 1)
        t = t.double()
        alpha, sigma = (v.view(view) for v in self.schedule.alpha_sigma(t))
        z = z_in
        kw = {}
        if self.prediction == "edm":  # the Denoiser fed c_in z / alpha
            c_in, _, _, _ = edm_preconditioning(alpha, sigma, self.schedule.sigma_data)
            z = z_in * (alpha / c_in).to(z_in.dtype)
            kw["sigma_data"] = self.schedule.sigma_data
        if self.prediction == "flow":
            kw["dalpha"], kw["dsigma"] = (v.view(view) for v in self.schedule.alpha_sigma_derivatives(t))
        x_hat = (0.8 * alpha / (alpha ** 2 + sigma ** 2)).to(z.dtype) * z + 0.2 * torch.tanh(z)
        if y is not None:
            x_hat = x_hat + y.to(z.dtype).view(view)
        eps = (z - alpha.to(z.dtype) * x_hat) / sigma.to(z.dtype)
        return from_x0(x_hat, eps, alpha, sigma, self.prediction, **kw).to(z_in.dtype)


def _denoiser(prediction, **kw):
    return Denoiser(SmoothNet(SCHEDULE[prediction], prediction), SCHEDULE[prediction], prediction=prediction,
                    time_input="t", **kw)


def _run(den, z, grid, fused, seed=5, **kw):
    g = torch.Generator().manual_seed(seed)
    hooks = []
    handle = den.net.register_forward_hook(lambda *a: hooks.append(1))
    calls0 = den.calls
    with torch.no_grad():
        out, x_hat, calls = rollout(den, z, grid, generator=g, fused=fused, **kw)
    handle.remove()
    # the generator's next draw tells whether both paths consumed the same number of seeds
    return out, x_hat, calls, den.calls - calls0, len(hooks), torch.randint(0, 2**62, (1,), generator=g).item()


def _errors(fused, unfused, truth):
    return (fused.double() - truth).abs().max().item(), (unfused.double() - truth).abs().max().item()


@pytest.mark.parametrize("prediction", PREDICTIONS)
@pytest.mark.parametrize("eta", [1.0, 0.5, 0.0])
@pytest.mark.parametrize("stop_index", [0, 2])
def test_fused_rollout_equals_unfused(prediction, eta, stop_index):
    # Same calls, hooks and seeds; in float32 the fused state and x̂ are within rounding of the unfused ones,
    # judged against the float64 rollout with the same seeds: fused error <= 2x unfused error (+ 1 ULP-ish).
    # (eps / score near t = 1 amplify rounding by 1/alpha_t, so a fixed atol would not be dtype-tied.)
    den = _denoiser(prediction)
    assert can_fuse(den)
    grid = time_grid(5, den.schedule)
    z = torch.randn(4, 3, 7, dtype=torch.float64) * den.schedule.prior_std
    fz, fx, fcalls, fnet, fhooks, fnext = _run(den, z.float(), grid, True, eta=eta, stop_index=stop_index)
    uz, ux, ucalls, unet, uhooks, unext = _run(den, z.float(), grid, False, eta=eta, stop_index=stop_index)
    tz, tx = _run(den, z, grid, False, eta=eta, stop_index=stop_index)[:2]
    assert (fcalls, fnet, fhooks, fnext) == (ucalls, unet, uhooks, unext)
    for what, f, u, t in (("z", fz, uz, tz), ("x_hat", fx, ux, tx)):
        assert f.dtype == torch.float32 and f.shape == t.shape
        err_f, err_u = _errors(f, u, t)
        assert err_f <= 2 * err_u + 1e-6 * (1 + t.abs().max().item()), (what, err_f, err_u)


@pytest.mark.parametrize("prediction", ["eps", "edm"])
def test_fused_rollout_with_cfg(prediction):
    den = _denoiser(prediction, cond_key="y", null_cond=lambda c: torch.zeros_like(c), guidance_scale=1.5)
    grid = time_grid(4, den.schedule)
    z = torch.randn(3, 10) * den.schedule.prior_std
    y = torch.tensor([0.3, -0.2, 0.5])
    f = _run(den, z, grid, True, cond=y)
    u = _run(den, z, grid, False, cond=y)
    assert f[2:] == u[2:] and f[3] == 4  # one batched cond + uncond call per step
    truth = _run(den, z.double(), grid, False, cond=y.double())[0]
    err_f, err_u = _errors(f[0], u[0], truth)
    assert err_f <= 2 * err_u + 1e-6 * (1 + truth.abs().max().item()), (err_f, err_u)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16], ids=str)
@pytest.mark.parametrize("prediction", PREDICTIONS)
def test_low_precision_fused_error_at_most_twice_unfused(prediction, dtype):
    # Truth: the unfused rollout in float64 with the same seeds (the Philox noise is float32 on every path).
    den = _denoiser(prediction)
    grid = time_grid(4, den.schedule)
    z = torch.randn(4, 257, dtype=torch.float64) * den.schedule.prior_std
    truth = _run(den, z, grid, False, eta=0.7)[0]
    fused = _run(den, z.to(dtype), grid, True, eta=0.7)[0]
    assert fused.dtype == dtype
    err_f, err_u = _errors(fused, _run(den, z.to(dtype), grid, False, eta=0.7)[0], truth)
    assert err_f <= 2 * err_u + 1e-6, (err_f, err_u)


def test_rollout_uses_the_fused_op_by_default(monkeypatch):
    den = _denoiser("eps")
    seen = []
    real = sampler.ops.denoise_step
    monkeypatch.setattr(sampler.ops, "denoise_step", lambda *a, **k: seen.append(k.get("want_x0")) or real(*a, **k))
    with torch.no_grad():
        rollout(den, torch.randn(2, 5), time_grid(3, den.schedule), stop_index=1)
    assert seen == [False, True]  # x̂ is written only on the last step


class ClippingDenoiser(Denoiser):
    """A subclass whose forward post-processes x̂ (clipping is not affine): rollouts must not fuse it."""

    def forward(self, z, t, cond=None, guidance_scale=None):
        return super().forward(z, t, cond, guidance_scale).clamp(-1, 1)


def test_non_affine_or_hooked_denoisers_fall_back():
    den = ClippingDenoiser(SmoothNet("vp_cosine", "eps"), "vp_cosine", prediction="eps", time_input="t")
    assert not can_fuse(den)
    grid = time_grid(3, den.schedule)
    z = torch.randn(2, 6)
    assert torch.equal(_run(den, z, grid, True)[0], _run(den, z, grid, False)[0])
    plain = _denoiser("eps")
    handle = plain.register_forward_hook(lambda *a: None)
    assert not can_fuse(plain)
    handle.remove()
    assert can_fuse(plain)


def test_plan_reuses_its_step_coefficients_and_fold(monkeypatch):
    """A rollout plan's per-step (A, C, gamma) are expanded once per batch size, and with the plan's pinned
    grid times the fused step's float64 fold is computed once per step for the whole run (not once per
    rollout), with bit-identical samples."""
    import rmmd_core.ops as ops_pkg

    den = _denoiser("eps")
    grid = time_grid(3, den.schedule)
    plan = sampler.rollout_plan(den.schedule, grid, 1.0, 3, "cpu")
    coefs = plan.step_coefficients(6)
    assert coefs is plan.step_coefficients(6) and len(coefs) == 3
    for j, step_c in enumerate(coefs):
        assert all(x.shape == (6,) and torch.equal(x, full[j].expand(6)) for x, full in zip(step_c, plan.coefficients))
    folds = []
    real = ops_pkg.fold_denoise_coefficients
    monkeypatch.setattr(ops_pkg, "fold_denoise_coefficients", lambda *a: folds.append(1) or real(*a))
    z = torch.randn(6, 4)
    outs = []
    for _ in range(3):
        with torch.no_grad():
            outs.append(sampler.run_rollout(den, z, plan, generator=torch.Generator().manual_seed(1))[0])
    assert len(folds) == 3  # one per grid step, on the first rollout only
    assert torch.equal(outs[0], outs[1]) and torch.equal(outs[0], outs[2])
