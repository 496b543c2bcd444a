"""`RMMD`: the training state of one distillation run (networks, optimisers, EMA, anchors, RNG).

The iteration itself lives in ``step.py`` (``rmmd_core.step`` / ``rmmd_core.losses``); this object only
owns what persists between iterations. Roles (method.md §c.1):

==============  =========================================================  =========
teacher         frozen reference x̂_θ (guided with CFG when configured)       frozen
student         the few-step generator Φ_θ / g_η                             trained
auxiliary       g_φ, estimates the student's own moment E_g[x | z_s]        trained (online)
anchor          Φ_θ0, the frozen phase-1 student of the L2 term             frozen (phase 2)
frozen_aux      φ0, the frozen phase-1 auxiliary (reference='frozen_aux')   frozen (phase 2)
ema             EMA of the student weights                                  updated
==============  =========================================================  =========
"""
from __future__ import annotations

import math

import numpy as np
import torch

from . import ops
from .adam import ForeachAdam, FusedAdam
from .config import RMMDConfig
from .denoiser import Denoiser, check_autocast
from .module_cache import grads_of, tensors_of
from .rewards import Reward, as_reward


def make_optimizer(module: torch.nn.Module, config: RMMDConfig, backend: str | None = None) -> torch.optim.Optimizer:
    """Adam(beta1 = 0, beta2 = 0.99, eps = 1e-12) by default (method.md "Project defaults").

    ``config.adam = 'rmmd'`` (default): :class:`~rmmd_core.adam.FusedAdam` on fused-op ``backend``, one
    pass per step (the engine folds the clip and the EMA into it), ~1 ulp from torch's rounding.
    ``'foreach'``: :class:`~rmmd_core.adam.ForeachAdam`, torch's ``Adam(foreach=True)`` with a leaner step,
    bit-identical to torch's per-tensor loop, 1.5-8x faster than it on CPU (2-D MLP / small DiT / small UNet:
    0.24 / 1.40 / 8.75 ms -> 0.22 / 0.90 / 4.53 ms, one thread, 2026-11-26, loaded machine). ``'fused'``:
    torch's fused Adam kernel (0.29 / 1.19 ms on the small DiT / UNet), which rounds differently (~1e-7
    relative per update)."""
    params = [p for p in module.parameters() if p.requires_grad]
    if not params:
        raise ValueError(f"{type(module).__name__} has no trainable parameters to optimise")
    hyper = dict(lr=config.lr, betas=tuple(config.betas), eps=config.eps)
    if config.adam == "fused":
        return torch.optim.Adam(params, fused=True, **hyper)
    if config.adam == "foreach":
        return ForeachAdam(params, **hyper)
    return FusedAdam(params, backend=backend, **hyper)


def _same_schedule(a: Denoiser, b: Denoiser) -> bool:
    return type(a.schedule) is type(b.schedule) and repr(a.schedule) == repr(b.schedule)


class RMMD:
    """State of an RMMD (or plain MM) distillation run.

    Args:
        teacher: frozen :class:`Denoiser` (set to eval and ``requires_grad=False`` in place).
        student, auxiliary: trainable Denoisers; default: copies of the teacher (method.md
            "Project defaults": Initialisation). They must share the teacher's schedule (one time axis).
        config: :class:`RMMDConfig`.
        reward: a callable ``(x0, cond) -> Tensor[B]``, a :class:`~rmmd_core.rewards.Reward`, or a
            built-in name (``'grayscale' | 'laplacian'``).
        sample_shape: per-sample shape ``(C, H, W)`` / ``(D,)`` used for data-free rollouts.
        student_optimizer, aux_optimizer: your optimisers; default Adam per ``config``.
        anchor, frozen_auxiliary: frozen phase-1 networks for phase 2; usually made by
            :meth:`start_phase2`.
        seed: seed of the engine's own generator (start noise, times, Philox seeds).
        backend: fused-op backend (``None`` = ``RMMD_CORE_BACKEND`` or automatic).
        dtype: dtype of the noise the engine draws (default float32).
        autocast: mixed precision for every network call: ``torch.bfloat16`` (or ``torch.float16``)
            sets :attr:`Denoiser.autocast` on the teacher, student, auxiliary, EMA and frozen copies
            (copies made later inherit it). Weights, optimiser state, losses and the posterior step
            stay in fp32. None (default) leaves each Denoiser's own setting.
    """

    def __init__(self, teacher: Denoiser, student: Denoiser | None = None, auxiliary: Denoiser | None = None, *,
                 config: RMMDConfig | None = None, reward=None, sample_shape=None,
                 student_optimizer: torch.optim.Optimizer | None = None,
                 aux_optimizer: torch.optim.Optimizer | None = None, anchor: Denoiser | None = None,
                 frozen_auxiliary: Denoiser | None = None, seed: int = 0, backend: str | None = None,
                 dtype: torch.dtype = torch.float32, autocast: torch.dtype | None = None):
        for name, d in (("teacher", teacher), ("student", student), ("auxiliary", auxiliary), ("anchor", anchor),
                        ("frozen_auxiliary", frozen_auxiliary)):
            if d is not None and not isinstance(d, Denoiser):
                raise TypeError(f"{name} must be a rmmd_core.Denoiser (wrap your nn.Module), got {type(d).__name__}")
        self.config = config if config is not None else RMMDConfig()
        if not isinstance(self.config, RMMDConfig):
            raise TypeError(f"config must be an RMMDConfig, got {type(self.config).__name__}")
        self.teacher = teacher
        teacher.requires_grad_(False).eval()
        self.student = student if student is not None else teacher.trainable_copy()
        self.auxiliary = auxiliary if auxiliary is not None else teacher.trainable_copy()
        if self.student is self.auxiliary or self.student is teacher or self.auxiliary is teacher:
            raise ValueError("teacher, student and auxiliary must be distinct Denoiser objects")
        if self.student.net is self.auxiliary.net:
            raise ValueError("student and auxiliary must not share the same network")
        for name, d in (("student", self.student), ("auxiliary", self.auxiliary), ("anchor", anchor),
                        ("frozen_auxiliary", frozen_auxiliary)):
            if d is not None and not _same_schedule(d, teacher):
                raise ValueError(f"{name} schedule {d.schedule!r} differs from the teacher's {teacher.schedule!r}; "
                                 "all networks must share one time axis")
        self.anchor = anchor.requires_grad_(False).eval() if anchor is not None else None
        self.frozen_aux = frozen_auxiliary.requires_grad_(False).eval() if frozen_auxiliary is not None else None
        self.reward: Reward | None = as_reward(reward)
        self.sample_shape = tuple(sample_shape) if sample_shape is not None else None
        self.student_optimizer = student_optimizer or make_optimizer(self.student, self.config, backend)
        self.aux_optimizer = aux_optimizer or make_optimizer(self.auxiliary, self.config, backend)
        self.ema = self.student.frozen_copy() if self.config.ema_decay is not None else None
        self.device = next((p.device for p in self.student.parameters()), torch.device("cpu"))
        self.dtype = dtype
        self.generator = torch.Generator(device=self.device).manual_seed(int(seed))
        self.backend = backend
        if autocast is not None:
            check_autocast(autocast)
            for den in (self.teacher, self.student, self.auxiliary, self.anchor, self.frozen_aux, self.ema):
                if den is not None:
                    den.autocast = autocast
        self._ema_plan = None  # update_ema's cached lists (see there)
        self._ema_checked = False
        self.iteration = 0
        self.student_updates = 0
        self.skipped_updates = 0
        self.apply_frozen_dtype()  # after the trainable copies: they keep the teacher's own precision

    # ------------------------------------------------------------------ phases
    @property
    def phase(self) -> str:
        """``'mm'`` (phase 1) until :meth:`start_phase2` freezes the anchors, then ``'rmmd'``."""
        return "rmmd" if self.anchor is not None else "mm"

    def start_phase2(self, reward=None, **config_changes) -> "RMMD":
        """Freeze the current student (L2 anchor) and auxiliary (optional reference), switch config.

        ``config_changes`` are applied to :class:`RMMDConfig` (e.g. ``reward_weight=0.5``). The online
        auxiliary keeps training (method.md §g.1). Returns ``self``.
        """
        self.anchor = self.student.frozen_copy()
        self.frozen_aux = self.auxiliary.frozen_copy()
        if reward is not None:
            self.reward = as_reward(reward)
        if config_changes:
            self.config = self.config.replace(**config_changes)
        self.apply_frozen_dtype()
        return self

    def apply_frozen_dtype(self) -> None:
        """Cast the frozen networks to ``config.frozen_dtype`` (no-op when None); idempotent and cheap.

        The teacher, anchor and frozen auxiliary get their floating-point weights and buffers cast in
        place (half the memory of fp32 for ``'bfloat16'``; the teacher object you passed is changed)
        and run under autocast in that dtype (unless they already had an autocast dtype), so the
        mixed fp32-input / bf16-weight calls go through autocast's casts. Their outputs are cast back to
        the input dtype by :class:`Denoiser`, so losses and fused ops stay fp32. ``losses()`` calls
        this every iteration (a marker check), so networks swapped in later, anchors rebuilt by a
        checkpoint load or a config changed by hand are covered too.
        """
        name = self.config.frozen_dtype
        if name is None:
            return
        dtype = getattr(torch, name)
        for den in (self.teacher, self.anchor, self.frozen_aux):
            if den is None or getattr(den, "_rmmd_frozen_dtype", None) is dtype:
                continue
            den.net.to(dtype)
            if den.autocast is None:
                den.autocast = dtype
            den._rmmd_frozen_dtype = dtype

    # ------------------------------------------------------------------ checkpointing
    def state_dict(self) -> dict:
        """The whole training state (networks, EMA, optimisers, RNG states, counters, config, phase).

        See :mod:`rmmd_core.checkpoint` for the layout; write it with :func:`rmmd_core.save_checkpoint`."""
        from .checkpoint import engine_state_dict
        return engine_state_dict(self)

    def load_state_dict(self, state: dict) -> None:
        """Restore :meth:`state_dict` output. Validates everything first: on a mismatched state it raises
        :class:`~rmmd_core.checkpoint.CheckpointError` and leaves this engine untouched."""
        from .checkpoint import load_engine_state
        load_engine_state(self, state)

    # ------------------------------------------------------------------ updates
    def wants_student_update(self) -> bool:
        return self.iteration % self.config.student_update_every == 0

    def ema_fold(self):
        """``(EMA parameter tensors, decay)`` when the student's EMA can ride in its optimiser's pass
        (:class:`~rmmd_core.adam.FusedAdam`, whose one group holds exactly the student's parameters in
        ``parameters()`` order, none of them or the EMA's distributed), else None. Cached per list identity."""
        opt = self.student_optimizer
        if self.ema is None or not isinstance(opt, FusedAdam) or len(opt.param_groups) != 1:
            return None
        ema_t, cur_t = tensors_of(self.ema), tensors_of(self.student)
        group_params = opt.param_groups[0]["params"]
        key = (ema_t, cur_t, id(group_params), len(group_params))
        cached = getattr(self, "_ema_fold", None)
        if cached is None or cached[0] != key:
            ok = (len(group_params) == len(cur_t.params) == len(ema_t.params)
                  and all(a is b for a, b in zip(group_params, cur_t.params))
                  and not any(_is_dtensor(t) for t in ema_t.params + cur_t.params))
            cached = self._ema_fold = (key, list(ema_t.params) if ok else None)
        if cached[1] is None:
            return None
        return cached[1], float(self.config.ema_decay)

    @torch.no_grad()
    def update_ema(self, params_done: str | None = None) -> str | None:
        """``p_ema <- beta p_ema + (1 - beta) p`` over all student parameters (one multi-tensor op,
        :func:`rmmd_core.ops.ema_update`, method.md §e K9, on the engine's backend); buffers are copied.

        Returns the backend the op ran on (the step metric ``backend_ema_update``), None when there is
        no EMA or it went through DTensor's own ``_foreach_lerp_`` (differently sharded FSDP2 copies).
        ``params_done``: the parameters' EMA already ran inside the optimiser's pass (:meth:`ema_fold`) on
        that backend; only the buffers are copied. The parameter lists come from
        :func:`rmmd_core.module_cache.tensors_of` (cached, rebuilt when a network's tensors change), so a
        step does not walk both module trees again."""
        if self.ema is not None and params_done is not None:
            for e, c in zip(tensors_of(self.ema).buffers, tensors_of(self.student).buffers):
                e.copy_(c)
            return params_done
        if self.ema is None:
            return None
        beta = float(self.config.ema_decay)
        ema_t, cur_t = tensors_of(self.ema), tensors_of(self.student)
        plan = getattr(self, "_ema_plan", None)
        if plan is None or plan[0] is not ema_t or plan[1] is not cur_t:
            # any DTensor (FSDP2) in the lists: their local shards are taken per call (views that a
            # re-sharding replaces); plain tensors are passed as they are
            dtensor = any(_is_dtensor(t) for t in ema_t.params + cur_t.params)
            plan = self._ema_plan = (ema_t, cur_t, dtensor, tuple(zip(ema_t.buffers, cur_t.buffers)))
            self._ema_checked = False
        _, _, dtensor, buffer_pairs = plan
        ema_p, cur_p = list(ema_t.params), list(cur_t.params)
        name = None
        if ema_p:
            local = _local_shards(ema_p, [c.detach() for c in cur_p]) if dtensor else (ema_p, cur_p)
            if local is None:  # differently sharded DTensors: let DTensor's own foreach rule redistribute
                torch._foreach_lerp_(ema_p, [c.detach().to(e.dtype) for e, c in zip(ema_p, cur_p)], 1.0 - beta)
            else:
                name = ops.resolve_backend("ema_update", local[0][0], local[1][0], backend=self.backend)
                if name in ("cpu", "cuda") and self._ema_checked:
                    # the C++ op checks lists, dtypes, shapes and devices itself; the Python entry point's
                    # per-tensor validation (ops.ema_update) ran on the first update of these lists
                    torch.ops.rmmd_core.ema_update(local[0], local[1], beta)
                else:
                    ops.ema_update(*local, beta, backend=name)
                    self._ema_checked = True
        for e, c in buffer_pairs:
            e.copy_(c)
        return name


def _is_dtensor(t: torch.Tensor) -> bool:
    # plain tensors answer without the import (this runs per gradient in backward_checks)
    if type(t) is torch.Tensor or type(t) is torch.nn.Parameter:
        return False
    try:
        from torch.distributed.tensor import DTensor
    except ImportError:  # torch built without distributed
        return False
    return isinstance(t, DTensor)


def _local_shards(ema_p: list[torch.Tensor], cur_p: list[torch.Tensor]):
    """The plain tensors the EMA op updates: FSDP2 (``DTensor``) parameters become their local shards,
    which are views, so updating them updates the DTensors. None when an EMA / student pair is not
    sharded the same way (then the shards do not correspond element by element)."""
    try:
        from torch.distributed.tensor import DTensor
    except ImportError:  # torch built without distributed
        return ema_p, cur_p
    ema_l, cur_l = [], []
    for e, c in zip(ema_p, cur_p):
        if isinstance(e, DTensor) or isinstance(c, DTensor):
            if not (isinstance(e, DTensor) and isinstance(c, DTensor) and e.placements == c.placements
                    and e.device_mesh == c.device_mesh):
                return None
            e, c = e.to_local(), c.to_local()
        ema_l.append(e)
        cur_l.append(c)
    return ema_l, cur_l


def apply_update(loss: torch.Tensor, module: torch.nn.Module, optimizer: torch.optim.Optimizer,
                 grad_clip: float | None) -> tuple[float, bool]:
    """Backward, finite check, clip, step. Returns ``(grad_norm, skipped)``.

    A non-finite loss or gradient leaves the weights *and* the optimiser state untouched (the
    optimiser's ``step`` is never called) and zeroes the gradients. Under DDP / FSDP the loss check
    is agreed across ranks (one rank skipping backward alone would hang the others' gradient
    all-reduce); the gradient norm is already global there, so that check agrees by itself.
    """
    optimizer.zero_grad(set_to_none=True)
    if not finite_on_all_ranks(loss, module):
        discard_backward(loss, module)
        optimizer.zero_grad(set_to_none=True)
        return float("nan"), True
    loss.backward()
    return finish_update(module, optimizer, grad_clip)


class UpdateChecks:
    """What :func:`backward_checks` leaves on the device for one module: ``tensors`` (``finite``: the loss
    is finite, absent when the caller reads the loss itself; ``norm``: the global gradient norm), to be
    read by the caller (with anything else) and passed to :meth:`finish` as floats (``finite`` always).
    Single-process only (no cross-rank agreement).

    ``backend_norm`` / ``backend_scale``: the fused-op backends the norm and (after :meth:`finish`) the
    clip ran on (step metrics ``backend_grad_norm`` / ``backend_grad_scale``); None when torch's own
    functions ran instead (DTensor gradients) or no clip was needed."""

    def __init__(self, module, optimizer, grad_clip, params, total, tensors, backend_norm=None):
        self.module, self.optimizer, self.grad_clip = module, optimizer, grad_clip
        self.params, self.total, self.tensors = params, total, tensors
        self.backend_norm, self.backend_scale = backend_norm, None
        self.ema_done = False

    def finish(self, values: dict, ema=None) -> tuple[float, bool]:
        """Clip and step as :func:`finish_update` would, from the read ``values``; ``(grad_norm, skipped)``.

        A :class:`~rmmd_core.adam.FusedAdam` optimiser gets the clip coefficient (and ``ema``, a pair
        ``(ema tensors, decay)`` from :meth:`RMMD.ema_fold`) folded into its one pass; ``ema_done`` then
        says the EMA was updated (its buffers are left to :meth:`RMMD.update_ema`)."""
        self.ema_done = False
        if not values["finite"]:  # as apply_update: a non-finite loss skips with grad_norm = nan
            self.optimizer.zero_grad(set_to_none=True)
            return float("nan"), True
        norm = values.get("norm", 0.0)
        fused = isinstance(self.optimizer, FusedAdam)
        coef = 1.0
        if self.params and self.grad_clip is not None and math.isfinite(norm):
            sharded = hasattr(self.total, "full_tensor")
            if sharded:
                torch.nn.utils.clip_grads_with_norm_(self.params, self.grad_clip, self.total, None)
            else:
                coef = clip_coefficient(self.grad_clip, norm, self.total.dtype)
                if coef < 1.0 and not fused:  # clip_grads_with_norm_'s multiply (its clamp is a no-op), one pass
                    self.backend_scale = self.backend_norm
                    coef_t = torch.full((), coef, dtype=self.total.dtype, device=self.total.device)
                    _fused_grad_scale([p.grad for p in self.params], coef_t, self.backend_scale)
        if not math.isfinite(norm):
            self.optimizer.zero_grad(set_to_none=True)
            return norm, True
        if fused:
            scale = coef if coef < 1.0 else 1.0
            if ema is None:
                self.optimizer.step(grad_scale=scale)
            else:
                self.optimizer.step(grad_scale=scale, ema=ema[0], ema_decay=ema[1])
                self.ema_done = True
            if scale != 1.0:
                self.backend_scale = self.optimizer.last_backend
        else:
            self.optimizer.step()
        return norm, False


def clip_coefficient(grad_clip: float, norm: float, dtype: torch.dtype) -> float:
    """``clip_grads_with_norm_``'s coefficient ``grad_clip / (norm + 1e-6)`` from the read ``norm``, with the
    rounding of its tensor math in ``dtype`` (the norm's: float32 or float64): ``norm + 1e-6`` adds the
    constant rounded to ``dtype``, and ``float / tensor`` is ``tensor.reciprocal() * float`` (torch's
    ``Tensor.__rtruediv__``). NumPy scalars round each IEEE operation exactly as the kernels do, so the value
    and the ``< 1`` decision equal torch's bit for bit (tests/test_grad_norm_op.py) without three small
    device ops per module."""
    f = np.float64 if dtype == torch.float64 else np.float32
    return float(f(1.0) / (f(norm) + f(1e-6)) * f(grad_clip))


def backward_checks(loss: torch.Tensor, module: torch.nn.Module, optimizer: torch.optim.Optimizer,
                    grad_clip: float | None, backend: str | None = None, loss_read: bool = False) -> UpdateChecks:
    """:func:`apply_update` without its host reads: zero the gradients, backward, and leave the finite
    check and the gradient norm on the device (:class:`UpdateChecks`); the clip coefficient is computed
    from the read norm (:func:`clip_coefficient`). ``loss_read``: the caller reads the loss's value anyway
    and passes ``finite`` to :meth:`UpdateChecks.finish` itself (no device-side check is made).

    Unlike :func:`apply_update` the backward runs before the loss is known to be finite (a non-finite
    loss's gradients are then dropped by :meth:`UpdateChecks.finish`), so one read can serve several
    modules; the resulting weights, optimiser state and returned numbers are the same, except that the
    norm is the fused :func:`rmmd_core.ops.grad_norm` on ``backend`` (the engine's): squares summed in
    float64 instead of torch's per-tensor float32 norms, ~1e-7 relative apart; the clip is
    :func:`rmmd_core.ops.grad_scale_` with clip_grads_with_norm_'s float32 coefficient. FSDP2 (DTensor)
    gradients keep torch's get_total_norm / clip_grads_with_norm_. Single process only: under DDP / FSDP
    the ranks must agree on skipping before the backward (use apply_update)."""
    optimizer.zero_grad(set_to_none=True)
    tensors = {} if loss_read else {"finite": torch.isfinite(loss.detach()).all()}
    loss.backward()
    params = grads_of(module)
    total, name = None, None
    if params:
        grads = [p.grad for p in params]
        if any(map(_is_dtensor, grads)):  # FSDP2: torch's path, whose DTensor norm is already global
            total = torch.nn.utils.get_total_norm(grads, 2.0, False, None)
        else:
            name = ops.resolve_backend("grad_norm", grads[0], backend=backend)
            total = _fused_grad_norm(grads, name)
        sharded = hasattr(total, "full_tensor")  # FSDP2: a DTensor holding the (already global) norm
        tensors["norm"] = total.full_tensor() if sharded else total
    return UpdateChecks(module, optimizer, grad_clip, params, total, tensors, name)


def _fused_grad_norm(grads: list[torch.Tensor], name: str) -> torch.Tensor:
    """``ops.grad_norm(grads)`` on backend ``name``. The C++ ops (cpu / cuda) are called directly: they check
    every tensor's dtype and device themselves, and the Python entry point's per-tensor validation (~0.4 us
    a tensor, ~50 us for a 100-tensor model) would cost more than the kernel; DTensors never get here."""
    if name in ("cpu", "cuda"):
        with torch.no_grad():
            return torch.ops.rmmd_core.grad_norm(grads)
    return ops.grad_norm(grads, backend=name)


def _fused_grad_scale(grads: list[torch.Tensor], coef: torch.Tensor, name: str) -> None:
    """``ops.grad_scale_(grads, coef)`` on backend ``name`` (the C++ ops directly, as in _fused_grad_norm)."""
    if name in ("cpu", "cuda"):
        with torch.no_grad():
            torch.ops.rmmd_core.grad_scale(grads, coef)
    else:
        ops.grad_scale_(grads, coef, backend=name)


def discard_backward(loss: torch.Tensor, module: torch.nn.Module) -> None:
    """For a skipped update of a DDP/FSDP-wrapped module: run the backward anyway, gradients discarded.

    A forward with grad arms the wrapper's backward hooks; FSDP2 in particular carries the unfinished
    forward state into the next iteration and then reduces gradients wrongly (measured: resumed and
    uninterrupted runs diverge at 1e-3 after one skipped step). The backward of a non-finite loss
    gives non-finite gradients, which the caller throws away. Plain modules need nothing.
    """
    from .distributed import is_wrapped
    if loss.requires_grad and is_wrapped(module):
        loss.backward()


def finite_on_all_ranks(loss: torch.Tensor, module: torch.nn.Module) -> bool:
    """``loss`` is finite here and, for a DDP/FSDP-wrapped ``module``, on every rank of its group."""
    from .distributed import all_ranks_true  # local import: keeps torch.distributed out of engine import
    return all_ranks_true(bool(torch.isfinite(loss.detach()).all()), module, loss.device)


def finish_update(module: torch.nn.Module, optimizer: torch.optim.Optimizer,
                  grad_clip: float | None) -> tuple[float, bool]:
    """After backward: global grad norm, clip, skip on a non-finite norm, else ``optimizer.step()``.

    The norm is ``torch.nn.utils.get_total_norm`` over the module's gradients (what ``clip_grad_norm_``
    computes); the gradients are scaled by ``clip_grads_with_norm_`` only when its coefficient
    ``min(grad_clip / (norm + 1e-6), 1)`` is below 1, since multiplying by exactly 1 changes no bit and
    the norm is read on the host anyway (one pass over every gradient saved in the usual case)."""
    params = grads_of(module)  # cached parameter list (module_cache), filtered on p.grad per call
    norm = 0.0
    if params:
        total = torch.nn.utils.get_total_norm([p.grad for p in params], 2.0, False, None)
        sharded = hasattr(total, "full_tensor")  # FSDP2: a DTensor holding the (already global) norm
        norm = float(total.full_tensor() if sharded else total)
        if grad_clip is not None and math.isfinite(norm):
            # the same float32 coefficient clip_grads_with_norm_ computes (so the decision is exact)
            if sharded or float(float(grad_clip) / (total + 1e-6)) < 1.0:
                torch.nn.utils.clip_grads_with_norm_(params, grad_clip, total, None)
    if not math.isfinite(norm):
        optimizer.zero_grad(set_to_none=True)
        return norm, True
    optimizer.step()
    return norm, False
