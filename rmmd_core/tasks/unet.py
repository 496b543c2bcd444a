"""A compact UNet for 16x16 images (the shapes task's teacher, students and auxiliaries).

Layout (C = ``ch``): 16x16 @ C -> 8x8 @ 2C -> 4x4 @ 2C (middle) -> 8x8 @ 2C -> 16x16 @ C, one residual
block per level on the way down and up, skip connections by concatenation, time conditioning by a
per-channel scale and shift (FiLM) in every block. Called as ``net(z, t)`` with ``z (B, 3, 16, 16)`` and
continuous ``t (B,)``; returns a tensor of z's shape (what it predicts is the Denoiser's
``prediction``; the shapes task uses v-prediction, which stays well-conditioned at both ends of t).
"""
from __future__ import annotations

import math

import torch
from torch import nn


def _norm(c: int) -> nn.GroupNorm:
    return nn.GroupNorm(min(8, c), c)


class ResBlock(nn.Module):
    """``x + conv(act(norm(conv(act(norm(x))) * (1 + scale) + shift)))`` with a 1x1 skip when channels change."""

    def __init__(self, c_in: int, c_out: int, emb: int, dropout: float = 0.0):
        super().__init__()
        self.n1, self.c1 = _norm(c_in), nn.Conv2d(c_in, c_out, 3, padding=1)
        self.film = nn.Linear(emb, 2 * c_out)
        self.n2, self.c2 = _norm(c_out), nn.Conv2d(c_out, c_out, 3, padding=1)
        self.drop = nn.Dropout(dropout) if dropout > 0 else nn.Identity()
        self.skip = nn.Conv2d(c_in, c_out, 1) if c_in != c_out else nn.Identity()
        nn.init.zeros_(self.c2.weight)  # each block starts as its skip path: stable early training
        nn.init.zeros_(self.c2.bias)

    def forward(self, x: torch.Tensor, e: torch.Tensor) -> torch.Tensor:
        h = self.c1(nn.functional.silu(self.n1(x)))
        scale, shift = self.film(e)[:, :, None, None].chunk(2, 1)
        h = nn.functional.silu(self.n2(h) * (1 + scale) + shift)
        return self.skip(x) + self.c2(self.drop(h))


class TinyUNet(nn.Module):
    """UNet x-/eps-/v-predictor for ``(B, channels, 16, 16)`` inputs and continuous ``t in [0, 1]``.

    Args: channels (image channels), ch (base width C), n_freq (Fourier features of t), dropout.
    """

    def __init__(self, channels: int = 3, ch: int = 32, n_freq: int = 16, dropout: float = 0.0):
        super().__init__()
        self.config = dict(channels=channels, ch=ch, n_freq=n_freq, dropout=dropout)
        emb = 4 * ch
        self.register_buffer("freqs", torch.exp(torch.linspace(0, math.log(1000.0), n_freq)), persistent=False)
        self.temb = nn.Sequential(nn.Linear(2 * n_freq, emb), nn.SiLU(), nn.Linear(emb, emb))
        c2 = 2 * ch
        self.inp = nn.Conv2d(channels, ch, 3, padding=1)
        self.d1 = ResBlock(ch, ch, emb, dropout)
        self.down1 = nn.Conv2d(ch, c2, 3, stride=2, padding=1)
        self.d2 = ResBlock(c2, c2, emb, dropout)
        self.down2 = nn.Conv2d(c2, c2, 3, stride=2, padding=1)
        self.mid = ResBlock(c2, c2, emb, dropout)
        self.up2 = nn.Conv2d(c2, c2, 3, padding=1)
        self.u2 = ResBlock(2 * c2, c2, emb, dropout)
        self.up1 = nn.Conv2d(c2, ch, 3, padding=1)
        self.u1 = ResBlock(2 * ch, ch, emb, dropout)
        self.out = nn.Sequential(_norm(ch), nn.SiLU(), nn.Conv2d(ch, channels, 3, padding=1))

    def forward(self, z: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        f = t.to(z.dtype).view(-1, 1) * self.freqs.to(z.dtype)
        e = self.temb(torch.cat([f.sin(), f.cos()], 1))
        h1 = self.d1(self.inp(z), e)                                   # 16x16
        h2 = self.d2(self.down1(h1), e)                                # 8x8
        m = self.mid(self.down2(h2), e)                                # 4x4
        u = self.up2(nn.functional.interpolate(m, scale_factor=2.0, mode="nearest"))
        u = self.u2(torch.cat([u, h2], 1), e)                          # 8x8
        u = self.up1(nn.functional.interpolate(u, scale_factor=2.0, mode="nearest"))
        u = self.u1(torch.cat([u, h1], 1), e)                          # 16x16
        return self.out(u)
