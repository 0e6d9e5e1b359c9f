"""The adapters that turn images into the feature stack f_c fed to a backbone H (spec section 2).

Hookable names inside a :class:`ContrastAdapter` (also listed by :meth:`ContrastAdapter.feature_names`), for
the pair of sources (i, i+1 mod n), i = 0..n-1 (0-based, in the order of the task's sources):

- ``pairs.{i}.gate_a``: z_a = sigmoid(conv3x3(F)), (B, nf, H, W): what of f_i is passed on;
- ``pairs.{i}.gate_b``: z_b = sigmoid(conv3x3(F)), (B, nf, H, W): the leak between f'_i and f_{i+1};
- ``pairs.{i}.fuse``: the fused map z_b * f'_i + (1 - z_b) * f_{i+1}, (B, nf, H, W).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from mudiff.models.layers import AdaGN, GroupNorm, conv3x3, num_groups


class FeatureMapper(nn.Module):
    """phi: per input image conv3x3(1 -> nf), GroupNorm, SiLU, conv3x3(nf -> nf); the maps concatenated.

    images: (B, k, H, W) [, style: (B, style_dim)] -> (B, k * nf, H, W), image i in channels [i*nf, (i+1)*nf).
    The k per-image blocks run as one grouped convolution (groups = k): the same maths as k separate blocks
    (GroupNorm groups never straddle two images) in one kernel launch. With ``style_dim`` the GroupNorm is
    AdaGN modulated by a style vector (phi2: the sources re-expressed in the style f_s of the predicted target).
    """

    def __init__(self, num_images: int, channels: int, style_dim: int | None = None):
        super().__init__()
        width, groups = num_images * channels, num_images * num_groups(channels)
        self.style_dim = style_dim
        self.conv0 = conv3x3(num_images, width, groups=num_images)
        self.norm = GroupNorm(groups, width) if style_dim is None else AdaGN(width, style_dim, groups)
        self.conv1 = conv3x3(width, width, groups=num_images)

    def forward(self, images: torch.Tensor, style: torch.Tensor | None = None) -> torch.Tensor:
        h = self.conv0(images)
        h = self.norm(h) if self.style_dim is None else self.norm(h, style)
        return self.conv1(F.silu(h))


class TargetAdapter(nn.Module):
    """rho: x^{p1} (B, 1, H, W) -> f_s (B, style_dim): a conv block, global average pooling, a linear layer."""

    def __init__(self, channels: int, style_dim: int):
        super().__init__()
        self.block = FeatureMapper(1, channels)
        self.fc = nn.Linear(channels, style_dim)

    def forward(self, x_p1: torch.Tensor) -> torch.Tensor:
        return self.fc(self.block(x_p1).mean(dim=(2, 3)))


class LeakGate(nn.Sequential):
    """z = sigmoid(conv3x3(F)): F (B, n*nf, H, W) -> gate (B, nf, H, W) in (0, 1)."""

    def __init__(self, in_ch: int, out_ch: int):
        super().__init__(conv3x3(in_ch, out_ch), nn.Sigmoid())


class GatedSum(nn.Module):
    """gate * a + (1 - gate) * b, a module of its own so that a forward hook sees the fused map."""

    def forward(self, gate: torch.Tensor, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        return gate * a + (1 - gate) * b


class ContrastPair(nn.Module):
    """Leak-gated fusion of source i with source j: fused_ij = z_b * conv3x3(z_a * f_i) + (1 - z_b) * f_j."""

    def __init__(self, num_sources: int, channels: int):
        super().__init__()
        self.gate_a = LeakGate(num_sources * channels, channels)
        self.gate_b = LeakGate(num_sources * channels, channels)
        self.refine = conv3x3(channels, channels)
        self.fuse = GatedSum()

    def forward(self, feats: torch.Tensor, f_i: torch.Tensor, f_j: torch.Tensor) -> torch.Tensor:
        """feats: F (B, n*nf, H, W); f_i, f_j: (B, nf, H, W) -> (B, nf, H, W)."""
        return self.fuse(self.gate_b(feats), self.refine(self.gate_a(feats) * f_i), f_j)


class ContrastAdapter(nn.Module):
    """tau: leak-gated fusion of each cyclic pair of adapted sources (i, i+1 mod n).

    feats: (B, n*nf, H, W) (the n source maps, concatenated) -> (B, n*nf, H, W), the n fused maps in order.
    With a single source there is no pair and tau is the identity.
    """

    def __init__(self, num_sources: int, channels: int):
        super().__init__()
        self.channels = channels
        self.pairs = nn.ModuleList(ContrastPair(num_sources, channels) for _ in range(num_sources)
                                   if num_sources > 1)

    def feature_names(self) -> list[str]:
        """Names of the hookable gate and fused-map modules, relative to this adapter."""
        return [f"pairs.{i}.{part}" for i in range(len(self.pairs)) for part in ("gate_a", "gate_b", "fuse")]

    def forward(self, feats: torch.Tensor) -> torch.Tensor:
        if not self.pairs:
            return feats
        f = feats.split(self.channels, dim=1)
        n = len(f)
        return torch.cat([pair(feats, f[i], f[(i + 1) % n]) for i, pair in enumerate(self.pairs)], dim=1)
