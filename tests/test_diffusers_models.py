"""Real diffusers models (random init from a small config, no download) through the whole engine."""
import math

import pytest
import torch

diffusers = pytest.importorskip("diffusers")

from rmmd_core import RMMD, Denoiser, DiscreteVP, RMMDConfig, sample, step  # noqa: E402

NUM_CLASSES = 5


def make_unet():
    return diffusers.UNet2DModel(
        sample_size=8, in_channels=3, out_channels=3, layers_per_block=1, block_out_channels=(16, 32),
        down_block_types=("DownBlock2D", "AttnDownBlock2D"), up_block_types=("AttnUpBlock2D", "UpBlock2D"),
        norm_num_groups=8, num_class_embeds=NUM_CLASSES + 1)


def make_dit():
    # out_channels = 2 * in_channels: DiT's learned-sigma head, which the Denoiser must split off
    return diffusers.DiTTransformer2DModel(
        num_attention_heads=2, attention_head_dim=8, in_channels=3, out_channels=6, num_layers=2,
        sample_size=8, patch_size=2, num_embeds_ada_norm=NUM_CLASSES, norm_num_groups=8)


MODELS = {"unet": make_unet, "dit": make_dit}


@pytest.mark.parametrize("kind", ["unet", "dit"])
@pytest.mark.parametrize("prediction", ["eps", "v"])
def test_diffusers_model_through_step(kind, prediction):
    torch.manual_seed(0)
    sch = DiscreteVP.from_diffusers_config(num_train_timesteps=1000)
    null = {"class_labels": torch.full((3,), NUM_CLASSES, dtype=torch.long)}
    teacher = Denoiser(MODELS[kind](), sch, prediction=prediction, time_input="index", null_cond=null)
    cfg = RMMDConfig(num_steps=2, guidance_scale=1.5, ema_decay=0.9)
    eng = RMMD(teacher, config=cfg, sample_shape=(3, 8, 8), reward="grayscale", seed=0)
    labels = torch.tensor([0, 3, 4])
    cond = {"class_labels": labels}
    before = [p.detach().clone() for p in eng.student.parameters()]
    hooks = {"student": 0, "teacher": 0, "aux": 0}
    for name, den in (("student", eng.student), ("teacher", eng.teacher), ("aux", eng.auxiliary)):
        den.net.register_forward_hook(lambda *a, n=name: hooks.__setitem__(n, hooks[n] + 1))

    m = step(eng, cond=cond)  # phase 1, data-free (continuous variant)
    assert m["skipped"] == 0.0 and math.isfinite(m["student_loss"]) and math.isfinite(m["grad_norm"])
    # 2 rollout calls + 1 differentiable student call; teacher: cond+uncond in ONE batched call; aux: 1
    assert hooks == {"student": 3, "teacher": 1, "aux": 1}
    assert m["calls_student"] == 3 and m["calls_teacher"] == 1 and m["calls_aux"] == 1
    changed = any(not torch.equal(b, p) for b, p in zip(before, eng.student.parameters()))
    assert changed, "the student must move"

    data = torch.randn(3, 3, 8, 8)
    eng.start_phase2(reward_weight=0.5)
    m2 = step(eng, data=data, cond=cond)  # phase 2, off-policy from data, with reward and anchor
    assert m2["phase"] == "rmmd" and m2["skipped"] == 0.0
    assert math.isfinite(m2["reward_mean"]) and m2["cot_norm_reward"] > 0 and m2["cot_norm_anchor"] >= 0

    out = sample(eng.student, (3, 3, 8, 8), num_steps=2, cond=cond, generator=torch.Generator().manual_seed(0))
    assert out.x0.shape == (3, 3, 8, 8) and bool(torch.isfinite(out.x0).all()) and out.nfe == 2


def test_discrete_schedule_index_time_input_is_ddpm_timestep():
    sch = DiscreteVP.from_diffusers_config(num_train_timesteps=1000)
    seen = []

    class Probe(torch.nn.Module):
        def forward(self, z, t):
            seen.append(t.clone())
            return z

    den = Denoiser(Probe(), sch, prediction="eps", time_input="index")
    t = torch.tensor([0.0, 0.5, 1.0], dtype=torch.float64)
    den(torch.randn(3, 2), t)
    torch.testing.assert_close(seen[0].double(), torch.tensor([0.0, 499.5, 999.0], dtype=torch.float64))
