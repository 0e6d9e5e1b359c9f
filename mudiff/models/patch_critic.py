"""The non-diffusive critic D_nd of SynDiff's cycle form: a 70x70 PatchGAN on one image of its own domain.

4x4 convs: nf (stride 2, no norm), 2nf, 4nf (stride 2), 8nf (stride 1), each but the first followed by
InstanceNorm (no affine) and LeakyReLU 0.2; a 4x4 conv to one logit per patch; no sigmoid (SYNDIFF_CYCLE.md §1).
"""
from __future__ import annotations

import torch
from torch import nn

MIN_SIZE = 32
"""Smallest image side: three halvings and two 4x4 convs must leave a patch map of at least 2x2."""


class PatchCritic(nn.Module):
    """D_nd: image (B, in_channels, H, W) -> patch logits (B, 1, H/8 - 2, W/8 - 2)."""

    def __init__(self, channels: int = 64, in_channels: int = 1):
        super().__init__()
        layers: list[nn.Module] = []
        width_in = in_channels
        for i, (mult, stride) in enumerate([(1, 2), (2, 2), (4, 2), (8, 1)]):
            width = channels * mult
            layers.append(nn.Conv2d(width_in, width, 4, stride, 1))
            if i > 0:
                layers.append(nn.InstanceNorm2d(width, affine=False))
            layers.append(nn.LeakyReLU(0.2))
            width_in = width
        layers.append(nn.Conv2d(width_in, 1, 4, 1, 1))
        self.net = nn.Sequential(*layers)
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.normal_(m.weight, 0.0, 0.02)
                nn.init.zeros_(m.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if min(x.shape[-2:]) < MIN_SIZE:
            raise ValueError(f"the PatchGAN critic needs images of at least {MIN_SIZE} pixels a side, got "
                             f"{tuple(x.shape[-2:])}")
        return self.net(x)


__all__ = ["PatchCritic", "MIN_SIZE"]
