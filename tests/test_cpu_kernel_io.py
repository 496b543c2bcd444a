"""How the CPU kernels read and write memory: bf16 stores and huge-page outputs.

* csrc/cpu/opmath_io.h: the kernels replaced c10's float -> bf16 conversion (which branches on NaN and kept
  GCC from vectorising) by a select; these tests pin the bits: round to nearest even at exact ties,
  overflow to inf, subnormals, and non-finite values (every NaN stored as the quiet NaN 0x7FC0).
* csrc/cpu/fresh_output.h: large outputs are advised MADV_HUGEPAGE before their first write; the kernel
  marks such a mapping with the "hg" VmFlag in /proc/self/smaps, which the tests read.
"""

import os
import subprocess
import sys

import pytest
import torch

from rmmd_core import ops

needs_cpu = pytest.mark.skipif("cpu" not in ops.dispatch.auto_backends("ema_update", torch.empty(1)),
                               reason="C++ extension not built")


def _hard_floats(n: int, seed: int) -> torch.Tensor:
    """Random float32 values plus the bf16 rounding edge cases, no zeros (the EMA identity below keeps
    a zero's sign only up to -0 / +0)."""
    g = torch.Generator().manual_seed(seed)
    bits = torch.randint(-2**31, 2**31 - 1, (n,), generator=g, dtype=torch.int64)
    # Ties: the low 16 bits exactly 0x8000, with even and odd kept parts (round down / round up).
    ties = (bits[: n // 4] & ~0xFFFF) | 0x8000
    # Just below / above the ties, subnormals, and the largest floats (which round to +-inf in bf16).
    near = ties + torch.randint(-1, 2, ties.shape, generator=g) * 1
    sub = torch.randint(1, 2**23, (n // 8,), generator=g, dtype=torch.int64)
    big = torch.tensor([0x7F7FFFFF, 0x7F7F8000, 0x7F7F7FFF, 0xFF7FFFFF - 2**32, 0x7F7F0000], dtype=torch.int64)
    all_bits = torch.cat([bits, ties, near, sub, -sub, big]).to(torch.int32)
    x = all_bits.view(torch.float32)
    x = x[torch.isfinite(x) & (x != 0)]
    return x


def _hard_floats_fp16(n: int, seed: int) -> torch.Tensor:
    """float32 values around fp16's edges: ties of the 13 dropped bits, subnormals, overflow to inf."""
    g = torch.Generator().manual_seed(seed)
    e = torch.randint(-26, 17, (n,), generator=g).double()
    base = torch.rand(n, generator=g, dtype=torch.float64) + 1.0
    x = (base * 2.0**e * torch.where(torch.rand(n, generator=g) < 0.5, -1.0, 1.0)).float()
    bits = x.view(torch.int32).to(torch.int64)
    ties = (bits[: n // 3] & ~0x1FFF) | 0x1000  # exactly halfway between two fp16 normals
    edges = torch.tensor([65504.0, 65519.0, 65520.0, 65536.0, 6.1e-5, 5.96e-8, 2.98e-8, 3.0e-8, -65520.0])
    return torch.cat([x, ties.to(torch.int32).view(torch.float32), edges])


@needs_cpu
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16], ids=str)
@pytest.mark.parametrize("numel", [1, 7, 4099])
def test_low_precision_store_matches_torch_rounding_bit_for_bit(numel, dtype):
    """ema_update with beta = 0 stores params exactly: e = p - (p - e) * 0 = p, rounded once to the
    EMA's dtype, which must give torch's own conversion bit for bit."""
    params = _hard_floats(8 * numel, seed=numel) if dtype == torch.bfloat16 else _hard_floats_fp16(8 * numel, numel)
    ema = torch.randn(params.shape, generator=torch.Generator().manual_seed(1)).to(dtype)
    ops.ema_update([ema], [params], beta=0.0, backend="cpu")
    expected = params.to(dtype)
    assert torch.equal(ema.view(torch.int16), expected.view(torch.int16))


@needs_cpu
def test_fp16_loads_are_exact():
    """Every finite fp16 value loads exactly: aux_loss's grad with o = x, m_ref = 0 is 2 w / (B D) x."""
    every = torch.arange(0, 2**16, dtype=torch.int32).to(torch.int16).view(torch.float16)
    o = every[torch.isfinite(every)].reshape(1, -1)
    zero = torch.zeros_like(o)
    w = torch.full((1,), o.numel() / 2.0, dtype=torch.float64)  # 2 w / (B D) = 1: grad = o exactly
    grad = ops.aux_loss(o, zero, zero, w, backend="cpu")[1]
    assert torch.equal(grad.view(torch.int16), (2 * o.float()).half().view(torch.int16))


@needs_cpu
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16], ids=str)
@pytest.mark.parametrize("op", ["rmmd_cotangent", "aux_loss"])
def test_low_precision_non_finite_values_propagate(op, dtype):
    """inf stays inf with its sign; NaN stays NaN (stored as the quiet NaN 0x7FC0 / 0x7E00)."""
    g = torch.Generator().manual_seed(7)
    x0, a, b = (torch.randn(3, 131, generator=g).to(dtype) for _ in range(3))
    a[0, 5], a[1, 17], a[2, 100] = float("inf"), float("-inf"), float("nan")
    w = torch.rand(3, generator=g, dtype=torch.float64) + 0.5
    if op == "rmmd_cotangent":
        got = ops.rmmd_cotangent(x0, a, b, None, None, w, backend="cpu")[0]
        ref = ops.rmmd_cotangent_ref(x0, a, b, None, None, w, 0.0, 0.0, 1.0)[0]
    else:
        got = ops.aux_loss(a, x0, b, w, backend="cpu")[1]
        ref = ops.aux_loss_ref(a, x0, b, w)[1]
    assert torch.equal(torch.isnan(got), torch.isnan(ref))
    assert torch.isnan(got).sum() == 1
    quiet_nan = 0x7FC0 if dtype == torch.bfloat16 else 0x7E00
    assert ((got.view(torch.int16)[torch.isnan(got)] & 0x7FFF) == quiet_nan).all()
    finite = ~torch.isnan(ref)
    assert torch.equal(got[finite], ref[finite])  # inf with the same sign; finite values bit-identical


def _thp_policy() -> str | None:
    try:
        with open("/sys/kernel/mm/transparent_hugepage/enabled") as f:
            return f.read().split("[")[1].split("]")[0]
    except (OSError, IndexError):
        return None


def _vm_flags(address: int) -> list[str]:
    """VmFlags of the mapping of this process that contains ``address`` (Linux /proc/self/smaps)."""
    flags, inside = None, False
    with open("/proc/self/smaps") as f:
        for line in f:
            head = line.split()[0]
            if "-" in head and ":" not in head:
                lo, hi = (int(v, 16) for v in head.split("-"))
                inside = lo <= address < hi
            elif inside and head == "VmFlags:":
                flags = line.split()[1:]
    assert flags is not None, f"no mapping contains {address:#x}"
    return flags


needs_thp = pytest.mark.skipif(_thp_policy() in (None, "never") or not sys.platform.startswith("linux"),
                               reason="transparent huge pages unavailable")

_HUGE = 2 << 20


@needs_cpu
@needs_thp
@pytest.mark.parametrize("op", ["rmmd_cotangent", "aux_loss", "posterior_step"])
def test_large_outputs_are_advised_huge_pages(op):
    """A 24 MB output: its 2 MiB-aligned interior is MADV_HUGEPAGE ("hg"); the values are still right."""
    g = torch.Generator().manual_seed(3)
    x0, a, b = (torch.randn(3, 2_000_003, generator=g) for _ in range(3))
    w = torch.rand(3, generator=g, dtype=torch.float64) + 0.5
    if op == "rmmd_cotangent":
        out = ops.rmmd_cotangent(x0, a, b, None, None, w, backend="cpu")[0]
        ref = ops.rmmd_cotangent_ref(x0, a, b, None, None, w, 0.0, 0.0, 1.0)[0]
    elif op == "aux_loss":
        out = ops.aux_loss(a, x0, b, w, backend="cpu")[1]
        ref = ops.aux_loss_ref(a, x0, b, w)[1]
    else:  # deterministic (gamma = 0) so the reference comparison is exact up to rounding
        coef = torch.rand(3, generator=g, dtype=torch.float64)
        zero = torch.zeros(3, dtype=torch.float64)
        out = ops.posterior_step(x0, a, coef, coef + 0.5, zero, seed=1, offset=0, backend="cpu")
        ref = ops.posterior_step_ref(x0, a, coef, coef + 0.5, zero, seed=1, offset=0)
    interior = (out.data_ptr() + _HUGE - 1) // _HUGE * _HUGE
    assert interior + _HUGE <= out.data_ptr() + out.nbytes
    assert "hg" in _vm_flags(interior)
    torch.testing.assert_close(out, ref, rtol=1e-6, atol=1e-6)


@needs_cpu
@needs_thp
def test_rmmd_core_thp_0_leaves_outputs_alone():
    """RMMD_CORE_THP=0 (read once per process, hence the subprocess) turns the advice off."""
    code = (
        "import torch, sys\n"
        "sys.path.insert(0, %r)\n"
        "from test_cpu_kernel_io import _vm_flags\n"
        "from rmmd_core import ops\n"
        "x = torch.randn(3, 2_000_003)\n"
        "out = ops.aux_loss(x, x + 1, x - 1, torch.ones(3, dtype=torch.float64), backend='cpu')[1]\n"
        "interior = (out.data_ptr() + %d - 1) // %d * %d\n"
        "print('hg' in _vm_flags(interior))\n" % (os.path.dirname(__file__), _HUGE, _HUGE, _HUGE))
    env = dict(os.environ, RMMD_CORE_THP="0")
    res = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stderr
    assert res.stdout.strip().splitlines()[-1] == "False"
