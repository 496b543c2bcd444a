"""Build script for rmmd_core and its C++/CUDA extension ``rmmd_core._C``.

Install against the torch that is already installed (never a second one)::

    pip install --no-build-isolation -e .

What gets built is decided by the *torch build*, not by a visible GPU, so a GPU-less builder with
CUDA torch still gets CUDA kernels:

* always ``rmmd_core._C`` with the CPU kernels (csrc/cpu, csrc/bindings/{registration,cpu_ops}.cpp and
  the per-op csrc/bindings/*_registration.cpp);
* plus csrc/cuda/*.cu and csrc/bindings/cuda_ops*.cpp when ``torch.version.cuda`` is set and a CUDA
  toolkit is found (``CUDA_HOME``).

Environment variables:

=========================  ==========================================================================
``RMMD_CORE_SKIP_EXT=1``   build no extension (reference and Triton backends only)
``RMMD_CORE_SKIP_CUDA=1``  CPU kernels only, even with CUDA torch
``RMMD_CORE_FORCE_CUDA=1`` add the CUDA sources without the checks above (torch's CUDAExtension
                           still needs CUDA torch and a toolkit; fails with a CPU-only torch)
``RMMD_CORE_DEBUG=1``      ``-O0 -g`` (and ``-lineinfo`` for nvcc) instead of ``-O3``
``TORCH_CUDA_ARCH_LIST``   CUDA archs; default ``8.0;9.0`` (+PTX for the newest), filtered to what
                           nvcc supports
``MAX_JOBS``               parallel compile jobs; default from cores and free memory
``NVCC_THREADS``           ``nvcc --threads``; default 2
=========================  ==========================================================================

No network, git or pip calls happen here.
"""

from __future__ import annotations

import glob
import os
import subprocess
import sys

from setuptools import find_packages, setup

ROOT = os.path.dirname(os.path.abspath(__file__))
DEFAULT_CUDA_ARCHS = "8.0;9.0"
# A C++/nvcc job of this project peaks well under this; used to cap MAX_JOBS on small machines.
_GIB_PER_JOB = 2


def _env_flag(name: str) -> bool:
    return os.environ.get(name, "0").strip().lower() in ("1", "true", "yes", "on")


def _rel(pattern: str) -> list[str]:
    # setuptools wants paths relative to setup.py.
    return sorted(os.path.relpath(p, ROOT) for p in glob.glob(os.path.join(ROOT, pattern)))


def _default_max_jobs() -> int:
    cores = os.cpu_count() or 1
    try:
        free_gib = os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE") / 2**30
    except (ValueError, OSError, AttributeError):
        return cores
    return max(1, min(cores, int(free_gib // _GIB_PER_JOB)))


def _nvcc_archs(cuda_home: str) -> set[str] | None:
    """Compute capabilities ("8.0", ...) the local nvcc can target, or None if it cannot say."""
    nvcc = os.path.join(cuda_home, "bin", "nvcc")
    try:
        out = subprocess.run([nvcc, "--list-gpu-arch"], capture_output=True, text=True, check=True).stdout
    except (OSError, subprocess.CalledProcessError):
        return None
    archs = set()
    for token in out.split():  # lines like "compute_90"
        digits = token.rpartition("_")[2].rstrip("abf")
        if digits.isdigit():
            archs.add(f"{digits[:-1]}.{digits[-1]}")
    return archs or None


def _configure_cuda_archs(cuda_home: str) -> None:
    if os.environ.get("TORCH_CUDA_ARCH_LIST"):
        print(f"rmmd_core setup: TORCH_CUDA_ARCH_LIST={os.environ['TORCH_CUDA_ARCH_LIST']} (from the environment)")
        return
    wanted = DEFAULT_CUDA_ARCHS.split(";")
    supported = _nvcc_archs(cuda_home)
    archs = [a for a in wanted if supported is None or a in supported]
    if not archs:
        raise RuntimeError(f"nvcc in {cuda_home} supports none of the default archs {DEFAULT_CUDA_ARCHS}; "
                           "set TORCH_CUDA_ARCH_LIST")
    archs[-1] += "+PTX"  # PTX for the newest arch lets newer GPUs JIT the kernels
    os.environ["TORCH_CUDA_ARCH_LIST"] = ";".join(archs)
    print(f"rmmd_core setup: TORCH_CUDA_ARCH_LIST not set; using {os.environ['TORCH_CUDA_ARCH_LIST']} "
          f"(default {DEFAULT_CUDA_ARCHS}, filtered to what nvcc supports)")


def _extensions():
    if _env_flag("RMMD_CORE_SKIP_EXT"):
        print("rmmd_core setup: building no C++ extension (RMMD_CORE_SKIP_EXT=1); reference and Triton backends only")
        return [], {}

    try:
        import torch
        from torch.utils.cpp_extension import CUDA_HOME, BuildExtension, CppExtension, CUDAExtension
    except ImportError as err:
        raise RuntimeError(
            "rmmd_core needs an installed torch to build rmmd_core._C; install torch first and build with "
            "`pip install --no-build-isolation -e .` (or set RMMD_CORE_SKIP_EXT=1)") from err

    debug = _env_flag("RMMD_CORE_DEBUG")
    # No -std flag: torch's BuildExtension adds the standard its headers need (-std=c++20 with torch 2.13;
    # forcing C++17 warns on c10 headers today and would break on the next one). The torch-free sources
    # (csrc/common, csrc/cuda) stay C++17-clean; tests/test_nvcc_compile.py checks that.
    cxx_flags = ["-O0", "-g"] if debug else ["-O3"]
    # No FMA contraction: the CPU kernels' hot loops are compiled per ISA (csrc/cpu/isa_clones.h), and
    # contracting a * b + c only in the AVX2 / AVX-512 clones would make results depend on the CPU.
    cxx_flags.append("-ffp-contract=off")
    # sqrt without errno: with errno semantics GCC guards every sqrt with a libm call for negative inputs,
    # which keeps the loop around it scalar (csrc/cpu/adam_update_cpu.cpp). Values are unchanged.
    cxx_flags.append("-fno-math-errno")
    link_flags = []
    if torch._C.has_openmp and sys.platform.startswith("linux"):
        # With torch's OpenMP backend, at::parallel_for is a header-inline `#pragma omp parallel`: without
        # -fopenmp it silently runs on one thread. Linking resolves to the libgomp.so.1 torch already loaded.
        cxx_flags.append("-fopenmp")
        link_flags.append("-fopenmp")
    # Per-op files: csrc/bindings/<op>_registration.cpp hold a TORCH_LIBRARY_FRAGMENT schema plus the CPU impl.
    sources = (_rel("csrc/bindings/registration.cpp") + _rel("csrc/bindings/cpu_ops.cpp")
               + _rel("csrc/bindings/*_registration.cpp") + _rel("csrc/cpu/*.cpp"))

    if _env_flag("RMMD_CORE_SKIP_CUDA"):
        use_cuda, why = False, "RMMD_CORE_SKIP_CUDA=1"
    elif _env_flag("RMMD_CORE_FORCE_CUDA"):
        use_cuda, why = True, "RMMD_CORE_FORCE_CUDA=1"
        if CUDA_HOME is None:
            raise RuntimeError("RMMD_CORE_FORCE_CUDA=1, but torch.utils.cpp_extension.CUDA_HOME is None: it needs a "
                               f"CUDA build of torch (this is {torch.__version__}) and a toolkit at CUDA_HOME or on PATH")
    elif torch.version.cuda is None:
        use_cuda, why = False, f"torch {torch.__version__} is a CPU build (torch.version.cuda is None)"
    elif CUDA_HOME is None:
        use_cuda, why = False, f"torch has CUDA {torch.version.cuda} but no CUDA toolkit was found (CUDA_HOME unset)"
    else:
        use_cuda, why = True, f"torch has CUDA {torch.version.cuda} and CUDA_HOME={CUDA_HOME}"

    os.environ.setdefault("MAX_JOBS", str(_default_max_jobs()))  # read by torch's ninja build
    mode = "debug" if debug else "release"
    if use_cuda:
        _configure_cuda_archs(CUDA_HOME)
        nvcc_flags = (["-O0", "-g", "-lineinfo"] if debug else ["-O3"]) + [
            f"--threads={os.environ.get('NVCC_THREADS', '2')}",
        ]
        sources += _rel("csrc/cuda/*.cu") + _rel("csrc/bindings/cuda_ops*.cpp")
        print(f"rmmd_core setup: building rmmd_core._C with CPU and CUDA kernels ({mode}; {why}; "
              f"MAX_JOBS={os.environ['MAX_JOBS']})")
        ext = CUDAExtension("rmmd_core._C", sources, extra_compile_args={"cxx": cxx_flags, "nvcc": nvcc_flags},
                            extra_link_args=link_flags)
    else:
        print(f"rmmd_core setup: building rmmd_core._C with CPU kernels only ({mode}; {why}; "
              f"MAX_JOBS={os.environ['MAX_JOBS']})")
        ext = CppExtension("rmmd_core._C", sources, extra_compile_args={"cxx": cxx_flags}, extra_link_args=link_flags)
    return [ext], {"build_ext": BuildExtension.with_options(use_ninja=True)}


ext_modules, cmdclass = _extensions()

setup(
    name="rmmd_core",
    version="0.1.0",
    description="Reward-regularised moment-matching distillation of diffusion models, with fused kernels",
    packages=find_packages(include=["rmmd_core*"]),
    # the shapes task's teacher / classifier checkpoints and their manifest (rmmd_core/tasks/assets.py)
    package_data={"rmmd_core": ["assets/*.pt", "assets/MANIFEST.json"]},
    python_requires=">=3.10",
    # torch is deliberately absent: it must already be installed (the build links against it), and
    # listing it would let pip replace a CUDA build with a different wheel.
    install_requires=["numpy"],
    # `pip install -e .[peer]`: NVIDIA's modelopt.torch.fastgen DMD2, the peer row of benchmarks/bench_step.py
    # (pin torch alongside, e.g. `pip install "nvidia-modelopt==0.47.0" "torch==2.13.0"`, so pip keeps
    # the installed torch build). Nothing in the package or the tests imports it.
    extras_require={"peer": ["nvidia-modelopt==0.47.0"]},
    ext_modules=ext_modules,
    cmdclass=cmdclass,
    entry_points={"console_scripts": ["rmmd = rmmd_core.__main__:main"]},
    zip_safe=False,
)
