"""The non-diffusive translator G_nd of SynDiff's cycle form: the CycleGAN ResNet generator (SYNDIFF_CYCLE.md §1).

Reflect-padded 7x7 conv, two stride-2 convs, ``blocks`` residual blocks at 4 * ngf, two transposed convs, a 7x7
conv and tanh; InstanceNorm without affine parameters, weights drawn from N(0, 0.02) as in CycleGAN.
"""
from __future__ import annotations

import torch
from torch import nn


def _norm_act(channels: int) -> list[nn.Module]:
    return [nn.InstanceNorm2d(channels, affine=False), nn.ReLU(inplace=True)]


class ResidualBlock(nn.Module):
    """x + [reflect pad, conv3x3, IN, ReLU, reflect pad, conv3x3, IN](x): (B, C, H, W) -> (B, C, H, W)."""

    def __init__(self, channels: int):
        super().__init__()
        self.body = nn.Sequential(nn.ReflectionPad2d(1), nn.Conv2d(channels, channels, 3), *_norm_act(channels),
                                  nn.ReflectionPad2d(1), nn.Conv2d(channels, channels, 3),
                                  nn.InstanceNorm2d(channels, affine=False))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.body(x)


class ResnetTranslator(nn.Module):
    """G_nd: an image of one domain (B, 1, H, W) in [-1, 1] -> the other domain's (B, 1, H, W) in [-1, 1].

    H and W must be multiples of 4 (two stride-2 convs, undone exactly by the transposed convs).
    """

    def __init__(self, channels: int = 64, blocks: int = 6, in_channels: int = 1, out_channels: int = 1):
        super().__init__()
        layers: list[nn.Module] = [nn.ReflectionPad2d(3), nn.Conv2d(in_channels, channels, 7), *_norm_act(channels)]
        width = channels
        for _ in range(2):
            layers += [nn.Conv2d(width, 2 * width, 3, stride=2, padding=1), *_norm_act(2 * width)]
            width *= 2
        layers += [ResidualBlock(width) for _ in range(blocks)]
        for _ in range(2):
            layers += [nn.ConvTranspose2d(width, width // 2, 3, stride=2, padding=1, output_padding=1),
                       *_norm_act(width // 2)]
            width //= 2
        layers += [nn.ReflectionPad2d(3), nn.Conv2d(width, out_channels, 7), nn.Tanh()]
        self.net = nn.Sequential(*layers)
        for m in self.modules():
            if isinstance(m, (nn.Conv2d, nn.ConvTranspose2d)):
                nn.init.normal_(m.weight, 0.0, 0.02)
                nn.init.zeros_(m.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.shape[-2] % 4 or x.shape[-1] % 4:
            raise ValueError(f"the ResNet translator needs H and W divisible by 4, got {tuple(x.shape[-2:])}")
        return self.net(x)


__all__ = ["ResnetTranslator", "ResidualBlock"]
