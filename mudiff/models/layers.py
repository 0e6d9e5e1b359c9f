"""Building blocks shared by the generators and the critic (spec sections 2 and 3).

Everything is plain PyTorch: FIR resampling is a depthwise convolution (under torch.compile, sums of shifted
slices that the compiler fuses with the ops around them), attention uses ``F.scaled_dot_product_attention``, and no
op synchronises with the host, so the blocks run under ``torch.autocast`` (bf16) and with ``channels_last`` tensors.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from mudiff.models.double_backward import Conv2d, conv2d

SKIP_SCALE = 1 / math.sqrt(2)
"""NCSN++ ``skip_rescale``: a residual sum of two unit-variance branches keeps unit variance."""

FIR_TAPS = (1.0, 3.0, 3.0, 1.0)


def num_groups(channels: int) -> int:
    """GroupNorm groups: 4 channels per group, at most 32 groups (NCSN++ uses min(C // 4, 32))."""
    return max(1, min(32, channels // 4))


def conv3x3(in_ch: int, out_ch: int, groups: int = 1) -> Conv2d:
    return Conv2d(in_ch, out_ch, 3, padding=1, groups=groups)


def fir_kernel(taps: tuple[float, ...] = FIR_TAPS) -> torch.Tensor:
    """Separable 2-D FIR kernel normalised to sum 1: (1, 1, K, K)."""
    k = torch.tensor(taps)
    k = torch.outer(k, k)
    return (k / k.sum())[None, None]


def replicate_pad1(x: torch.Tensor) -> torch.Tensor:
    """Replicate padding by one pixel on each side, (B, C, H, W) -> (B, C, H+2, W+2).

    Eagerly ``F.pad(mode="replicate")`` (one kernel); under torch.compile the same values from slices and
    concatenation, plain ops that the compiler fuses (its CPU backend mis-strides replication_pad2d's backward).
    """
    if not torch.compiler.is_compiling():
        return F.pad(x, (1, 1, 1, 1), mode="replicate")
    x = torch.cat([x[:, :, :1], x, x[:, :, -1:]], dim=2)
    return torch.cat([x[:, :, :, :1], x, x[:, :, :, -1:]], dim=3)


def fir_as_slices() -> bool:
    """Whether FIR resampling runs as shifted slices (under torch.compile) rather than a depthwise convolution."""
    return torch.compiler.is_compiling()


def _separably(resample_last_dim, x: torch.Tensor) -> torch.Tensor:
    """A 1-D resampling of the last dim applied along W, then along H: (B, C, H', W') -> (B, C, H'', W'')."""
    return resample_last_dim(resample_last_dim(x).transpose(-1, -2)).transpose(-1, -2)


def _fir_down_last_dim(x: torch.Tensor) -> torch.Tensor:
    """The FIR taps at stride 2 along the last dim of a tensor padded by one pixel a side: n + 2 -> n // 2."""
    half, total = (x.shape[-1] - 2) // 2, sum(FIR_TAPS)
    return sum(tap / total * x[..., k:k + 2 * half:2] for k, tap in enumerate(FIR_TAPS))


def _fir_up_last_dim(x: torch.Tensor) -> torch.Tensor:
    """Zero insertion and the FIR taps (gain 2) along the last dim of a tensor padded by one pixel a side:
    n + 2 -> 2n. Pixel 2m takes taps 3 and 1 of padded pixels m and m + 1, pixel 2m + 1 taps 2 and 0 of pixels
    m + 1 and m + 2 (what ``F.conv_transpose2d`` with stride 2 and padding 3 computes)."""
    t = [2 * tap / sum(FIR_TAPS) for tap in FIR_TAPS]
    before, centre, after = x[..., :-2], x[..., 1:-1], x[..., 2:]
    return torch.stack([t[3] * before + t[1] * centre, t[2] * centre + t[0] * after], dim=-1).flatten(-2)


class FIRDownsample(nn.Module):
    """Blur with the [1,3,3,1] FIR kernel and keep every second pixel: (B, C, H, W) -> (B, C, H/2, W/2).

    Replicate padding (not zeros, as in upfirdn2d) so that the image border keeps its intensity. Eagerly one
    depthwise convolution; under torch.compile the same sums as shifted slices, which the compiler can fuse with
    the neighbouring norm and activation (the depthwise convolutions took 13 % of an eager bf16 step on an H200).
    """

    def __init__(self):
        super().__init__()
        self.register_buffer("kernel", fir_kernel(), persistent=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        channels = x.shape[1]
        x = replicate_pad1(x)
        if fir_as_slices():
            return _separably(_fir_down_last_dim, x)
        return conv2d(x, self.kernel.to(x.dtype).expand(channels, -1, -1, -1), stride=2, groups=channels)


class FIRUpsample(nn.Module):
    """Zero-insertion up-sampling followed by the [1,3,3,1] FIR kernel: (B, C, H, W) -> (B, C, 2H, 2W).

    Eagerly one depthwise transposed convolution; under torch.compile shifted slices (see :class:`FIRDownsample`).
    """

    def __init__(self):
        super().__init__()
        # Gain 4 (= factor**2) because only one in four up-sampled pixels is non-zero.
        self.register_buffer("kernel", 4 * fir_kernel(), persistent=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        channels = x.shape[1]
        x = replicate_pad1(x)
        if fir_as_slices():
            return _separably(_fir_up_last_dim, x)
        # padding=3 crops the 2 extra output pixels per side that the replicate pad produced (plus the usual 1).
        return F.conv_transpose2d(x, self.kernel.to(x.dtype).expand(channels, -1, -1, -1), stride=2, padding=3,
                                  groups=channels)


def group_norm(x: torch.Tensor, groups: int, weight: torch.Tensor | None = None,
               bias: torch.Tensor | None = None, eps: float = 1e-5) -> torch.Tensor:
    """``F.group_norm`` in ``x``'s own dtype, also under autocast (which would run it in float32 and cast its
    input and output around every norm); the kernels accumulate the statistics of bf16 inputs in float32."""
    with torch.autocast(x.device.type, enabled=False):
        cast = (lambda p: None if p is None else p.to(x.dtype))
        return F.group_norm(x, groups, cast(weight), cast(bias), eps)


class GroupNorm(nn.GroupNorm):
    """``nn.GroupNorm`` that runs in its input's dtype (:func:`group_norm`); the same parameters and state dict."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return group_norm(x, self.num_groups, self.weight, self.bias, self.eps)


class AdaGN(nn.Module):
    """Adaptive GroupNorm: GroupNorm without affine, then per-channel scale and shift predicted from a style.

    x: (B, C, H, W), style: (B, style_dim) -> (B, C, H, W). The scale's bias starts at 1 and the shift's at 0,
    so a zero style is the identity modulation. On a contiguous x the norm and the modulation are one GroupNorm
    kernel: x seen as (1, B*C, H, W) has B*groups groups that never straddle two images, and the per-image scale
    and shift become that norm's per-channel affine (B*C,).
    """

    def __init__(self, channels: int, style_dim: int, groups: int | None = None):
        super().__init__()
        self.groups = groups or num_groups(channels)
        self.style = nn.Linear(style_dim, 2 * channels)
        with torch.no_grad():
            self.style.bias[:channels].fill_(1.0)
            self.style.bias[channels:].zero_()

    def forward(self, x: torch.Tensor, style: torch.Tensor) -> torch.Tensor:
        scale, shift = self.style(style).chunk(2, dim=1)  # (B, C) each
        b, c = x.shape[:2]
        if x.is_contiguous():
            fused = group_norm(x.reshape(1, b * c, *x.shape[2:]), b * self.groups, scale.reshape(-1), shift.reshape(-1))
            return fused.view_as(x)
        # channels-last (the CPU layout): a reshape would copy; the norm, then the modulation
        return torch.addcmul(shift[:, :, None, None], group_norm(x, self.groups), scale[:, :, None, None])


class ResBlock(nn.Module):
    """BigGAN residual block of H with time bias and AdaGN, optionally FIR up- or down-sampling.

    x: (B, in_ch, H, W), temb: (B, temb_dim) (already activated), style: (B, style_dim)
    -> (B, out_ch, H', W') with H' = H, 2H (``resample="up"``) or H/2 (``resample="down"``).
    """

    def __init__(self, in_ch: int, out_ch: int, temb_dim: int, style_dim: int, dropout: float = 0.0,
                 resample: str | None = None):
        super().__init__()
        if resample not in (None, "up", "down"):
            raise ValueError(f"resample must be None, 'up' or 'down', got {resample!r}")
        self.up, self.down = resample == "up", resample == "down"
        self.norm0 = AdaGN(in_ch, style_dim)
        self.resample = {None: nn.Identity, "up": FIRUpsample, "down": FIRDownsample}[resample]()
        self.conv0 = conv3x3(in_ch, out_ch)
        self.temb = nn.Linear(temb_dim, out_ch)
        self.norm1 = AdaGN(out_ch, style_dim)
        self.dropout = nn.Dropout(dropout)
        self.conv1 = conv3x3(out_ch, out_ch)
        self.skip = nn.Conv2d(in_ch, out_ch, 1) if in_ch != out_ch or resample else nn.Identity()

    def forward(self, x: torch.Tensor, temb: torch.Tensor, style: torch.Tensor) -> torch.Tensor:
        h = self.resample(F.silu(self.norm0(x, style)))
        h = self.conv0(h) + self.temb(temb)[:, :, None, None]
        h = self.conv1(self.dropout(F.silu(self.norm1(h, style))))
        return (self.skip(self.resample(x)) + h) * SKIP_SCALE


class SelfAttention(nn.Module):
    """Single-head self-attention over all positions (NCSN++ AttnBlockpp): (B, C, H, W) -> (B, C, H, W)."""

    def __init__(self, channels: int):
        super().__init__()
        self.norm = GroupNorm(num_groups(channels), channels)
        self.qkv = nn.Linear(channels, 3 * channels)
        self.proj = nn.Linear(channels, channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, c, h, w = x.shape
        tokens = self.norm(x).flatten(2).transpose(1, 2)  # (B, HW, C)
        q, k, v = self.qkv(tokens).unsqueeze(1).chunk(3, dim=-1)  # (B, 1, HW, C) each
        out = self.proj(F.scaled_dot_product_attention(q, k, v).squeeze(1))
        return (x + out.transpose(1, 2).reshape(b, c, h, w)) * SKIP_SCALE


def sinusoidal_embedding(t: torch.Tensor, dim: int, max_period: float = 10000.0) -> torch.Tensor:
    """Transformer/DDPM sinusoidal embedding of integer steps: t (B,) -> (B, dim), sin half then cos half."""
    half = dim // 2
    freqs = torch.exp(-math.log(max_period) * torch.arange(half, device=t.device, dtype=torch.float32)
                      / max(half - 1, 1))
    args = t.float()[:, None] * freqs[None]
    return torch.cat([args.sin(), args.cos()], dim=1)


class TimeEmbedding(nn.Module):
    """Sinusoidal(step, dim) -> Linear -> act -> Linear -> act: t (B,) -> (B, out_dim).

    The final activation is applied once here rather than in every block that projects the embedding.
    """

    def __init__(self, dim: int, out_dim: int, act: nn.Module | None = None):
        super().__init__()
        self.dim = dim
        self.act = act if act is not None else nn.SiLU()
        self.fc0 = nn.Linear(dim, out_dim)
        self.fc1 = nn.Linear(out_dim, out_dim)

    def forward(self, t: torch.Tensor) -> torch.Tensor:
        return self.act(self.fc1(self.act(self.fc0(sinusoidal_embedding(t, self.dim)))))


class PixelNorm(nn.Module):
    """StyleGAN's pixel norm: rescale each latent vector to unit mean square. (B, D) -> (B, D)."""

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        return z * torch.rsqrt(z.pow(2).mean(dim=1, keepdim=True) + 1e-8)


class MappingNetwork(nn.Sequential):
    """Latent mapping: z (B, z_dim) -> PixelNorm -> num_layers x (Linear, SiLU) -> style (B, style_dim)."""

    def __init__(self, z_dim: int, style_dim: int, num_layers: int = 4):
        layers: list[nn.Module] = [PixelNorm()]
        for i in range(num_layers):
            layers += [nn.Linear(z_dim if i == 0 else style_dim, style_dim), nn.SiLU()]
        super().__init__(*layers)
