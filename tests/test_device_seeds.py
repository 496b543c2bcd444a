"""Device seeds: ``seed`` / ``offset`` as one-element int64 tensors for the three noise ops (posterior_step,
renoise, denoise_step), the prerequisite for capturing a rollout in a CUDA graph (issue 7).

A kernel launch argument is frozen into a CUDA graph at capture; a value in device memory is read at every
replay. So every backend must give, for a seed tensor holding s, exactly (bit for bit) what it gives for the
int s, and must read the tensor's *current* value at each call (``seed_t.fill_(other)`` then calling again
draws the other stream: what graph replay relies on). Covered here: every backend available (reference,
cpu, triton under the interpreter; cuda and compiled triton only on a GPU, including a real capture and
replay), all data dtypes, odd / prime shapes, non-contiguous data and seed tensors, mixed int / tensor
arguments, gradients, opcheck of the ``*_dev`` ops, and the argument errors.
"""

from __future__ import annotations

import pytest
import torch

from rmmd_core import ops
from rmmd_core.ops import dispatch
from rmmd_core.ops.denoise_reference import fold_denoise_coefficients
from rmmd_core.ops.reference import philox_randn_ref

# Above 2**32 on purpose: the key's high word and the counter's carry into its high word are both exercised.
SEED, OTHER_SEED = 2**40 + 20260101, 977
OFFSET = 2**32 - 700  # counters offset + i cross 2**32 inside the tensors below
OP_NAMES = ("posterior_step", "renoise", "denoise_step")
DTYPES = [torch.float32, torch.float64, torch.bfloat16, torch.float16]
SHAPES = [(3, 7), (5, 3, 11, 13), (2, 1031)]


def _reasons(backend: str) -> list[str]:
    return [r for op in OP_NAMES for r in ops.backend_reasons(op)[backend]]


def _backend_param(name: str):
    marks = [pytest.mark.skipif(bool(_reasons(name)), reason="; ".join(_reasons(name)))]
    if name == "triton":
        marks.append(pytest.mark.interpreter)
    if name == "cuda":
        marks.append(pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a GPU"))
    return pytest.param(name, marks=marks)


BACKENDS = [_backend_param(name) for name in ("reference", "cpu", "triton", "cuda")]


def _device(backend: str) -> str:
    if backend == "cuda" or (backend == "triton" and not dispatch._triton_interpreter):
        return "cuda"
    if backend == "reference" and torch.cuda.is_available():
        return "cuda"
    return "cpu"


def _coefs(batch: int, device, n: int):
    """n random, never-zero float64 (B,) coefficients; the last (the noise scale) is positive."""
    out = [(0.1 + torch.rand(batch, dtype=torch.float64)) * torch.where(torch.rand(batch) < 0.5, -1.0, 1.0).double()
           for _ in range(n - 1)]
    out.append(0.2 + torch.rand(batch, dtype=torch.float64))
    return [t.to(device) for t in out]


def _inputs(op: str, shape, dtype, device, requires_grad: bool = False, transposed: bool = False):
    """(data tensors, coefficients) for ``op``; data are fresh normals, transposed views when asked."""
    n_data = 1 if op == "renoise" else 2

    def make():
        if transposed:  # (B, ..., a, b) allocated as (B, ..., b, a) and transposed: a non-contiguous view
            t = torch.randn(*shape[:-2], shape[-1], shape[-2]).to(device=device, dtype=dtype).transpose(-1, -2)
        else:
            t = torch.randn(shape).to(device=device, dtype=dtype)
        return t.requires_grad_(requires_grad)

    data = [make() for _ in range(n_data)]
    n_coefs = {"posterior_step": 3, "renoise": 2, "denoise_step": 5}[op]
    return data, _coefs(shape[0], device, n_coefs)


def _call(op: str, data, coefs, seed, offset, backend: str):
    """The public op; denoise_step returns (z_s, x0) so x̂ is compared too."""
    if op == "posterior_step":
        return (ops.posterior_step(*data, *coefs, seed, offset, backend=backend),)
    if op == "renoise":
        return (ops.renoise(*data, *coefs, seed, offset, backend=backend),)
    return ops.denoise_step(*data, *coefs, seed, offset, want_x0=True, backend=backend)


def _key(value: int, device) -> torch.Tensor:
    return torch.tensor(value, dtype=torch.int64, device=device)


def _assert_identical(got, want, what: str):
    for g, w in zip(got, want, strict=True):
        assert g.dtype == w.dtype and g.shape == w.shape and g.is_contiguous(), what
        assert torch.equal(g, w), f"{what}: max |diff| {(g.double() - w.double()).abs().max().item()}"


# ------------------------------------------------------------------------------------------------
# bit-identical to the int path
# ------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("op", OP_NAMES)
def test_tensor_seed_matches_int_seed(op, dtype, backend):
    dev = _device(backend)
    for shape in SHAPES:
        data, coefs = _inputs(op, shape, dtype, dev)
        want = _call(op, data, coefs, SEED, OFFSET, backend)
        got = _call(op, data, coefs, _key(SEED, dev), _key(OFFSET, dev), backend)
        _assert_identical(got, want, f"{op} {backend} {shape} {dtype}")
        # Sanity: the noise is really there (a different seed changes the output).
        assert not torch.equal(_call(op, data, coefs, OTHER_SEED, OFFSET, backend)[0], want[0])


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("op", OP_NAMES)
def test_mixed_int_and_tensor_arguments(op, backend):
    dev = _device(backend)
    data, coefs = _inputs(op, (4, 3, 37), torch.float32, dev)
    want = _call(op, data, coefs, SEED, OFFSET, backend)
    _assert_identical(_call(op, data, coefs, _key(SEED, dev), OFFSET, backend), want, f"{op} {backend} tensor seed")
    _assert_identical(_call(op, data, coefs, SEED, _key(OFFSET, dev), backend), want, f"{op} {backend} tensor offset")


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("op", OP_NAMES)
def test_non_contiguous_data_and_seed_tensors(op, backend):
    dev = _device(backend)
    data, coefs = _inputs(op, (5, 3, 11, 13), torch.bfloat16, dev, transposed=True)
    assert not data[0].is_contiguous()
    want = _call(op, data, coefs, SEED, OFFSET, backend)
    # One-element views with a storage offset and a non-unit stride, and a (1, 1)-shaped key.
    pool = torch.arange(40, dtype=torch.int64, device=dev)
    pool[17] = SEED
    seed_t = pool[1::4][4:5]
    assert seed_t.storage_offset() == 17 and seed_t.stride() == (4,)
    offset_t = torch.full((1, 1), OFFSET, dtype=torch.int64, device=dev)
    _assert_identical(_call(op, data, coefs, seed_t, offset_t, backend), want, f"{op} {backend} strided")


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("op", OP_NAMES)
def test_mutating_the_seed_tensor_changes_the_stream(op, backend):
    """What CUDA-graph replay relies on: each call reads the tensors' values at that moment."""
    dev = _device(backend)
    data, coefs = _inputs(op, (3, 7, 11), torch.float32, dev)
    seed_t, offset_t = _key(SEED, dev), _key(OFFSET, dev)
    first = _call(op, data, coefs, seed_t, offset_t, backend)
    seed_t.fill_(OTHER_SEED)
    second = _call(op, data, coefs, seed_t, offset_t, backend)
    offset_t.copy_(_key(123, dev))
    third = _call(op, data, coefs, seed_t, offset_t, backend)
    _assert_identical(first, _call(op, data, coefs, SEED, OFFSET, backend), f"{op} {backend} first")
    _assert_identical(second, _call(op, data, coefs, OTHER_SEED, OFFSET, backend), f"{op} {backend} after fill_")
    _assert_identical(third, _call(op, data, coefs, OTHER_SEED, 123, backend), f"{op} {backend} after copy_")
    assert not torch.equal(first[0], second[0]) and not torch.equal(second[0], third[0])


def test_reference_stream_takes_tensors():
    for seed, offset in ((SEED, OFFSET), (0, 0), (2**63 - 1, 2**62 + 5)):
        want = philox_randn_ref(1031, seed, offset)
        assert torch.equal(philox_randn_ref(1031, _key(seed, "cpu"), _key(offset, "cpu")), want)


# ------------------------------------------------------------------------------------------------
# gradients and opcheck
# ------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=str)
@pytest.mark.parametrize("op", OP_NAMES)
def test_gradients_match_int_path(op, dtype, backend):
    dev = _device(backend)
    data, coefs = _inputs(op, (3, 5, 7), dtype, dev, requires_grad=True)
    weights = [torch.randn(3, 5, 7, dtype=dtype, device=dev) for _ in range(2)]

    def grads(seed, offset):
        outs = _call(op, data, coefs, seed, offset, backend)
        loss = sum((o * w).sum() for o, w in zip(outs, weights))
        return torch.autograd.grad(loss, data)

    want = grads(SEED, OFFSET)
    got = grads(_key(SEED, dev), _key(OFFSET, dev))
    for g, w in zip(got, want, strict=True):
        assert torch.equal(g, w), f"{op} {backend} {dtype}"


def _dev_op_args(op: str, dev, requires_grad: bool):
    data, coefs = _inputs(op, (3, 5, 7), torch.float32, dev, requires_grad=requires_grad)
    keys = (_key(SEED, dev), _key(OFFSET, dev))
    if op == "denoise_step":
        a, c, A, C, gamma = coefs
        P, Q = fold_denoise_coefficients(a, c, A, C)
        return (*data, P, Q, gamma, a, c, *keys, True)
    return (*data, *coefs, *keys)


@pytest.mark.parametrize("requires_grad", [False, True])
@pytest.mark.parametrize("op", OP_NAMES)
def test_opcheck_cpu(op, requires_grad):
    if _reasons("cpu"):
        pytest.skip("; ".join(_reasons("cpu")))
    torch.library.opcheck(getattr(torch.ops.rmmd_core, f"{op}_dev").default, _dev_op_args(op, "cpu", requires_grad))


@pytest.mark.interpreter
@pytest.mark.parametrize("op", OP_NAMES)
def test_opcheck_triton(op):
    if _reasons("triton"):
        pytest.skip("; ".join(_reasons("triton")))
    from test_posterior_step_triton import OPCHECK_UTILS

    torch.library.opcheck(getattr(torch.ops.rmmd_core, f"{op}_dev_triton").default,
                          _dev_op_args(op, _device("triton"), True), test_utils=OPCHECK_UTILS)


@pytest.mark.skipif(not torch.cuda.is_available() or bool(_reasons("cuda")), reason="needs a GPU and a CUDA build")
@pytest.mark.parametrize("op", OP_NAMES)
def test_opcheck_cuda(op):
    torch.library.opcheck(getattr(torch.ops.rmmd_core, f"{op}_dev").default, _dev_op_args(op, "cuda", True))


# ------------------------------------------------------------------------------------------------
# CUDA-graph capture and replay (GPU only)
# ------------------------------------------------------------------------------------------------

@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a GPU")
@pytest.mark.parametrize("backend", [b for b in BACKENDS if b.values[0] in ("cuda", "triton")])
@pytest.mark.parametrize("op", OP_NAMES)
def test_cuda_graph_replay_draws_the_copied_seed(op, backend):
    data, coefs = _inputs(op, (4, 3, 61), torch.bfloat16, "cuda")
    seed_t, offset_t = _key(SEED, "cuda"), _key(OFFSET, "cuda")
    stream = torch.cuda.Stream()
    stream.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(stream):  # warm-up outside capture (Triton compiles, allocator settles)
        _call(op, data, coefs, seed_t, offset_t, backend)
    torch.cuda.current_stream().wait_stream(stream)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        captured = _call(op, data, coefs, seed_t, offset_t, backend)
    for seed, offset in ((SEED, OFFSET), (OTHER_SEED, 5), (2**62 + 3, 0)):
        seed_t.copy_(_key(seed, "cuda"))
        offset_t.copy_(_key(offset, "cuda"))
        graph.replay()
        _assert_identical([t.clone() for t in captured], _call(op, data, coefs, seed, offset, backend),
                          f"{op} {backend} replay seed={seed}")


# ------------------------------------------------------------------------------------------------
# argument errors
# ------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("name", ["seed", "offset"])
@pytest.mark.parametrize("op", OP_NAMES)
def test_bad_seed_tensors_are_refused(op, name):
    data, coefs = _inputs(op, (2, 3), torch.float32, "cpu")

    def call(value):
        seed, offset = (value, 0) if name == "seed" else (SEED, value)
        return _call(op, data, coefs, seed, offset, "auto")

    with pytest.raises(TypeError, match=f"^{name} must be an int or an int64 tensor, got a torch.int32 tensor"):
        call(torch.tensor(3, dtype=torch.int32))
    with pytest.raises(TypeError, match=f"^{name} must be an int or an int64 tensor, got a torch.float32 tensor"):
        call(torch.tensor(3.0))
    with pytest.raises(ValueError, match=rf"^{name} must be a tensor with exactly one element, got shape \(2,\)"):
        call(torch.tensor([3, 4]))
    with pytest.raises(ValueError, match=rf"^{name} must be a tensor with exactly one element, got shape \(0,\)"):
        call(torch.empty(0, dtype=torch.int64))
    ref_name = "x" if op == "renoise" else "z_t"
    with pytest.raises(ValueError, match=f"^{name} must be on {ref_name}'s device cpu, got meta"):
        call(torch.empty((), dtype=torch.int64, device="meta"))
    with pytest.raises(ValueError, match=f"^{name} must be non-negative, got -5"):
        call(_key(-5, "cpu"))
    with pytest.raises(TypeError, match=f"^{name} must be an int, got float"):
        call(3.0)  # the int path's errors are unchanged


@pytest.mark.parametrize("op", OP_NAMES)
def test_dev_ops_check_their_seed_tensors(op):
    """Direct torch.ops calls (bypassing the public validation) fail in the C++ / fake checks, naming the argument."""
    if _reasons("cpu"):
        pytest.skip("; ".join(_reasons("cpu")))
    args = list(_dev_op_args(op, "cpu", False))
    seed_at = {"posterior_step": 5, "renoise": 3, "denoise_step": 7}[op]  # schema position of seed
    kernel = getattr(torch.ops.rmmd_core, f"{op}_dev").default
    for k, name in ((seed_at, "seed"), (seed_at + 1, "offset")):
        bad = list(args)
        bad[k] = torch.tensor(1.0)
        with pytest.raises(RuntimeError, match=f"rmmd_core::{op}: {name} must be an int64 tensor"):
            kernel(*bad)
        bad[k] = torch.tensor([1, 2])
        with pytest.raises(RuntimeError, match=f"rmmd_core::{op}: {name} must have exactly one element"):
            kernel(*bad)
        bad[k] = _key(-1, "cpu")
        with pytest.raises(RuntimeError, match=f"rmmd_core::{op}: {name} must be non-negative"):
            kernel(*bad)
        bad[k] = torch.empty((), dtype=torch.int64, device="meta")
        with pytest.raises(RuntimeError, match=f"rmmd_core::{op}: {name} is on meta"):
            kernel(*bad)


@pytest.mark.parametrize("backend", [b for b in BACKENDS if b.values[0] in ("reference", "cpu")])
@pytest.mark.parametrize("op", OP_NAMES)
def test_torch_compile_reads_the_tensor_at_each_call(op, backend):
    """fullgraph tracing goes through the *_dev fakes (no .item() graph break); the compiled function, like
    a graph replay, follows in-place updates of the seed tensor."""
    data, coefs = _inputs(op, (3, 5, 7), torch.float32, "cpu")
    compiled = torch.compile(lambda s, o: _call(op, data, coefs, s, o, backend), fullgraph=True, backend="aot_eager")
    seed_t, offset_t = _key(SEED, "cpu"), _key(OFFSET, "cpu")
    _assert_identical(compiled(seed_t, offset_t), _call(op, data, coefs, SEED, OFFSET, backend), f"{op} {backend}")
    seed_t.fill_(OTHER_SEED)
    _assert_identical(compiled(seed_t, offset_t), _call(op, data, coefs, OTHER_SEED, OFFSET, backend),
                      f"{op} {backend} after fill_")
