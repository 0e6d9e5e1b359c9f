"""The shared time-conditioned critic psi with its attentive mask head (spec section 3).

Hookable names: ``blocks.{k}`` (k = 0..5, the down-sampling residual blocks), ``mask_head`` (the mask logits,
(B, 1, H/8, W/8)), ``final_conv``.

Small images: the six blocks halve the resolution only while the result stays at least
``MIN_RESOLUTION`` pixels wide; the remaining blocks keep the resolution (they still add depth and time). At
256 x 256 all six halve (down to 4 x 4); at 32 x 32 the last two run at 2 x 2. The first three always halve
(``ModelConfig`` requires image_size >= 16), so the mask is always read after block 2, at 1/8 of the input.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from mudiff.config import ModelConfig
from mudiff.models.double_backward import Conv2d
from mudiff.models.layers import SKIP_SCALE, FIRDownsample, TimeEmbedding, conv3x3

WIDTH_MULT = (2, 4, 8, 8, 8, 8, 8)
"""Widths of the start conv and the six blocks, in units of the critic's nf (DDGAN's Discriminator_large)."""
MASK_BLOCK = 2
"""Index of the block whose output (8nf at 1/8 resolution) feeds the mask head."""
MIN_RESOLUTION = 2
STDDEV_GROUP = 4


def minibatch_stddev(h: torch.Tensor, max_group: int = STDDEV_GROUP) -> torch.Tensor:
    """Append the mean per-group feature standard deviation as one channel: (B, C, H, W) -> (B, C+1, H, W).

    Group size = the largest divisor of B not above ``max_group`` (so every B works, B = 1 included, where the
    feature is ~0); group members are images k, k + B/g, k + 2B/g, ...
    """
    b, _, height, width = h.shape
    g = max(d for d in range(1, min(b, max_group) + 1) if b % d == 0)
    y = h.float().reshape(g, b // g, *h.shape[1:])
    std = torch.sqrt(y.var(dim=0, unbiased=False) + 1e-8).mean(dim=(1, 2, 3))  # (B/g,)
    std = std.reshape(1, b // g, 1, 1, 1).expand(g, -1, 1, height, width).reshape(b, 1, height, width)
    return torch.cat([h, std.to(h.dtype)], dim=1)


class CriticBlock(nn.Module):
    """DDGAN DownConvBlock: LeakyReLU, conv3x3, + time bias, LeakyReLU, [FIR down], conv3x3; 1x1 skip.

    x: (B, in_ch, H, W), temb: (B, temb_dim) (activated) -> (B, out_ch, H/2, W/2) (or H, W if ``down=False``).
    """

    def __init__(self, in_ch: int, out_ch: int, temb_dim: int, down: bool = True):
        super().__init__()
        self.conv0 = conv3x3(in_ch, out_ch)
        self.temb = nn.Linear(temb_dim, out_ch)
        self.resample = FIRDownsample() if down else nn.Identity()
        self.conv1 = conv3x3(out_ch, out_ch)
        self.skip = Conv2d(in_ch, out_ch, 1, bias=False)

    def forward(self, x: torch.Tensor, temb: torch.Tensor) -> torch.Tensor:
        h = self.conv0(F.leaky_relu(x, 0.2)) + self.temb(temb)[:, :, None, None]
        h = self.conv1(self.resample(F.leaky_relu(h, 0.2)))
        return (h + self.skip(self.resample(x))) * SKIP_SCALE


class Critic(nn.Module):
    """psi: (x_t, x_{t+1} [, sources], t) -> (real/fake logit per image (B,), mask logits (B, 1, H/8, W/8)).

    x_t is the candidate (real or a posterior sample of a generator's prediction), x_{t+1} its noisier input.
    """

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        cfg.validate()
        nf = cfg.critic_channels
        widths = [nf * m for m in WIDTH_MULT]
        in_ch = 2 + (cfg.num_sources if cfg.critic_sees_sources else 0)
        self.sees_sources = cfg.critic_sees_sources
        self.time_embed = TimeEmbedding(widths[0], widths[0], act=nn.LeakyReLU(0.2))
        self.input_conv = Conv2d(in_ch, widths[0], 1)
        self.blocks = nn.ModuleList()
        size = cfg.image_size
        for c_in, c_out in zip(widths[:-1], widths[1:]):
            down = size // 2 >= MIN_RESOLUTION
            size = size // 2 if down else size
            self.blocks.append(CriticBlock(c_in, c_out, widths[0], down=down))
        self.mask_head = Conv2d(widths[MASK_BLOCK + 1], 1, 1)
        # "fixed" reproduces the published code, where the head is never optimised (a random projection).
        self.mask_head.requires_grad_(cfg.mask_head == "learned")
        self.final_conv = conv3x3(widths[-1] + 1, widths[-1])
        self.linear = nn.Linear(widths[-1], 1)

    def forward(self, x_t: torch.Tensor, x_tp1: torch.Tensor, t: torch.Tensor,
                sources: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """x_t, x_tp1: (B, 1, H, W); t: (B,) long; sources: (B, n, H, W), required iff the critic sees them."""
        if self.sees_sources != (sources is not None):
            raise ValueError("pass sources exactly when model.critic_sees_sources is true")
        temb = self.time_embed(t)
        h = self.input_conv(torch.cat([x_t, x_tp1] + ([sources] if self.sees_sources else []), dim=1))
        for k, block in enumerate(self.blocks):
            h = block(h, temb)
            if k == MASK_BLOCK:
                mask_logits = self.mask_head(h)
        h = F.leaky_relu(self.final_conv(minibatch_stddev(h)), 0.2)
        return self.linear(h.sum(dim=(2, 3))).squeeze(1), mask_logits

    @staticmethod
    def mask(mask_logits: torch.Tensor, size: int | tuple[int, int]) -> torch.Tensor:
        """M = bilinear_interpolate(sigmoid(mask_logits), size): (B, 1, h, w) -> (B, 1, *size) in [0, 1]."""
        return F.interpolate(torch.sigmoid(mask_logits), size=size, mode="bilinear", align_corners=False)
