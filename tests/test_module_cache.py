"""Cached parameter lists (rmmd_core.module_cache) and the step code that uses them: EMA, clipping.

The caches exist to take the per-step module-tree walks out of ``rmmd_core.step``; what matters is that
they are never stale: every test changes a network in some way and checks that the EMA / the clipped
gradients follow ``module.parameters()`` exactly as the uncached code would.
"""
import copy
import math

import pytest
import torch
from torch import nn

from rmmd_core import RMMD, Denoiser, RMMDConfig, step
from rmmd_core.engine import finish_update
from rmmd_core.module_cache import grads_of, tensors_of
from rmmd_core.toy import MLPNet


def _net():
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(3, 5), nn.Tanh(), nn.Sequential(nn.Linear(5, 4), nn.BatchNorm1d(4)))


def _same(a, b):
    return len(a) == len(b) and all(x is y for x, y in zip(a, b))


def test_lists_match_module_order_and_are_reused():
    net = _net()
    shared = nn.Linear(2, 2)
    net.append(shared)
    net.append(shared)  # the same module twice: listed once, as module.parameters() does
    c = tensors_of(net)
    assert _same(c.params, list(net.parameters())) and _same(c.buffers, list(net.buffers()))
    assert tensors_of(net) is c  # nothing changed: no rebuild


@pytest.mark.parametrize("change", ["setattr", "register", "direct_dict", "delete", "add_module", "buffer",
                                    "overwrite_on_conversion", "load_assign"])
def test_cache_is_rebuilt_whenever_the_tensors_change(change):
    net = _net()
    old = tensors_of(net)
    lin = net[0]
    if change == "setattr":
        lin.weight = nn.Parameter(torch.randn(5, 3))
    elif change == "register":
        lin.register_parameter("extra", nn.Parameter(torch.randn(2)))
    elif change == "direct_dict":  # FSDP2-style swap that bypasses the registration hooks
        lin._parameters["bias"] = nn.Parameter(torch.randn(5))
    elif change == "delete":
        del lin.bias
    elif change == "add_module":
        net[2].add_module("new", nn.Linear(4, 4))
    elif change == "buffer":
        net[2][1].running_mean = torch.randn(4)
    elif change == "overwrite_on_conversion":  # Module._apply writes _parameters directly
        torch.__future__.set_overwrite_module_params_on_conversion(True)
        try:
            net.to(torch.float64)
        finally:
            torch.__future__.set_overwrite_module_params_on_conversion(False)
    elif change == "load_assign":
        net.load_state_dict({k: v.clone() for k, v in net.state_dict().items()}, assign=True)
    new = tensors_of(net)
    assert new is not old
    assert _same(new.params, list(net.parameters())) and _same(new.buffers, list(net.buffers()))


def test_in_place_changes_keep_the_cache():
    net = _net()
    c = tensors_of(net)
    net.load_state_dict({k: v + 1 if v.is_floating_point() else v for k, v in net.state_dict().items()})
    net.requires_grad_(False)
    assert tensors_of(net) is c


def _clipped_reference(module, opt, grad_clip):
    """The former finish_update: clip_grad_norm_ over every parameter with a gradient, then step."""
    params = [p for p in module.parameters() if p.grad is not None]
    norm = float(torch.nn.utils.clip_grad_norm_(params, grad_clip if grad_clip is not None else math.inf))
    opt.step()
    return norm


@pytest.mark.parametrize("grad_clip,scale", [(1.0, 1e-3), (1.0, 10.0), (None, 10.0), (0.5, 1.0)])
def test_finish_update_is_bit_identical_to_clip_grad_norm(grad_clip, scale):
    nets = [_net(), _net()]
    opts = [torch.optim.Adam(n.parameters(), lr=1e-2) for n in nets]
    for _ in range(2):  # twice: the second call uses the cached lists
        torch.manual_seed(1)
        x = torch.randn(7, 3)
        for n in nets:
            (scale * n(x).square().mean()).backward()
        norm = finish_update(nets[0], opts[0], grad_clip)[0]
        ref = _clipped_reference(nets[1], opts[1], grad_clip)
        assert norm == ref
        for a, b in zip(nets[0].parameters(), nets[1].parameters()):
            assert torch.equal(a, b) and torch.equal(a.grad, b.grad)
        for o in opts:
            o.zero_grad(set_to_none=True)


def test_new_param_group_and_layer_are_clipped_and_stepped():
    """A layer added to the student after the first steps, trained through a new param group."""
    torch.manual_seed(0)
    teacher = Denoiser(MLPNet(2, hidden=16, depth=2), "vp_cosine", prediction="x0")
    eng = RMMD(teacher, config=RMMDConfig(num_steps=2, ema_decay=None, grad_clip=1e-4), sample_shape=(2,), seed=0)
    step(eng, batch_size=8)
    net = eng.student.net
    before = list(tensors_of(net).params)
    head = nn.Linear(2, 2)
    nn.init.eye_(head.weight)
    nn.init.zeros_(head.bias)
    inner_forward = net.forward
    net.head = head  # registered: the cached list must grow
    net.forward = lambda z, t: head(inner_forward(z, t))
    eng.student_optimizer.add_param_group({"params": list(head.parameters())})
    after = tensors_of(net).params
    assert len(after) == len(before) + 2 and _same(after, list(net.parameters()))
    w0 = head.weight.detach().clone()
    step(eng, batch_size=8)
    assert not torch.equal(head.weight, w0)  # stepped by the optimiser


def test_ema_follows_a_replaced_student_parameter():
    torch.manual_seed(0)
    teacher = Denoiser(MLPNet(2, hidden=16, depth=2), "vp_cosine", prediction="x0")
    eng = RMMD(teacher, config=RMMDConfig(num_steps=2, ema_decay=0.5), sample_shape=(2,), seed=0)
    step(eng, batch_size=8)  # builds the cached EMA plan
    name, p = next(iter(eng.student.net.named_parameters()))
    owner_path, leaf = name.rsplit(".", 1)
    owner = eng.student.net.get_submodule(owner_path)
    setattr(owner, leaf, nn.Parameter(torch.randn_like(p)))
    new = getattr(owner, leaf)
    ema_before = [e.detach().clone() for e in eng.ema.parameters()]
    eng.update_ema()
    for e_old, e_new, s in zip(ema_before, eng.ema.parameters(), eng.student.parameters()):
        torch.testing.assert_close(e_new, torch.lerp(e_old, s.detach(), 0.5), rtol=0, atol=1e-6)
    assert any(s is new for s in eng.student.parameters())


def test_ema_checkpoint_swap_rebuilds_the_plan():
    torch.manual_seed(0)
    teacher = Denoiser(MLPNet(2, hidden=16, depth=2), "vp_cosine", prediction="x0")
    eng = RMMD(teacher, config=RMMDConfig(num_steps=2, ema_decay=0.5), sample_shape=(2,), seed=0)
    step(eng, batch_size=8)
    eng.ema = copy.deepcopy(eng.ema)  # what a checkpoint load may do: a new EMA object
    with torch.no_grad():  # (the first step leaves the student at the teacher: move it by hand)
        for p in eng.student.parameters():
            p.add_(0.1)
    old = [e.detach().clone() for e in eng.ema.parameters()]
    eng.update_ema()
    for e_old, e_new, s in zip(old, eng.ema.parameters(), eng.student.parameters()):
        torch.testing.assert_close(e_new, torch.lerp(e_old, s.detach(), 0.5), rtol=0, atol=1e-6)
        assert not torch.equal(e_new, e_old)


def test_grads_of_filters_per_call():
    net = _net()
    assert grads_of(net) == []
    net(torch.randn(4, 3)).sum().backward()
    assert _same(grads_of(net), [p for p in net.parameters() if p.grad is not None])


def _train_side_by_side(*pairs, seed: int, steps: int = 5) -> None:
    """``steps`` optimiser steps of each (net, optimiser) pair on the same random batches."""
    torch.manual_seed(seed)
    for _ in range(steps):
        x = torch.randn(6, 3)
        for net, opt in pairs:
            opt.zero_grad(set_to_none=True)
            net(x).pow(3).mean().backward()
            opt.step()


def test_foreach_optimiser_is_multi_tensor_and_bit_identical_to_the_loop():
    """RMMDConfig(adam='foreach') asks for foreach Adam on every device; on CPU it matches the per-tensor loop
    bit for bit."""
    from rmmd_core.engine import make_optimizer

    net_a, net_b = _net(), _net()
    cfg = RMMDConfig(adam="foreach")
    opt_a = make_optimizer(net_a, cfg)
    assert opt_a.defaults["foreach"] is True
    opt_b = torch.optim.Adam(net_b.parameters(), lr=cfg.lr, betas=tuple(cfg.betas), eps=cfg.eps, foreach=False)
    _train_side_by_side((net_a, opt_a), (net_b, opt_b), seed=2)
    for a, b in zip(net_a.parameters(), net_b.parameters()):
        assert torch.equal(a, b)


def test_fused_adam_opt_in_matches_foreach_closely():
    """RMMDConfig(adam='fused') builds torch's fused Adam: the same updates up to rounding (a few ulp per
    step); unknown implementations are rejected by name."""
    from rmmd_core.engine import make_optimizer

    net_a, net_b = _net(), _net()
    opt_a = make_optimizer(net_a, RMMDConfig(adam="fused"))
    opt_b = make_optimizer(net_b, RMMDConfig(adam="foreach"))
    assert opt_a.defaults["fused"] is True and not opt_a.defaults["foreach"]
    _train_side_by_side((net_a, opt_a), (net_b, opt_b), seed=3)
    for a, b in zip(net_a.parameters(), net_b.parameters()):
        torch.testing.assert_close(a, b, rtol=1e-6, atol=1e-7)
    with pytest.raises(ValueError, match="adam must be one of"):
        RMMDConfig(adam="sgd")


def test_default_optimiser_is_the_fused_op_on_the_given_backend():
    """RMMDConfig() builds rmmd_core.adam.FusedAdam on the backend passed (the engine's): torch's updates up
    to its sqrt rounding."""
    from rmmd_core.adam import FusedAdam
    from rmmd_core.engine import make_optimizer

    net_a, net_b = _net(), _net()
    opt_a = make_optimizer(net_a, RMMDConfig(), backend="reference")
    opt_b = make_optimizer(net_b, RMMDConfig(adam="foreach"))
    assert type(opt_a) is FusedAdam and opt_a.backend == "reference"
    _train_side_by_side((net_a, opt_a), (net_b, opt_b), seed=4)
    assert opt_a.last_backend == "reference"
    for a, b in zip(net_a.parameters(), net_b.parameters()):
        torch.testing.assert_close(a, b, rtol=1e-6, atol=1e-7)
