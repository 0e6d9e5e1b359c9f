"""Synthesis with a trained run: a batch of slices, a split of a prepared dataset, or a whole subject volume.

Everything is rebuilt from the checkpoint alone (config, preprocessing, EMA weights when present). Every slice
has its own seed, so an output does not depend on the batch size (up to the float rounding of batched kernels,
about 1e-6).
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import nibabel as nib
import numpy as np
import torch
from torch import Tensor
from tqdm.auto import tqdm

from mudiff.checkpoint import checkpoint_config, load_checkpoint
from mudiff.config import RunConfig
from mudiff.data.dataset import TaskDataset
from mudiff.data.prepare import brain_mask, preprocess_volume, restore_volume
from mudiff.data.subjects import find_subject, load_subject
from mudiff.data.tasks import parse_task
from mudiff.methods import Method, build_method, no_wrap
from mudiff.runtime import autocast_dtype, resolve_device

SEED_STRIDE = 1_000_003  # slice seed = seed * SEED_STRIDE + slice index


@dataclass
class Synthesis:
    """Predictions in [0, 1], each (N, H, W); ``x_p2`` is None for a single network."""

    x_p1: np.ndarray
    x_p2: np.ndarray | None
    mutual: np.ndarray


class Sampler:
    """Synthesises with a trained method (MU-Diff, an ablation or a baseline), EMA weights when the run kept them."""

    def __init__(self, method: Method, cfg: RunConfig, device: str | torch.device = "auto",
                 preprocessing: dict | None = None):
        self.cfg = cfg
        self.device = resolve_device(device) if isinstance(device, str) else device
        self.method = method.setup(self.device, autocast_dtype(cfg.train.precision, self.device),
                                   torch.contiguous_format, no_wrap).eval()
        self.preprocessing = dict(preprocessing or {})
        self.target, self.sources = parse_task(cfg.data.task)

    @classmethod
    def from_checkpoint(cls, path: str | Path, device: str = "auto", use_ema: bool = True) -> "Sampler":
        """Load a run folder or checkpoint file; everything is rebuilt from it alone."""
        state = load_checkpoint(path)
        cfg = checkpoint_config(state)
        method = build_method(cfg)
        method.load_state_dict(state["method"])
        if use_ema and state.get("ema") is not None:
            method.generator.load_state_dict(state["ema"])
        return cls(method, cfg, device, state.get("preprocessing"))

    @torch.no_grad()
    def __call__(self, sources: Tensor, seeds: Sequence[int]) -> tuple[Tensor, Tensor | None, Tensor]:
        """sources: (B, n, H, W) in [-1, 1] -> (x_p1, x_p2 | None, result), each (B, 1, H, W) in [-1, 1]."""
        expected = (len(self.sources), self.cfg.model.image_size, self.cfg.model.image_size)
        if sources.ndim != 4 or tuple(sources.shape[1:]) != expected:
            raise ValueError(f"sources must be (B, {expected[0]}, {expected[1]}, {expected[2]}) for task "
                             f"{self.cfg.data.task!r}, got {tuple(sources.shape)}")
        if not torch.isfinite(sources).all():
            raise ValueError("sources contain NaN or infinite values")
        return self.method.sample(self.method.generator, sources.to(self.device), seeds)

    def synthesise(self, sources: np.ndarray, slice_ids: Sequence[int], seed: int = 0, batch_size: int = 8,
                   progress: bool = False) -> Synthesis:
        """sources: (N, n, H, W) in [0, 1] in the task's order -> Synthesis in [0, 1]; slice k is seeded by
        ``seed * SEED_STRIDE + slice_ids[k]`` (its global slice index), so it does not depend on the batch."""
        outs: dict[str, list[np.ndarray]] = {"x_p1": [], "x_p2": [], "mutual": []}
        for start in tqdm(range(0, len(sources), batch_size), desc="sampling", disable=not progress,
                          mininterval=2.0):
            y = torch.from_numpy(np.ascontiguousarray(sources[start:start + batch_size])).float() * 2 - 1
            seeds = [seed * SEED_STRIDE + int(i) for i in slice_ids[start:start + batch_size]]
            for key, x in zip(outs, self(y, seeds)):
                if x is not None:
                    outs[key].append(((x.float().clamp(-1, 1) + 1) / 2)[:, 0].cpu().numpy())
        return Synthesis(**{k: (np.concatenate(v) if v else None) for k, v in outs.items()})

    def synthesise_dataset(self, dataset: TaskDataset, indices: Sequence[int] | None = None, seed: int = 0,
                           batch_size: int = 8, progress: bool = True) -> Synthesis:
        """Synthesise items of a prepared dataset (all by default); the seed of item i is tied to its global index."""
        if dataset.sources != self.sources or dataset.target != self.target:
            raise ValueError(f"dataset task {dataset.target} from {dataset.sources} differs from the model's "
                             f"{self.target} from {self.sources}")
        indices = list(range(len(dataset))) if indices is None else list(indices)
        items = [dataset[i] for i in indices]
        sources = np.stack([(it["sources"].numpy() + 1) / 2 for it in items])
        return self.synthesise(sources, [it["index"] for it in items], seed, batch_size, progress)

    def synthesise_subject(self, subject_dir: str | Path, out: str | Path | None = None, seed: int = 0,
                           batch_size: int = 8, progress: bool = True) -> nib.Nifti1Image:
        """Synthesise the target for every axial slice of a subject folder (BraTS or ISLES layout).

        The sources are preprocessed as the training data were (per-volume percentile clip and min-max, resize),
        the result is resized back and returned (and written to ``out``) as a NIfTI volume in [0, 1] with the
        sources' affine, so it overlays the real contrasts in ITK-SNAP or 3D Slicer. Background is zero.
        """
        loaded = load_subject(find_subject(subject_dir), contrasts=self.sources)
        shape = loaded.images[self.sources[0]].shape
        all_z = list(range(shape[2]))
        size = self.cfg.model.image_size
        pre = {k: v for k, v in self.preprocessing.items()
               if k in ("low_percentile", "high_percentile", "normalization")}
        if pre.get("normalization", "percentile").endswith("_outside_lesion") and loaded.label is None:
            raise ValueError(f"{subject_dir}: the run's data were normalised with {pre['normalization']!r}, which "
                             "needs the subject's lesion label (a segmentation file in the folder)")
        lesion = None if loaded.label is None else loaded.label > 0
        slices = np.stack([preprocess_volume(loaded.images[c], size, all_z, lesion=lesion, **pre)
                           for c in self.sources], 1)
        mask = brain_mask(slices)  # (Z, size, size)
        inside = np.flatnonzero(mask.reshape(len(all_z), -1).any(1))
        result = np.zeros((len(all_z), size, size), np.float32)
        if len(inside):
            syn = self.synthesise(slices[inside], inside.tolist(), seed, batch_size, progress)
            result[inside] = syn.mutual
        # mask on the original grid, so the background is exactly zero whatever the resizing did at the edge
        volume = restore_volume(result, shape, all_z) * restore_volume(mask, shape, all_z)
        image = nib.Nifti1Image(volume.astype(np.float32), loaded.affine)
        image.header.set_xyzt_units("mm")
        if out is not None:
            out = Path(out)
            out.parent.mkdir(parents=True, exist_ok=True)
            nib.save(image, out)
        return image
