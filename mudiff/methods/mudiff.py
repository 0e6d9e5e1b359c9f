"""MU-Diff and its ablations as a training method: one critic step, then one generator step (spec section 4)."""
from __future__ import annotations

from typing import Sequence

import torch
from torch import Tensor, nn

from mudiff import losses
from mudiff.config import RunConfig
from mudiff.diffusion import Schedule
from mudiff.methods.base import Method, Wrap
from mudiff.models import Critic, MuDiff
from mudiff.models.double_backward import double_backward_convs
from mudiff.runtime import autocast


class MuDiffMethod(Method):
    """Generators F1, F2 (``generator``: a :class:`MuDiff`) against the shared critic psi.

    Ablations are switches: ``model.variant`` (single = abl1 and supervised SynDiff, two_f1 = abl2, no_tau = abl3),
    ``train.mask_loss`` (False = abl4), ``train.use_critic`` (False: L_s only), ``model.num_timesteps``.
    """

    def __init__(self, cfg: RunConfig):
        super().__init__(cfg)
        self.generator = MuDiff(cfg.model)
        self.critic = Critic(cfg.model) if cfg.train.use_critic else None
        self.schedule = Schedule.from_config(cfg.model)
        self.optimizers = {"generator": self.adam(self.generator.parameters(), cfg.train.lr_g)}
        if self.critic is not None:
            self.optimizers["critic"] = self.adam(self.critic.parameters(), cfg.train.lr_d)

    @property
    def network_evaluations(self) -> int:
        """T steps of one or both generators."""
        return self.cfg.model.num_timesteps * (1 if self.generator.f2 is None else 2)

    def setup(self, device, amp_dtype, memory_format, wrap: Wrap) -> "MuDiffMethod":
        super().setup(device, amp_dtype, memory_format, wrap)
        self.schedule = self.schedule.to(device)
        # Training forward passes go through the wrapped modules (DDP, compile); the plain ones hold the weights.
        # A plain dict, so that the wrappers are not registered (and saved) as submodules a second time.
        self.wrapped = {"generator": wrap(self.generator),
                        "generator_frozen": wrap(self.generator, ddp=False)}  # the critic step: no-grad forward
        if self.critic is not None:
            self.wrapped["critic"] = wrap(self.critic)
            self.wrapped["critic_frozen"] = wrap(self.critic, ddp=False)  # the generator step: no critic update
            self.wrapped["critic_eager"] = wrap(self.critic, compile=False)  # R1: double backward, not compilable
        return self

    def _noisy_pair(self, x0: Tensor) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        """Fresh t, forward pair (x_t, x_{t+1}) and latent z for targets x0: (B, 1, H, W)."""
        t = self.schedule.sample_timesteps(x0.shape[0], self.device)
        x_t, x_tp1 = self.schedule.q_sample_pairs(x0, t)
        z = torch.randn(x0.shape[0], self.cfg.model.z_dim, device=self.device)
        fmt = self.memory_format
        return t, x_t.contiguous(memory_format=fmt), x_tp1.contiguous(memory_format=fmt), z

    def _critic(self, critic: nn.Module, x_t: Tensor, x_tp1: Tensor, t: Tensor, sources: Tensor):
        return critic(x_t, x_tp1, t, sources if self.cfg.model.critic_sees_sources else None)

    def critic_step(self, x0: Tensor, sources: Tensor, step: int) -> dict[str, Tensor]:
        """psi's logistic loss on real x_t vs both generators' posterior samples (detached), lazy R1."""
        tc = self.cfg.train
        t, x_t, x_tp1, z = self._noisy_pair(x0)
        do_r1 = tc.r1_gamma > 0 and step % tc.lazy_reg == 0
        x_t.requires_grad_(do_r1)
        with torch.no_grad(), autocast(self.device, self.amp_dtype):
            preds = [p for p in self.wrapped["generator_frozen"](x_tp1, sources, t, z) if p is not None]
        fakes = [self.schedule.posterior_sample(p, x_tp1, t) for p in preds]
        critic = self.wrapped["critic_eager" if do_r1 else "critic"]  # R1's double backward runs eagerly
        with autocast(self.device, self.amp_dtype):
            with double_backward_convs(do_r1):
                real_logit, real_mask = self._critic(critic, x_t, x_tp1, t, sources)
            fake_out = [self._critic(self.wrapped["critic"], f, x_tp1, t, sources) for f in fakes]
        loss = losses.critic_adversarial_loss(real_logit.float(), [o[0].float() for o in fake_out])
        out = {"loss_d": loss.detach()}
        if self.cfg.model.mask_head == "learned":
            mask_loss = losses.mask_head_loss(real_mask.float(), [o[1].float() for o in fake_out])
            loss = loss + mask_loss
            out["mask_head"] = mask_loss.detach()
        if do_r1:
            r1 = losses.r1_penalty(real_logit, x_t)
            scale = tc.lazy_reg if tc.r1_scale_by_interval else 1
            loss = loss + 0.5 * tc.r1_gamma * scale * r1
            out["r1"] = r1.detach()
        opt = self.optimizers["critic"]
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        return out

    def generator_step(self, x0: Tensor, sources: Tensor) -> dict[str, Tensor]:
        """L = lambda_c L_c + lambda_s L_s + lambda_m L_m for both generators, one backward."""
        tc = self.cfg.train
        t, _, x_tp1, z = self._noisy_pair(x0)
        with autocast(self.device, self.amp_dtype):
            preds = [p for p in self.wrapped["generator"](x_tp1, sources, t, z) if p is not None]
        loss_s = losses.reconstruction_loss(x0, preds)
        loss = tc.lambda_s * loss_s
        out = {"l1": loss_s.detach()}
        if self.critic is not None:
            trainable = [p for p in self.critic.parameters() if p.requires_grad]
            for p in trainable:  # no critic gradients (and no DDP sync) in this step
                p.requires_grad_(False)
            fakes = [self.schedule.posterior_sample(p, x_tp1, t) for p in preds]
            with autocast(self.device, self.amp_dtype):
                fake_out = [self._critic(self.wrapped["critic_frozen"], f, x_tp1, t, sources) for f in fakes]
            loss_c = losses.generator_adversarial_loss([o[0].float() for o in fake_out])
            loss = loss + tc.lambda_c * loss_c
            out["adv"] = loss_c.detach()
            if tc.mask_loss and len(fakes) == 2:
                masks = [self.critic.mask(o[1].float(), x0.shape[-2:]) for o in fake_out]
                loss_m = losses.mutual_mask_loss(fakes[0], fakes[1], masks[0], masks[1])
                loss = loss + tc.lambda_m * loss_m
                out["mask"] = loss_m.detach()
            for p in trainable:
                p.requires_grad_(True)
        opt = self.optimizers["generator"]
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        out["loss_g"] = loss.detach()
        return out

    def train_step(self, x0: Tensor, sources: Tensor, step: int) -> dict[str, Tensor]:
        out = self.critic_step(x0, sources, step) if self.critic is not None else {}
        out.update(self.generator_step(x0, sources))
        return out

    @torch.no_grad()
    def sample(self, generator: nn.Module, sources: Tensor, seeds: Sequence[int]
               ) -> tuple[Tensor, Tensor | None, Tensor]:
        """The mutual sampling loop (spec section 5): T steps, 2T network evaluations."""
        with autocast(self.device, self.amp_dtype):
            return self.schedule.sample(generator, sources, seeds, self.cfg.model.z_dim)


__all__ = ["MuDiffMethod"]
