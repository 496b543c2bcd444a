"""rmmd_core.adam.FusedAdam (the engine's default optimiser, one rmmd_core::adam_update pass per step): the
same trajectory as torch.optim.Adam up to torch's sqrt rounding; bit-identical across fused backends;
the folded clip and EMA equal the separate passes; torch's state dicts both ways; every fallback runs
torch's own step (bit for bit) with the scale and EMA around it; hooks run once."""
from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

from rmmd_core import ops
from rmmd_core.adam import FusedAdam

_REASONS = ops.backend_reasons("adam_update")
BACKENDS = ["reference", pytest.param("cpu", marks=pytest.mark.skipif(bool(_REASONS["cpu"]), reason="no CPU op"))]
DEVICES = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])


def _net(seed=0, dtype=torch.float32, device="cpu"):
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(7, 13), nn.GELU(), nn.Linear(13, 5), nn.LayerNorm(5)).to(device, dtype)


def _twins(n=2, **kw):
    nets = [_net(**kw) for _ in range(n)]
    return nets


def _grads(nets, step, skip=None):
    g = torch.Generator().manual_seed(1000 + step)
    first = nets[0]
    for i, ps in enumerate(zip(*(n.parameters() for n in nets))):
        x = torch.randn(ps[0].shape, generator=g, dtype=torch.float64).to(ps[0].device, ps[0].dtype) * (1 + step)
        for p in ps:
            p.grad = None if i == skip else x.clone()
    return first


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("betas,wd", [((0.0, 0.99), 0.0), ((0.9, 0.999), 0.01)])
def test_trajectory_matches_torch_adam(device, dtype, betas, wd):
    a, b = _twins(dtype=dtype, device=device)
    kw = dict(lr=3e-3, betas=betas, eps=1e-12, weight_decay=wd)
    oa, ob = torch.optim.Adam(a.parameters(), foreach=True, **kw), FusedAdam(b.parameters(), **kw)
    for k in range(12):
        _grads([a, b], k)
        oa.step()
        ob.step()
    assert ob.last_backend is not None and float(ob._count) == 12.0  # the fused path ran every step
    tol = dict(rtol=2e-6, atol=1e-7) if dtype == torch.float32 else dict(rtol=1e-13, atol=1e-15)
    for p, q in zip(a.parameters(), b.parameters()):
        torch.testing.assert_close(q, p, **tol)
        sa, sb = oa.state[p], ob.state[q]
        assert sa.keys() == sb.keys() and torch.equal(sa["step"], sb["step"]) and sa["step"].dtype == sb["step"].dtype
        torch.testing.assert_close(sb["exp_avg_sq"], sa["exp_avg_sq"], **tol)


def test_fused_backends_are_bit_identical_over_steps():
    if _REASONS["cpu"]:
        pytest.skip("no CPU op")
    nets = _twins()
    opts = [FusedAdam(n.parameters(), lr=1e-2, betas=(0.9, 0.99), backend=b) for n, b in zip(nets, ("reference", "cpu"))]
    emas = [[p.detach().clone() for p in n.parameters()] for n in nets]
    for k in range(6):
        _grads(nets, k)
        for o, e in zip(opts, emas):
            o.step(grad_scale=0.25 if k % 2 else 1.0, ema=e, ema_decay=0.9)
    assert [o.last_backend for o in opts] == ["reference", "cpu"]
    for p, q in zip(*(n.parameters() for n in nets)):
        assert torch.equal(p, q)
    assert all(torch.equal(x, y) for x, y in zip(*emas))


@pytest.mark.parametrize("backend", BACKENDS)
def test_folded_clip_and_ema_equal_the_separate_passes(backend):
    """step(grad_scale=c, ema=E, ema_decay=b) == grads *= c; step(); ema_update(E, params, b), bit for bit;
    the gradients keep the scaled values."""
    a, b = _twins()
    oa, ob = FusedAdam(a.parameters(), lr=1e-2, backend=backend), FusedAdam(b.parameters(), lr=1e-2, backend=backend)
    ea, eb = ([p.detach().clone() * 0.5 for p in n.parameters()] for n in (a, b))
    for k in range(4):
        _grads([a, b], k)
        torch._foreach_mul_([p.grad for p in a.parameters()], 0.3)
        oa.step()
        ops.ema_update(ea, list(a.parameters()), 0.8, backend=backend)
        ob.step(grad_scale=0.3, ema=eb, ema_decay=0.8)
        assert ob.ema_backend == backend
        for p, q in zip(a.parameters(), b.parameters()):
            assert torch.equal(p, q) and torch.equal(p.grad, q.grad)
        assert all(torch.equal(x, y) for x, y in zip(ea, eb))


@pytest.mark.parametrize("case", ["missing_grad", "amsgrad", "two_groups", "closure"])
def test_fallbacks_run_torchs_step_with_scale_and_ema_around_it(case):
    a, b = _twins()
    kw = dict(lr=1e-2, betas=(0.9, 0.99), amsgrad=case == "amsgrad")
    if case == "two_groups":
        groups = lambda n: [{"params": list(n[0].parameters())}, {"params": list(n[2].parameters()), "lr": 3e-3}]  # noqa: E731
        oa, ob = torch.optim.Adam(groups(a), foreach=True, **kw), FusedAdam(groups(b), **kw)
    else:
        oa, ob = torch.optim.Adam(a.parameters(), foreach=True, **kw), FusedAdam(b.parameters(), **kw)
    params_a = [p for g in oa.param_groups for p in g["params"]]
    ema = [p.detach().clone() for g in ob.param_groups for p in g["params"]]
    for k in range(3):
        _grads([a, b], k, skip=1 if case == "missing_grad" else None)
        torch._foreach_mul_([p.grad for p in a.parameters() if p.grad is not None], 0.5)
        expected_ema = [e.clone() for e in ema]
        if case == "closure":
            assert oa.step(lambda: torch.tensor(1.0)) == ob.step(lambda: torch.tensor(1.0), grad_scale=0.5, ema=ema,
                                                                 ema_decay=0.9)
        else:
            oa.step()
            ob.step(grad_scale=0.5, ema=ema, ema_decay=0.9)
        assert ob.last_backend is None  # torch's step ran
        for p, q in zip(a.parameters(), b.parameters()):
            assert torch.equal(p, q)
        torch._foreach_lerp_(expected_ema, [p.detach() for p in params_a], 0.1)
        for x, y in zip(ema, expected_ema):
            torch.testing.assert_close(x, y, rtol=0, atol=4 * torch.finfo(x.dtype).eps)


@pytest.mark.parametrize("direction", ["torch->fused", "fused->torch"])
def test_state_dicts_move_between_torch_adam_and_fused_adam(direction):
    a, b = _twins()
    kw = dict(lr=1e-2, betas=(0.0, 0.99), eps=1e-12)
    first = torch.optim.Adam(a.parameters(), foreach=True, **kw) if direction == "torch->fused" else \
        FusedAdam(a.parameters(), **kw)
    for k in range(3):
        _grads([a], k)
        first.step()
    b.load_state_dict(a.state_dict())
    second = FusedAdam(b.parameters(), **kw) if direction == "torch->fused" else \
        torch.optim.Adam(b.parameters(), foreach=True, **kw)
    second.load_state_dict(copy.deepcopy(first.state_dict()))  # torch shares same-device state tensors
    for k in range(3, 6):
        _grads([a, b], k)
        first.step()
        second.step()
    fused = second if direction == "torch->fused" else first
    assert fused.last_backend is not None  # the loaded counters were read and the fused path resumed
    for p, q in zip(a.parameters(), b.parameters()):
        torch.testing.assert_close(q, p, rtol=2e-6, atol=1e-7)
        assert torch.equal(first.state[p]["step"], second.state[q]["step"])
        assert float(second.state[q]["step"]) == 6.0


def test_hooks_run_once_and_bad_arguments_are_named():
    net = _net()
    opt = FusedAdam(net.parameters(), lr=1e-2)
    calls = []
    opt.register_step_pre_hook(lambda *a: calls.append("pre"))
    opt.register_step_post_hook(lambda *a: calls.append("post"))
    _grads([net], 0)
    opt.step(grad_scale=0.5)
    assert calls == ["pre", "post"]
    with pytest.raises(TypeError, match="foreach"):
        FusedAdam(net.parameters(), foreach=False)
    _grads([net], 1)
    with pytest.raises(ValueError, match="^grad_scale"):
        FusedAdam(net.parameters(), lr=1e-2, backend="reference").step(grad_scale=-1.0)
    with pytest.raises(ValueError, match="^ema must be empty or have one tensor per param"):
        FusedAdam(net.parameters(), lr=1e-2, backend="reference").step(ema=[torch.zeros(1)], ema_decay=0.5)


BACKENDS_DIRECT = ["reference"] + (["cpu"] if not _REASONS["cpu"] else [])


@pytest.mark.parametrize("backend", BACKENDS_DIRECT)
def test_refused_update_changes_nothing_and_names_the_argument(backend):
    """The C++ op is called without the entry point's checks (adam._adam_update): a refused update must still
    raise the entry point's named error and leave weights, moments and step counters as they were."""
    net = _net()
    opt = FusedAdam(net.parameters(), lr=1e-2, backend=backend)
    _grads([net], 0)
    opt.step()
    _grads([net], 1)
    before = copy.deepcopy((list(net.parameters()), opt.state_dict()))
    bad = [torch.zeros(3) for _ in net.parameters()]  # wrong shapes: the op refuses before writing anything
    with pytest.raises(ValueError, match=r"^ema\[0\] must have params\[0\]'s shape"):
        opt.step(ema=bad, ema_decay=0.5)
    with pytest.raises(ValueError, match="^ema_decay must be in"):
        opt.step(ema=[p.detach().clone() for p in net.parameters()], ema_decay=2.0)
    for p, q in zip(net.parameters(), before[0]):
        assert torch.equal(p, q)
    after = opt.state_dict()["state"]
    for k, st in before[1]["state"].items():
        assert all(torch.equal(st[n], after[k][n]) for n in ("step", "exp_avg", "exp_avg_sq"))
    opt.step()  # and the next good step resumes the fused path at the right count
    assert opt.last_backend == backend and float(opt._count) == 2.0
    assert all(float(st["step"]) == 2.0 for st in opt.state.values())


def test_replaced_parameters_and_missing_gradients_are_rechecked_every_step():
    """_fused_lists checks a parameter's fixed properties once per parameter list (by identity): replacing
    one in the group re-checks (a complex one falls back to torch's step); a missing gradient is seen at
    once."""
    net = _net()
    opt = FusedAdam(net.parameters(), lr=1e-2)
    _grads([net], 0)
    opt.step()
    assert opt.last_backend is not None
    _grads([net], 1, skip=2)
    opt.step()
    assert opt.last_backend is None  # torch's step: a gradient is missing
    params = opt.param_groups[0]["params"]
    z = nn.Parameter(torch.randn(3, dtype=torch.complex64))
    params[0] = z
    _grads([net], 2)
    z.grad = torch.randn_like(z)
    opt.step()
    assert opt.last_backend is None  # complex: torch's step
    params[0] = p0 = nn.Parameter(torch.randn(7))
    p0.grad = torch.randn(7)
    opt.step()
    assert opt.last_backend is None  # counters now differ (the new parameter's is fresh): torch's step again


def test_zero_grad_fast_path_is_torchs():
    net = _net()
    opt = FusedAdam(net.parameters(), lr=1e-2)
    _grads([net], 0)
    opt.zero_grad()
    assert all(p.grad is None for p in net.parameters())
    _grads([net], 1)
    opt.zero_grad(set_to_none=False)  # torch's own path: zeroed in place
    assert all(p.grad is not None and not p.grad.any() for p in net.parameters())
    _grads([net], 2)
    with torch.profiler.profile() as prof:  # under the profiler: torch's, with its record_function range
        opt.zero_grad()
    assert all(p.grad is None for p in net.parameters())
    assert any("zero_grad" in e.name for e in prof.events())


def _engine(**cfg):
    from rmmd_core import RMMD, Denoiser, RMMDConfig
    from rmmd_core.toy import MLPNet

    torch.manual_seed(3)
    teacher = Denoiser(MLPNet(2, hidden=16, depth=2), "vp_cosine", prediction="x0")
    return RMMD(teacher, config=RMMDConfig(num_steps=2, ema_decay=0.8, lr=1e-2, **cfg), sample_shape=(2,),
                reward=lambda x, c=None: x[:, 0], seed=0)


@pytest.mark.parametrize("clip", [None, 1e-3])
def test_engine_folds_clip_and_ema_into_the_optimiser_pass(clip):
    """The default engine (FusedAdam, EMA and clip folded) against adam='foreach' (torch's Adam, separate
    grad_scale and EMA passes) over real steps: the same weights, EMA and metrics up to torch's sqrt rounding."""
    from rmmd_core import step

    fused, plain = _engine(grad_clip=clip), _engine(grad_clip=clip, adam="foreach")
    assert fused.ema_fold() is not None and plain.ema_fold() is None
    for _ in range(4):
        mf, mp = step(fused, batch_size=8), step(plain, batch_size=8)
    assert mf["backend_adam_update"] == mf["backend_ema_update"] == "cpu" or bool(_REASONS["cpu"])
    assert "backend_adam_update" not in mp
    if clip is not None:
        assert "backend_grad_scale" in mf and "backend_grad_scale" in mp
    for x, y in ((fused.student, plain.student), (fused.ema, plain.ema), (fused.auxiliary, plain.auxiliary)):
        moved = False
        for p, q in zip(x.parameters(), y.parameters()):
            torch.testing.assert_close(p, q, rtol=1e-5, atol=1e-6)
        for p, s in zip(fused.ema.parameters(), fused.student.parameters()):
            moved |= not torch.equal(p, s)
        assert moved  # the EMA lags the student
    for k in ("aux_loss", "student_loss", "grad_norm", "grad_norm_aux"):
        assert mf[k] == pytest.approx(mp[k], rel=1e-4, abs=1e-9)


def test_ema_is_not_folded_when_the_lists_differ():
    """A user optimiser, or a FusedAdam over only part of the student, keeps the separate EMA pass."""
    eng = _engine()
    assert eng.ema_fold() is not None
    params = list(eng.student.parameters())
    eng.student_optimizer = FusedAdam(params[1:], lr=1e-2)
    assert eng.ema_fold() is None
    eng.student_optimizer = torch.optim.Adam(params, lr=1e-2)
    assert eng.ema_fold() is None
    from rmmd_core import step

    before = [p.detach().clone() for p in eng.ema.parameters()]
    for _ in range(2):  # the first step's student gradient is 0 (student = teacher = auxiliary)
        m = step(eng, batch_size=4)
    assert "backend_ema_update" in m and any(not torch.equal(a, b) for a, b in zip(before, eng.ema.parameters()))
