"""The multi-tensor gradient-clipping ops: public entry points, validation and fake kernels of
``rmmd_core::grad_norm`` (C++ CPU / CUDA, schema ``Tensor[] tensors -> Tensor``), ``rmmd_core::grad_scale``
(``Tensor(a!)[] tensors, Tensor coef -> ()``) and their Triton twins ``rmmd_core::grad_norm_triton`` /
``rmmd_core::grad_scale_triton`` (ops/triton/grad_norm.py). The op is called ``grad_scale`` without the
trailing underscore because torch's functionalization reads ``foo_`` as the in-place variant of a functional
``foo``; the Python entry point is ``grad_scale_``. The truth is ``ops/grad_norm_reference.py``.

Together they are ``clip_grad_norm_``: ``norm = grad_norm(grads)``, ``coef = min(c / (norm + 1e-6), 1)``,
``grad_scale_(grads, coef)``. As ``ema_update`` does, every backend cuts all tensors into fixed-size chunks
and processes the chunk table in one parallel pass (one launch per dtype on GPUs), instead of one kernel
per tensor (torch's foreach ops on CPU are a per-tensor loop). ``rmmd_core.engine.backward_checks`` uses
them on the single-process path.

Gradient bookkeeping is not differentiated (the gradients are leaves of no graph; torch's
``get_total_norm`` is likewise used under no_grad by clip_grad_norm_): there is no autograd formula, the
entry points run under ``torch.no_grad`` and read the tensors detached.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from . import _checks, dispatch
from ._library import register_fakes
from .grad_norm_reference import grad_norm_ref, grad_scale_ref, norm_dtype

__all__ = ["grad_norm", "grad_scale_"]

_NORM, _NORM_TRITON = "rmmd_core::grad_norm", "rmmd_core::grad_norm_triton"
_SCALE, _SCALE_TRITON = "rmmd_core::grad_scale", "rmmd_core::grad_scale_triton"


def _validate_tensors(tensors) -> list[torch.Tensor]:
    if isinstance(tensors, torch.Tensor) or not isinstance(tensors, Sequence):
        raise TypeError(f"tensors must be a list or tuple of torch.Tensor, got {type(tensors).__name__}")
    tensors = list(tensors)
    device = None
    dtypes = _checks.DATA_DTYPES
    for i, t in enumerate(tensors):  # kept lean: this runs per tensor, ~100 tensors per call in a step
        if not isinstance(t, torch.Tensor):
            _checks.tensor(t, f"tensors[{i}]")
        if t.dtype not in dtypes:
            raise TypeError(f"tensors[{i}] must be float32, float64, float16 or bfloat16, got {t.dtype}")
        if _is_dtensor(t):
            raise TypeError(f"tensors[{i}] is a DTensor: pass its local shard (to_local()) or use torch's "
                            "get_total_norm / clip_grads_with_norm_, which reduce across ranks")
        if device is None:
            device = t.device
        elif t.device != device:
            raise ValueError(f"tensors[{i}] must be on tensors[0]'s device {device}, got {t.device}")
    return tensors


def _is_dtensor(t: torch.Tensor) -> bool:
    # DTensor is a tensor subclass; a type check avoids importing torch.distributed here.
    cls = type(t)
    return cls is not torch.Tensor and cls is not torch.nn.Parameter and cls.__name__ == "DTensor"


@torch.no_grad()
def grad_norm(tensors: Sequence[torch.Tensor], backend: str | None = None) -> torch.Tensor:
    """Global L2 norm of a tensor list: ``sqrt(sum_i sum_j tensors[i][j]^2)``.

    What ``torch.nn.utils.get_total_norm(tensors, 2.0)`` computes, with squares accumulated in float64
    (torch takes per-tensor float32 norms: the two differ by ~1e-7 relative) and the chunk partials added
    in a fixed order, so the result does not depend on the thread count or the launch configuration. Any
    inf element gives inf, any NaN element NaN (a non-finite norm is the engine's non-finite-gradient
    check). Float64 squares overflow only for elements above ~1e154.

    Args:
        tensors: list / tuple of floating tensors (float32 / float64 / float16 / bfloat16, may mix; any
            shapes and strides, non-contiguous ones are read through a contiguous copy) on one device.
        backend: None (``RMMD_CORE_BACKEND``, default auto), "auto", "reference", "cpu", "triton", "cuda".

    Returns:
        0-d tensor on the tensors' device: float32, or float64 when any input is float64. An empty list
        gives a float32 zero on the CPU (there is no device to take).

    Raises:
        TypeError / ValueError naming the argument (``tensors`` / ``tensors[i]``); RuntimeError when an
        explicit backend cannot run.
    """
    tensors = _validate_tensors(tensors)
    if not tensors:
        return torch.zeros((), dtype=torch.float32)
    # no detach: under no_grad nothing is recorded, and the kernels only read the values
    name = dispatch.resolve_backend("grad_norm", tensors[0], backend=backend)
    if name == "reference":
        return grad_norm_ref(tensors)
    if name == "triton":
        return torch.ops.rmmd_core.grad_norm_triton(tensors)
    return torch.ops.rmmd_core.grad_norm(tensors)


@torch.no_grad()
def grad_scale_(tensors: Sequence[torch.Tensor], coef: torch.Tensor, backend: str | None = None) -> None:
    """In place, for every i: ``tensors[i] <- tensors[i] * coef``.

    ``coef`` is a 0-d (or 1-element) floating tensor on the tensors' device, so on a GPU nothing is read
    on the host. Each product is computed in the tensor's math type (float32; float64 for float64
    tensors) with ``coef`` converted to it first, and rounded once: bit-identical to
    ``torch._foreach_mul_(tensors, coef)`` for every dtype. Strided tensors are scaled through a
    contiguous temporary and copied back (still in place for the caller).

    Args:
        tensors: list / tuple of floating tensors (float32 / float64 / float16 / bfloat16, may mix) on one
            device, updated in place.
        coef: 0-d or 1-element float32 / float64 / float16 / bfloat16 tensor on that device.
        backend: None (``RMMD_CORE_BACKEND``, default auto), "auto", "reference", "cpu", "triton", "cuda".

    Raises:
        TypeError / ValueError naming the argument (``tensors[i]`` / ``coef``); RuntimeError when an
        explicit backend cannot run.
    """
    tensors = _validate_tensors(tensors)
    _checks.tensor(coef, "coef", "a 0-d torch.Tensor (not a Python number: it stays on the device)")
    if coef.numel() != 1:
        raise ValueError(f"coef must be a 0-d or 1-element tensor, got shape {tuple(coef.shape)}")
    if coef.dtype not in _checks.DATA_DTYPES:
        raise TypeError(f"coef must be float32, float64, float16 or bfloat16, got {coef.dtype}")
    if tensors and coef.device != tensors[0].device:
        raise ValueError(f"coef must be on tensors[0]'s device {tensors[0].device}, got {coef.device}")
    if not tensors:
        return
    coef = coef.detach()
    name = dispatch.resolve_backend("grad_scale", tensors[0], coef, backend=backend)
    if name == "reference":
        grad_scale_ref(tensors, coef)
    elif name == "triton":
        torch.ops.rmmd_core.grad_scale_triton(tensors, coef)
    else:
        torch.ops.rmmd_core.grad_scale(tensors, coef)


def _fake_tensors(op: str, tensors) -> None:
    for i, t in enumerate(tensors):
        torch._check(t.dtype in _checks.DATA_DTYPES,
                     lambda: f"rmmd_core::{op}: tensors[{i}] must be float32, float64, float16 or bfloat16")
        torch._check(t.device == tensors[0].device,
                     lambda: f"rmmd_core::{op}: tensors[{i}] is on {t.device} but tensors[0] is on {tensors[0].device}")


def _norm_fake(tensors):
    _fake_tensors("grad_norm", tensors)
    if not tensors:
        return torch.zeros((), dtype=torch.float32)
    return tensors[0].new_empty((), dtype=norm_dtype(tensors))


def _scale_fake(tensors, coef):
    _fake_tensors("grad_scale", tensors)
    torch._check(coef.numel() == 1,
                 lambda: f"rmmd_core::grad_scale: coef must be a 0-d or 1-element tensor, got {tuple(coef.shape)}")
    torch._check(coef.dtype in _checks.DATA_DTYPES,
                 lambda: f"rmmd_core::grad_scale: coef must be float32, float64, float16 or bfloat16")
    torch._check(not tensors or coef.device == tensors[0].device,
                 lambda: f"rmmd_core::grad_scale: coef is on {coef.device} but tensors[0] is not")


# Fake kernels only: no autograd formula (see module doc).
registered_ops: tuple[str, ...] = register_fakes(((_NORM, _NORM_TRITON), _norm_fake),
                                                ((_SCALE, _SCALE_TRITON), _scale_fake))
