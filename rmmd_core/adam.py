"""``ForeachAdam``: ``torch.optim.Adam(foreach=True)`` with a leaner ``step()``, bit-identical updates.

Why: torch's multi-tensor Adam spends a good part of a small model's step outside its eight ``_foreach_*``
kernels. Per step and parameter it reads the step counter twice on the host (``_get_value(step)``, one
``.item()`` each for the two bias corrections), builds its per-parameter lists in Python
(``_init_group``) and regroups them by device and dtype. Measured on the small DiT of
``benchmarks/bench_step.py`` (44 tensors, 203K values, 2 threads): 1.04 ms per step for torch's, 0.81 ms
for the same kernels called directly.

What: when every parameter of the (single) group has a gradient and the same step count, :meth:`step`
issues exactly torch's ``_multi_tensor_adam`` calls (same ops, same order, same scalars):

    step += 1                                   (a float32 / float64 CPU tensor per parameter, as torch)
    m <- lerp(m, g, 1 - beta1);  v <- v beta2;  v <- v + (1 - beta2) g g
    d <- sqrt(v) / sqrt(1 - beta2^k) + eps;     p <- p + (-lr / (1 - beta1^k)) m / d

with the bias corrections computed once from the step count ``k`` the optimiser tracks itself (replaying
the counter's float32 increments, so it equals what ``.item()`` would read). Everything else (several
groups, weight decay, amsgrad, maximize, capturable, complex or mixed device / dtype parameters, missing
gradients, a closure, unequal step counts) runs torch's own ``step``; state dicts are torch's, so
checkpoints move freely between the two classes. Step hooks run once per step (torch's wrapper).
"""
from __future__ import annotations

import math
import operator

import numpy as np
import torch

__all__ = ["ForeachAdam", "FusedAdam"]


def _torch_adam_step():
    """``torch.optim.Adam.step`` without torch's hook wrapper (``Optimizer._patch_step_function`` wraps
    every optimiser class's ``step`` once; ours is wrapped too, so the hooks must not run twice)."""
    f = torch.optim.Adam.step
    return f.__wrapped__ if getattr(f, "hooked", False) else f


def _plain_group(opt: torch.optim.Optimizer) -> dict | None:
    """The optimiser's parameter group when there is exactly one and it asks for plain Adam (no amsgrad,
    maximize, capturable, differentiable or fused flag; float lr and betas), else None."""
    if len(opt.param_groups) != 1:
        return None
    group = opt.param_groups[0]
    if (group["amsgrad"] or group["maximize"] or group["capturable"] or group["differentiable"] or group["fused"]
            or not isinstance(group["lr"], float) or not all(isinstance(b, float) for b in group["betas"])):
        return None
    return group


class ForeachAdam(torch.optim.Adam):
    """``torch.optim.Adam(params, foreach=True, ...)`` with a faster, bit-identical :meth:`step` (module
    docstring). Same arguments as ``torch.optim.Adam`` except ``foreach`` / ``fused``."""

    def __init__(self, params, **kwargs):
        for k in ("foreach", "fused"):
            if k in kwargs:
                raise TypeError(f"ForeachAdam: {k} is fixed (foreach=True); got {k}={kwargs[k]!r}")
        super().__init__(params, foreach=True, **kwargs)
        # the step count k every parameter's state["step"] holds, as a NumPy scalar of the counter's dtype,
        # or None when unknown (before the first step, after a fallback step or a state load): then read once
        self._count = None
        self._one = torch.tensor(1.0)  # torch's CPU-step increment operand (alpha=1.0 overload)

    def load_state_dict(self, state_dict) -> None:
        super().load_state_dict(state_dict)
        self._count = None

    def zero_grad(self, set_to_none: bool = True) -> None:
        """torch's ``zero_grad``; with ``set_to_none`` (the default) outside the profiler and torch.compile,
        the same ``p.grad = None`` loop without torch's per-call wrapper work (a record_function range and a
        dynamo guard, ~10 us a call: an engine step makes two)."""
        if not set_to_none or torch.autograd.profiler._is_profiler_enabled or torch.compiler.is_compiling():
            return super().zero_grad(set_to_none)
        for group in self.param_groups:
            for p in group["params"]:
                p.grad = None
        return None

    def _fast_lists(self):
        """``(params, grads, exp_avgs, exp_avg_sqs, steps)`` when the fast path applies, else None."""
        group = _plain_group(self)
        if group is None or not group["foreach"] or group["weight_decay"] != 0:
            return None
        params = group["params"]
        if not params:
            return None
        p0 = params[0]
        dtype, device = p0.dtype, p0.device
        if p0.is_complex():
            return None
        state = self.state
        states = []
        for p in params:
            g = p.grad
            if g is None or g.is_sparse or p.dtype is not dtype or p.device != device:
                return None
            st = state.get(p)
            if not st or "step" not in st:  # lazy state: torch's step initialises it
                return None
            states.append(st)
        return _adam_lists(params, states)

    def _step_count(self, steps):
        """The common step count (NumPy scalar in the counters' dtype), or None when they differ."""
        if self._count is None:
            values = torch.stack(steps).tolist() if len(steps) > 1 else [steps[0].item()]
            if any(v != values[0] for v in values):
                return None
            self._count = (np.float64 if steps[0].dtype == torch.float64 else np.float32)(values[0])
        return self._count

    def step(self, closure=None):
        lists = self._fast_lists() if closure is None else None
        count = self._step_count(lists[4]) if lists is not None else None
        if count is None:
            self._count = None  # torch's step may advance only some counters
            return _torch_adam_step()(self, closure)
        params, grads, exp_avgs, exp_avg_sqs, steps = lists
        group = self.param_groups[0]
        lr, eps = group["lr"], group["eps"]
        beta1, beta2 = group["betas"]
        n = len(params)
        with torch.no_grad():
            # torch._multi_tensor_adam, non-capturable branch, one device / dtype group
            torch._foreach_add_(steps, self._one, alpha=1.0)
            count = count + count.dtype.type(1.0)  # the counter's own rounding
            self._count = count
            k = float(count)  # what _get_value(step) reads
            torch._foreach_lerp_(exp_avgs, grads, 1 - beta1)
            torch._foreach_mul_(exp_avg_sqs, beta2)
            torch._foreach_addcmul_(exp_avg_sqs, grads, grads, 1 - beta2)
            step_size = (lr / (1 - beta1 ** k)) * -1
            bias_correction2_sqrt = (1 - beta2 ** k) ** 0.5
            denom = torch._foreach_sqrt(exp_avg_sqs)
            torch._foreach_div_(denom, [bias_correction2_sqrt] * n)
            torch._foreach_add_(denom, eps)
            torch._foreach_addcdiv_(params, exp_avgs, denom, [step_size] * n)
        return None


class FusedAdam(ForeachAdam):
    """``torch.optim.Adam`` whose update is the fused op :func:`rmmd_core.ops.adam_update`: one pass over
    every parameter, gradient and moment (torch's foreach Adam makes eight, and on CPU each is a per-tensor
    loop), optionally folding in the clip (``grad_scale``) and the EMA of the updated weights.

    Same arguments and state dicts as ``torch.optim.Adam`` (plus ``backend``: the fused-op backend, None =
    ``RMMD_CORE_BACKEND`` or automatic); checkpoints move freely between the two classes. The update is
    torch's formula with the op order of its foreach implementation and IEEE rounding (correctly rounded
    sqrt, no FMA contraction on CPU), so it differs from torch's CPU Adam by ~1 ulp where torch's vectorised
    sqrt is not correctly rounded (~20% of float32 values), ~1e-7 relative per update.

    :meth:`step` takes two keyword extensions the engine uses (``step(grad_scale=c, ema=[...],
    ema_decay=b)``): the gradients are multiplied by ``grad_scale`` first (and keep the scaled values, as
    ``clip_grads_with_norm_`` leaves them), and ``ema[i] <- lerp(ema[i], params[i], 1 - ema_decay)`` follows
    the update, all in the same pass. Configurations the op does not cover (several parameter groups,
    amsgrad, maximize, capturable, differentiable, complex or sparse or distributed tensors, parameters
    without a gradient, unequal step counts, a closure, a tensor lr) run torch's own step, with the scale
    applied before and the EMA after it as separate passes: the result is the same update either way.
    """

    def __init__(self, params, *, backend: str | None = None, **kwargs):
        super().__init__(params, **kwargs)
        self.backend = backend
        self._static = None  # the parameters whose fixed properties _fused_lists has checked
        self.last_backend: str | None = None  # backend of the last step's op; None: torch's own step ran
        self.ema_backend: str | None = None  # backend that updated the last step's ``ema`` (None: none given)

    def _fused_lists(self):
        """``(params, grads, exp_avgs, exp_avg_sqs, steps, fresh)`` when the op applies, else None; creates
        torch's lazy state (``fresh``: every state was created now, so the step count is 0).

        What cannot change between steps without replacing a parameter (its type, device, complex dtype)
        is checked once per parameter list (``_static``: the parameters it was checked for, by identity);
        the gradients and states are looked up every step (a user may replace either)."""
        group = _plain_group(self)
        if group is None:
            return None
        params = group["params"]
        if not params:
            return None
        static = self._static
        if static is None or len(static) != len(params) or not all(map(operator.is_, static, params)):
            device = params[0].device
            if any(p.device != device or p.is_complex() or (type(p) is not torch.nn.Parameter
                                                             and type(p) is not torch.Tensor) for p in params):
                return None
            self._static = static = tuple(params)
        grads = [p.grad for p in params]
        if any(g is None or g.is_sparse for g in grads):  # (`None in grads` would compare tensors with ==)
            return None
        state = self.state
        states = [state.get(p) for p in params]
        fresh = True
        if all(states):
            fresh = False
        else:
            for i, (p, st) in enumerate(zip(params, states)):
                if not st:  # torch's _init_group for a non-capturable, non-fused Adam
                    states[i] = state[p] = {"step": torch.tensor(0.0, dtype=_scalar_dtype()),
                                            "exp_avg": torch.zeros_like(p, memory_format=torch.preserve_format),
                                            "exp_avg_sq": torch.zeros_like(p, memory_format=torch.preserve_format)}
                else:
                    fresh = False
        lists = _adam_lists(params, states, grads)
        return None if lists is None else (*lists, fresh)

    def step(self, closure=None, *, grad_scale: float = 1.0, ema=None, ema_decay: float = 0.0):
        """One Adam step (``closure``: as torch's). ``grad_scale``: multiply the gradients first (> 0);
        ``ema`` (a list with one tensor per parameter, or None) and ``ema_decay``: update that EMA after."""
        lists = self._fused_lists() if closure is None else None
        if lists is not None and lists[5]:
            self._count = (np.float64 if lists[4][0].dtype == torch.float64 else np.float32)(0.0)
        count = self._step_count(lists[4]) if lists is not None else None
        if count is None:
            return self._unfused_step(closure, grad_scale, ema, ema_decay)
        params, grads, exp_avgs, exp_avg_sqs, steps, _ = lists
        group = self.param_groups[0]
        beta1, beta2 = group["betas"]
        from . import ops  # local: ops imports the extension; adam.py stays importable without it
        with torch.no_grad():
            count = count + count.dtype.type(1.0)  # the counter's own rounding
            k = float(count)
            scalars = (group["lr"] / (1 - beta1 ** k), beta1, beta2, group["eps"], (1 - beta2 ** k) ** 0.5,
                       float(group["weight_decay"]), float(grad_scale), float(ema_decay))
            ema = list(ema) if ema is not None else []
            name = ops.resolve_backend("adam_update", params[0], backend=self.backend)
            _adam_update(name, params, grads, exp_avgs, exp_avg_sqs, ema, scalars)
            # the counters after the update (which does not read them): an update refused for a bad argument
            # leaves them, like every other tensor, untouched
            torch._foreach_add_(steps, self._one, alpha=1.0)  # torch's per-parameter counters, one dispatch
            self._count = count
        self.last_backend = name
        self.ema_backend = name if ema else None
        return None

    def _unfused_step(self, closure, grad_scale, ema, ema_decay):
        """torch's step with the scale before and the EMA after it (module docstring of the class)."""
        self._count = None  # torch's step may advance only some counters
        self.last_backend = self.ema_backend = None
        if grad_scale != 1.0:
            grads = [p.grad for g in self.param_groups for p in g["params"] if p.grad is not None]
            with torch.no_grad():
                torch._foreach_mul_(grads, float(grad_scale))
        loss = _torch_adam_step()(self, closure)
        if ema is not None:
            from . import ops
            ema = list(ema)
            params = [p for g in self.param_groups for p in g["params"]]
            if ema:
                name = ops.resolve_backend("ema_update", ema[0], params[0], backend=self.backend)
                ops.ema_update(ema, params, float(ema_decay), backend=name)
                self.ema_backend = name
        return loss


def _adam_lists(params: list, states: list[dict], grads: list | None = None):
    """``(params, grads, exp_avgs, exp_avg_sqs, steps)`` of parameters with gradients and their Adam states,
    or None when the step counters are not on the CPU (torch's capturable / fused layout)."""
    steps = [st["step"] for st in states]
    if not steps[0].is_cpu:
        return None
    return (params, [p.grad for p in params] if grads is None else grads, [st["exp_avg"] for st in states],
            [st["exp_avg_sq"] for st in states], steps)


def _adam_update(name: str, params, grads, exp_avgs, exp_avg_sqs, ema, scalars: tuple) -> None:
    """``ops.adam_update`` on backend ``name`` with the scalars in the op's order. The C++ ops (cpu / cuda) are
    called directly when the scalars are in range: the op checks every tensor before touching any, and the
    entry point's list and scalar checks (~15 us) are a tenth of a small model's update. When the op refuses,
    the entry point runs to raise its TypeError / ValueError naming the argument."""
    from . import ops  # local: ops imports the extension; adam.py stays importable without it
    if name in ("cpu", "cuda") and _plain_scalars(scalars):
        try:
            torch.ops.rmmd_core.adam_update(params, grads, exp_avgs, exp_avg_sqs, ema, *scalars)
            return
        except (RuntimeError, TypeError):
            pass  # nothing was written: the entry point below names the problem
    step_size, beta1, beta2, eps, bc2, wd, scale, decay = scalars
    ops.adam_update(params, grads, exp_avgs, exp_avg_sqs, ema, step_size=step_size, beta1=beta1, beta2=beta2,
                    eps=eps, bias_correction2_sqrt=bc2, weight_decay=wd, grad_scale=scale, ema_decay=decay,
                    backend=name)


def _plain_scalars(scalars: tuple) -> bool:
    """Whether the update's scalars are all in the op's domain (finite, in range: ops.check_adam_scalars'
    rules), so the C++ op can be called without the entry point's checks; else the entry point raises."""
    step_size, beta1, beta2, eps, bc2, wd, scale, decay = scalars
    return (0.0 <= step_size < math.inf and 0.0 <= beta1 < 1.0 and 0.0 <= beta2 < 1.0 and 0.0 <= eps < math.inf
            and 0.0 < bc2 < math.inf and 0.0 <= wd < math.inf and 0.0 < scale < math.inf and 0.0 <= decay <= 1.0)


def _scalar_dtype() -> torch.dtype:
    """torch's dtype for Adam's step counters (float64 under a float64 default dtype, else float32)."""
    return torch.float64 if torch.get_default_dtype() == torch.float64 else torch.float32
