"""Backend selection and the public, validated entry points of the fused ops.

Backends (house-style "Dispatch"):

* ``reference``: ``ops/reference.py``, pure PyTorch, always available, the truth in tests;
* ``cpu``: the ATen kernel in ``rmmd_core._C`` (CPU tensors);
* ``triton``: the ``rmmd_core::<op>_triton`` triton_ops in ``ops/triton/``: CUDA tensors on a GPU, or CPU
  tensors when the kernels were defined under ``TRITON_INTERPRET=1`` (the interpreter; tests only);
* ``cuda``: the torch-free CUDA kernel in ``rmmd_core._C``, present only in builds against CUDA torch.

The choice comes from the ``backend=`` argument, else the ``RMMD_CORE_BACKEND`` environment variable
(read at call time), else ``auto``. An explicit choice that cannot run raises ``RuntimeError`` with the
reasons; ``auto`` takes the first backend of ``cuda, triton, cpu, reference`` that has none, except that
it never picks the Triton *interpreter*: on CPU tensors the order is ``cpu, reference`` (the interpreter
runs one Python-level program at a time, orders of magnitude slower than even the eager reference, so it
is only ever used when asked for explicitly). Every backend answers
``not_supported_reasons(tensors) -> list[str]`` (the idea of xformers' dispatcher).
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass

import torch

from . import _checks
from ._library import op_defined
from .reference import philox_randn_ref, posterior_step_ref

__all__ = [
    "BACKENDS", "BACKEND_ENV", "Backend", "auto_backends", "available_backends", "backend_reasons",
    "device_philox_args", "get_backend", "philox_randn", "posterior_step", "resolve_backend",
]

BACKEND_ENV = "RMMD_CORE_BACKEND"
BACKENDS = ("reference", "cpu", "triton", "cuda")
_AUTO_ORDER = ("cuda", "triton", "cpu", "reference")
_OPS = ("posterior_step", "renoise", "rmmd_cotangent", "aux_loss", "denoise_step", "grayscale_reward",
        "laplacian_reward", "ema_update", "crps_fair", "forecast_stats", "grad_norm", "grad_scale",
        "adam_update")
_DATA_DTYPES = _checks.DATA_DTYPES  # kept: older code imports it from here
_INSTALL_HINT = "rebuild it with `pip install --no-build-isolation -e .` from the repository root"

# Set by rmmd_core/ops/__init__.py after it tried to import rmmd_core._C and rmmd_core.ops.triton.
_extension_error: ImportError | None = None
_triton_error: ImportError | None = None
_triton_interpreter: bool = False
# Build-level reasons per (backend, op), computed once by refresh() so that traced code (torch.compile)
# only reads plain Python data instead of querying the dispatcher.
_static_reasons: dict[tuple[str, str], tuple[str, ...]] = {}
# (op, requested backend, tensor devices) -> backend name: resolve_backend's memo, cleared by refresh().
_resolved: dict[tuple, str] = {}


def _has_kernel(op: str, dispatch_key: str) -> bool:
    # Private but stable dispatcher query (torchao's tests use it the same way): is a kernel registered?
    qualname = f"rmmd_core::{op}"
    return op_defined(qualname) and torch._C._dispatch_has_kernel_for_dispatch_key(qualname, dispatch_key)


def _extension_reasons(backend: str, op: str) -> tuple[str, ...]:
    if _extension_error is not None:
        return (f"rmmd_core._C failed to import ({_extension_error}); {_INSTALL_HINT}",)
    if not op_defined(f"rmmd_core::{op}"):
        return (f"rmmd_core._C does not define rmmd_core::{op}; {_INSTALL_HINT}",)
    if backend == "cpu" and not _has_kernel(op, "CPU"):
        return (f"rmmd_core._C has no CPU kernel for rmmd_core::{op}",)
    if backend == "cuda" and not _has_kernel(op, "CUDA"):
        why = ("torch is a CPU build (torch.version.cuda is None)" if torch.version.cuda is None
               else "rmmd_core._C was built without CUDA (RMMD_CORE_SKIP_CUDA or no CUDA_HOME at build time)")
        return (f"no CUDA build: {why}",)
    return ()


def _triton_reasons(op: str) -> tuple[str, ...]:
    if _triton_error is not None:
        return (f"triton is unavailable ({_triton_error})",)
    if not op_defined(f"rmmd_core::{op}_triton"):
        return (f"no Triton kernel for rmmd_core::{op}",)
    return ()


def refresh(extension_error: ImportError | None = None, triton_error: ImportError | None = None,
            triton_interpreter: bool = False) -> None:
    """Recompute build-level availability (called on import; call again after loading a new extension).

    Args:
        extension_error: why ``rmmd_core._C`` failed to import (None: it loaded).
        triton_error: why ``rmmd_core.ops.triton`` failed to import (None: it loaded).
        triton_interpreter: whether the Triton kernels were defined under ``TRITON_INTERPRET=1``.
    """
    global _extension_error, _triton_error, _triton_interpreter
    _resolved.clear()
    _extension_error = extension_error
    _triton_error = triton_error
    _triton_interpreter = triton_interpreter
    for op in _OPS:
        _static_reasons[("reference", op)] = ()
        _static_reasons[("triton", op)] = _triton_reasons(op)
        for backend in ("cpu", "cuda"):
            _static_reasons[(backend, op)] = _extension_reasons(backend, op)


@dataclass(frozen=True)
class Backend:
    """One way to run one op: ``name`` in BACKENDS, the ``op`` name, and the device type it needs."""

    name: str
    op: str
    device_type: str | None  # None: any device (the reference)

    def not_supported_reasons(self, tensors: Sequence[torch.Tensor] = ()) -> list[str]:
        """Why this backend cannot run its op on ``tensors`` (empty list: it can)."""
        reasons = list(_static_reasons[(self.name, self.op)])
        if self.name == "triton":
            # Compiled Triton runs on GPUs only; the interpreter runs on CPU tensors only.
            wanted = "cpu" if _triton_interpreter else "cuda"
            others = sorted({str(t.device) for t in tensors if t.device.type != wanted})
            if others:
                mode = ("the kernels were defined under TRITON_INTERPRET=1 (interpreter)" if _triton_interpreter
                        else "compiled Triton kernels need a GPU; set TRITON_INTERPRET=1 before importing "
                             "rmmd_core to run them on CPU tensors")
                reasons.append(f"the triton backend needs {wanted} tensors here, got tensors on "
                               f"{', '.join(others)} ({mode})")
        elif self.device_type is not None:
            others = sorted({str(t.device) for t in tensors if t.device.type != self.device_type})
            if others:
                reasons.append(f"the {self.name} backend needs {self.device_type} tensors, got tensors on "
                               f"{', '.join(others)}")
        return reasons


# The reference runs anywhere; the Triton backend's device rule depends on interpreter mode (above).
_DEVICE_TYPES = {"reference": None, "cpu": "cpu", "triton": None, "cuda": "cuda"}
_BACKEND_OBJECTS = {(op, name): Backend(name, op, _DEVICE_TYPES[name]) for op in _OPS for name in BACKENDS}


def get_backend(op: str, name: str) -> Backend:
    """The ``Backend`` called ``name`` for ``op``."""
    _check_op(op)
    if name not in BACKENDS:
        raise ValueError(f"backend must be one of {BACKENDS}, got {name!r}")
    return _BACKEND_OBJECTS[(op, name)]


def backend_reasons(op: str, *tensors: torch.Tensor) -> dict[str, list[str]]:
    """``{backend: reasons}`` for every backend (empty reasons: usable for these tensors)."""
    return {name: get_backend(op, name).not_supported_reasons(tensors) for name in BACKENDS}


def available_backends(op: str = "posterior_step", *tensors: torch.Tensor) -> list[str]:
    """Backends that can run ``op`` (on ``tensors``, if given), in auto-selection priority order."""
    return [name for name in _AUTO_ORDER if not get_backend(op, name).not_supported_reasons(tensors)]


def auto_backends(op: str = "posterior_step", *tensors: torch.Tensor) -> list[str]:
    """Backends ``auto`` may pick for ``op`` on ``tensors``, best first (the interpreter never appears)."""
    _check_op(op)
    return [name for name in _auto_order(tensors) if not get_backend(op, name).not_supported_reasons(tensors)]


def _auto_order(tensors: Sequence[torch.Tensor]) -> tuple[str, ...]:
    """Automatic priority: ``cuda > triton > cpu > reference``, minus the interpreter (see module doc)."""
    if _triton_interpreter:
        return tuple(name for name in _AUTO_ORDER if name != "triton")
    return _AUTO_ORDER


def _check_op(op: str) -> None:
    if op not in _OPS:
        raise ValueError(f"op must be one of {_OPS}, got {op!r}")


def _requested_backend(backend: str | None) -> tuple[str, str]:
    """(choice, where it came from); choice is 'auto' or a backend name."""
    if backend is not None:
        source = "backend argument"
        choice = backend
    else:
        source = f"environment variable {BACKEND_ENV}"
        choice = os.environ.get(BACKEND_ENV, "auto")
    if not isinstance(choice, str) or choice.strip().lower() not in ("auto",) + BACKENDS:
        raise ValueError(f"{source} must be one of {('auto',) + BACKENDS}, got {choice!r}")
    return choice.strip().lower(), source


def resolve_backend(op: str, *tensors: torch.Tensor, backend: str | None = None) -> str:
    """Name of the backend that ``op`` would run on for ``tensors`` (what engines log).

    Args:
        op: op name, e.g. ``"posterior_step"``.
        *tensors: the op's tensor arguments (their devices matter).
        backend: ``None`` (use ``RMMD_CORE_BACKEND``, default ``auto``), ``"auto"`` or a backend name.

    Raises:
        ValueError: unknown op or backend name.
        RuntimeError: an explicitly requested backend cannot run; the message lists why.
    """
    # Memo of successful resolutions: the answer depends only on the op, the request (the argument, else
    # the environment variable's raw value) and the tensors' devices (build-level facts change only in
    # refresh(), which clears it). A step resolves ~16 times, and the full rule costs ~20 us each: visible
    # next to a small network. Not used while tracing, so torch.compile only ever reads plain data here.
    raw = backend if backend is not None else os.environ.get(BACKEND_ENV)
    compiling = torch.compiler.is_compiling()
    key = None
    if not compiling and (raw is None or type(raw) is str):
        key = (op, backend is None, raw, *[t.device for t in tensors])
        hit = _resolved.get(key)
        if hit is not None:
            return hit
    choice, source = _requested_backend(backend)
    name = _resolve(op, choice, source, tensors, backend)
    if key is not None:
        _resolved[key] = name
    return name


def _resolve(op: str, choice: str, source: str, tensors, backend) -> str:
    _check_op(op)
    if choice == "auto":
        for name in _auto_order(tensors):
            if not get_backend(op, name).not_supported_reasons(tensors):
                return name
        # Unreachable while the reference accepts everything; kept so a future restriction fails loudly.
        raise RuntimeError(f"no backend can run rmmd_core::{op}: {backend_reasons(op, *tensors)}")
    reasons = get_backend(op, choice).not_supported_reasons(tensors)
    if reasons:
        message = f"backend {choice!r} ({source}) cannot run rmmd_core::{op}: " + "; ".join(reasons)
        if choice in ("cpu", "cuda") and _extension_error is not None:
            raise RuntimeError(message) from _extension_error
        raise RuntimeError(message)
    return choice


# Kept under its old name: other modules (and branches) import it from here.
_check_int = _checks.integer


def _validate_posterior_step(z_t, x_hat, A, C, gamma, seed, offset):
    for name, t in (("x_hat", x_hat), ("A", A), ("C", C), ("gamma", gamma)):
        _checks.tensor(t, name)
    _checks.data(z_t, "z_t")
    _checks.like(x_hat, "x_hat", z_t, "z_t")
    for name, coef in (("A", A), ("C", C), ("gamma", gamma)):
        _checks.per_sample(coef, name, z_t, "z_t")
    return _checks.philox_key(seed, "seed", z_t, "z_t"), _checks.philox_key(offset, "offset", z_t, "z_t")


def device_philox_args(seed: int | torch.Tensor, offset: int | torch.Tensor,
                       device: torch.device) -> tuple[torch.Tensor, torch.Tensor] | None:
    """``None`` when seed and offset are both ints (the ops' int schemas), else both as int64 tensors.

    Device seeds exist for CUDA-graph capture: a kernel launch argument is frozen into the graph at capture,
    a value in device memory is read at every replay (the caller ``copy_``-es the next seed in). When only
    one of the two is a tensor, the other becomes a 0-d tensor through ``torch.full``, a fill kernel that is
    itself capturable (``torch.tensor(int, device=...)`` is a host-to-device copy, which capture forbids);
    its value is then a constant of the graph, as an int argument would be. Arguments must be validated
    already (``_checks.philox_key``).
    """
    if not isinstance(seed, torch.Tensor) and not isinstance(offset, torch.Tensor):
        return None

    def as_tensor(value):
        if isinstance(value, torch.Tensor):
            return value
        return torch.full((), value, dtype=torch.int64, device=device)

    return as_tensor(seed), as_tensor(offset)


def posterior_step(z_t: torch.Tensor, x_hat: torch.Tensor, A: torch.Tensor, C: torch.Tensor,
                   gamma: torch.Tensor, seed: int | torch.Tensor, offset: int | torch.Tensor = 0,
                   backend: str | None = None) -> torch.Tensor:
    """Posterior / DDIM(eta) step with in-kernel Philox noise (method.md §a.4, §e K1)::

        z_s[b, j] = A[b] * z_t[b, j] + C[b] * x_hat[b, j] + gamma[b] * n[b * D + j]
        n[i]      = tl.randn(seed, offset + i)          (Philox-4x32-10 + Box-Muller, float32)

    D = z_t.numel() // B and i is the flat row-major *logical* index, so results do not depend on
    strides. For DDIM(eta): A = sqrt(sigma_s^2 - gamma^2) / sigma_t, C = alpha_s - A alpha_t,
    gamma = eta sigma_s sigma_{t|s} / sigma_t. Samples with gamma[b] == 0 draw no noise. Math runs in
    float32 (float64 for float64 data; the noise itself is always float32) and is rounded once.
    Non-contiguous z_t / x_hat are copied once by the C++ and Triton kernels (the reference reads them
    as they are); the output is always contiguous.

    Autograd: grad_z_t = A[b] * grad, grad_x_hat = C[b] * grad. A, C, gamma, seed and offset are
    treated as constants (no gradient on any backend).

    Args:
        z_t: (B, ...) float32, float64, float16 or bfloat16: the state at time t.
        x_hat: same shape, dtype and device as z_t: the x-prediction.
        A, C, gamma: (B,) floating tensors on z_t's device (compute them in float64; they are read as
            float32, or float64 for float64 data).
        seed: Philox key, int in [0, 2**63). Same (seed, offset) gives the same noise.
        offset: first Philox counter, int in [0, 2**63); draw ``numel`` counters per call, so
            successive calls sharing a seed should advance it by ``z_t.numel()``.
            Either may instead be a one-element int64 tensor on z_t's device (a *device seed*), read
            by the kernel from device memory, so a CUDA graph that captured the call draws fresh noise
            after ``seed_t.copy_(next_seed)``; results are bit-identical to the int with that value.
            Such tensors run the ``rmmd_core::*_dev`` ops. The value is checked on CPU only (a GPU
            check would need a device read); a negative value on a GPU is not detected.
        backend: None (``RMMD_CORE_BACKEND``, default auto), "auto", "reference", "cpu", "triton", "cuda".

    Returns:
        z_s: new contiguous tensor with z_t's shape, dtype and device.

    Raises:
        TypeError / ValueError: invalid arguments (the message names the argument).
        RuntimeError: an explicitly requested backend cannot run (the message says why).
    """
    seed, offset = _validate_posterior_step(z_t, x_hat, A, C, gamma, seed, offset)
    name = resolve_backend("posterior_step", z_t, x_hat, A, C, gamma, backend=backend)
    if name == "reference":
        return posterior_step_ref(z_t, x_hat, A, C, gamma, seed, offset)
    keys = device_philox_args(seed, offset, z_t.device)
    if keys is not None:  # device seeds: the *_dev twins of the ops (same kernels, same stream)
        op = (torch.ops.rmmd_core.posterior_step_dev_triton if name == "triton"
              else torch.ops.rmmd_core.posterior_step_dev)
        return op(z_t, x_hat, A, C, gamma, *keys)
    if name == "triton":
        return torch.ops.rmmd_core.posterior_step_triton(z_t, x_hat, A, C, gamma, seed, offset)
    # cpu and cuda are the same dispatcher op; the tensors' device selects the kernel.
    return torch.ops.rmmd_core.posterior_step(z_t, x_hat, A, C, gamma, seed, offset)


def philox_randn(numel: int, seed: int, offset: int = 0, *, device: torch.device | str | None = None) -> torch.Tensor:
    """The noise stream the kernels draw: ``n[i] = tl.randn(seed, offset + i)`` for i < numel.

    Args:
        numel: number of draws, >= 0.
        seed: int in [0, 2**63).
        offset: int in [0, 2**63).
        device: where to compute (default CPU).

    Returns:
        float32 tensor of shape (numel,); computed by the pure-PyTorch reference.
    """
    numel = _checks.integer(numel, "numel")
    seed = _checks.integer(seed, "seed", upper=2**63)
    offset = _checks.integer(offset, "offset", upper=2**63)
    return philox_randn_ref(numel, seed, offset, device)
