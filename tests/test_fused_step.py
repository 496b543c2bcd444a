"""A whole RMMD step on the reference backend and on the fused C++ backend leaves the same weights.

The Philox noise of the posterior step is the same stream on every backend by construction, the times,
start noise and seeds come from the engine's generator, so the two runs differ only by the rounding of
the fused kernels (K1 posterior step, K5 cotangent); the updated weights must agree to that level.
"""
from __future__ import annotations

import pytest
import torch

from rmmd_core import RMMD, Denoiser, RMMDConfig, ops, step
from test_mm_gradient import TinyNet, smooth_sum_reward

needs_cpu = pytest.mark.skipif(bool(ops.backend_reasons("rmmd_cotangent")["cpu"]),
                               reason=str(ops.backend_reasons("rmmd_cotangent")["cpu"]))


def _run(backend: str, weighting: str, reward, n_steps: int = 2):
    torch.manual_seed(0)
    teacher = Denoiser(TinyNet(), "vp_cosine", prediction="eps")
    eng = RMMD(teacher, config=RMMDConfig(num_steps=3, num_samples=2, weighting=weighting, ema_decay=0.9, lr=1e-3),
               sample_shape=(1, 5, 7), seed=3, backend=backend)
    metrics = [step(eng, batch_size=3)]  # phase 1 (MM)
    eng.start_phase2(reward=reward, reward_weight=0.5, anchor_weight=0.25)
    for _ in range(n_steps):
        metrics.append(step(eng, batch_size=3))
    return eng, metrics


@needs_cpu
@pytest.mark.parametrize("weighting,reward", [("flat", smooth_sum_reward), ("dmd", "laplacian"), ("edm", "laplacian")])
def test_step_reference_vs_fused_cpu_same_weights(weighting, reward):
    ref_eng, ref_m = _run("reference", weighting, reward)
    cpu_eng, cpu_m = _run("cpu", weighting, reward)
    for m in ref_m:
        assert m["backend"] == "reference" and m["skipped"] == 0.0
    for m in cpu_m:
        assert m["backend"] == "cpu" and all(m[f"backend_{op}"] == "cpu" for op in ("posterior_step", "rmmd_cotangent",
                                                                            "aux_loss"))
    for name, ref_mod, cpu_mod in (("student", ref_eng.student, cpu_eng.student), ("aux", ref_eng.auxiliary,
                                   cpu_eng.auxiliary), ("ema", ref_eng.ema, cpu_eng.ema)):
        for (pname, p_ref), p_cpu in zip(ref_mod.named_parameters(), cpu_mod.parameters()):
            torch.testing.assert_close(p_cpu, p_ref, rtol=1e-4, atol=1e-6, msg=lambda m: f"{name}.{pname}: {m}")
    # the weights moved, so the comparison is not vacuous
    torch.manual_seed(0)
    init = TinyNet()
    moved = max((p - q).abs().max().item() for p, q in zip(cpu_eng.student.parameters(), init.parameters()))
    assert moved > 1e-4
    for key in ("mm_surrogate", "student_loss", "aux_loss", "cot_norm_mm", "cot_norm_reward", "cot_norm_anchor",
                "anchor_l2"):
        assert cpu_m[-1][key] == pytest.approx(ref_m[-1][key], rel=1e-4, abs=1e-7), key
    assert cpu_m[-1]["cot_norm_reward"] > 0 and cpu_m[-1]["cot_norm_anchor"] > 0


def test_backend_metric_names_each_op_when_they_differ(monkeypatch):
    from rmmd_core.step import _backend_metrics

    x = torch.randn(2, 3)
    m = _backend_metrics({"posterior_step": (x,), "rmmd_cotangent": (x,)}, "reference")
    assert m == {"backend": "reference", "backend_posterior_step": "reference", "backend_rmmd_cotangent": "reference"}
    saved = (ops.dispatch._extension_error, ops.dispatch._triton_error, ops.dispatch._triton_interpreter)
    try:  # pretend only posterior_step has a CPU kernel
        ops.dispatch.refresh(*saved)
        ops.dispatch._static_reasons[("cpu", "rmmd_cotangent")] = ("simulated: no CPU kernel",)
        monkeypatch.delenv(ops.dispatch.BACKEND_ENV, raising=False)
        m = _backend_metrics({"posterior_step": (x,), "rmmd_cotangent": (x,)}, None)
        if not ops.backend_reasons("posterior_step")["cpu"]:
            assert m["backend"] == "posterior_step=cpu,rmmd_cotangent=reference"
    finally:
        ops.dispatch.refresh(*saved)


def test_fresh_interpreter_loads_the_extension():
    # `import rmmd_core` before anything imported torch must still load rmmd_core._C (it links against
    # libc10), so the engine's auto backend on CPU tensors is the C++ kernel, not the reference.
    import subprocess
    import sys

    if ops._C_IMPORT_ERROR is not None:
        pytest.skip(f"rmmd_core._C is not built here: {ops._C_IMPORT_ERROR}")
    code = ("import rmmd_core, torch; from rmmd_core import ops; assert ops._C_IMPORT_ERROR is None, "
            "ops._C_IMPORT_ERROR; print(ops.resolve_backend('rmmd_cotangent', torch.randn(2, 3), backend='auto'))")
    env = {k: v for k, v in __import__("os").environ.items() if k != "RMMD_CORE_BACKEND"}
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, env=env)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert proc.stdout.strip() == "cpu"
