"""Checkpoint and resume: bit-identical resume in a new process, atomic writes under SIGKILL,
clear errors and an untouched engine for truncated / foreign / mismatched checkpoints."""
import os
import signal
import subprocess
import sys

import pytest
import torch

from rmmd_core import RMMD, CheckpointError, Denoiser, RMMDConfig, load_checkpoint, save_checkpoint, step
from rmmd_core.checkpoint import read_checkpoint
from rmmd_core.toy import MLPNet

WORKER = os.path.join(os.path.dirname(__file__), "_ckpt_worker.py")
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# the child imports the same rmmd_core as this process, installed or not; one thread each (2 shared cores)
CHILD_ENV = {**os.environ, "OMP_NUM_THREADS": "1",
             "PYTHONPATH": os.pathsep.join([ROOT, os.environ.get("PYTHONPATH", "")])}
sys.path.insert(0, os.path.dirname(__file__))
import _ckpt_worker  # noqa: E402


def run_worker(*args):
    subprocess.run([sys.executable, WORKER, *map(str, args)], check=True, timeout=120,
                   env=CHILD_ENV)


def assert_same(a, b, where="state"):
    """Recursive exact equality of two checkpoint states (tensors bit-for-bit)."""
    if isinstance(a, torch.Tensor):
        assert isinstance(b, torch.Tensor) and a.dtype == b.dtype and torch.equal(a, b), where
    elif isinstance(a, dict):
        assert set(a) == set(b), f"{where}: keys {set(a) ^ set(b)}"
        for k in a:
            assert_same(a[k], b[k], f"{where}[{k!r}]")
    elif isinstance(a, (list, tuple)):
        assert len(a) == len(b), where
        for i, (x, y) in enumerate(zip(a, b)):
            assert_same(x, y, f"{where}[{i}]")
    else:
        assert a == b, f"{where}: {a!r} != {b!r}"


def test_resume_in_new_process_is_bit_identical(tmp_path):
    N, k = 8, 5  # k is inside phase 2 (starts at iteration 4): anchor, frozen aux and config are restored
    straight, mid, resumed = tmp_path / "straight.pt", tmp_path / "mid.pt", tmp_path / "resumed.pt"
    run_worker("train", N, "--save-at", k, mid, "--final", straight)
    run_worker("train", N, "--load", mid, "--final", resumed)
    a, b = read_checkpoint(straight), read_checkpoint(resumed)
    assert a["counters"]["iteration"] == N and a["phase"] == "rmmd" and a["config"]["reward_weight"] == 0.3
    assert_same(a, b)
    # and the run really moved between k and N (the comparison is not vacuous)
    m = read_checkpoint(mid)
    assert not torch.equal(m["student"]["body.0.weight"], a["student"]["body.0.weight"])
    assert not torch.equal(m["ema"]["body.0.weight"], a["ema"]["body.0.weight"])


def test_sigkill_while_writing_leaves_previous_checkpoint(tmp_path):
    ckpt = tmp_path / "ckpt.pt"
    proc = subprocess.Popen([sys.executable, WORKER, "killme", ckpt], stdout=subprocess.PIPE, text=True,
                            env=CHILD_ENV)
    try:
        assert proc.stdout.readline().strip() == "midwrite"
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=30)
    assert proc.returncode == -signal.SIGKILL
    leftovers = [p for p in os.listdir(tmp_path) if p.startswith(".ckpt.pt.tmp-")]
    assert leftovers, "the killed writer was half-way through its temporary file"
    with pytest.raises(CheckpointError, match="truncated"):
        read_checkpoint(tmp_path / leftovers[0])
    eng = _ckpt_worker.build()
    load_checkpoint(eng, ckpt)  # the previous (complete) checkpoint, saved after 2 iterations
    assert eng.iteration == 2 and eng.phase == "mm"


def snapshot(eng):
    return eng.state_dict()


@pytest.fixture
def trained(tmp_path):
    eng = _ckpt_worker.build()
    for _ in range(2):
        _ckpt_worker.one_iteration(eng)
    path = tmp_path / "good.pt"
    save_checkpoint(eng, path)
    return eng, path


def test_truncated_checkpoint_raises_and_leaves_engine_untouched(trained, tmp_path):
    eng, path = trained
    data = path.read_bytes()
    bad = tmp_path / "truncated.pt"
    bad.write_bytes(data[: len(data) * 2 // 3])
    fresh = _ckpt_worker.build()
    before = snapshot(fresh)
    with pytest.raises(CheckpointError, match="truncated"):
        load_checkpoint(fresh, bad)
    assert_same(before, snapshot(fresh))


def test_foreign_files_raise_clear_errors(trained, tmp_path):
    eng, _ = trained
    before = snapshot(eng)
    plain = tmp_path / "weights.pt"
    torch.save(eng.student.net.state_dict(), plain)  # a plain model state dict, not an engine checkpoint
    with pytest.raises(CheckpointError, match="not an rmmd_core checkpoint"):
        load_checkpoint(eng, plain)
    text = tmp_path / "notes.txt"
    text.write_text("hello")
    with pytest.raises(CheckpointError, match="cannot read checkpoint"):
        load_checkpoint(eng, text)
    with pytest.raises(CheckpointError, match="does not exist"):
        load_checkpoint(eng, tmp_path / "missing.pt")
    assert_same(before, snapshot(eng))


def test_mismatched_checkpoint_is_rejected_before_any_mutation(trained, tmp_path):
    eng, path = trained
    other = RMMD(Denoiser(MLPNet(2, hidden=24, depth=2, dropout=0.1), "vp_cosine", prediction="x0"),
                 config=RMMDConfig(num_steps=2), sample_shape=(2,), seed=3)
    step(other, batch_size=4)
    before = snapshot(other)
    with pytest.raises(CheckpointError, match=r"student\['body.0.weight'\] has shape"):
        load_checkpoint(other, path)
    assert_same(before, snapshot(other))

    # a late entry broken: everything before it (networks, optimizers) must still be untouched
    state = eng.state_dict()
    state["counters"]["iteration"] = -1
    fresh = _ckpt_worker.build()
    before = snapshot(fresh)
    with pytest.raises(CheckpointError, match="counters"):
        fresh.load_state_dict(state)
    assert_same(before, snapshot(fresh))

    state = eng.state_dict()
    state["version"] = 99
    with pytest.raises(CheckpointError, match="version 99"):
        fresh.load_state_dict(state)
    state = eng.state_dict()
    state["aux_optimizer"]["param_groups"][0]["params"] = state["aux_optimizer"]["param_groups"][0]["params"][:-1]
    with pytest.raises(CheckpointError, match="aux_optimizer param group 0"):
        fresh.load_state_dict(state)
    state = eng.state_dict()
    state["student"]["body.0.bias"][0] = float("nan")
    with pytest.raises(CheckpointError, match="non-finite"):
        fresh.load_state_dict(state)
    assert_same(before, snapshot(fresh))


def test_load_restores_phase_in_both_directions(trained, tmp_path):
    eng, path = trained  # phase 1 checkpoint
    eng.start_phase2(reward_weight=0.3)
    step(eng, batch_size=4)
    p2 = tmp_path / "p2.pt"
    save_checkpoint(eng, p2)
    load_checkpoint(eng, path)  # back to phase 1: the frozen networks go, the config comes back
    assert eng.phase == "mm" and eng.anchor is None and eng.config.reward_weight == 0.0
    fresh = _ckpt_worker.build()
    load_checkpoint(fresh, p2)  # phase 2 into a fresh phase-1 engine: anchors are created and filled
    assert fresh.phase == "rmmd" and fresh.config.reward_weight == 0.3
    assert_same(read_checkpoint(p2), fresh.state_dict())


def test_save_is_atomic_replace_of_existing_file(trained, tmp_path):
    eng, path = trained
    old_inode = os.stat(path).st_ino
    step(eng, batch_size=4)
    save_checkpoint(eng, path)
    assert os.stat(path).st_ino != old_inode  # a new file renamed over the old one, not rewritten in place
    assert not [p for p in os.listdir(tmp_path) if ".tmp-" in p]
    assert read_checkpoint(path)["counters"]["iteration"] == 3
