"""Fused element-wise ops of rmmd_core (method.md §e) and their backend dispatch.

Importing this package loads the C++ extension ``rmmd_core._C`` when it was built (registering
``torch.ops.rmmd_core.*``), adds the Python fakes and autograd formulas, and exposes the validated
public entry points. A missing or broken extension is not an error here: the ``reference`` backend
still works, and the saved ImportError resurfaces, with an install hint, only when a C++ backend
(``cpu`` / ``cuda``) is requested explicitly. The Triton kernels (``ops/triton``) are imported the same
way: without triton the ``triton`` backend reports why.
"""

from __future__ import annotations

# torch first: rmmd_core._C links against libc10 / libtorch, which only become loadable once torch has
# been imported (it loads them with RTLD_GLOBAL). Without this, `import rmmd_core` in a fresh interpreter
# failed to load the extension and silently fell back to the reference backend.
import torch  # noqa: F401

try:
    from .. import _C  # noqa: F401  (loading the .so runs the TORCH_LIBRARY registrations)
except ImportError as _err:  # not built (RMMD_CORE_SKIP_EXT=1) or built against another torch
    _C_IMPORT_ERROR: ImportError | None = _err
else:
    _C_IMPORT_ERROR = None

try:
    from . import triton as _triton_ops  # noqa: E402  (defines the rmmd_core::<op>_triton triton_ops)
except ImportError as _err:  # triton not installed, or too old for torch.library.triton_op
    _TRITON_IMPORT_ERROR: ImportError | None = _err
    _TRITON_INTERPRETER = False
else:
    _TRITON_IMPORT_ERROR = None
    _TRITON_INTERPRETER = _triton_ops.interpreter_mode()

from . import _library  # noqa: E402  (needs the schemas from _C and the triton_ops, when present)
from . import dispatch  # noqa: E402
from . import rmmd_cotangent as _rmmd_cotangent_module  # noqa: E402,F401  (K5 fake + autograd registrations)
from . import aux_loss as _aux_loss_module  # noqa: E402,F401  (K6 fake + autograd registrations)
from . import renoise as _renoise_module  # noqa: E402,F401  (K2 fake + autograd registrations)
from . import image_rewards as _image_rewards_module  # noqa: E402,F401  (K4a/K4b fake + autograd registrations)
from . import ema as _ema_module  # noqa: E402,F401  (K9 fake registrations)
from . import denoise_step as _denoise_step_module  # noqa: E402,F401  (K1/K3 fake + autograd registrations)
from . import crps as _crps_module  # noqa: E402,F401  (K4c / K10 fake + autograd registrations)
from . import grad_norm as _grad_norm_module  # noqa: E402,F401  (grad_norm / grad_scale_ fake registrations)
from . import adam_update as _adam_update_module  # noqa: E402,F401  (adam_update fake registrations)
from .dispatch import (  # noqa: E402
    BACKENDS,
    available_backends,
    backend_reasons,
    philox_randn,
    posterior_step,
    resolve_backend,
)
from .reference import (  # noqa: E402
    COTANGENT_STATS, aux_loss_ref, philox_randn_ref, posterior_step_ref, renoise_ref, rmmd_cotangent_ref)
from .rmmd_cotangent import rmmd_cotangent  # noqa: E402
from .aux_loss import aux_loss  # noqa: E402
from .renoise import renoise  # noqa: E402
from .image_rewards import grayscale_reward, laplacian_reward  # noqa: E402
from .ema import ema_update  # noqa: E402
from .reward_reference import grayscale_reward_ref, laplacian_reward_ref  # noqa: E402
from .ema_reference import ema_update_ref  # noqa: E402
from .denoise_step import denoise_step  # noqa: E402
from .denoise_reference import denoise_step_ref, fold_denoise_coefficients  # noqa: E402
from .crps import crps_fair, forecast_stats  # noqa: E402
from .crps_reference import ForecastStats, crps_fair_ref, forecast_stats_ref  # noqa: E402
from .grad_norm import grad_norm, grad_scale_  # noqa: E402
from .grad_norm_reference import grad_norm_ref, grad_scale_ref  # noqa: E402
from .adam_update import adam_update  # noqa: E402
from .adam_reference import adam_update_ref  # noqa: E402

dispatch.refresh(_C_IMPORT_ERROR, _TRITON_IMPORT_ERROR, _TRITON_INTERPRETER)

__all__ = [
    "BACKENDS", "COTANGENT_STATS", "aux_loss", "aux_loss_ref", "available_backends", "backend_reasons", "denoise_step",
    "denoise_step_ref", "fold_denoise_coefficients", "philox_randn",
    "philox_randn_ref", "posterior_step", "posterior_step_ref", "renoise", "renoise_ref", "resolve_backend",
    "rmmd_cotangent", "rmmd_cotangent_ref",
    "grayscale_reward", "grayscale_reward_ref", "laplacian_reward", "laplacian_reward_ref", "ema_update",
    "ema_update_ref",
    "ForecastStats", "crps_fair", "crps_fair_ref", "forecast_stats", "forecast_stats_ref",
    "grad_norm", "grad_norm_ref", "grad_scale_", "grad_scale_ref", "adam_update", "adam_update_ref",
]
