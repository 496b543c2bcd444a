"""rmmd_core: Rewarded Moment Matching Distillation (RMMD) and Moment Matching (MM) for any diffusion model.

Public API::

    Denoiser            wrap any nn.Module (UNet, DiT, MLP) + schedule + prediction type as x̂(z, t, cond)
    RMMD, RMMDConfig    the training state of a run and its configuration
    save_checkpoint / load_checkpoint   atomic write / validated restore of the whole training state
    step(engine, ...)   one full iteration (losses, backward, finite checks, optimiser steps, EMA)
    losses(engine, ...) the same computation as tensors, for trainers that own backward/optimisers
    sample(den, ...)    K-step posterior / DDIM(eta) sampling with NFE reporting
    schedules, rewards, ops (fused kernels), toy (2-D analytic task), metrics

Math: shared/docs/method.md (sections a-c, "Project defaults").
"""
from . import ops  # loads the C++ extension if built and registers the torch.library ops
from .checkpoint import CheckpointError, load_checkpoint, save_checkpoint
from .config import RMMDConfig
from .denoiser import Denoiser
from .engine import RMMD
from .rewards import CRPSReward, GrayscaleReward, LaplacianReward, Reward, as_reward
from .sampler import SampleResult, posterior_coefficients, sample, time_grid
from .schedules import EDM, DiscreteVP, RectifiedFlow, Schedule, VPCosine, VPLinear, get_schedule
from .step import StepLosses, losses, step

__all__ = [
    "Denoiser", "RMMD", "RMMDConfig", "step", "losses", "StepLosses", "sample", "SampleResult", "time_grid",
    "posterior_coefficients", "Schedule", "VPCosine", "VPLinear", "EDM", "RectifiedFlow", "DiscreteVP",
    "get_schedule", "Reward", "GrayscaleReward", "LaplacianReward", "CRPSReward", "as_reward", "ops",
    "save_checkpoint", "load_checkpoint", "CheckpointError",
]
__version__ = "0.1.0"
