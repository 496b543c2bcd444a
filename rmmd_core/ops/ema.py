"""K9, the multi-tensor EMA update (method.md §e K9): public entry point, validation and fake kernels of
``rmmd_core::ema_update`` (C++ CPU / CUDA, schema ``Tensor(a!)[] ema, Tensor[] params, float beta``) and
``rmmd_core::ema_update_triton`` (ops/triton/ema.py). The truth is ``ops/ema_reference.py::ema_update_ref``.

One call updates a whole list of tensors in place: every backend splits all tensors into fixed-size
chunks and processes the chunk table in one parallel pass (one launch per (EMA dtype, param dtype)
pair on GPUs), instead of one kernel per tensor. ``rmmd_core.RMMD.update_ema`` uses it.

The update is a stop-gradient bookkeeping step (like an optimiser step): there is no autograd formula;
the entry point runs under ``torch.no_grad`` and reads ``params`` detached.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from . import _checks, dispatch
from ._library import register_fakes
from .ema_reference import ema_update_ref

__all__ = ["ema_update"]

_OP = "rmmd_core::ema_update"
_OP_TRITON = "rmmd_core::ema_update_triton"


def _validate(ema, params, beta) -> tuple[list[torch.Tensor], list[torch.Tensor], float]:
    ema = _checks.tensor_list(ema, "ema")
    params = _checks.tensor_list(params, "params")
    if len(ema) != len(params):
        raise ValueError(f"params must have one tensor per ema tensor ({len(ema)}), got {len(params)}")
    device = None
    for i, (e, p) in enumerate(zip(ema, params)):
        _checks.tensor(e, f"ema[{i}]")
        _checks.tensor(p, f"params[{i}]")
        if e.dtype not in _checks.DATA_DTYPES:
            raise TypeError(f"ema[{i}] must be float32, float64, float16 or bfloat16, got {e.dtype}")
        if p.dtype not in _checks.DATA_DTYPES:
            raise TypeError(f"params[{i}] must be float32, float64, float16 or bfloat16, got {p.dtype}")
        if p.shape != e.shape:
            raise ValueError(f"params[{i}] must have ema[{i}]'s shape {tuple(e.shape)}, got {tuple(p.shape)}")
        device = e.device if device is None else device
        if e.device != device:
            raise ValueError(f"ema[{i}] must be on ema[0]'s device {device}, got {e.device}")
        if p.device != device:
            raise ValueError(f"params[{i}] must be on ema[{i}]'s device {device}, got {p.device}")
    beta = _checks.finite_float(beta, "beta")
    if not 0.0 <= beta <= 1.0:
        raise ValueError(f"beta must be in [0, 1], got {beta}")
    return ema, params, beta


@torch.no_grad()
def ema_update(ema: Sequence[torch.Tensor], params: Sequence[torch.Tensor], beta: float,
               backend: str | None = None) -> None:
    """In place, for every i: ``ema[i] <- beta ema[i] + (1 - beta) params[i]`` (method.md §e K9).

    Evaluated as ``torch.lerp(ema[i], params[i], 1 - beta)`` (see ``ema_reference.py``) in the EMA's math
    type (float32; float64 for a float64 EMA), ``params[i]`` converted on load, the result rounded once.
    The usual set-up is fp32 master EMA tensors with fp32 / bf16 / fp16 params, but any floating pair
    works and the list may mix dtypes. Strided params are read through one contiguous copy; a strided EMA
    tensor is updated through a contiguous temporary and copied back (still in place for the caller).

    Args:
        ema: list / tuple of floating tensors (float32 / float64 / float16 / bfloat16), updated in place.
        params: list / tuple with one tensor per ema tensor: same shape and device, floating.
        beta: the decay, a Python float in [0, 1] (beta = 1 keeps ema, beta = 0 copies params).
        backend: None (``RMMD_CORE_BACKEND``, default auto), "auto", "reference", "cpu", "triton", "cuda".

    Raises:
        TypeError / ValueError naming the argument (``ema[i]`` / ``params[i]`` / ``beta``); RuntimeError
        when an explicit backend cannot run.
    """
    ema, params, beta = _validate(ema, params, beta)
    if not ema:
        return
    params = [p.detach() for p in params]
    name = dispatch.resolve_backend("ema_update", ema[0], params[0], backend=backend)
    if name == "reference":
        ema_update_ref(ema, params, beta)
    elif name == "triton":
        torch.ops.rmmd_core.ema_update_triton(ema, params, beta)
    else:
        torch.ops.rmmd_core.ema_update(ema, params, beta)


def _fake(ema, params, beta):
    torch._check(len(ema) == len(params), lambda: f"rmmd_core::ema_update: params has {len(params)} tensors but "
                                                  f"ema has {len(ema)}")
    for i, (e, p) in enumerate(zip(ema, params)):
        torch._check(e.dtype in _checks.DATA_DTYPES,
                     lambda: f"rmmd_core::ema_update: ema[{i}] must be float32, float64, float16 or bfloat16")
        torch._check(p.dtype in _checks.DATA_DTYPES,
                     lambda: f"rmmd_core::ema_update: params[{i}] must be float32, float64, float16 or bfloat16")
        torch._check(p.shape == e.shape, lambda: f"rmmd_core::ema_update: params[{i}] has shape {tuple(p.shape)} "
                                                 f"but ema[{i}] has shape {tuple(e.shape)}")
        torch._check(p.device == e.device, lambda: f"rmmd_core::ema_update: params[{i}] is on {p.device} but "
                                                   f"ema[{i}] is on {e.device}")
    torch._check(0.0 <= beta <= 1.0, lambda: f"rmmd_core::ema_update: beta must be in [0, 1], got {beta}")


# Fake kernels only: the op mutates its inputs and returns nothing; no autograd formula (see module doc).
registered_ops: tuple[str, ...] = register_fakes(((_OP, _OP_TRITON), _fake))
