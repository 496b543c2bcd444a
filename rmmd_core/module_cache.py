"""Cached parameter / buffer lists of a module, refreshed whenever the module's tensors change.

``module.parameters()`` walks the whole module tree through generators (tens of microseconds for a
small DiT, every call); a training step needs the same lists several times (gradient clipping of two
networks, the EMA's two parameter lists and buffers). :func:`tensors_of` returns them from a cache.

When is a cached list stale? Every way of adding or replacing a parameter, buffer or submodule through
``nn.Module`` (attribute assignment, ``register_parameter`` / ``register_buffer`` / ``add_module``,
``load_state_dict(assign=True)``) runs torch's global registration hooks, which bump :data:`_GENERATION`
here, and a cache built under an older generation is rebuilt. Paths that write ``module._parameters``
directly (``Module._apply`` with ``torch.__future__.set_overwrite_module_params_on_conversion(True)``,
FSDP2's parameter swap, ``del module.weight``) skip the hooks; they are caught by checking, on every
lookup, that each cached tensor is still the one its owner module holds under its name (one dict
lookup per tensor, a few microseconds). In-place changes (``load_state_dict``, ``.to()`` without the
overwrite flag, ``requires_grad_``) keep the same tensor objects, so the lists stay valid; callers
filter per call on what may change (``p.grad is not None``).
"""
from __future__ import annotations

import weakref

import torch
from torch import nn

__all__ = ["ModuleTensors", "tensors_of"]

_GENERATION = 0


def _bump(*_args) -> None:
    global _GENERATION
    _GENERATION += 1


# Global hooks (torch >= 2.0): called on every parameter / buffer / submodule registration in the process.
# They only increment a counter, so their cost elsewhere is one Python call per registration.
_HOOKS = (nn.modules.module.register_module_parameter_registration_hook(_bump),
          nn.modules.module.register_module_buffer_registration_hook(_bump),
          nn.modules.module.register_module_module_registration_hook(_bump))


def _collect(module: nn.Module, slot: str, owners: list) -> list:
    """The tensors of every submodule's ``slot`` dict ("_parameters" / "_buffers") in the order and with the
    de-duplication of ``module.parameters()`` / ``module.buffers()``; appends (dict, name, tensor) to owners."""
    out, seen = [], set()
    for mod in module.modules():
        table = getattr(mod, slot)
        for name, t in table.items():
            if t is not None and id(t) not in seen:
                seen.add(id(t))
                out.append(t)
                owners.append((table, name, t))
    return out


class ModuleTensors:
    """``params`` (tuple, ``module.parameters()`` order) and ``buffers`` (``module.buffers()`` order)
    of ``module`` at the time of building, with the owner of each for validation."""

    __slots__ = ("generation", "params", "buffers", "_owners")

    def __init__(self, module: nn.Module):
        self.generation = _GENERATION
        owners = []
        params = _collect(module, "_parameters", owners)
        buffers = _collect(module, "_buffers", owners)
        self.params, self.buffers, self._owners = tuple(params), tuple(buffers), tuple(owners)

    def valid(self) -> bool:
        """Still the module's tensors: no registration since building and every owner entry unchanged."""
        if self.generation != _GENERATION:
            return False
        for table, name, t in self._owners:
            if table.get(name) is not t:
                return False
        return True


# module -> ModuleTensors; weak keys, so a cache never keeps a network alive (the entries hold the
# modules' tensor dicts, not the modules), and copies / pickles of a module carry no cache
_CACHE: "weakref.WeakKeyDictionary[nn.Module, ModuleTensors]" = weakref.WeakKeyDictionary()


def tensors_of(module: nn.Module) -> ModuleTensors:
    """The (cached, validated) :class:`ModuleTensors` of ``module``."""
    cache = _CACHE.get(module)
    if cache is None or not cache.valid():
        cache = ModuleTensors(module)
        _CACHE[module] = cache
    return cache


def grads_of(module: nn.Module) -> list[torch.Tensor]:
    """Parameters of ``module`` that hold a gradient (the cached list, filtered per call)."""
    return [p for p in tensors_of(module).params if p.grad is not None]
