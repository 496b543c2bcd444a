"""Checkpoint and resume in a distributed run (DDP: one file; FSDP2: ``torch.distributed.checkpoint``).

Every rank has its own engine generator (:func:`~rmmd_core.distributed.rank_seed`) and its own torch
RNG, so both are gathered and saved per rank; on load each rank takes its own entry, and a checkpoint
written by a different number of ranks is refused (its noise streams could not be continued).

* **DDP / replicated** (:func:`save_distributed` on a file path): the weights and optimiser state are
  the same on every rank; rank 0 writes them with the per-rank RNG states in one file, atomically
  (:func:`~rmmd_core.checkpoint.atomic_save`), then all ranks meet at a barrier.
* **FSDP2** (sharded student): ``path`` is a directory. Each save writes ``path/iter-<n>/`` with
  ``torch.distributed.checkpoint`` (every rank writes its shards), then the engine metadata, then
  atomically replaces ``path/LATEST`` with that directory's name. A run killed mid-save leaves
  ``LATEST`` naming the previous complete checkpoint.

Loading validates before it mutates, as :func:`~rmmd_core.checkpoint.load_checkpoint` does: DDP files
go through the same validation; FSDP2 shards are read into copies of the engine's tensors first and
assigned only after everything was read.
"""
from __future__ import annotations

import os

import torch
import torch.distributed as dist

from .checkpoint import (CheckpointError, _read_config, atomic_save, engine_meta, engine_state_dict, load_engine_state,
                         read_checkpoint, validate_meta)
from .distributed import is_distributed, is_sharded

META = "rmmd_meta.pt"
LATEST = "LATEST"


def _rng_entry(engine) -> dict:
    return {"generator": engine.generator.get_state(), "torch_cpu": torch.get_rng_state()}


def _gather_rng(engine) -> list:
    out = [None] * dist.get_world_size()
    dist.all_gather_object(out, _rng_entry(engine))
    return out


def _own_rng(state: dict, where: str) -> dict:
    per_rank = state.get("per_rank_rng")
    world = dist.get_world_size()
    if not isinstance(per_rank, list) or len(per_rank) != world:
        n = len(per_rank) if isinstance(per_rank, list) else None
        raise CheckpointError(f"{where} was written by {n} ranks, this run has {world}; per-rank noise "
                              "streams cannot be continued on a different world size")
    return per_rank[dist.get_rank()]


def save_distributed(engine, path: str | os.PathLike) -> None:
    """Save ``engine`` from every rank (a collective: call it on all ranks)."""
    if not is_distributed():
        raise RuntimeError("save_distributed needs an initialised process group; use save_checkpoint otherwise")
    path = os.fspath(path)
    if is_sharded(engine.student.net):
        _save_sharded(engine, path)
        return
    rng = _gather_rng(engine)
    if dist.get_rank() == 0:
        state = engine_state_dict(engine)
        state["per_rank_rng"] = rng
        atomic_save(state, path)
    dist.barrier()


def load_distributed(engine, path: str | os.PathLike) -> dict:
    """Load what :func:`save_distributed` wrote (a collective). Returns the counters."""
    if not is_distributed():
        raise RuntimeError("load_distributed needs an initialised process group; use load_checkpoint otherwise")
    path = os.fspath(path)
    if is_sharded(engine.student.net):
        return _load_sharded(engine, path)
    state = read_checkpoint(path)
    own = _own_rng(state, repr(path))
    state["generator"] = own["generator"]
    state["rng"] = {**state["rng"], "torch_cpu": own["torch_cpu"]}
    load_engine_state(engine, state)
    return dict(state["counters"])


# ---------------------------------------------------------------------- FSDP2
_SHARDED_NETS = ("student", "auxiliary", "ema", "anchor", "frozen_aux")


def _model_sd(den):
    from torch.distributed.checkpoint.state_dict import get_model_state_dict
    return get_model_state_dict(den.net)


def _save_sharded(engine, root: str) -> None:
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint.state_dict import get_optimizer_state_dict

    name = f"iter-{engine.iteration:08d}"
    target = os.path.join(root, name)
    sd = {k: _model_sd(getattr(engine, k)) for k in _SHARDED_NETS if getattr(engine, k) is not None}
    sd["student_optimizer"] = get_optimizer_state_dict(engine.student.net, engine.student_optimizer)
    sd["aux_optimizer"] = get_optimizer_state_dict(engine.auxiliary.net, engine.aux_optimizer)
    dcp.save(sd, checkpoint_id=target)
    rng = _gather_rng(engine)
    if dist.get_rank() == 0:
        meta = engine_meta(engine)  # networks and optimisers are in the DCP shards
        meta["per_rank_rng"] = rng
        atomic_save(meta, os.path.join(target, META))
        # the pointer moves only once shards and metadata are complete
        tmp = os.path.join(root, f".{LATEST}.tmp-{os.getpid()}")
        with open(tmp, "w") as f:
            f.write(name)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, os.path.join(root, LATEST))
    dist.barrier()


def _clone_tree(x):
    if isinstance(x, torch.Tensor):
        return x.detach().clone()
    if isinstance(x, dict):
        return {k: _clone_tree(v) for k, v in x.items()}
    if isinstance(x, list):
        return [_clone_tree(v) for v in x]
    return x


def _load_sharded(engine, root: str) -> dict:
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint.state_dict import (get_optimizer_state_dict, set_model_state_dict,
                                                         set_optimizer_state_dict)

    latest = os.path.join(root, LATEST)
    if not os.path.isfile(latest):
        raise CheckpointError(f"{root!r} holds no sharded rmmd_core checkpoint (no {LATEST} file)")
    with open(latest) as f:
        target = os.path.join(root, f.read().strip())
    meta = read_checkpoint(os.path.join(target, META))
    own = _own_rng(meta, repr(target))
    # the frozen phase-2 copies the checkpoint needs, made aside (sharded copier) and attached at the end
    anchor, frozen_aux = engine.anchor, engine.frozen_aux
    if meta.get("phase") == "rmmd" and anchor is None:
        anchor, frozen_aux = engine.student.frozen_copy(), engine.auxiliary.frozen_copy()
    dens = {"student": engine.student, "auxiliary": engine.auxiliary, "ema": engine.ema,
            "anchor": anchor if meta.get("phase") == "rmmd" else None,
            "frozen_aux": frozen_aux if meta.get("phase") == "rmmd" else None}
    # optimiser templates: an optimiser that never stepped has no state to load into, and
    # get_optimizer_state_dict would create it in place; remember which were empty to undo that
    fresh = [not engine.student_optimizer.state, not engine.aux_optimizer.state]
    try:
        sd = {k: _clone_tree(_model_sd(d)) for k, d in dens.items() if d is not None}
        sd["student_optimizer"] = _clone_tree(get_optimizer_state_dict(engine.student.net, engine.student_optimizer))
        sd["aux_optimizer"] = _clone_tree(get_optimizer_state_dict(engine.auxiliary.net, engine.aux_optimizer))
        try:
            dcp.load(sd, checkpoint_id=target)  # into the clones: the engine is not touched yet
        except Exception as e:
            raise CheckpointError(f"cannot read sharded checkpoint {target!r}: {type(e).__name__}: "
                                  f"{str(e).splitlines()[0] if str(e) else ''}") from e
        # validate the non-tensor part against the engine (config, counters, generator) before assigning
        probe = {**meta, "generator": own["generator"], "rng": {**meta["rng"], "torch_cpu": own["torch_cpu"]}}
        validate_meta(engine, probe)  # the tensors were checked by DCP's strict load
    except BaseException:
        for opt, was_fresh in zip((engine.student_optimizer, engine.aux_optimizer), fresh):
            if was_fresh:
                opt.state.clear()
        raise
    for k, d in dens.items():
        if d is not None:
            set_model_state_dict(d.net, sd[k])
    set_optimizer_state_dict(engine.student.net, engine.student_optimizer, sd["student_optimizer"])
    set_optimizer_state_dict(engine.auxiliary.net, engine.aux_optimizer, sd["aux_optimizer"])
    if meta["phase"] == "rmmd":
        engine.anchor, engine.frozen_aux = anchor, frozen_aux
    else:
        engine.anchor = engine.frozen_aux = None
    engine.config = _read_config(meta)
    engine.generator.set_state(own["generator"])
    torch.set_rng_state(own["torch_cpu"])
    for k, v in meta["counters"].items():
        setattr(engine, k, int(v))
    return dict(meta["counters"])
