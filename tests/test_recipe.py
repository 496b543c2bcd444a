"""python/train_distributed.py under torchrun (2 gloo/CPU processes): FSDP2 + bf16 + gradient accumulation,
and stopping at iteration 3 then resuming from the sharded checkpoint reproduces the uninterrupted run
bit for bit (weights, EMA, Adam state) at iteration 6 — across the phase-1 -> phase-2 switch."""
import os
import shutil
import subprocess
import sys

import pytest
import torch

pytest.importorskip("torch.distributed.fsdp", reason="this torch build has no torch.distributed.fsdp")
from torch.distributed.checkpoint.format_utils import dcp_to_torch_save  # noqa: E402

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
RECIPE = os.path.join(ROOT, "python", "train_distributed.py")
ENV = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": os.pathsep.join([ROOT, os.environ.get("PYTHONPATH", "")])}
ARGS = ["--fsdp", "--bf16", "--accum", "2", "--batch", "32", "--fit-steps", "20", "--phase2-at", "3",
        "--save-every", "3", "--log-every", "1"]


def recipe(steps, ckpt):
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", RECIPE,
           "--steps", str(steps), "--ckpt", str(ckpt), *ARGS]
    res = subprocess.run(cmd, env=ENV, capture_output=True, text=True, timeout=240)
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]
    return res.stdout


def shards_as_tensors(ckpt_dir, tmp_path, name):
    out = tmp_path / f"{name}.pt"
    dcp_to_torch_save(str(ckpt_dir), str(out))
    return torch.load(out)


def flat(tree, prefix=""):
    if isinstance(tree, torch.Tensor):
        return {prefix: tree}
    if isinstance(tree, dict):
        return {k2: v2 for k, v in tree.items() for k2, v2 in flat(v, f"{prefix}.{k}").items()}
    return {}


def test_recipe_fsdp_bf16_accum_resume_is_bit_identical(tmp_path):
    straight, split = tmp_path / "straight", tmp_path / "split"
    log_straight = recipe(6, straight)  # saves iter-00000003/ and iter-00000006/
    # a run that stopped after its save at iteration 3: the same checkpoint directory, LATEST -> iter 3
    split.mkdir()
    shutil.copytree(straight / "iter-00000003", split / "iter-00000003")
    (split / "LATEST").write_text("iter-00000003")
    log_resumed = recipe(6, split)
    assert "resumed from" in log_resumed and "at iteration 3" in log_resumed
    assert (straight / "LATEST").read_text() == (split / "LATEST").read_text() == "iter-00000006"
    a = flat(shards_as_tensors(straight / "iter-00000006", tmp_path, "a"))
    b = flat(shards_as_tensors(split / "iter-00000006", tmp_path, "b"))
    assert set(a) == set(b) and any(".exp_avg_sq" in k for k in a) and any(k.startswith(".anchor") for k in a)
    for k in a:
        assert torch.equal(a[k], b[k]), k
    # the logged (rank-averaged) metrics of iterations 4-6 agree too
    tail = [line for line in log_straight.splitlines() if line.startswith("it ")][-3:]
    assert tail == [line for line in log_resumed.splitlines() if line.startswith("it ")]
