"""Baseline: a conventional conditional DDPM (Ho et al. 2020) with deterministic DDIM sampling.

Training: ``model.ddpm_timesteps`` (T, 1000) steps with linear betas from 1e-4 to 0.02 (scaled by 1000 / T for
another T, as in Nichol & Dhariwal 2021, so that x_T is pure noise whatever T; capped at 0.999), epsilon
prediction with MSE, t uniform. The network (:class:`~mudiff.methods.unet_l1.PlainUNet`, MU-Diff's backbone
with its time embedding, zero latent, no tanh) sees concat(x_t, sources) and t; its input pyramid gets x_t.

Sampling: DDIM with eta = 0 (Song et al. 2021) on ``model.ddpm_sampling_steps`` (S) time steps spread evenly
over [T-1, 0], one network evaluation each. It is deterministic given x_T; x_T is drawn per image from
:class:`~mudiff.diffusion.PerImageNoise`, so slice k's result depends only on its seed. x0 is clipped to
[-1, 1] at every step (and the noise estimate made consistent with the clipped x0). The optimiser is the
shared loop's Adam (``lr_g``, ``train.adam_betas``), not Ho et al.'s (2e-4, betas (0.9, 0.999)).
"""
from __future__ import annotations

from typing import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from mudiff.config import RunConfig
from mudiff.diffusion import PerImageNoise
from mudiff.methods.unet_l1 import PlainUNet, UNetMethod, optimise
from mudiff.runtime import autocast

REFERENCE_STEPS = 1000
BETA_START, BETA_END = 1e-4, 0.02  # Ho et al.'s linear schedule at T = REFERENCE_STEPS


class DDPMSchedule(nn.Module):
    """Linear-beta DDPM schedule over T steps (betas from 1e-4 to ``beta_end`` at T = 1000); buffer
    ``alphas_cumprod`` (T,) float32 (computed in float64), not saved in checkpoints (it follows from the config)."""

    def __init__(self, num_timesteps: int, beta_end: float = BETA_END):
        super().__init__()
        scale = REFERENCE_STEPS / num_timesteps
        betas = torch.linspace(scale * BETA_START, scale * beta_end, num_timesteps, dtype=torch.float64)
        alphas_cumprod = torch.cumprod(1.0 - betas.clamp(max=0.999), 0)
        self.num_timesteps = num_timesteps
        self.register_buffer("alphas_cumprod", alphas_cumprod.float(), persistent=False)

    def _abar(self, t: Tensor) -> Tensor:
        """alpha_bar_t as (B, 1, 1, 1); t = -1 means the clean image (alpha_bar = 1)."""
        abar = torch.where(t >= 0, self.alphas_cumprod[t.clamp(min=0)], torch.ones((), device=t.device))
        return abar.view(-1, 1, 1, 1)

    def add_noise(self, x0: Tensor, noise: Tensor, t: Tensor) -> Tensor:
        """x_t = sqrt(alpha_bar_t) x0 + sqrt(1 - alpha_bar_t) eps; x0, noise: (B, C, H, W), t: (B,) long."""
        abar = self._abar(t)
        return abar.sqrt() * x0 + (1 - abar).sqrt() * noise

    def sampling_timesteps(self, steps: int) -> list[int]:
        """``steps`` distinct time steps evenly spread from T-1 down to 0 (just T-1 when steps = 1)."""
        return torch.linspace(self.num_timesteps - 1, 0, steps).round().long().tolist()

    def ddim_step(self, x_t: Tensor, eps: Tensor, t: Tensor, t_prev: Tensor) -> tuple[Tensor, Tensor]:
        """Deterministic DDIM update (eta = 0) from t to t_prev (-1: the end): -> (x_{t_prev}, x0 estimate in
        [-1, 1]); all (B, C, H, W) float32."""
        abar, abar_prev = self._abar(t), self._abar(t_prev)
        x0 = ((x_t - (1 - abar).sqrt() * eps) / abar.sqrt()).clamp(-1, 1)
        eps = (x_t - abar.sqrt() * x0) / (1 - abar).sqrt()
        return abar_prev.sqrt() * x0 + (1 - abar_prev).sqrt() * eps, x0

    def ancestral_step(self, x_t: Tensor, eps: Tensor, t: Tensor, t_prev: Tensor, noise: Tensor) -> Tensor:
        """Stochastic DDPM step from t to t_prev (< t; -1: the end) with the "fixedlarge" variance (Ho et al.):
        beta = 1 - alpha_bar_t / alpha_bar_{t_prev} (the respaced beta when t_prev < t - 1),
        x_{t_prev} = (x_t - beta / sqrt(1 - alpha_bar_t) eps) / sqrt(1 - beta) + sqrt(beta) noise, no noise at
        the end; all (B, C, H, W) float32, no clipping."""
        abar, abar_prev = self._abar(t), self._abar(t_prev)
        alpha = abar / abar_prev  # not 1 - beta: that loses float32 digits
        beta = 1 - alpha
        mean = (x_t - beta / (1 - abar).sqrt() * eps) / alpha.sqrt()
        return mean + (t_prev >= 0).float().view(-1, 1, 1, 1) * beta.sqrt() * noise


class DDPMMethod(UNetMethod):
    """epsilon_theta(concat(x_t, sources), t) (``generator``) with the DDPM loss and DDIM sampling."""

    def __init__(self, cfg: RunConfig):
        mc = cfg.model
        super().__init__(cfg, PlainUNet(mc, 1 + mc.num_sources, linear_output=True))
        self.schedule = DDPMSchedule(mc.ddpm_timesteps)

    @property
    def network_evaluations(self) -> int:
        """Network evaluations per synthesised slice."""
        return self.cfg.model.ddpm_sampling_steps

    def loss(self, x0: Tensor, sources: Tensor, t: Tensor, noise: Tensor) -> Tensor:
        """MSE between eps and its prediction at x_t; x0, noise: (B, 1, H, W), sources (B, n, H, W), t (B,)."""
        x_t = self.schedule.add_noise(x0, noise, t)
        with autocast(self.device, self.amp_dtype):
            pred = self.wrapped["generator"](torch.cat([x_t, sources], dim=1), t, x_t)
        return F.mse_loss(pred.float(), noise)

    def train_step(self, x0: Tensor, sources: Tensor, step: int) -> dict[str, Tensor]:
        t = torch.randint(0, self.schedule.num_timesteps, (x0.shape[0],), device=x0.device)
        loss = self.loss(x0, sources, t, torch.randn_like(x0))
        optimise(self.optimizers["generator"], loss)
        return {"mse": loss.detach(), "loss_g": loss.detach()}

    @torch.no_grad()
    def sample(self, generator: nn.Module, sources: Tensor, seeds: Sequence[int]
               ) -> tuple[Tensor, Tensor | None, Tensor]:
        """DDIM (eta = 0) from per-image x_T ~ N(0, I): ``ddpm_sampling_steps`` network evaluations."""
        batch, _, height, width = sources.shape
        if len(seeds) != batch:
            raise ValueError(f"need one seed per image: {len(seeds)} seeds for a batch of {batch}")
        x = PerImageNoise(seeds, sources.device).randn(1, height, width)
        steps = self.schedule.sampling_timesteps(self.cfg.model.ddpm_sampling_steps)
        for step, prev in zip(steps, steps[1:] + [-1]):
            t, t_prev = (torch.full((batch,), s, dtype=torch.long, device=sources.device) for s in (step, prev))
            with autocast(self.device, self.amp_dtype):
                eps = generator(torch.cat([x, sources], dim=1), t, x).float()
            x, x0 = self.schedule.ddim_step(x, eps, t, t_prev)
        return x0, None, x0


__all__ = ["DDPMSchedule", "DDPMMethod"]
