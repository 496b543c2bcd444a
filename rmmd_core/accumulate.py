"""Gradient accumulation: one RMMD / MM update from several micro-batches.

``accumulate_step(engine, [mb_1, ..., mb_n])`` computes :func:`~rmmd_core.step.losses` on each
micro-batch, back-propagates each loss scaled by its share of the rows ``B_i / sum_j B_j`` right away
(so only one micro-batch's graph is alive at a time), and then takes ONE optimiser step per network.
Because every loss is a per-row mean, the accumulated gradient is that of the mean over all rows:
with the same samples and noise it equals one big-batch step up to float summation order.

Under DDP / FSDP2 gradients are synchronised only on the last micro-batch
(:class:`~rmmd_core.distributed.gradient_sync`). A non-finite loss in any micro-batch (on any rank)
stops the accumulation and skips the whole update: weights and optimiser state stay untouched.
"""
from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

from .distributed import gradient_sync
from .engine import RMMD, discard_backward, finish_update, finite_on_all_ranks
from .step import add_backend_metric, losses

_LOSS_KWARGS = ("data", "cond", "batch_size", "generator")


def _rows(mb: Mapping) -> int:
    if mb.get("data") is not None:
        return int(mb["data"].shape[0])
    if mb.get("batch_size") is not None:
        return int(mb["batch_size"])
    from .denoiser import batch_of
    b = batch_of(mb.get("cond"))
    if b is None:
        raise ValueError("each micro-batch needs data, a batched cond, or batch_size")
    return int(b)


def accumulate_step(engine: RMMD, micro_batches: Sequence[Mapping]) -> dict:
    """One iteration (one optimiser step per network, one EMA update) over ``micro_batches``.

    Args:
        engine: the :class:`~rmmd_core.engine.RMMD` state.
        micro_batches: non-empty sequence of dicts with the keyword arguments of
            :func:`~rmmd_core.step.losses`: ``data``, ``cond``, ``batch_size``, ``generator``.

    Returns the metrics of :func:`~rmmd_core.step.step`, with loss-type metrics averaged over
    micro-batches weighted by rows, plus ``micro_batches``.
    """
    if isinstance(micro_batches, Mapping) or not isinstance(micro_batches, Sequence) or not micro_batches:
        raise ValueError("micro_batches must be a non-empty sequence of dicts of losses() arguments")
    for i, mb in enumerate(micro_batches):
        if not isinstance(mb, Mapping):
            raise TypeError(f"micro_batches[{i}] must be a dict of losses() arguments, got {type(mb).__name__}")
        unknown = set(mb) - set(_LOSS_KWARGS)
        if unknown:
            raise ValueError(f"micro_batches[{i}] has unknown keys {sorted(unknown)}; allowed: {_LOSS_KWARGS}")
    rows = [_rows(mb) for mb in micro_batches]
    total = sum(rows)
    cfg = engine.config
    engine.student_optimizer.zero_grad(set_to_none=True)
    engine.aux_optimizer.zero_grad(set_to_none=True)
    update_student = engine.wants_student_update()
    finite, per_mb = True, []
    nets = [engine.student.net, engine.auxiliary.net]
    for i, (mb, n) in enumerate(zip(micro_batches, rows)):
        # DDP decides at forward time whether the backward all-reduces, so the forward is inside too
        with gradient_sync(nets, enabled=i == len(micro_batches) - 1):
            out = losses(engine, **mb)
            share = n / total
            loss = out.aux_loss * share
            if out.student_loss is not None:
                loss = loss + out.student_loss * share  # disjoint parameters: one backward serves both
            # collective under DDP/FSDP: every rank stops at the same micro-batch
            if not (finite_on_all_ranks(loss, engine.student.net) and finite_on_all_ranks(loss, engine.auxiliary.net)):
                finite = False
                discard_backward(loss, engine.student.net)  # completes DDP/FSDP hooks; grads zeroed below
                break
            loss.backward()
        per_mb.append((share, out.metrics))
    nan = float("nan")
    ema_backend = None
    if not finite:
        engine.student_optimizer.zero_grad(set_to_none=True)
        engine.aux_optimizer.zero_grad(set_to_none=True)
        grad_norm, skipped_s, grad_norm_aux, skipped_a = nan, update_student, nan, True
    else:
        grad_norm, skipped_s = nan, False
        if update_student:
            grad_norm, skipped_s = finish_update(engine.student, engine.student_optimizer, cfg.grad_clip)
            if not skipped_s:
                engine.student_updates += 1
                ema_backend = engine.update_ema()
        grad_norm_aux, skipped_a = finish_update(engine.auxiliary, engine.aux_optimizer, cfg.grad_clip)
    engine.iteration += 1
    engine.skipped_updates += int(skipped_s or skipped_a)
    m = dict(per_mb[-1][1]) if per_mb else {}
    for k in ("mm_surrogate", "reward_mean", "anchor_l2", "student_loss", "aux_loss", "t_mean", "s_mean", "nfe"):
        if per_mb and k in m:
            m[k] = sum(w * mm[k] for w, mm in per_mb) if all(math.isfinite(mm[k]) for _, mm in per_mb) else nan
    add_backend_metric(m, "ema_update", ema_backend)
    for k in [k for k in m if k.startswith("calls_")]:
        m[k] = sum(mm.get(k, 0) for _, mm in per_mb)
    m.update(grad_norm=grad_norm, grad_norm_aux=grad_norm_aux, skipped=float(skipped_s or skipped_a),
             skipped_student=float(skipped_s), skipped_aux=float(skipped_a), iteration=engine.iteration,
             student_update=float(update_student), micro_batches=len(micro_batches))
    return m
