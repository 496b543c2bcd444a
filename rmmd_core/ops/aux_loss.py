"""K6, the auxiliary loss with its output gradient in one pass (method.md §c.6 step 8, §e K6): public entry
point, validation, fake kernel and autograd of ``rmmd_core::aux_loss`` (C++ CPU / CUDA) and
``rmmd_core::aux_loss_triton`` (ops/triton/aux_loss.py). The truth is ``ops/reference.py::aux_loss_ref``.
"""

from __future__ import annotations

import torch

from . import dispatch
from ._library import register_op
from .reference import aux_loss_ref

__all__ = ["aux_loss"]

_OP = "rmmd_core::aux_loss"
_OP_TRITON = "rmmd_core::aux_loss_triton"
_DATA_DTYPES = (torch.float32, torch.float64, torch.float16, torch.bfloat16)


def _validate(o, x0, m_ref, w) -> None:
    if not isinstance(o, torch.Tensor):
        raise TypeError(f"o must be a torch.Tensor, got {type(o).__name__}")
    if o.dim() < 1:
        raise ValueError("o must have a leading batch dimension (shape (B, ...)), got a 0-d tensor")
    if o.dtype not in _DATA_DTYPES:
        raise TypeError(f"o must be float32, float64, float16 or bfloat16, got {o.dtype}")
    for name, t in (("x0", x0), ("m_ref", m_ref)):
        if not isinstance(t, torch.Tensor):
            raise TypeError(f"{name} must be a torch.Tensor, got {type(t).__name__}")
        if t.shape != o.shape:
            raise ValueError(f"{name} must have o's shape {tuple(o.shape)}, got {tuple(t.shape)}")
        if t.dtype != o.dtype:
            raise TypeError(f"{name} must have o's dtype {o.dtype}, got {t.dtype}")
        if t.device != o.device:
            raise ValueError(f"{name} must be on o's device {o.device}, got {t.device}")
    if not isinstance(w, torch.Tensor):
        raise TypeError(f"w must be a (B,) torch.Tensor, got {type(w).__name__}")
    if w.dim() != 1 or w.shape[0] != o.shape[0]:
        raise ValueError(f"w must have shape (B,) = ({o.shape[0]},), got {tuple(w.shape)}")
    if not w.dtype.is_floating_point:
        raise TypeError(f"w must be a floating tensor (float64 recommended), got {w.dtype}")
    if w.device != o.device:
        raise ValueError(f"w must be on o's device {o.device}, got {w.device}")


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
    torch._check(o.dim() >= 1, lambda: "rmmd_core::aux_loss: o must have a leading batch dimension")
    torch._check(o.dtype in _DATA_DTYPES,
                 lambda: f"rmmd_core::aux_loss: o must be float32, float64, float16 or bfloat16, got {o.dtype}")
    for name, t in (("x0", x0), ("m_ref", m_ref)):
        torch._check(t.shape == o.shape, lambda: f"rmmd_core::aux_loss: {name} has shape {tuple(t.shape)} but o "
                                                 f"has shape {tuple(o.shape)}")
        torch._check(t.dtype == o.dtype, lambda: f"rmmd_core::aux_loss: {name} has dtype {t.dtype} but o has {o.dtype}")
        torch._check(t.device == o.device, lambda: f"rmmd_core::aux_loss: {name} is on {t.device} but o is on {o.device}")
    torch._check(w.dim() == 1 and w.shape[0] == o.shape[0],
                 lambda: f"rmmd_core::aux_loss: w must have shape (B,) = ({o.shape[0]},), got {tuple(w.shape)}")
    torch._check(w.dtype.is_floating_point, lambda: "rmmd_core::aux_loss: w must be a floating tensor")
    torch._check(w.device == o.device, lambda: f"rmmd_core::aux_loss: w is on {w.device} but o is on {o.device}")
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
