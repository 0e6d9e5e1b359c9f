"""The target contrast of a task's slices alone, for methods that train on one contrast (MIDiffusion, SDEdit)."""
from __future__ import annotations

from typing import Callable

from torch import Tensor
from torch.utils.data import Dataset

from mudiff.data.dataset import TaskDataset


class TargetSlices(Dataset):
    """Items ``target`` (1, H, W) in [-1, 1] and ``index`` (global slice index) of a :class:`TaskDataset`; the
    sources are never read. With ``slice_map`` (target -> (1, H, W), e.g. the self-LMI map of MIDiffusion) each
    item also has ``map``, computed on first use and kept (per process), since it depends on the slice alone."""

    def __init__(self, slices: TaskDataset, slice_map: Callable[[Tensor], Tensor] | None = None):
        self.slices, self.slice_map = slices, slice_map
        self.image_size = slices.image_size
        self._maps: dict[int, Tensor] = {}

    def __len__(self) -> int:
        return len(self.slices)

    def __getitem__(self, i: int) -> dict:
        item = self.slices[i]
        out = {"target": item["target"], "index": item["index"]}
        if self.slice_map is not None:
            if i not in self._maps:
                self._maps[i] = self.slice_map(item["target"])
            out["map"] = self._maps[i]
        return out


__all__ = ["TargetSlices"]
