"""Typed configs: one dataclass per concern, loaded from YAML, validated, saved as ``config.json``.

A run is described entirely by a :class:`RunConfig` (data + model + train). It is written into the run folder
and into every checkpoint, so sampling and evaluation rebuild everything from a checkpoint alone.
"""
from __future__ import annotations

import json
import math
import types
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any, Callable, Iterable, Union, get_type_hints

import yaml

MODEL_VARIANTS = ("mudiff", "single", "two_f1", "no_tau")
"""``mudiff``: F1 + F2 (rho, tau); ``single``: F1 only (abl1, supervised SynDiff); ``two_f1``: two F1-type
networks (abl2); ``no_tau``: F2 with rho but without tau (abl3)."""

PAIRED_METHODS = ("mudiff", "pix2pix", "ddpm", "unet_l1", "copy_source")
"""``mudiff``: MU-Diff and its ablations (``model.variant``); the others are the baselines of the comparison."""
CYCLE_METHODS = ("syndiff_cycle", "cyclegan")
"""Unpaired MR <-> CT (issue 10): SynDiff's cycle-consistent adversarial diffusion and its CycleGAN part."""
ZERO_SHOT_METHODS = ("midiffusion", "sdedit")
"""Zero-shot translation (issue 12): MIDiffusion, trained on the target contrast only, and its SDEdit baseline."""
CLASS_METHODS = ("class_ddpm", "wgan_gp", "cwgan_gp")
"""Class-conditioned generation (issue 11): methods trained on labelled slices, not the paired task."""
METHODS = PAIRED_METHODS + CYCLE_METHODS + ZERO_SHOT_METHODS + CLASS_METHODS
"""Every ``model.method``; each is a class of :data:`mudiff.methods.REGISTRY`."""
UNPAIRED_SUBJECTS = ("disjoint", "shared")
"""Cycle methods' training batches: MR and CT slices from disjoint halves of the training subjects (no subject in
both domains), or both from every training subject, each stream shuffled on its own (SYNDIFF_CYCLE.md section 8)."""
LMI_MODES = ("faithful", "corrected")  # mudiff/models/lmi.py: the published LMI arithmetic, or clipped inputs
CLASS_CONDITIONINGS = ("embedding", "faithful", "none")
"""``embedding``: a class embedding with classifier-free guidance (default); ``faithful``: DF_MRI's additive bias
from the scalar label; ``none``: unconditional (the "no label" ablation)."""
CLASS_SAMPLERS = ("ddim", "ancestral")

MASK_HEADS = ("learned", "fixed")
PRECISIONS = ("auto", "bf16", "fp32")
COMPILE_MODES = ("default", "reduce-overhead", "max-autotune", "max-autotune-no-cudagraphs")


@dataclass
class DataConfig:
    """Where the prepared slices live and which synthesis task to train."""

    root: str = "data/slices"  # output folder of `python -m mudiff prepare`
    task: str = "t1ce_from_flair_t2_t1"  # "<target>_from_<source>_<source>..."
    num_workers: int = 0
    unpaired_subjects: str = "disjoint"  # cycle methods' training subjects per domain (UNPAIRED_SUBJECTS)

    def validate(self) -> None:
        from mudiff.data.tasks import parse_task  # local import: config must not pull in torch data code

        parse_task(self.task)
        if self.num_workers < 0:
            raise ValueError(f"data.num_workers must be >= 0, got {self.num_workers}")
        if self.unpaired_subjects not in UNPAIRED_SUBJECTS:
            raise ValueError(f"data.unpaired_subjects must be one of {UNPAIRED_SUBJECTS}, got "
                             f"{self.unpaired_subjects!r}")


@dataclass
class ModelConfig:
    """Architecture of the two generators and the critic (spec section 2, 3); sizes never live in code."""

    method: str = "mudiff"
    image_size: int = 256
    num_sources: int = 3
    base_channels: int = 64  # nf
    channel_mult: tuple[int, ...] = (1, 2, 4)
    num_res_blocks: int = 2
    z_dim: int = 100
    style_dim: int = 256
    num_timesteps: int = 4
    beta_min: float = 0.1
    beta_max: float = 20.0
    dropout: float = 0.0
    variant: str = "mudiff"
    critic_channels: int = 64  # nf of the critic
    critic_sees_sources: bool = False
    # the published random projection: the learned head is worse on the lesion, so not "no worse" (spec section 3;
    # benchmarks/results/study_mask_head_external_cpu.json)
    mask_head: str = "fixed"
    ddpm_timesteps: int = 1000  # the conventional DDPM baseline's training steps
    ddpm_sampling_steps: int = 100  # its (strided) sampling steps
    # ---- syndiff_cycle / cyclegan (unpaired MR <-> CT, SYNDIFF_CYCLE.md) ----
    image_width: int = 0  # 0: square; else images are image_size (height) x image_width (cycle methods only)
    translator_channels: int = 32  # ngf of the non-diffusive ResNet translators G_nd
    translator_blocks: int = 6  # their residual blocks (ResNet-6)
    patch_critic_channels: int = 32  # nf of the PatchGAN critics D_nd
    # ---- midiffusion / sdedit (zero-shot translation, issue 12); T is ddpm_timesteps (linear betas 1e-4 -> 0.02) ----
    lmi_mode: str = "faithful"  # faithful | corrected (mudiff/models/lmi.py), for training and sampling alike
    lmi_patch: int = 3  # odd patch size p (p^3 histogram bins)
    lmi_sigma: float = 2.0  # the published MIsigma: Parzen kernel std 2 sigma^2 grey levels
    lmi_normalized: bool = True  # 2 MI / (H(src) + H(tgt)) instead of MI in bits
    zero_shot_sampling_steps: int = 0  # reverse steps: 0 = all T (the published chain), fewer = respaced
    sdedit_start: float = 0.5  # SDEdit: the source is noised to t = sdedit_start * T, then denoised
    # ---- class-conditioned generation (class_ddpm, wgan_gp, cwgan_gp; issue 11) ----
    num_classes: int = 2  # classes of the labelled slices (checked against their manifest)
    image_channels: int = 1  # channels (contrasts) of the labelled slices
    class_conditioning: str = "embedding"  # embedding (+ classifier-free guidance) | faithful | none
    label_dropout: float = 0.1  # embedding: share of training labels replaced by the null label
    guidance_scale: float = 2.0  # eps_null + w (eps_class - eps_null): 0 = unconditional, 1 = conditional
    class_beta_max: float = 0.02  # class_ddpm: linear betas 1e-4 -> this at T = 1000 (DF_MRI: 0.02 or 0.04)
    class_sampler: str = "ddim"  # ddim (ddpm_sampling_steps) | ancestral (all ddpm_timesteps, sigma^2 = beta)

    def validate(self) -> None:
        def positive(name: str) -> None:
            if getattr(self, name) <= 0:
                raise ValueError(f"model.{name} must be > 0, got {getattr(self, name)}")

        for name in ("image_size", "num_sources", "base_channels", "num_res_blocks", "z_dim", "style_dim",
                     "num_timesteps", "critic_channels"):
            positive(name)
        if not self.channel_mult or any(m <= 0 for m in self.channel_mult):
            raise ValueError(f"model.channel_mult must be a non-empty list of positive ints, got {self.channel_mult}")
        halvings = len(self.channel_mult) - 1
        if self.image_size % (2 ** halvings):
            raise ValueError(
                f"model.image_size={self.image_size} cannot be halved {halvings} times by the U-Net "
                f"(channel_mult has {len(self.channel_mult)} levels); use a multiple of {2 ** halvings}")
        if self.image_size < 16 or self.image_size % 16:
            raise ValueError(
                f"model.image_size={self.image_size}: the critic's mask is read at 1/8 of the image and its body "
                "halves it further; use a multiple of 16 (>= 16)")
        if self.base_channels % 8 or self.critic_channels % 8:
            raise ValueError("model.base_channels and model.critic_channels must be multiples of 8 (GroupNorm)")
        if not 0.0 < self.beta_min < self.beta_max:
            raise ValueError(f"need 0 < model.beta_min < model.beta_max, got {self.beta_min}, {self.beta_max}")
        if not 0.0 <= self.dropout < 1.0:
            raise ValueError(f"model.dropout must be in [0, 1), got {self.dropout}")
        if self.method not in METHODS:
            raise ValueError(f"model.method must be one of {METHODS}, got {self.method!r}")
        if self.ddpm_sampling_steps < 1 or (self.method in ("ddpm", "class_ddpm")  # the methods that sample with it
                                            and self.ddpm_sampling_steps > self.ddpm_timesteps):
            raise ValueError("need 1 <= model.ddpm_sampling_steps <= model.ddpm_timesteps, got "
                             f"{self.ddpm_sampling_steps}, {self.ddpm_timesteps}")
        if self.variant not in MODEL_VARIANTS:
            raise ValueError(f"model.variant must be one of {MODEL_VARIANTS}, got {self.variant!r}")
        if self.mask_head not in MASK_HEADS:
            raise ValueError(f"model.mask_head must be one of {MASK_HEADS}, got {self.mask_head!r}")
        # zero-shot translation
        if self.lmi_mode not in LMI_MODES:
            raise ValueError(f"model.lmi_mode must be one of {LMI_MODES}, got {self.lmi_mode!r}")
        if self.lmi_patch < 3 or self.lmi_patch % 2 == 0:
            raise ValueError(f"model.lmi_patch must be an odd integer >= 3 (published: 3), got {self.lmi_patch}")
        if not self.lmi_sigma > 0:
            raise ValueError(f"model.lmi_sigma must be > 0, got {self.lmi_sigma}")
        if not 0 <= self.zero_shot_sampling_steps <= self.ddpm_timesteps:
            raise ValueError("need 0 <= model.zero_shot_sampling_steps <= model.ddpm_timesteps, got "
                             f"{self.zero_shot_sampling_steps}, {self.ddpm_timesteps}")
        if not 0.0 < self.sdedit_start <= 1.0:
            raise ValueError(f"model.sdedit_start must be in (0, 1], got {self.sdedit_start}")
        if self.method in ZERO_SHOT_METHODS and self.num_sources != 1:
            raise ValueError(f"model.method={self.method!r} translates one source contrast (its validation source; "
                             f"it trains on the target only): use a task '<target>_from_<source>' and "
                             f"model.num_sources=1, got {self.num_sources}")
        # class-conditioned generation
        for name in ("num_classes", "image_channels"):
            positive(name)
        if self.class_conditioning not in CLASS_CONDITIONINGS:
            raise ValueError(f"model.class_conditioning must be one of {CLASS_CONDITIONINGS}, "
                             f"got {self.class_conditioning!r}")
        if self.class_sampler not in CLASS_SAMPLERS:
            raise ValueError(f"model.class_sampler must be one of {CLASS_SAMPLERS}, got {self.class_sampler!r}")
        if not 0.0 <= self.label_dropout < 1.0:
            raise ValueError(f"model.label_dropout must be in [0, 1), got {self.label_dropout}")
        if self.guidance_scale < 0:
            raise ValueError(f"model.guidance_scale must be >= 0, got {self.guidance_scale}")
        if (self.method == "class_ddpm" and self.class_conditioning == "embedding" and self.label_dropout == 0
                and self.guidance_scale != 1):
            raise ValueError(f"model.guidance_scale={self.guidance_scale} needs the null label, which "
                             "model.label_dropout=0 never trains; set guidance_scale 1 or label_dropout > 0")
        if not 1e-4 < self.class_beta_max < 1.0:
            raise ValueError(f"model.class_beta_max must be in (1e-4, 1), got {self.class_beta_max}")
        self._validate_cycle(halvings)

    def _validate_cycle(self, halvings: int) -> None:
        """The cycle methods' fields (issue 10); rectangular images only for them."""
        if self.image_width < 0:
            raise ValueError(f"model.image_width must be >= 0 (0: square), got {self.image_width}")
        if self.image_width and self.method not in CYCLE_METHODS:
            raise ValueError(f"model.image_width (rectangular images) is supported by {CYCLE_METHODS} only, not by "
                             f"model.method={self.method!r}; set it to 0")
        if self.image_width % (2 ** halvings) or (self.image_width and self.image_width < 16):
            raise ValueError(f"model.image_width={self.image_width} cannot be halved {halvings} times by the U-Net; "
                             f"use a multiple of {2 ** halvings} (>= 16)")
        if self.image_width % 16:
            raise ValueError(f"model.image_width={self.image_width}: the critics need a multiple of 16")
        for name in ("translator_channels", "translator_blocks", "patch_critic_channels"):
            if getattr(self, name) <= 0:
                raise ValueError(f"model.{name} must be > 0, got {getattr(self, name)}")


@dataclass
class TrainConfig:
    """Losses, optimisation and bookkeeping (spec section 4)."""

    epochs: int = 30
    max_steps: int = 0  # stop after this many iterations in total (0: run all epochs)
    batch_size: int = 3  # per process
    lr_g: float = 1.6e-4
    lr_d: float = 1e-4
    lr_min: float = 1e-5
    adam_betas: tuple[float, float] = (0.5, 0.9)
    lambda_c: float = 1.0  # adversarial
    lambda_s: float = 0.5  # L1 to the target
    lambda_m: float = 0.1  # feature-attentive mask loss
    lambda_l1_pix2pix: float = 100.0  # Pix2Pix baseline: L1 weight against its adversarial loss
    use_critic: bool = True  # False: L_s only (the FID ablation)
    mask_loss: bool = True  # False: abl4
    r1_gamma: float = 1.0
    lazy_reg: int = 10
    r1_scale_by_interval: bool = True  # False reproduces the published code (unscaled lazy R1)
    ema_decay: float = 0.999  # 0 disables the EMA copy of the generators
    ema_debias: bool = False  # True: step n enters with weight (1 - d) / (1 - d^n), so the initial weights keep
    #   no share (an unbiased average even in short runs); False: the published plain EMA (share d^n remains)
    precision: str = "auto"  # auto: bf16 autocast on a CUDA device that supports it, fp32 elsewhere
    channels_last: bool | None = None  # None (auto): on a CPU (faster convolutions), off on CUDA (see runtime)
    compile: bool | None = None  # None (auto): torch.compile the networks on CUDA, not on a CPU
    compile_mode: str = "default"  # torch.compile mode: default, reduce-overhead (CUDA graphs), max-autotune...
    seed: int = 0
    device: str = "auto"
    checkpoint_every: int = 200  # steps between checkpoints (and always at the end of each epoch)
    log_every: int = 10  # steps between stats.jsonl lines
    val_slices: int = 32  # validation slices scored after each epoch (0: no validation)
    # a validation score to maximise (e.g. val_psnr_mutual): checkpoints/best.pt is then the run's state at its best
    # validation, beside checkpoints/last.pt; "" = off
    keep_best: str = ""
    # ---- syndiff_cycle / cyclegan (issue 10) ----
    lambda_cycle: float = 0.5  # cycle-consistency L1 (SynDiff: 0.5; the CycleGAN paper: 10)
    # ---- WGAN-GP baselines (wgan_gp, cwgan_gp; issue 11) ----
    gp_weight: float = 10.0  # lambda of the gradient penalty
    n_critic: int = 5  # critic steps per generator step

    def validate(self) -> None:
        for name in ("epochs", "batch_size", "lazy_reg", "checkpoint_every", "log_every"):
            if getattr(self, name) <= 0:
                raise ValueError(f"train.{name} must be > 0, got {getattr(self, name)}")
        for name in ("max_steps", "val_slices"):
            if getattr(self, name) < 0:
                raise ValueError(f"train.{name} must be >= 0, got {getattr(self, name)}")
        for name in ("lr_g", "lr_d"):
            if getattr(self, name) <= 0:
                raise ValueError(f"train.{name} must be > 0, got {getattr(self, name)}")
        if not 0 <= self.lr_min <= min(self.lr_g, self.lr_d):
            raise ValueError(f"train.lr_min must be in [0, min(lr_g, lr_d)], got {self.lr_min}")
        for name in ("lambda_c", "lambda_s", "lambda_m", "lambda_l1_pix2pix", "lambda_cycle", "r1_gamma"):
            if getattr(self, name) < 0:  # a negative weight would reward the loss it weighs
                raise ValueError(f"train.{name} must be >= 0, got {getattr(self, name)}")
        if not 0.0 <= self.ema_decay < 1.0:
            raise ValueError(f"train.ema_decay must be in [0, 1), got {self.ema_decay}")
        if self.compile_mode not in COMPILE_MODES:
            raise ValueError(f"train.compile_mode must be one of {COMPILE_MODES}, got {self.compile_mode!r}")
        if self.precision not in PRECISIONS:
            raise ValueError(f"train.precision must be one of {PRECISIONS}, got {self.precision!r}")
        if len(self.adam_betas) != 2 or not all(0 <= b < 1 for b in self.adam_betas):
            raise ValueError(f"train.adam_betas must be two numbers in [0, 1), got {self.adam_betas}")
        if self.keep_best and not (self.keep_best.startswith("val_") and self.val_slices):
            raise ValueError(f"train.keep_best must name a validation score (val_...) of a run that validates "
                             f"(train.val_slices > 0), got {self.keep_best!r} with val_slices={self.val_slices}")
        if self.gp_weight < 0 or self.n_critic < 1:
            raise ValueError(f"need train.gp_weight >= 0 and train.n_critic >= 1, got {self.gp_weight}, "
                             f"{self.n_critic}")


@dataclass
class RunConfig:
    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    train: TrainConfig = field(default_factory=TrainConfig)

    def validate(self) -> "RunConfig":
        self.data.validate()
        self.model.validate()
        self.train.validate()
        from mudiff.data.tasks import parse_task

        _, sources = parse_task(self.data.task)
        if len(sources) != self.model.num_sources:
            raise ValueError(
                f"data.task {self.data.task!r} has {len(sources)} source(s) but model.num_sources="
                f"{self.model.num_sources}")
        if self.model.variant == "single" and self.train.mask_loss and self.train.use_critic:
            # The mask loss compares two networks; a single network has nothing to compare with.
            self.train.mask_loss = False
        return self

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def unread(self) -> frozenset[str]:
        """Fields ("section.name") that the run's method never reads, so that two runs differing only there (e.g.
        by a default changed since one was trained) are the same experiment (:data:`READ_ONLY_BY`)."""
        return frozenset(name for name, reads in READ_ONLY_BY.items() if not reads(self))

    def differences(self, other: "RunConfig", ignore: Iterable[str] = ()) -> dict[str, tuple[Any, Any]]:
        """{"section.name": (this value, other's)} of the fields in which the two configs differ, except ``ignore``
        and the fields that neither run reads (:meth:`unread`)."""
        a, b = self.to_dict(), other.to_dict()
        skip = {*ignore, *(self.unread() & other.unread())}
        return {f"{s}.{k}": (a[s][k], b[s][k]) for s in a for k in a[s]
                if f"{s}.{k}" not in skip and a[s][k] != b[s][k]}

    @classmethod
    def from_dict(cls, raw: dict[str, Any]) -> "RunConfig":
        unknown = set(raw) - {f.name for f in fields(cls)}
        if unknown:
            raise ValueError(f"unknown config section(s) {sorted(unknown)}; expected data, model, train")
        return cls(data=_build(DataConfig, raw.get("data"), "data"),
                   model=_build(ModelConfig, raw.get("model"), "model"),
                   train=_build(TrainConfig, raw.get("train"), "train")).validate()

    def save(self, path: str | Path) -> None:
        Path(path).write_text(json.dumps(self.to_dict(), indent=2) + "\n")


READ_ONLY_BY: dict[str, Callable[[RunConfig], bool]] = {
    "model.mask_head": lambda cfg: cfg.model.method == "mudiff" and cfg.train.use_critic,
    "data.unpaired_subjects": lambda cfg: cfg.model.method in CYCLE_METHODS,
}
"""Fields that only some runs read, with the test of whether a run does: the MU-Diff critic's mask head (MU-Diff
with a critic), the unpaired training subjects (the cycle methods)."""


def _build(cls: type, raw: dict[str, Any] | None, section: str):
    if raw is not None and not isinstance(raw, dict):
        raise ValueError(f"config section {section!r} must be a mapping of field: value, got {raw!r}")
    raw = dict(raw or {})
    hints = get_type_hints(cls)
    known = {f.name for f in fields(cls)}
    unknown = set(raw) - known
    if unknown:
        raise ValueError(f"unknown field(s) in section {section!r}: {sorted(unknown)}; known: {sorted(known)}")
    kwargs = {}
    for name, value in raw.items():
        kwargs[name] = _coerce(value, hints[name], f"{section}.{name}")
    return cls(**kwargs)


def _coerce(value: Any, hint: Any, where: str) -> Any:
    """Check a YAML/CLI value against a field's type; tuples come from YAML lists."""
    origin = getattr(hint, "__origin__", None)
    if isinstance(hint, types.UnionType) or origin is Union:  # `X | None`: null means "auto"
        inner = [a for a in hint.__args__ if a is not type(None)]
        return None if value is None else _coerce(value, inner[0], where)
    if origin is tuple:
        if not isinstance(value, (list, tuple)):
            raise ValueError(f"{where} must be a list, got {value!r}")
        item = hint.__args__[0]
        return tuple(_coerce(v, item, where) for v in value)
    if hint is bool:
        if not isinstance(value, bool):
            raise ValueError(f"{where} must be true or false, got {value!r}")
        return value
    if hint is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ValueError(f"{where} must be an integer, got {value!r}")
        return value
    if hint is float:
        if isinstance(value, str):  # YAML 1.1 reads "1e-4" (no dot) as a string
            try:
                value = float(value)
            except ValueError:
                pass
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ValueError(f"{where} must be a number, got {value!r}")
        if not math.isfinite(value):
            raise ValueError(f"{where} must be a finite number, got {value!r}")
        return float(value)
    if hint is str:
        if not isinstance(value, str):
            raise ValueError(f"{where} must be a string, got {value!r}")
        return value
    return value


def apply_overrides(raw: dict[str, Any], overrides: list[str]) -> dict[str, Any]:
    """Apply ``section.key=value`` strings (values parsed as YAML) to a raw config dict."""
    raw = json.loads(json.dumps(raw))  # deep copy
    for item in overrides:
        key, sep, value = item.partition("=")
        section, dot, name = key.partition(".")
        if not sep or not dot or not name:
            raise ValueError(f"override {item!r} must look like section.key=value, e.g. train.epochs=2")
        if raw.get(section) is None:  # absent, or an empty section in the YAML
            raw[section] = {}
        if not isinstance(raw[section], dict):
            raise ValueError(f"config section {section!r} must be a mapping of field: value, got {raw[section]!r}")
        raw[section][name] = yaml.safe_load(value)
    return raw


def load_config(path: str | Path | None = None, overrides: list[str] | None = None) -> RunConfig:
    """Read a YAML (or config.json) file, apply ``--set`` overrides, validate."""
    raw: dict[str, Any] = {}
    if path is not None:
        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(f"config file {path} does not exist")
        text = path.read_text()
        try:
            raw = (json.loads(text) if path.suffix == ".json" else yaml.safe_load(text)) or {}
        except (json.JSONDecodeError, yaml.YAMLError) as err:
            raise ValueError(f"config file {path} cannot be parsed: {err}") from None
        if not isinstance(raw, dict):
            raise ValueError(f"config file {path} must hold a mapping with sections data/model/train")
    return RunConfig.from_dict(apply_overrides(raw, overrides or []))


def replace(cfg: RunConfig, **sections: dict[str, Any]) -> RunConfig:
    """A validated copy of ``cfg`` with some fields changed, e.g. ``replace(cfg, model={"num_timesteps": 8})``."""
    raw = cfg.to_dict()
    for section, changes in sections.items():
        raw[section].update(changes)
    return RunConfig.from_dict(raw)


__all__ = ["DataConfig", "ModelConfig", "TrainConfig", "RunConfig", "load_config", "apply_overrides", "replace",
           "PAIRED_METHODS", "METHODS", "MODEL_VARIANTS", "MASK_HEADS", "PRECISIONS", "COMPILE_MODES", "CYCLE_METHODS",
           "ZERO_SHOT_METHODS", "LMI_MODES", "CLASS_METHODS", "CLASS_CONDITIONINGS", "CLASS_SAMPLERS"]
