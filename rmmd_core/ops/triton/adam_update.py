"""Triton kernel of the fused optimiser update (clip scale + Adam + EMA): ``rmmd_core::adam_update_triton``.

For every tensor i, in the math type of ``params[i]`` (float32 for float32 / bfloat16 / float16, float64
for float64), every scalar rounded to that type once (``ops/adam_reference.py`` is the truth)::

    g  = grads[i]                                         read as stored
    g  = round_g(g * grad_scale);  grads[i] <- g           only when grad_scale != 1 (SCALE_GRAD)
    g  = g + weight_decay * p                             only when weight_decay != 0 (WEIGHT_DECAY)
    m  = lerp(m, g, 1 - beta1)                            e + w (x - e) if |w| < 0.5, else x - (x - e)(1 - w)
    v  = v * beta2 + ((1 - beta2) * g) * g
    m, v rounded to their dtype and stored; the stored values are used below
    d  = sqrt(v) / bias_correction2_sqrt + eps
    p  = p + ((-step_size) * m) / d                       rounded to the param dtype and stored
    ema[i] <- lerp(ema[i], p, 1 - ema_decay)              only when ema is non-empty (HAS_EMA); EMA math type

Shapes: ``params[i]``, ``grads[i]``, ``exp_avgs[i]``, ``exp_avg_sqs[i]`` share one shape and dtype
(float32 / float64 / float16 / bfloat16, any strides); ``ema[i]`` (when ema is non-empty) has that shape and
any of those dtypes, with math type float64 for a float64 EMA, else float32.

Multi-tensor-apply with a chunk table, as ops/triton/ema.py: the launcher groups the tensors by (param
dtype, EMA dtype or None), cuts every tensor of a group into BLOCK-element chunks and writes, per chunk, the
*addresses* of its first param / grad / exp_avg / exp_avg_sq (/ EMA) element and its length into int64
tensors; program c casts them back to typed pointers, so one launch updates the whole group in place. The
scalars travel in a small tensor of the math type (so each is rounded to it once, as the reference does) and
the optional steps are constexpr switches (no cost when off). Division and square root are the exactly
rounded ``div_rn`` / ``sqrt_rn`` in float32 (float64's are exact already) and the launch disables
multiply-add contraction into FMAs, so float32 / float64 results match the reference bit for bit. Raw
addresses cannot be traced by FakeTensor / Inductor, so this is a plain ``torch.library.custom_op``
(opaque to torch.compile) rather than a ``triton_op``; strided tensors are updated through contiguous
working copies and copied back.
"""

from __future__ import annotations

import contextlib

import torch
import triton
import triton.language as tl

from ._common import BLOCK, bf16_by_bits, cast_for_store, launchable

_TL_TYPES = {torch.float32: tl.float32, torch.float64: tl.float64, torch.float16: tl.float16,
             torch.bfloat16: tl.bfloat16}


@triton.jit
def _div(a, b, F64: tl.constexpr):
    """a / b rounded to nearest (Triton's fp32 ``/`` may be approximate on GPUs)."""
    if F64:
        return a / b
    else:
        return tl.math.div_rn(a, b)


@triton.jit
def _sqrt(x, F64: tl.constexpr):
    """sqrt(x) rounded to nearest (``tl.sqrt`` may be approximate in float32 on GPUs)."""
    if F64:
        return tl.sqrt(x)
    else:
        return tl.math.sqrt_rn(x)


@triton.jit
def _lerp(start, end, w, one_minus_w, SMALL: tl.constexpr):
    """torch.lerp's two-sided form; SMALL is |w| < 0.5 (decided on the host from the rounded weight)."""
    if SMALL:
        return start + w * (end - start)
    else:
        return end - (end - start) * one_minus_w


@triton.jit
def _adam_kernel(
    p_addr_ptr,  # (chunks,) int64: address of the chunk's first param element
    g_addr_ptr,  # (chunks,) int64: ... grad element
    m_addr_ptr,  # (chunks,) int64: ... exp_avg element
    v_addr_ptr,  # (chunks,) int64: ... exp_avg_sq element
    e_addr_ptr,  # (chunks,) int64: ... EMA element (unused unless HAS_EMA)
    length_ptr,  # (chunks,) int64: elements in the chunk (<= BLOCK_SIZE)
    s_ptr,  # (9,) param math type, each rounded once: grad_scale, weight_decay, w1 = 1 - beta1, 1 - w1, beta2,
    #         1 - beta2, bias_correction2_sqrt, eps, -step_size
    es_ptr,  # (2,) EMA math type: we = 1 - ema_decay, 1 - we (unused unless HAS_EMA)
    PARAM_TYPE: tl.constexpr, EMA_TYPE: tl.constexpr, HAS_EMA: tl.constexpr, SCALE_GRAD: tl.constexpr,
    WEIGHT_DECAY: tl.constexpr, M_SMALL: tl.constexpr, E_SMALL: tl.constexpr, BLOCK_SIZE: tl.constexpr,
    BF16_BITS: tl.constexpr, EMA_BF16_BITS: tl.constexpr,
):
    c = tl.program_id(0)
    p_ptr = tl.load(p_addr_ptr + c).to(tl.pointer_type(PARAM_TYPE))
    g_ptr = tl.load(g_addr_ptr + c).to(tl.pointer_type(PARAM_TYPE))
    m_ptr = tl.load(m_addr_ptr + c).to(tl.pointer_type(PARAM_TYPE))
    v_ptr = tl.load(v_addr_ptr + c).to(tl.pointer_type(PARAM_TYPE))
    n = tl.load(length_ptr + c)
    offs = tl.arange(0, BLOCK_SIZE)
    mask = offs < n

    w1 = tl.load(s_ptr + 2)
    F64: tl.constexpr = PARAM_TYPE == tl.float64
    # Loads upcast at once: the interpreter cannot do bfloat16 arithmetic.
    g = tl.load(g_ptr + offs, mask=mask, other=0.0).to(w1.dtype)
    p = tl.load(p_ptr + offs, mask=mask, other=0.0).to(w1.dtype)
    m = tl.load(m_ptr + offs, mask=mask, other=0.0).to(w1.dtype)
    v = tl.load(v_ptr + offs, mask=mask, other=0.0).to(w1.dtype)

    if SCALE_GRAD:
        g_stored = cast_for_store(g * tl.load(s_ptr + 0), g_ptr, BF16_BITS)
        tl.store(g_ptr + offs, g_stored, mask=mask)
        g = g_stored.to(w1.dtype)
    if WEIGHT_DECAY:
        g = g + tl.load(s_ptr + 1) * p

    m_new = _lerp(m, g, w1, tl.load(s_ptr + 3), M_SMALL)
    v_new = v * tl.load(s_ptr + 4) + (tl.load(s_ptr + 5) * g) * g
    m_stored = cast_for_store(m_new, m_ptr, BF16_BITS)
    v_stored = cast_for_store(v_new, v_ptr, BF16_BITS)
    tl.store(m_ptr + offs, m_stored, mask=mask)
    tl.store(v_ptr + offs, v_stored, mask=mask)

    denom = _div(_sqrt(v_stored.to(w1.dtype), F64), tl.load(s_ptr + 6), F64) + tl.load(s_ptr + 7)
    p_new = p + _div(tl.load(s_ptr + 8) * m_stored.to(w1.dtype), denom, F64)
    p_stored = cast_for_store(p_new, p_ptr, BF16_BITS)
    tl.store(p_ptr + offs, p_stored, mask=mask)

    if HAS_EMA:
        e_ptr = tl.load(e_addr_ptr + c).to(tl.pointer_type(EMA_TYPE))
        ew = tl.load(es_ptr)
        e = tl.load(e_ptr + offs, mask=mask, other=0.0)
        if EMA_TYPE != tl.float64:
            e = e.to(tl.float32)  # via float32: the interpreter cannot convert bf16 to float64 directly (exact)
        e = e.to(ew.dtype)
        if PARAM_TYPE != tl.float64:
            pe = p_stored.to(tl.float32).to(ew.dtype)
        else:
            pe = p_stored.to(ew.dtype)
        e_new = _lerp(e, pe, ew, tl.load(es_ptr + 1), E_SMALL)
        tl.store(e_ptr + offs, cast_for_store(e_new, e_ptr, EMA_BF16_BITS), mask=mask)


def _opmath(dtype: torch.dtype) -> torch.dtype:
    return torch.float64 if dtype == torch.float64 else torch.float32


def _rounded(value: float, dtype: torch.dtype) -> float:
    """``value`` rounded to ``dtype`` once (as the reference's ``_scalar``)."""
    return torch.tensor(value, dtype=dtype).item()


def _quiet_interpreter(device: torch.device):
    """Under TRITON_INTERPRET=1 (CPU tensors) numpy would warn where IEEE arithmetic gives inf / NaN (0 / 0
    when eps = 0 and v = 0, also in masked-off lanes); GPUs and the reference do not warn."""
    if device.type != "cpu":
        return contextlib.nullcontext()
    import numpy as np

    return np.errstate(divide="ignore", invalid="ignore", over="ignore", under="ignore")


def _chunk_table(rows: list[tuple[torch.Tensor, ...]], device) -> tuple[torch.Tensor, ...]:
    """Per BLOCK-element chunk of every row of equal-numel tensors: one int64 address tensor per column, then
    the lengths."""
    addrs: list[list[torch.Tensor]] = [[] for _ in rows[0]]
    length = []
    for row in rows:
        starts = torch.arange(0, row[0].numel(), BLOCK, dtype=torch.int64)
        for col, t in zip(addrs, row):
            col.append(t.data_ptr() + starts * t.element_size())
        length.append(torch.clamp(row[0].numel() - starts, max=BLOCK))
    return tuple(torch.cat(t).to(device) for t in (*addrs, length))


@torch.library.custom_op("rmmd_core::adam_update_triton",
                         mutates_args=("params", "grads", "exp_avgs", "exp_avg_sqs", "ema"))
def adam_update_triton(params: list[torch.Tensor], grads: list[torch.Tensor], exp_avgs: list[torch.Tensor],
                       exp_avg_sqs: list[torch.Tensor], ema: list[torch.Tensor], step_size: float, beta1: float,
                       beta2: float, eps: float, bias_correction2_sqrt: float, weight_decay: float,
                       grad_scale: float, ema_decay: float) -> None:
    """Triton launcher; arguments as ``rmmd_core.ops.adam_update`` (validated there)."""
    if not params or not launchable(params[0]):
        return
    device = params[0].device
    has_ema = len(ema) > 0
    scale_grad = grad_scale != 1.0
    # Contiguous working copies (strided tensors are copied back below); grouped by dtype pair.
    lists = [params, grads, exp_avgs, exp_avg_sqs] + ([ema] if has_ema else [])
    work = [tuple(lst[i].contiguous() for lst in lists) for i in range(len(params))]
    groups: dict[tuple[torch.dtype, torch.dtype | None], list[tuple[torch.Tensor, ...]]] = {}
    for row in work:
        if row[0].numel() > 0:
            groups.setdefault((row[0].dtype, row[4].dtype if has_ema else None), []).append(row)
    for (p_dtype, e_dtype), rows in groups.items():
        op = _opmath(p_dtype)
        w1 = _rounded(1.0 - beta1, op)
        scalars = torch.tensor([grad_scale, weight_decay, w1, 1.0 - w1, beta2, 1.0 - beta2, bias_correction2_sqrt,
                                eps, -step_size], dtype=op).to(device)
        table = _chunk_table(rows, device)
        p_addr, g_addr, m_addr, v_addr = table[:4]
        length = table[-1]
        if has_ema:
            e_op = _opmath(e_dtype)
            ew = _rounded(1.0 - ema_decay, e_op)
            e_scalars = torch.tensor([ew, 1.0 - ew], dtype=e_op).to(device)
            e_addr, e_type, e_small = table[4], _TL_TYPES[e_dtype], abs(ew) < 0.5
        else:
            e_scalars, e_addr, e_type, e_small = scalars, p_addr, _TL_TYPES[p_dtype], True  # unused
        with _quiet_interpreter(device):
            _adam_kernel[(length.numel(),)](
                p_addr, g_addr, m_addr, v_addr, e_addr, length, scalars, e_scalars,
                PARAM_TYPE=_TL_TYPES[p_dtype], EMA_TYPE=e_type, HAS_EMA=has_ema, SCALE_GRAD=scale_grad,
                WEIGHT_DECAY=weight_decay != 0.0, M_SMALL=abs(w1) < 0.5, E_SMALL=e_small, BLOCK_SIZE=BLOCK,
                BF16_BITS=bf16_by_bits(p_dtype, device),
                EMA_BF16_BITS=bf16_by_bits(e_dtype, device) if has_ema else False,
                enable_fp_fusion=False,  # no multiply-add contraction: the reference rounds every product
            )
    written = [0, 2, 3] + ([1] if scale_grad else []) + ([4] if has_ema else [])
    for i, row in enumerate(work):
        for k in written:
            if row[k].data_ptr() != lists[k][i].data_ptr():
                lists[k][i].copy_(row[k])
