"""WGAN-GP and conditional WGAN-GP baselines of DF_MRI's comparison, done correctly (issue 11).

Losses (Gulrajani et al. 2017): critic E[D(fake)] - E[D(real)] + lambda E[(||grad D(x_hat)||_2 - 1)^2] with x_hat
= eps x + (1 - eps) x_fake, eps ~ U(0, 1) per sample, lambda = ``train.gp_weight`` (10); generator -E[D(fake)].
Each trainer iteration is one critic step on a fresh real batch; every ``train.n_critic``-th (5) also takes one
generator step. ``model.method``: ``wgan_gp`` (unconditional) or ``cwgan_gp`` (the one-hot label concatenated to z
in the generator, a projection critic over the actual ``model.num_classes``). The generator outputs the data's
size and channels (DF_MRI's conditional generator gave 16 x 16 for 32 x 32 data). Optimisers: the shared loop's
Adam, ``lr_g`` / ``lr_d`` and ``train.adam_betas`` (DF_MRI: 2e-4, (0.5, 0.999)).
"""
from __future__ import annotations

from typing import Sequence

import torch
from torch import Tensor, nn

from mudiff.config import RunConfig
from mudiff.diffusion import PerImageNoise
from mudiff.methods.labelled import LabelledMethod
from mudiff.methods.unet_l1 import optimise
from mudiff.models.class_nets import DCGANGenerator, WGANCritic


def gradient_penalty(critic: nn.Module, real: Tensor, fake: Tensor, labels: Tensor | None = None,
                     mix: Tensor | None = None) -> Tensor:
    """E[(||grad_x D(x_hat)||_2 - 1)^2] at x_hat = mix * real + (1 - mix) * fake; real, fake (B, C, H, W), mix (B,)
    (default U(0, 1)); labels passed to a conditional critic. Differentiable (for the critic's update)."""
    mix = torch.rand(real.shape[0], device=real.device) if mix is None else mix
    x_hat = (mix.view(-1, 1, 1, 1) * real + (1 - mix.view(-1, 1, 1, 1)) * fake.detach()).requires_grad_(True)
    scores = critic(x_hat) if labels is None else critic(x_hat, labels)
    (grad,) = torch.autograd.grad(scores.sum(), x_hat, create_graph=True)
    return ((grad.flatten(1).norm(dim=1) - 1) ** 2).mean()


class WGANGPMethod(LabelledMethod):
    """G(z [, y]) (``generator``, EMA-averaged) and D(x [, y]) (``critic``) trained with WGAN-GP."""

    network_evaluations = 1

    def __init__(self, cfg: RunConfig):
        super().__init__(cfg)
        self.conditional = cfg.model.method == "cwgan_gp"
        self.generator = DCGANGenerator(cfg.model, self.conditional)
        self.critic = WGANCritic(cfg.model, self.conditional)
        self.optimizers = {"generator": self.adam(self.generator.parameters(), cfg.train.lr_g),
                           "critic": self.adam(self.critic.parameters(), cfg.train.lr_d)}

    def setup(self, device, amp_dtype, memory_format, wrap) -> "WGANGPMethod":
        super().setup(device, amp_dtype, memory_format, wrap)
        # the gradient penalty differentiates the critic twice, which a compiled module cannot: an eager critic
        self.wrapped = {"generator": wrap(self.generator), "critic": wrap(self.critic, compile=False)}
        return self

    def _labels(self, labels: Tensor) -> Tensor | None:
        return labels if self.conditional else None

    def train_labelled(self, x0: Tensor, labels: Tensor, step: int) -> dict[str, Tensor]:
        tc = self.cfg.train
        cond = self._labels(labels)
        generator, critic = self.wrapped["generator"], self.wrapped["critic"]
        z = torch.randn(x0.shape[0], self.cfg.model.z_dim, device=x0.device)
        with torch.no_grad():
            fake = generator(z, cond)
        d_real, d_fake = critic(x0, cond).mean(), critic(fake, cond).mean()
        penalty = gradient_penalty(critic, x0, fake, cond)
        loss_d = d_fake - d_real + tc.gp_weight * penalty
        optimise(self.optimizers["critic"], loss_d)
        out = {"loss_d": loss_d.detach(), "wasserstein": (d_real - d_fake).detach(), "gp": penalty.detach()}
        if step % tc.n_critic == 0:
            self.critic.requires_grad_(False)
            loss_g = -critic(generator(torch.randn_like(z), cond), cond).mean()
            optimise(self.optimizers["generator"], loss_g)
            self.critic.requires_grad_(True)
            self._last_loss_g = loss_g.detach()
        out["loss_g"] = getattr(self, "_last_loss_g", torch.zeros((), device=x0.device))
        return out

    @torch.no_grad()
    def generate(self, generator: nn.Module, labels: Tensor, seeds: Sequence[int]) -> Tensor:
        """One pass of G on per-image z ~ N(0, I) seeded by ``seeds``: (B, C, H, W) in [-1, 1]."""
        if len(seeds) != labels.shape[0]:
            raise ValueError(f"need one seed per image: {len(seeds)} seeds for {labels.shape[0]} labels")
        was_training = generator.training
        generator.eval()  # batch norm with running statistics: image k does not depend on its batch
        z = PerImageNoise(seeds, self.device).randn(self.cfg.model.z_dim)
        out = generator(z, self._labels(labels.to(self.device))).float()
        generator.train(was_training)
        return out


__all__ = ["WGANGPMethod", "gradient_penalty"]
