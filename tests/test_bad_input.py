"""Every bad-input path of the engine raises a named error; non-finite updates are skipped cleanly."""
import copy

import pytest
import torch
from torch import nn

from rmmd_core import RMMD, Denoiser, RMMDConfig, losses, step
from rmmd_core.toy import MLPNet


def engine(**cfg):
    torch.manual_seed(0)
    teacher = Denoiser(MLPNet(2, hidden=16, depth=1), "vp_cosine", prediction="x0")
    return RMMD(teacher, config=RMMDConfig(num_steps=2, **cfg), sample_shape=(2,))


@pytest.mark.parametrize("field,value", [
    ("num_steps", 0), ("num_steps", 2.5), ("eta", -0.1), ("eta", 1.5), ("reward_weight", -1.0),
    ("anchor_weight", -0.5), ("guidance_scale", -1.0), ("weighting", "sqrt"), ("variant", "ode"),
    ("reference", "ema"), ("num_samples", 0), ("student_update_every", 0), ("ema_decay", 1.0),
    ("grad_clip", 0.0), ("lr", 0.0), ("dmd_eps", 0.0), ("grid", "linear"), ("gap", "random"),
])
def test_invalid_config_names_the_field(field, value):
    with pytest.raises(ValueError, match=field):
        RMMDConfig(**{field: value})


def test_denoiser_rejects_bad_arguments():
    net = MLPNet(2, hidden=8, depth=1)
    with pytest.raises(ValueError, match="prediction"):
        Denoiser(net, "vp_cosine", prediction="noise")
    with pytest.raises(ValueError, match="time_input"):
        Denoiser(net, "vp_cosine", time_input="seconds")
    with pytest.raises(TypeError, match="nn.Module"):
        Denoiser(lambda z, t: z, "vp_cosine")
    with pytest.raises(ValueError, match="valid"):
        Denoiser(net, "cosine-ish")
    den = Denoiser(net, "vp_cosine", prediction="x0")
    with pytest.raises(ValueError, match=r"t must be a scalar or have shape \(3,\)"):
        den(torch.randn(3, 2), torch.rand(4))
    with pytest.raises(ValueError, match="null_cond"):
        den(torch.randn(3, 2), 0.5, guidance_scale=2.0)


class WrongShapeNet(nn.Module):
    def forward(self, z, t):
        return z[:, :1]


class CastingDenoiser(Denoiser):
    """A user subclass that breaks the contract: returns another dtype / device than its input."""

    def __init__(self, *a, out_dtype=None, out_device=None, **k):
        super().__init__(*a, **k)
        self.out_dtype, self.out_device = out_dtype, out_device

    def forward(self, z, t, cond=None, guidance_scale=None):
        out = super().forward(z, t, cond, guidance_scale)
        return out.to(dtype=self.out_dtype or out.dtype, device=self.out_device or out.device)


def test_mismatched_network_outputs():
    eng = engine()
    eng.teacher = Denoiser(WrongShapeNet(), "vp_cosine", prediction="x0")
    with pytest.raises(ValueError, match=r"net output has shape \(4, 1\), expected the input shape \(4, 2\)"):
        step(eng, batch_size=4)
    eng = engine()
    eng.auxiliary = CastingDenoiser(MLPNet(2, hidden=8, depth=1), "vp_cosine", prediction="x0", out_dtype=torch.float64)
    with pytest.raises(TypeError, match="auxiliary output has dtype torch.float64, expected torch.float32"):
        step(eng, batch_size=4)
    eng = engine()
    eng.teacher = CastingDenoiser(MLPNet(2, hidden=8, depth=1), "vp_cosine", prediction="x0", out_dtype=torch.float16)
    with pytest.raises(TypeError, match="teacher output has dtype torch.float16"):
        step(eng, batch_size=4)
    eng = engine()
    eng.teacher = CastingDenoiser(MLPNet(2, hidden=8, depth=1), "vp_cosine", prediction="x0", out_device="meta")
    with pytest.raises(ValueError, match="teacher output is on meta, expected cpu"):
        step(eng, batch_size=4)
    # a float64 network behind a float32 pipeline is fine: the Denoiser hands back the input's dtype
    eng = engine()
    eng.teacher = Denoiser(MLPNet(2, hidden=8, depth=1).double(), "vp_cosine", prediction="x0")
    eng.teacher.net.forward = lambda z, t, f=eng.teacher.net.forward: f(z.double(), t.double())
    assert step(eng, batch_size=4)["skipped"] == 0.0


def test_schedule_mismatch_and_shared_networks():
    t = Denoiser(MLPNet(2, hidden=8, depth=1), "vp_cosine", prediction="x0")
    s = Denoiser(MLPNet(2, hidden=8, depth=1), "edm", prediction="x0")
    with pytest.raises(ValueError, match="student schedule"):
        RMMD(t, s)
    with pytest.raises(ValueError, match="distinct"):
        RMMD(t, t)
    with pytest.raises(TypeError, match="teacher must be a rmmd_core.Denoiser"):
        RMMD(MLPNet(2))


def test_batch_and_shape_errors():
    eng = engine()
    with pytest.raises(ValueError, match=r"cond\['y'\] has batch 3, expected 4"):
        step(eng, data=torch.randn(4, 2), cond={"y": torch.zeros(3)})
    with pytest.raises(ValueError, match=r"batch_size=5 does not match the batch of data \(4\)"):
        step(eng, data=torch.randn(4, 2), batch_size=5)
    with pytest.raises(ValueError, match=r"per-sample shape \(3,\), expected sample_shape \(2,\)"):
        step(eng, data=torch.randn(4, 3))
    with pytest.raises(ValueError, match="batch size"):
        step(eng)
    with pytest.raises(TypeError, match="data must be a floating-point Tensor"):
        step(eng, data=torch.ones(4, 2, dtype=torch.long))
    eng.sample_shape = None
    with pytest.raises(ValueError, match="sample_shape"):
        step(eng, batch_size=4)


def test_phase2_prerequisites():
    eng = engine(reward_weight=1.0)
    with pytest.raises(ValueError, match="needs a reward"):
        losses(eng, batch_size=2)
    eng = engine(anchor_weight=0.5)
    with pytest.raises(ValueError, match="start_phase2"):
        losses(eng, batch_size=2)
    eng = engine(reference="frozen_aux")
    with pytest.raises(ValueError, match="frozen phase-1 auxiliary"):
        losses(eng, batch_size=2)


class PoisonGrad(torch.autograd.Function):
    """Identity forward, NaN backward: a finite loss with a non-finite gradient."""

    @staticmethod
    def forward(ctx, x):
        return x.clone()

    @staticmethod
    def backward(ctx, g):
        return torch.full_like(g, float("nan"))


class Switchable(nn.Module):
    def __init__(self, base):
        super().__init__()
        self.base, self.mode = base, "ok"

    def forward(self, z, t):
        out = self.base(z, t)
        if self.mode == "nan_output" and torch.is_grad_enabled():
            return out * float("nan")
        if self.mode == "nan_grad" and torch.is_grad_enabled():
            return PoisonGrad.apply(out)
        return out


@pytest.mark.parametrize("mode", ["nan_output", "nan_grad"])
def test_non_finite_update_is_skipped_and_leaves_state_untouched(mode):
    torch.manual_seed(0)
    teacher = Denoiser(MLPNet(2, hidden=16, depth=1), "vp_cosine", prediction="x0")
    student = Denoiser(Switchable(copy.deepcopy(teacher.net)), "vp_cosine", prediction="x0")
    eng = RMMD(teacher, student, config=RMMDConfig(num_steps=2), sample_shape=(2,))
    step(eng, batch_size=8)  # one good step so the optimiser has state to protect
    params = [p.detach().clone() for p in eng.student.parameters()]
    opt_state = copy.deepcopy(eng.student_optimizer.state_dict())
    ema = [p.detach().clone() for p in eng.ema.parameters()]
    student.net.mode = mode
    m = step(eng, data=torch.randn(8, 2))
    assert m["skipped_student"] == 1.0 and m["skipped"] == 1.0
    for a, b in zip(params, eng.student.parameters()):
        assert torch.equal(a, b)
    for a, b in zip(ema, eng.ema.parameters()):
        assert torch.equal(a, b)
    new_state = eng.student_optimizer.state_dict()
    for k, st in opt_state["state"].items():
        for name, v in st.items():
            assert torch.equal(torch.as_tensor(v), torch.as_tensor(new_state["state"][k][name]))
    assert all(p.grad is None for p in eng.student.parameters())
    student.net.mode = "ok"
    assert step(eng, data=torch.randn(8, 2))["skipped"] == 0.0
