"""Distributed RMMD on the 2-D task: a recipe for torchrun (one or many machines).

    torchrun --nproc_per_node=2 python/train_distributed.py --steps 200             # DDP, 2 processes
    torchrun --nproc_per_node=2 python/train_distributed.py --fsdp --bf16 --accum 2 # FSDP2, bf16, 2 micro-batches
    torchrun --nnodes=2 --nproc_per_node=8 --rdzv-backend=c10d --rdzv-endpoint=HOST:29500 \\
        python/train_distributed.py --ckpt /shared/run1                             # many machines

Backend: nccl when CUDA is available, else gloo (CPU). Each rank trains on its own data shard and
noise (engine seed offset by rank); gradients are averaged over ranks. With ``--ckpt`` the run saves
every ``--save-every`` steps and resumes from the checkpoint when it exists (same world size).
Replace the teacher, networks, data and reward below with yours; the rest is the scaling code.
"""
from __future__ import annotations

import argparse
import os
import sys
import time

import torch
import torch.distributed as dist

from rmmd_core import RMMD, Denoiser, RMMDConfig, sample, step
from rmmd_core.accumulate import accumulate_step
from rmmd_core.dist_checkpoint import load_distributed, save_distributed
from rmmd_core.distributed import rank_seed, reduce_metrics, shard_fsdp, wrap_ddp
from rmmd_core.metrics import sliced_wasserstein
from rmmd_core.toy import GaussianMixture, MLPNet, analytic_teacher, fit_denoiser


def reward_right(x, cond=None):
    """R(x) = x_1: pushes mass to the right half of the ring."""
    return x[:, 0]


def parse():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--steps", type=int, default=200, help="total iterations (phase 1 + phase 2)")
    p.add_argument("--phase2-at", type=int, default=None, help="iteration where RMMD starts (default: steps/2)")
    p.add_argument("--batch", type=int, default=128, help="rows per rank per iteration")
    p.add_argument("--accum", type=int, default=1, help="micro-batches per iteration (gradient accumulation)")
    p.add_argument("--num-steps", type=int, default=4, help="K, student sampling steps")
    p.add_argument("--reward-weight", type=float, default=0.05)
    p.add_argument("--fit-steps", type=int, default=300, help="teacher regression steps of the initial MLP")
    p.add_argument("--fsdp", action="store_true", help="FSDP2 (fully_shard) instead of DDP")
    p.add_argument("--bf16", action="store_true", help="bf16 autocast for the networks (fp32 master weights)")
    p.add_argument("--ckpt", default=None, help="checkpoint path (DDP: a file; FSDP: a directory)")
    p.add_argument("--save-every", type=int, default=50)
    p.add_argument("--log-every", type=int, default=25)
    p.add_argument("--seed", type=int, default=0)
    a = p.parse_args()
    if a.accum < 1 or a.batch % a.accum:
        p.error(f"--accum must be >= 1 and divide --batch ({a.batch}), got {a.accum}")
    return a


def main():
    a = parse()
    cuda = torch.cuda.is_available()
    dist.init_process_group("nccl" if cuda else "gloo")
    rank, world = dist.get_rank(), dist.get_world_size()
    device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", 0))) if cuda else torch.device("cpu")
    if cuda:
        torch.cuda.set_device(device)
    say = print if rank == 0 else (lambda *x, **k: None)

    # --- the model: every rank builds the same initial student (same seed), then wraps it
    torch.manual_seed(a.seed)
    mix = GaussianMixture.ring()
    teacher = analytic_teacher(mix, "vp_cosine")
    init = Denoiser(MLPNet(2, hidden=128, depth=3), teacher.schedule, prediction="x0")
    g_fit = torch.Generator().manual_seed(a.seed)
    fit_denoiser(init, teacher, lambda n: mix.sample(n, g_fit), steps=a.fit_steps, generator=g_fit)
    init = init.to(device)
    cfg = RMMDConfig(num_steps=a.num_steps, lr=3e-4)
    engine = RMMD(teacher, init, init.trainable_copy(), config=cfg, sample_shape=(2,), reward=reward_right,
                  seed=rank_seed(a.seed), autocast=torch.bfloat16 if a.bf16 else None)
    if a.fsdp:
        shard_fsdp(engine)
    else:
        wrap_ddp(engine, device_ids=[device.index] if cuda else None)

    if a.ckpt and os.path.exists(a.ckpt):
        load_distributed(engine, a.ckpt)
        say(f"resumed from {a.ckpt} at iteration {engine.iteration} (phase {engine.phase})")
    phase2_at = a.steps // 2 if a.phase2_at is None else a.phase2_at
    say(f"world {world}, {'FSDP2' if a.fsdp else 'DDP'}, bf16={a.bf16}, global batch {a.batch * world}, "
        f"accum {a.accum}, K={a.num_steps}")
    t0 = time.perf_counter()
    while engine.iteration < a.steps:
        i = engine.iteration
        if i == phase2_at and engine.phase == "mm":
            engine.start_phase2(reward_weight=a.reward_weight)
            say(f"iteration {i}: phase 2 (RMMD, reward weight {a.reward_weight})")
        # this rank's data shard, a function of (seed, rank, iteration) so a resumed run sees the same data
        g_data = torch.Generator().manual_seed((a.seed * 1_000_003 + rank) * 1_000_033 + i)
        data = mix.sample(a.batch, g_data).to(device)
        if engine.phase == "mm":
            mbs = [{"data": d} for d in data.chunk(a.accum)]          # phase 1: off-policy from data
        else:
            mbs = [{"batch_size": a.batch // a.accum}] * a.accum      # phase 2: on-policy rollouts
        m = accumulate_step(engine, mbs) if a.accum > 1 else step(engine, **mbs[0])
        m = reduce_metrics(m)
        if engine.iteration % a.log_every == 0 or engine.iteration == a.steps:
            say(f"it {engine.iteration:5d}  student_loss {m['student_loss']:+.4f}  aux_loss {m['aux_loss']:.4f}  "
                f"reward {m['reward_mean']:+.3f}  grad_norm {m['grad_norm']:.3f}  skipped {m['skipped']:.0f}")
        if a.ckpt and (engine.iteration % a.save_every == 0 or engine.iteration == a.steps):
            save_distributed(engine, a.ckpt)
    # every rank takes part (FSDP all-gathers inside the forward); rank 0 reports
    ge = torch.Generator(device=device).manual_seed(a.seed + 1)
    x = sample(engine.ema, (2000, 2), num_steps=a.num_steps, generator=ge).x0.float().cpu()
    sw = sliced_wasserstein(x, mix.sample(2000, torch.Generator().manual_seed(1)),
                            generator=torch.Generator().manual_seed(2))
    say(f"done: {engine.iteration} iterations in {time.perf_counter() - t0:.1f}s; EMA student: "
        f"sliced W to teacher {sw:.4f}, mean reward {float(reward_right(x).mean()):+.3f} (NFE {a.num_steps})")
    dist.destroy_process_group()
    # End the process here: letting Python free the DDP Reducer at exit can deadlock in torch's gloo
    # teardown (~ProcessGroupGloo joins its worker thread while holding the GIL; the worker waits for
    # the GIL to free a Python object held by its last AsyncWork). Checkpoints are written by now.
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)


if __name__ == "__main__":
    main()
