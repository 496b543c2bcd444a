"""The torch-free CUDA sources compile with plain nvcc, so CUDA code cannot rot on GPU-less CI.

csrc/cuda/*.cu include only CUDA headers and our own (csrc/common/philox.h, *.cuh), so no torch
headers are needed: every file is compiled for sm_80 and sm_90 with warnings as errors.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
CUDA_SOURCES = sorted((REPO / "csrc" / "cuda").glob("*.cu"))
TORCH_FREE_DIRS = [REPO / "csrc" / "cuda", REPO / "csrc" / "common"]
ARCHS = ["80", "90"]


def _nvcc() -> str | None:
    cuda_home = os.environ.get("CUDA_HOME") or os.environ.get("CUDA_PATH")
    if cuda_home and (Path(cuda_home) / "bin" / "nvcc").exists():
        return str(Path(cuda_home) / "bin" / "nvcc")
    return shutil.which("nvcc")


NVCC = _nvcc()


def test_cuda_sources_exist():
    assert CUDA_SOURCES, "no csrc/cuda/*.cu found"


@pytest.mark.parametrize("path", [p for d in TORCH_FREE_DIRS for p in sorted(d.iterdir()) if p.is_file()],
                         ids=lambda p: str(p.relative_to(REPO)))
def test_kernel_sources_are_torch_free(path):
    includes = re.findall(r'^\s*#\s*include\s*[<"]([^>"]+)[>"]', path.read_text(), flags=re.MULTILINE)
    forbidden = [inc for inc in includes if inc.split("/")[0] in ("torch", "ATen", "c10", "pybind11", "Python.h")]
    assert not forbidden, f"{path.name} includes {forbidden}; torch code belongs in csrc/bindings or csrc/cpu"


@pytest.mark.skipif(NVCC is None, reason="nvcc not found (set CUDA_HOME or put nvcc on PATH)")
@pytest.mark.parametrize("arch", ARCHS, ids=lambda a: f"sm_{a}")
@pytest.mark.parametrize("source", CUDA_SOURCES, ids=lambda p: p.name)
def test_nvcc_compiles(source, arch, tmp_path):
    cmd = [
        NVCC, "-c", "-std=c++17", "-O3",
        "-gencode", f"arch=compute_{arch},code=sm_{arch}",
        "-Werror", "all-warnings", "-Xcompiler", "-Wall,-Wextra",
        str(source), "-o", str(tmp_path / f"{source.stem}_sm{arch}.o"),
    ]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, f"{' '.join(cmd)}\n{proc.stdout}\n{proc.stderr}"
    assert (tmp_path / f"{source.stem}_sm{arch}.o").stat().st_size > 0
