"""Adapters from real model classes to :class:`~rmmd_core.Denoiser`.

Most models need no adapter, only the right :class:`Denoiser` options:

=================================  ==========================================================================
model                              Denoiser
=================================  ==========================================================================
your ``net(z, t, **cond)``         ``Denoiser(net, schedule, prediction)``: continuous t in [0, 1]
``diffusers.UNet2DModel``          ``Denoiser(unet, DiscreteVP.from_diffusers_config(**sched.config),
                                   prediction='eps'|'v', time_input='index')``; cond ``{'class_labels': y}``
``diffusers.UNet2DConditionModel`` same; cond ``{'encoder_hidden_states': text_emb}`` (B, L, cross_attn_dim)
``diffusers.DiTTransformer2DModel``same; cond ``{'class_labels': y}``; its learned-sigma head (2C output
                                   channels) is split off automatically
``diffusers.SD3Transformer2DModel````Denoiser(KeywordCall(net), RectifiedFlow(), 'flow',
                                   time_input=scaled_time(1000))``; cond ``{'encoder_hidden_states': ...,
                                   'pooled_projections': ...}``
=================================  ==========================================================================

:func:`from_diffusers` builds exactly these from a model and (optionally) its scheduler's config.

Adding a new model takes three questions:

1. *Call convention.* If it is ``net(noisy, time, **cond)`` nothing is needed. If the time is not the
   second positional argument (SD3: ``forward(hidden_states, encoder_hidden_states, ..., timestep)``),
   wrap it in :class:`KeywordCall` naming the two arguments. Outputs may be tensors, tuples or
   objects with ``.sample``.
2. *Time input.* What number did training feed the network for noise level t? ``'index'`` (DDPM
   timestep 0..N-1), ``'sigma'``, ``'c_noise'``, ``'log_snr'``, ``'t'``, or any callable
   ``(t float64 (B,), schedule) -> (B,)`` such as :func:`scaled_time`.
3. *Schedule and prediction.* The forward process it was trained with (``DiscreteVP`` for DDPM-family
   models, ``RectifiedFlow`` for flow-matching ones, ``EDM``, ...) and what it predicts
   (``'eps' | 'v' | 'x0' | 'flow' | 'edm' | 'score'``).

Example, a new flow-matching transformer called as ``net(x, timestep=..., context=...)`` with
timesteps in [0, 1000]::

    den = Denoiser(KeywordCall(net, sample="x", time="timestep"), RectifiedFlow(), prediction="flow",
                   time_input=scaled_time(1000))
    engine = RMMD(den, sample_shape=(16, 32, 32))
    step(engine, cond={"context": text_emb})
"""
from __future__ import annotations

from collections.abc import Mapping

import torch
from torch import nn

from .denoiser import Denoiser
from .schedules import DiscreteVP, RectifiedFlow, Schedule

# diffusers scheduler ``prediction_type`` -> rmmd_core prediction
_DIFFUSERS_PREDICTIONS = {"epsilon": "eps", "v_prediction": "v", "sample": "x0", "flow_prediction": "flow"}
_DDPM_FAMILY = ("UNet2DModel", "UNet2DConditionModel", "DiTTransformer2DModel", "UVit2DModel")
_FLOW_FAMILY = ("SD3Transformer2DModel",)


class KeywordCall(nn.Module):
    """Call ``net(**{sample: z, time: t}, **cond)``: for networks whose time is not the 2nd positional.

    Holds no parameters of its own; its state-dict keys are the wrapped network's prefixed by ``net.``.
    z: the noisy input ``(B, ...)``; t: the network-time ``(B,)`` the Denoiser computed.
    """

    def __init__(self, net: nn.Module, sample: str = "hidden_states", time: str = "timestep"):
        super().__init__()
        if not isinstance(net, nn.Module):
            raise TypeError(f"net must be a torch.nn.Module, got {type(net).__name__}")
        for name, v in (("sample", sample), ("time", time)):
            if not isinstance(v, str) or not v.isidentifier():
                raise ValueError(f"{name} must be a keyword-argument name, got {v!r}")
        self.net, self.sample_kw, self.time_kw = net, sample, time

    def forward(self, z: torch.Tensor, t: torch.Tensor, **cond):
        clash = {self.sample_kw, self.time_kw} & set(cond)
        if clash:
            raise ValueError(f"cond must not contain {sorted(clash)}: the Denoiser passes them itself")
        return self.net(**{self.sample_kw: z, self.time_kw: t}, **cond)

    def extra_repr(self) -> str:
        return f"sample={self.sample_kw!r}, time={self.time_kw!r}"


def scaled_time(scale: float):
    """``time_input`` callable ``t -> scale * t`` (flow-matching models trained with timestep = 1000 sigma)."""
    scale = float(scale)
    if not scale > 0:
        raise ValueError(f"scale must be > 0, got {scale}")

    def net_time(t: torch.Tensor, schedule: Schedule) -> torch.Tensor:
        return t * scale
    net_time.__qualname__ = f"scaled_time({scale:g})"
    return net_time


def from_diffusers(model: nn.Module, scheduler_config: Mapping | None = None, *, prediction: str | None = None,
                   schedule: Schedule | None = None, **denoiser_kwargs) -> Denoiser:
    """A :class:`Denoiser` for a ``diffusers`` model, with the conventions of its family.

    Args:
        model: a ``UNet2DModel``, ``UNet2DConditionModel``, ``DiTTransformer2DModel`` (DDPM family:
            timesteps are DDPM indices) or ``SD3Transformer2DModel`` (rectified flow, velocity
            ``eps - x``, timestep ``= 1000 t``).
        scheduler_config: the training scheduler's ``config`` (e.g. ``DDPMScheduler(...).config`` or the
            ``scheduler/scheduler_config.json`` of a pipeline). DDPM family: gives the betas and
            ``prediction_type``; flow family: ``num_train_timesteps`` (the timestep scale). A
            ``shift`` entry only moves the inference grid, not the model's schedule, and is ignored.
        prediction, schedule: override what the config implies.
        **denoiser_kwargs: passed to :class:`Denoiser` (``null_cond``, ``guidance_scale``, ...).

    Raises TypeError for other model classes (use :class:`Denoiser` directly, see the module doc).
    """
    name = type(model).__name__
    cfg = dict(scheduler_config or {})
    if name in _DDPM_FAMILY:
        pt = cfg.get("prediction_type", "epsilon")
        if prediction is None:
            if pt not in _DIFFUSERS_PREDICTIONS:
                raise ValueError(f"scheduler_config prediction_type {pt!r} is not one of "
                                 f"{sorted(_DIFFUSERS_PREDICTIONS)}")
            prediction = _DIFFUSERS_PREDICTIONS[pt]
        if schedule is None:
            schedule = DiscreteVP.from_diffusers_config(**cfg)
        denoiser_kwargs.setdefault("time_input", "index")
        return Denoiser(model, schedule, prediction, **denoiser_kwargs)
    if name in _FLOW_FAMILY:
        n = int(cfg.get("num_train_timesteps", 1000))
        denoiser_kwargs.setdefault("time_input", scaled_time(n))
        return Denoiser(KeywordCall(model, "hidden_states", "timestep"), schedule or RectifiedFlow(),
                        prediction or "flow", **denoiser_kwargs)
    raise TypeError(f"from_diffusers does not know {name}; supported: {', '.join(_DDPM_FAMILY + _FLOW_FAMILY)}. "
                    "Wrap other models with rmmd_core.Denoiser directly (see rmmd_core/adapters.py)")
