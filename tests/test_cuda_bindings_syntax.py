"""The CUDA bindings (csrc/bindings/cuda_ops*.cpp) stay compilable on CPU-only machines.

They are built only against CUDA torch, which CPU CI never has; but the CPU torch wheel ships the c10/cuda
and ATen headers they include, so ``g++ -fsyntax-only`` with the CUDA toolkit's headers type-checks them
against the real torch API and our torch-free launch interfaces (csrc/cuda/*.cuh). The only header the CPU
wheel lacks is the CMake-generated ``c10/cuda/impl/cuda_cmake_macros.h`` (build-configuration macros), for
which an empty stand-in is written into a temporary directory.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest
import torch.utils.cpp_extension as cpp_extension

REPO = Path(__file__).resolve().parents[1]
BINDINGS = sorted((REPO / "csrc" / "bindings").glob("cuda_ops*.cpp"))


def _cuda_include() -> Path | None:
    for root in (os.environ.get("CUDA_HOME"), os.environ.get("CUDA_PATH"), "/usr/local/cuda"):
        if root and (Path(root) / "include" / "cuda_runtime.h").exists():
            return Path(root) / "include"
    nvcc = shutil.which("nvcc")
    if nvcc:
        inc = Path(nvcc).resolve().parents[1] / "include"
        if (inc / "cuda_runtime.h").exists():
            return inc
    return None


CUDA_INCLUDE = _cuda_include()
CXX = shutil.which("g++") or shutil.which("c++")


def test_bindings_exist():
    assert BINDINGS, "no csrc/bindings/cuda_ops*.cpp found"


@pytest.mark.skipif(CUDA_INCLUDE is None or CXX is None, reason="needs the CUDA toolkit headers and a C++ compiler")
@pytest.mark.parametrize("source", BINDINGS, ids=lambda p: p.name)
def test_cuda_binding_type_checks(source, tmp_path):
    stub = tmp_path / "c10" / "cuda" / "impl"
    stub.mkdir(parents=True)
    (stub / "cuda_cmake_macros.h").write_text("#pragma once\n")
    includes = [f"-I{tmp_path}"] + [f"-I{p}" for p in cpp_extension.include_paths()] + [f"-I{CUDA_INCLUDE}"]
    cmd = [CXX, "-std=c++20", "-fsyntax-only", "-Wall", *includes, str(source)]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, f"{' '.join(cmd)}\n{proc.stderr[-4000:]}"
