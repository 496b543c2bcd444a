"""The engine's backend reaches every fused op of a step (rewards and EMA included), and the step
metrics name the backend each fused op ran on (``backend_<op>``, plus the ``backend`` summary)."""
import pytest
import torch

from rmmd_core import RMMD, Denoiser, RMMDConfig, ops, step
from rmmd_core.accumulate import accumulate_step
from rmmd_core import rewards as rewards_mod
from rmmd_core.rewards import CallableReward, CRPSReward, GrayscaleReward, LaplacianReward
from rmmd_core.toy import MLPNet
from test_mm_gradient import TinyNet

HAS_CPU = not any(ops.backend_reasons(op)["cpu"] for op in ("laplacian_reward", "grayscale_reward", "crps_fair",
                                                              "ema_update", "denoise_step", "rmmd_cotangent"))
BACKENDS = ["reference", pytest.param("cpu", marks=pytest.mark.skipif(not HAS_CPU, reason="no CPU kernels"))]


def _spy(monkeypatch, op_name):
    """Record the backend= each call of rmmd_core.ops.<op_name> receives (as the rewards call it)."""
    seen = []
    real = getattr(ops, op_name)

    def wrapper(*args, backend=None, **kw):
        seen.append(backend)
        return real(*args, backend=backend, **kw)

    monkeypatch.setattr(rewards_mod.ops, op_name, wrapper)
    return seen


def _image_engine(backend, reward, channels=3):
    torch.manual_seed(0)
    teacher = Denoiser(TinyNet(c=channels), "vp_cosine", prediction="eps")
    cfg = RMMDConfig(num_steps=2, reward_weight=0.5, anchor_weight=0.0, ema_decay=0.9)
    return RMMD(teacher, config=cfg, reward=reward, sample_shape=(channels, 5, 7), seed=0, backend=backend)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("reward,op,channels", [("laplacian", "laplacian_reward", 1),
                                                 ("grayscale", "grayscale_reward", 3)])
def test_builtin_image_reward_runs_on_the_engine_backend(monkeypatch, backend, reward, op, channels):
    monkeypatch.delenv(ops.dispatch.BACKEND_ENV, raising=False)
    seen = _spy(monkeypatch, op)
    eng = _image_engine(backend, reward, channels)
    m = step(eng, batch_size=3)
    assert seen == [backend]  # the op was asked for the engine's backend
    assert m[f"backend_{op}"] == backend
    for key in ("backend_posterior_step", "backend_denoise_step", "backend_renoise", "backend_rmmd_cotangent",
                "backend_aux_loss", "backend_ema_update", "backend_grad_norm"):
        assert m[key] == backend, key
    assert m["backend"] == backend  # one backend everywhere: the summary is its name


def test_reward_own_backend_wins_and_the_summary_names_each_op(monkeypatch):
    if not HAS_CPU:
        pytest.skip("no CPU kernels")
    monkeypatch.delenv(ops.dispatch.BACKEND_ENV, raising=False)
    seen = _spy(monkeypatch, "laplacian_reward")
    eng = _image_engine("cpu", LaplacianReward(backend="reference"), channels=1)
    m = step(eng, batch_size=3)
    assert seen == ["reference"]
    assert m["backend_laplacian_reward"] == "reference" and m["backend_rmmd_cotangent"] == "cpu"
    assert "laplacian_reward=reference" in m["backend"] and "rmmd_cotangent=cpu" in m["backend"]


def test_value_only_reward_path_uses_the_engine_backend(monkeypatch):
    """Phase 1 with a reward but lambda = 0: the value is still reported, computed on the engine's backend."""
    monkeypatch.delenv(ops.dispatch.BACKEND_ENV, raising=False)
    seen = _spy(monkeypatch, "grayscale_reward")
    eng = _image_engine("reference", GrayscaleReward(), channels=3)
    eng.config = eng.config.replace(reward_weight=0.0)
    m = step(eng, batch_size=2)
    assert seen == ["reference"] and m["backend_grayscale_reward"] == "reference"
    assert m["reward_mean"] == m["reward_mean"]  # finite, not nan


@pytest.mark.parametrize("backend", BACKENDS)
def test_crps_reward_runs_on_the_engine_backend(monkeypatch, backend):
    monkeypatch.delenv(ops.dispatch.BACKEND_ENV, raising=False)
    seen = _spy(monkeypatch, "crps_fair")
    torch.manual_seed(0)
    teacher = Denoiser(MLPNet(4, hidden=16, depth=2), "vp_cosine", prediction="x0")
    cfg = RMMDConfig(num_steps=2, num_samples=2, reward_weight=0.3, anchor_weight=0.0, ema_decay=None)
    eng = RMMD(teacher, config=cfg, reward=CRPSReward(), sample_shape=(4,), seed=0, backend=backend)
    m = step(eng, batch_size=3, reward_kwargs={"target": torch.randn(3, 4)})
    assert seen == [backend] and m["backend_crps_fair"] == backend
    assert "backend_ema_update" not in m  # no EMA configured: no EMA op ran


def test_off_policy_step_reports_no_rollout_op_and_no_reward_op():
    torch.manual_seed(0)
    teacher = Denoiser(MLPNet(2, hidden=16, depth=2), "vp_cosine", prediction="x0")
    eng = RMMD(teacher, config=RMMDConfig(num_steps=2), sample_shape=(2,), seed=0, backend="reference")
    m = step(eng, torch.randn(5, 2))
    assert "backend_denoise_step" not in m and "backend_renoise" in m
    assert not [k for k in m if k.startswith("backend_") and (k.endswith("_reward") or k.endswith("crps_fair"))]
    m = step(eng, batch_size=5)  # data-free: the rollout's fused steps
    assert m["backend_denoise_step"] == "reference"


def test_accumulate_step_reports_the_ema_backend():
    torch.manual_seed(0)
    teacher = Denoiser(MLPNet(2, hidden=16, depth=2), "vp_cosine", prediction="x0")
    eng = RMMD(teacher, config=RMMDConfig(num_steps=2, ema_decay=0.9), sample_shape=(2,), seed=0,
               backend="reference")
    m = accumulate_step(eng, [dict(batch_size=3), dict(batch_size=2)])
    assert m["backend_ema_update"] == "reference" and m["backend"] == "reference"


def test_reward_kwargs_may_be_named_like_the_engine_arguments():
    """engine_value_and_grad's own arguments are positional-only: a reward may take `backend=` itself."""
    got = {}

    def r(x, cond=None, backend=None, need_grad=None):
        got.update(backend=backend, need_grad=need_grad)
        return x.sum(-1)

    rw = CallableReward(r)
    v, g = rw.engine_value_and_grad(torch.ones(2, 3), None, "reference", True, backend="mine", need_grad="also")
    assert got == {"backend": "mine", "need_grad": "also"} and g.shape == (2, 3)
    assert rw.backend_used(torch.ones(2, 3), "cpu") == {}  # not a fused op


@pytest.mark.parametrize("backend", BACKENDS)
def test_gradient_norm_and_clip_run_on_the_engine_backend(monkeypatch, backend):
    """Single-process step: the gradient norm is the grad_norm op and the clip (only when the coefficient is
    below 1) rides in the FusedAdam pass, both on the engine's backend (with another optimiser the clip is
    the grad_scale op); the norm is torch's get_total_norm up to the
    float64 accumulation (~1e-7 relative)."""
    monkeypatch.delenv(ops.dispatch.BACKEND_ENV, raising=False)
    from rmmd_core import engine as engine_mod

    norms, scales = [], []
    real_norm, real_scale = engine_mod._fused_grad_norm, engine_mod._fused_grad_scale

    def spy_norm(grads, name):
        out = real_norm(grads, name)
        norms.append((name, out, torch.nn.utils.get_total_norm(grads, 2.0)))
        return out

    def spy_scale(grads, coef, name):
        scales.append(name)
        return real_scale(grads, coef, name)

    monkeypatch.setattr(engine_mod, "_fused_grad_norm", spy_norm)
    monkeypatch.setattr(engine_mod, "_fused_grad_scale", spy_scale)
    torch.manual_seed(0)
    teacher = Denoiser(MLPNet(2, hidden=16, depth=2), "vp_cosine", prediction="x0")
    for clip, clipped in ((1e-4, True), (None, False), (1e6, False)):
        norms.clear(), scales.clear()
        cfg = RMMDConfig(num_steps=2, ema_decay=None, grad_clip=clip)
        eng = RMMD(teacher, config=cfg, sample_shape=(2,), seed=0, backend=backend)
        m = step(eng, batch_size=4)
        assert m["backend_grad_norm"] == backend and len(norms) == 2  # auxiliary and student
        assert all(b == backend for b, _, _ in norms)
        for _, ours, theirs in norms:
            torch.testing.assert_close(ours, theirs, rtol=4e-6, atol=0)
        assert m["grad_norm"] == float(norms[1][1])  # the student's norm is reported as computed
        # the engine's FusedAdam folds the clip into its one pass: no separate grad_scale op runs
        assert scales == [] and m["backend_adam_update"] == backend
        if clipped:  # modules whose clip coefficient is below 1 (the auxiliary's first gradient may be ~0)
            over = [n for _, n, _ in norms if float(clip / (n + 1e-6)) < 1.0]
            assert over and m["backend_grad_scale"] == backend
        else:
            assert "backend_grad_scale" not in m
        if backend == "reference":  # the separate pass still serves optimisers that cannot fold it
            norms.clear(), scales.clear()
            eng = RMMD(teacher, config=cfg.replace(adam="foreach"), sample_shape=(2,), seed=0, backend=backend)
            m = step(eng, batch_size=4)
            over = [n for _, n, _ in norms if clip is not None and float(clip / (n + 1e-6)) < 1.0]
            assert "backend_adam_update" not in m and scales == [backend] * len(over)
