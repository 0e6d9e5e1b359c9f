"""Baseline: a plain conditional U-Net trained with L1 only (sources stacked as channels -> target).

Its network, :class:`PlainUNet`, is MU-Diff's backbone H used without diffusion and without a latent, so the
baselines are comparable in size and building blocks: it is also Pix2Pix's generator and, with a time input and
a linear output, the DDPM baseline's noise predictor.
"""
from __future__ import annotations

from typing import Sequence

import torch
from torch import Tensor, nn

from mudiff.config import ModelConfig, RunConfig
from mudiff.methods.base import Method, Wrap
from mudiff.models import UNet
from mudiff.runtime import autocast


class PlainUNet(nn.Module):
    """H as an ordinary U-Net: x (B, in_channels, H, W) [, t (B,) long] -> (B, 1, H, W).

    The latent is fixed at z = 0, so every AdaGN reduces to a learned GroupNorm affine (its style is a learned
    constant); without ``t`` the time step is fixed at 0, so the time bias is a learned constant too. H's input
    pyramid carries a one-channel image into every down level: the noisy image for DDPM, zeros (constant biases)
    for a direct regression, which has no noisy target.

    ``linear_output=False`` keeps H's tanh (outputs in [-1, 1], for images); ``True`` returns the output layer's
    activation before the tanh (unbounded, for a noise prediction).
    """

    def __init__(self, cfg: ModelConfig, in_channels: int, linear_output: bool = False):
        super().__init__()
        self.z_dim = cfg.z_dim
        self.unet = UNet(cfg, in_channels, tanh_output=not linear_output)

    def forward(self, x: Tensor, t: Tensor | None = None, pyramid: Tensor | None = None) -> Tensor:
        batch = x.shape[0]
        t = torch.zeros(batch, dtype=torch.long, device=x.device) if t is None else t
        pyramid = x.new_zeros(batch, 1, *x.shape[2:]) if pyramid is None else pyramid
        return self.unet(x, pyramid, t, x.new_zeros(batch, self.z_dim))


def optimise(optimizer: torch.optim.Optimizer, loss: Tensor) -> None:
    """One gradient step of ``optimizer`` on ``loss``."""
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    optimizer.step()


class UNetMethod(Method):
    """A method whose sampled network ``generator`` is one :class:`PlainUNet` with one optimiser, "generator"
    (lr_g); training forward passes go through its wrapped copy ``wrapped["generator"]`` (DDP, compile)."""

    def __init__(self, cfg: RunConfig, generator: PlainUNet):
        super().__init__(cfg)
        self.generator = generator
        self.optimizers = {"generator": self.adam(generator.parameters(), cfg.train.lr_g)}

    def setup(self, device, amp_dtype, memory_format, wrap: Wrap) -> "UNetMethod":
        super().setup(device, amp_dtype, memory_format, wrap)
        self.wrapped = {"generator": wrap(self.generator)}  # a plain dict: not registered as a submodule again
        return self


class UNetL1Method(UNetMethod):
    """G: sources (B, n, H, W) -> target (B, 1, H, W) in [-1, 1], L1 loss, deterministic (one evaluation)."""

    network_evaluations = 1
    """Network evaluations per synthesised slice."""

    def __init__(self, cfg: RunConfig):
        super().__init__(cfg, PlainUNet(cfg.model, cfg.model.num_sources))

    def train_step(self, x0: Tensor, sources: Tensor, step: int) -> dict[str, Tensor]:
        with autocast(self.device, self.amp_dtype):
            pred = self.wrapped["generator"](sources)
        loss = (pred.float() - x0).abs().mean()
        optimise(self.optimizers["generator"], loss)
        return {"l1": loss.detach(), "loss_g": loss.detach()}

    @torch.no_grad()
    def sample(self, generator: nn.Module, sources: Tensor, seeds: Sequence[int]
               ) -> tuple[Tensor, Tensor | None, Tensor]:
        """One forward pass; ``seeds`` are ignored (the output is a function of the sources)."""
        with autocast(self.device, self.amp_dtype):
            x = generator(sources).float()
        return x, None, x


__all__ = ["PlainUNet", "UNetMethod", "UNetL1Method", "optimise"]
