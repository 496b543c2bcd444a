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

:func:`memo_value` memoises any other per-time value the same way (a Denoiser's x̂ coefficients and
network time), and :func:`pin` gives a constant time tensor a memo of its own that outlives the
iteration: a rollout plan's grid times, evaluated once for the whole run instead of every iteration.
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
    """What makes two schedules equal here: class, scalar parameters and, for DiscreteVP, its table.

    The table's bytes are cached on the schedule and re-read only when the table tensor is replaced or
    changed in place (its version moves), so a lookup does not copy 8 KB and re-hash it (the same bytes
    object keeps its cached hash)."""
    table = getattr(schedule, "alphas_cumprod", None)  # DiscreteVP: a CPU float64 table, hashed as bytes
    data = None
    if isinstance(table, torch.Tensor):
        cached = schedule.__dict__.get("_rmmd_table_bytes")
        if cached is None or cached[0] is not table or cached[1] != table._version:
            cached = (table, table._version, table.numpy().tobytes())
            schedule.__dict__["_rmmd_table_bytes"] = cached
        data = cached[2]
    return (type(schedule), tuple(schedule._params().items()), data)


def pin(t: torch.Tensor) -> torch.Tensor:
    """Give the constant time tensor ``t`` its own memo, kept across iterations (and used outside
    :func:`iteration_memo` too): for grid times that every iteration evaluates again (a rollout plan's
    per-step times). Entries are keyed as in the iteration memo (version, schedule fingerprint, tag), so
    a changed tensor or schedule computes afresh. Returns ``t``."""
    t._rmmd_memo = {}
    return t


def _store(t) -> dict | None:
    """The memo serving time tensor ``t``: its pinned memo, else the iteration's; None when not usable
    (inference tensors have no version counter; tensors that require grad are not cached)."""
    if not isinstance(t, torch.Tensor) or t.requires_grad or t.is_inference() or torch.compiler.is_compiling():
        return None
    pinned = t.__dict__.get("_rmmd_memo")
    return pinned if pinned is not None else _MEMO.get()


_LAMBDA_BASED: dict[type, bool] = {}


def _lambda_based(schedule: Schedule) -> bool:
    """Schedules whose alpha and sigma come from lambda and that evaluate all three in one
    ``alpha_sigma_log_snr`` (DiscreteVP): one evaluation then serves ``alpha_sigma`` and ``log_snr``, bit for
    bit. Only when one class defines all three methods: a subclass overriding ``alpha_sigma`` alone (say)
    keeps separate evaluations."""
    cls = type(schedule)
    known = _LAMBDA_BASED.get(cls)
    if known is None:
        owners = {next(k for k in cls.__mro__ if m in k.__dict__)
                  for m in ("alpha_sigma", "log_snr", "alpha_sigma_log_snr")}
        known = _LAMBDA_BASED[cls] = len(owners) == 1 and Schedule not in owners
    return known


def schedule_call(schedule: Schedule, method: str, t):
    """``getattr(schedule, method)(t)``, memoised inside :func:`iteration_memo` (see the module doc)."""
    memo = _store(t)
    if memo is None:
        return getattr(schedule, method)(t)
    fp = _fingerprint(schedule)
    key = (id(t), t._version, method, fp)
    hit = memo.get(key)
    if hit is not None and hit[0] is t:
        return hit[1]
    if method in ("alpha_sigma", "log_snr") and _lambda_based(schedule):
        a, s, lam = schedule.alpha_sigma_log_snr(t)
        pair = (a, s)
        memo[(id(t), t._version, "alpha_sigma", fp)] = (t, pair)
        memo[(id(t), t._version, "log_snr", fp)] = (t, lam)
        return pair if method == "alpha_sigma" else lam
    out = getattr(schedule, method)(t)
    memo[key] = (t, out)  # holding t keeps its id from being reused by another tensor meanwhile
    return out


def memo_value(t, tag, compute):
    """``compute()``, memoised inside :func:`iteration_memo` for the time tensor ``t`` (identity and version,
    as :func:`schedule_call`) and the hashable ``tag``, which must name everything else the value depends
    on (e.g. the schedule's :func:`_fingerprint`, a dtype). Outside the context: ``compute()``."""
    memo = _store(t)
    if memo is None:
        return compute()
    key = (id(t), t._version, "value", tag)
    hit = memo.get(key)
    if hit is not None and hit[0] is t:
        return hit[1]
    out = compute()
    memo[key] = (t, out)
    return out


def alpha_sigma_log_snr(schedule: Schedule, t):
    """``schedule.alpha_sigma_log_snr(t)`` from the memoised ``alpha_sigma`` and ``log_snr`` (the same
    values: every schedule's alpha_sigma_log_snr is those two, DiscreteVP's evaluating lambda once)."""
    if _store(t) is None:
        return schedule.alpha_sigma_log_snr(t)
    a, s = schedule_call(schedule, "alpha_sigma", t)
    return a, s, schedule_call(schedule, "log_snr", t)
