"""Running the engine under ``torch.distributed``: DDP and FSDP2 wrapping, per-rank RNG, reductions.

The step itself is unchanged; it runs on each rank's local shard of the batch:

* **Gradients.** Every loss is a per-rank mean over the local rows, and DDP / FSDP average gradients
  over ranks, so with equal local batches the update is the gradient of the global-batch mean.
* **Noise.** Give each rank its own engine seed (:func:`rank_seed`), or every rank draws the same
  noise, times and rollouts and the extra ranks add no information.
* **Frozen networks** (teacher, phase-1 anchor and auxiliary, EMA) are never wrapped in DDP: they get
  no gradients, so there is nothing to synchronise. Under FSDP2 the EMA and, optionally, the teacher
  are sharded like the student (the EMA update is element-wise, so it acts on local shards exactly).
* **Skips.** A non-finite loss on any rank skips the update on every rank
  (:func:`~rmmd_core.engine.apply_update`), so no rank waits in an all-reduce the others never join.
* **Rewards** receive the local shard. Multi-sample rewards (CRPS) see all M members of a
  conditioning because the M rollouts are drawn on the rank that owns the conditioning.
* **Metrics** are per rank; :func:`reduce_metrics` averages them for logging.

Usage (DDP)::

    dist.init_process_group("nccl")                     # gloo on CPU
    engine = RMMD(teacher, sample_shape=..., seed=rank_seed(0))
    wrap_ddp(engine, device_ids=[local_rank])
    for data, cond in loader:                           # a DistributedSampler shard
        m = reduce_metrics(step(engine, data, cond))

FSDP2: ``shard_fsdp(engine)`` instead of ``wrap_ddp`` (before the first step: it rebuilds the default
optimisers on the sharded parameters).
"""
from __future__ import annotations

import copy
from collections.abc import Callable, Mapping

import torch
import torch.distributed as dist
from torch import nn

from .denoiser import Denoiser

__all__ = ["is_distributed", "rank_seed", "wrap_ddp", "shard_fsdp", "reduce_metrics", "all_ranks_true",
           "is_sharded", "is_wrapped", "gradient_sync"]


def is_distributed() -> bool:
    """A process group is initialised with more than one rank."""
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def rank_seed(seed: int, rank: int | None = None) -> int:
    """Engine seed for ``rank`` (default: this process's rank): distinct per rank, reproducible.

    The offset is a large odd constant rather than ``+ rank`` so that runs with neighbouring base
    seeds do not share streams across ranks.
    """
    if rank is None:
        rank = dist.get_rank() if dist.is_available() and dist.is_initialized() else 0
    if rank < 0:
        raise ValueError(f"rank must be >= 0, got {rank}")
    return (int(seed) + 1_000_003 * int(rank)) % (2 ** 63)


def is_sharded(module: nn.Module) -> bool:
    """``module`` is (or contains) an FSDP2 ``fully_shard`` module."""
    try:
        from torch.distributed.fsdp import FSDPModule
    except ImportError:  # pragma: no cover - torch without FSDP2
        return False
    return any(isinstance(m, FSDPModule) for m in module.modules())


def is_wrapped(module: nn.Module) -> bool:
    """``module`` is (or contains) a DDP or FSDP2 module."""
    return any(isinstance(m, nn.parallel.DistributedDataParallel) for m in module.modules()) or is_sharded(module)


def all_ranks_true(flag: bool, module: nn.Module | None = None, device=None) -> bool:
    """``flag`` AND-reduced over all ranks when ``module`` is DDP/FSDP-wrapped in a distributed run.

    For unwrapped modules (or a single process) it returns ``flag`` without communicating: every
    rank then decides on its own, and nothing can hang.
    """
    if not is_distributed() or (module is not None and not is_wrapped(module)):
        return flag
    if dist.get_backend() == "nccl":
        device = torch.device("cuda", torch.cuda.current_device())
    t = torch.tensor([int(flag)], dtype=torch.int32, device=device if device is not None else "cpu")
    dist.all_reduce(t, op=dist.ReduceOp.MIN)
    return bool(t.item())


def wrap_ddp(engine, **ddp_kwargs) -> None:
    """Wrap the student's and the auxiliary's networks in DDP, in place.

    Call after building the engine (its EMA and frozen copies are made from the unwrapped modules,
    and the optimisers keep the same parameters: DDP does not replace them). ``ddp_kwargs`` go to
    ``DistributedDataParallel`` (``device_ids=[local_rank]`` on GPUs). Checkpoints store the
    unwrapped modules' state dicts, so they load with or without DDP.
    """
    if not is_distributed():
        raise RuntimeError("wrap_ddp needs an initialised process group with world size > 1 "
                           "(torch.distributed.init_process_group, launched by torchrun)")
    for name in ("student", "auxiliary"):
        den: Denoiser = getattr(engine, name)
        if is_wrapped(den.net):
            raise ValueError(f"engine.{name}.net is already wrapped in DDP/FSDP")
        den.net = nn.parallel.DistributedDataParallel(den.net, **ddp_kwargs)


def _shard(module: nn.Module, policy: Callable[[nn.Module], bool] | None, **fsdp_kwargs) -> nn.Module:
    from torch.distributed.fsdp import fully_shard

    if policy is not None:
        # post-order, as FSDP2 expects: inner units first, the root last
        for sub in list(module.modules())[1:][::-1]:
            if policy(sub):
                fully_shard(sub, **fsdp_kwargs)
    fully_shard(module, **fsdp_kwargs)
    return module


def _sharded_copier(skeleton: nn.Module, policy, fsdp_kwargs) -> Callable[[nn.Module], nn.Module]:
    """A copier for FSDP2 modules, which refuse ``deepcopy``.

    ``skeleton`` is a meta-device copy of the unsharded module (no memory). A copy is the skeleton
    materialised, sharded with the same policy (hence the same per-rank shard layout), then filled
    from the source's local shards and buffers: no all-gather, exact values.
    """
    def copier(src: nn.Module) -> nn.Module:
        device = next((p.device for p in src.parameters()), torch.device("cpu"))
        new = copy.deepcopy(skeleton).to_empty(device=device)
        _shard(new, policy, **fsdp_kwargs)
        with torch.no_grad():
            for (na, a), (nb, b) in zip(new.named_parameters(), src.named_parameters()):
                if na != nb:
                    raise RuntimeError(f"FSDP copy: parameter order differs ({na} vs {nb})")
                a.to_local().copy_(b.to_local()) if hasattr(a, "to_local") else a.copy_(b)
            for a, b in zip(new.buffers(), src.buffers()):
                a.copy_(b)
        new._rmmd_copier = copier
        return new
    return copier


def shard_fsdp(engine, *, policy: Callable[[nn.Module], bool] | None = None, shard_teacher: bool = False,
               optimizer_factory: Callable[[nn.Module], torch.optim.Optimizer] | None = None,
               **fsdp_kwargs) -> None:
    """Shard the student, auxiliary and EMA (and optionally the teacher) with FSDP2, in place.

    Args:
        policy: which submodules become their own FSDP unit (e.g. ``lambda m: isinstance(m, Block)``);
            the root is always one. Units let FSDP free gathered parameters block by block.
        shard_teacher: also shard the frozen teacher (memory; it is then all-gathered per call).
        optimizer_factory: ``module -> optimizer`` for the rebuilt optimisers (default: the engine's
            Adam per config). FSDP2 replaces the parameters with sharded ``DTensor``\\ s, so the
            optimisers must be rebuilt; call this before the first step (it refuses otherwise).
        fsdp_kwargs: passed to ``fully_shard`` (``mesh``, ``mp_policy``, ``reshard_after_forward``).

    Frozen copies (phase-2 anchor and auxiliary, made by ``start_phase2``) are built from a
    meta-device skeleton and filled shard by shard (FSDP2 modules cannot be deep-copied).
    """
    from .engine import make_optimizer

    if not is_distributed():
        raise RuntimeError("shard_fsdp needs an initialised process group with world size > 1")
    for opt_name in ("student_optimizer", "aux_optimizer"):
        if getattr(engine, opt_name).state:
            raise RuntimeError(f"shard_fsdp must run before the first step: engine.{opt_name} already has state "
                               "for the unsharded parameters")
    make_opt = optimizer_factory or (lambda m: make_optimizer(m, engine.config))
    nets = [("student", engine.student), ("auxiliary", engine.auxiliary), ("ema", engine.ema),
            ("anchor", engine.anchor), ("frozen_aux", engine.frozen_aux)]
    if shard_teacher:
        nets.append(("teacher", engine.teacher))
    for name, den in nets:
        if den is None:
            continue
        if is_wrapped(den.net):
            raise ValueError(f"engine.{name}.net is already wrapped in DDP/FSDP")
        skeleton = copy.deepcopy(den.net).to("meta")
        den.net = _shard(den.net, policy, **fsdp_kwargs)
        den.net._rmmd_copier = _sharded_copier(skeleton, policy, fsdp_kwargs)
    engine.student_optimizer = make_opt(engine.student)
    engine.aux_optimizer = make_opt(engine.auxiliary)


class gradient_sync:
    """Context: turn DDP / FSDP2 gradient synchronisation of ``modules`` off (``enabled=False``).

    Used for all micro-batches but the last under gradient accumulation, so gradients are reduced
    once per update instead of once per micro-batch. A no-op for unwrapped modules.
    """

    def __init__(self, modules, enabled: bool):
        self.modules, self.enabled = list(modules), enabled
        self._stack = []

    def __enter__(self):
        if self.enabled:
            return self
        for root in self.modules:
            for m in root.modules():
                if isinstance(m, nn.parallel.DistributedDataParallel):
                    cm = m.no_sync()
                    cm.__enter__()
                    self._stack.append(cm)
                elif hasattr(m, "set_requires_gradient_sync") and is_sharded(m):
                    m.set_requires_gradient_sync(False)
                    self._stack.append(m)
                    break  # the root FSDP module's setting covers its units
        return self

    def __exit__(self, *exc):
        for item in reversed(self._stack):
            if hasattr(item, "__exit__"):
                item.__exit__(*exc)
            else:
                item.set_requires_gradient_sync(True)
        self._stack.clear()
        return False


def reduce_metrics(metrics: Mapping, group=None) -> dict:
    """Average the numeric metrics over ranks (strings and booleans pass through), for logging.

    Non-finite values propagate (a NaN on any rank shows). Must be called on every rank.
    """
    if not is_distributed():
        return dict(metrics)
    keys = sorted(k for k, v in metrics.items() if isinstance(v, (int, float)) and not isinstance(v, bool))
    device = torch.device("cuda", torch.cuda.current_device()) if dist.get_backend(group) == "nccl" else "cpu"
    vals = torch.tensor([float(metrics[k]) for k in keys], dtype=torch.float64, device=device)
    dist.all_reduce(vals, group=group)
    vals /= dist.get_world_size(group)
    out = dict(metrics)
    out.update({k: float(v) for k, v in zip(keys, vals.tolist())})
    return out
