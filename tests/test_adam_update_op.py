"""rmmd_core::adam_update, the fused clip scale + Adam + EMA: every backend against ops/adam_reference.py
(run on CPU copies) over lists of odd-sized tensors with mixed dtypes and strides, in every variant (EMA or
not, scaled or not, weight decay or not, both lerp sides); the float32 kernels against float64 math; the
reference against torch's foreach Adam; opcheck; named errors for bad input."""

from __future__ import annotations

import math

import pytest
import torch

from rmmd_core import ops
from rmmd_core.ops.adam_reference import adam_update_ref
from test_rmmd_cotangent_op import _device

_REASONS = ops.backend_reasons("adam_update")
HAS_CPU_OP = not _REASONS["cpu"]
HAS_TRITON = not _REASONS["triton"]
needs_cpu_op = pytest.mark.skipif(not HAS_CPU_OP, reason=str(_REASONS["cpu"]))
needs_triton = [pytest.mark.interpreter, pytest.mark.skipif(not HAS_TRITON, reason=str(_REASONS["triton"]))]
FUSED = [pytest.param("cpu", marks=needs_cpu_op), pytest.param("triton", marks=needs_triton),
         pytest.param("cuda", marks=pytest.mark.skipif(bool(_REASONS["cuda"]), reason=str(_REASONS["cuda"])))]
# Odd sizes: 1, primes, one above the CPU / CUDA chunk (16384) and several Triton programs (1024).
SHAPES = [(1,), (7,), (3, 5), (2, 3, 11), (1021,), (16411,), (131, 127)]
DTYPES = [torch.float32, torch.bfloat16, torch.float16, torch.float64]


def _scalars(k=3, beta1=0.9, beta2=0.99, lr=1e-2, **extra):
    s = dict(step_size=lr / (1 - beta1 ** k), beta1=beta1, beta2=beta2, eps=1e-8,
             bias_correction2_sqrt=(1 - beta2 ** k) ** 0.5)
    s.update(extra)
    return s


def _state(device="cpu", dtypes=DTYPES, shapes=SHAPES, ema_dtype="same"):
    """(params, grads, exp_avgs, exp_avg_sqs, ema): fresh random values (v > 0, as after a few steps)."""
    lists = [[], [], [], [], []]
    for k, shape in enumerate(shapes):
        dtype = dtypes[k % len(dtypes)]
        p, g, m = (torch.randn(shape).to(device=device, dtype=dtype) for _ in range(3))
        v = (torch.rand(shape) * 0.1).to(device=device, dtype=dtype)
        for lst, t in zip(lists, (p, 0.1 * g, 0.1 * m, v)):
            lst.append(t)
        if ema_dtype is not None:
            lists[4].append(torch.randn(shape).to(device=device, dtype=dtype if ema_dtype == "same" else ema_dtype))
    return lists


def _clone(lists):
    return [[t.clone() for t in lst] for lst in lists]


def _ulp(t: torch.Tensor) -> torch.Tensor:
    """One unit in the last place of each value of ``t`` (in its dtype), as float64."""
    finfo = torch.finfo(t.dtype)
    mag = t.detach().double().abs().clamp_min(finfo.tiny)
    return torch.exp2(torch.floor(torch.log2(mag))) * finfo.eps


def _assert_lists_match(got, expected, what, ulps=0):
    for name, g_list, e_list in zip(("params", "grads", "exp_avgs", "exp_avg_sqs", "ema"), got, expected):
        for i, (g, e) in enumerate(zip(g_list, e_list)):
            assert g.dtype == e.dtype and g.shape == e.shape, f"{what} {name}[{i}]"
            g, e = g.detach().cpu(), e.detach().cpu()
            if ulps == 0:
                assert torch.equal(g, e), f"{what} {name}[{i}] {g.dtype}: max err {(g.double() - e.double()).abs().max():.3g}"
            else:
                err = (g.double() - e.double()).abs()
                assert bool((err <= ulps * _ulp(e)).all()), f"{what} {name}[{i}] {g.dtype}: max err {err.max():.3g}"


# GPU backends get one ulp: CUDA / Triton-on-GPU sqrt and division are IEEE here too, but a compiler may
# still pick a different (correctly rounded) instruction sequence; on CPU the kernels equal the reference.
def _ulps(backend):
    return 0 if _device(backend) == "cpu" else 1


VARIANTS = {  # (ema dtype, grad_scale, weight_decay, beta1)
    "plain": (None, 1.0, 0.0, 0.0),
    "clip+ema": ("same", 0.37, 0.0, 0.0),
    "clip+ema32+wd+beta1": (torch.float32, 0.37, 0.01, 0.9),
    "ema64+wd": (torch.float64, 1.0, 0.05, 0.9),
    "beta1 small side": ("same", 1.0, 0.0, 0.7),  # 1 - beta1 = 0.3 < 0.5: lerp's other form
}


@pytest.mark.parametrize("backend", FUSED)
@pytest.mark.parametrize("variant", list(VARIANTS))
def test_matches_reference_on_mixed_lists(backend, variant):
    ema_dtype, scale, wd, beta1 = VARIANTS[variant]
    torch.manual_seed(hash(variant) % 1000)
    state = _state(ema_dtype=ema_dtype)
    kwargs = _scalars(beta1=beta1, weight_decay=wd, grad_scale=scale, ema_decay=0.9)
    expected = _clone(state)
    adam_update_ref(*expected, **kwargs)
    dev = _device(backend)
    got = [[t.to(dev, copy=True) for t in lst] for lst in state]
    grads_before = [g.clone() for g in got[1]]
    ops.adam_update(*got, **kwargs, backend=backend)
    _assert_lists_match(got, expected, f"{backend} {variant}", _ulps(backend))
    if scale == 1.0:  # the gradients are only read
        assert all(torch.equal(a, b) for a, b in zip(got[1], grads_before))
    for lst, ref in zip(got, state):  # every list changed where it should
        if lst and (lst is not got[1] or scale != 1.0):
            assert any(not torch.equal(a.cpu(), b) for a, b in zip(lst, ref))


@pytest.mark.parametrize("backend", FUSED)
def test_non_contiguous_tensors_are_updated_in_place(backend):
    dev = _device(backend)
    torch.manual_seed(1)
    base = [torch.randn(9, 10), torch.randn(12, 7), torch.randn(6, 8)]
    params = [base[0].t(), base[1][::2], base[2].to(torch.bfloat16)[:, 1::3]]
    lists = [params] + [[(0.1 * torch.rand_like(p, dtype=torch.float32)).to(p.dtype) for p in params] for _ in range(3)]
    lists[2] = [0.1 * torch.randn(9, 10).t(), 0.1 * torch.randn(12, 7)[::2], lists[2][2]]  # strided exp_avgs
    lists.append([torch.randn(9, 10).t(), torch.randn(6, 7), torch.randn(6, 3)])  # a strided EMA
    lists = [[t.to(dev) for t in lst] for lst in lists]
    assert not lists[0][0].is_contiguous() and not lists[2][0].is_contiguous() and not lists[4][0].is_contiguous()
    kwargs = _scalars(weight_decay=0.01, grad_scale=0.5, ema_decay=0.75)
    expected = [[t.cpu().clone() for t in lst] for lst in lists]
    adam_update_ref(*expected, **kwargs)
    storage = [[t.data_ptr() for t in lst] for lst in lists]
    ops.adam_update(*lists, **kwargs, backend=backend)
    assert [[t.data_ptr() for t in lst] for lst in lists] == storage  # in place, strided tensors included
    _assert_lists_match(lists, expected, f"{backend} strided", _ulps(backend))


@pytest.mark.parametrize("backend", ["reference"] + FUSED)
def test_float32_update_is_float64_math_rounded(backend):
    """The fp32 update against the same update in float64 on the same stored values: every quantity is
    within a few fp32 ulp (each operation rounds once), so the kernels compute Adam, not a variant of it."""
    torch.manual_seed(2)
    state = _state(dtypes=[torch.float32], ema_dtype="same")
    kwargs = _scalars(beta1=0.9, weight_decay=0.01, grad_scale=0.37, ema_decay=0.9)
    exact = [[t.double() for t in lst] for lst in state]
    adam_update_ref(*exact, **kwargs)
    dev = _device(backend)
    got = [[t.to(dev, copy=True) for t in lst] for lst in state]
    ops.adam_update(*got, **kwargs, backend=backend)
    # Each operation rounds once, so the error is a few ulp of the magnitudes that enter each result (m's lerp
    # may cancel: its scale is |m| + |g|, not the small result): errors there mean a different formula.
    p0, g0, m0, v0, e0 = ([t.double() for t in lst] for lst in state)
    scales = {"params": [a.abs() + b.abs() for a, b in zip(p0, exact[0])], "grads": [g.abs() for g in g0],
              "exp_avgs": [a.abs() + g.abs() for a, g in zip(m0, g0)],
              "exp_avg_sqs": [a.abs() + g.square() for a, g in zip(v0, g0)],
              "ema": [a.abs() + b.abs() for a, b in zip(e0, exact[0])]}
    for name, g_list, e_list in zip(("params", "grads", "exp_avgs", "exp_avg_sqs", "ema"), got, exact):
        for i, (g, e) in enumerate(zip(g_list, e_list)):
            tol = 8 * torch.finfo(torch.float32).eps * scales[name][i]
            err = (g.cpu().double() - e).abs()
            assert bool((err <= tol).all()), f"{name}[{i}]: max err / tol {(err / tol).max():.3g}"


def test_reference_matches_torch_foreach_adam():
    """adam_update_ref with torch's scalars over 10 steps equals torch.optim.Adam(foreach=True) up to torch's
    CPU sqrt rounding (not IEEE: 1 ulp on ~20% of float32 values): well within 1e-6 relative."""
    torch.manual_seed(3)
    for beta1 in (0.0, 0.9):
        params = [torch.randn(s) for s in SHAPES]
        mine = [p.clone() for p in params]
        m, v = [torch.zeros_like(p) for p in mine], [torch.zeros_like(p) for p in mine]
        theirs = [p.clone().requires_grad_() for p in params]
        opt = torch.optim.Adam(theirs, lr=1e-2, betas=(beta1, 0.99), eps=1e-8, weight_decay=0.01, foreach=True)
        for k in range(1, 11):
            grads = [torch.randn(s) for s in SHAPES]
            for t, g in zip(theirs, grads):
                t.grad = g.clone()
            opt.step()
            adam_update_ref(mine, grads, m, v, [], **_scalars(k=k, beta1=beta1, lr=1e-2, weight_decay=0.01))
        for a, b in zip(mine, theirs):
            torch.testing.assert_close(a, b.detach(), rtol=1e-6, atol=1e-7)


@pytest.mark.parametrize("backend", ["reference"] + FUSED)
def test_ema_decay_edges_and_empty_ema(backend):
    dev = _device(backend)
    torch.manual_seed(4)
    state = [[t.to(dev) for t in lst] for lst in _state(dtypes=[torch.float32], shapes=[(5,), (3, 7)])]
    for decay in (1.0, 0.0):
        ema_before = [e.clone() for e in state[4]]
        ops.adam_update(*state, **_scalars(ema_decay=decay), backend=backend)
        if decay == 1.0:
            assert all(torch.equal(a, b) for a, b in zip(state[4], ema_before))
        else:
            assert all(torch.equal(a, p) for a, p in zip(state[4], state[0]))
    params_before = [p.clone() for p in state[0]]
    ops.adam_update(*state[:4], [], **_scalars(), backend=backend)  # no EMA: params still move
    assert all(not torch.equal(a, b) for a, b in zip(state[0], params_before))


@pytest.mark.parametrize("backend", ["reference"] + FUSED)
def test_empty_lists_and_empty_tensors(backend):
    ops.adam_update([], [], [], [], [], **_scalars(), backend=backend)
    dev = _device(backend)
    e = [torch.empty(0, 3, device=dev)]
    ops.adam_update(e, [torch.empty(0, 3, device=dev)], [torch.empty(0, 3, device=dev)],
                    [torch.empty(0, 3, device=dev)], [], **_scalars(), backend=backend)


@needs_cpu_op
def test_result_does_not_depend_on_thread_count():
    torch.manual_seed(5)
    state = _state(shapes=[(40000,), (7,), (16411,)], dtypes=[torch.float32, torch.bfloat16])
    runs = []
    old = torch.get_num_threads()
    try:
        for threads in (1, 2):
            torch.set_num_threads(threads)
            got = _clone(state)
            ops.adam_update(*got, **_scalars(grad_scale=0.5, ema_decay=0.9), backend="cpu")
            runs.append(got)
    finally:
        torch.set_num_threads(old)
    _assert_lists_match(runs[0], runs[1], "1 vs 2 threads")


@needs_cpu_op
def test_opcheck_cpu():
    state = _state(dtypes=[torch.float32, torch.bfloat16], shapes=[(3, 5), (7,)])
    args = (*state, 1e-2, 0.9, 0.99, 1e-8, 0.3, 0.01, 0.5, 0.9)
    torch.library.opcheck(torch.ops.rmmd_core.adam_update.default, args,
                          test_utils=("test_schema", "test_faketensor", "test_aot_dispatch_dynamic"))


@pytest.mark.interpreter
@pytest.mark.skipif(not HAS_TRITON, reason="triton backend unavailable")
def test_opcheck_triton():
    state = [[t.to(_device("triton")) for t in lst] for lst in _state(dtypes=[torch.float32], shapes=[(3, 5), (7,)])]
    torch.library.opcheck(torch.ops.rmmd_core.adam_update_triton.default,
                          (*state, 1e-2, 0.9, 0.99, 1e-8, 0.3, 0.01, 0.5, 0.9),
                          test_utils=("test_schema", "test_faketensor"))


def _bad(case):
    p = [torch.randn(3), torch.randn(2, 2)]
    lists = dict(params=p, grads=[torch.randn(3), torch.randn(2, 2)], exp_avgs=[torch.zeros(3), torch.zeros(2, 2)],
                 exp_avg_sqs=[torch.zeros(3), torch.zeros(2, 2)], ema=[torch.randn(3), torch.randn(2, 2)])
    scalars = _scalars(weight_decay=0.0, grad_scale=1.0, ema_decay=0.9)  # all eight, in schema order
    if case == "grads_length":
        lists["grads"] = lists["grads"][:1]
        return lists, scalars, ValueError, "grads"
    if case == "ema_length":
        lists["ema"] = lists["ema"][:1]
        return lists, scalars, ValueError, "ema"
    if case == "not_list":
        lists["params"] = p[0]
        return lists, scalars, TypeError, "params"
    if case == "params_int":
        lists["params"] = [p[0], torch.ones(2, 2, dtype=torch.int32)]
        return lists, scalars, TypeError, r"params\[1\]"
    if case == "exp_avg_dtype":
        lists["exp_avgs"] = [lists["exp_avgs"][0], torch.zeros(2, 2, dtype=torch.float64)]
        return lists, scalars, TypeError, r"exp_avgs\[1\]"
    if case == "exp_avg_sq_shape":
        lists["exp_avg_sqs"] = [torch.zeros(4), lists["exp_avg_sqs"][1]]
        return lists, scalars, ValueError, r"exp_avg_sqs\[0\]"
    if case == "grads_not_tensor":
        lists["grads"] = [lists["grads"][0], 1.0]
        return lists, scalars, TypeError, r"grads\[1\]"
    if case == "ema_shape":
        lists["ema"] = [lists["ema"][0], torch.randn(4)]
        return lists, scalars, ValueError, r"ema\[1\]"
    if case == "ema_device":
        lists["ema"] = [lists["ema"][0], torch.empty(2, 2, device="meta")]
        return lists, scalars, ValueError, r"ema\[1\]"
    if case == "params_device":
        lists["params"] = [p[0], torch.empty(2, 2, device="meta")]
        return lists, scalars, ValueError, r"params\[1\]"
    values = {"beta1_one": ("beta1", 1.0), "beta2_neg": ("beta2", -0.1), "eps_neg": ("eps", -1e-8),
              "step_nan": ("step_size", float("nan")), "bc2_zero": ("bias_correction2_sqrt", 0.0),
              "wd_neg": ("weight_decay", -0.1), "scale_zero": ("grad_scale", 0.0),
              "scale_inf": ("grad_scale", math.inf), "decay_high": ("ema_decay", 1.5),
              "decay_tensor": ("ema_decay", torch.tensor(0.5))}
    name, value = values[case]
    scalars[name] = value
    return lists, scalars, TypeError if case == "decay_tensor" else ValueError, name


BAD = ["grads_length", "ema_length", "not_list", "params_int", "exp_avg_dtype", "exp_avg_sq_shape",
       "grads_not_tensor", "ema_shape", "ema_device", "params_device", "beta1_one", "beta2_neg", "eps_neg",
       "step_nan", "bc2_zero", "wd_neg", "scale_zero", "scale_inf", "decay_high", "decay_tensor"]


@pytest.mark.parametrize("case", BAD)
def test_bad_inputs_name_the_argument(case):
    lists, scalars, error, name = _bad(case)
    with pytest.raises(error, match=f"^{name}"):
        ops.adam_update(**lists, **scalars)


@needs_cpu_op
@pytest.mark.parametrize("case,name", [("grads_length", "grads"), ("ema_length", "ema"), ("beta1_one", "beta1"),
                                       ("exp_avg_dtype", r"exp_avgs\[1\]"), ("ema_shape", r"ema\[1\]"),
                                       ("scale_zero", "grad_scale"), ("step_nan", "step_size")])
def test_direct_op_checks_name_the_argument(case, name):
    lists, scalars, _, _ = _bad(case)
    with pytest.raises(RuntimeError, match=name):
        torch.ops.rmmd_core.adam_update(*lists.values(), *scalars.values())


def test_forced_backend_that_cannot_run_raises(monkeypatch):
    from rmmd_core.ops import dispatch

    monkeypatch.setenv(dispatch.BACKEND_ENV, "cuda")
    if not _REASONS["cuda"]:
        pytest.skip("a CUDA build can run the cuda backend")
    with pytest.raises(RuntimeError, match="cannot run rmmd_core::adam_update"):
        ops.adam_update([torch.zeros(3)], [torch.ones(3)], [torch.zeros(3)], [torch.zeros(3)], **_scalars())


@needs_cpu_op
@pytest.mark.parametrize("ema", ["fp16", "fp32", None])
@pytest.mark.parametrize("scale", [1.0, 0.37])
def test_f16c_path_equals_the_portable_loop_on_special_values(monkeypatch, ema, scale):
    """fp16 parameters run an F16C loop on x86 CPUs with AVX2 (csrc/cpu/adam_update_cpu.cpp); the portable
    loop (RMMD_CORE_CPU_SIMD=0) is the reference for it, bit for bit, on values that stress the conversions:
    fp16 subnormals and the smallest normals, values that round to inf, infinities, -0.0 and NaNs with
    payloads (stored as c10's quiet NaN, sign kept), over lengths that leave every tail size."""
    gen = torch.Generator().manual_seed(11)
    special = torch.tensor([0.0, -0.0, 6e-8, -6e-8, 6.1e-5, 65504.0, -65504.0, math.inf, -math.inf, math.nan, 1e-3,
                            3e4])
    lists = [[], [], [], [], []]
    for n in (1, 7, 8, 9, 15, 16, 17, 1000, 16391):
        p, g, m = (torch.randn(n, generator=gen) for _ in range(3))
        v = torch.rand(n, generator=gen) * 0.1
        k = min(n, special.numel())
        p[:k], g[:k] = special[:k], special[torch.randperm(k, generator=gen)]
        for lst, t in zip(lists, (p, g, 0.1 * m, v)):
            lst.append(t.half())
        if ema is not None:
            lists[4].append(torch.randn(n, generator=gen).to(torch.float16 if ema == "fp16" else torch.float32))
    bits = lists[0][-1].view(torch.int16)  # NaNs with other payloads than the quiet one, both signs
    bits[20:24] = torch.tensor([0x7C01, 0x7D55, -0x0201, -0x03FF], dtype=torch.int16)
    kw = _scalars(grad_scale=scale, ema_decay=0.9, weight_decay=0.01)
    got, want = _clone(lists), _clone(lists)
    ops.adam_update(*got, **kw, backend="cpu")
    monkeypatch.setenv("RMMD_CORE_CPU_SIMD", "0")
    ops.adam_update(*want, **kw, backend="cpu")
    for a_list, b_list in zip(got, want):
        for a, b in zip(a_list, b_list):
            assert torch.equal(a.view(torch.int16 if a.dtype == torch.float16 else torch.int32),
                               b.view(torch.int16 if b.dtype == torch.float16 else torch.int32))
    assert any(t.isinf().any() for t in lists[0]) and any(t.isnan().any() for t in lists[0])  # the inputs had both
    assert any(t.isnan().any() for t in got[0])  # and NaNs were stored (the blend's case)
