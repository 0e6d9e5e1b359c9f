"""Synthesis with a trained run: a batch of slices, a split of a prepared dataset, or a whole subject volume.

Everything is rebuilt from the checkpoint alone (config, preprocessing, EMA weights when present). Every slice
has its own seed, so an output does not depend on the batch size (up to the float rounding of batched kernels,
about 1e-6). By default a GPU synthesises a whole 80-slice volume per network call and a CPU 8 slices; a batch
that does not fit in GPU memory is run again in halves (:func:`seeded_batches`).
"""
from __future__ import annotations

import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Sequence, TypeVar

import nibabel as nib
import numpy as np
import torch
from torch import Tensor
from tqdm.auto import tqdm

from mudiff.checkpoint import checkpoint_config, load_checkpoint
from mudiff.config import CLASS_METHODS, RunConfig
from mudiff.data.dataset import TaskDataset
from mudiff.data.prepare import brain_mask, load_manifest, preprocess_volume, restore_volume
from mudiff.data.subjects import check_volume_output, find_subject, load_subject, to_file_grid
from mudiff.data.tasks import parse_task
from mudiff.methods import Method, build_method, no_wrap
from mudiff.runtime import autocast_dtype, memory_format, resolve_device

SEED_STRIDE = 1_000_003  # slice seed = seed * SEED_STRIDE + slice index
GPU_BATCH, CPU_BATCH = 80, 8
"""Slices per network call when no batch size is given: a whole 80-slice volume at once on a GPU, 8 elsewhere."""
T = TypeVar("T")


def resolve_batch_size(batch_size: int | None, device: torch.device) -> int:
    """Slices per call: ``batch_size``, or when None ``GPU_BATCH`` on a CUDA device and ``CPU_BATCH`` elsewhere."""
    size = (GPU_BATCH if device.type == "cuda" else CPU_BATCH) if batch_size is None else batch_size
    if size < 1:
        raise ValueError(f"batch_size must be >= 1 (or None for the device's default), got {batch_size}")
    return size


def seeded_batches(run: Callable[[slice, list[int]], T], slice_ids: Sequence[int], seed: int,
                   batch_size: int | None, device: torch.device, progress: bool = False,
                   desc: str = "sampling") -> list[T]:
    """``run(positions, seeds)`` over consecutive batches of the slices with global indices ``slice_ids``, in order.

    Slice k is seeded by ``seed * SEED_STRIDE + slice_ids[k]``, so no result depends on the batch size.
    ``batch_size``: see :func:`resolve_batch_size`. A batch that runs out of GPU memory is run again in halves
    (the smaller size is kept for the rest), with a warning; one slice that does not fit raises.
    """
    size = resolve_batch_size(batch_size, device)
    results, start = [], 0
    with tqdm(total=len(slice_ids), desc=desc, disable=not progress, mininterval=2.0) as bar:
        while start < len(slice_ids):
            stop = min(start + size, len(slice_ids))
            seeds = [seed * SEED_STRIDE + int(i) for i in slice_ids[start:stop]]
            try:
                results.append(run(slice(start, stop), seeds))
                bar.update(stop - start)
                start = stop
                continue
            except torch.OutOfMemoryError:
                if stop - start == 1:
                    raise
            # here the exception, and with it the failed batch's tensors, is released
            size = (stop - start) // 2
            torch.cuda.empty_cache()
            warnings.warn(f"{desc}: out of GPU memory at {stop - start} slices per batch; going on with {size}",
                          stacklevel=2)
    return results


@dataclass
class Synthesis:
    """Predictions in [0, 1], each (N, H, W); ``x_p2`` is None for a single network."""

    x_p1: np.ndarray
    x_p2: np.ndarray | None
    mutual: np.ndarray


def unit_slices(x: Tensor) -> np.ndarray:
    """A network's images (B, 1, H, W) in [-1, 1] -> (B, H, W) float32 in [0, 1] on the host."""
    return ((x.float().clamp(-1, 1) + 1) / 2)[:, 0].cpu().numpy()


class Sampler:
    """Synthesises with a trained method (MU-Diff, an ablation or a baseline), EMA weights when the run kept them.

    Precision and memory layout follow the run's config as training resolves them on the device (bf16 and
    contiguous tensors on CUDA by default; fp32 and channels-last on a CPU, where oneDNN's convolutions are faster).
    """

    def __init__(self, method: Method, cfg: RunConfig, device: str | torch.device = "auto",
                 preprocessing: dict | None = None):
        if cfg.model.method in CLASS_METHODS:
            raise ValueError(f"a {cfg.model.method} run generates images of a class; it does not synthesise a contrast "
                             "from sources: load it with mudiff.evaluation.class_eval.load_generator (notebook 11)")
        self.cfg = cfg
        self.device = resolve_device(device) if isinstance(device, str) else device
        self.method = method.setup(self.device, autocast_dtype(cfg.train.precision, self.device),
                                   memory_format(cfg.train.channels_last, self.device), no_wrap).eval()
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

    def check_held_out(self, subjects: Sequence[str], what: str = "the data") -> None:
        """Refuse to score the run on subjects it was trained on (the training split of its data's manifest, when
        that folder is still there): e.g. another preparation of the same subjects, split with another seed."""
        root = Path(self.cfg.data.root)
        if not (root / "manifest.json").is_file():
            return
        seen = sorted(set(map(str, subjects)) & set(load_manifest(root)["split"]["train"]))
        if seen:
            raise ValueError(f"{what} hold(s) {len(seen)} subject(s) the run trained on ({seen[:3]}...; its data: "
                             f"{root}): score it on the held-out subjects of the data it was trained on")

    def synthesise(self, sources: np.ndarray, slice_ids: Sequence[int], seed: int = 0,
                   batch_size: int | None = None, progress: bool = False, desc: str = "sampling") -> Synthesis:
        """sources: (N, n, H, W) in [0, 1] in the task's order -> Synthesis in [0, 1]; slice k is seeded by
        ``seed * SEED_STRIDE + slice_ids[k]`` (its global slice index), so it does not depend on the batch.
        ``batch_size`` None: a whole volume (80 slices) per call on a GPU, 8 elsewhere (:func:`seeded_batches`)."""
        if len(slice_ids) != len(sources):
            raise ValueError(f"{len(slice_ids)} slice ids for {len(sources)} slices")

        def run(positions: slice, seeds: list[int]) -> list[np.ndarray | None]:
            y = torch.from_numpy(np.ascontiguousarray(sources[positions])).float() * 2 - 1
            return [None if x is None else unit_slices(x) for x in self(y, seeds)]

        batches = seeded_batches(run, slice_ids, seed, batch_size, self.device, progress, desc)
        outs = [[b[k] for b in batches if b[k] is not None] for k in range(3)]
        return Synthesis(*(np.concatenate(v) if v else None for v in outs))

    def synthesise_dataset(self, dataset: TaskDataset, indices: Sequence[int] | None = None, seed: int = 0,
                           batch_size: int | None = None, progress: bool = True) -> Synthesis:
        """Synthesise items of a prepared dataset (all by default); the seed of item i is tied to its global index."""
        if dataset.sources != self.sources or dataset.target != self.target:
            raise ValueError(f"dataset task {dataset.target} from {dataset.sources} differs from the model's "
                             f"{self.target} from {self.sources}")
        indices = list(range(len(dataset))) if indices is None else list(indices)
        items = [dataset[i] for i in indices]
        sources = np.stack([(it["sources"].numpy() + 1) / 2 for it in items])
        return self.synthesise(sources, [it["index"] for it in items], seed, batch_size, progress)

    def synthesise_subject(self, subject_dir: str | Path, out: str | Path | None = None, seed: int = 0,
                           batch_size: int | None = None, progress: bool = True) -> nib.Nifti1Image:
        """Synthesise the target for every axial slice of a subject folder (BraTS or ISLES layout).

        The sources are preprocessed as the training data were (per-volume percentile clip and min-max, resize),
        the result is resized back and returned (and written to ``out``) as a NIfTI volume in [0, 1] on the
        sources' grid, in their axis order and with their affine: it matches them voxel for voxel (and overlays them
        in ITK-SNAP or 3D Slicer). Background is zero.
        """
        if out is not None:
            out = check_volume_output(out, subject_dir)
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
        image = nib.Nifti1Image(to_file_grid(volume, loaded.file_affine).astype(np.float32), loaded.file_affine)
        image.header.set_xyzt_units("mm")
        if out is not None:
            out.parent.mkdir(parents=True, exist_ok=True)
            nib.save(image, out)
        return image
