"""rmmd_core::posterior_step (method.md §a.4, §e K1): every backend against ops/reference.py, the Philox
stream against Triton's tl.randn, noise statistics, registration (opcheck, gradcheck, compile),
dispatch and every input error."""

from __future__ import annotations

import math
import os

import pytest
import torch

from rmmd_core import ops
from rmmd_core.ops import dispatch
from rmmd_core.ops.reference import philox4x32_ref, philox_randn_ref, posterior_step_ref

HAS_CPU_OP = "cpu" in ops.available_backends("posterior_step")
needs_cpu_op = pytest.mark.skipif(not HAS_CPU_OP, reason="rmmd_core._C (CPU kernel) is not built")

# D = 59 and 429 leave every kind of tail of the SIMD loops (2-block body, single block, partial block).
SHAPES = [(1, 1), (3, 7), (3, 59), (5, 3, 11, 13), (2, 4097)]
LOWP = (torch.bfloat16, torch.float16)
# Same-dtype tolerances against the reference. The noise is float32 for every dtype and the kernels'
# libm logf/cosf may differ from torch's vectorised log/cos by a few float32 ULP: |dn| <= 4 * 2^-23 *
# |n| <= 3e-6 for |n| <= 5.7, times gamma <= 1.2. Output rounding adds ~1 ULP of |z_s| <= ~10.
TOLERANCES = {torch.float32: dict(atol=1e-5, rtol=1e-6), torch.float64: dict(atol=1e-5, rtol=0.0)}
SEED = 20260101


def _cpu_flags() -> set[str]:
    try:
        with open("/proc/cpuinfo") as f:
            return set(next(line.split(":", 1)[1].split() for line in f if line.startswith("flags")))
    except (OSError, StopIteration):
        return set()


_FLAGS = _cpu_flags()
# RMMD_CORE_CPU_SIMD values, one per CPU noise path (csrc/cpu/posterior_step_cpu.cpp: a request the CPU cannot
# run would silently fall back to a narrower path, so those are skipped instead of testing the same code
# twice). "auto" is the default choice and is what every other test runs.
SIMD_PATHS = [
    pytest.param("avx512", id="avx512", marks=pytest.mark.skipif(
        not {"avx512f", "avx512bw", "avx512dq", "avx512vl", "avx2", "fma", "f16c"} <= _FLAGS,
        reason="CPU lacks AVX-512 F/BW/DQ/VL")),
    pytest.param("avx2", id="avx2", marks=pytest.mark.skipif(not {"avx2", "fma", "f16c"} <= _FLAGS,
                                                             reason="CPU lacks AVX2 + FMA + F16C")),
    pytest.param("0", id="scalar"),
]


def _coefficients(batch: int, zero_gamma: tuple[int, ...] = ()) -> tuple[torch.Tensor, ...]:
    """Random, never-zero float64 (B,) coefficients; gamma is zero exactly at ``zero_gamma``."""
    A = 0.5 + torch.rand(batch, dtype=torch.float64)
    C = (0.1 + torch.rand(batch, dtype=torch.float64)) * torch.where(torch.rand(batch) < 0.5, -1.0, 1.0).double()
    gamma = 0.2 + torch.rand(batch, dtype=torch.float64)
    gamma[list(zero_gamma)] = 0.0
    return A, C, gamma


def _data(shape, dtype) -> tuple[torch.Tensor, torch.Tensor]:
    return torch.randn(shape).to(dtype), torch.randn(shape).to(dtype)


def _assert_close(actual: torch.Tensor, expected: torch.Tensor, atol: float, rtol: float, what: str) -> None:
    assert actual.shape == expected.shape, f"{what}: shape {tuple(actual.shape)} != {tuple(expected.shape)}"
    a, e = actual.double(), expected.double()
    bad = (a - e).abs() > atol + rtol * e.abs()
    if bad.any():
        idx = bad.nonzero()[:5].tolist()
        worst = (a - e).abs().max().item()
        pytest.fail(f"{what}: {int(bad.sum())}/{bad.numel()} mismatches (atol={atol}, rtol={rtol}, "
                    f"max abs err {worst:.3g}); first at {idx}: got {[a[tuple(i)].item() for i in idx]}, "
                    f"expected {[e[tuple(i)].item() for i in idx]}")


def _check_against_reference(out: torch.Tensor, z, x, A, C, gamma, seed, offset, what: str) -> None:
    """Same-dtype table for fp32/fp64; for bf16/fp16, error vs the fp64 truth <= 2x the reference's own."""
    assert out.dtype == z.dtype and out.is_contiguous() and out.shape == z.shape, what
    ref = posterior_step_ref(z, x, A, C, gamma, seed, offset)
    if z.dtype in LOWP:
        truth = posterior_step_ref(z.double(), x.double(), A, C, gamma, seed, offset)
        ref_err = (ref.double() - truth).abs().max().item()
        _assert_close(out, truth, atol=2 * ref_err + 1e-6, rtol=0.0, what=f"{what} vs fp64 truth")
    else:
        _assert_close(out, ref, what=what, **TOLERANCES[z.dtype])


# --------------------------------------------------------------------------------------------------
# CPU kernel vs reference
# --------------------------------------------------------------------------------------------------

@needs_cpu_op
@pytest.mark.parametrize("simd", SIMD_PATHS)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.bfloat16, torch.float16], ids=str)
@pytest.mark.parametrize("shape", SHAPES, ids=str)
def test_cpu_matches_reference(shape, dtype, simd, monkeypatch):
    # RMMD_CORE_CPU_SIMD picks the noise path: AVX-512 / AVX2 fused loops, or the scalar libm one.
    monkeypatch.setenv("RMMD_CORE_CPU_SIMD", simd)
    z, x = _data(shape, dtype)
    A, C, gamma = _coefficients(shape[0], zero_gamma=(1,) if shape[0] > 1 else ())
    out = ops.posterior_step(z, x, A, C, gamma, SEED, 17, backend="cpu")
    _check_against_reference(out, z, x, A, C, gamma, SEED, 17, f"cpu {shape} {dtype}")


def _layouts(dtype):
    base = torch.randn(6, 9, 10).to(dtype)
    return {
        "transposed": base.transpose(1, 2),  # (6, 10, 9)
        "sliced_inner": base[:, :, ::3],  # (6, 9, 4)
        "sliced_batch": base[1::2],  # (3, 9, 10)
        "batch_not_outermost": base.permute(1, 0, 2)[:, 2:5],  # (9, 3, 10); batch stride 10
        "expanded": torch.randn(6, 1, 10).to(dtype).expand(6, 9, 10),  # stride 0
    }


@needs_cpu_op
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=str)
@pytest.mark.parametrize("layout", ["transposed", "sliced_inner", "sliced_batch", "batch_not_outermost", "expanded"])
def test_cpu_non_contiguous_inputs(layout, dtype):
    z = _layouts(dtype)[layout]
    x = torch.randn(z.shape).to(dtype).transpose(-1, -2).contiguous().transpose(-1, -2)  # strided too
    assert not z.is_contiguous() and not x.is_contiguous()
    A, C, gamma = _coefficients(z.shape[0], zero_gamma=(0,))
    out = ops.posterior_step(z, x, A, C, gamma, SEED, 5, backend="cpu")
    # Noise follows the logical index, so strided inputs equal their contiguous copies bit for bit.
    dense = ops.posterior_step(z.contiguous(), x.contiguous(), A, C, gamma, SEED, 5, backend="cpu")
    assert torch.equal(out, dense)
    _check_against_reference(out, z, x, A, C, gamma, SEED, 5, f"cpu {layout}")
    # The reference handles strides by itself, not through .contiguous() copies of the inputs.
    dense_ref = posterior_step_ref(z.contiguous(), x.contiguous(), A, C, gamma, SEED, 5)
    assert torch.equal(posterior_step_ref(z, x, A, C, gamma, SEED, 5), dense_ref)


@needs_cpu_op
@pytest.mark.parametrize("backend", ["reference", "cpu"])
def test_zero_gamma_samples_are_exactly_deterministic(backend):
    z, x = _data((4, 3, 50), torch.float32)
    A, C, gamma = _coefficients(4, zero_gamma=(0, 2))
    out1 = ops.posterior_step(z, x, A, C, gamma, 1, 0, backend=backend)
    out2 = ops.posterior_step(z, x, A, C, gamma, 2, 999, backend=backend)
    bshape = (4, 1, 1)
    mean = A.float().view(bshape) * z + C.float().view(bshape) * x
    for b in (0, 2):  # no noise at all: independent of seed and offset, exactly A z + C x in fp32
        assert torch.equal(out1[b], mean[b]) and torch.equal(out2[b], mean[b])
    for b in (1, 3):
        assert not torch.equal(out1[b], out2[b])


@needs_cpu_op
@pytest.mark.parametrize("simd", SIMD_PATHS)
@pytest.mark.parametrize("seed,offset", [(0, 2**32 - 50), (2**32 + 7, 3), (2**63 - 1, 2**62 + 2**32 - 17)])
def test_cpu_large_seed_and_offset_carry(seed, offset, simd, monkeypatch):
    # Crosses the 2**32 counter boundary (carry into c1) and uses both key words, on every noise path.
    monkeypatch.setenv("RMMD_CORE_CPU_SIMD", simd)
    z, x = _data((2, 100), torch.float32)
    A, C, gamma = _coefficients(2)
    out = ops.posterior_step(z, x, A, C, gamma, seed, offset, backend="cpu")
    _check_against_reference(out, z, x, A, C, gamma, seed, offset, f"cpu seed={seed} offset={offset}")


@needs_cpu_op
@pytest.mark.parametrize("shape", [(0, 5), (3, 0)], ids=str)
def test_empty_tensors(shape):
    z, x = _data(shape, torch.float32)
    A, C, gamma = _coefficients(shape[0])
    for backend in ("reference", "cpu"):
        out = ops.posterior_step(z, x, A, C, gamma, SEED, 0, backend=backend)
        assert out.shape == shape and out.dtype == torch.float32


# --------------------------------------------------------------------------------------------------
# The noise stream
# --------------------------------------------------------------------------------------------------

def test_noise_is_deterministic_and_shift_invariant():
    n = 5000
    a = ops.philox_randn(n, SEED, 123)
    assert a.dtype == torch.float32 and a.shape == (n,)
    assert torch.equal(a, ops.philox_randn(n, SEED, 123))
    for k in (1, 3, 1000):
        # n(seed, offset)[k:] == n(seed, offset + k)[:-k]: the counter is offset + index.
        assert torch.equal(a[k:], ops.philox_randn(n, SEED, 123 + k)[:-k])
    assert not torch.equal(a, ops.philox_randn(n, SEED, 124))
    assert not torch.equal(a, ops.philox_randn(n, SEED + 1, 123))


def _philox_python(counter: int, seed: int) -> tuple[int, int, int, int]:
    """Philox-4x32-10 in exact Python integers: checks the int64 tensor emulation independently."""
    m = 0xFFFFFFFF
    c0, c1, c2, c3 = counter & m, (counter >> 32) & m, 0, 0
    k0, k1 = seed & m, seed >> 32
    for _ in range(10):
        pb, pa = 0xCD9E8D57 * c2, 0xD2511F53 * c0
        c0, c1, c2, c3 = (pb >> 32) ^ c1 ^ k0, pb & m, (pa >> 32) ^ c3 ^ k1, pa & m
        k0, k1 = (k0 + 0x9E3779B9) & m, (k1 + 0xBB67AE85) & m
    return c0, c1, c2, c3


@pytest.mark.parametrize("seed,offset", [(0, 0), (2**63 - 1, 2**63 - 64), (0x5EEDC0FFEE123457, 2**32 - 30)])
def test_reference_philox_integers_match_exact_python(seed, offset):
    # 64 draws x 10 rounds x 2 products: many products above 2**63, where the int64 emulation wraps;
    # the last case carries from the low to the high counter word.
    n = 64
    got = torch.stack(philox4x32_ref(n, seed, offset), dim=1)
    expected = torch.tensor([_philox_python(offset + i, seed) for i in range(n)], dtype=torch.int64)
    assert torch.equal(got, expected)


def _corr(a: torch.Tensor, b: torch.Tensor) -> float:
    a, b = a.double() - a.double().mean(), b.double() - b.double().mean()
    return float((a * b).sum() / (a.norm() * b.norm()))


def test_noise_streams_are_uncorrelated():
    n = 2**16
    bound = 5.0 / math.sqrt(n)  # 5 standard errors of a sample correlation of independent normals
    base = ops.philox_randn(n, SEED, 0)
    others = {
        "offset+1 (lag-1 autocorrelation)": ops.philox_randn(n, SEED, 1),
        "offset+n (next block)": ops.philox_randn(n, SEED, n),
        "seed+1": ops.philox_randn(n, SEED + 1, 0),
        "seed + 2**32 (high key word)": ops.philox_randn(n, SEED + 2**32, 0),
    }
    for name, other in others.items():
        assert abs(_corr(base, other)) < bound, name


def test_noise_moments_and_ks():
    from scipy import stats

    n = 2**18
    x = ops.philox_randn(n, SEED, 0).double()
    # Fixed seed, so these are deterministic; each bound is 5 standard errors of the statistic under
    # N(0, 1): SE(mean) = 1/sqrt(n), SE(var) = sqrt(2/n), SE(kurtosis) = sqrt(24/n) (excess 0, var 24/n).
    assert abs(x.mean().item()) < 5 / math.sqrt(n)
    assert abs(x.var().item() - 1.0) < 5 * math.sqrt(2 / n)
    kurt = ((x - x.mean()) ** 4).mean().item() / x.var().item() ** 2 - 3.0
    assert abs(kurt) < 5 * math.sqrt(24 / n)
    # Box-Muller clamps u0 >= 1e-7, so |n| <= sqrt(-2 ln 1e-7).
    assert x.abs().max().item() <= math.sqrt(-2 * math.log(1e-7)) + 1e-6
    assert stats.kstest(x.numpy(), "norm").pvalue > 1e-3


@needs_cpu_op
def test_cpu_step_noise_moments_match_closed_form():
    # z_s ~ N(A z + C x, gamma^2) per sample: standardised residuals have mean 0, variance 1.
    B, D = 3, 2**16
    z, x = _data((B, D), torch.float64)
    A, C, gamma = _coefficients(B)
    out = ops.posterior_step(z, x, A, C, gamma, SEED, 0, backend="cpu")
    resid = (out - A[:, None] * z - C[:, None] * x) / gamma[:, None]
    assert (resid.mean(1).abs() < 5 / math.sqrt(D)).all()
    assert ((resid.var(1) - 1).abs() < 5 * math.sqrt(2 / D)).all()
    # The samples draw disjoint, uncorrelated parts of one stream.
    assert abs(_corr(resid[0], resid[1])) < 5 / math.sqrt(D)


@pytest.mark.interpreter
@pytest.mark.parametrize("seed,offset", [(12345, 0), (2**40 + 3, 2**32 - 100)])
def test_reference_philox_matches_triton(seed, offset):
    triton = pytest.importorskip("triton")
    tl = pytest.importorskip("triton.language")
    if torch.cuda.is_available() and os.environ.get("TRITON_INTERPRET") != "1":
        device, atol = "cuda", 1e-5  # GPU log/cos may differ a little more than numpy's
    elif os.environ.get("TRITON_INTERPRET") == "1":
        device, atol = "cpu", 2e-6
    else:
        pytest.skip("no GPU and TRITON_INTERPRET is not 1")

    @triton.jit
    def _randn_kernel(normal_ptr, bits_ptr, seed, offset, n, BLOCK: tl.constexpr):
        pid = tl.program_id(0).to(tl.int64)
        idx = pid * BLOCK + tl.arange(0, BLOCK).to(tl.int64)
        mask = idx < n
        counter = offset + idx  # int64, so randint4x puts the high word into c1
        tl.store(normal_ptr + idx, tl.randn(seed, counter), mask=mask)
        r0, r1, r2, r3 = tl.randint4x(seed, counter)
        tl.store(bits_ptr + 4 * idx + 0, r0.to(tl.int32, bitcast=True), mask=mask)
        tl.store(bits_ptr + 4 * idx + 1, r1.to(tl.int32, bitcast=True), mask=mask)
        tl.store(bits_ptr + 4 * idx + 2, r2.to(tl.int32, bitcast=True), mask=mask)
        tl.store(bits_ptr + 4 * idx + 3, r3.to(tl.int32, bitcast=True), mask=mask)

    n = 777
    normal = torch.empty(n, device=device)
    bits = torch.empty(n, 4, dtype=torch.int32, device=device)
    _randn_kernel[(triton.cdiv(n, 256),)](normal, bits, seed, offset, n, BLOCK=256)
    expected_bits = torch.stack(philox4x32_ref(n, seed, offset), dim=1)
    assert torch.equal(bits.cpu().to(torch.int64) & 0xFFFFFFFF, expected_bits), "Philox integers differ"
    _assert_close(normal.cpu(), philox_randn_ref(n, seed, offset), atol=atol, rtol=1e-6, what="tl.randn")


# --------------------------------------------------------------------------------------------------
# Registration: opcheck, autograd, compile
# --------------------------------------------------------------------------------------------------

@needs_cpu_op
@pytest.mark.parametrize("requires_grad", [False, True])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=str)
def test_opcheck(dtype, requires_grad):
    z, x = _data((3, 5, 7), dtype)
    z.requires_grad_(requires_grad)
    x.requires_grad_(requires_grad)
    A, C, gamma = _coefficients(3, zero_gamma=(1,))
    torch.library.opcheck(torch.ops.rmmd_core.posterior_step.default, (z, x, A, C, gamma, SEED, 11))


@needs_cpu_op
@pytest.mark.parametrize("zero_gamma", [(0, 1), (1,)], ids=["gamma_zero", "gamma_nonzero"])
def test_gradcheck_cpu_float64(zero_gamma):
    z, x = _data((2, 3, 4), torch.float64)
    z.requires_grad_(True)
    x.requires_grad_(True)
    A, C, gamma = _coefficients(2, zero_gamma=zero_gamma)
    # The noise is a fixed function of (seed, offset), so even gamma != 0 is deterministic.
    fn = lambda z_, x_: ops.posterior_step(z_, x_, A, C, gamma, SEED, 0, backend="cpu")  # noqa: E731
    assert torch.autograd.gradcheck(fn, (z, x))
    assert torch.autograd.gradgradcheck(fn, (z, x))


@needs_cpu_op
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=str)
def test_cpu_gradients_match_reference(dtype):
    z, x = _data((3, 4, 5), dtype)
    A, C, gamma = _coefficients(3)
    A.requires_grad_(True)  # coefficients are constants on every backend: no gradient, no error
    grad = torch.randn(z.shape).to(dtype)
    results = {}
    for backend in ("reference", "cpu"):
        z_, x_ = z.clone().requires_grad_(True), x.clone().requires_grad_(True)
        ops.posterior_step(z_, x_, A, C, gamma, SEED, 0, backend=backend).backward(grad)
        results[backend] = (z_.grad, x_.grad)
    assert A.grad is None
    for ref_g, cpu_g in zip(results["reference"], results["cpu"]):
        assert cpu_g.dtype == dtype
        assert torch.equal(ref_g, cpu_g)  # both are one fp32 multiply per element, rounded once
    expected = (grad.float() * A.float().view(3, 1, 1)).to(dtype)
    assert torch.equal(results["cpu"][0], expected)


@needs_cpu_op
def test_torch_compile_fullgraph(monkeypatch):
    # The public entry point (validation, backend resolution from the environment) traces without
    # graph breaks, and the op runs inside the compiled graph.
    monkeypatch.delenv(dispatch.BACKEND_ENV, raising=False)
    z, x = _data((4, 33), torch.float32)
    A, C, gamma = _coefficients(4, zero_gamma=(2,))

    def step_twice(z_, x_, A_, C_, gamma_):
        z_mid = ops.posterior_step(z_, x_, A_, C_, gamma_, SEED, 0)
        return ops.posterior_step(z_mid, x_, A_, C_, gamma_, SEED, z_.numel(), backend="cpu")

    torch._dynamo.reset()
    compiled = torch.compile(step_twice, fullgraph=True)
    assert torch.equal(compiled(z, x, A, C, gamma), step_twice(z, x, A, C, gamma))


@pytest.mark.slow
def test_reference_compiles_with_inductor():
    # Guards the reference's compile-friendly formulation: a Philox that reuses state words makes
    # Inductor's lowering exponential in the rounds, and seed / offset as Python ints turn into SymInts
    # that Inductor's CPU codegen miscompiles once a new seed triggers a dynamic recompile.
    A, C, gamma = _coefficients(3, zero_gamma=(1,))
    torch._dynamo.reset()
    compiled = torch.compile(posterior_step_ref, fullgraph=True, dynamic=True)
    for width, seed, offset in ((50, SEED, 2**32 - 20), (50, SEED + 1, 3), (77, 2**40, 0)):
        z, x = _data((3, width), torch.float32)
        _assert_close(compiled(z, x, A, C, gamma, seed, offset), posterior_step_ref(z, x, A, C, gamma, seed, offset),
                      what=f"compiled reference seed={seed} offset={offset}", **TOLERANCES[torch.float32])


# --------------------------------------------------------------------------------------------------
# Dispatch
# --------------------------------------------------------------------------------------------------

@needs_cpu_op
def test_auto_picks_cpu_for_cpu_tensors(monkeypatch):
    monkeypatch.delenv(dispatch.BACKEND_ENV, raising=False)
    z, x = _data((2, 3), torch.float32)
    assert ops.resolve_backend("posterior_step", z, x) == "cpu"
    meta = torch.empty(2, 3, device="meta")
    assert "cpu" not in ops.available_backends("posterior_step", meta)
    assert ops.resolve_backend("posterior_step", meta) == "reference"


@needs_cpu_op
@pytest.mark.parametrize("name", ["cpu", "reference"])
def test_env_var_selects_backend(monkeypatch, name):
    monkeypatch.setenv(dispatch.BACKEND_ENV, name)
    z, x = _data((2, 9), torch.float32)
    A, C, gamma = _coefficients(2)
    assert ops.resolve_backend("posterior_step", z, x) == name
    out = ops.posterior_step(z, x, A, C, gamma, SEED, 0)
    _check_against_reference(out, z, x, A, C, gamma, SEED, 0, f"RMMD_CORE_BACKEND={name}")
    # An explicit argument wins over the environment.
    assert ops.resolve_backend("posterior_step", z, backend="reference") == "reference"


@pytest.mark.parametrize("name,needle", [("cuda", "CUDA"), ("triton", "TRITON_INTERPRET")])
def test_unavailable_backend_raises_with_reasons(monkeypatch, name, needle):
    if name == "cuda" and torch.cuda.is_available():
        pytest.skip("CUDA is available here")
    if name == "triton" and dispatch._triton_interpreter:
        pytest.skip("the Triton interpreter runs CPU tensors here (tests/test_posterior_step_triton.py)")
    monkeypatch.setenv(dispatch.BACKEND_ENV, name)
    z, x = _data((2, 3), torch.float32)
    A, C, gamma = _coefficients(2)
    with pytest.raises(RuntimeError, match=name) as info:
        ops.posterior_step(z, x, A, C, gamma, SEED, 0)
    assert needle in str(info.value) and dispatch.BACKEND_ENV in str(info.value)
    with pytest.raises(RuntimeError, match=needle):
        ops.resolve_backend("posterior_step", z, backend=name)


def test_invalid_backend_names(monkeypatch):
    z = torch.randn(2, 3)
    monkeypatch.setenv(dispatch.BACKEND_ENV, "gpu")
    with pytest.raises(ValueError, match=dispatch.BACKEND_ENV):
        ops.resolve_backend("posterior_step", z)
    with pytest.raises(ValueError, match="backend argument"):
        ops.resolve_backend("posterior_step", z, backend="fast")
    with pytest.raises(ValueError, match="op must be one of"):
        ops.resolve_backend("posterior_stepp", z, backend="auto")


def test_missing_extension_reraises_with_install_hint(monkeypatch):
    saved = (dispatch._extension_error, dispatch._triton_error, dispatch._triton_interpreter)
    monkeypatch.delenv(dispatch.BACKEND_ENV, raising=False)
    try:
        dispatch.refresh(ImportError("simulated: undefined symbol"), *saved[1:])
        z, x = _data((2, 3), torch.float32)
        assert ops.resolve_backend("posterior_step", z) == "reference"  # auto falls back silently
        with pytest.raises(RuntimeError, match="pip install --no-build-isolation -e .") as info:
            ops.resolve_backend("posterior_step", z, backend="cpu")
        assert isinstance(info.value.__cause__, ImportError)
    finally:
        dispatch.refresh(*saved)


# --------------------------------------------------------------------------------------------------
# Input errors: each names the offending argument
# --------------------------------------------------------------------------------------------------

def _valid_args():
    z, x = _data((3, 4), torch.float32)
    A, C, gamma = _coefficients(3)
    return dict(z_t=z, x_hat=x, A=A, C=C, gamma=gamma, seed=SEED, offset=0)


BAD_INPUTS = {
    "z_t_not_tensor": (dict(z_t=[[1.0]]), TypeError, "z_t"),
    "z_t_0d": (dict(z_t=torch.tensor(1.0), x_hat=torch.tensor(1.0)), ValueError, "z_t"),
    "z_t_int": (dict(z_t=torch.ones(3, 4, dtype=torch.int64), x_hat=torch.ones(3, 4, dtype=torch.int64)),
                TypeError, "z_t"),
    "x_hat_shape": (dict(x_hat=torch.randn(3, 5)), ValueError, "x_hat"),
    "x_hat_dtype": (dict(x_hat=torch.randn(3, 4, dtype=torch.float64)), TypeError, "x_hat"),
    "x_hat_device": (dict(x_hat=torch.empty(3, 4, device="meta")), ValueError, "x_hat"),
    "A_2d": (dict(A=torch.rand(3, 1, dtype=torch.float64)), ValueError, "A"),
    "C_wrong_batch": (dict(C=torch.rand(4, dtype=torch.float64)), ValueError, "C"),
    "gamma_0d": (dict(gamma=torch.tensor(0.5)), ValueError, "gamma"),
    "A_int": (dict(A=torch.ones(3, dtype=torch.int32)), TypeError, "A"),
    "gamma_device": (dict(gamma=torch.empty(3, device="meta")), ValueError, "gamma"),
    "C_not_tensor": (dict(C=0.5), TypeError, "C"),
    "seed_negative": (dict(seed=-1), ValueError, "seed"),
    "seed_too_large": (dict(seed=2**63), ValueError, "seed"),
    "seed_float": (dict(seed=1.5), TypeError, "seed"),
    "seed_bool": (dict(seed=True), TypeError, "seed"),
    "offset_negative": (dict(offset=-3), ValueError, "offset"),
    "offset_str": (dict(offset="0"), TypeError, "offset"),
    "backend_unknown": (dict(backend="tpu"), ValueError, "backend"),
}


@pytest.mark.parametrize("case", list(BAD_INPUTS))
def test_bad_inputs_name_the_argument(case):
    override, error, name = BAD_INPUTS[case]
    kwargs = {**_valid_args(), **override}
    with pytest.raises(error) as info:
        ops.posterior_step(**kwargs)
    message = str(info.value)
    assert message.startswith(name) or f" {name} " in message or f"{name}:" in message, message


@pytest.mark.parametrize("case,error,name", [("numel", ValueError, "numel"), ("seed", TypeError, "seed")])
def test_philox_randn_bad_inputs(case, error, name):
    kwargs = dict(numel=4, seed=1, offset=0)
    kwargs[case] = -1 if error is ValueError else 1.0
    with pytest.raises(error, match=name):
        ops.philox_randn(**kwargs)


DIRECT_OP_BAD_INPUTS = {
    "x_hat_shape": (dict(x_hat=torch.randn(3, 5)), "x_hat"),
    "x_hat_dtype": (dict(x_hat=torch.randn(3, 4, dtype=torch.float64)), "x_hat"),
    "A_shape": (dict(A=torch.rand(2, dtype=torch.float64)), "A"),
    "gamma_int": (dict(gamma=torch.ones(3, dtype=torch.int64)), "gamma"),
    "z_t_int": (dict(z_t=torch.ones(3, 4, dtype=torch.int32), x_hat=torch.ones(3, 4, dtype=torch.int32)), "z_t"),
    "seed_negative": (dict(seed=-5), "seed"),
    "offset_negative": (dict(offset=-5), "offset"),
}


@needs_cpu_op
@pytest.mark.parametrize("case", list(DIRECT_OP_BAD_INPUTS))
def test_direct_op_checks_name_the_argument(case):
    # torch.ops.rmmd_core.posterior_step bypasses the Python validator: the C++ TORCH_CHECKs and the
    # fake kernel must name the argument too.
    from torch._subclasses.fake_tensor import FakeTensorMode

    override, name = DIRECT_OP_BAD_INPUTS[case]
    kwargs = {**_valid_args(), **override}
    args = [kwargs[k] for k in ("z_t", "x_hat", "A", "C", "gamma", "seed", "offset")]
    with pytest.raises(RuntimeError, match=rf"\b{name}\b"):
        torch.ops.rmmd_core.posterior_step(*args)
    with FakeTensorMode() as mode:
        fake_args = [mode.from_tensor(a) if isinstance(a, torch.Tensor) else a for a in args]
        with pytest.raises(RuntimeError, match=rf"\b{name}\b"):
            torch.ops.rmmd_core.posterior_step(*fake_args)


def test_resolution_memo_follows_the_environment_variable(monkeypatch):
    """resolve_backend memoises per (op, request, devices) with the variable's raw value in the key: changing
    RMMD_CORE_BACKEND between calls changes the answer, and a bad value is still named every time."""
    z = torch.randn(3, 5)
    monkeypatch.setenv(dispatch.BACKEND_ENV, "reference")
    assert ops.resolve_backend("posterior_step", z) == "reference"
    monkeypatch.setenv(dispatch.BACKEND_ENV, " Reference ")
    assert ops.resolve_backend("posterior_step", z) == "reference"
    monkeypatch.setenv(dispatch.BACKEND_ENV, "nonsense")
    for _ in range(2):
        with pytest.raises(ValueError, match="environment variable RMMD_CORE_BACKEND must be one of"):
            ops.resolve_backend("posterior_step", z)
    monkeypatch.delenv(dispatch.BACKEND_ENV)
    assert ops.resolve_backend("posterior_step", z, backend="reference") == "reference"
    assert ops.resolve_backend("posterior_step", z) == dispatch.auto_backends("posterior_step", z)[0]
    with pytest.raises(ValueError, match="backend argument must be one of"):
        ops.resolve_backend("posterior_step", z, backend=["cpu"])
