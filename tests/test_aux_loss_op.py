"""rmmd_core::aux_loss (method.md §c.6 step 8, §e K6): every backend against ops/reference.py::aux_loss_ref,
dtypes, strided inputs, gradients, opcheck, compile, input errors, and the engine's auxiliary loss
backpropagating exactly like the explicit formula."""

from __future__ import annotations

import pytest
import torch

from rmmd_core import ops
from rmmd_core.ops import dispatch
from rmmd_core.ops.reference import aux_loss_ref
from test_rmmd_cotangent_op import FUSED, LOWP, _assert_close, _device, _max_err, needs_cpu_op

HAS_TRITON = not ops.backend_reasons("aux_loss")["triton"]
SHAPES = [(1, 1), (3, 7), (5, 3, 11, 13), (2, 16411)]


def _inputs(shape, dtype, device="cpu"):
    o, x0, m_ref = (torch.randn(shape).to(device=device, dtype=dtype) for _ in range(3))
    w = (0.2 + torch.rand(shape[0], dtype=torch.float64)).to(device)
    return o, x0, m_ref, w


def _check(out, args, what):
    loss, grad = out
    o = args[0]
    opmath = torch.float64 if o.dtype == torch.float64 else torch.float32
    assert loss.shape == (o.shape[0],) and loss.dtype == opmath, what
    assert grad.shape == o.shape and grad.dtype == o.dtype and grad.is_contiguous(), what
    ref_loss, ref_grad = aux_loss_ref(*args)
    if o.dtype in LOWP:
        truth = aux_loss_ref(*(a.cpu().double() for a in args))
        _assert_close(grad, truth[1], atol=2 * _max_err(ref_grad, truth[1]) + 1e-9, rtol=0.0, what=f"{what} grad")
        _assert_close(loss, truth[0], atol=2 * _max_err(ref_loss, truth[0]) + 1e-6, rtol=1e-4, what=f"{what} loss")
    elif o.dtype == torch.float64:
        _assert_close(grad, ref_grad, atol=1e-14, rtol=1e-12, what=f"{what} grad")
        _assert_close(loss, ref_loss, atol=1e-12, rtol=1e-10, what=f"{what} loss")
    else:
        _assert_close(grad, ref_grad, atol=1e-9, rtol=1e-6, what=f"{what} grad")
        _assert_close(loss, ref_loss, atol=1e-6, rtol=2e-5, what=f"{what} loss")


@pytest.mark.parametrize("backend", FUSED)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.bfloat16, torch.float16], ids=str)
@pytest.mark.parametrize("shape", SHAPES, ids=str)
def test_matches_reference(shape, dtype, backend):
    args = _inputs(shape, dtype, _device(backend))
    _check(ops.aux_loss(*args, backend=backend), args, f"{backend} {shape} {dtype}")


@pytest.mark.parametrize("backend", FUSED)
@pytest.mark.parametrize("layout", ["transposed", "sliced_batch", "expanded"])
def test_non_contiguous_inputs(layout, backend):
    make = {"transposed": lambda: torch.randn(6, 9, 10).transpose(1, 2),
            "sliced_batch": lambda: torch.randn(12, 9, 10)[1::2],
            "expanded": lambda: torch.randn(6, 1, 10).expand(6, 9, 10)}[layout]
    dev = _device(backend)
    o, x0, m_ref = (make().to(dev) for _ in range(3))
    assert not o.is_contiguous()
    w = (0.5 + torch.rand(6, dtype=torch.float64)).to(dev)
    out = ops.aux_loss(o, x0, m_ref, w, backend=backend)
    dense = ops.aux_loss(o.contiguous(), x0.contiguous(), m_ref.contiguous(), w, backend=backend)
    assert torch.equal(out[0], dense[0]) and torch.equal(out[1], dense[1])
    _check(out, (o, x0, m_ref, w), f"{backend} {layout}")


def test_reference_gradient_is_the_gradient_of_the_mean_loss():
    o, x0, m_ref, w = _inputs((3, 4, 5), torch.float64)
    o.requires_grad_(True)
    loss, grad = aux_loss_ref(o, x0, m_ref, w)
    (auto,) = torch.autograd.grad(loss.mean(), o)
    torch.testing.assert_close(grad, auto, rtol=1e-12, atol=1e-15)


@pytest.mark.parametrize("backend", FUSED)
def test_gradients_match_reference_autograd(backend):
    args = _inputs((3, 4, 7), torch.float32, _device(backend))
    g_loss = torch.randn(3, device=args[0].device)
    g_grad = torch.randn(args[0].shape, device=args[0].device)

    def grads(name):
        leaves = [a.detach().clone().requires_grad_(True) for a in args]
        loss, grad = ops.aux_loss(*leaves, backend=name)
        ((loss * g_loss).sum() + (grad * g_grad).sum()).backward()
        return [leaf.grad for leaf in leaves]

    for arg, e, a in zip(("o", "x0", "m_ref", "w"), grads("reference"), grads(backend)):
        torch.testing.assert_close(a, e, rtol=1e-4, atol=1e-6, msg=lambda m: f"grad {arg}: {m}")


@needs_cpu_op
def test_gradcheck_cpu_op_float64():
    leaves = tuple(a.requires_grad_(True) for a in _inputs((2, 3, 4), torch.float64))
    assert torch.autograd.gradcheck(lambda *t: ops.aux_loss(*t, backend="cpu"), leaves)


@needs_cpu_op
@pytest.mark.parametrize("requires_grad", [False, True])
def test_opcheck_cpu(requires_grad):
    args = tuple(a.requires_grad_(requires_grad) for a in _inputs((3, 5, 7), torch.float32))
    torch.library.opcheck(torch.ops.rmmd_core.aux_loss.default, args)


@pytest.mark.interpreter
@pytest.mark.skipif(not HAS_TRITON, reason="triton backend unavailable")
def test_opcheck_triton():
    from test_posterior_step_triton import OPCHECK_UTILS

    args = tuple(a.requires_grad_(True) for a in _inputs((3, 5, 7), torch.float32, _device("triton")))
    torch.library.opcheck(torch.ops.rmmd_core.aux_loss_triton.default, args, test_utils=OPCHECK_UTILS)


@needs_cpu_op
def test_torch_compile_fullgraph(monkeypatch):
    monkeypatch.delenv(dispatch.BACKEND_ENV, raising=False)
    args = _inputs((4, 33), torch.float32)

    def fn(*a):
        loss, grad = ops.aux_loss(*a)
        return loss.mean(), grad * 3.0

    torch._dynamo.reset()
    got, expected = torch.compile(fn, fullgraph=True)(*args), fn(*args)
    assert torch.equal(got[0], expected[0]) and torch.equal(got[1], expected[1])


BAD = {
    "o_not_tensor": (dict(o=1.0), TypeError, "o"),
    "o_0d": (dict(o=torch.tensor(1.0)), ValueError, "o"),
    "o_int": (dict(o=torch.ones(3, 4, dtype=torch.int64)), TypeError, "o"),
    "x0_shape": (dict(x0=torch.randn(3, 5)), ValueError, "x0"),
    "m_ref_dtype": (dict(m_ref=torch.randn(3, 4).double()), TypeError, "m_ref"),
    "m_ref_device": (dict(m_ref=torch.empty(3, 4, device="meta")), ValueError, "m_ref"),
    "w_shape": (dict(w=torch.ones(3, 1)), ValueError, "w"),
    "w_batch": (dict(w=torch.ones(2)), ValueError, "w"),
    "w_int": (dict(w=torch.ones(3, dtype=torch.int32)), TypeError, "w"),
    "backend": (dict(backend="npu"), ValueError, "backend"),
}


@pytest.mark.parametrize("case", list(BAD))
def test_bad_inputs_name_the_argument(case):
    o, x0, m_ref, w = _inputs((3, 4), torch.float32)
    override, error, name = BAD[case]
    with pytest.raises(error) as info:
        ops.aux_loss(**{**dict(o=o, x0=x0, m_ref=m_ref, w=w), **override})
    message = str(info.value)
    assert message.startswith(name) or f" {name} " in message or f"{name}:" in message, message


@needs_cpu_op
@pytest.mark.parametrize("case,name", [("x0_shape", "x0"), ("m_ref_dtype", "m_ref"), ("w_batch", "w")])
def test_direct_op_checks_name_the_argument(case, name):
    o, x0, m_ref, w = _inputs((3, 4), torch.float32)
    kw = {**dict(o=o, x0=x0, m_ref=m_ref, w=w), **BAD[case][0]}
    with pytest.raises(RuntimeError, match=rf"\b{name}\b"):
        torch.ops.rmmd_core.aux_loss(kw["o"], kw["x0"], kw["m_ref"], kw["w"])


@pytest.mark.parametrize("backend", ["reference", pytest.param("cpu", marks=needs_cpu_op)])
def test_engine_aux_loss_backprops_like_the_explicit_formula(backend):
    from rmmd_core import RMMD, Denoiser, RMMDConfig, losses
    from test_mm_gradient import TinyNet

    torch.manual_seed(0)
    teacher = Denoiser(TinyNet(), "vp_cosine", prediction="eps")
    eng = RMMD(teacher, config=RMMDConfig(num_steps=3, weighting="snr"), sample_shape=(1, 5, 7), seed=1,
               backend=backend)
    with torch.no_grad():
        for p in eng.auxiliary.parameters():
            p.add_(0.05 * torch.randn_like(p))
    out = losses(eng, batch_size=4, return_intermediates=True)
    it = out.intermediates
    o, x0, m_ref = it["aux_out"], it["x0"].detach(), it["m_ref"]
    w = it["aux_weight"].to(o.dtype).view(-1, 1, 1, 1)
    explicit = (w * ((x0 - o) ** 2 + (m_ref - o) ** 2)).flatten(1).sum(1).mean() / x0[0].numel()
    assert float(out.aux_loss.detach()) == pytest.approx(float(explicit.detach()), rel=1e-5)
    params = list(eng.auxiliary.parameters())
    g_explicit = torch.autograd.grad(explicit, params, retain_graph=True)
    g_engine = torch.autograd.grad(out.aux_loss, params)
    for ge, gx in zip(g_engine, g_explicit):
        torch.testing.assert_close(ge, gx, rtol=1e-4, atol=1e-7)
    assert max(float(g.abs().max()) for g in g_explicit) > 0
    assert out.metrics["backend_aux_loss"] == backend
