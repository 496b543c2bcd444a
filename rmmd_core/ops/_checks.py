"""Argument checks shared by the fused ops: one helper per kind of argument, used twice per op.

* The *public* checks (``data``, ``like``, ``per_sample``, ``integer``, ``philox_key``, ``finite_float``,
  ``tensor``) run in each op's Python entry point before dispatch and raise ``TypeError`` / ``ValueError`` whose
  message starts with the argument's name and says what was expected (the public API's contract, asserted in
  tests).
* The *fake* checks (``fake_data``, ``fake_like``, ``fake_per_sample``, ``fake_non_negative``, ``fake_philox``)
  run inside the ops' fake (meta) kernels through ``torch._check`` (which traces under torch.compile) and raise
  ``RuntimeError`` prefixed with ``rmmd_core::<op>:``; they mirror the C++ ``*_checks.h`` of each op.

A "data" tensor is the op's main (B, ...) tensor; a "like" tensor must match it in shape, dtype and
device; a "per-sample" tensor is a (B,) floating coefficient on the same device (read as fp32 / fp64).
"""

from __future__ import annotations

import math
import operator
from collections.abc import Sequence

import torch

__all__ = ["DATA_DTYPES", "data", "fake_data", "fake_like", "fake_non_negative", "fake_per_sample",
           "fake_philox", "finite_float", "integer", "like", "per_sample", "philox_key", "tensor", "tensor_list"]

DATA_DTYPES = (torch.float32, torch.float64, torch.float16, torch.bfloat16)
_DTYPE_NAMES = "float32, float64, float16 or bfloat16"


# ------------------------------------------------------------------------------------------------
# public entry points: TypeError / ValueError, message starts with the argument's name
# ------------------------------------------------------------------------------------------------

def tensor(value, name: str, what: str = "a torch.Tensor") -> torch.Tensor:
    """``value`` if it is a tensor, else TypeError "<name> must be <what>, got <type>"."""
    if not isinstance(value, torch.Tensor):
        raise TypeError(f"{name} must be {what}, got {type(value).__name__}")
    return value


def data(x, name: str, dtypes: tuple[torch.dtype, ...] = DATA_DTYPES) -> torch.Tensor:
    """The op's main (B, ...) tensor: a tensor with a leading batch dimension and a supported dtype."""
    tensor(x, name)
    if x.dim() < 1:
        raise ValueError(f"{name} must have a leading batch dimension (shape (B, ...)), got a 0-d tensor")
    if x.dtype not in dtypes:
        names = _DTYPE_NAMES if dtypes == DATA_DTYPES else ", ".join(str(d).removeprefix("torch.") for d in dtypes)
        raise TypeError(f"{name} must be {names}, got {x.dtype}")
    return x


def like(t, name: str, ref: torch.Tensor, ref_name: str, optional: bool = False) -> None:
    """``t`` has ``ref``'s shape, dtype and device (None allowed when ``optional``)."""
    if t is None and optional:
        return
    tensor(t, name, "a torch.Tensor or None" if optional else "a torch.Tensor")
    if t.shape != ref.shape:
        raise ValueError(f"{name} must have {ref_name}'s shape {tuple(ref.shape)}, got {tuple(t.shape)}")
    if t.dtype != ref.dtype:
        raise TypeError(f"{name} must have {ref_name}'s dtype {ref.dtype}, got {t.dtype}")
    if t.device != ref.device:
        raise ValueError(f"{name} must be on {ref_name}'s device {ref.device}, got {t.device}")


def per_sample(coef, name: str, ref: torch.Tensor, ref_name: str, what: str = "a torch.Tensor") -> None:
    """``coef`` is a (B,) floating tensor on ``ref``'s device, B = ref.shape[0]."""
    tensor(coef, name, what)
    batch = ref.shape[0]
    if coef.dim() != 1 or coef.shape[0] != batch:
        raise ValueError(f"{name} must have shape (B,) = ({batch},), got {tuple(coef.shape)}")
    if not coef.dtype.is_floating_point:
        raise TypeError(f"{name} must be a floating tensor (float64 recommended), got {coef.dtype}")
    if coef.device != ref.device:
        raise ValueError(f"{name} must be on {ref_name}'s device {ref.device}, got {coef.device}")


def integer(value, name: str, upper: int | None = None) -> int:
    """A Python int (not bool) in ``[0, upper)`` (``upper`` None: no bound), returned as int."""
    if isinstance(value, bool):
        raise TypeError(f"{name} must be an int, got bool")
    try:
        value = operator.index(value)
    except TypeError:
        raise TypeError(f"{name} must be an int, got {type(value).__name__}") from None
    if value < 0:
        raise ValueError(f"{name} must be non-negative, got {value}")
    if upper is not None and value >= upper:
        raise ValueError(f"{name} must be < {upper}, got {value}")
    return value


def philox_key(value, name: str, ref: torch.Tensor, ref_name: str) -> int | torch.Tensor:
    """A Philox seed / offset: a Python int in ``[0, 2**63)``, or a one-element int64 tensor on ``ref``'s device.

    The tensor form exists for CUDA-graph capture (the kernels read it from device memory, so a replay
    sees whatever the caller ``copy_``-ed into it). Its value is checked only where that costs no device
    read: on CPU (not while torch.compile traces, where ``.item()`` would break the graph). An int64 can
    never reach 2**63, so only the sign needs checking; a negative value on a GPU is not detected (the
    kernels reinterpret it as a uint64 key / counter).
    """
    if not isinstance(value, torch.Tensor):
        return integer(value, name, upper=2**63)
    if value.dtype != torch.int64:
        raise TypeError(f"{name} must be an int or an int64 tensor, got a {value.dtype} tensor")
    if value.numel() != 1:
        raise ValueError(f"{name} must be a tensor with exactly one element, got shape {tuple(value.shape)}")
    if value.device != ref.device:
        raise ValueError(f"{name} must be on {ref_name}'s device {ref.device}, got {value.device}")
    if value.device.type == "cpu" and not torch.compiler.is_compiling():
        from torch._subclasses.fake_tensor import is_fake

        if not is_fake(value):
            found = int(value.reshape(()).item())
            if found < 0:
                raise ValueError(f"{name} must be non-negative, got {found}")
    return value


def tensor_list(value, name: str) -> list:
    """``value`` (a list or tuple, its items checked by the caller) as a list, else TypeError naming ``name``."""
    if isinstance(value, torch.Tensor) or not isinstance(value, Sequence):
        raise TypeError(f"{name} must be a list or tuple of torch.Tensor, got {type(value).__name__}")
    return list(value)


def finite_float(value, name: str) -> float:
    """A finite Python int or float (not bool, not a tensor), returned as float."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise TypeError(f"{name} must be a Python float, got {type(value).__name__}")
    if not math.isfinite(value):
        raise ValueError(f"{name} must be finite, got {value}")
    return float(value)


# ------------------------------------------------------------------------------------------------
# fake kernels: torch._check, RuntimeError "rmmd_core::<op>: ..." (mirrors csrc/bindings/*_checks.h)
# ------------------------------------------------------------------------------------------------

def fake_data(op: str, x: torch.Tensor, name: str, dtypes: tuple[torch.dtype, ...] = DATA_DTYPES) -> None:
    torch._check(x.dim() >= 1, lambda: f"rmmd_core::{op}: {name} must have a leading batch dimension")
    torch._check(x.dtype in dtypes, lambda: f"rmmd_core::{op}: {name} must be {_DTYPE_NAMES}, got {x.dtype}")


def fake_like(op: str, t: torch.Tensor | None, name: str, ref: torch.Tensor, ref_name: str) -> None:
    if t is None:
        return
    torch._check(t.shape == ref.shape, lambda: f"rmmd_core::{op}: {name} has shape {tuple(t.shape)} but {ref_name} "
                                               f"has shape {tuple(ref.shape)}")
    torch._check(t.dtype == ref.dtype,
                 lambda: f"rmmd_core::{op}: {name} has dtype {t.dtype} but {ref_name} has dtype {ref.dtype}")
    torch._check(t.device == ref.device,
                 lambda: f"rmmd_core::{op}: {name} is on {t.device} but {ref_name} is on {ref.device}")


def fake_per_sample(op: str, coef: torch.Tensor, name: str, ref: torch.Tensor, ref_name: str) -> None:
    torch._check(coef.dim() == 1 and coef.shape[0] == ref.shape[0],
                 lambda: f"rmmd_core::{op}: {name} must have shape (B,) = ({ref.shape[0]},), got {tuple(coef.shape)}")
    torch._check(coef.dtype.is_floating_point,
                 lambda: f"rmmd_core::{op}: {name} must be a floating tensor, got {coef.dtype}")
    torch._check(coef.device == ref.device,
                 lambda: f"rmmd_core::{op}: {name} is on {coef.device} but {ref_name} is on {ref.device}")


def fake_non_negative(op: str, value: int, name: str) -> None:
    torch._check(value >= 0, lambda: f"rmmd_core::{op}: {name} must be non-negative, got {value}")


def fake_philox(op: str, t: int | torch.Tensor, name: str, ref: torch.Tensor, ref_name: str) -> None:
    """A seed / offset: a non-negative int (the int schemas), or, for the ``*_dev`` ops, one int64 element on
    ``ref``'s device (its value is data, unchecked here)."""
    if not isinstance(t, torch.Tensor):
        fake_non_negative(op, t, name)
        return
    torch._check(t.dtype == torch.int64, lambda: f"rmmd_core::{op}: {name} must be an int64 tensor, got {t.dtype}")
    torch._check(t.numel() == 1, lambda: f"rmmd_core::{op}: {name} must have exactly one element, got shape "
                                         f"{tuple(t.shape)}")
    torch._check(t.device == ref.device,
                 lambda: f"rmmd_core::{op}: {name} is on {t.device} but {ref_name} is on {ref.device}")
