"""K5, the RMMD cotangent assembly (method.md §c.6 step 7, §e K5): public entry point, validation,
fake kernel and autograd of ``rmmd_core::rmmd_cotangent`` (C++ CPU / CUDA) and
``rmmd_core::rmmd_cotangent_triton`` (ops/triton/rmmd_cotangent.py). The truth is
``ops/reference.py::rmmd_cotangent_ref``.
"""

from __future__ import annotations

import torch

from . import _checks, dispatch
from ._library import register_op
from .reference import COTANGENT_STATS, rmmd_cotangent_ref

__all__ = ["COTANGENT_STATS", "rmmd_cotangent"]

_OP = "rmmd_core::rmmd_cotangent"
_OP_TRITON = "rmmd_core::rmmd_cotangent_triton"
_N_STATS = len(COTANGENT_STATS)


def _validate(x0, m_stu, m_ref, g_R, anchor, w, lam, lam_reg, scale, dmd, dmd_eps):
    """Named TypeError / ValueError for every bad argument (the public API's contract)."""
    _checks.data(x0, "x0")
    for name, t, optional in (("m_stu", m_stu, False), ("m_ref", m_ref, False), ("g_R", g_R, True),
                              ("anchor", anchor, True)):
        _checks.like(t, name, x0, "x0", optional=optional)
    _checks.per_sample(w, "w", x0, "x0", what="a (B,) torch.Tensor")
    out = [_checks.finite_float(v, name)
           for name, v in (("lam", lam), ("lam_reg", lam_reg), ("scale", scale), ("dmd_eps", dmd_eps))]
    if not isinstance(dmd, bool):
        raise TypeError(f"dmd must be a bool, got {type(dmd).__name__}")
    if dmd and not out[3] > 0:
        raise ValueError(f"dmd_eps must be > 0 with dmd=True, got {dmd_eps}")
    return out


def rmmd_cotangent(x0: torch.Tensor, m_stu: torch.Tensor, m_ref: torch.Tensor, g_R: torch.Tensor | None,
                   anchor: torch.Tensor | None, w: torch.Tensor, lam: float = 0.0, lam_reg: float = 0.0,
                   scale: float = 1.0, dmd: bool = False, dmd_eps: float = 1e-4,
                   backend: str | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Fused RMMD cotangent with per-sample logging statistics (method.md §c.6 step 7, §e K5)::

        w_eff[b] = w[b] / (mabs(x0[b] - m_ref[b]) + dmd_eps)      if dmd (DMD normaliser, §d.4), else w[b]
        g        = scale * ( w_eff (m_stu - m_ref) - lam g_R + 2 lam_reg (x0 - anchor) )

    In one pass over the inputs (two with ``dmd``: the normaliser's per-sample reduction comes first).
    ``stats`` columns (``COTANGENT_STATS``), per sample, D = x0[0].numel(), d = m_stu - m_ref::

        surrogate      (1/D) <x0, w_eff d>                the MM surrogate's value
        l2             (1/D) ||x0 - anchor||^2            0 without anchor
        sq_norm_mm     ||scale w_eff d||^2                squared norms of the three terms of g
        sq_norm_reward ||scale lam g_R||^2                0 without g_R
        sq_norm_anchor ||2 scale lam_reg (x0 - anchor)||^2
        weight         w_eff

    Numerics: float32 math (float64 for float64 data), g rounded once to x0's dtype, sums accumulated in
    fp32 blocks (combined in double on CPU). Non-contiguous inputs are copied once by the C++ and Triton
    kernels (the reference reads them as they are); g is always contiguous.

    Autograd (all backends): the DMD normaliser is under stop-gradient; every other dependency of g and
    of the statistics is differentiated exactly (backward in plain PyTorch; the engine itself uses g as
    a cotangent and never differentiates this op).

    Args:
        x0: (B, ...) float32 / float64 / float16 / bfloat16: the student output x̂_0.
        m_stu, m_ref: like x0: the auxiliary's moment and the reference (teacher) moment.
        g_R: like x0, or None: reward gradient term, multiplied by ``lam`` (the engine passes dr/dx̂_0
            and lam·M·D, which is the λ ĝ_R of §c.6).
        anchor: like x0, or None: the frozen phase-1 student's output a.
        w: (B,) floating per-sample weight w(s) on x0's device (float64 recommended; read as fp32).
        lam, lam_reg, scale: finite Python floats (the engine uses scale = 1/(N·D)).
        dmd: apply the DMD-style normaliser; dmd_eps: its epsilon, > 0 (explicit on purpose).
        backend: None (``RMMD_CORE_BACKEND``, default auto), "auto", "reference", "cpu", "triton", "cuda".

    Returns:
        (g, stats): g like x0 (contiguous), stats (B, 6) float32 (float64 for float64 data).

    Raises:
        TypeError / ValueError naming the argument; RuntimeError when an explicit backend cannot run.
    """
    lam, lam_reg, scale, dmd_eps = _validate(x0, m_stu, m_ref, g_R, anchor, w, lam, lam_reg, scale, dmd, dmd_eps)
    tensors = [t for t in (x0, m_stu, m_ref, g_R, anchor, w) if t is not None]
    name = dispatch.resolve_backend("rmmd_cotangent", *tensors, backend=backend)
    args = (x0, m_stu, m_ref, g_R, anchor, w, lam, lam_reg, scale, dmd, dmd_eps)
    if name == "reference":
        return rmmd_cotangent_ref(*args)
    if name == "triton":
        return torch.ops.rmmd_core.rmmd_cotangent_triton(*args)
    return torch.ops.rmmd_core.rmmd_cotangent(*args)


# ------------------------------------------------------------------------------------------------
# torch.library registrations: fake (C++ op only; triton_ops trace their launcher) and autograd
# ------------------------------------------------------------------------------------------------

def _fake(x0, m_stu, m_ref, g_R, anchor, w, lam, lam_reg, scale, dmd, dmd_eps):
    _checks.fake_data("rmmd_cotangent", x0, "x0")
    for name, t in (("m_stu", m_stu), ("m_ref", m_ref), ("g_R", g_R), ("anchor", anchor)):
        _checks.fake_like("rmmd_cotangent", t, name, x0, "x0")
    _checks.fake_per_sample("rmmd_cotangent", w, "w", x0, "x0")
    torch._check(not dmd or dmd_eps > 0, lambda: f"rmmd_core::rmmd_cotangent: dmd_eps must be > 0, got {dmd_eps}")
    opmath = torch.float64 if x0.dtype == torch.float64 else torch.float32
    return x0.new_empty(x0.shape), x0.new_empty((x0.shape[0], _N_STATS), dtype=opmath)


def _setup_context(ctx, inputs, output):
    x0, m_stu, m_ref, g_R, anchor, w, lam, lam_reg, scale, dmd, dmd_eps = inputs
    _, stats = output
    ctx.consts = (lam, lam_reg, scale, dmd, dmd_eps, g_R is not None, anchor is not None)
    # w_eff is stats[:, 5]; the normaliser factor r = w_eff / w is recomputed in backward when dmd.
    ctx.save_for_backward(x0, m_stu, m_ref, g_R, anchor, w, stats[:, 5])


def _backward(ctx, grad_g, grad_stats):
    """Exact gradients of g and of the statistics (DMD normaliser r = w_eff / w held constant).

    With d = m_stu - m_ref, e = x0 - a, s = scale, per sample b and upstream (G, S = [S0..S5])::

        dL/dd     = s w_eff G + S0 w_eff x0 / D + 2 S2 s^2 w_eff^2 d        (m_stu: +, m_ref: -)
        dL/de     = 2 s lam_reg G + 2 S1 e / D + 8 S4 s^2 lam_reg^2 e       (x0: +, anchor: -)
        dL/dx0   += S0 w_eff d / D
        dL/dg_R   = -s lam G + 2 S3 s^2 lam^2 g_R
        dL/dw     = r (s <G, d> + S0 <x0, d> / D + 2 S2 s^2 w_eff ||d||^2 + S5)
    """
    x0, m_stu, m_ref, g_R, anchor, w, w_eff = ctx.saved_tensors
    lam, lam_reg, s, dmd, dmd_eps, has_r, has_a = ctx.consts
    opmath = torch.float64 if x0.dtype == torch.float64 else torch.float32
    B = x0.shape[0]
    D = max(x0[0].numel(), 1) if B > 0 else 1
    bshape = (B,) + (1,) * (x0.dim() - 1)
    G = grad_g.to(opmath) if grad_g is not None else torch.zeros(x0.shape, dtype=opmath, device=x0.device)
    S = grad_stats.to(opmath) if grad_stats is not None else torch.zeros(B, _N_STATS, dtype=opmath, device=x0.device)
    col = [S[:, k].reshape(bshape) for k in range(_N_STATS)]
    X, d = x0.to(opmath), m_stu.to(opmath) - m_ref.to(opmath)
    we = w_eff.to(opmath).reshape(bshape)
    grad_d = s * we * G + col[0] * we * X / D + 2 * col[2] * s * s * we * we * d
    grad_x0 = col[0] * we * d / D
    grad_a = grad_r = None
    if has_a:
        e = X - anchor.to(opmath)
        grad_e = 2 * s * lam_reg * G + 2 * col[1] * e / D + 8 * col[4] * s * s * lam_reg * lam_reg * e
        grad_x0 = grad_x0 + grad_e
        grad_a = (-grad_e).to(x0.dtype)
    if has_r:
        grad_r = (-s * lam * G + 2 * col[3] * s * s * lam * lam * g_R.to(opmath)).to(x0.dtype)
    flat = lambda t: t.reshape(B, -1).sum(1)  # noqa: E731
    grad_we = s * flat(G * d) + S[:, 0] * flat(X * d) / D + 2 * S[:, 2] * s * s * w_eff.to(opmath) * flat(d * d)
    ratio = 1.0
    if dmd:  # r = 1 / (mabs + eps), recomputed (B scalars) rather than divided out of w_eff (w may be 0)
        ratio = 1.0 / ((X - m_ref.to(opmath)).abs().reshape(B, -1).mean(1) + dmd_eps)
    grad_w = (ratio * (grad_we + S[:, 5])).to(w.dtype)
    return (grad_x0.to(x0.dtype), grad_d.to(x0.dtype), (-grad_d).to(x0.dtype), grad_r, grad_a, grad_w,
            None, None, None, None, None)


registered_ops: tuple[str, ...] = register_op(_OP, _OP_TRITON, _fake, _backward, _setup_context)
