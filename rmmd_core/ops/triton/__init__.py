"""Triton kernels of the fused ops, registered as ``torch.library.triton_op`` (``rmmd_core::<op>_triton``).

Each module holds one op: a private ``@triton.jit`` kernel and a ``triton_op`` launcher that calls it
through ``torch.library.wrap_triton`` so Inductor can see into it. Launchers make no ``torch.cuda``
calls, so the same launcher runs on CUDA tensors, or on CPU tensors when ``TRITON_INTERPRET=1`` was set
before this package was imported (``@triton.jit`` reads it at decoration time).

Importing this package needs ``triton``; ``rmmd_core/ops/__init__.py`` imports it inside ``try`` and the
dispatcher reports the ImportError as the triton backend's reason when it is missing.
"""

from __future__ import annotations

import triton

from . import posterior_step  # noqa: F401  (registers rmmd_core::posterior_step_triton, renoise_triton)
from . import rmmd_cotangent  # noqa: F401  (registers rmmd_core::rmmd_cotangent_triton)
from . import aux_loss  # noqa: F401  (registers rmmd_core::aux_loss_triton)
from . import image_rewards  # noqa: F401  (registers rmmd_core::grayscale_reward_triton, laplacian_reward_triton)
from . import ema  # noqa: F401  (registers rmmd_core::ema_update_triton)
from . import denoise_step  # noqa: F401  (registers rmmd_core::denoise_step_triton)
from . import crps  # noqa: F401  (registers rmmd_core::crps_fair_triton, forecast_stats_triton)
from . import grad_norm  # noqa: F401  (registers rmmd_core::grad_norm_triton, grad_scale_triton)
from . import adam_update  # noqa: F401  (registers rmmd_core::adam_update_triton)

__all__ = ["interpreter_mode"]


def interpreter_mode() -> bool:
    """Whether the kernels were decorated in interpreter mode (run on CPU tensors, not on GPUs)."""
    from triton.runtime.interpreter import InterpretedFunction

    return isinstance(posterior_step._denoise_step_kernel, InterpretedFunction)


TRITON_VERSION = triton.__version__
