"""MIDiffusion (Wang et al., IEEE TMI 2024): zero-shot cross-modality translation guided by local mutual
information (LMI), and its SDEdit baseline (Meng et al. 2022), as ``../shared/MIDIFFUSION.md`` describes them.

Both train a DDPM epsilon-network on slices of the **target contrast only** (``data.task``'s target; the task's
single source is only the validation source): T = ``model.ddpm_timesteps`` linear betas (1e-4 -> 0.02 at T =
1000, :class:`~mudiff.methods.ddpm.DDPMSchedule`), antithetic time steps, MSE on epsilon, images in [0, 1] (the
published data range, which the LMI grey levels assume; the Method interface's [-1, 1] is converted at the edges).

- ``midiffusion``: the network sees three channels [x_t, LMI(x0, x_{t+1}), LMI(x0, x0)] (x_{t+1} from the same
  noise, t + 1 clamped to T - 1). Translation of a source s of another contrast: LMI(s, s) once, then from pure
  noise x ~ N(0, I) every reverse step feeds [x, LMI(s, x), LMI(s, s)] (the maps are inputs, not gradients).
- ``sdedit``: an unconditional network (one channel [x_t]); translation noises s to t0 = ``sdedit_start`` * T and
  denoises it.

Both chains are DDPM ancestral steps with the "fixedlarge" variance on ``zero_shot_sampling_steps`` time steps
(all T: the published chain; fewer: respaced, beta from the alpha_bar ratio); SDEdit uses the same share of its
shorter chain (0: every step). Deliberate differences from the published code: the same LMI function
(``model.lmi_mode``, ``lmi_normalized``) in training and sampling (the spec's section 4); no noise added at the last
step (the published chain adds one of std 0.007); no gradient clipping, flips or blur (the shared Trainer's Adam).
Every image draws its noise from its own seed (:class:`~mudiff.diffusion.PerImageNoise`).
"""
from __future__ import annotations

from typing import Callable, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.utils.data import Dataset

from mudiff.config import RunConfig
from mudiff.data.target_slices import TargetSlices
from mudiff.data.tasks import parse_task
from mudiff.diffusion import PerImageNoise
from mudiff.methods.ddpm import DDPMSchedule
from mudiff.methods.unet_l1 import PlainUNet, UNetMethod, optimise
from mudiff.models.lmi import lmi
from mudiff.runtime import autocast

StepCallback = Callable[[int, Tensor], None]  # (time step just reached, -1 at the end; x (B, 1, H, W))


class MIDiffusionMethod(UNetMethod):
    """epsilon_theta([x_t, LMI(x0, x_{t+1}), LMI(x0, x0)], t) (``generator``), trained on the target contrast."""

    lmi_conditioned = True

    def __init__(self, cfg: RunConfig):
        mc = cfg.model
        super().__init__(cfg, PlainUNet(mc, 3 if self.lmi_conditioned else 1, linear_output=True))
        self.schedule = DDPMSchedule(mc.ddpm_timesteps)
        self.target, _ = parse_task(cfg.data.task)

    @property
    def network_evaluations(self) -> int:
        """Network evaluations per translated slice."""
        return len(self.timesteps())

    def lmi(self, src: Tensor, tgt: Tensor) -> Tensor:
        """The run's LMI map (``model.lmi_*``): src, tgt (B, 1, H, W) in [0, 1] -> (B, 1, H, W)."""
        mc = self.cfg.model
        return lmi(src, tgt, mc.lmi_patch, mc.lmi_sigma, mc.lmi_normalized, mc.lmi_mode)

    # ---- training -------------------------------------------------------------------------------------------
    def dataset(self, split: str) -> Dataset:
        """Training: the target slices alone (:class:`~mudiff.data.target_slices.TargetSlices`) with their
        self-LMI map LMI(x0, x0), computed once per slice; val/test: the task's slices (the validation source)."""
        slices = super().dataset(split)
        if split != "train":
            return slices
        return TargetSlices(slices, self.self_map if self.lmi_conditioned else None)

    def self_map(self, target: Tensor) -> Tensor:
        """LMI(x0, x0) of one target slice (1, H, W) in [-1, 1] -> (1, H, W), on the CPU."""
        x0 = (target[None].float() + 1) / 2
        return self.lmi(x0, x0)[0]

    def training_inputs(self, x0: Tensor, t: Tensor, noise: Tensor, self_map: Tensor | None = None
                        ) -> tuple[Tensor, Tensor]:
        """x0, noise (B, 1, H, W) (x0 in [0, 1]), t (B,) -> (network input (B, 3, H, W) =
        [x_t, LMI(x0, x_{t+1}), LMI(x0, x0)], x_t); ``self_map``: LMI(x0, x0) when already known."""
        x_t = self.schedule.add_noise(x0, noise, t)
        if not self.lmi_conditioned:
            return x_t, x_t
        x_next = self.schedule.add_noise(x0, noise, (t + 1).clamp(max=self.schedule.num_timesteps - 1))
        self_map = self.lmi(x0, x0) if self_map is None else self_map
        return torch.cat([x_t, self.lmi(x0, x_next), self_map], dim=1), x_t

    def antithetic_timesteps(self, batch: int) -> Tensor:
        """(B,) time steps: half uniform, the other half mirrored (T - 1 - t), as published."""
        steps = self.schedule.num_timesteps
        t = torch.randint(0, steps, ((batch + 1) // 2,), device=self.device)
        return torch.cat([t, steps - 1 - t])[:batch]

    def train_batch(self, batch: dict, step: int) -> dict[str, Tensor]:
        """One step on a batch of :class:`TargetSlices` (target slices only; ``map``: LMI(x0, x0) if given)."""
        x0 = (batch["target"].to(self.device, non_blocking=True) + 1) / 2
        t = self.antithetic_timesteps(x0.shape[0])
        noise = torch.randn_like(x0)
        self_map = batch["map"].to(self.device) if "map" in batch else None
        inputs, x_t = self.training_inputs(x0, t, noise, self_map)
        with autocast(self.device, self.amp_dtype):
            pred = self.wrapped["generator"](inputs, t, x_t)
        loss = F.mse_loss(pred.float(), noise)
        optimise(self.optimizers["generator"], loss)
        return {"mse": loss.detach(), "loss_g": loss.detach()}

    # ---- translation ----------------------------------------------------------------------------------------
    def start_step(self) -> int:
        """The time step the reverse chain starts from (T - 1: pure noise)."""
        return self.schedule.num_timesteps - 1

    def timesteps(self, steps: int | None = None) -> list[int]:
        """The reverse chain's time steps, evenly spread from :meth:`start_step` down to 0: ``steps`` of them
        (default ``model.zero_shot_sampling_steps``; 0: all T; SDEdit takes the same share of its shorter chain)."""
        start, total = self.start_step(), self.schedule.num_timesteps
        steps = (self.cfg.model.zero_shot_sampling_steps if steps is None else steps) or total
        if not 1 <= steps <= total:
            raise ValueError(f"steps must be in [1, {total}], got {steps}")
        count = min(start + 1, max(1, round(steps * (start + 1) / total)))
        return torch.linspace(start, 0, count).round().long().tolist()

    def check_source(self, source: Tensor, source_contrast: str | None, lmi_mode: str | None) -> None:
        """Clear errors for a source the model cannot translate."""
        mc = self.cfg.model
        if source.ndim != 4 or source.shape[1] != 1:
            raise ValueError(f"the source must be (B, 1, H, W), got {tuple(source.shape)}")
        if tuple(source.shape[2:]) != (mc.image_size, mc.image_size):
            raise ValueError(f"the source is {source.shape[2]}x{source.shape[3]} but the model was trained on "
                             f"{mc.image_size}x{mc.image_size} slices (model.image_size); resize it first")
        if not torch.isfinite(source).all():
            raise ValueError("the source contains NaN or infinite values")
        if source_contrast is not None and source_contrast == self.target:
            raise ValueError(f"the source contrast {source_contrast!r} is the contrast this model was trained on "
                             "(its target): a zero-shot translation needs a source of another contrast")
        if lmi_mode is not None and lmi_mode != mc.lmi_mode:
            raise ValueError(f"this run was trained with model.lmi_mode={mc.lmi_mode!r}; sampling with "
                             f"{lmi_mode!r} would feed the network maps it never saw")

    def initial_state(self, source: Tensor, noise: PerImageNoise) -> Tensor:
        """x at :meth:`start_step`: pure noise (B, 1, H, W)."""
        return noise.randn(1, *source.shape[2:])

    def guide(self, source: Tensor) -> Callable[[Tensor], Tensor]:
        """x (B, 1, H, W) -> the network input [x, LMI(s, x), LMI(s, s)] (B, 3, H, W) for source s."""
        self_map = self.lmi(source, source)
        return lambda x: torch.cat([x, self.lmi(source, x), self_map], dim=1)

    @torch.no_grad()
    def translate(self, generator: nn.Module, source: Tensor, seeds: Sequence[int], source_contrast: str | None = None,
                  steps: int | None = None, lmi_mode: str | None = None, on_step: StepCallback | None = None
                  ) -> Tensor:
        """source (B, 1, H, W) in [0, 1], of a contrast other than the target -> (B, 1, H, W) in [0, 1].

        ``seeds``: one per image (image k depends on ``seeds[k]`` alone); ``steps``: the reverse steps (default
        ``model.zero_shot_sampling_steps``); ``lmi_mode``: checked against the run's; ``on_step(t, x)`` after each
        step (for snapshots)."""
        self.check_source(source, source_contrast, lmi_mode)
        if len(seeds) != source.shape[0]:
            raise ValueError(f"need one seed per image: {len(seeds)} seeds for a batch of {source.shape[0]}")
        source = source.float().to(self.device)
        noise = PerImageNoise(seeds, self.device)
        guide = self.guide(source)
        x = self.initial_state(source, noise)
        batch = source.shape[0]
        schedule = self.timesteps(steps)
        for t, t_prev in zip(schedule, schedule[1:] + [-1]):
            now, then = (torch.full((batch,), s, dtype=torch.long, device=self.device) for s in (t, t_prev))
            inputs = guide(x)  # outside autocast: the LMI maps in float32, as in training (bf16 shifts them)
            with autocast(self.device, self.amp_dtype):
                eps = generator(inputs, now, x).float()
            x = self.schedule.ancestral_step(x, eps, now, then, noise.randn(1, *x.shape[2:]))
            if on_step is not None:
                on_step(t_prev, x)
        if not torch.isfinite(x).all():
            raise FloatingPointError(f"the reverse chain of {self.cfg.model.method} diverged (non-finite values); "
                                     "check the run (its loss) and model.ddpm_timesteps")
        return x.clamp(0, 1)

    @torch.no_grad()
    def sample(self, generator: nn.Module, sources: Tensor, seeds: Sequence[int]
               ) -> tuple[Tensor, Tensor | None, Tensor]:
        """The Method interface: the task's single source (B, 1, H, W) in [-1, 1] -> its translation in [-1, 1]."""
        out = self.translate(generator, (sources[:, :1] + 1) / 2, seeds) * 2 - 1
        return out, None, out


class SDEditMethod(MIDiffusionMethod):
    """SDEdit: an unconditional epsilon_theta(x_t, t) of the target contrast; the source noised to
    t0 = ``sdedit_start`` * T, then denoised."""

    lmi_conditioned = False

    def start_step(self) -> int:
        total = self.schedule.num_timesteps
        return min(total - 1, max(0, round(self.cfg.model.sdedit_start * total) - 1))

    def initial_state(self, source: Tensor, noise: PerImageNoise) -> Tensor:
        """x_{t0} = sqrt(alpha_bar_t0) s + sqrt(1 - alpha_bar_t0) z."""
        t0 = torch.full((source.shape[0],), self.start_step(), dtype=torch.long, device=source.device)
        return self.schedule.add_noise(source, noise.randn(1, *source.shape[2:]), t0)

    def guide(self, source: Tensor) -> Callable[[Tensor], Tensor]:
        return lambda x: x


__all__ = ["MIDiffusionMethod", "SDEditMethod"]
