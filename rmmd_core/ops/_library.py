"""Python-side registrations of the ``rmmd_core`` ops: fake (meta) kernels and autograd formulas.

The schemas and the CPU / CUDA kernels come from the C++ extension (csrc/bindings/); the Triton ops
(``rmmd_core::<op>_triton``) from ``ops/triton``. Without them there is nothing to register against,
so registration is skipped and the dispatcher falls back to ``ops/reference.py`` (see dispatch.py).
"""

from __future__ import annotations

import torch

from . import _checks

__all__ = ["op_defined", "register_fakes", "register_op", "registered_ops"]

_POSTERIOR_STEP = "rmmd_core::posterior_step"
_POSTERIOR_STEP_TRITON = "rmmd_core::posterior_step_triton"
# Device-seed twins (seed, offset: one-element int64 tensors read by the kernels; see dispatch.posterior_step).
# Same arity, so the fake (whose seed checks take ints or tensors) and the autograd formula are shared.
_POSTERIOR_STEP_DEV = "rmmd_core::posterior_step_dev"
_POSTERIOR_STEP_DEV_TRITON = "rmmd_core::posterior_step_dev_triton"


def op_defined(qualname: str) -> bool:
    """Whether ``torch.ops.<ns>.<name>`` has a schema (i.e. the extension that defines it is loaded)."""
    namespace, _, name = qualname.partition("::")
    return hasattr(getattr(torch.ops, namespace), name)


def _posterior_step_fake(z_t, x_hat, A, C, gamma, seed, offset):
    # Mirrors csrc/bindings/posterior_step_checks.h; no data access.
    _checks.fake_data("posterior_step", z_t, "z_t")
    _checks.fake_like("posterior_step", x_hat, "x_hat", z_t, "z_t")
    for coef, name in ((A, "A"), (C, "C"), (gamma, "gamma")):
        _checks.fake_per_sample("posterior_step", coef, name, z_t, "z_t")
    _checks.fake_philox("posterior_step", seed, "seed", z_t, "z_t")
    _checks.fake_philox("posterior_step", offset, "offset", z_t, "z_t")
    # new_empty, not empty_like: the kernels always return a contiguous tensor, even for strided z_t.
    return z_t.new_empty(z_t.shape)


def _posterior_step_setup_context(ctx, inputs, output):
    _, _, A, C, _, _, _ = inputs
    # Only the (B,) coefficients the requested gradients need; no activations are saved.
    ctx.save_for_backward(A if ctx.needs_input_grad[0] else None, C if ctx.needs_input_grad[1] else None)


def _scale_per_sample(grad: torch.Tensor, coef: torch.Tensor) -> torch.Tensor:
    # Same precision rule as the forward kernel: float32 math, float64 for float64 data.
    opmath = torch.float64 if grad.dtype == torch.float64 else torch.float32
    shape = (grad.shape[0],) + (1,) * (grad.dim() - 1)
    return (grad.to(opmath) * coef.to(opmath).reshape(shape)).to(grad.dtype)


def _posterior_step_backward(ctx, grad):
    """dz_s/dz_t = A[b], dz_s/dx_hat = C[b]; A, C, gamma, seed and offset get no gradient.

    The coefficients come from the noise schedule (method.md §a.4) and are treated as constants; the
    reference detaches them too, so every backend has the same gradients.
    """
    A, C = ctx.saved_tensors
    grad_z = _scale_per_sample(grad, A) if ctx.needs_input_grad[0] else None
    grad_x = _scale_per_sample(grad, C) if ctx.needs_input_grad[1] else None
    return grad_z, grad_x, None, None, None, None, None


def register_fakes(*pairs) -> tuple[str, ...]:
    """Fake kernels only, for the in-place bookkeeping ops (no autograd formula): ``pairs`` are
    ``(qualnames, fake)``; each defined op of ``qualnames`` gets ``fake``. Returns the registered qualnames."""
    done = []
    for qualnames, fake in pairs:
        for qualname in qualnames:
            if op_defined(qualname):
                torch.library.register_fake(qualname, fake)
                done.append(qualname)
    return tuple(done)


def register_op(op: str, op_triton: str, fake, backward, setup_context) -> tuple[str, ...]:
    """Register ``fake`` for the C++ op ``op`` and the same autograd formula on it and on its
    ``triton_op`` twin ``op_triton`` (which traces its own launcher for fakes). Ops missing from this
    build are skipped. Returns what was registered (for ``python -c`` diagnostics and tests)."""
    done = []
    if op_defined(op):
        torch.library.register_fake(op, fake)
        done.append(op)
    for qualname in (op, op_triton):
        if op_defined(qualname):
            torch.library.register_autograd(qualname, backward, setup_context=setup_context)
            done.append(qualname + " (autograd)")
    return tuple(done)


registered_ops: tuple[str, ...] = (
    register_op(_POSTERIOR_STEP, _POSTERIOR_STEP_TRITON, _posterior_step_fake, _posterior_step_backward,
                _posterior_step_setup_context)
    + register_op(_POSTERIOR_STEP_DEV, _POSTERIOR_STEP_DEV_TRITON, _posterior_step_fake, _posterior_step_backward,
                  _posterior_step_setup_context))
