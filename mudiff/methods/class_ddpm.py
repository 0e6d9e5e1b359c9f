"""Label-conditioned DDPM (issue 11; DF_MRI, Nguyen et al. 2023, implemented from ``CLASS_GENERATION.md``).

Training: T = ``model.ddpm_timesteps`` (1000) steps, linear betas from 1e-4 to ``model.class_beta_max`` (0.02;
DF_MRI's preprocessed run used 0.04), epsilon prediction with MSE, t uniform (:class:`DDPMSchedule`, shared with the
paired DDPM baseline). The network is :class:`~mudiff.models.class_nets.ClassConditionalUNet`, our U-Net with the
label added to its time embedding, ``model.class_conditioning``:

- ``embedding`` (default, not in DF_MRI): a class embedding; ``model.label_dropout`` of the training labels are
  replaced by the null label, so one network learns eps(x_t, y) and eps(x_t); sampling mixes them with the guidance
  scale w: eps_null + w (eps_y - eps_null) (Ho & Salimans 2022): w = 0 is the unconditional prediction, w = 1 the
  conditional one, w > 1 trades diversity for class fidelity. Two network evaluations per step when w != 1.
- ``faithful``: DF_MRI's additive bias from the scalar label, no guidance.
- ``none``: the "no label" ablation (labels ignored).

Sampling (``model.class_sampler``): DDIM, eta = 0, on ``model.ddpm_sampling_steps`` steps (not in DF_MRI: for CPU
speed), or DF_MRI's ancestral sampler over all T steps with sigma_t^2 = beta_t. Each image draws x_T and the
ancestral noise from its own generator seeded with its seed, so it does not depend on the batch. DDIM clips its x0
estimate to [-1, 1] at each step; the ancestral result is clipped to [-1, 1] once at the end.

Deviations from DF_MRI, flagged: our U-Net (AdaGN residual blocks, attention at the bottleneck, GroupNorm) instead
of its BatchNorm U-Net (62.7 M parameters); the shared loop's Adam (``lr_g``, ``train.adam_betas``, cosine decay,
EMA) instead of Adam 1e-3 without EMA; classifier-free guidance and DDIM as options.
"""
from __future__ import annotations

from typing import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from mudiff.config import RunConfig
from mudiff.diffusion import PerImageNoise
from mudiff.methods.ddpm import DDPMSchedule
from mudiff.methods.labelled import LabelledMethod
from mudiff.methods.unet_l1 import optimise
from mudiff.models.class_nets import ClassConditionalUNet
from mudiff.runtime import autocast


class ClassDDPMMethod(LabelledMethod):
    """eps_theta(x_t, t, y) (``generator``) with the DDPM loss; DDIM or ancestral sampling, optional guidance."""

    def __init__(self, cfg: RunConfig):
        super().__init__(cfg)
        mc = cfg.model
        self.conditional = mc.class_conditioning != "none"
        self.generator = ClassConditionalUNet(mc)
        self.schedule = DDPMSchedule(mc.ddpm_timesteps, beta_end=mc.class_beta_max)
        self.optimizers = {"generator": self.adam(self.generator.parameters(), cfg.train.lr_g)}

    def setup(self, device, amp_dtype, memory_format, wrap) -> "ClassDDPMMethod":
        super().setup(device, amp_dtype, memory_format, wrap)
        self.wrapped = {"generator": wrap(self.generator)}  # a plain dict: not registered as a submodule again
        return self

    @property
    def network_evaluations(self) -> int:
        """Network evaluations per generated image with the configured sampler and guidance."""
        mc = self.cfg.model
        steps = mc.ddpm_sampling_steps if mc.class_sampler == "ddim" else mc.ddpm_timesteps
        return steps * (2 if self._guided(mc.guidance_scale) else 1)

    def _guided(self, scale: float) -> bool:
        return self.cfg.model.class_conditioning == "embedding" and scale != 1.0

    def train_labelled(self, x0: Tensor, labels: Tensor, step: int) -> dict[str, Tensor]:
        mc = self.cfg.model
        if mc.class_conditioning == "embedding" and mc.label_dropout > 0:
            drop = torch.rand(labels.shape, device=labels.device) < mc.label_dropout
            labels = torch.where(drop, torch.full_like(labels, self.generator.null_label), labels)
        t = torch.randint(0, self.schedule.num_timesteps, (x0.shape[0],), device=x0.device)
        noise = torch.randn_like(x0)
        with autocast(self.device, self.amp_dtype):
            pred = self.wrapped["generator"](self.schedule.add_noise(x0, noise, t), t, labels)
        loss = F.mse_loss(pred.float(), noise)
        optimise(self.optimizers["generator"], loss)
        return {"mse": loss.detach(), "loss_g": loss.detach()}

    def predict_noise(self, generator: nn.Module, x_t: Tensor, t: Tensor, labels: Tensor,
                      guidance_scale: float) -> Tensor:
        """Guided eps: eps_null + w (eps_y - eps_null) for the ``embedding`` conditioning (one batched pass over
        both), eps(x_t, y) otherwise; (B, C, H, W) float32."""
        with autocast(self.device, self.amp_dtype):
            if not self._guided(guidance_scale):
                return generator(x_t, t, labels).float()
            null = torch.full_like(labels, generator.null_label)
            both = generator(torch.cat([x_t, x_t]), torch.cat([t, t]), torch.cat([labels, null])).float()
        eps_y, eps_null = both.chunk(2)
        return eps_null + guidance_scale * (eps_y - eps_null)

    @torch.no_grad()
    def generate(self, generator: nn.Module, labels: Tensor, seeds: Sequence[int],
                 guidance_scale: float | None = None, steps: int | None = None, sampler: str | None = None) -> Tensor:
        """Images of classes ``labels`` (B,): (B, C, H, W) in [-1, 1]. ``guidance_scale``, ``steps`` (DDIM) and
        ``sampler`` default to the config's ``guidance_scale``, ``ddpm_sampling_steps`` and ``class_sampler``."""
        mc = self.cfg.model
        scale = mc.guidance_scale if guidance_scale is None else guidance_scale
        sampler = sampler or mc.class_sampler
        batch = labels.shape[0]
        if len(seeds) != batch:
            raise ValueError(f"need one seed per image: {len(seeds)} seeds for {batch} labels")
        if scale < 0:
            raise ValueError(f"guidance_scale must be >= 0, got {scale}")
        if self._guided(scale) and mc.label_dropout == 0:  # its null-label row kept its random initialisation
            raise ValueError(f"guidance_scale {scale} mixes in the null label's prediction, which "
                             "model.label_dropout = 0 never trained; use guidance_scale 1 or train with label dropout")
        labels = labels.to(self.device)
        noise = PerImageNoise(seeds, self.device)
        shape = (mc.image_channels, mc.image_size, mc.image_size)
        x = noise.randn(*shape)
        if sampler == "ancestral":
            for step in reversed(range(self.schedule.num_timesteps)):
                t = torch.full((batch,), step, dtype=torch.long, device=self.device)
                eps = self.predict_noise(generator, x, t, labels, scale)
                x = self.schedule.ancestral_step(x, eps, t, t - 1, noise.randn(*shape))
            return x.clamp(-1, 1)
        if sampler != "ddim":
            raise ValueError(f"sampler must be 'ddim' or 'ancestral', got {sampler!r}")
        count = mc.ddpm_sampling_steps if steps is None else steps
        if not 1 <= count <= self.schedule.num_timesteps:
            raise ValueError(f"steps must be in 1..{self.schedule.num_timesteps}, got {count}")
        timesteps = self.schedule.sampling_timesteps(count)
        x0 = x
        for step, prev in zip(timesteps, timesteps[1:] + [-1]):
            t, t_prev = (torch.full((batch,), s, dtype=torch.long, device=self.device) for s in (step, prev))
            eps = self.predict_noise(generator, x, t, labels, scale)
            x, x0 = self.schedule.ddim_step(x, eps, t, t_prev)
        return x0


__all__ = ["ClassDDPMMethod"]
