"""K1 "denoise + step": the raw network output to the next sampler state in one pass (method.md §e K1, K3).

Public entry point, validation, fake kernel and autograd of ``rmmd_core::denoise_step`` (C++ CPU / CUDA)
and ``rmmd_core::denoise_step_triton`` (ops/triton/denoise_step.py). The truth is
``ops/denoise_reference.py::denoise_step_ref``; the algebra (every parameterisation is affine in
``(z_t, F)``, so the step folds into two per-sample coefficients) is explained there.

The registered op takes the *folded* coefficients ``P = A + C a``, ``Q = C c`` (float64, computed by
:func:`denoise_step`) plus ``a, c`` for the optional x̂ output, so kernels do two multiply-adds per element.
"""

from __future__ import annotations

import torch

from . import _checks, dispatch
from ._library import register_op
from .denoise_reference import denoise_step_ref, fold_denoise_coefficients

__all__ = ["denoise_step"]

_OP = "rmmd_core::denoise_step"
_OP_TRITON = "rmmd_core::denoise_step_triton"
# Device-seed twins (one-element int64 seed / offset tensors, for CUDA-graph capture): same arity, same
# fake (its seed checks take ints or tensors) and autograd.
_OP_DEV = "rmmd_core::denoise_step_dev"
_OP_DEV_TRITON = "rmmd_core::denoise_step_dev_triton"
_COEFS = ("a", "c", "A", "C", "gamma")


def _validate(z_t, net_out, coefs: dict, seed, offset, want_x0):
    _checks.data(z_t, "z_t")
    _checks.like(net_out, "net_out", z_t, "z_t")
    for name, coef in coefs.items():
        _checks.per_sample(coef, name, z_t, "z_t")
    if not isinstance(want_x0, bool):
        raise TypeError(f"want_x0 must be a bool, got {type(want_x0).__name__}")
    return _checks.philox_key(seed, "seed", z_t, "z_t"), _checks.philox_key(offset, "offset", z_t, "z_t")


def denoise_step(z_t: torch.Tensor, net_out: torch.Tensor, a: torch.Tensor, c: torch.Tensor, A: torch.Tensor,
                 C: torch.Tensor, gamma: torch.Tensor, seed: int | torch.Tensor, offset: int | torch.Tensor = 0, *,
                 want_x0: bool = False, folded: tuple[torch.Tensor, torch.Tensor] | None = None,
                 backend: str | None = None):
    """Denoise + posterior / DDIM(eta) step with in-kernel Philox noise (method.md §e K1 / K3)::

        x̂         = a[b] z_t + c[b] F                                 (any parameterisation, x0_coefficients)
        z_s       = A[b] z_t + C[b] x̂ + gamma[b] n                    (posterior step, method.md §a.4)
                  = P[b] z_t + Q[b] F + gamma[b] n,   P = A + C a,  Q = C c   (folded in float64)

    ``n[i] = tl.randn(seed, offset + i)`` is the stream of :func:`~rmmd_core.ops.posterior_step`, so with the
    same seed this equals ``posterior_step(z_t, to_x0(F), A, C, gamma, seed, offset)`` up to rounding (and
    is at least as accurate: the fold runs in float64, and x̂ is never rounded to a low-precision dtype
    between the two halves). One read of z_t and F, one write of z_s (and of x̂ with ``want_x0``), instead
    of the unfused ~3 passes of the conversion plus the step. float32 math (float64 for float64 data).

    Autograd: grad_z_t = P[b] grad_z_s + a[b] grad_x0, grad_F = Q[b] grad_z_s + c[b] grad_x0; the
    coefficients, seed and offset are constants.

    Args:
        z_t: (B, ...) float32 / float64 / float16 / bfloat16: the state at time t.
        net_out: like z_t: the raw network output F (CFG-combined beforehand; CFG is affine too).
        a, c: (B,) floating: ``x̂ = a z_t + c F`` (``rmmd_core.parameterization.x0_coefficients``).
        A, C, gamma: (B,) floating: the posterior step (``rmmd_core.sampler.posterior_coefficients``).
            Compute all five in float64; they live on z_t's device.
        seed: Philox key, int in [0, 2**63). offset: first Philox counter, int in [0, 2**63). Either may be a
            one-element int64 tensor on z_t's device instead (a device seed for CUDA-graph capture, read by
            the kernel; bit-identical results; see :func:`~rmmd_core.ops.posterior_step`).
        want_x0: also write x̂ in the same pass (the last step of a rollout returns it).
        folded: ``fold_denoise_coefficients(a, c, A, C)`` computed beforehand, for callers that reuse
            constant coefficients (a rollout's grid steps); ignored by the reference backend, which folds
            itself. Passing other values than that fold gives other results.
        backend: None (``RMMD_CORE_BACKEND``, default auto), "auto", "reference", "cpu", "triton", "cuda".

    Returns:
        z_s (contiguous, like z_t), or ``(z_s, x0)`` when ``want_x0``.

    Raises:
        TypeError / ValueError: invalid arguments (the message names the argument).
        RuntimeError: an explicitly requested backend cannot run (the message says why).
    """
    coefs = dict(a=a, c=c, A=A, C=C, gamma=gamma)
    if folded is not None:
        if not isinstance(folded, (tuple, list)) or len(folded) != 2:
            raise TypeError(f"folded must be a (P, Q) pair of tensors, got {type(folded).__name__}")
        coefs.update(P=folded[0], Q=folded[1])
    seed, offset = _validate(z_t, net_out, coefs, seed, offset, want_x0)
    name = dispatch.resolve_backend("denoise_step", z_t, net_out, a, c, A, C, gamma, backend=backend)
    if name == "reference":
        z_s, x0 = denoise_step_ref(z_t, net_out, a, c, A, C, gamma, seed, offset, want_x0)
    else:
        P, Q = folded if folded is not None else fold_denoise_coefficients(a, c, A, C)
        keys = dispatch.device_philox_args(seed, offset, z_t.device)
        if keys is not None:
            seed, offset = keys
            op = (torch.ops.rmmd_core.denoise_step_dev_triton if name == "triton"
                  else torch.ops.rmmd_core.denoise_step_dev)
        else:
            op = torch.ops.rmmd_core.denoise_step_triton if name == "triton" else torch.ops.rmmd_core.denoise_step
        z_s, x0 = op(z_t, net_out, P, Q, gamma, a, c, seed, offset, want_x0)
    return (z_s, x0) if want_x0 else z_s


def _fake(z_t, net_out, P, Q, gamma, a, c, seed, offset, want_x0):
    # Mirrors csrc/bindings/denoise_step_checks.h; no data access.
    _checks.fake_data("denoise_step", z_t, "z_t")
    _checks.fake_like("denoise_step", net_out, "net_out", z_t, "z_t")
    for name, coef in (("P", P), ("Q", Q), ("gamma", gamma), ("a", a), ("c", c)):
        _checks.fake_per_sample("denoise_step", coef, name, z_t, "z_t")
    _checks.fake_philox("denoise_step", seed, "seed", z_t, "z_t")
    _checks.fake_philox("denoise_step", offset, "offset", z_t, "z_t")
    return z_t.new_empty(z_t.shape), z_t.new_empty(z_t.shape if want_x0 else (0,))


def _setup_context(ctx, inputs, output):
    _, _, P, Q, _, a, c, _, _, want_x0 = inputs
    ctx.want_x0 = want_x0
    need_z, need_f = ctx.needs_input_grad[0], ctx.needs_input_grad[1]
    # Only the (B,) coefficients the requested gradients need; no activations are saved.
    ctx.save_for_backward(P if need_z else None, Q if need_f else None,
                          a if need_z and want_x0 else None, c if need_f and want_x0 else None)


def _scaled(coef_grads, template: torch.Tensor) -> torch.Tensor | None:
    """sum_k coef_k[b] * grad_k in opmath (float64 for float64 data), rounded once; None if no terms."""
    terms = [(coef, g) for coef, g in coef_grads if coef is not None and g is not None and g.numel() > 0]
    if not terms:
        return None
    opmath = torch.float64 if template.dtype == torch.float64 else torch.float32
    shape = (template.shape[0],) + (1,) * (template.dim() - 1)
    total = sum(coef.to(opmath).reshape(shape) * g.to(opmath) for coef, g in terms)
    return total.to(template.dtype)


def _backward(ctx, grad_zs, grad_x0):
    """dz_s/dz_t = P, dz_s/dF = Q, dx0/dz_t = a, dx0/dF = c (per sample); coefficients get none."""
    P, Q, a, c = ctx.saved_tensors
    if not ctx.want_x0:
        grad_x0 = None  # the empty placeholder output carries no gradient
    template = grad_zs if grad_zs is not None else grad_x0
    grad_z = _scaled(((P, grad_zs), (a, grad_x0)), template) if ctx.needs_input_grad[0] else None
    grad_f = _scaled(((Q, grad_zs), (c, grad_x0)), template) if ctx.needs_input_grad[1] else None
    return grad_z, grad_f, None, None, None, None, None, None, None, None


registered_ops: tuple[str, ...] = (register_op(_OP, _OP_TRITON, _fake, _backward, _setup_context)
                                   + register_op(_OP_DEV, _OP_DEV_TRITON, _fake, _backward, _setup_context))
