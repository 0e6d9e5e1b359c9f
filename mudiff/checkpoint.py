"""One versioned checkpoint dict, written atomically and loaded with ``weights_only=True``."""
from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import torch

from mudiff import __version__
from mudiff.config import RunConfig

FORMAT_VERSION = 1
CHECKPOINTS = ("last", "best")
"""A run folder's checkpoints: ``last`` (where training stopped or will resume) and ``best`` (its state at its best
validation, kept with ``train.keep_best``)."""


def save_checkpoint(state: dict[str, Any], path: str | Path) -> Path:
    """Write ``state`` (state dicts, config dict, counters) to ``path`` via a temp file and an atomic rename."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    torch.save({"format_version": FORMAT_VERSION, "mudiff_version": __version__, **state}, tmp)
    os.replace(tmp, path)
    return path


def load_checkpoint(path: str | Path, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    """Read a checkpoint written by :func:`save_checkpoint`; clear errors for missing or foreign files."""
    path = Path(path)
    if path.is_dir():
        path = path / "checkpoints" / "last.pt"
    if not path.is_file():
        raise FileNotFoundError(f"no checkpoint at {path}")
    try:
        state = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as err:  # truncated or foreign file; torch's own advice to load unsafely does not apply
        first = (str(err).splitlines() or [type(err).__name__])[0]
        raise ValueError(f"cannot read checkpoint {path}: not a file mudiff wrote, or truncated ({first})") from err
    version = state.get("format_version") if isinstance(state, dict) else None
    if version != FORMAT_VERSION:
        raise ValueError(f"{path} is not a MU-Diff checkpoint of format {FORMAT_VERSION} (found {version!r})")
    return state


def checkpoint_file(run_dir: str | Path, checkpoint: str = "last") -> Path:
    """``run_dir/checkpoints/<checkpoint>.pt`` (one of :data:`CHECKPOINTS`); a missing best one is a clear error."""
    if checkpoint not in CHECKPOINTS:
        raise ValueError(f"checkpoint must be one of {CHECKPOINTS}, got {checkpoint!r}")
    path = Path(run_dir) / "checkpoints" / f"{checkpoint}.pt"
    if checkpoint == "best" and not path.is_file():
        raise FileNotFoundError(f"{run_dir} keeps no best checkpoint ({path}): train it with "
                                "train.keep_best=<validation score>, e.g. val_psnr_mutual")
    return path


def checkpoint_info(run_dir: str | Path, checkpoint: str = "last") -> tuple[int, bool]:
    """(step, whether EMA weights are kept) of a run folder's checkpoint, read lazily (memory-mapped)."""
    state = torch.load(checkpoint_file(run_dir, checkpoint), map_location="cpu", weights_only=True, mmap=True)
    return int(state["step"]), state.get("ema") is not None


def checkpoint_config(state: dict[str, Any]) -> RunConfig:
    """The run config stored in a checkpoint."""
    return RunConfig.from_dict(state["config"])
