"""Backbone H: an NCSN++-style U-Net with AdaGN residual blocks (spec section 2).

Hookable names, relative to a :class:`UNet` (e.g. prefix ``f1.backbone.`` inside a ``MuDiff``):

- ``encoder.{k}``: the k-th residual block of the down path, in execution order (``num_res_blocks`` blocks per
  resolution, each resolution but the last followed by a down-sampling block); :meth:`UNet.encoder_block_names`.
- ``mid_block1``, ``mid_attn``, ``mid_block2``: the bottleneck (ResBlock, self-attention, ResBlock).
- ``decoder.{k}``: the k-th residual block of the up path (``num_res_blocks + 1`` blocks per resolution, each
  taking a skip, each resolution but the first followed by an up-sampling block);
  :meth:`UNet.decoder_block_names`.
"""
from __future__ import annotations

from functools import partial

import torch
from torch import nn

from mudiff.config import ModelConfig
from mudiff.models.layers import (SKIP_SCALE, FIRDownsample, GroupNorm, MappingNetwork, ResBlock, SelfAttention,
                                  TimeEmbedding, conv3x3, num_groups)


class PyramidDownsample(nn.Sequential):
    """One level of the NCSN++ 'residual' input pyramid: FIR down-sampling, then conv3x3 to the level's width."""

    def __init__(self, in_ch: int, out_ch: int):
        super().__init__(FIRDownsample(), conv3x3(in_ch, out_ch))


class UNet(nn.Module):
    """H: f_c (B, in_channels, H, W), x_{t+1} (B, C, H, W), t (B,), z (B, z_dim) -> x0 prediction (B, C, H, W),
    C = ``out_channels`` (1 for MU-Diff).

    Widths nf * channel_mult (one resolution per entry), BigGAN residual blocks with FIR up/down-sampling, skips
    rescaled by 1/sqrt(2), self-attention at the bottleneck only. The time step enters every block as a bias,
    z (through the mapping network) as the AdaGN style, and x_{t+1} once more through the input pyramid, which
    is added to the output of every down-sampling block.
    """

    def __init__(self, cfg: ModelConfig, in_channels: int, tanh_output: bool = True, out_channels: int = 1):
        super().__init__()
        self.tanh_output = tanh_output  # False: unbounded output (a noise prediction)
        nf, temb_dim = cfg.base_channels, 4 * cfg.base_channels
        widths = [nf * m for m in cfg.channel_mult]
        block = partial(ResBlock, temb_dim=temb_dim, style_dim=cfg.style_dim, dropout=cfg.dropout)
        self.time_embed = TimeEmbedding(nf, temb_dim)
        self.mapping = MappingNetwork(cfg.z_dim, cfg.style_dim)
        self.input_conv = conv3x3(in_channels, nf)

        self.encoder, self.pyramid = nn.ModuleList(), nn.ModuleList()
        ch, pyramid_ch, skip_chs = nf, out_channels, [nf]  # the pyramid carries an image of the output's channels
        for level, width in enumerate(widths):
            for _ in range(cfg.num_res_blocks):
                self.encoder.append(block(ch, width))
                ch = width
                skip_chs.append(ch)
            if level < len(widths) - 1:
                self.encoder.append(block(ch, ch, resample="down"))
                self.pyramid.append(PyramidDownsample(pyramid_ch, ch))
                pyramid_ch = ch
                skip_chs.append(ch)

        self.mid_block1, self.mid_attn, self.mid_block2 = block(ch, ch), SelfAttention(ch), block(ch, ch)

        self.decoder = nn.ModuleList()
        for level in reversed(range(len(widths))):
            for _ in range(cfg.num_res_blocks + 1):
                self.decoder.append(block(ch + skip_chs.pop(), widths[level]))
                ch = widths[level]
            if level > 0:
                self.decoder.append(block(ch, ch, resample="up"))

        self.output = nn.Sequential(GroupNorm(num_groups(ch), ch), nn.SiLU(), conv3x3(ch, out_channels))

    def encoder_block_names(self) -> list[str]:
        return [f"encoder.{k}" for k in range(len(self.encoder))]

    def decoder_block_names(self) -> list[str]:
        return [f"decoder.{k}" for k in range(len(self.decoder))]

    def forward(self, f_c: torch.Tensor, x_tp1: torch.Tensor, t: torch.Tensor, z: torch.Tensor,
                cond: torch.Tensor | None = None) -> torch.Tensor:
        """``cond`` (B, 4 nf), optional: added to the time embedding, so it biases every block as t does (class
        conditioning, as in Dhariwal & Nichol's ADM)."""
        temb, style = self.time_embed(t), self.mapping(z)
        if cond is not None:
            temb = temb + cond
        h = self.input_conv(f_c)
        skips, pyramid, levels = [h], x_tp1, iter(self.pyramid)
        for block in self.encoder:
            h = block(h, temb, style)
            if block.down:
                pyramid = next(levels)(pyramid)
                h = (h + pyramid) * SKIP_SCALE
            skips.append(h)
        h = self.mid_block2(self.mid_attn(self.mid_block1(h, temb, style)), temb, style)
        for block in self.decoder:
            if not block.up:
                h = torch.cat([h, skips.pop()], dim=1)
            h = block(h, temb, style)
        out = self.output(h)
        return torch.tanh(out) if self.tanh_output else out
