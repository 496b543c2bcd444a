"""Subprocess side of tests/test_checkpoint.py: builds one engine the same way in every process.

    python _ckpt_worker.py train  STEPS [--save-at K CKPT] [--load CKPT] --final OUT
    python _ckpt_worker.py killme CKPT     # saves CKPT, then stalls half-way through a second save

The schedule is a function of the absolute iteration only, so a resumed run takes the same path:
iterations 0-2 phase-1 MM from data, 3 data-free; phase 2 (reward, anchor) from iteration 4 on,
alternating on-policy and off-policy. The student has dropout, so the global torch RNG matters too.
"""
import argparse
import io
import sys
import time

import torch

import rmmd_core
from rmmd_core import RMMD, Denoiser, RMMDConfig, save_checkpoint, load_checkpoint, step
from rmmd_core.toy import MLPNet

PHASE2_AT = 4


def build():
    torch.manual_seed(0)
    teacher = Denoiser(MLPNet(2, hidden=16, depth=2, dropout=0.1), "vp_cosine", prediction="x0")
    cfg = RMMDConfig(num_steps=2, ema_decay=0.9, lr=1e-3)
    return RMMD(teacher, config=cfg, sample_shape=(2,), reward=lambda x, c=None: x[:, 0], seed=7)


def one_iteration(eng):
    it = eng.iteration
    if it == PHASE2_AT and eng.phase == "mm":
        eng.start_phase2(reward_weight=0.3)
    data = torch.randn(8, 2, generator=torch.Generator().manual_seed(1000 + it))  # the user's data loader
    if it < 3 or (it >= PHASE2_AT and it % 2):
        step(eng, data=data)
    else:
        step(eng, batch_size=8)


def main(argv):
    eng = build()
    if argv[0] == "killme":
        ckpt = argv[1]
        for _ in range(2):
            one_iteration(eng)
        save_checkpoint(eng, ckpt)
        one_iteration(eng)
        real_save = torch.save

        def stalling_save(obj, f):  # write half the bytes, then hang until SIGKILLed
            buf = io.BytesIO()
            real_save(obj, buf)
            data = buf.getvalue()
            f.write(data[: len(data) // 2])
            f.flush()
            print("midwrite", flush=True)
            time.sleep(600)

        rmmd_core.checkpoint.torch.save = stalling_save
        save_checkpoint(eng, ckpt)
        return
    assert argv[0] == "train", argv
    p = argparse.ArgumentParser()
    p.add_argument("steps", type=int)
    p.add_argument("--save-at", nargs=2)
    p.add_argument("--load")
    p.add_argument("--final", required=True)
    a = p.parse_args(argv[1:])
    if a.load:
        load_checkpoint(eng, a.load)
    while eng.iteration < a.steps:
        one_iteration(eng)
        if a.save_at and eng.iteration == int(a.save_at[0]):
            save_checkpoint(eng, a.save_at[1])
    save_checkpoint(eng, a.final)


if __name__ == "__main__":
    main(sys.argv[1:])
