"""rmmd_core.adam.ForeachAdam: the same weights and optimiser state as torch.optim.Adam(foreach=True), bit
for bit, on its fast path and across every fallback (missing gradients, lr changes, state loads, closures,
weight decay); hooks run once per step."""
from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

from rmmd_core.adam import ForeachAdam

DEVICES = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])


def _pair(dtype=torch.float32, device="cpu", seed=0, **kw):
    torch.manual_seed(seed)
    net = nn.Sequential(nn.Linear(7, 13), nn.GELU(), nn.Linear(13, 5), nn.LayerNorm(5)).to(device, dtype)
    twin = nn.Sequential(nn.Linear(7, 13), nn.GELU(), nn.Linear(13, 5), nn.LayerNorm(5)).to(device, dtype)
    twin.load_state_dict(net.state_dict())
    return net, twin, torch.optim.Adam(net.parameters(), foreach=True, **kw), ForeachAdam(twin.parameters(), **kw)


def _grads(a: nn.Module, b: nn.Module, step: int, skip: int | None = None) -> None:
    """The same fresh random gradients on both (parameter ``skip`` gets none)."""
    g = torch.Generator().manual_seed(1000 + step)
    for i, (p, q) in enumerate(zip(a.parameters(), b.parameters())):
        if i == skip:
            p.grad = q.grad = None
            continue
        x = torch.randn(p.shape, generator=g, dtype=torch.float64).to(p.device, p.dtype) * (1 + step)
        p.grad, q.grad = x.clone(), x.clone()


def _assert_same(a, b, oa, ob):
    for p, q in zip(a.parameters(), b.parameters()):
        assert torch.equal(p, q)
        sa, sb = oa.state.get(p, {}), ob.state.get(q, {})
        assert sa.keys() == sb.keys()
        for k in sa:
            assert torch.equal(sa[k], sb[k]), k


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("betas", [(0.0, 0.99), (0.9, 0.999)])
def test_bit_identical_to_torch_foreach_adam(device, dtype, betas):
    a, b, oa, ob = _pair(dtype, device, lr=3e-3, betas=betas, eps=1e-12)
    for k in range(12):
        _grads(a, b, k)
        oa.step()
        ob.step()
        _assert_same(a, b, oa, ob)
    assert ob._count is not None and float(ob._count) == 12.0  # the fast path ran


def test_fallbacks_and_returns_stay_identical():
    """A step with a missing gradient (torch's step: that counter lags), lr / eps changed between steps, and
    a closure: every step still equals torch's; the fast path resumes only when the counters agree."""
    a, b, oa, ob = _pair(lr=1e-2, betas=(0.0, 0.99), eps=1e-12)
    for k in range(10):
        _grads(a, b, k, skip=1 if k == 3 else None)
        for o in (oa, ob):
            o.param_groups[0]["lr"] = 1e-2 / (1 + k)
            o.param_groups[0]["eps"] = 1e-8 if k >= 6 else 1e-12
        oa.step()
        ob.step()
        _assert_same(a, b, oa, ob)
    assert ob._count is None  # unequal step counters since k = 3: torch's own step every time
    a, b, oa, ob = _pair(lr=1e-2)
    _grads(a, b, 0)
    la = oa.step(lambda: torch.tensor(1.5))
    lb = ob.step(lambda: torch.tensor(1.5))
    assert float(la) == float(lb) == 1.5
    _assert_same(a, b, oa, ob)


def test_weight_decay_and_groups_use_torchs_step():
    a, b, oa, ob = _pair(lr=1e-2, weight_decay=0.1)
    for k in range(4):
        _grads(a, b, k)
        oa.step()
        ob.step()
        _assert_same(a, b, oa, ob)
    assert ob._count is None


@pytest.mark.parametrize("direction", ["torch->ours", "ours->torch"])
def test_state_dict_round_trip(direction):
    """Checkpoints move between the classes; loading resets the tracked count (read once afterwards)."""
    a, b, oa, ob = _pair(lr=2e-3, betas=(0.0, 0.99), eps=1e-12)
    for k in range(5):
        _grads(a, b, k)
        oa.step()
        ob.step()
    if direction == "torch->ours":
        ob.load_state_dict(copy.deepcopy(oa.state_dict()))  # deep: a loaded state shares the tensors
        assert ob._count is None
    else:
        oa.load_state_dict(copy.deepcopy(ob.state_dict()))
    for k in range(5, 9):
        _grads(a, b, k)
        oa.step()
        ob.step()
        _assert_same(a, b, oa, ob)
    assert float(ob._count) == 9.0


def test_hooks_run_once_per_step_and_bad_arguments():
    _, b, _, ob = _pair(lr=1e-3)
    calls = []
    ob.register_step_pre_hook(lambda *a: calls.append("pre"))
    ob.register_step_post_hook(lambda *a: calls.append("post"))
    torch.optim.Adam([nn.Parameter(torch.ones(2))])  # wraps torch.optim.Adam.step too
    for k in range(3):
        for p in b.parameters():
            p.grad = torch.ones_like(p)
        ob.step()
    assert calls == ["pre", "post"] * 3
    with pytest.raises(TypeError, match="foreach is fixed"):
        ForeachAdam(b.parameters(), foreach=False)
    with pytest.raises(TypeError, match="fused is fixed"):
        ForeachAdam(b.parameters(), fused=True)
