"""Built-in rewards: closed-form values and gradients against autograd of direct definitions."""
import pytest
import torch
import torch.nn.functional as F

from rmmd_core.rewards import CallableReward, GrayscaleReward, LaplacianReward, as_reward


def grayscale_direct(x):
    w = torch.tensor([0.299, 0.587, 0.114], dtype=x.dtype).view(1, 3, 1, 1)
    gray = (x * w).sum(1, keepdim=True)
    return -((x - gray) ** 2).flatten(1).mean(1)


def laplacian_direct(x):
    p = F.pad(x, (1, 1, 1, 1), mode="replicate")
    avg = (p[..., :-2, 1:-1] + p[..., 2:, 1:-1] + p[..., 1:-1, :-2] + p[..., 1:-1, 2:]) / 4
    return -((x - avg) ** 2).flatten(1).mean(1)


@pytest.mark.parametrize("reward,direct,shape", [
    (GrayscaleReward(), grayscale_direct, (3, 3, 5, 7)),
    (GrayscaleReward(), grayscale_direct, (2, 3, 1, 13)),
    (LaplacianReward(), laplacian_direct, (3, 2, 5, 7)),
    (LaplacianReward(), laplacian_direct, (1, 1, 11, 3)),
    (LaplacianReward(), laplacian_direct, (2, 3, 1, 1)),
])
def test_closed_form_value_and_grad_match_autograd(reward, direct, shape):
    x = torch.randn(shape, dtype=torch.float64)
    x_nc = torch.randn(shape[0], shape[2], shape[3], shape[1], dtype=torch.float64).permute(0, 3, 1, 2)
    for inp in (x, x_nc):  # contiguous and a permuted (non-contiguous) view
        v, g = reward.value_and_grad(inp)
        xr = inp.detach().clone().requires_grad_(True)
        vr = direct(xr)
        (gr,) = torch.autograd.grad(vr.sum(), xr)
        torch.testing.assert_close(v, vr.detach(), rtol=1e-6, atol=1e-6)  # fp32 math inside
        torch.testing.assert_close(g, gr, rtol=1e-5, atol=1e-7)


def test_constant_image_scores_zero_and_gray_image_scores_zero():
    const = torch.full((2, 3, 4, 5), 0.7)
    assert float(LaplacianReward()(const).abs().max()) < 1e-7
    gray = torch.rand(2, 1, 4, 5).expand(2, 3, 4, 5)
    assert float(GrayscaleReward()(gray).abs().max()) < 1e-7


def test_rewards_reject_bad_shapes():
    with pytest.raises(ValueError, match="3 channels"):
        GrayscaleReward()(torch.randn(2, 4, 5, 5))
    with pytest.raises(ValueError, match=r"\(B, C, H, W\)"):
        LaplacianReward()(torch.randn(2, 5))
    with pytest.raises(ValueError, match="valid names"):
        as_reward("aesthetic")
    with pytest.raises(TypeError, match="callable"):
        CallableReward(3)


def test_callable_reward_uses_autograd():
    r = as_reward(lambda x, c: (x ** 3).sum(1))
    x = torch.randn(4, 3)
    v, g = r.value_and_grad(x)
    torch.testing.assert_close(v, (x ** 3).sum(1))
    torch.testing.assert_close(g, 3 * x ** 2)
