"""Train the shapes task's UNet teacher (v-prediction, VP cosine) and save it as a checkpoint.

Reproduce the committed checkpoint (about 5-10 CPU minutes on 2 shared cores):

    python python/train_image_teacher.py --out rmmd_core/assets/shapes_teacher.pt

The defaults below are the committed checkpoint's settings; the command also records the file's
SHA-256 in rmmd_core/assets/MANIFEST.json. CPU float results can differ in the last bits across
machines and thread counts, so a rebuild is equivalent, not bit-identical.
"""
import argparse
import sys

from rmmd_core.tasks.shapes import save_teacher, train_teacher


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", default="rmmd_core/assets/shapes_teacher.pt")
    p.add_argument("--steps", type=int, default=2500)
    p.add_argument("--batch", type=int, default=64)
    p.add_argument("--lr", type=float, default=2e-3)
    p.add_argument("--ch", type=int, default=16)
    p.add_argument("--seed", type=int, default=0)
    a = p.parse_args(argv)
    net, meta = train_teacher(steps=a.steps, batch=a.batch, lr=a.lr, ch=a.ch, seed=a.seed, progress=True)
    cmd = "python python/train_image_teacher.py " + " ".join(sys.argv[1:] if argv is None else argv)
    digest = save_teacher(net, meta, a.out, cmd.strip())
    print(f"saved {a.out} (sha256 {digest[:12]}…): {meta}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
