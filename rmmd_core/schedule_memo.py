"""Per-iteration memo of schedule values: each (schedule, method, time tensor) is evaluated once.

One RMMD iteration evaluates the schedule at the same two time tensors many times: ``alpha_sigma(t)``
for the re-noise, the student call and the posterior step; ``alpha_sigma(s)`` and the network time of
``s`` for the teacher, auxiliary and posterior step (in float64, ~20 small ops each for a DiscreteVP
table lookup). Inside :func:`iteration_memo` the engine's call sites go through :func:`schedule_call`,
which returns the stored result for a time tensor it has seen: the *same tensor object* (identity, not
value: no device->host read) at the same version (no in-place change since), for an equal schedule
(same class, scalar parameters and, for :class:`~rmmd_core.schedules.DiscreteVP`, table), so the
student's, teacher's and auxiliary's copies of one schedule share entries. The values are those of
the direct call, bit for bit. Outside the context (and for tensors that require grad, inference
tensors, or while torch.compile traces) every call goes straight to the schedule.
"""
from __future__ import annotations

import contextlib
import contextvars

import torch

from .schedules import Schedule

_MEMO: contextvars.ContextVar[dict | None] = contextvars.ContextVar("rmmd_schedule_memo", default=None)


@contextlib.contextmanager
def iteration_memo():
    """Memoise :func:`schedule_call` results until the block ends (entries hold their time tensors)."""
    token = _MEMO.set({})
    try:
        yield
    finally:
        _MEMO.reset(token)


def _fingerprint(schedule: Schedule):
    table = getattr(schedule, "alphas_cumprod", None)  # DiscreteVP: a CPU float64 table, hashed as bytes
    return (type(schedule), tuple(schedule._params().items()),
            table.numpy().tobytes() if isinstance(table, torch.Tensor) else None)


def schedule_call(schedule: Schedule, method: str, t):
    """``getattr(schedule, method)(t)``, memoised inside :func:`iteration_memo` (see the module doc)."""
    memo = _MEMO.get()
    if (memo is None or not isinstance(t, torch.Tensor) or t.requires_grad or t.is_inference()
            or torch.compiler.is_compiling()):  # inference tensors have no version counter
        return getattr(schedule, method)(t)
    key = (id(t), t._version, method, _fingerprint(schedule))
    hit = memo.get(key)
    if hit is not None and hit[0] is t:
        return hit[1]
    out = getattr(schedule, method)(t)
    memo[key] = (t, out)  # holding t keeps its id from being reused by another tensor meanwhile
    return out


def alpha_sigma_log_snr(schedule: Schedule, t):
    """``schedule.alpha_sigma_log_snr(t)`` from the memoised ``alpha_sigma`` and ``log_snr`` (the same
    values: every schedule's alpha_sigma_log_snr is those two, DiscreteVP's evaluating lambda once)."""
    if _MEMO.get() is None:
        return schedule.alpha_sigma_log_snr(t)
    a, s = schedule_call(schedule, "alpha_sigma", t)
    return a, s, schedule_call(schedule, "log_snr", t)
