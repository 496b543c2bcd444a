"""Procedural 16x16 RGB "shapes" dataset: 8 classes of coloured shapes and textures, made from a seed.

Every image is ``bg * (1 - m) + fg * m`` with a soft mask ``m in [0, 1]`` whose geometry defines the
class, and foreground / background colours drawn independently of the class (so the class is carried
by shape alone, and colour-based rewards such as grayscale are orthogonal to it). Values are in
``[-1, 1]``. Generation is vectorised and deterministic given the seed (CPU generator, float64 maths).

Classes (index: name): 0 disc, 1 square, 2 triangle, 3 ring, 4 plus, 5 h-stripes, 6 checker, 7 diagonal.
"""
from __future__ import annotations

import math

import torch

CLASSES = ("disc", "square", "triangle", "ring", "plus", "h-stripes", "checker", "diagonal")
SIZE = 16
# softness of the mask edge in pixels: sigmoid(signed_distance / EDGE); keeps shapes anti-aliased
EDGE = 0.35


def _soft(signed_distance: torch.Tensor) -> torch.Tensor:
    return torch.sigmoid(signed_distance / EDGE)


def _masks(labels: torch.Tensor, g: torch.Generator) -> torch.Tensor:
    """Soft masks ``(N, 1, S, S)`` in [0, 1] for class ``labels (N,)``; geometry drawn from ``g``."""
    n = labels.shape[0]
    u = lambda *shape: torch.rand(*shape, generator=g, dtype=torch.float64)  # noqa: E731
    cx, cy = 4.5 + 6.0 * u(n, 1, 1), 4.5 + 6.0 * u(n, 1, 1)   # centre, in pixels
    r = 3.0 + 2.5 * u(n, 1, 1)                               # size
    period = 3.0 + 3.0 * u(n, 1, 1)                          # texture period
    phase = 2 * math.pi * u(n, 1, 1)
    ax = torch.arange(SIZE, dtype=torch.float64) + 0.5
    y, x = ax.view(1, SIZE, 1), ax.view(1, 1, SIZE)
    dx, dy = x - cx, y - cy
    dist = (dx ** 2 + dy ** 2).sqrt()
    tri_w = (dy + r) * 0.6                                    # half-width grows downwards from the apex
    shapes = [
        _soft(r - dist),                                                          # disc
        _soft(0.85 * r - torch.maximum(dx.abs(), dy.abs())),                      # square
        _soft(torch.minimum(torch.minimum(tri_w - dx.abs(), dy + r), 0.8 * r - dy)),  # triangle
        _soft(torch.minimum(r - dist, dist - 0.55 * r)),                          # ring
        _soft(torch.minimum(torch.maximum(1.3 - dx.abs(), 1.3 - dy.abs()),
                            r - torch.maximum(dx.abs(), dy.abs()))),              # plus
        _soft(torch.sin(2 * math.pi * y / period + phase).expand(n, SIZE, SIZE) * 1.5),  # h-stripes
        _soft(torch.sin(math.pi * x / (period / 2)) * torch.sin(math.pi * y / (period / 2)) * 2.0),  # checker
        _soft(torch.sin(2 * math.pi * (x + y) / (1.4 * period) + phase) * 1.5),   # diagonal stripes
    ]
    stack = torch.stack([s.expand(n, SIZE, SIZE) for s in shapes], 1)           # (N, classes, S, S)
    return stack.gather(1, labels.view(n, 1, 1, 1).expand(n, 1, SIZE, SIZE))


def _colours(n: int, g: torch.Generator, bright: bool) -> torch.Tensor:
    """Random RGB colours ``(N, 3, 1, 1)`` in [0, 1]: saturated bright foregrounds, dark backgrounds."""
    hue = torch.rand(n, generator=g, dtype=torch.float64) * 6.0
    k = (torch.tensor([5.0, 3.0, 1.0], dtype=torch.float64).view(1, 3) + hue.view(n, 1)) % 6.0
    rgb = 1.0 - torch.clamp(torch.minimum(k, 4.0 - k), 0.0, 1.0)             # pure hue (HSV, s = v = 1)
    sat = 0.5 + 0.5 * torch.rand(n, 1, generator=g, dtype=torch.float64)
    val = (0.75 + 0.25 * torch.rand(n, 1, generator=g, dtype=torch.float64)) if bright else \
          (0.05 + 0.3 * torch.rand(n, 1, generator=g, dtype=torch.float64))
    return (val * (1.0 - sat * (1.0 - rgb))).view(n, 3, 1, 1)


def make_shapes(n: int, seed: int, *, labels: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """``n`` images ``(n, 3, 16, 16)`` float32 in [-1, 1] and labels ``(n,)`` int64, deterministic in ``seed``.

    ``labels`` fixes the classes (else uniform over the 8 classes).
    """
    if n < 1:
        raise ValueError(f"n must be >= 1, got {n}")
    g = torch.Generator().manual_seed(int(seed))
    if labels is None:
        labels = torch.randint(0, len(CLASSES), (n,), generator=g)
    elif labels.shape != (n,):
        raise ValueError(f"labels must have shape ({n},), got {tuple(labels.shape)}")
    m = _masks(labels, g)
    fg, bg = _colours(n, g, bright=True), _colours(n, g, bright=False)
    img = bg * (1 - m) + fg * m
    return (img * 2 - 1).float(), labels.long()


# Disjoint seeds for the splits, so held-out evaluation data never overlaps training data.
SPLIT_SEEDS = {"train": 1000, "heldout": 2000, "classifier": 3000}


def split(name: str, n: int) -> tuple[torch.Tensor, torch.Tensor]:
    """A named split (``'train' | 'heldout' | 'classifier'``) of ``n`` images (prefix-stable in n is not
    guaranteed; always request the same n for the same use)."""
    if name not in SPLIT_SEEDS:
        raise ValueError(f"unknown split {name!r}; valid: {sorted(SPLIT_SEEDS)}")
    return make_shapes(n, SPLIT_SEEDS[name])
