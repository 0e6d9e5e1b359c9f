"""The variance-preserving diffusion process in the DDGAN discretisation (spec sections 1 and 5).

A :class:`Schedule` owns the T large steps, the forward pairs used in training, the posterior
q(x_t | x_{t+1}, x0) and the mutual sampling loop. It holds no network, so the timestep ablation (T = 2, 4, 8)
swaps schedules, not models. All buffers are float32, also under mixed precision.
"""
from __future__ import annotations

from typing import Callable, Sequence

import torch
from torch import Tensor

# denoise(x_tp1, sources, t, z) -> (x_p1, x_p2 or None): predictions of the clean target x0
Denoiser = Callable[[Tensor, Tensor, Tensor, Tensor], tuple[Tensor, Tensor | None]]


def _gather(values: Tensor, t: Tensor) -> Tensor:
    """values[t] reshaped to (B, 1, 1, 1) for broadcasting over images."""
    return values.to(t.device)[t].view(-1, 1, 1, 1)


class PerImageNoise:
    """Noise streams seeded per image: image k draws from its own CPU generator seeded with ``seeds[k]``, so its
    samples do not depend on the batch it is in or on the device."""

    def __init__(self, seeds: Sequence[int], device: torch.device | str):
        self.generators = [torch.Generator().manual_seed(int(s)) for s in seeds]
        self.device = device

    def __len__(self) -> int:
        return len(self.generators)

    def randn(self, *shape: int) -> Tensor:
        """The next standard-normal draw of ``shape`` for every image: (B, *shape)."""
        return torch.stack([torch.randn(*shape, generator=g) for g in self.generators]).to(self.device)


class Schedule:
    """T-step VP schedule with beta(t) linear from beta_min to beta_max.

    Attributes (float32, on ``device``):
        betas: (T+1,) forward betas with a dummy 1e-8 at index 0.
        posterior_mean_coef1, posterior_mean_coef2, posterior_variance, posterior_log_variance: (T,) each,
            for the posterior q(x_t | x_{t+1}, x0) indexed by the generator's time index t in 0..T-1.
    """

    def __init__(self, num_timesteps: int = 4, beta_min: float = 0.1, beta_max: float = 20.0,
                 device: torch.device | str = "cpu"):
        if num_timesteps < 1:
            raise ValueError(f"num_timesteps must be >= 1, got {num_timesteps}")
        if not 0.0 < beta_min < beta_max:
            raise ValueError(f"need 0 < beta_min < beta_max, got {beta_min}, {beta_max}")
        self.num_timesteps, self.beta_min, self.beta_max = num_timesteps, beta_min, beta_max
        f64 = torch.float64  # compute in double, store in float32
        eps_small = 1e-3
        t = torch.arange(num_timesteps + 1, dtype=f64) / num_timesteps * (1.0 - eps_small) + eps_small
        var = 1.0 - torch.exp(-0.5 * t**2 * (beta_max - beta_min) - t * beta_min)
        alpha_bar = 1.0 - var
        betas = 1.0 - alpha_bar[1:] / alpha_bar[:-1]  # (T,)

        # forward pairs: x_t = a_cum[t] x0 + sigma_cum[t] eps;  x_{t+1} = a[t+1] x_t + sigma[t+1] eps'
        betas_fwd = torch.cat([torch.tensor([1e-8], dtype=f64), betas])
        a = torch.sqrt(1.0 - betas_fwd)
        a_cum = torch.cumprod(a, 0)

        # posterior with the T betas (the dummy dropped)
        alphas = 1.0 - betas
        alphas_cumprod = torch.cumprod(alphas, 0)
        alphas_cumprod_prev = torch.cat([torch.ones(1, dtype=f64), alphas_cumprod[:-1]])
        post_var = betas * (1.0 - alphas_cumprod_prev) / (1.0 - alphas_cumprod)

        as32 = dict(dtype=torch.float32, device=device)
        self.betas = betas_fwd.to(**as32)
        self.a = a.to(**as32)
        self.sigma = torch.sqrt(betas_fwd).to(**as32)
        self.a_cum = a_cum.to(**as32)
        self.sigma_cum = torch.sqrt(1.0 - a_cum**2).to(**as32)
        self.posterior_mean_coef1 = (betas * torch.sqrt(alphas_cumprod_prev) / (1.0 - alphas_cumprod)).to(**as32)
        self.posterior_mean_coef2 = ((1.0 - alphas_cumprod_prev) * torch.sqrt(alphas) / (1.0 - alphas_cumprod)).to(**as32)
        self.posterior_variance = post_var.to(**as32)
        self.posterior_log_variance = torch.log(post_var.clamp(min=1e-20)).to(**as32)

    @classmethod
    def from_config(cls, cfg, device: torch.device | str = "cpu") -> "Schedule":
        """Build from a :class:`~mudiff.config.ModelConfig`."""
        return cls(cfg.num_timesteps, cfg.beta_min, cfg.beta_max, device=device)

    def to(self, device: torch.device | str) -> "Schedule":
        return Schedule(self.num_timesteps, self.beta_min, self.beta_max, device=device)

    def __repr__(self) -> str:
        return f"Schedule(num_timesteps={self.num_timesteps}, beta_min={self.beta_min}, beta_max={self.beta_max})"

    # ---- training -------------------------------------------------------------------------------------------
    def sample_timesteps(self, batch: int, device, generator: torch.Generator | None = None) -> Tensor:
        """Uniform generator time indices t in {0..T-1}: (B,) long."""
        return torch.randint(0, self.num_timesteps, (batch,), device=device, generator=generator)

    def q_sample_pairs(self, x0: Tensor, t: Tensor) -> tuple[Tensor, Tensor]:
        """Forward pair (x_t, x_{t+1}) for x0: (B, C, H, W) and t: (B,) long in 0..T-1."""
        x0 = x0.float()
        x_t = _gather(self.a_cum, t) * x0 + _gather(self.sigma_cum, t) * torch.randn_like(x0)
        x_tp1 = _gather(self.a, t + 1) * x_t + _gather(self.sigma, t + 1) * torch.randn_like(x0)
        return x_t, x_tp1

    def posterior_mean(self, x0: Tensor, x_tp1: Tensor, t: Tensor) -> Tensor:
        """Mean of q(x_t | x_{t+1}, x0): (B, C, H, W), computed in float32."""
        return _gather(self.posterior_mean_coef1, t) * x0.float() + _gather(self.posterior_mean_coef2, t) * x_tp1.float()

    def posterior_noise(self, mean: Tensor, t: Tensor, noise: Tensor) -> Tensor:
        """Add sigma_t * noise to a posterior mean, except where t == 0."""
        nonzero = (t != 0).float().view(-1, 1, 1, 1)
        return mean + nonzero * torch.exp(0.5 * _gather(self.posterior_log_variance, t)) * noise

    def posterior_sample(self, x0: Tensor, x_tp1: Tensor, t: Tensor, noise: Tensor | None = None) -> Tensor:
        """x_t ~ q(x_t | x_{t+1}, x0); no noise at t = 0. Shapes (B, C, H, W)."""
        mean = self.posterior_mean(x0, x_tp1, t)
        return self.posterior_noise(mean, t, torch.randn_like(mean) if noise is None else noise)

    # ---- sampling -------------------------------------------------------------------------------------------
    @torch.no_grad()
    def sample(self, denoise: Denoiser, sources: Tensor, seeds: Sequence[int], z_dim: int
               ) -> tuple[Tensor, Tensor | None, Tensor]:
        """Mutual sampling (spec section 5): x_T ~ N(0, I), T steps of both networks, means averaged.

        Each image draws its noise and latents from its own generator seeded with ``seeds[k]`` (on the CPU, then
        moved), so image k is the same whatever the batch size or device.

        Args:
            denoise: ``(x_tp1, sources, t, z) -> (x_p1, x_p2 | None)``.
            sources: (B, n, H, W) in [-1, 1].
            seeds: B integers, one per image.
            z_dim: latent size.
        Returns:
            x_p1, x_p2 (None for a single network), mutual: (B, 1, H, W); the t = 0 predictions and their mean.
        """
        batch, _, height, width = sources.shape
        if len(seeds) != batch:
            raise ValueError(f"need one seed per image: {len(seeds)} seeds for a batch of {batch}")
        device = sources.device
        noise = PerImageNoise(seeds, device)
        x = noise.randn(1, height, width)
        for step in reversed(range(self.num_timesteps)):
            t = torch.full((batch,), step, dtype=torch.long, device=device)
            z = noise.randn(z_dim)
            x_p1, x_p2 = denoise(x, sources, t, z)
            x_p1 = x_p1.float()
            x_p2 = None if x_p2 is None else x_p2.float()
            mean = self.posterior_mean(x_p1, x, t)
            if x_p2 is not None:
                mean = 0.5 * (mean + self.posterior_mean(x_p2, x, t))
            x = self.posterior_noise(mean, t, noise.randn(1, height, width))
        mutual = x_p1 if x_p2 is None else 0.5 * (x_p1 + x_p2)
        return x_p1, x_p2, mutual
