"""Activation checkpointing for the one differentiable student call.

RMMD already keeps activation memory independent of K (rollouts run under ``no_grad``; gradients flow
through one student call per sample, method.md §c.4). For big UNets / DiTs even that one call can be
too much; :func:`checkpoint_activations` recomputes chosen blocks during backward instead of storing
their activations.

It patches the ``forward`` of each selected submodule in place, so parameter names, state dicts and
checkpoints are unchanged, and FSDP2 (whose hooks sit on ``__call__``) and DDP compose with it. It
uses non-reentrant ``torch.utils.checkpoint``, the variant that supports FSDP2, keyword arguments
and outputs that do not all require grad. Under ``no_grad`` (rollouts, frozen copies) the block runs
normally: there is nothing to save.
"""
from __future__ import annotations

import functools
from collections.abc import Callable

import torch
from torch import nn
from torch.utils.checkpoint import checkpoint


def _checkpointed(forward, *args, **kwargs):
    if not torch.is_grad_enabled():
        return forward(*args, **kwargs)
    return checkpoint(forward, *args, use_reentrant=False, **kwargs)


def checkpoint_activations(module: nn.Module, predicate: Callable[[nn.Module], bool]) -> int:
    """Recompute every submodule of ``module`` for which ``predicate(submodule)`` is true in backward.

    Selects outermost matches only (a block inside a checkpointed block is already recomputed).
    Call it on the raw network before DDP / FSDP wrapping, e.g.
    ``checkpoint_activations(unet, lambda m: isinstance(m, ResnetBlock2D))``.
    Returns the number of submodules patched; raises ValueError when none matches.
    """
    if not isinstance(module, nn.Module):
        raise TypeError(f"module must be a torch.nn.Module, got {type(module).__name__}")
    done: list[nn.Module] = []
    for sub in module.modules():
        if any(sub is d or any(sub is m for m in d.modules()) for d in done):
            continue
        if predicate(sub):
            if getattr(sub, "_rmmd_checkpointed", False):
                raise ValueError(f"{type(sub).__name__} is already activation-checkpointed")
            sub.forward = functools.partial(_checkpointed, sub.forward)
            sub._rmmd_checkpointed = True
            done.append(sub)
    if not done:
        raise ValueError("predicate matched no submodule of module: nothing to checkpoint")
    return len(done)
