"""Train the shapes task's classifier (Fréchet-distance features and the neural reward) and save it.

Reproduce the committed checkpoint (about 1 CPU minute on 2 cores):

    python python/train_classifier.py --out rmmd_core/assets/shapes_classifier.pt

Records the file's SHA-256 in rmmd_core/assets/MANIFEST.json and prints the held-out accuracy.
"""
import argparse
import sys

from rmmd_core.tasks.shapes import save_classifier, train_classifier


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", default="rmmd_core/assets/shapes_classifier.pt")
    p.add_argument("--steps", type=int, default=800)
    p.add_argument("--batch", type=int, default=64)
    p.add_argument("--lr", type=float, default=2e-3)
    p.add_argument("--seed", type=int, default=0)
    a = p.parse_args(argv)
    net, meta = train_classifier(steps=a.steps, batch=a.batch, lr=a.lr, seed=a.seed, progress=True)
    cmd = "python python/train_classifier.py " + " ".join(sys.argv[1:] if argv is None else argv)
    digest = save_classifier(net, meta, a.out, cmd.strip())
    print(f"saved {a.out} (sha256 {digest[:12]}…): {meta}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
