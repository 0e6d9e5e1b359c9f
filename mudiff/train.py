"""The training loop shared by every method (MU-Diff, its ablations, the baselines).

A :class:`Trainer` owns the data, the epochs, the learning-rate schedule, the EMA copy, validation and the run
folder; the :class:`~mudiff.methods.Method` owns the networks, optimisers and what one iteration does (for
MU-Diff: one critic step, then one generator step, spec section 4)::

    run_dir/config.json        the RunConfig
    run_dir/data_manifest.json the prepared data's manifest (preprocessing, split, checksums)
    run_dir/stats.jsonl        one JSON line per log step and per validation
    run_dir/checkpoints/last.pt
    run_dir/.training.lock     held while a process trains the run (a second one is refused, not interleaved)

Methods and ablations are config switches (``model.method``, ``model.variant``, ``train.use_critic``,
``train.mask_loss``, ``model.num_timesteps``), not forks of this code. Launched by ``torchrun`` it trains data-parallel.
"""
from __future__ import annotations

import contextlib
import copy
import json
import math
import os
import socket
import time
import warnings
from pathlib import Path
from typing import Any, Callable, Iterator

import torch
from torch import Tensor, nn
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DataLoader, Sampler
from tqdm.auto import tqdm

from mudiff.checkpoint import checkpoint_config, load_checkpoint, save_checkpoint
from mudiff.config import RunConfig, load_config
from mudiff.data.prepare import load_manifest
from mudiff.methods import Method, build_method
from mudiff.runtime import (autocast_dtype, configure_backends, init_process_group, memory_format,
                            peak_memory_mb, resolve_device, use_compile)

Callback = Callable[[dict[str, Any]], None]

# Fields that may change when a run is resumed; anything else must match the run's config.json.
RESUMABLE_CHANGES = {"train.epochs", "train.max_steps", "train.checkpoint_every", "train.log_every",
                     "train.val_slices", "train.keep_best", "train.device", "train.compile", "train.compile_mode",
                     "data.num_workers", "data.root"}


class NonFiniteLossError(RuntimeError):
    """Raised when a loss becomes NaN or infinite; the last good checkpoint is left untouched."""


class RunInUseError(RuntimeError):
    """Raised when another process is training the same run folder, or has trained it since it was read."""


def _file_stamp(path: Path) -> tuple[int, int] | None:
    """(modification time in ns, size) of a file, None when it does not exist."""
    try:
        stat = path.stat()
    except FileNotFoundError:
        return None
    return stat.st_mtime_ns, stat.st_size


@contextlib.contextmanager
def run_lock(run_dir: Path) -> Iterator[None]:
    """Hold ``run_dir/.training.lock`` exclusively while training, so that two processes (two notebooks, a
    notebook and ``mudiff train``) never write one run's checkpoints in turn; the OS releases it when the process
    dies, so a killed run leaves no stale lock. Without ``fcntl`` (Windows) nothing is locked."""
    try:
        import fcntl
    except ImportError:
        yield
        return
    run_dir.mkdir(parents=True, exist_ok=True)
    with open(run_dir / ".training.lock", "a+") as f:
        try:
            fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            f.seek(0)
            raise RunInUseError(f"{run_dir} is being trained by another process ({f.read().strip() or 'unknown'}); "
                                "wait for it to finish, or train into another run folder") from None
        f.truncate(0)
        f.write(f"pid {os.getpid()} on {socket.gethostname()}\n")
        f.flush()
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


class EpochSampler(Sampler[int]):
    """A seeded shuffle per epoch, sharded over processes, that can start mid-epoch (for resuming).

    Every rank gets the same number of indices (the permutation is padded by wrapping, as in
    ``DistributedSampler``), so all ranks take the same number of steps.
    """

    def __init__(self, size: int, seed: int, rank: int = 0, world_size: int = 1):
        self.size, self.seed, self.rank, self.world_size = size, seed, rank, world_size
        self.per_rank = math.ceil(size / world_size)
        self.epoch, self.start = 0, 0

    def set_position(self, epoch: int, start: int = 0) -> None:
        """Iterate epoch ``epoch`` from its ``start``-th index (of this rank) on."""
        self.epoch, self.start = epoch, start

    def __iter__(self) -> Iterator[int]:
        g = torch.Generator().manual_seed(self.seed * 100_003 + self.epoch)
        perm = torch.randperm(self.size, generator=g).tolist()
        perm += perm[: self.per_rank * self.world_size - self.size]
        return iter(perm[self.rank::self.world_size][self.start:])

    def __len__(self) -> int:
        return self.per_rank - self.start


class Trainer:
    """Trains the configured method in ``run_dir``; resumes when a checkpoint is there."""

    def __init__(self, cfg: RunConfig, run_dir: str | Path, callbacks: list[Callback] | None = None):
        self.cfg, self.run_dir = cfg, Path(run_dir)
        self.callbacks = list(callbacks or [])
        tc = cfg.train
        self.device = resolve_device(tc.device)
        self.group = init_process_group(self.device)
        self.amp_dtype = autocast_dtype(tc.precision, self.device)
        self.memory_format = memory_format(tc.channels_last, self.device)
        self.compile = use_compile(tc.compile, self.device)
        configure_backends(self.device)
        self._ddp: dict[int, DistributedDataParallel] = {}
        torch.manual_seed(tc.seed * 1009 + self.group.rank)

        self.method: Method = build_method(cfg).setup(self.device, self.amp_dtype, self.memory_format, self._wrap)
        self.train_set = self.method.dataset("train")
        self.manifest = load_manifest(cfg.data.root)
        self.val_set = self.method.dataset("val") if tc.val_slices else None
        self.sampler = EpochSampler(len(self.train_set), tc.seed, self.group.rank, self.group.world_size)
        # The loader's own generator: creating an iterator draws a worker base seed from it, and drawing from
        # the global stream instead would shift the training noise of a resumed run by one draw.
        self.loader = DataLoader(self.train_set, batch_size=tc.batch_size, sampler=self.sampler,
                                 num_workers=cfg.data.num_workers, pin_memory=self.device.type == "cuda",
                                 persistent_workers=False, drop_last=False,
                                 generator=torch.Generator().manual_seed(tc.seed))
        self.steps_per_epoch = math.ceil(self.sampler.per_rank / tc.batch_size)
        if tc.max_steps > tc.epochs * self.steps_per_epoch:
            warnings.warn(f"train.max_steps={tc.max_steps} is never reached: {tc.epochs} epochs of "
                          f"{self.steps_per_epoch} steps end training at step {tc.epochs * self.steps_per_epoch}; "
                          f"set train.epochs >= {math.ceil(tc.max_steps / self.steps_per_epoch)}")

        self.ema = (copy.deepcopy(self.method.generator).requires_grad_(False).eval()
                    if tc.ema_decay > 0 and next(self.method.generator.parameters(), None) is not None else None)

        self.step, self.epoch, self.batch_in_epoch = 0, 0, 0
        self.last_val: dict[str, float] = {}
        self.best_val: float | None = None  # the best train.keep_best score so far (of checkpoints/best.pt)
        self._prepare_run_dir()

    # ---- set-up ---------------------------------------------------------------------------------------------
    def _wrap(self, module: nn.Module, ddp: bool = True, compile: bool = True) -> nn.Module:
        """``module`` for training forward passes: DistributedDataParallel under torchrun (unless ``ddp=False``,
        for a forward whose weights are not trained in that step; one DDP wrapper per module), compiled when the
        run compiles (unless ``compile=False``, e.g. for R1's double backward)."""
        if ddp and self.group.distributed:
            if id(module) not in self._ddp:
                self._ddp[id(module)] = DistributedDataParallel(
                    module, device_ids=[self.device] if self.device.type == "cuda" else None)
            module = self._ddp[id(module)]
        return torch.compile(module, mode=self.cfg.train.compile_mode) if compile and self.compile else module

    @property
    def checkpoint_path(self) -> Path:
        return self.run_dir / "checkpoints" / "last.pt"

    @property
    def best_path(self) -> Path:
        """The state at the best validation by ``train.keep_best`` (written only when that is set)."""
        return self.run_dir / "checkpoints" / "best.pt"

    def _prepare_run_dir(self) -> None:
        """Check the config and the data against an existing run and resume from its checkpoint (nothing is
        written here: the run folder's files are written by :meth:`fit`, under the folder's lock)."""
        config_path, manifest_path = self.run_dir / "config.json", self.run_dir / "data_manifest.json"
        if config_path.exists():
            _check_same_run(RunConfig.from_dict(_read_json(config_path)), self.cfg, config_path)
        if manifest_path.exists():
            _check_same_data(_read_json(manifest_path), self.manifest, manifest_path, self.cfg.data.root)
        self._checkpoint_seen = _file_stamp(self.checkpoint_path)
        if self._checkpoint_seen:
            self._load(load_checkpoint(self.checkpoint_path, map_location=self.device))

    def _load(self, state: dict[str, Any]) -> None:
        _check_same_run(checkpoint_config(state), self.cfg, self.checkpoint_path)
        self.method.load_state_dict(state["method"])
        for name, opt in self.method.optimizers.items():
            opt.load_state_dict(state["optimizers"][name])
        if self.ema:
            self.ema.load_state_dict(state["ema"])
        self.step, self.epoch, self.batch_in_epoch = state["step"], state["epoch"], state["batch_in_epoch"]
        self.last_val = dict(state.get("val", {}))
        self.best_val = state.get("best_val") if self.cfg.train.keep_best == state["config"]["train"].get(
            "keep_best", "") else None  # a newly chosen score starts its own best
        self._truncate_stats()
        if self.group.rank == 0 and "rng_cpu" in state:
            torch.set_rng_state(state["rng_cpu"])
            if self.device.type == "cuda" and state.get("rng_cuda") is not None:
                torch.cuda.set_rng_state(state["rng_cuda"], self.device)
        else:  # other ranks: a fresh stream that depends on where the run resumed
            torch.manual_seed(self.cfg.train.seed * 1009 + self.group.rank + 7919 * self.step)

    def _truncate_stats(self) -> None:
        """Drop log lines written after the checkpoint we resume from: those steps are trained again."""
        path = self.run_dir / "stats.jsonl"
        if self.group.is_main and path.exists():
            kept = [json.dumps(r) + "\n" for r in read_stats(path) if r["step"] <= self.step]
            path.write_text("".join(kept))

    def save(self, path: Path | None = None) -> Path | None:
        """Write ``checkpoints/last.pt`` (or ``path``) atomically (main process only)."""
        if not self.group.is_main:
            return None
        bad = [name for name, p in self.method.named_parameters() if not torch.isfinite(p).all()]
        if bad:
            raise NonFiniteLossError(
                f"non-finite weights ({', '.join(bad[:3])}{', ...' if len(bad) > 3 else ''}) at step {self.step} of "
                f"{self.run_dir}; training stopped, {self._kept()}.")
        written = save_checkpoint({
            "config": self.cfg.to_dict(),
            "preprocessing": self.manifest.get("preprocessing", {}),
            "step": self.step, "epoch": self.epoch, "batch_in_epoch": self.batch_in_epoch,
            "method": self.method.state_dict(),
            "ema": self.ema.state_dict() if self.ema else None,
            "optimizers": {name: opt.state_dict() for name, opt in self.method.optimizers.items()},
            "rng_cpu": torch.get_rng_state(),
            "rng_cuda": torch.cuda.get_rng_state(self.device) if self.device.type == "cuda" else None,
            "val": self.last_val,
            "best_val": self.best_val,
        }, path or self.checkpoint_path)
        if path is None:
            self._checkpoint_seen = _file_stamp(written)
        return written

    # ---- one iteration --------------------------------------------------------------------------------------
    @torch.no_grad()
    def _update_ema(self) -> None:
        """EMA update after optimiser step n = ``self.step + 1`` (debiased: weight (1 - d) / (1 - d^n))."""
        if self.ema is None:
            return
        decay = self.cfg.train.ema_decay
        weight = (1.0 - decay) / (1.0 - decay ** (self.step + 1)) if self.cfg.train.ema_debias else 1.0 - decay
        generator = self.method.generator
        torch._foreach_lerp_(list(self.ema.parameters()), list(generator.parameters()), weight)
        for b_ema, b in zip(self.ema.buffers(), generator.buffers()):
            b_ema.copy_(b)

    def train_step(self, batch: dict[str, Any]) -> dict[str, Tensor]:
        """One iteration of the method on a batch of its dataset, then the EMA update.

        A compiled run takes an epoch's last batch eagerly when it is smaller than the others: compiling for its
        size would cost minutes, and the graphs for any batch size that it makes would run all later steps.
        """
        tc = self.cfg.train
        smaller = self.batch_in_epoch == self.steps_per_epoch - 1 and self.sampler.per_rank % tc.batch_size != 0
        with torch.compiler.set_stance("force_eager") if self.compile and smaller else contextlib.nullcontext():
            out = self.method.train_batch(batch, self.step)
        self._update_ema()
        return out

    # ---- the loop -------------------------------------------------------------------------------------------
    def _set_lr(self) -> dict[str, float]:
        """Cosine annealing per epoch from the initial rates to ``lr_min``."""
        tc = self.cfg.train
        frac = 0.5 * (1 + math.cos(math.pi * min(self.epoch, tc.epochs) / tc.epochs))
        lrs = {}
        for name, opt in self.method.optimizers.items():
            for group in opt.param_groups:
                group.setdefault("initial_lr", group["lr"])
                group["lr"] = tc.lr_min + (group["initial_lr"] - tc.lr_min) * frac
            lrs[f"lr_{name}"] = opt.param_groups[0]["lr"]
        return lrs

    def _finished(self) -> bool:
        tc = self.cfg.train
        return self.epoch >= tc.epochs or (tc.max_steps > 0 and self.step >= tc.max_steps)

    def _emit(self, record: dict[str, Any]) -> None:
        if not self.group.is_main:
            return
        with open(self.run_dir / "stats.jsonl", "a") as f:
            f.write(json.dumps(record) + "\n")
        for callback in self.callbacks:
            callback(record)

    def fit(self) -> "Trainer":
        """Train until ``train.epochs`` (or ``train.max_steps``); checkpoints on the way and at the end. The run
        folder is locked meanwhile (:class:`RunInUseError` when another process trains it)."""
        with self._exclusive():
            self._fit()
        self.group.barrier()
        return self

    @contextlib.contextmanager
    def _exclusive(self) -> Iterator[None]:
        """The run folder's lock (main process), refusing to go on from a checkpoint that another process wrote
        after this Trainer read it (it would train those steps again and overwrite them)."""
        if not self.group.is_main:
            yield
            return
        with run_lock(self.run_dir):
            if _file_stamp(self.checkpoint_path) != self._checkpoint_seen:
                raise RunInUseError(f"{self.checkpoint_path} was written by another process after this Trainer read "
                                    "it; make a new Trainer (call train() again) to resume from it")
            self.cfg.save(self.run_dir / "config.json")
            (self.run_dir / "data_manifest.json").write_text(json.dumps(self.manifest, indent=2) + "\n")
            yield

    def _fit(self) -> None:
        tc = self.cfg.train
        self.method.train()
        if self.compile and self.group.is_main and not self._finished():
            tqdm.write("torch.compile: the first steps compile the networks, minutes before the progress bar moves "
                       "(train.compile=false trains without compiling)")
        sums: dict[str, Tensor] = {}
        n_logged, t_log = 0, time.perf_counter()
        while not self._finished():
            lrs = self._set_lr()
            self.sampler.set_position(self.epoch, self.batch_in_epoch * tc.batch_size)
            if hasattr(self.train_set, "set_epoch"):  # datasets that reshuffle per epoch (unpaired MR/CT)
                self.train_set.set_epoch(self.epoch)
            bar = tqdm(self.loader, total=self.steps_per_epoch, initial=self.batch_in_epoch, mininterval=2.0,
                       desc=f"epoch {self.epoch + 1}/{tc.epochs}", disable=not self.group.is_main, leave=False)
            for batch in bar:
                out = self.train_step(batch)
                self.step += 1
                self.batch_in_epoch += 1
                for key, value in out.items():
                    sums[key] = sums.get(key, 0.0) + value
                n_logged += 1
                at_checkpoint = self.step % tc.checkpoint_every == 0
                if self.step % tc.log_every == 0 or at_checkpoint:
                    record = self._stats_record(sums, n_logged, time.perf_counter() - t_log, lrs)
                    if "loss_g" in record:
                        bar.set_postfix(loss_g=f"{record['loss_g']:.3f}", refresh=False)
                    self._emit(record)
                    sums, n_logged, t_log = {}, 0, time.perf_counter()
                if at_checkpoint:
                    self.save()
                if tc.max_steps and self.step >= tc.max_steps:
                    break
            bar.close()
            if self.batch_in_epoch >= self.steps_per_epoch:
                self.epoch, self.batch_in_epoch = self.epoch + 1, 0
            if n_logged:
                self._emit(self._stats_record(sums, n_logged, time.perf_counter() - t_log, lrs))
                sums, n_logged, t_log = {}, 0, time.perf_counter()
            if self.val_set is not None and (self.batch_in_epoch == 0 or self._finished()):
                self.validate()
            self.save()
            t_log = time.perf_counter()  # validation and saving do not count as training time

    def _kept(self) -> str:
        """What a stopped run leaves: its last good checkpoint, or none yet."""
        if self.checkpoint_path.exists():
            return f"the last good checkpoint {self.checkpoint_path} was kept"
        return "no checkpoint had been written yet"

    def _stats_record(self, sums: dict[str, Tensor], n: int, seconds: float, lrs: dict[str, float]) -> dict:
        values = {k: float(v) / n for k, v in sums.items()}  # the only device sync, once per log interval
        bad = [k for k, v in values.items() if not math.isfinite(v)]
        if bad:
            raise NonFiniteLossError(
                f"non-finite {', '.join(bad)} at step {self.step} of {self.run_dir}; training stopped, {self._kept()}. "
                "Lower train.lr_g / train.lr_d, use train.precision=fp32, or check the data for NaNs.")
        per_step = seconds / n
        return {"step": self.step, "epoch": self.epoch, **values, **lrs, "sec_per_step": per_step,
                "images_per_sec": self.cfg.train.batch_size * self.group.world_size / per_step,
                "peak_mem_mb": peak_memory_mb(self.device)}

    # ---- validation -----------------------------------------------------------------------------------------
    @torch.no_grad()
    def validate(self) -> dict[str, float]:
        """The method's validation scores (:meth:`Method.validate`) on ``val_slices`` items spread evenly over
        the val split's subjects, with the EMA generator when there is one."""
        if not self.group.is_main:
            return {}
        net = self.ema or self.method.generator
        net.eval()
        n = min(self.cfg.train.val_slices, len(self.val_set))
        chosen = torch.linspace(0, len(self.val_set) - 1, n).round().long().tolist()  # spread over all subjects
        val = self.method.validate(net, self.val_set, chosen, self.cfg.train.batch_size)
        net.train()
        self.last_val = val
        self._emit({"step": self.step, "epoch": self.epoch, "val_slices": n, **val})
        key = self.cfg.train.keep_best
        if key:
            if key not in val:
                raise ValueError(f"train.keep_best={key!r} is not a validation score of {self.cfg.model.method}; "
                                 f"its scores: {sorted(val)}")
            if self.best_val is None or val[key] > self.best_val:
                self.best_val = val[key]
                self.save(self.best_path)
        return val


def read_stats(path: str | Path) -> list[dict[str, Any]]:
    """The records of a ``stats.jsonl``, skipping a last line cut short by a killed process."""
    records = []
    for line in Path(path).read_text().splitlines():
        try:
            records.append(json.loads(line))
        except json.JSONDecodeError:
            continue
    return records


def training_seconds(records: list[dict[str, Any]]) -> float:
    """Wall seconds of the training steps logged in a run's stats records (validation and checkpoints excluded):
    each record's steps since the previous one times its ``sec_per_step``."""
    logged = [r for r in records if "sec_per_step" in r]
    return sum((r["step"] - prev) * r["sec_per_step"] for prev, r in zip([0] + [r["step"] for r in logged], logged))


def _check_same_run(saved: RunConfig, new: RunConfig, where: Path) -> None:
    """Refuse to continue a run with a different config, except for the fields in RESUMABLE_CHANGES and those that
    neither config's method reads (:meth:`RunConfig.unread`)."""
    diffs = [f"{name}: {a!r} -> {b!r}" for name, (a, b) in saved.differences(new, RESUMABLE_CHANGES).items()]
    if diffs:
        raise ValueError(f"the run folder's config ({where}) differs from the one given: {'; '.join(diffs)}. "
                         "Use a new --run-dir, or resume with the same config.")


def _read_json(path: Path) -> dict:
    """A run folder's JSON file; a broken one is named (the checkpoint holds the run's config and step too)."""
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as err:
        raise ValueError(f"{path} cannot be read ({err}); it is rewritten when training goes on: delete it to "
                         "resume from the checkpoint, which holds the run's config too") from None


MANIFEST_ENVIRONMENT = ("created", "mudiff_version", "python", "numpy", "platform")
"""Manifest fields that describe where and when data were prepared, not what they hold (nor does the raw data's
folder, ``source.data_dir``: the source files are identified by their checksums)."""


def _check_same_data(saved: dict, new: dict, where: Path, root: str) -> None:
    """Refuse to continue a run on other data than it was trained on: its manifest (``where``) and the one of
    ``data.root`` must agree but for :data:`MANIFEST_ENVIRONMENT` (a moved or re-prepared copy of the same data is
    fine; another split, normalisation, contrast set or source file is not)."""
    def content(manifest: dict) -> dict:
        kept = {k: v for k, v in manifest.items() if k not in MANIFEST_ENVIRONMENT}
        if isinstance(kept.get("source"), dict):
            kept["source"] = {k: v for k, v in kept["source"].items() if k != "data_dir"}
        return kept

    saved, new = content(saved), content(new)
    diffs = [k for k in sorted(set(saved) | set(new)) if saved.get(k) != new.get(k)]
    if diffs:
        raise ValueError(f"the run was trained on other data than data.root={root} holds: their manifests differ in "
                         f"{', '.join(diffs)} ({where} is the run's). Point data.root at the data the run was trained "
                         "on (a moved copy is fine), or use a new --run-dir.")


def train(config: RunConfig | str | Path, run_dir: str | Path, overrides: list[str] | None = None,
          callbacks: list[Callback] | None = None) -> Trainer:
    """Train (or resume) a run: ``config`` is a RunConfig or a YAML path; returns the finished Trainer."""
    if not isinstance(config, RunConfig):
        config = load_config(config, overrides)
    elif overrides:
        raise ValueError("overrides apply to a config file; edit the RunConfig directly instead")
    return Trainer(config, run_dir, callbacks).fit()
