"""Unpaired MR <-> CT translation: SynDiff's cycle-consistent adversarial diffusion (SYNDIFF_CYCLE.md), and its
non-diffusive part alone (CycleGAN), as methods of the shared training loop.

Domains: the task ``<b>_from_<a>`` (e.g. ``ct_from_mr``) names domain a (the source, MR) and domain b (CT).

Networks (four generators, EMA-averaged together as ``generator``; four critics):

- G_diff^d (d = a, b): :class:`~mudiff.models.unet.UNet` on cat(x_{t+1}^d, y~) (2 channels), t and z -> x0^d.
- G_nd^{a->b}, G_nd^{b->a}: :class:`~mudiff.models.translator.ResnetTranslator` (ResNet-6).
- D_diff^d: :class:`~mudiff.models.critic.Critic` on (x_t or its posterior sample, x_{t+1}, t); no source image.
- D_nd^d: :class:`~mudiff.models.patch_critic.PatchCritic` on one image of domain d.

The unpaired trick: G_diff^d is conditioned on y~ = G_nd^{d->o}(x0^d), a synthetic other-domain image made from
the *same* real image, and its target is x0^d itself, so every loss uses one domain only; the batch's MR and CT
slices come from disjoint subjects (:class:`~mudiff.data.synthrad.MRCTDataset` in unpaired mode). y~ is not
detached: the diffusive losses train the translators too. At test time only G_diff runs, conditioned on the real
source image, T reverse steps from noise.

One iteration (§5): D_diff of both domains (logistic loss, lazy R1 on the real x_t), then D_nd of both domains,
then all four generators with one backward::

    L_G = lambda_c [adv_diff(a) + adv_diff(b) + adv_nd(a) + adv_nd(b)]
        + lambda_cycle [|G_nd^{b->a}(G_nd^{a->b}(x^a)) - x^a| + |G_nd^{a->b}(G_nd^{b->a}(x^b)) - x^b|]
        + lambda_s [|x0^a_hat - x^a| + |x0^b_hat - x^b|]

with SynDiff's weights 1, 0.5, 0.5 (``train.lambda_c``, ``train.lambda_cycle``, ``train.lambda_s``).
Differences from the published code, on purpose: fakes are computed without gradients in the critic steps
(the published code builds and discards that graph), no anomaly mode, any batch size, H != W, the diffusive
generator's attention only at the bottleneck (this workbench's U-Net), and both validation directions use
the right generator (the published code's bug 1).
"""
from __future__ import annotations

import dataclasses
from typing import Any, Sequence

import torch
from torch import Tensor, nn

from mudiff import losses
from mudiff.config import ModelConfig, RunConfig
from mudiff.data.tasks import parse_task
from mudiff.diffusion import Schedule
from mudiff.evaluation.metrics import psnr
from mudiff.methods.base import Method, Wrap
from mudiff.models.critic import Critic
from mudiff.models.double_backward import double_backward_convs
from mudiff.models.patch_critic import MIN_SIZE, PatchCritic
from mudiff.models.translator import ResnetTranslator
from mudiff.models.unet import UNet
from mudiff.runtime import autocast


def cycle_domains(task: str) -> tuple[str, str]:
    """``"ct_from_mr"`` -> ``("mr", "ct")``: (source domain a, target domain b); exactly one source."""
    target, sources = parse_task(task)
    if len(sources) != 1:
        raise ValueError(f"a cycle method translates between two domains; data.task {task!r} must name one source, "
                         "e.g. 'ct_from_mr'")
    return sources[0], target


def image_shape(cfg: ModelConfig) -> tuple[int, int]:
    """(H, W) of the model's images: ``image_size`` x (``image_width`` or ``image_size``)."""
    return cfg.image_size, cfg.image_width or cfg.image_size


class CycleGenerators(nn.Module):
    """The generators: ``translators["a_to_b"]``, ``translators["b_to_a"]`` and (diffusive only) ``diffusive[d]``."""

    def __init__(self, cfg: ModelConfig, domains: tuple[str, str], diffusive: bool):
        super().__init__()
        a, b = domains
        self.domains = domains
        self.translators = nn.ModuleDict({f"{s}_to_{d}": ResnetTranslator(cfg.translator_channels,
                                                                         cfg.translator_blocks)
                                          for s, d in ((a, b), (b, a))})
        self.diffusive = nn.ModuleDict({d: UNet(cfg, in_channels=2) for d in domains}) if diffusive else None

    def translate(self, x: Tensor, source: str, target: str) -> Tensor:
        """G_nd^{source->target}: (B, 1, H, W) -> (B, 1, H, W)."""
        return self.translators[f"{source}_to_{target}"](x)

    def denoise(self, domain: str, x_tp1: Tensor, condition: Tensor, t: Tensor, z: Tensor) -> Tensor:
        """G_diff^domain: x0 prediction (B, 1, H, W) from x_{t+1}, the other domain's image, t (B,), z (B, z_dim)."""
        return self.diffusive[domain](torch.cat([x_tp1, condition], dim=1), x_tp1, t, z)


class SynDiffCycleMethod(Method):
    """Unpaired SynDiff (four generators, four critics); :class:`CycleGANMethod` is its non-diffusive part."""

    diffusive = True

    def __init__(self, cfg: RunConfig):
        super().__init__(cfg)
        mc = cfg.model
        self.domains = cycle_domains(cfg.data.task)
        height, width = image_shape(mc)
        if min(height, width) < MIN_SIZE:
            raise ValueError(f"model.image_size x image_width = {height}x{width}: the PatchGAN critics need at least "
                             f"{MIN_SIZE} pixels a side")
        self.generator = CycleGenerators(mc, self.domains, self.diffusive)
        self.patch_critics = nn.ModuleDict({d: PatchCritic(mc.patch_critic_channels) for d in self.domains})
        self.optimizers = {"generator": self.adam(self.generator.parameters(), cfg.train.lr_g),
                           "patch_critic": self.adam(self.patch_critics.parameters(), cfg.train.lr_d)}
        if self.diffusive:
            # The critic halves by the smaller side; it sees no source image and its mask head is not used.
            critic_cfg = dataclasses.replace(mc, image_size=min(height, width), image_width=0, num_sources=1,
                                             critic_sees_sources=False, mask_head="fixed")
            self.critics = nn.ModuleDict({d: Critic(critic_cfg) for d in self.domains})
            self.optimizers["critic"] = self.adam(self.critics.parameters(), cfg.train.lr_d)
            self.schedule = Schedule.from_config(mc)

    @property
    def network_evaluations(self) -> int:
        """Per synthesised slice: T steps of one diffusive generator (CycleGAN: one translator pass)."""
        return self.cfg.model.num_timesteps if self.diffusive else 1

    def setup(self, device, amp_dtype, memory_format, wrap: Wrap) -> "SynDiffCycleMethod":
        super().setup(device, amp_dtype, memory_format, wrap)
        if self.diffusive:
            self.schedule = self.schedule.to(device)
        # Training forward passes go through the wrapped modules (DDP, compile); a plain dict, not submodules.
        g = self.generator
        # "*_frozen": the generator step's critics (no critic update, so no DDP).
        self.wrapped = {**{f"translator.{k}": wrap(m) for k, m in g.translators.items()},
                        **{f"patch_critic.{k}": wrap(m) for k, m in self.patch_critics.items()},
                        **{f"patch_critic_frozen.{k}": wrap(m, ddp=False) for k, m in self.patch_critics.items()}}
        if self.diffusive:
            self.wrapped.update({f"diffusive.{k}": wrap(m) for k, m in g.diffusive.items()})
            self.wrapped.update({f"critic.{k}": wrap(m) for k, m in self.critics.items()})
            self.wrapped.update({f"critic_frozen.{k}": wrap(m, ddp=False) for k, m in self.critics.items()})
            # R1's double backward cannot go through a compiled critic: R1 steps run it eagerly (same weights)
            self.wrapped.update({f"critic_eager.{k}": wrap(m, compile=False) for k, m in self.critics.items()})
        return self

    # ---- data -----------------------------------------------------------------------------------------------
    def dataset(self, split: str):
        """Training: unpaired MR/CT slices (subjects per domain: ``data.unpaired_subjects``); val/test: paired slices
        (for scoring only)."""
        from mudiff.data.synthrad import MRCTDataset

        data = MRCTDataset(self.cfg.data.root, split, unpaired=split == "train", seed=self.cfg.train.seed,
                           subjects=self.cfg.data.unpaired_subjects)
        height, width = image_shape(self.cfg.model)
        if (data.height, data.width) != (height, width):
            raise ValueError(f"the prepared slices in {self.cfg.data.root} are {data.height}x{data.width} but the "
                             f"model expects {height}x{width} (model.image_size x model.image_width); change the "
                             "config or prepare the data again")
        return data

    def train_batch(self, batch: dict[str, Any], step: int) -> dict[str, Tensor]:
        x = {d: batch[d].to(self.device, non_blocking=True).contiguous(memory_format=self.memory_format)
             for d in self.domains}
        return self.train_step_unpaired(x, step)

    # ---- one iteration --------------------------------------------------------------------------------------
    def _other(self, domain: str) -> str:
        return self.domains[1] if domain == self.domains[0] else self.domains[0]

    def _translate(self, x: Tensor, source: str) -> Tensor:
        return self.wrapped[f"translator.{source}_to_{self._other(source)}"](x)

    def _noisy_pair(self, x0: Tensor) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        t = self.schedule.sample_timesteps(x0.shape[0], self.device)
        x_t, x_tp1 = self.schedule.q_sample_pairs(x0, t)
        z = torch.randn(x0.shape[0], self.cfg.model.z_dim, device=self.device)
        return t, x_t, x_tp1, z

    def _denoise(self, domain: str, x_tp1: Tensor, condition: Tensor, t: Tensor, z: Tensor) -> Tensor:
        net = self.wrapped[f"diffusive.{domain}"]
        return net(torch.cat([x_tp1, condition], dim=1), x_tp1, t, z)

    def diffusive_critic_step(self, x: dict[str, Tensor], translated: dict[str, Tensor], step: int
                              ) -> dict[str, Tensor]:
        """D_diff^a and D_diff^b: softplus(-D(x_t)) + softplus(D(x_t_hat)), lazy R1 on the real x_t."""
        tc = self.cfg.train
        do_r1 = tc.r1_gamma > 0 and step % tc.lazy_reg == 0
        loss, r1_total = 0.0, 0.0
        for d in self.domains:
            t, x_t, x_tp1, z = self._noisy_pair(x[d])
            x_t.requires_grad_(do_r1)
            with torch.no_grad(), autocast(self.device, self.amp_dtype):
                x0_hat = self._denoise(d, x_tp1, translated[d], t, z)
            fake = self.schedule.posterior_sample(x0_hat, x_tp1, t)
            critic = self.wrapped[f"critic_eager.{d}" if do_r1 else f"critic.{d}"]  # R1: eager double backward
            with autocast(self.device, self.amp_dtype):
                with double_backward_convs(do_r1):
                    real_logit = critic(x_t, x_tp1, t)[0]
                fake_logit = self.wrapped[f"critic.{d}"](fake, x_tp1, t)[0]
            loss = loss + losses.critic_adversarial_loss(real_logit.float(), [fake_logit.float()])
            if do_r1:
                r1 = losses.r1_penalty(real_logit, x_t)
                r1_total = r1_total + r1.detach()
                loss = loss + 0.5 * tc.r1_gamma * (tc.lazy_reg if tc.r1_scale_by_interval else 1) * r1
        out = {"loss_d": loss.detach()}
        if do_r1:
            out["r1"] = r1_total
        _optimise(self.optimizers["critic"], loss)
        return out

    def patch_critic_step(self, x: dict[str, Tensor], translated: dict[str, Tensor]) -> dict[str, Tensor]:
        """D_nd^d: softplus(-D(x^d)) + softplus(D(G_nd^{o->d}(x^o))), averaged over the patch map."""
        loss = 0.0
        for d in self.domains:
            fake = translated[self._other(d)]  # made from the other domain's real image
            with autocast(self.device, self.amp_dtype):
                real_logits = self.wrapped[f"patch_critic.{d}"](x[d])
                fake_logits = self.wrapped[f"patch_critic.{d}"](fake)
            loss = loss + losses.critic_adversarial_loss(real_logits.float(), [fake_logits.float()])
        _optimise(self.optimizers["patch_critic"], loss)
        return {"loss_d_patch": loss.detach()}

    def generator_losses(self, x: dict[str, Tensor]) -> dict[str, Tensor]:
        """The generator's loss terms (each summed over both domains) and ``loss_g``, their weighted sum."""
        critics = [*self.patch_critics.parameters(), *(self.critics.parameters() if self.diffusive else [])]
        trainable = [p for p in critics if p.requires_grad]
        for p in trainable:  # no critic gradients (and no DDP sync) in this step
            p.requires_grad_(False)
        with autocast(self.device, self.amp_dtype):
            translated = {d: self._translate(x[d], d) for d in self.domains}  # attached: trained by every loss
            terms = {"adv_nd": 0.0, "cycle": 0.0}
            for d in self.domains:
                o = self._other(d)
                fake_logits = self.wrapped[f"patch_critic_frozen.{d}"](translated[o])
                terms["adv_nd"] = terms["adv_nd"] + losses.generator_adversarial_loss([fake_logits.float()])
                back = self._translate(translated[d], o)
                terms["cycle"] = terms["cycle"] + (back.float() - x[d]).abs().mean()
        if self.diffusive:
            terms.update(adv_diff=0.0, l1=0.0)
            for d in self.domains:
                t, _, x_tp1, z = self._noisy_pair(x[d])
                with autocast(self.device, self.amp_dtype):
                    x0_hat = self._denoise(d, x_tp1, translated[d], t, z)
                fake = self.schedule.posterior_sample(x0_hat, x_tp1, t)
                with autocast(self.device, self.amp_dtype):
                    logit = self.wrapped[f"critic_frozen.{d}"](fake, x_tp1, t)[0]
                terms["adv_diff"] = terms["adv_diff"] + losses.generator_adversarial_loss([logit.float()])
                terms["l1"] = terms["l1"] + (x0_hat.float() - x[d]).abs().mean()
        for p in trainable:
            p.requires_grad_(True)
        weights = self.loss_weights()
        terms["loss_g"] = sum(weights[k] * terms[k] for k in weights)
        return terms

    def loss_weights(self) -> dict[str, float]:
        """Weight of each generator loss term."""
        tc = self.cfg.train
        weights = {"adv_nd": tc.lambda_c, "cycle": tc.lambda_cycle}
        if self.diffusive:
            weights.update(adv_diff=tc.lambda_c, l1=tc.lambda_s)
        return weights

    def train_step_unpaired(self, x: dict[str, Tensor], step: int) -> dict[str, Tensor]:
        """One iteration on unpaired images x[d] (B, 1, H, W) in [-1, 1]: critics, then generators."""
        with torch.no_grad(), autocast(self.device, self.amp_dtype):
            translated = {d: self._translate(x[d], d).float() for d in self.domains}  # for both critic steps
        out = self.diffusive_critic_step(x, translated, step) if self.diffusive else {}
        out.update(self.patch_critic_step(x, translated))
        terms = self.generator_losses(x)
        _optimise(self.optimizers["generator"], terms["loss_g"])
        out.update({k: v.detach() for k, v in terms.items()})
        return out

    # ---- sampling -------------------------------------------------------------------------------------------
    @torch.no_grad()
    def translate(self, generator: CycleGenerators, images: Tensor, source: str, seeds: Sequence[int]) -> Tensor:
        """``source`` images (B, 1, H, W) in [-1, 1] -> the other domain's (B, 1, H, W): T reverse steps of
        G_diff conditioned on the real source image (CycleGAN: G_nd), image k seeded by ``seeds[k]`` alone."""
        if source not in self.domains:
            raise ValueError(f"source must be one of {self.domains}, got {source!r}")
        target = self._other(source)
        with autocast(self.device, self.amp_dtype):
            if not self.diffusive:
                return generator.translate(images, source, target).float()

            def denoise(x_tp1, condition, t, z):
                return generator.denoise(target, x_tp1, condition, t, z), None

            return self.schedule.sample(denoise, images, seeds, self.cfg.model.z_dim)[2]

    @torch.no_grad()
    def sample(self, generator: nn.Module, sources: Tensor, seeds: Sequence[int]
               ) -> tuple[Tensor, Tensor | None, Tensor]:
        """The task's direction (source domain -> target domain, e.g. MR -> CT)."""
        out = self.translate(generator, sources, self.domains[0], seeds)
        return out, None, out

    @torch.no_grad()
    def validate(self, generator: nn.Module, val_set, indices: Sequence[int], batch_size: int) -> dict[str, float]:
        """Both directions on paired val slices, inside the body mask: PSNR (images in [0, 1]; for CT the HU
        window) and, towards CT, the MAE in HU."""
        from mudiff.data.synthrad import HU_WINDOW

        a, b = self.domains
        sums: dict[str, list[Tensor]] = {}
        for start in range(0, len(indices), batch_size):
            items = [val_set[i] for i in indices[start:start + batch_size]]
            real = {d: torch.stack([it[d] for it in items]).to(self.device) for d in self.domains}
            mask = torch.stack([it["body_mask"] for it in items]).to(self.device)
            seeds = [it["index"] for it in items]
            for source, target in ((a, b), (b, a)):
                pred = (self.translate(generator, real[source], source, seeds) + 1) / 2
                truth = (real[target] + 1) / 2
                key = f"{source}_to_{target}"
                sums.setdefault(f"val_psnr_{key}", []).append(psnr(pred, truth, mask))
                if target == "ct":
                    err = ((pred - truth).abs() * mask).flatten(1).sum(1) / mask.flatten(1).sum(1).clamp(min=1)
                    sums.setdefault(f"val_mae_hu_{key}", []).append(err * (HU_WINDOW[1] - HU_WINDOW[0]))
        return {k: torch.cat(v).mean().item() for k, v in sums.items()}


class CycleGANMethod(SynDiffCycleMethod):
    """The non-diffusive translators alone against the PatchGAN critics (adversarial + cycle losses)."""

    diffusive = False


def _optimise(opt: torch.optim.Optimizer, loss: Tensor) -> None:
    opt.zero_grad(set_to_none=True)
    loss.backward()
    opt.step()


__all__ = ["SynDiffCycleMethod", "CycleGANMethod", "CycleGenerators", "cycle_domains", "image_shape"]
