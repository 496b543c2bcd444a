"""Checkpoint and resume of a whole :class:`~rmmd_core.engine.RMMD` training state.

What a checkpoint holds (``engine.state_dict()``):

==================  ==================================================================
format, version     ``'rmmd_core.checkpoint'`` and :data:`FORMAT_VERSION`
config              ``RMMDConfig.to_dict()`` (phase 2 changes it, so it is state)
phase               ``'mm' | 'rmmd'`` (whether the frozen phase-1 networks exist)
student, auxiliary  network state dicts (DDP wrappers stripped: plain module keys)
anchor, frozen_aux  the frozen phase-1 networks, or None in phase 1
ema                 EMA of the student, or None when ``ema_decay`` is None
student_optimizer,  ``optimizer.state_dict()``
aux_optimizer
generator           the engine generator's state (noise, times, Philox seeds)
rng                 torch CPU RNG state (dropout and anything else on the global RNG) and,
                    when CUDA is initialised, every CUDA device's RNG state
counters            iteration, student_updates, skipped_updates
==================  ==================================================================

Not saved: the teacher (frozen, rebuilt by your code like the model definitions) and the reward
callable. Resume = build the engine exactly as for a fresh run, then :func:`load_checkpoint`.

Loading never leaves a half-loaded engine: :func:`validate_state` checks every entry (keys, shapes,
dtypes, optimiser structure, config values) against the engine *before* anything is assigned, and
raises :class:`CheckpointError` naming the entry that does not fit. Writes are atomic: the payload goes
to a temporary file in the target's directory, is fsync'ed, then ``os.replace``'d over the target, so
a process killed at any point leaves either the previous checkpoint or the new one, never a torn file.
(A killed writer may leave its ``.<name>.tmp-<pid>`` file behind; it is never read.)

Under FSDP2 (sharded DTensor parameters) use :mod:`rmmd_core.distributed` instead, which writes
with ``torch.distributed.checkpoint``.
"""
from __future__ import annotations

import os
from collections.abc import Mapping

import torch

from .denoiser import unwrap

FORMAT = "rmmd_core.checkpoint"
FORMAT_VERSION = 1
_NETS = ("student", "auxiliary", "anchor", "frozen_aux", "ema")
_COUNTERS = ("iteration", "student_updates", "skipped_updates")


class CheckpointError(ValueError):
    """A checkpoint that cannot be loaded into this engine (truncated, foreign or mismatched)."""


def _net_state(den, like=None) -> dict | None:
    if den is None:
        return None
    sd = unwrap(den.net).state_dict()
    if like is not None:  # frozen copies kept in bf16 (config.frozen_dtype) are saved in the trained net's dtypes
        ref = unwrap(like.net).state_dict()
        sd = {k: v.to(ref[k].dtype) if k in ref and v.dtype != ref[k].dtype else v for k, v in sd.items()}
    return sd


def _refuse_sharded(engine, what: str) -> None:
    from .distributed import is_sharded  # local: distributed.py imports the engine, which imports us lazily
    if any(d is not None and is_sharded(d.net) for d in (engine.student, engine.auxiliary)):
        raise RuntimeError(f"{what}: the engine is FSDP-sharded (each rank holds only its shards); use "
                           "rmmd_core.dist_checkpoint.save_distributed / load_distributed")


def engine_meta(engine) -> dict:
    """The non-network part of the state: format, config, phase, RNG states, counters."""
    rng = {"torch_cpu": torch.get_rng_state()}
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        rng["torch_cuda"] = torch.cuda.get_rng_state_all()
    return {
        "format": FORMAT,
        "version": FORMAT_VERSION,
        "config": engine.config.to_dict(),
        "phase": engine.phase,
        "generator": engine.generator.get_state(),
        "rng": rng,
        "counters": {k: int(getattr(engine, k)) for k in _COUNTERS},
    }


def engine_state_dict(engine) -> dict:
    """The whole training state of ``engine`` as a dict of tensors and plain values (see module doc)."""
    _refuse_sharded(engine, "state_dict")
    return {
        **engine_meta(engine),
        **{name: _net_state(getattr(engine, name)) for name in _NETS},
        "anchor": _net_state(engine.anchor, like=engine.student),
        "frozen_aux": _net_state(engine.frozen_aux, like=engine.auxiliary),
        "student_optimizer": engine.student_optimizer.state_dict(),
        "aux_optimizer": engine.aux_optimizer.state_dict(),
    }


# ---------------------------------------------------------------------- validation
def _check_tensors(where: str, saved: Mapping, target: Mapping) -> None:
    missing = sorted(set(target) - set(saved))
    extra = sorted(set(saved) - set(target))
    if missing or extra:
        raise CheckpointError(f"{where}: keys do not match the engine's network "
                              f"(missing {missing[:5]}{'...' if len(missing) > 5 else ''}, "
                              f"unexpected {extra[:5]}{'...' if len(extra) > 5 else ''})")
    for k, ref in target.items():
        v = saved[k]
        if not isinstance(v, torch.Tensor):
            raise CheckpointError(f"{where}[{k!r}] is a {type(v).__name__}, expected a Tensor")
        if v.shape != ref.shape or v.dtype != ref.dtype:
            raise CheckpointError(f"{where}[{k!r}] has shape {tuple(v.shape)} dtype {v.dtype}, the engine's "
                                  f"has shape {tuple(ref.shape)} dtype {ref.dtype}")
        if v.is_floating_point() and not bool(torch.isfinite(v).all()):
            raise CheckpointError(f"{where}[{k!r}] contains non-finite values")


def _check_optimizer(where: str, saved, optimizer: torch.optim.Optimizer) -> None:
    if not isinstance(saved, Mapping) or "state" not in saved or "param_groups" not in saved:
        raise CheckpointError(f"{where} is not an optimizer state dict")
    groups = optimizer.param_groups
    if len(saved["param_groups"]) != len(groups):
        raise CheckpointError(f"{where} has {len(saved['param_groups'])} param groups, "
                              f"the engine's optimizer has {len(groups)}")
    params = []
    for i, (sg, g) in enumerate(zip(saved["param_groups"], groups)):
        if len(sg.get("params", ())) != len(g["params"]):
            raise CheckpointError(f"{where} param group {i} has {len(sg.get('params', ()))} parameters, "
                                  f"the engine's has {len(g['params'])}")
        params += list(zip(sg["params"], g["params"]))
    by_id = dict(params)
    for pid, st in saved["state"].items():
        if pid not in by_id:
            raise CheckpointError(f"{where} has state for unknown parameter id {pid}")
        p = by_id[pid]
        for k, v in st.items():
            # per-parameter moments (exp_avg, momentum, ...) have the parameter's shape; steps are scalars
            if isinstance(v, torch.Tensor) and v.dim() > 0 and v.shape != p.shape:
                raise CheckpointError(f"{where} state {k!r} of parameter {pid} has shape {tuple(v.shape)}, "
                                      f"the parameter has {tuple(p.shape)}")


def _read_config(state):
    from .config import RMMDConfig
    try:
        return RMMDConfig(**{**state["config"], "betas": tuple(state["config"]["betas"])})
    except (TypeError, ValueError, KeyError) as e:
        raise CheckpointError(f"checkpoint config is invalid: {e}") from e


def validate_meta(engine, state, required=("config", "phase", "generator", "rng", "counters")) -> None:
    """Check the non-network part of ``state``: format, version, config, phase, RNG states, counters."""
    if not isinstance(state, Mapping) or state.get("format") != FORMAT:
        raise CheckpointError("not an rmmd_core checkpoint (missing format marker "
                              f"{FORMAT!r}; got {type(state).__name__})")
    if state.get("version") != FORMAT_VERSION:
        raise CheckpointError(f"checkpoint format version {state.get('version')!r} is not supported "
                              f"(this rmmd_core reads version {FORMAT_VERSION})")
    missing = [k for k in required if k not in state]
    if missing:
        raise CheckpointError(f"checkpoint lacks entries {missing}")
    _read_config(state)
    if state["phase"] not in ("mm", "rmmd"):
        raise CheckpointError(f"checkpoint phase {state['phase']!r} is not 'mm' or 'rmmd'")
    gen = state["generator"]
    ref = engine.generator.get_state()
    if not isinstance(gen, torch.Tensor) or gen.shape != ref.shape or gen.dtype != ref.dtype:
        raise CheckpointError("checkpoint generator state does not fit the engine's generator "
                              f"(device {engine.generator.device})")
    rng = state["rng"]
    cpu = rng.get("torch_cpu") if isinstance(rng, Mapping) else None
    if not isinstance(cpu, torch.Tensor) or cpu.shape != torch.get_rng_state().shape:
        raise CheckpointError("checkpoint lacks a valid torch CPU RNG state")
    counters = state["counters"]
    if not isinstance(counters, Mapping) or any(
            not isinstance(counters.get(k), int) or counters[k] < 0 for k in _COUNTERS):
        raise CheckpointError(f"checkpoint counters must be non-negative integers {_COUNTERS}, got {counters!r}")


def validate_state(engine, state) -> None:
    """Raise :class:`CheckpointError` unless ``state`` can be loaded into ``engine`` without failing."""
    validate_meta(engine, state, required=("config", "phase", *_NETS, "student_optimizer", "aux_optimizer",
                                           "generator", "rng", "counters"))
    cfg = _read_config(state)
    student_sd = unwrap(engine.student.net).state_dict()
    _check_tensors("student", state["student"] or {}, student_sd)
    _check_tensors("auxiliary", state["auxiliary"] or {}, unwrap(engine.auxiliary.net).state_dict())
    frozen = ("anchor", "frozen_aux")
    if state["phase"] == "rmmd":
        # the phase-1 anchor is a copy of the student, the frozen auxiliary a copy of the auxiliary
        _check_tensors("anchor", state["anchor"] or {}, student_sd)
        _check_tensors("frozen_aux", state["frozen_aux"] or {}, unwrap(engine.auxiliary.net).state_dict())
    elif any(state[k] is not None for k in frozen):
        raise CheckpointError("checkpoint phase is 'mm' but it holds frozen phase-1 networks")
    if (state["ema"] is None) != (cfg.ema_decay is None):
        raise CheckpointError("checkpoint EMA presence does not match its config.ema_decay")
    if state["ema"] is not None:
        _check_tensors("ema", state["ema"], student_sd)
    _check_optimizer("student_optimizer", state["student_optimizer"], engine.student_optimizer)
    _check_optimizer("aux_optimizer", state["aux_optimizer"], engine.aux_optimizer)


# ---------------------------------------------------------------------- loading
def load_engine_state(engine, state) -> None:
    """Validate ``state`` (see :func:`validate_state`), then restore every entry into ``engine``."""
    _refuse_sharded(engine, "load_state_dict")
    validate_state(engine, state)
    cfg = _read_config(state)
    if state["phase"] == "rmmd":
        anchor = engine.anchor if engine.anchor is not None else engine.student.frozen_copy()
        frozen_aux = engine.frozen_aux if engine.frozen_aux is not None else engine.auxiliary.frozen_copy()
        unwrap(anchor.net).load_state_dict(state["anchor"])
        unwrap(frozen_aux.net).load_state_dict(state["frozen_aux"])
        engine.anchor, engine.frozen_aux = anchor, frozen_aux
    else:
        engine.anchor = engine.frozen_aux = None
    unwrap(engine.student.net).load_state_dict(state["student"])
    unwrap(engine.auxiliary.net).load_state_dict(state["auxiliary"])
    if state["ema"] is None:
        engine.ema = None
    else:
        if engine.ema is None:
            engine.ema = engine.student.frozen_copy()
        unwrap(engine.ema.net).load_state_dict(state["ema"])
    engine.student_optimizer.load_state_dict(state["student_optimizer"])
    engine.aux_optimizer.load_state_dict(state["aux_optimizer"])
    engine.config = cfg
    engine.generator.set_state(state["generator"])
    torch.set_rng_state(state["rng"]["torch_cpu"])
    if "torch_cuda" in state["rng"] and torch.cuda.is_available():
        cuda_states = state["rng"]["torch_cuda"]
        if len(cuda_states) == torch.cuda.device_count():
            torch.cuda.set_rng_state_all(cuda_states)
    for k in _COUNTERS:
        setattr(engine, k, int(state["counters"][k]))


# ---------------------------------------------------------------------- files
def _fsync_dir(path: str) -> None:
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:  # e.g. Windows: directories cannot be opened; os.replace is still atomic
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def atomic_save(obj, path: str | os.PathLike) -> None:
    """``torch.save(obj)`` to ``path`` atomically: temp file in the same directory, fsync, ``os.replace``.

    The same directory matters: ``os.replace`` is only atomic within one file system.
    """
    path = os.fspath(path)
    directory = os.path.dirname(os.path.abspath(path))
    tmp = os.path.join(directory, f".{os.path.basename(path)}.tmp-{os.getpid()}")
    try:
        with open(tmp, "wb") as f:
            torch.save(obj, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
    _fsync_dir(directory)  # make the rename itself durable


def save_checkpoint(engine, path: str | os.PathLike) -> None:
    """Write ``engine.state_dict()`` to ``path`` atomically (see :func:`atomic_save`)."""
    atomic_save(engine_state_dict(engine), path)


def read_checkpoint(path: str | os.PathLike, map_location="cpu") -> dict:
    """Read a checkpoint file into a dict; a truncated or foreign file raises :class:`CheckpointError`.

    ``weights_only=True``: a checkpoint is tensors and plain values, so no pickled code is ever run.
    """
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise CheckpointError(f"checkpoint {path!r} does not exist")
    try:
        state = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as e:  # zip errors (truncated), unpickling errors (foreign), ...
        raise CheckpointError(f"cannot read checkpoint {path!r} (truncated, corrupt or not a torch file): "
                              f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}") from e
    if not isinstance(state, Mapping) or state.get("format") != FORMAT:
        raise CheckpointError(f"{path!r} is not an rmmd_core checkpoint (no {FORMAT!r} format marker)")
    return dict(state)


def load_checkpoint(engine, path: str | os.PathLike) -> dict:
    """Read ``path``, validate it against ``engine``, then restore it; returns the state's counters.

    On any error the engine is left exactly as it was.
    """
    state = read_checkpoint(path, map_location=engine.device)
    # RNG states must be CPU ByteTensors whatever map_location did
    state["generator"] = state["generator"].cpu() if isinstance(state.get("generator"), torch.Tensor) \
        else state.get("generator")
    if isinstance(state.get("rng"), Mapping):
        state["rng"] = {k: (v.cpu() if isinstance(v, torch.Tensor) else [x.cpu() for x in v])
                        for k, v in state["rng"].items()}
    load_engine_state(engine, state)
    return dict(state["counters"])
