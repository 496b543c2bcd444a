"""`Denoiser`: any network + its schedule + its prediction type -> an x-predictor x̂(z, t, cond).

Everything in the engine works on x-predictions (method.md "Project defaults", §a.1). This module is the
one place where a user's model meets the engine: it adapts

* the call convention: ``net(z, t_in, **cond)``; outputs that are tensors, tuples, or objects with a
  ``.sample`` field (diffusers); DiT-style "learned sigma" outputs with twice the input channels;
* the time convention the network was trained with (continuous t, a DDPM index, the VE sigma, EDM's
  ``c_noise = log(sigma)/4``, the log-SNR, or any callable);
* the parameterisation (x0 / eps / v / flow / score / EDM preconditioning) -> x̂ (parameterization.py);
* classifier-free guidance, used only for the reference moment (method.md "Project defaults": Guidance).

Times are always continuous ``t in [0, 1]`` on the engine side, t = 1 the noisiest.
"""
from __future__ import annotations

import copy
from collections.abc import Callable, Mapping
from typing import Any

import torch
from torch import nn

from .parameterization import check_prediction, edm_preconditioning, x0_coefficients
from .schedule_memo import _fingerprint, memo_value, schedule_call
from .schedules import DiscreteVP, Schedule, get_schedule

TIME_INPUTS = ("t", "index", "sigma", "c_noise", "log_snr")

Cond = Mapping[str, Any] | torch.Tensor | None


def batch_of(cond: Cond) -> int | None:
    """Batch size carried by a conditioning (first dim of its tensors), or None if it carries none."""
    if cond is None:
        return None
    if isinstance(cond, torch.Tensor):
        return cond.shape[0] if cond.dim() > 0 else None
    for v in cond.values():
        if isinstance(v, torch.Tensor) and v.dim() > 0:
            return v.shape[0]
    return None


def check_cond_batch(cond: Cond, batch: int, name: str = "cond") -> None:
    """Raise ValueError if any batched tensor in ``cond`` does not have ``batch`` rows."""
    if cond is None:
        return
    items = [(name, cond)] if isinstance(cond, torch.Tensor) else [(f"{name}[{k!r}]", v) for k, v in cond.items()]
    for key, v in items:
        if isinstance(v, torch.Tensor) and v.dim() > 0 and v.shape[0] != batch:
            raise ValueError(f"{key} has batch {v.shape[0]}, expected {batch} (the batch of the samples)")


def repeat_cond(cond: Cond, times: int) -> Cond:
    """Tile every batched tensor of ``cond`` ``times`` times along dim 0 (member-major: row j*B + b)."""
    if cond is None or times == 1:
        return cond
    if isinstance(cond, torch.Tensor):
        return cond.repeat(times, *([1] * (cond.dim() - 1))) if cond.dim() > 0 else cond
    return {k: repeat_cond(v, times) if isinstance(v, torch.Tensor) else v for k, v in cond.items()}


def _cat_cond(a: Cond, b: Cond) -> Cond:
    if isinstance(a, torch.Tensor):
        return torch.cat([a, b], 0)
    out = dict(a)
    for k, v in b.items():
        if k in out and isinstance(v, torch.Tensor) and isinstance(out[k], torch.Tensor) and v.dim() > 0:
            out[k] = torch.cat([out[k], v], 0)
        else:
            out[k] = v
    return out


def _opmath(dtype: torch.dtype) -> torch.dtype:
    """``torch.promote_types(dtype, float32)`` for a floating ``dtype`` (z is checked to be one) without a
    dispatched op per call: float64 stays, float32 / float16 / bfloat16 compute in float32."""
    return torch.float64 if dtype == torch.float64 else torch.float32


class Denoiser(nn.Module):
    """Wrap ``net`` as an x-predictor ``x̂(z, t, cond)`` for the engine.

    Args:
        net: any ``nn.Module`` called as ``net(z_in, t_in, **cond)`` (``cond`` a dict), or
            ``net(z_in, t_in, cond)`` when ``cond`` is a tensor and ``cond_key`` is None, or
            ``net(z_in, t_in, **{cond_key: cond})`` when ``cond_key`` is given.
            Its output may be a tensor, a tuple (first item used) or an object with ``.sample``.
        schedule: a :class:`~rmmd_core.schedules.Schedule` or its name.
        prediction: what the network predicts: ``'x0' | 'eps' | 'v' | 'flow' | 'score' | 'edm'``
            (``'edm'``: raw ``F`` of EDM preconditioning; the input is scaled by ``c_in`` in VE
            coordinates, method.md §a.3).
        time_input: the time the network expects: ``'t'`` (continuous t), ``'index'`` (fractional DDPM
            index: ``DiscreteVP.index(t)`` for a discrete schedule, else ``t * (num_train_timesteps - 1)``),
            ``'sigma'`` (VE sigma = sigma_t/alpha_t), ``'c_noise'`` (log(sigma_VE)/4, EDM), ``'log_snr'``,
            or a callable ``(t: Tensor[B] float64, schedule) -> Tensor[B]``. Default: ``'c_noise'`` for
            ``prediction='edm'``, else ``'t'``.
        num_train_timesteps: N for ``time_input='index'`` on non-discrete schedules.
        round_index: round the index to the nearest integer (for nets that embed integer timesteps).
        learned_sigma: ``'auto'`` keeps the first C channels when the net returns 2C channels for a
            C-channel input (DiT with learned variance); ``True`` always splits; ``False`` never.
        cond_key: see ``net``.
        null_cond: unconditional conditioning for classifier-free guidance: a dict / tensor with the
            same batch as ``cond``, or a callable ``cond -> null cond``. Needed only when guidance is used.
        guidance_scale: default CFG scale ``w``: ``x̂ = x̂_c + w (x̂_c - x̂_u)``; None or 0 = unguided.
        autocast: run the network under ``torch.autocast(dtype=autocast)`` (``torch.bfloat16`` or
            ``torch.float16``); None (default) runs it in its own precision. Weights stay as they are
            (fp32 master weights for the optimiser); the output is cast back to ``z``'s dtype before
            the x̂ conversion, so losses, cotangents and the fused ops stay in fp32.

    Forward:
        z: ``(B, ...)`` noisy input; t: ``(B,)`` or scalar continuous time; cond: dict / tensor / None.
        Returns ``x̂``: same shape as ``z``.

    Every call increments ``self.calls`` (network calls), ``self.nfe`` (rows evaluated) and, when autograd
    is recording, ``self.grad_calls``, which the engine reports; the unit tests count calls independently
    with forward hooks.
    """

    def __init__(
        self,
        net: nn.Module,
        schedule: Schedule | str,
        prediction: str = "eps",
        *,
        time_input: str | Callable | None = None,
        num_train_timesteps: int = 1000,
        round_index: bool = False,
        learned_sigma: bool | str = "auto",
        cond_key: str | None = None,
        null_cond: Cond | Callable = None,
        guidance_scale: float | None = None,
        autocast: torch.dtype | None = None,
    ):
        super().__init__()
        if not isinstance(net, nn.Module):
            raise TypeError(f"net must be a torch.nn.Module, got {type(net).__name__}")
        self.net = net
        self.schedule = get_schedule(schedule)
        self.prediction = check_prediction(prediction)
        if time_input is None:
            time_input = "c_noise" if self.prediction == "edm" else "t"
        if not callable(time_input) and time_input not in TIME_INPUTS:
            raise ValueError(f"time_input must be one of {TIME_INPUTS} or a callable, got {time_input!r}")
        self.time_input = time_input
        if num_train_timesteps < 2:
            raise ValueError(f"num_train_timesteps must be >= 2, got {num_train_timesteps}")
        self.num_train_timesteps = int(num_train_timesteps)
        self.round_index = bool(round_index)
        if learned_sigma not in ("auto", True, False):
            raise ValueError(f"learned_sigma must be 'auto', True or False, got {learned_sigma!r}")
        self.learned_sigma = learned_sigma
        self.cond_key = cond_key
        self.null_cond = null_cond
        if guidance_scale is not None and guidance_scale < 0:
            raise ValueError(f"guidance_scale must be >= 0, got {guidance_scale}")
        self.guidance_scale = guidance_scale
        self.autocast = check_autocast(autocast)
        self.calls = 0
        self.nfe = 0
        self.grad_calls = 0

    # ------------------------------------------------------------------ helpers
    def net_time(self, t: torch.Tensor) -> torch.Tensor:
        """Map continuous ``t`` (float64, (B,)) to the network's own time input."""
        ti, sch = self.time_input, self.schedule
        if callable(ti):
            return ti(t, sch)
        if ti == "t":
            return t
        if ti == "index":
            u = (schedule_call(sch, "index", t) if isinstance(sch, DiscreteVP)
                 else sch_clamp(sch, t) * (self.num_train_timesteps - 1))
            return u.round() if self.round_index else u
        if ti == "sigma":
            return schedule_call(sch, "sigma_ve", t)
        if ti == "c_noise":
            return schedule_call(sch, "sigma_ve", t).log() / 4
        return schedule_call(sch, "log_snr", t)  # 'log_snr'

    def _call_net(self, z_in: torch.Tensor, t_in: torch.Tensor, cond: Cond) -> torch.Tensor:
        if self.autocast is not None:
            with torch.autocast(z_in.device.type, dtype=self.autocast):
                return self._call_net_raw(z_in, t_in, cond)
        return self._call_net_raw(z_in, t_in, cond)

    def _call_net_raw(self, z_in: torch.Tensor, t_in: torch.Tensor, cond: Cond) -> torch.Tensor:
        if cond is None:
            out = self.net(z_in, t_in)
        elif isinstance(cond, torch.Tensor):
            out = self.net(z_in, t_in, cond) if self.cond_key is None else self.net(z_in, t_in, **{self.cond_key: cond})
        else:
            out = self.net(z_in, t_in, **cond)
        # plain int attributes: through __dict__, not nn.Module.__setattr__ (~1.5 us a write, 12 a step)
        counts = self.__dict__
        counts["calls"] += 1
        counts["nfe"] += z_in.shape[0]
        counts["grad_calls"] += int(torch.is_grad_enabled())
        if hasattr(out, "sample"):
            out = out.sample
        elif isinstance(out, (tuple, list)):
            out = out[0]
        if not isinstance(out, torch.Tensor):
            raise TypeError(f"net returned {type(out).__name__}; expected a Tensor, a tuple or an object with .sample")
        c = z_in.shape[1] if z_in.dim() > 1 else None
        split = self.learned_sigma is True or (
            self.learned_sigma == "auto" and c is not None and out.dim() == z_in.dim() and out.shape[1] == 2 * c
            and out.shape[2:] == z_in.shape[2:]
        )
        if split:
            out = out[:, :c]
        if out.shape != z_in.shape:
            raise ValueError(
                f"net output has shape {tuple(out.shape)}, expected the input shape {tuple(z_in.shape)} "
                f"(prediction={self.prediction!r})"
            )
        return out

    def _null(self, cond: Cond, batch: int) -> Cond:
        if self.null_cond is None:
            raise ValueError("guidance_scale > 0 needs null_cond (the unconditional conditioning) on the Denoiser")
        nc = self.null_cond(cond) if callable(self.null_cond) else self.null_cond
        check_cond_batch(nc, batch, "null_cond")
        return nc

    # ------------------------------------------------------------------ forward
    def _evaluate(self, z: torch.Tensor, t, cond: Cond, guidance_scale: float | None):
        """Validate, call the network once (cond and uncond rows batched under CFG).

        Returns ``(out_c, out_u, w, t, alpha, sigma, view, extra)``: the raw outputs (``out_u`` None
        without guidance), the guidance scale in effect, the (B,) float64 times and schedule values, the
        broadcast view and the parameterisation's extra arguments (``to_x0`` keywords)."""
        if not isinstance(z, torch.Tensor) or not z.is_floating_point():
            raise TypeError(f"z must be a floating-point Tensor, got {getattr(z, 'dtype', type(z))}")
        B = z.shape[0]
        t = torch.as_tensor(t, dtype=torch.float64, device=z.device)
        if t.dim() == 0:
            t = t.expand(B)
        if t.shape != (B,):
            raise ValueError(f"t must be a scalar or have shape ({B},), got {tuple(t.shape)}")
        check_cond_batch(cond, B)
        w = self.guidance_scale if guidance_scale is None else guidance_scale
        if w is not None and w < 0:
            raise ValueError(f"guidance_scale must be >= 0, got {w}")

        view = (B,) + (1,) * (z.dim() - 1)
        alpha, sigma = schedule_call(self.schedule, "alpha_sigma", t)  # memoised within an engine iteration
        extra = {}
        if self.prediction == "edm":
            c_in, _, _, _ = edm_preconditioning(alpha, sigma, self.schedule.sigma_data)
            z_in = z * (c_in / alpha).to(z.dtype).view(view)
            extra["sigma_data"] = self.schedule.sigma_data
        else:
            z_in = z
        if self.prediction == "flow":
            da, ds = self.schedule.alpha_sigma_derivatives(t)
            extra["dalpha"], extra["dsigma"] = da.to(z.dtype).view(view), ds.to(z.dtype).view(view)
        # fp32 time even for bf16/fp16 nets: bf16 cannot represent index 999 (it rounds to 1000)
        t_in = self._net_input_time(t, torch.float64 if z.dtype == torch.float64 else torch.float32)

        out_u = None
        if w:  # one batched call for conditional + unconditional rows
            nc = self._null(cond, B)
            if _batchable(cond) and _batchable(nc):
                out = self._call_net(torch.cat([z_in, z_in]), torch.cat([t_in, t_in]), _cat_cond(cond, nc))
                out_c, out_u = out[:B], out[B:]
            else:
                out_c, out_u = self._call_net(z_in, t_in, cond), self._call_net(z_in, t_in, nc)
        else:
            out_c = self._call_net(z_in, t_in, cond)
        return out_c, out_u, w, t, alpha, sigma, view, extra

    def forward(self, z: torch.Tensor, t: torch.Tensor | float, cond: Cond = None,
                guidance_scale: float | None = None) -> torch.Tensor:
        out_c, out_u, w, t, alpha, sigma, view, extra = self._evaluate(z, t, cond, guidance_scale)
        if out_u is not None:
            x_c = self._to_x0(out_c, z, t, alpha, sigma, view, extra)
            x_u = self._to_x0(out_u, z, t, alpha, sigma, view, extra)
            return x_c + w * (x_c - x_u)
        return self._to_x0(out_c, z, t, alpha, sigma, view, extra)

    def affine_output(self, z: torch.Tensor, t: torch.Tensor | float, cond: Cond = None,
                      guidance_scale: float | None = None) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """The network output and the per-sample map to ``x̂``: ``x̂ = a[b] z + c[b] F`` (no x̂ formed).

        Every parameterisation is affine in ``(z, F)`` (``parameterization.x0_coefficients``) and so is
        classifier-free guidance: ``x̂_c + w (x̂_c - x̂_u) = a z + c (F_c + w (F_c - F_u))``, so ``F`` here is
        already guidance-combined (float32 math, rounded to z's dtype). Fused samplers pass ``(F, a, c)``
        to ``rmmd_core.ops.denoise_step``; ``forward`` stays the unfused definition. Calls the network
        exactly as ``forward`` does (same calls / nfe counts and network hooks); hooks registered on the
        Denoiser module itself do not run, so samplers only fuse when there are none.

        Args:
            z, t, cond, guidance_scale: as in :meth:`forward`.

        Returns:
            ``F``: shape and dtype of ``z``; ``a, c``: ``(B,)`` float64 on z's device.
        """
        out_c, out_u, w, t, alpha, sigma, view, extra = self._evaluate(z, t, cond, guidance_scale)
        out = out_c.to(z.dtype)  # autocast may hand back bf16; convert in the caller's precision
        if out_u is not None:
            opmath = _opmath(z.dtype)
            oc, ou = out.to(opmath), out_u.to(opmath)
            out = (oc + w * (oc - ou)).to(z.dtype)

        def coefficients():
            kw = {}
            if self.prediction == "flow":
                kw["dalpha"], kw["dsigma"] = self.schedule.alpha_sigma_derivatives(t)
            elif self.prediction == "edm":
                kw["sigma_data"] = self.schedule.sigma_data
            a, c = x0_coefficients(alpha, sigma, self.prediction, **kw)
            return a.to(torch.float64), c.to(torch.float64)

        # functions of t and the schedule only: shared within an iteration, and across iterations for a
        # rollout plan's pinned grid times (schedule_memo.pin)
        a, c = memo_value(t, ("affine_coefficients", self.prediction, _fingerprint(self.schedule)), coefficients)
        return out, a, c

    def _to_x0(self, out, z, t, alpha, sigma, view, extra):
        """``to_x0(out, z, alpha, sigma)`` with alpha, sigma rounded to z's dtype, as :func:`to_x0` computes
        it (``x̂ = a z + b out`` in z's compute dtype, rounded once), with ``(a, b)`` memoised per time
        tensor within an engine iteration (calls at the same t share them: student and anchor at t,
        teacher and auxiliary at s). Bit-identical to the direct call."""
        if out.dtype != z.dtype:  # autocast may hand back bf16; convert in the caller's precision
            out = out.to(z.dtype)
        if self.prediction == "x0":
            return out
        work = _opmath(z.dtype)

        def coefficients():
            a, b = x0_coefficients(alpha.to(z.dtype).view(view), sigma.to(z.dtype).view(view), self.prediction,
                                   **extra)
            return a.to(device=z.device, dtype=work), b.to(device=z.device, dtype=work)

        # extra (flow's d alpha/dt, d sigma/dt; edm's sigma_data) is a function of t and the schedule too
        tag = ("x0_coefficients", self.prediction, z.dtype, z.device, view, _fingerprint(self.schedule))
        a, b = memo_value(t, tag, coefficients)
        return (a * z.to(work) + b * out.to(work)).to(z.dtype)

    def _net_input_time(self, t: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
        """``net_time(t)`` in ``dtype``, memoised per time tensor within an engine iteration (built-in time
        inputs only: a callable ``time_input`` is called every time)."""
        if callable(self.time_input):
            return self.net_time(t).to(dtype)
        tag = ("net_time", self.time_input, self.round_index, self.num_train_timesteps, dtype,
               _fingerprint(self.schedule))
        return memo_value(t, tag, lambda: self.net_time(t).to(dtype))

    def _plain_copy(self) -> "Denoiser":
        # Copy the user's module, not its DDP / torch.compile wrapper: a DDP wrapper holds a process
        # group and a reducer, which a frozen or extra copy must not share or re-create.
        # FSDP2 modules refuse deepcopy; rmmd_core.distributed.shard_fsdp attaches a copier for them.
        copier = getattr(self.net, "_rmmd_copier", None)
        inner = unwrap(self.net)
        new_net = copier(self.net) if copier is not None else copy.deepcopy(inner) if inner is not self.net else None
        return copy.deepcopy(self, memo={id(self.net): new_net} if new_net is not None else None)

    def frozen_copy(self) -> "Denoiser":
        """A deep copy in eval mode with ``requires_grad=False`` everywhere (teacher, phase-1 anchor).

        The copy holds the unwrapped network (DDP / torch.compile wrappers are not copied)."""
        c = self._plain_copy()
        c.requires_grad_(False).eval()
        c.calls = c.nfe = c.grad_calls = 0
        return c

    def trainable_copy(self) -> "Denoiser":
        """A deep copy with ``requires_grad=True`` (student / auxiliary initialised from the teacher)."""
        c = self._plain_copy()
        c.requires_grad_(True).train()
        c.calls = c.nfe = c.grad_calls = 0
        return c


AUTOCAST_DTYPES = (torch.bfloat16, torch.float16)


def check_autocast(dtype) -> torch.dtype | None:
    """Validate an ``autocast`` argument: None, ``torch.bfloat16`` or ``torch.float16``."""
    if dtype is not None and dtype not in AUTOCAST_DTYPES:
        raise ValueError(f"autocast must be None, torch.bfloat16 or torch.float16, got {dtype!r}")
    return dtype


def unwrap(module: nn.Module) -> nn.Module:
    """The user's module inside DDP / ``torch.compile`` wrappers (whose state-dict keys carry prefixes)."""
    while True:
        if isinstance(module, torch.nn.parallel.DistributedDataParallel):
            module = module.module
        elif isinstance(getattr(module, "_orig_mod", None), nn.Module):
            module = module._orig_mod
        else:
            return module


def sch_clamp(schedule: Schedule, t: torch.Tensor) -> torch.Tensor:
    return t.clamp(schedule.t_min, schedule.t_max)


def _batchable(cond: Cond) -> bool:
    if cond is None:
        return False
    if isinstance(cond, torch.Tensor):
        return cond.dim() > 0
    return any(isinstance(v, torch.Tensor) and v.dim() > 0 for v in cond.values())
