"""The shapes task's classifier, its feature space (for the Fréchet distance) and its reward.

* :class:`ShapeClassifier`: three conv stages, global average pooling to a ``feat_dim`` feature vector,
  a linear head over the 8 classes. Images ``(B, 3, 16, 16)`` in [-1, 1].
* :func:`frechet_distance`: ``FD = ||mu_1 - mu_2||^2 + Tr(S_1 + S_2 - 2 (S_1^{1/2} S_2 S_1^{1/2})^{1/2})``
  between Gaussian fits of two feature sets (the FID formula in this classifier's feature space).
* :class:`ClassLogProbReward`: ``R(x) = log p_classifier(target | x)``, differentiable (our stand-in for
  the paper's Inception-score and CLIP rewards).
"""
from __future__ import annotations

import torch
from torch import nn

from ..rewards import Reward


class ShapeClassifier(nn.Module):
    """``forward(x) -> logits (B, num_classes)``; ``features(x) -> (B, feat_dim)`` (pooled, pre-head)."""

    def __init__(self, num_classes: int = 8, width: int = 16, feat_dim: int = 64):
        super().__init__()
        self.config = dict(num_classes=num_classes, width=width, feat_dim=feat_dim)
        w = width
        self.body = nn.Sequential(
            nn.Conv2d(3, w, 3, padding=1), nn.GroupNorm(8, w), nn.SiLU(),
            nn.Conv2d(w, w, 3, padding=1), nn.GroupNorm(8, w), nn.SiLU(), nn.AvgPool2d(2),        # 8x8
            nn.Conv2d(w, 2 * w, 3, padding=1), nn.GroupNorm(8, 2 * w), nn.SiLU(), nn.AvgPool2d(2),  # 4x4
            nn.Conv2d(2 * w, feat_dim, 3, padding=1), nn.GroupNorm(8, feat_dim), nn.SiLU(),
        )
        self.head = nn.Linear(feat_dim, num_classes)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        return self.body(x).mean((2, 3))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x))


def _sqrtm_psd(a: torch.Tensor) -> torch.Tensor:
    w, v = torch.linalg.eigh((a + a.T) / 2)
    return (v * w.clamp_min(0).sqrt()) @ v.T


def frechet_distance(f1: torch.Tensor, f2: torch.Tensor) -> float:
    """Fréchet distance between Gaussian fits of features ``f1 (N, F)`` and ``f2 (M, F)`` (float64).

    The cross term uses the symmetric form ``Tr((S_1^{1/2} S_2 S_1^{1/2})^{1/2})``, which equals
    ``Tr((S_1 S_2)^{1/2})`` and stays real and stable via two symmetric eigendecompositions.
    """
    if f1.dim() != 2 or f2.dim() != 2 or f1.shape[1] != f2.shape[1]:
        raise ValueError(f"features must be (N, F) and (M, F), got {tuple(f1.shape)}, {tuple(f2.shape)}")
    if f1.shape[0] < 2 or f2.shape[0] < 2:
        raise ValueError("need at least 2 samples per set for a covariance")
    a, b = f1.double(), f2.double()
    mu1, mu2 = a.mean(0), b.mean(0)
    s1, s2 = torch.cov(a.T), torch.cov(b.T)
    r1 = _sqrtm_psd(s1)
    cross = torch.linalg.eigvalsh(r1 @ s2 @ r1).clamp_min(0).sqrt().sum()
    return float(((mu1 - mu2) ** 2).sum() + s1.trace() + s2.trace() - 2 * cross)


class ClassLogProbReward(Reward):
    """``R(x) = log softmax(classifier(x))[target]`` per sample, ``x (B, 3, 16, 16)``; gradient by autograd.

    The classifier is frozen (eval mode, no parameter gradients).
    """

    def __init__(self, classifier: ShapeClassifier, target: int):
        n = classifier.config["num_classes"]
        if not 0 <= int(target) < n:
            raise ValueError(f"target class must be in [0, {n}), got {target}")
        self.classifier = classifier.requires_grad_(False).eval()
        self.target = int(target)

    def value(self, x0: torch.Tensor) -> torch.Tensor:
        return torch.log_softmax(self.classifier(x0), 1)[:, self.target]

    def __call__(self, x0, cond=None):
        return self.value(x0)

    def value_and_grad(self, x0, cond=None):
        x = x0.detach().requires_grad_(True)
        with torch.enable_grad():
            v = self.value(x)
            (g,) = torch.autograd.grad(v.sum(), x)
        return v.detach(), g
