"""The fused optimiser update: public entry point, validation and fake kernels of ``rmmd_core::adam_update``
(C++ CPU / CUDA) and its Triton twin ``rmmd_core::adam_update_triton`` (ops/triton/adam_update.py). The truth
is ``ops/adam_reference.py::adam_update_ref``, whose docstring gives the math.

One call does, for a whole list of parameters, what an engine step otherwise does in three multi-tensor
passes plus Adam's eight: the clip (``grads *= grad_scale``), torch's Adam update (optionally with L2 weight
decay) and the EMA of the updated weights (``ema <- lerp(ema, p, 1 - ema_decay)``). Every backend cuts the
tensors into fixed-size chunks and runs the chunk table in one parallel pass (one launch per dtype pair on
GPUs), so each value is read and written once. ``rmmd_core.adam.FusedAdam`` (the engine's default optimiser)
calls it.

Schema::

    adam_update(Tensor(a!)[] params, Tensor(b!)[] grads, Tensor(c!)[] exp_avgs, Tensor(d!)[] exp_avg_sqs,
                Tensor(e!)[] ema, float step_size, float beta1, float beta2, float eps,
                float bias_correction2_sqrt, float weight_decay, float grad_scale, float ema_decay) -> ()

Like an optimiser step it is bookkeeping, not differentiated: no autograd formula; the entry point runs
under ``torch.no_grad``.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from . import _checks, dispatch
from ._library import register_fakes
from .adam_reference import adam_update_ref

__all__ = ["adam_update", "check_adam_scalars"]

_OP = "rmmd_core::adam_update"
_OP_TRITON = "rmmd_core::adam_update_triton"
_DTYPES = "float32, float64, float16 or bfloat16"


def check_adam_scalars(step_size, beta1, beta2, eps, bias_correction2_sqrt, weight_decay, grad_scale,
                       ema_decay) -> tuple[float, ...]:
    """The scalar arguments as floats, or TypeError / ValueError naming the first bad one."""
    values = [_checks.finite_float(v, n) for v, n in (
        (step_size, "step_size"), (beta1, "beta1"), (beta2, "beta2"), (eps, "eps"),
        (bias_correction2_sqrt, "bias_correction2_sqrt"), (weight_decay, "weight_decay"),
        (grad_scale, "grad_scale"), (ema_decay, "ema_decay"))]
    step_size, beta1, beta2, eps, bc2, wd, scale, decay = values
    for ok, msg in ((step_size >= 0.0, f"step_size must be >= 0, got {step_size}"),
                    (0.0 <= beta1 < 1.0, f"beta1 must be in [0, 1), got {beta1}"),
                    (0.0 <= beta2 < 1.0, f"beta2 must be in [0, 1), got {beta2}"),
                    (eps >= 0.0, f"eps must be >= 0, got {eps}"),
                    (bc2 > 0.0, f"bias_correction2_sqrt must be > 0 (sqrt(1 - beta2^k), k >= 1), got {bc2}"),
                    (wd >= 0.0, f"weight_decay must be >= 0, got {wd}"),
                    (scale > 0.0, f"grad_scale must be > 0, got {scale}"),
                    (0.0 <= decay <= 1.0, f"ema_decay must be in [0, 1], got {decay}")):
        if not ok:
            raise ValueError(msg)
    return tuple(values)


def _lists(*lists) -> list[list]:
    """``(params, grads, exp_avgs, exp_avg_sqs, ema)`` as lists, or TypeError naming the one that is not."""
    return [_checks.tensor_list(v, n) for v, n in zip(lists, ("params", "grads", "exp_avgs", "exp_avg_sqs", "ema"))]


def _validate(params, grads, exp_avgs, exp_avg_sqs, ema):
    lists = _lists(params, grads, exp_avgs, exp_avg_sqs, ema)
    params = lists[0]
    for name, lst in zip(("grads", "exp_avgs", "exp_avg_sqs"), lists[1:4]):
        if len(lst) != len(params):
            raise ValueError(f"{name} must have one tensor per param ({len(params)}), got {len(lst)}")
    if lists[4] and len(lists[4]) != len(params):
        raise ValueError(f"ema must be empty or have one tensor per param ({len(params)}), got {len(lists[4])}")
    device = None
    for i, p in enumerate(params):
        _checks.tensor(p, f"params[{i}]")
        if p.dtype not in _checks.DATA_DTYPES:
            raise TypeError(f"params[{i}] must be {_DTYPES}, got {p.dtype}")
        device = p.device if device is None else device
        if p.device != device:
            raise ValueError(f"params[{i}] must be on params[0]'s device {device}, got {p.device}")
        for name, lst in zip(("grads", "exp_avgs", "exp_avg_sqs"), lists[1:4]):
            _checks.like(lst[i], f"{name}[{i}]", p, f"params[{i}]")
        if lists[4]:
            e = lists[4][i]
            _checks.tensor(e, f"ema[{i}]")
            if e.dtype not in _checks.DATA_DTYPES:
                raise TypeError(f"ema[{i}] must be {_DTYPES}, got {e.dtype}")
            if e.shape != p.shape:
                raise ValueError(f"ema[{i}] must have params[{i}]'s shape {tuple(p.shape)}, got {tuple(e.shape)}")
            if e.device != device:
                raise ValueError(f"ema[{i}] must be on params[{i}]'s device {device}, got {e.device}")
    return lists


@torch.no_grad()
def adam_update(params: Sequence[torch.Tensor], grads: Sequence[torch.Tensor], exp_avgs: Sequence[torch.Tensor],
                exp_avg_sqs: Sequence[torch.Tensor], ema: Sequence[torch.Tensor] = (), *, step_size: float,
                beta1: float, beta2: float, eps: float, bias_correction2_sqrt: float, weight_decay: float = 0.0,
                grad_scale: float = 1.0, ema_decay: float = 0.0, backend: str | None = None) -> None:
    """In place: clip scale, Adam and EMA for every parameter (``adam_reference.py`` has the math).

    Args:
        params: list / tuple of float32 / float64 / float16 / bfloat16 tensors on one device (may mix dtypes).
        grads, exp_avgs, exp_avg_sqs: one tensor per param with its shape, dtype and device (Adam's first and
            second moments, updated in place; ``grads`` is written only when ``grad_scale != 1``).
        ema: empty (no EMA) or one floating tensor per param, same shape and device, any floating dtype.
        step_size: ``lr / (1 - beta1^k)`` for step count k (>= 0).
        beta1, beta2: in [0, 1). eps: >= 0. bias_correction2_sqrt: ``sqrt(1 - beta2^k)`` (> 0).
        weight_decay: torch's L2 term ``g + weight_decay * p`` (>= 0; 0 skips it).
        grad_scale: the clip coefficient (> 0), applied to the gradient first and written back.
        ema_decay: the EMA's beta in [0, 1] (ignored when ``ema`` is empty).
        backend: None (``RMMD_CORE_BACKEND``, default auto), "auto", "reference", "cpu", "triton", "cuda".

    Strided tensors are updated through contiguous temporaries and copied back (still in place).

    Raises:
        TypeError / ValueError naming the argument (``params[i]``, ``exp_avgs[i]``, ``beta2``, ...);
        RuntimeError when an explicit backend cannot run.
    """
    lists = _lists(params, grads, exp_avgs, exp_avg_sqs, ema)
    scalars = check_adam_scalars(step_size, beta1, beta2, eps, bias_correction2_sqrt, weight_decay, grad_scale,
                                 ema_decay)
    if not lists[0] or not isinstance(lists[0][0], torch.Tensor):
        _validate(*lists)  # raises on anything but empty, matching lists
        if not lists[0]:
            return
    name = dispatch.resolve_backend("adam_update", lists[0][0], backend=backend)
    if name in ("cpu", "cuda"):
        # The C++ op checks every tensor before touching any (~0.05 us a tensor, against ~4 us for the Python
        # checks: a 100-tensor model's update would cost twice its kernel). When it refuses, the Python
        # validator re-checks to raise the documented TypeError / ValueError naming the argument.
        try:
            torch.ops.rmmd_core.adam_update(*lists, *scalars)
        except (RuntimeError, TypeError):
            _validate(*lists)
            raise
        return
    _validate(*lists)
    if name == "reference":
        adam_update_ref(*lists, *scalars)
    else:
        torch.ops.rmmd_core.adam_update_triton(*lists, *scalars)


def _fake(params, grads, exp_avgs, exp_avg_sqs, ema, step_size, beta1, beta2, eps, bias_correction2_sqrt,
          weight_decay, grad_scale, ema_decay):
    # Mirrors csrc/bindings/adam_update_checks.h; no data access.
    for name, lst in (("grads", grads), ("exp_avgs", exp_avgs), ("exp_avg_sqs", exp_avg_sqs)):
        torch._check(len(lst) == len(params), lambda: f"rmmd_core::adam_update: {name} has {len(lst)} tensors but "
                                                      f"params has {len(params)}")
    torch._check(len(ema) in (0, len(params)), lambda: f"rmmd_core::adam_update: ema has {len(ema)} tensors, "
                                                       f"expected 0 or {len(params)}")
    for i, p in enumerate(params):
        torch._check(p.dtype in _checks.DATA_DTYPES, lambda: f"rmmd_core::adam_update: params[{i}] must be {_DTYPES}")
        torch._check(p.device == params[0].device,
                     lambda: f"rmmd_core::adam_update: params[{i}] is on {p.device} but params[0] is on "
                             f"{params[0].device}")
        for name, lst in (("grads", grads), ("exp_avgs", exp_avgs), ("exp_avg_sqs", exp_avg_sqs)):
            t = lst[i]
            torch._check(t.shape == p.shape and t.dtype == p.dtype and t.device == p.device,
                         lambda: f"rmmd_core::adam_update: {name}[{i}] must match params[{i}] in shape, dtype and "
                                 "device")
        if ema:
            e = ema[i]
            torch._check(e.dtype in _checks.DATA_DTYPES and e.shape == p.shape and e.device == p.device,
                         lambda: f"rmmd_core::adam_update: ema[{i}] must be {_DTYPES} with params[{i}]'s shape "
                                 "and device")
    torch._check(step_size >= 0.0 and 0.0 <= beta1 < 1.0 and 0.0 <= beta2 < 1.0 and eps >= 0.0
                 and bias_correction2_sqrt > 0.0 and weight_decay >= 0.0 and grad_scale > 0.0
                 and 0.0 <= ema_decay <= 1.0, lambda: "rmmd_core::adam_update: a scalar argument is out of range")


# Fake kernels only: the op mutates its inputs and returns nothing; no autograd formula (module doc).
registered_ops: tuple[str, ...] = register_fakes(((_OP, _OP_TRITON), _fake))
