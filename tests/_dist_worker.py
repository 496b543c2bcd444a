"""One rank of tests/test_distributed.py (launched by torchrun on gloo/CPU), and the single-process reference.

Both sides run the same schedule on the same global batch: iteration i uses data rows
``[r*B, (r+1)*B)`` and noise from ``Generator(seed(i, r))`` for "rank" r. The distributed run gives
rank r its shard; the reference runs the W shards as W micro-batches of one accumulated step, which
is the same update (mean gradient) by construction. SGD, so float-order differences are not
amplified the way Adam's g/sqrt(v) amplifies them near g = 0.

    torchrun --nproc_per_node=2 _dist_worker.py {ddp|fsdp} OUT.pt
"""
import os
import sys

import torch

from rmmd_core import RMMD, Denoiser, RMMDConfig, losses, step
from rmmd_core.accumulate import accumulate_step
from rmmd_core.activation import checkpoint_activations
from rmmd_core.denoiser import unwrap
from rmmd_core.toy import MLPNet

B, W, ITERS = 4, 2, 5
SHARDED = ("teacher", "student", "auxiliary", "ema", "anchor", "frozen_aux")
LR = 0.05


def sgd(den):
    return torch.optim.SGD([p for p in den.parameters() if p.requires_grad], lr=LR)


def build():
    torch.manual_seed(0)
    teacher = Denoiser(MLPNet(2, hidden=16, depth=2), "vp_cosine", prediction="x0")
    cfg = RMMDConfig(num_steps=2, ema_decay=0.5, grad_clip=0.5)
    eng = RMMD(teacher, config=cfg, sample_shape=(2,), reward=lambda x, c=None: x[:, 0], seed=0)
    eng.student_optimizer, eng.aux_optimizer = sgd(eng.student), sgd(eng.auxiliary)
    return eng


def shard(i, r):
    data = torch.randn(W * B, 2, generator=torch.Generator().manual_seed(50 + i))[r * B:(r + 1) * B]
    mb = {"generator": torch.Generator().manual_seed(1000 * i + r)}
    if i in (0, 3):
        mb["data"] = data  # off-policy
    else:
        mb["batch_size"] = B  # on-policy rollouts from the generator's noise
    return mb


def schedule(eng, run_iteration):
    """Iterations 0-1 phase 1; phase 2 (reward + anchor) from 2; 4 uses the loss-only API."""
    for i in range(ITERS):
        if i == 2:
            eng.start_phase2(reward_weight=0.5)
        run_iteration(eng, i)


def full_state(eng):
    """Plain (gathered) tensors of every trained or averaged network, for comparison."""
    out = {}
    for name in ("student", "auxiliary", "ema", "anchor"):
        den = getattr(eng, name)
        if den is None:
            continue
        for k, p in den.net.named_parameters():
            p = p.full_tensor() if hasattr(p, "full_tensor") else p
            out[f"{name}.{k.removeprefix('module.')}"] = p.detach().clone()
    return out


def reference():
    eng = build()

    def it(eng, i):
        mbs = [shard(i, r) for r in range(W)]
        if i == 4:  # loss-only API: the trainer owns backward and the optimiser (no clipping here)
            eng.student_optimizer.zero_grad(), eng.aux_optimizer.zero_grad()
            for mb in mbs:
                out = losses(eng, **mb)
                ((out.student_loss + out.aux_loss) / W).backward()
            eng.student_optimizer.step(), eng.aux_optimizer.step()
            eng.update_ema()
            eng.iteration += 1
        else:
            accumulate_step(eng, mbs)
    schedule(eng, it)
    return full_state(eng)


def distributed(mode, path):
    import torch.distributed as dist
    from rmmd_core.distributed import is_sharded, reduce_metrics, shard_fsdp, wrap_ddp

    dist.init_process_group("gloo")
    r = dist.get_rank()
    assert dist.get_world_size() == W
    eng = build()
    if mode == "ddp":
        wrap_ddp(eng)
    else:
        # FSDP2 combined with activation checkpointing of the trained networks' bodies
        for den in (eng.student, eng.auxiliary):
            checkpoint_activations(den.net, lambda m, body=den.net.body: m is body)
        shard_fsdp(eng, optimizer_factory=sgd, shard_teacher=True)  # the frozen teacher sharded too
    grad_calls = []  # forwards of the student's first layer with grad on: 2 per update when recomputed
    unwrap(eng.student.net).body[0].register_forward_hook(lambda *a: grad_calls.append(torch.is_grad_enabled()))
    metrics = []

    def it(eng, i):
        mb = shard(i, r)
        if i == 4:
            eng.student_optimizer.zero_grad(), eng.aux_optimizer.zero_grad()
            out = losses(eng, **mb)
            (out.student_loss + out.aux_loss).backward()  # DDP / FSDP average over ranks
            eng.student_optimizer.step(), eng.aux_optimizer.step()
            eng.update_ema()
            eng.iteration += 1
        else:
            metrics.append(reduce_metrics(step(eng, **mb)))
    schedule(eng, it)
    state = full_state(eng)
    recomputed = sum(grad_calls)
    # a NaN in rank 1's data only: every rank must skip (no rank left waiting in an all-reduce)
    bad = shard(0, r)
    if r == 1:
        bad["data"] = bad["data"].clone()
        bad["data"][0, 0] = float("nan")
    skipped = [step(eng, **bad)["skipped"]]
    skipped.append(accumulate_step(eng, [shard(1, r), bad])["skipped"])  # NaN in rank 1's 2nd micro-batch
    unchanged = max(float((a - b).abs().max()) for a, b in zip(full_state(eng).values(), state.values())) == 0
    # (the NaN steps above also check that a skipped step leaves DDP/FSDP able to continue exactly)
    # distributed checkpoint round trip into a freshly built and wrapped engine (DDP: one file; FSDP: DCP)
    from rmmd_core.dist_checkpoint import load_distributed, save_distributed
    ckpt = path + (".ckpt.pt" if mode == "ddp" else ".dcp")
    save_distributed(eng, ckpt)
    fresh = build()
    wrap_ddp(fresh) if mode == "ddp" else shard_fsdp(fresh, optimizer_factory=sgd)
    load_distributed(fresh, ckpt)
    roundtrip = (fresh.phase == "rmmd" and fresh.iteration == eng.iteration
                 and torch.equal(fresh.generator.get_state(), eng.generator.get_state())
                 and all(torch.equal(a, b) for a, b in zip(full_state(fresh).values(), full_state(eng).values())))
    # and both continue identically (optimiser state and per-rank noise restored)
    step(eng, **shard(7, r)), step(fresh, **shard(7, r))
    roundtrip = roundtrip and all(torch.equal(a, b) for a, b in zip(full_state(fresh).values(),
                                                                    full_state(eng).values()))
    result = {"state": state, "metrics": metrics, "nan_skipped": skipped, "nan_unchanged": unchanged,
              "roundtrip": roundtrip, "sharded": [is_sharded(getattr(eng, k).net) for k in SHARDED],
              "grad_calls": recomputed}
    torch.save(result, path if r == 0 else path + ".rank1")  # every rank's copy is checked
    dist.destroy_process_group()
    # End the process here: letting Python free the DDP Reducer at exit can deadlock in torch's gloo
    # teardown (~ProcessGroupGloo joins its worker thread while holding the GIL; the worker waits for
    # the GIL to free a Python object held by its last AsyncWork). Everything is written by now.
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)


if __name__ == "__main__":
    distributed(sys.argv[1], sys.argv[2])
