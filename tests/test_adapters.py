"""diffusers UNet2DConditionModel, DiTTransformer2DModel and SD3Transformer2DModel (tiny random configs)
through from_diffusers -> step() (both phases) -> sample(); call conventions checked by probes."""
import math

import pytest
import torch

diffusers = pytest.importorskip("diffusers")

from rmmd_core import RMMD, Denoiser, RectifiedFlow, RMMDConfig, sample, step  # noqa: E402
from rmmd_core.adapters import KeywordCall, from_diffusers, scaled_time  # noqa: E402

B, TXT, L = 2, 16, 3


def unet_cond():
    return diffusers.UNet2DConditionModel(
        sample_size=8, in_channels=3, out_channels=3, layers_per_block=1, block_out_channels=(16, 32),
        down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"), up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"),
        norm_num_groups=8, cross_attention_dim=TXT, attention_head_dim=4)


def dit():
    return diffusers.DiTTransformer2DModel(
        num_attention_heads=2, attention_head_dim=8, in_channels=3, out_channels=6, num_layers=1,
        sample_size=8, patch_size=2, num_embeds_ada_norm=5, norm_num_groups=8)


def sd3():
    return diffusers.SD3Transformer2DModel(
        sample_size=8, patch_size=2, in_channels=4, num_layers=1, attention_head_dim=8, num_attention_heads=2,
        joint_attention_dim=TXT, caption_projection_dim=16, pooled_projection_dim=8, out_channels=4,
        pos_embed_max_size=8)


def text_cond(g):
    return {"encoder_hidden_states": torch.randn(B, L, TXT, generator=g)}


CASES = {
    # name: (model, scheduler config, per-sample shape, cond, null cond for CFG)
    "unet_cond": (unet_cond, {"prediction_type": "v_prediction", "beta_schedule": "scaled_linear",
                              "beta_start": 0.00085, "beta_end": 0.012}, (3, 8, 8), text_cond,
                  lambda c: {"encoder_hidden_states": torch.zeros_like(c["encoder_hidden_states"])}),
    "dit": (dit, {"prediction_type": "epsilon"}, (3, 8, 8),
            lambda g: {"class_labels": torch.tensor([1, 4])}, None),
    "sd3": (sd3, {"_class_name": "FlowMatchEulerDiscreteScheduler", "num_train_timesteps": 1000, "shift": 3.0},
            (4, 8, 8),
            lambda g: {**text_cond(g), "pooled_projections": torch.randn(B, 8, generator=g)},
            lambda c: {k: torch.zeros_like(v) for k, v in c.items()}),
}


@pytest.mark.parametrize("name", list(CASES))
def test_diffusers_model_through_step_and_sample(name):
    make, sched_cfg, shape, make_cond, null = CASES[name]
    torch.manual_seed(0)
    g = torch.Generator().manual_seed(0)
    cond = make_cond(g)
    teacher = from_diffusers(make(), sched_cfg, null_cond=null)
    expected = {"unet_cond": "v", "dit": "eps", "sd3": "flow"}[name]
    assert teacher.prediction == expected
    cfg = RMMDConfig(num_steps=2, ema_decay=0.9, guidance_scale=2.0 if null else None)
    eng = RMMD(teacher, config=cfg, sample_shape=shape, reward="grayscale" if shape[0] == 3 else "laplacian",
               seed=0)
    before = [p.detach().clone() for p in eng.student.parameters()]
    m = step(eng, cond=cond)  # phase 1, data-free
    assert m["skipped"] == 0.0 and math.isfinite(m["student_loss"]) and m["grad_norm"] > 0
    assert m["calls_teacher"] == 1  # CFG: conditional and null rows in one batched call
    assert any(not torch.equal(b, p) for b, p in zip(before, eng.student.parameters()))
    eng.start_phase2(reward_weight=0.5)
    m2 = step(eng, data=torch.randn(B, *shape, generator=g), cond=cond)  # phase 2, off-policy, reward + anchor
    assert m2["phase"] == "rmmd" and m2["skipped"] == 0.0 and m2["cot_norm_reward"] > 0
    out = sample(eng.student, (B, *shape), num_steps=2, cond=cond, generator=g)
    assert out.x0.shape == (B, *shape) and bool(torch.isfinite(out.x0).all()) and out.nfe == 2


def test_sd3_gets_timestep_by_keyword_scaled_to_1000():
    seen = {}
    model = sd3()
    model.register_forward_pre_hook(lambda mod, args, kwargs: seen.update(kwargs), with_kwargs=True)
    den = from_diffusers(model, {"num_train_timesteps": 1000})
    assert isinstance(den.schedule, RectifiedFlow) and isinstance(den.net, KeywordCall)
    g = torch.Generator().manual_seed(0)
    cond = {**text_cond(g), "pooled_projections": torch.randn(B, 8, generator=g)}
    den(torch.randn(B, 4, 8, 8), torch.tensor([0.25, 0.5], dtype=torch.float64), cond)
    assert set(seen) >= {"hidden_states", "timestep", "encoder_hidden_states", "pooled_projections"}
    torch.testing.assert_close(seen["timestep"], torch.tensor([250.0, 500.0]))


def test_unet_cond_gets_text_embedding_and_ddpm_index():
    seen = {}
    model = unet_cond()
    model.register_forward_pre_hook(lambda mod, args, kwargs: seen.update(args=args, kwargs=kwargs),
                                    with_kwargs=True)
    den = from_diffusers(model)  # DDPM defaults: linear betas, epsilon
    cond = text_cond(torch.Generator().manual_seed(0))
    den(torch.randn(B, 3, 8, 8), torch.tensor([0.0, 1.0], dtype=torch.float64), cond)
    torch.testing.assert_close(seen["args"][1], torch.tensor([0.0, 999.0]))
    assert seen["kwargs"]["encoder_hidden_states"] is cond["encoder_hidden_states"]


def test_adapter_bad_input():
    with pytest.raises(TypeError, match="from_diffusers does not know Linear"):
        from_diffusers(torch.nn.Linear(2, 2))
    with pytest.raises(ValueError, match="prediction_type 'bogus'"):
        from_diffusers(dit(), {"prediction_type": "bogus"})
    with pytest.raises(ValueError, match="sample must be a keyword-argument name"):
        KeywordCall(torch.nn.Identity(), sample="not a name")
    with pytest.raises(ValueError, match="scale must be > 0"):
        scaled_time(0)
    den = Denoiser(KeywordCall(sd3()), RectifiedFlow(), "flow", time_input=scaled_time(1000))
    with pytest.raises(ValueError, match=r"cond must not contain \['timestep'\]"):
        den(torch.randn(1, 4, 8, 8), 0.5, {"timestep": torch.ones(1)})
