"""The task dataset: one synthesis task's slices of a prepared dataset, read lazily from memory maps."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import torch
from torch.utils.data import Dataset

from mudiff.data.prepare import MASKS, SPLITS, load_manifest
from mudiff.data.subjects import natural_key
from mudiff.data.tasks import parse_task

REMAP_BYTES = 256 * 2 ** 20  # read through one set of maps before reopening them (see TaskDataset.__getitem__)


class TaskDataset(Dataset):
    """Slices of one split for a task like ``t1ce_from_flair_t2_t1``, scaled to [-1, 1] for the networks.

    Nothing is loaded up front: each process (every DataLoader worker) memory-maps the ``.npy`` files on its first
    ``__getitem__``, and the maps are dropped when the dataset is pickled, so workers share the page cache instead
    of copies of the arrays and memory does not grow with the dataset. ``split`` is one of train, val, test or
    all; ``subjects`` narrows it to some subject ids.
    """

    def __init__(self, root: str | Path, task: str, split: str = "train", subjects: list[str] | None = None):
        self.root = Path(root)
        self.task = task
        self.target, self.sources = parse_task(task)
        manifest = load_manifest(self.root)
        if "contrasts" not in manifest:  # e.g. the labelled layout of class-conditioned generation
            raise ValueError(f"{self.root} holds {manifest.get('layout', 'other')} data, not the contrast slices of "
                             "`python -m mudiff prepare`; class-conditioned methods (class_ddpm, wgan_gp, cwgan_gp) "
                             "read labelled slices")
        available = manifest["contrasts"]
        missing = [c for c in (self.target, *self.sources) if c not in available]
        if missing:
            raise ValueError(f"task {task!r} needs contrast(s) {missing}, which the prepared data in {self.root} "
                             f"lack; available: {available}")
        if split not in (*SPLITS, "all"):
            raise ValueError(f"split must be one of {(*SPLITS, 'all')}, got {split!r}")
        table = pd.read_csv(self.root / "slices.csv", dtype={"subject": str, "split": str})
        if split != "all":
            table = table[table["split"] == split]
        if subjects is not None:
            unknown = sorted(set(map(str, subjects)) - set(table["subject"]), key=natural_key)
            if unknown:
                raise ValueError(f"subject(s) {unknown} are not in the {split} split of {self.root}")
            table = table[table["subject"].isin(list(map(str, subjects)))]
        if table.empty:
            raise ValueError(f"the {split} split of {self.root} holds no slice; prepare more subjects or change "
                             "the split fractions")
        self._table = table.reset_index(drop=True)
        self._rows = self._table["index"].to_numpy(np.int64)
        self._subject_of, self._z = self._table["subject"].to_numpy(), self._table["z"].to_numpy(np.int64)
        self._total = manifest["counts"]["slices"]
        self._files = {c: self.root / manifest["arrays"][c] for c in (self.target, *self.sources, *MASKS)}
        self.image_size: int = manifest["preprocessing"]["size"]
        self._arrays: dict[str, np.memmap] | None = None
        item_bytes = self.image_size ** 2 * (4 * (1 + len(self.sources)) + len(MASKS))
        self._remap_every, self._reads = max(1, REMAP_BYTES // item_bytes), 0

    @property
    def arrays(self) -> dict[str, np.memmap]:
        """The memory-mapped (N, H, W) arrays of this process, opened on first use."""
        if self._arrays is None:
            arrays = {name: np.load(path, mmap_mode="r") for name, path in self._files.items()}
            wrong = {name: a.shape for name, a in arrays.items()
                     if a.shape != (self._total, self.image_size, self.image_size)}
            if wrong:
                raise ValueError(f"the arrays in {self.root} do not match its manifest ({self._total} slices of "
                                 f"{self.image_size}^2): {wrong}; prepare the data again")
            self._arrays = arrays
        return self._arrays

    def __getstate__(self) -> dict:
        return {**self.__dict__, "_arrays": None}  # a pickled np.memmap would carry a full copy of its data

    def __len__(self) -> int:
        return len(self._rows)

    def __getitem__(self, i: int) -> dict:
        """target (1, H, W) and sources (n, H, W) float32 in [-1, 1], sources in the task's order; brain_mask and
        lesion_mask (1, H, W) float32 in {0, 1}; label (1, H, W) int64; subject, z (axial index in the RAS+
        volume) and index (global slice index)."""
        # Pages of a file map count in the process's resident memory until unmapped (page cache the kernel could
        # drop, but shown by top and counted by schedulers): reopening the maps now and then keeps RSS flat.
        self._reads += 1
        if self._reads % self._remap_every == 0:
            self._arrays = None
        a, j = self.arrays, int(self._rows[i])

        def scaled(names: list[str]) -> torch.Tensor:
            return torch.from_numpy(np.stack([a[n][j] for n in names]) * np.float32(2) - np.float32(1))

        def mask(name: str, dtype) -> torch.Tensor:
            return torch.from_numpy(a[name][j][None].astype(dtype))

        return {"target": scaled([self.target]), "sources": scaled(self.sources),
                "brain_mask": mask("brain_mask", np.float32), "lesion_mask": mask("lesion_mask", np.float32),
                "label": mask("label", np.int64), "subject": str(self._subject_of[i]), "z": int(self._z[i]), "index": j}

    @property
    def subjects(self) -> list[str]:
        """The subject ids of this selection, naturally sorted."""
        return sorted(self._table["subject"].unique(), key=natural_key)

    @property
    def slice_table(self) -> pd.DataFrame:
        """index, subject, split, z of every slice of this selection (a copy)."""
        return self._table.copy()

    def __repr__(self) -> str:
        return (f"TaskDataset({self.task!r}, {len(self)} slices of {len(self.subjects)} subject(s), "
                f"{self.image_size}x{self.image_size}, root={str(self.root)!r})")


__all__ = ["TaskDataset"]
