"""Shared pytest setup for rmmd_core.

``@triton.jit`` reads TRITON_INTERPRET when a kernel is *decorated*, so the variable must be set
before any test module (or rmmd_core) defines Triton kernels: pytest imports conftest.py first.
"""

import os

import torch

if not torch.cuda.is_available():
    # No GPU: run Triton kernels in the interpreter on CPU tensors (house style, "Triton in the
    # interpreter on CPU"). setdefault keeps an explicit TRITON_INTERPRET=0 from the caller.
    os.environ.setdefault("TRITON_INTERPRET", "1")

import pytest  # noqa: E402

# The suite's tensors are tiny: intra-op threads buy little, and on shared cores OpenMP oversubscription
# makes them far slower (measured: the 2-D end-to-end test took 13 s with 1 thread and 172 s with 2 at
# load average ~6 on 2 cores). RMMD_CORE_TEST_THREADS overrides (0 keeps torch's default).
_threads = int(os.environ.get("RMMD_CORE_TEST_THREADS", "1"))
if _threads > 0:
    torch.set_num_threads(_threads)


def pytest_addoption(parser):
    parser.addoption("--skip-slow", action="store_true", default=False,
                     help="skip tests marked slow (or set RMMD_CORE_SKIP_SLOW=1); CI runs them")


def pytest_configure(config):
    config.addinivalue_line("markers", "slow: long-running test (e.g. a cold Inductor compile, ~50 s)")
    config.addinivalue_line("markers", "interpreter: runs Triton kernels, also under TRITON_INTERPRET=1 on CPU")


def pytest_collection_modifyitems(config, items):
    if not (config.getoption("--skip-slow") or os.environ.get("RMMD_CORE_SKIP_SLOW") == "1"):
        return
    skip = pytest.mark.skip(reason="slow test skipped by --skip-slow / RMMD_CORE_SKIP_SLOW=1")
    for item in items:
        if "slow" in item.keywords:
            item.add_marker(skip)


@pytest.fixture(autouse=True)
def _seed_torch():
    # Fresh, reproducible random inputs in every test, independent of test order.
    torch.manual_seed(0)
    yield
