"""Baseline: Pix2Pix (Isola et al. 2017), the L1 U-Net's generator against a PatchGAN discriminator.

Losses as in the paper: the vanilla GAN loss (binary cross-entropy on logits; the generator's is the
non-saturating form) plus ``train.lambda_l1_pix2pix`` (100) times L1; the discriminator's loss is halved, as
Isola et al. do to slow D down. One discriminator step, then one generator step, on the same fake.

Sampling is deterministic: there is no latent, and dropout (``model.dropout``, 0 by default) is off at test time
(Isola et al. kept it on as their only noise source).

Differences from the published recipe, so that every method shares the loop: the generator is MU-Diff's
backbone (:class:`~mudiff.methods.unet_l1.PlainUNet`) rather than the 8-level encoder-decoder, the optimiser is
Adam with ``train.adam_betas`` and ``lr_g`` / ``lr_d`` (the paper: 2e-4, betas (0.5, 0.999)), and GroupNorm
replaces BatchNorm/InstanceNorm, which fail on the 1x1 maps the deepest layer sees at small images.
"""
from __future__ import annotations

import torch
from torch import Tensor, nn

from mudiff import losses
from mudiff.config import ModelConfig, RunConfig
from mudiff.methods.base import Wrap
from mudiff.methods.unet_l1 import UNetL1Method, optimise
from mudiff.models.layers import num_groups
from mudiff.runtime import autocast


class PatchGAN(nn.Module):
    """70x70 PatchGAN: concat(sources, target) (B, n+1, H, W) -> real/fake logits (B, 1, H/8 - 2, W/8 - 2).

    4x4 convs: nf (stride 2, no norm), 2nf, 4nf (stride 2), 8nf (stride 1), each followed by GroupNorm (but the
    first) and LeakyReLU 0.2; then a 4x4 conv to one logit per patch. Each logit sees a 70x70 input patch.
    nf = ``model.critic_channels``.
    """

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        if cfg.image_size < 32:
            raise ValueError(f"the PatchGAN halves the image three times and then shrinks it by 2 twice; "
                             f"model.image_size={cfg.image_size} is too small (use >= 32)")
        nf = cfg.critic_channels
        layers: list[nn.Module] = []
        in_ch = cfg.num_sources + 1
        for i, (mult, stride) in enumerate([(1, 2), (2, 2), (4, 2), (8, 1)]):
            out_ch = nf * mult
            layers.append(nn.Conv2d(in_ch, out_ch, 4, stride, 1))
            if i > 0:
                layers.append(nn.GroupNorm(num_groups(out_ch), out_ch))
            layers.append(nn.LeakyReLU(0.2))
            in_ch = out_ch
        layers.append(nn.Conv2d(in_ch, 1, 4, 1, 1))
        self.net = nn.Sequential(*layers)

    def forward(self, sources: Tensor, target: Tensor) -> Tensor:
        return self.net(torch.cat([sources, target], dim=1))


class Pix2PixMethod(UNetL1Method):
    """G (``generator``, the L1 U-Net) against the PatchGAN D (``critic``); optimisers "generator", "critic"."""

    def __init__(self, cfg: RunConfig):
        super().__init__(cfg)
        self.critic = PatchGAN(cfg.model)
        self.optimizers["critic"] = self.adam(self.critic.parameters(), cfg.train.lr_d)

    def setup(self, device, amp_dtype, memory_format, wrap: Wrap) -> "Pix2PixMethod":
        super().setup(device, amp_dtype, memory_format, wrap)
        self.wrapped["critic"] = wrap(self.critic)
        return self

    def train_step(self, x0: Tensor, sources: Tensor, step: int) -> dict[str, Tensor]:
        with autocast(self.device, self.amp_dtype):
            fake = self.wrapped["generator"](sources)
            real_logits = self.wrapped["critic"](sources, x0)
            fake_logits = self.wrapped["critic"](sources, fake.detach())
        loss_d = 0.5 * losses.critic_adversarial_loss(real_logits.float(), [fake_logits.float()])
        optimise(self.optimizers["critic"], loss_d)

        self.critic.requires_grad_(False)  # no critic gradients (and no DDP sync) in the generator step
        with autocast(self.device, self.amp_dtype):
            fake_logits = self.critic(sources, fake)
        self.critic.requires_grad_(True)
        adv = losses.generator_adversarial_loss([fake_logits.float()])
        l1 = (fake.float() - x0).abs().mean()
        loss_g = adv + self.cfg.train.lambda_l1_pix2pix * l1
        optimise(self.optimizers["generator"], loss_g)
        return {"loss_d": loss_d.detach(), "adv": adv.detach(), "l1": l1.detach(), "loss_g": loss_g.detach()}


__all__ = ["PatchGAN", "Pix2PixMethod"]
