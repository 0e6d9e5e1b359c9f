"""Networks for class-conditioned generation (issue 11): the noise predictor of ``class_ddpm`` (our U-Net with a
label term added to its time embedding) and the DCGAN-style generator and critic of the WGAN-GP baselines."""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from mudiff.config import ModelConfig
from mudiff.models.unet import UNet


class ClassConditionalUNet(nn.Module):
    """epsilon_theta(x_t, t, y): x_t (B, C, H, W), t (B,) long, labels (B,) long -> eps prediction (B, C, H, W).

    Our U-Net H (time embedding, AdaGN blocks with a constant style z = 0, input pyramid fed with x_t), linear
    output. The label enters as a term added to the time embedding, which every residual block projects to a
    per-channel bias (``model.class_conditioning``):

    - ``embedding``: a learned vector per class plus one for the null label ``num_classes`` (classifier-free
      guidance); as ADM's class embedding.
    - ``faithful``: DF_MRI's additive bias from the scalar label: ReLU(Linear(1, .)(float(y))). DF_MRI has a
      Linear(1, C) -> ReLU per block; here one is shared and each block's time projection maps it to its channels
      (the same place, next to the time term, and as expressive for two classes). With more classes the scalar
      imposes an order on them, as in the original. There is no null label.
    - ``none``: the label is ignored (the unconditional "no label" ablation).
    """

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.num_classes, self.conditioning, self.z_dim = cfg.num_classes, cfg.class_conditioning, cfg.z_dim
        temb_dim = 4 * cfg.base_channels
        self.unet = UNet(cfg, cfg.image_channels, tanh_output=False, out_channels=cfg.image_channels)
        if self.conditioning == "embedding":
            self.label_embed = nn.Embedding(cfg.num_classes + 1, temb_dim)
        elif self.conditioning == "faithful":
            self.label_embed = nn.Sequential(nn.Linear(1, temb_dim), nn.ReLU())

    @property
    def null_label(self) -> int:
        """The label index meaning "no class" (only the ``embedding`` conditioning has one)."""
        return self.num_classes

    def forward(self, x_t: Tensor, t: Tensor, labels: Tensor) -> Tensor:
        if labels.shape != (x_t.shape[0],):
            raise ValueError(f"need one label per image: labels {tuple(labels.shape)} for {x_t.shape[0]} images")
        limit = self.num_classes + (self.conditioning == "embedding")
        if labels.numel() and (labels.min() < 0 or labels.max() >= limit):
            raise ValueError(f"labels must be in 0..{limit - 1} (model.num_classes={self.num_classes}"
                             f"{', plus the null label' if limit > self.num_classes else ''}), got "
                             f"{labels.min().item()}..{labels.max().item()}")
        cond = None
        if self.conditioning == "embedding":
            cond = self.label_embed(labels)
        elif self.conditioning == "faithful":
            cond = self.label_embed(labels.float()[:, None])
        return self.unet(x_t, x_t, t, x_t.new_zeros(x_t.shape[0], self.z_dim), cond=cond)


def _init_dcgan(module: nn.Module) -> None:
    """DCGAN initialisation: conv, linear and embedding weights N(0, 0.02), norm scales N(1, 0.02) (DF_MRI's GAN
    notebook draws the scales from N(0, 0.02), which all but zeroes every normalised activation). The projection
    critic's class embedding is a second score head, so it starts at the score's scale: at PyTorch's N(0, 1) its term
    outweighed the score 40-fold and the first gradient penalties were in the thousands."""
    for m in module.modules():
        if isinstance(m, (nn.Conv2d, nn.ConvTranspose2d, nn.Linear, nn.Embedding)):
            nn.init.normal_(m.weight, 0.0, 0.02)
            if getattr(m, "bias", None) is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, (nn.BatchNorm2d, nn.GroupNorm)):
            nn.init.normal_(m.weight, 1.0, 0.02)
            nn.init.zeros_(m.bias)


def _levels(image_size: int) -> int:
    """Number of 2x steps between 4 x 4 and the image (image_size = 4 * 2**levels)."""
    levels = math.log2(image_size / 4)
    if levels < 1 or levels != int(levels):
        raise ValueError(f"the WGAN-GP networks need model.image_size = 4 * 2**k (8, 16, 32, 64, ...), "
                         f"got {image_size}")
    return int(levels)


class DCGANGenerator(nn.Module):
    """G(z [, y]): z (B, z_dim), labels (B,) long or None -> images (B, C, H, W) in [-1, 1], H = model.image_size.

    Linear -> (width, 4, 4), then ConvTranspose(4, stride 2) + BatchNorm + ReLU doubling the size (halving the
    width) up to the image size, conv3x3 and tanh. Conditional: the one-hot label is concatenated to z.
    """

    def __init__(self, cfg: ModelConfig, conditional: bool):
        super().__init__()
        levels = _levels(cfg.image_size)
        self.z_dim, self.num_classes, self.conditional = cfg.z_dim, cfg.num_classes, conditional
        width = cfg.critic_channels * 2 ** levels
        self.project = nn.Sequential(nn.Linear(cfg.z_dim + (cfg.num_classes if conditional else 0), width * 16),
                                     nn.Unflatten(1, (width, 4, 4)), nn.BatchNorm2d(width), nn.ReLU())
        layers: list[nn.Module] = []
        for _ in range(levels):
            layers += [nn.ConvTranspose2d(width, width // 2, 4, 2, 1), nn.BatchNorm2d(width // 2), nn.ReLU()]
            width //= 2
        self.body = nn.Sequential(*layers, nn.Conv2d(width, cfg.image_channels, 3, padding=1), nn.Tanh())
        _init_dcgan(self)

    def forward(self, z: Tensor, labels: Tensor | None = None) -> Tensor:
        if self.conditional != (labels is not None):
            raise ValueError("pass labels exactly when the generator is conditional (cwgan_gp)")
        if labels is not None:
            z = torch.cat([z, F.one_hot(labels, self.num_classes).to(z.dtype)], dim=1)
        return self.body(self.project(z))


class WGANCritic(nn.Module):
    """D(x [, y]): images (B, C, H, W), labels (B,) long or None -> scores (B,).

    Conv(4, stride 2) + LeakyReLU(0.2) halving to 4 x 4 (no batch norm: the gradient penalty is per sample;
    GroupNorm per image instead), then a linear score. Conditional: projection (Miyato & Koyama 2018),
    score + <embed(y), features>, with one embedding per actual class.
    """

    def __init__(self, cfg: ModelConfig, conditional: bool):
        super().__init__()
        levels = _levels(cfg.image_size)
        width = cfg.critic_channels
        layers: list[nn.Module] = [nn.Conv2d(cfg.image_channels, width, 4, 2, 1), nn.LeakyReLU(0.2)]
        for _ in range(levels - 1):
            layers += [nn.Conv2d(width, width * 2, 4, 2, 1), nn.GroupNorm(1, width * 2), nn.LeakyReLU(0.2)]
            width *= 2
        self.body = nn.Sequential(*layers, nn.Flatten())
        features = width * 16
        self.score = nn.Linear(features, 1)
        self.conditional = conditional
        self.embed = nn.Embedding(cfg.num_classes, features) if conditional else None
        _init_dcgan(self)

    def forward(self, x: Tensor, labels: Tensor | None = None) -> Tensor:
        if self.conditional != (labels is not None):
            raise ValueError("pass labels exactly when the critic is conditional (cwgan_gp)")
        h = self.body(x)
        out = self.score(h).squeeze(1)
        return out + (self.embed(labels) * h).sum(1) if self.embed is not None else out


__all__ = ["ClassConditionalUNet", "DCGANGenerator", "WGANCritic"]
