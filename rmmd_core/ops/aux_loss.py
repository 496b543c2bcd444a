"""K6, the auxiliary loss with its output gradient in one pass (method.md §c.6 step 8, §e K6): public entry
point, validation, fake kernel and autograd of ``rmmd_core::aux_loss`` (C++ CPU / CUDA) and
``rmmd_core::aux_loss_triton`` (ops/triton/aux_loss.py). The truth is ``ops/reference.py::aux_loss_ref``.
"""

from __future__ import annotations

import torch

from . import _checks, dispatch
from ._library import register_op
from .reference import aux_loss_ref

__all__ = ["aux_loss"]

_OP = "rmmd_core::aux_loss"
_OP_TRITON = "rmmd_core::aux_loss_triton"


def _validate(o, x0, m_ref, w) -> None:
    _checks.data(o, "o")
    for name, t in (("x0", x0), ("m_ref", m_ref)):
        _checks.like(t, name, o, "o")
    _checks.per_sample(w, "w", o, "o", what="a (B,) torch.Tensor")


def aux_loss(o: torch.Tensor, x0: torch.Tensor, m_ref: torch.Tensor, w: torch.Tensor,
             backend: str | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-sample auxiliary loss and the gradient of its batch mean, in one pass (method.md §e K6)::

        loss[b] = w[b] (1/D) ( ||x0[b] - o[b]||^2 + ||m_ref[b] - o[b]||^2 )
        grad    = d(mean_b loss[b]) / do = (2 w[b] / (B D)) ((o - x0) + (o - m_ref))

    Numerics: float32 math (float64 for float64 data), grad rounded once to o's dtype, sums accumulated
    in fp32 blocks. Non-contiguous inputs are copied once by the C++ and Triton kernels; grad is always
    contiguous. Autograd: exact in every input, for both outputs (backward in plain PyTorch).

    Args:
        o: (B, ...) float32 / float64 / float16 / bfloat16: the auxiliary's output φ(z_s).
        x0, m_ref: like o: the regression targets sg(x̂_0) and sg(m_ref).
        w: (B,) floating per-sample weight w_aux(s) on o's device (float64 recommended; read as fp32).
        backend: None (``RMMD_CORE_BACKEND``, default auto), "auto", "reference", "cpu", "triton", "cuda".

    Returns:
        (loss, grad): loss (B,) float32 (float64 for float64 data); grad like o, contiguous.

    Raises:
        TypeError / ValueError naming the argument; RuntimeError when an explicit backend cannot run.
    """
    _validate(o, x0, m_ref, w)
    name = dispatch.resolve_backend("aux_loss", o, x0, m_ref, w, backend=backend)
    if name == "reference":
        return aux_loss_ref(o, x0, m_ref, w)
    if name == "triton":
        return torch.ops.rmmd_core.aux_loss_triton(o, x0, m_ref, w)
    return torch.ops.rmmd_core.aux_loss(o, x0, m_ref, w)


def _fake(o, x0, m_ref, w):
    _checks.fake_data("aux_loss", o, "o")
    for name, t in (("x0", x0), ("m_ref", m_ref)):
        _checks.fake_like("aux_loss", t, name, o, "o")
    _checks.fake_per_sample("aux_loss", w, "w", o, "o")
    opmath = torch.float64 if o.dtype == torch.float64 else torch.float32
    return o.new_empty((o.shape[0],), dtype=opmath), o.new_empty(o.shape)


def _setup_context(ctx, inputs, output):
    ctx.save_for_backward(*inputs)


def _backward(ctx, grad_loss, grad_grad):
    """With E = (o - x0) + (o - m_ref), c = 2 w / (B D), upstream (Gl (B,), Gg like o)::

        do     = Gl (2 w / D) E + 2 c Gg        dx0 = -Gl (2 w / D)(o - x0) - c Gg   (m_ref alike)
        dw[b]  = Gl[b] (1/D) sum((o - x0)^2 + (o - m_ref)^2) + (2 / (B D)) <Gg, E>[b]
    """
    o, x0, m_ref, w = ctx.saved_tensors
    opmath = torch.float64 if o.dtype == torch.float64 else torch.float32
    B = o.shape[0]
    D = max(o[0].numel(), 1) if B > 0 else 1
    bshape = (B,) + (1,) * (o.dim() - 1)
    O = o.to(opmath)
    e_x, e_m = O - x0.to(opmath), O - m_ref.to(opmath)
    w_op = w.detach().to(opmath)
    Gl = grad_loss.to(opmath) if grad_loss is not None else torch.zeros(B, dtype=opmath, device=o.device)
    Gg = grad_grad.to(opmath) if grad_grad is not None else torch.zeros_like(O)
    a = (Gl * 2 * w_op / D).reshape(bshape)
    c = (2.0 / (max(B, 1) * D) * w_op).reshape(bshape)
    d_o = a * (e_x + e_m) + 2 * c * Gg
    d_x = -a * e_x - c * Gg
    d_m = -a * e_m - c * Gg
    flat = lambda t: t.reshape(B, -1).sum(1)  # noqa: E731
    d_w = Gl * flat(e_x * e_x + e_m * e_m) / D + 2.0 / (max(B, 1) * D) * flat(Gg * (e_x + e_m))
    return d_o.to(o.dtype), d_x.to(o.dtype), d_m.to(o.dtype), d_w.to(w.dtype)


registered_ops: tuple[str, ...] = register_op(_OP, _OP_TRITON, _fake, _backward, _setup_context)
