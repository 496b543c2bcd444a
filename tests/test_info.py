"""``python -m rmmd_core.info``: reports every op's backends with reasons, build facts, and self-tests that
really compare against the reference (a broken backend makes it fail)."""

from __future__ import annotations

import subprocess
import sys

import pytest
import torch

from rmmd_core import info, ops
from rmmd_core.ops import dispatch


def test_report_lists_every_op_backend_and_reason(capsys):
    assert info.main(["--no-self-test"]) == 0
    text = capsys.readouterr().out
    assert f"torch {torch.__version__}" in text
    for op in dispatch._OPS:
        assert f"  {op}  [auto -> " in text
    for op in dispatch._OPS:
        for backend, reasons in ops.backend_reasons(op, torch.empty(1)).items():
            for reason in reasons:
                assert reason in text  # the dispatcher's own words, not a paraphrase
    if torch.version.cuda is None:
        assert "CUDA none: CPU build" in text


@pytest.mark.skipif(ops._C_IMPORT_ERROR is not None, reason="needs the C++ extension")
def test_build_info_reports_the_cpu_noise_path(monkeypatch):
    facts = info.collect(run_self_test=False)
    ext = facts["extension"]
    assert isinstance(ext, dict), ext
    assert {"openmp", "aten_threads", "avx2_path_compiled", "cpu_avx2_fma", "avx2_noise_used", "isa_clones",
            "isa_clone_used", "thp_outputs", "noise_path"} <= set(ext)
    assert ext["isa_clone_used"] in ("x86-64-v4", "x86-64-v3", "default", "none")
    assert ext["noise_path"] in ("avx512", "avx2", "scalar")
    monkeypatch.setenv("RMMD_CORE_CPU_SIMD", "0")
    forced = info.collect(run_self_test=False)["extension"]
    assert forced["avx2_noise_used"] == "0" and forced["noise_path"] == "scalar"
    assert "CPU noise path: scalar" in info.format_report(info.collect(run_self_test=False))


def test_every_dispatched_op_has_a_self_test():
    assert set(info.SELF_TESTS) == set(dispatch._OPS)


def test_self_tests_pass_for_every_available_fused_backend():
    facts = info.collect(run_self_test=True)
    ran = 0
    for op, entry in facts["ops"].items():
        for backend, res in entry["self_test"].items():
            assert res["ok"] and res["error"] is None, (op, backend, res)
            assert res["max_err"] < res["tol"] * 10
            ran += 1
    if ops._C_IMPORT_ERROR is None:
        assert all("cpu" in facts["ops"][op]["self_test"] for op in info.SELF_TESTS)
    assert ran >= 1 or ops._C_IMPORT_ERROR is not None


@pytest.mark.skipif(ops._C_IMPORT_ERROR is not None, reason="needs the C++ extension")
def test_a_wrong_backend_fails_the_self_test(monkeypatch, capsys):
    real = ops.posterior_step
    monkeypatch.setattr(ops, "posterior_step", lambda *a, backend=None, **k: real(*a, backend=backend, **k) + (
        1e-3 if backend != "reference" else 0.0))
    assert info.main([]) == 1
    out = capsys.readouterr().out
    fused = [b for b, r in ops.backend_reasons("posterior_step", torch.empty(1)).items() if b != "reference" and not r]
    assert "self-test cpu vs reference: FAIL" in out and f"self-tests: {len(fused)} FAILED" in out


def test_module_runs_as_a_script():
    proc = subprocess.run([sys.executable, "-m", "rmmd_core.info", "--json", "--no-self-test"], capture_output=True,
                          text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert '"ops"' in proc.stdout and '"posterior_step"' in proc.stdout
