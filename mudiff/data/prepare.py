"""The slice pipeline: subject volumes -> a memory-mapped dataset of preprocessed axial slices (spec section 6).

Per volume, as the paper does: clip to the 1st-99th percentile of the non-zero voxels and min-max to [0, 1]; keep
the middle ``slices`` axial slices of the brain's z-extent; resize each slice to ``size`` x ``size``. The intensity
window can instead ignore the lesion (``NORMALIZATIONS``): the paper's window is set partly by the lesion itself,
so a large enhancing tumour darkens the whole normal brain of its volume, a shift no source contrast reveals.

Slice selection: the middle of the brain's z-extent (the slices where any contrast is non-zero), not of the
volume: BraTS brains do not sit in the middle of their 155 slices, and other datasets pad differently. On data that
are not skull-stripped the extent is the whole volume, so this falls back to the volume's middle.

Geometry (``ORIENTATION``): volumes are loaded in RAS+ order; a stored slice is ``np.rot90(volume[:, :, z])``
(anterior at the top, the patient's left on the image's left), zero-padded to a square (so a non-square slice
keeps its aspect ratio), then resized (bilinear, anti-aliased when shrinking; labels nearest).
:func:`restore_volume` inverts it exactly.

On-disk format (``FORMAT_VERSION``), written subject by subject into preallocated ``.npy`` files, so neither
preparing nor training ever holds the dataset in memory:

- ``images_<contrast>.npy`` float32 (N, size, size) in [0, 1]
- ``brain_mask.npy``, ``lesion_mask.npy`` (label > 0, optionally dilated), ``label.npy`` (raw labels): uint8
- ``tissue.npy`` uint8, only when every subject has a normal-tissue map (``<id>_tissue.nii.gz``, the phantom's:
  1 CSF, 2 grey matter, 3 white matter, 0 elsewhere), resized like the labels
- ``slices.csv``: index, subject, split, z (axial index in the RAS+ volume)
- ``manifest.json``: parameters, split, source files with sha256, skipped subjects and why, counts, versions
"""
from __future__ import annotations

import hashlib
import json
import os
import platform
import shutil
import sys
import tempfile
import warnings
from collections import Counter
from datetime import datetime, timezone
from pathlib import Path
from typing import Sequence

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F
import yaml
from scipy import ndimage
from tqdm.auto import tqdm

from mudiff import __version__
from mudiff.data.subjects import CONTRASTS, DataError, Subject, find_subjects, load_subject, natural_key

FORMAT_VERSION = 1
SPLITS = ("train", "val", "test")
MASKS = ("brain_mask", "lesion_mask", "label")
TISSUE = "tissue"  # the optional normal-tissue label array
BRAIN_THRESHOLD = 0.05  # of the [0, 1] intensity range; below it, in every contrast, is background
NORMALIZATIONS = {
    "percentile": "clip to the percentiles of the non-zero voxels, min-max to [0, 1] (the paper's scaling)",
    "percentile_outside_lesion": "clip to the percentiles of the non-zero voxels outside the lesion label, "
                                 "min-max to [0, 1]",
    "zscore_outside_lesion": "z-score on the non-zero voxels outside the lesion label, the window mean + "
                             "(-3, 5) sd min-max scaled to [0, 1]",
}
"""Intensity normalisations of ``prepare`` (each one a window [low, high] per volume, then min-max scaling);
the ``*_outside_lesion`` ones need the lesion label, also when synthesising a new subject."""
ZSCORE_WINDOW = (-3.0, 5.0)  # in sd of the normal brain: enhancing tissue sits a few sd above it, CSF below
ORIENTATION = ("RAS+ volume; slice = np.rot90(volume[:, :, z]): anterior at the top, patient's left on the "
               "image's left; zero-padded to a square, then resized")


class DatasetExistsError(FileExistsError, ValueError):
    """The output folder holds data already; also a ValueError so that command lines report it as a user error."""


# ---- per-volume preprocessing ----------------------------------------------------------------------------------
def intensity_window(volume: np.ndarray, low_percentile: float = 1.0, high_percentile: float = 99.0,
                     normalization: str = "percentile", lesion: np.ndarray | None = None) -> tuple[float, float]:
    """The window [low, high] of a volume (X, Y, Z) between which intensities are kept (``NORMALIZATIONS``):
    percentiles of the non-zero voxels (outside ``lesion``, a boolean volume, for the ``*_outside_lesion`` ones),
    or their mean + ``ZSCORE_WINDOW`` standard deviations."""
    if normalization not in NORMALIZATIONS:
        raise ValueError(f"normalization must be one of {list(NORMALIZATIONS)}, got {normalization!r}")
    voxels = volume != 0
    if normalization.endswith("_outside_lesion"):
        if lesion is None:
            raise DataError(f"normalization {normalization!r} needs the subject's lesion label")
        if lesion.shape != volume.shape:
            raise DataError(f"the lesion label's shape {lesion.shape} differs from the volume's {volume.shape}")
        voxels &= ~lesion
    values = volume[voxels]
    if values.size == 0:
        raise DataError("the volume is empty (every voxel is 0" + (" or in the lesion)" if lesion is not None else ")"))
    if normalization == "zscore_outside_lesion":
        mean, sd = float(values.mean()), float(values.std())
        low, high = mean + ZSCORE_WINDOW[0] * sd, mean + ZSCORE_WINDOW[1] * sd
    else:
        low, high = np.percentile(values, [low_percentile, high_percentile])
    if high <= low:
        raise DataError(f"the volume is constant after clipping to its {normalization} window ({low:g}-{high:g})")
    return float(low), float(high)


def normalize_intensity(volume: np.ndarray, window: tuple[float, float] | None = None) -> np.ndarray:
    """Clip to ``window`` (default: :func:`intensity_window` of ``volume``), min-max to [0, 1]; float32.

    Intensities are clipped to the window and scaled by (v - low) / (high - low); written this way, a window
    taken from the whole volume can be applied to a few of its slices. The background (0) stays 0 when the
    window starts at or below 0, as every percentile window of non-negative MR intensities does.
    """
    low, high = intensity_window(volume) if window is None else window
    scaled = (volume.astype(np.float32) - np.float32(low)) / np.float32(high - low)
    return np.clip(scaled, 0.0, 1.0, out=scaled)


def middle_slices(volumes: Sequence[np.ndarray], k: int) -> list[int]:
    """The middle ``k`` axial indices of the brain's z-extent (slices where any volume is non-zero); fewer if the
    brain spans fewer slices. volumes: (X, Y, Z) each."""
    occupied = np.flatnonzero(np.any([np.any(v != 0, axis=(0, 1)) for v in volumes], axis=0))
    if occupied.size == 0:
        raise DataError("every volume is empty")
    first, extent = int(occupied[0]), int(occupied[-1] - occupied[0] + 1)
    start = first + max(0, (extent - k) // 2)
    return list(range(start, start + min(k, extent)))


def _resize(stack: np.ndarray, size: int, nearest: bool) -> np.ndarray:
    """(K, h, w) -> (K, size, size): bilinear (anti-aliased when shrinking) for images, nearest for labels."""
    if stack.shape[1:] == (size, size):
        return stack
    t = torch.from_numpy(np.ascontiguousarray(stack, dtype=np.float32))[:, None]
    if nearest:
        out = F.interpolate(t, size=(size, size), mode="nearest-exact")
    else:
        out = F.interpolate(t, size=(size, size), mode="bilinear", align_corners=False, antialias=True)
    return out[:, 0].numpy().astype(stack.dtype)


def _pad_offsets(height: int, width: int) -> tuple[int, int, int]:
    side = max(height, width)
    return side, (side - height) // 2, (side - width) // 2


def _to_display(volume: np.ndarray, size: int, slice_indices: Sequence[int]) -> np.ndarray:
    """(X, Y, Z) RAS+ -> (K, size, size) display slices; integer arrays (labels) are resized with nearest."""
    slices = np.rot90(volume[:, :, list(slice_indices)], k=1, axes=(0, 1)).transpose(2, 0, 1)  # (K, Y, X)
    side, top, left = _pad_offsets(*slices.shape[1:])
    square = np.zeros((len(slices), side, side), volume.dtype)
    square[:, top:top + slices.shape[1], left:left + slices.shape[2]] = slices
    return _resize(square, size, nearest=not np.issubdtype(volume.dtype, np.floating))


def preprocess_volume(volume: np.ndarray, size: int, slice_indices: Sequence[int], low_percentile: float = 1.0,
                      high_percentile: float = 99.0, normalization: str = "percentile",
                      lesion: np.ndarray | None = None) -> np.ndarray:
    """(X, Y, Z) RAS+ volume -> (K, size, size) float32 in [0, 1]: normalised, oriented, padded, resized.
    The background stays 0 (a z-score window starts above it)."""
    # the window from the whole volume, as the paper
    window = intensity_window(volume, low_percentile, high_percentile, normalization, lesion)
    slab = normalize_intensity(volume[:, :, list(slice_indices)], window)  # (X, Y, K): never the whole volume
    slab[volume[:, :, list(slice_indices)] == 0] = 0.0
    return np.clip(_to_display(slab, size, range(slab.shape[2])), 0.0, 1.0)


def preprocess_label(label: np.ndarray, size: int, slice_indices: Sequence[int]) -> np.ndarray:
    """(X, Y, Z) label map -> (K, size, size) uint8, nearest-neighbour resized."""
    return _to_display(label.astype(np.uint8), size, slice_indices)


def restore_volume(slices: np.ndarray, original_shape: Sequence[int], slice_indices: Sequence[int]) -> np.ndarray:
    """Inverse geometry of :func:`preprocess_volume`: (K, size, size) -> (X, Y, Z), zeros outside the slices.

    Float slices come back as float32 (bilinear), integer slices (labels) keep their dtype (nearest).
    """
    x, y, _ = original_shape
    side, top, left = _pad_offsets(y, x)
    slices = np.asarray(slices)
    nearest = not np.issubdtype(slices.dtype, np.floating)
    square = _resize(slices if nearest else slices.astype(np.float32), side, nearest)
    cropped = square[:, top:top + y, left:left + x]  # (K, Y, X)
    volume = np.zeros(tuple(original_shape), square.dtype)
    volume[:, :, list(slice_indices)] = np.rot90(cropped.transpose(1, 2, 0), k=-1, axes=(0, 1))
    return volume


def brain_mask(slices: np.ndarray, threshold: float = BRAIN_THRESHOLD) -> np.ndarray:
    """The whole-brain mask: (K, C, H, W) stacked contrasts (or (K, H, W)) in [0, 1] -> (K, H, W) uint8.

    Threshold (any contrast above ``threshold``), then per slice closing (bridges dark CSF and sulci), hole
    filling and opening (drops specks of noise); finally the largest connected component in 3D over the K
    slices, not per slice, so that a temporal lobe detached from the rest in one slice is kept.
    """
    slices = np.asarray(slices)
    foreground = (slices.max(axis=1) if slices.ndim == 4 else slices) > threshold
    cross = ndimage.generate_binary_structure(2, 1)
    cleaned = np.stack([ndimage.binary_opening(ndimage.binary_fill_holes(
        ndimage.binary_closing(s, cross, iterations=2, border_value=0)), cross) for s in foreground])
    components, count = ndimage.label(cleaned)
    if count == 0:
        return np.zeros(cleaned.shape, np.uint8)
    largest = 1 + int(np.argmax(np.bincount(components.ravel())[1:]))
    return (components == largest).astype(np.uint8)


def lesion_mask(label_slices: np.ndarray, dilate: int = 0) -> np.ndarray:
    """(K, H, W) labels -> (K, H, W) uint8 whole-lesion mask (label > 0), dilated in-plane with a 3x3 square
    ``dilate`` times (the paper uses 3 for tiny stroke lesions)."""
    mask = label_slices > 0
    if dilate:
        mask = ndimage.binary_dilation(mask, np.ones((1, 3, 3), bool), iterations=dilate)
    return mask.astype(np.uint8)


# ---- the subject-level split -----------------------------------------------------------------------------------
def _check_fractions(fractions: Sequence[float]) -> None:
    if len(fractions) != 3 or any(f < 0 for f in fractions) or abs(sum(fractions) - 1) > 1e-6:
        raise ValueError(f"split must be three non-negative fractions (train, val, test) summing to 1, "
                         f"got {tuple(fractions)}")


def split_counts(n: int, fractions: Sequence[float]) -> list[int]:
    """Subjects per split: largest remainders, then one subject for every split asked for whenever there are
    enough subjects (4 subjects at 70/20/10 -> 2/1/1)."""
    _check_fractions(fractions)
    exact = np.asarray(fractions, float) * n
    counts = np.floor(exact).astype(int)
    for i in np.argsort(-(exact - counts), kind="stable")[:n - counts.sum()]:
        counts[i] += 1
    wanted = np.asarray(fractions) > 0
    if n >= wanted.sum():
        for i in np.flatnonzero(wanted & (counts == 0)):
            counts[np.argmax(counts)] -= 1
            counts[i] += 1
    return counts.tolist()


def split_subjects(ids: Sequence[str], fractions: Sequence[float] = (0.7, 0.2, 0.1), seed: int = 0
                   ) -> dict[str, list[str]]:
    """Deterministic subject-level split: the naturally sorted ids shuffled by ``default_rng(seed)``."""
    ordered = sorted(ids, key=natural_key)
    shuffled = [ordered[i] for i in np.random.default_rng(seed).permutation(len(ordered))]
    bounds = np.cumsum([0, *split_counts(len(ordered), fractions)])
    return {name: sorted(shuffled[bounds[i]:bounds[i + 1]], key=natural_key) for i, name in enumerate(SPLITS)}


def read_split_file(path: str | Path, known_ids: Sequence[str]) -> dict[str, list[str]]:
    """Train/val/test id lists from a YAML or JSON mapping; errors on unknown keys or ids and on overlaps."""
    try:
        raw = yaml.safe_load(Path(path).read_text())
    except yaml.YAMLError as err:
        raise ValueError(f"split file {path} cannot be parsed: {err}") from None
    if (not isinstance(raw, dict) or set(raw) - set(SPLITS)
            or not all(ids is None or isinstance(ids, list) for ids in raw.values())):
        raise ValueError(f"split file {path} must map some of {SPLITS} to lists of subject ids, e.g. "
                         "test: [id1, id2]")
    split = {name: [str(i) for i in (raw.get(name) or [])] for name in SPLITS}
    repeated = sorted(i for i, n in Counter(sum(split.values(), [])).items() if n > 1)
    if repeated:
        raise ValueError(f"split file {path}: subject(s) {repeated} listed more than once")
    unknown = sorted(set(sum(split.values(), [])) - set(known_ids), key=natural_key)
    if unknown:
        raise ValueError(f"split file {path}: {len(unknown)} subject id(s) not found in the data: {unknown[:10]}")
    return split


# ---- the dataset writer ----------------------------------------------------------------------------------------
def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _write_rows(path: Path, start: int, rows: np.ndarray) -> None:
    """Write rows into a preallocated .npy; the map is closed again so written pages leave this process."""
    array = np.load(path, mmap_mode="r+")
    array[start:start + len(rows)] = rows
    array.flush()


def _shrink_npy(path: Path, rows: int) -> None:
    """Cut a C-ordered .npy to its first ``rows`` rows in place: rewrite the shape in the (space-padded) header,
    which keeps its length since the shape has no more digits, and truncate the data."""
    with open(path, "r+b") as f:
        version = np.lib.format.read_magic(f)
        shape, fortran, dtype = {(1, 0): np.lib.format.read_array_header_1_0,
                                 (2, 0): np.lib.format.read_array_header_2_0}[version](f)
        data_start = f.tell()
        header_start = 10 if version == (1, 0) else 12  # magic (6) + version (2) + header length (2 or 4)
        header = repr({"descr": np.lib.format.dtype_to_descr(dtype), "fortran_order": fortran,
                       "shape": (rows, *shape[1:])})
        f.seek(header_start)
        f.write(header.ljust(data_start - header_start - 1).encode("latin1") + b"\n")
        f.truncate(data_start + rows * int(np.prod(shape[1:])) * dtype.itemsize)


def _process(subject: Subject, paths: dict[str, Path], start: int, contrasts: list[str], size: int, slices: int,
             dilate_lesion: int, low: float, high: float, normalization: str) -> tuple[list[int], dict]:
    """Load, preprocess and write one subject's rows from ``start`` on; its axial indices and manifest entry.

    A function of its own so that the subject's arrays are freed before the next one is loaded.
    """
    loaded = load_subject(subject, contrasts)
    z = middle_slices([loaded.images[c] for c in contrasts], slices)
    rows = {}
    # no label: no lesion to leave out (a subject folder without a segmentation, e.g. a healthy one)
    lesion = np.zeros(loaded.shape, bool) if loaded.label is None else loaded.label > 0
    for c in contrasts:
        try:
            rows[c] = preprocess_volume(loaded.images[c], size, z, low, high, normalization, lesion)
        except DataError as err:
            raise DataError(f"{subject.images[c]}: {err}") from err
    label = (preprocess_label(loaded.label, size, z) if loaded.label is not None
             else np.zeros((len(z), size, size), np.uint8))
    rows["brain_mask"] = brain_mask(np.stack([rows[c] for c in contrasts], axis=1))
    rows["lesion_mask"] = lesion_mask(label, dilate_lesion)
    rows["label"] = label
    if loaded.tissue is not None:
        rows[TISSUE] = preprocess_label(loaded.tissue, size, z)
    for name, path in paths.items():
        _write_rows(path, start, rows[name])
    return z, {"dataset": subject.dataset, "first_index": start, "slices": len(z), "z": [z[0], z[-1]],
               "shape": list(loaded.shape), "orientation": loaded.orientation,
               "voxel_size": list(loaded.voxel_size), "has_label": loaded.label is not None}


def check_slice_size(height: int, width: int) -> None:
    """Refuse a slice size that no model here can train on (their critics need multiples of 16: ModelConfig)."""
    if min(height, width) < 16 or height % 16 or width % 16:
        raise ValueError(f"slices must be a multiple of 16 (>= 16) on each side, which every model's critic needs; "
                         f"got {height}x{width}")


def _check_arguments(size: int, slices: int, split: Sequence[float], dilate_lesion: int,
                     contrasts: list[str] | None, low_percentile: float, high_percentile: float,
                     normalization: str) -> None:
    if normalization not in NORMALIZATIONS:
        raise ValueError(f"normalization must be one of {list(NORMALIZATIONS)}, got {normalization!r}")
    check_slice_size(size, size)
    if slices < 1:
        raise ValueError(f"slices must be >= 1, got {slices}")
    if dilate_lesion < 0:
        raise ValueError(f"dilate_lesion must be >= 0, got {dilate_lesion}")
    if not 0 <= low_percentile < high_percentile <= 100:
        raise ValueError(f"need 0 <= low_percentile < high_percentile <= 100, got {low_percentile}, "
                         f"{high_percentile}")
    _check_fractions(split)
    unknown = sorted(set(contrasts or []) - set(CONTRASTS))
    if unknown:
        raise ValueError(f"unknown contrast(s) {unknown}; known: {list(CONTRASTS)}")
    if contrasts is not None and len(set(contrasts)) != len(contrasts):
        raise ValueError(f"contrasts {contrasts} name a contrast twice")


def _choose_contrasts(subjects: list[Subject], contrasts: list[str] | None) -> list[str]:
    """The requested contrasts, or by default every contrast any subject has (a subject lacking one is skipped,
    never silently given fewer inputs)."""
    present = {c for s in subjects for c in s.images}
    if contrasts is None:
        return [c for c in CONTRASTS if c in present]
    absent = [c for c in contrasts if c not in present]
    if absent:
        raise ValueError(f"contrast(s) {absent} missing in every subject; the subjects have {sorted(present)}")
    return list(contrasts)


def _is_dataset(folder: Path) -> bool:
    return folder.exists() and (not folder.is_dir() or any(folder.iterdir()))


def check_output_folder(out_dir: str | Path, overwrite: bool, sources: Sequence[str | Path] = ()) -> None:
    """Refuse an output folder a prepared dataset must not be written to: one that is a source folder or holds one
    (replacing it would delete the raw data), or an existing non-empty one unless ``overwrite`` and it is itself a
    prepared dataset (it holds a ``manifest.json``; any other folder is left for its owner to delete)."""
    out = Path(out_dir).resolve()
    for source in map(lambda p: Path(p).resolve(), sources):
        if out == source or out in source.parents:
            raise DatasetExistsError(f"{out_dir} is or holds the input folder {source}: writing the dataset there "
                                     "would replace the raw data; choose another output folder")
    if not _is_dataset(out):
        return
    if not overwrite:
        raise DatasetExistsError(f"{out_dir} exists and is not empty; pass overwrite=True (--overwrite) to replace it")
    if not (out / "manifest.json").is_file():
        raise DatasetExistsError(f"{out_dir} is not a prepared dataset (no manifest.json), so --overwrite does not "
                                 "replace it: delete it yourself or choose another output folder")


def prepare_dataset(data_dir: str | Path, out_dir: str | Path, size: int = 256, slices: int = 80,
                    dataset: str = "auto", split: tuple[float, float, float] = (0.7, 0.2, 0.1),
                    split_file: str | Path | None = None, seed: int = 0, dilate_lesion: int = 0,
                    strict: bool = False, contrasts: list[str] | None = None, overwrite: bool = False,
                    low_percentile: float = 1.0, high_percentile: float = 99.0,
                    normalization: str = "percentile") -> Path:
    """Preprocess every subject under ``data_dir`` into the slice dataset ``out_dir``; returns the manifest path.

    A subject whose files fail validation is skipped with a warning and listed in the manifest's ``skipped``
    with the reason, or, with ``strict=True``, stops the run with the :class:`DataError`. The dataset is written
    into a hidden temporary folder next to ``out_dir`` and renamed at the end, so an interrupted run never
    leaves a dataset that looks complete. ``split`` is used unless ``split_file`` lists the subjects per split
    (subjects it does not list are left out). ``normalization`` picks the intensity window (``NORMALIZATIONS``);
    a subject without a lesion label has no lesion to leave out (its window is then the plain one). The
    normal-tissue maps become the array ``tissue`` when every subject has one (the phantom), else none is kept.
    """
    _check_arguments(size, slices, split, dilate_lesion, contrasts, low_percentile, high_percentile, normalization)
    data_dir, out_dir = Path(data_dir), Path(out_dir)
    check_output_folder(out_dir, overwrite, [data_dir])
    subjects = find_subjects(data_dir, dataset)
    contrasts = _choose_contrasts(subjects, contrasts)
    if split_file is not None:
        planned = read_split_file(split_file, [s.id for s in subjects])
        listed = set(sum(planned.values(), []))
        unlisted = [s.id for s in subjects if s.id not in listed]
        if unlisted:
            warnings.warn(f"{len(unlisted)} subject(s) not in {split_file} are left out: {unlisted[:10]}")
        subjects = [s for s in subjects if s.id in listed]
    else:
        planned, unlisted = split_subjects([s.id for s in subjects], split, seed), []

    with_tissue = sum(s.tissue is not None for s in subjects)
    if 0 < with_tissue < len(subjects):
        warnings.warn(f"only {with_tissue} of {len(subjects)} subjects have a tissue map; none is kept")
    tissue = [TISSUE] if with_tissue and with_tissue == len(subjects) else []

    work = work_folder(out_dir)
    try:
        names = [*contrasts, *MASKS, *tissue]
        paths = {n: work / (f"images_{n}.npy" if n in contrasts else f"{n}.npy") for n in names}
        capacity = len(subjects) * slices  # upper bound; cut to the rows written at the end
        for n in names:  # sparse files: preallocating costs no disk until rows are written; the map closes at once
            np.lib.format.open_memmap(paths[n], mode="w+", shape=(capacity, size, size),
                                      dtype=np.float32 if n in contrasts else np.uint8)
        table, info, files, skipped = [], {}, {}, []
        for subject in tqdm(subjects, desc="prepare", unit="subject", mininterval=1):
            start = len(table)
            try:
                z, info[subject.id] = _process(subject, paths, start, contrasts, size, slices, dilate_lesion,
                                               low_percentile, high_percentile, normalization)
            except DataError as err:
                skip_subject(subject.id, err, strict, skipped)
                continue
            if len(z) < slices:
                warnings.warn(f"subject {subject.id}: the brain spans only {len(z)} axial slices (< {slices})")
            table += [(start + i, subject.id, zi) for i, zi in enumerate(z)]
            files[subject.id] = {k: {"path": os.path.relpath(p, data_dir), "sha256": _sha256(p)}
                                 for k, p in subject.files.items() if k in (*contrasts, "seg", *tissue)}
        if not table:
            raise DataError(f"{data_dir}: no valid subject to prepare; skipped: {skipped}")
        for n in names:
            _shrink_npy(paths[n], len(table))

        split_ids = {name: [i for i in planned[name] if i in info] for name in SPLITS}
        for name in SPLITS:
            if not split_ids[name]:
                warnings.warn(f"the {name} split holds no subject")
        write_prepared(work, out_dir, overwrite, table, split_ids, {
            "source": {"data_dir": str(data_dir.resolve()), "dataset": dataset, "files": files},
            "preprocessing": {"size": size, "slices": slices, "low_percentile": low_percentile,
                              "high_percentile": high_percentile,
                              "normalization": normalization, "intensity": NORMALIZATIONS[normalization],
                              "slice_selection": "middle of the brain's z-extent (non-zero slices)",
                              "orientation": ORIENTATION, "brain_threshold": BRAIN_THRESHOLD,
                              "dilate_lesion": dilate_lesion, "lesion": "label > 0"},
            "contrasts": contrasts,
            "arrays": {n: paths[n].name for n in names},
            "split": {"seed": seed, "fractions": list(split), "split_file": None if split_file is None
                      else str(Path(split_file).resolve()), **split_ids},
            "subjects": info,
            "skipped": skipped,
            "unlisted": unlisted,
        })
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return out_dir / "manifest.json"


def write_prepared(work: Path, out_dir: Path, overwrite: bool, table: list[tuple[int, str, int]],
                   split_ids: dict[str, list[str]], fields: dict) -> None:
    """Finish a prepared folder: ``slices.csv`` from ``table`` (index, subject, z) and ``split_ids``, and
    ``manifest.json`` (provenance, ``fields``, counts; ``fields["skipped"]`` lists the skipped subjects) in
    ``work``, then move ``work`` to ``out_dir``."""
    split_of = {i: name for name, ids in split_ids.items() for i in ids}
    frame = pd.DataFrame(table, columns=["index", "subject", "z"])
    frame.insert(2, "split", frame["subject"].map(split_of))
    frame.to_csv(work / "slices.csv", index=False)
    counts = {"subjects": int(frame["subject"].nunique()), "slices": len(frame), "skipped": len(fields["skipped"]),
              **{f"{name}_subjects": len(split_ids[name]) for name in SPLITS},
              **{f"{name}_slices": int((frame["split"] == name).sum()) for name in SPLITS}}
    manifest = {"format_version": FORMAT_VERSION, "mudiff_version": __version__,
                "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
                "python": sys.version.split()[0], "numpy": np.__version__, "platform": platform.platform(),
                **fields, "counts": counts}
    (work / "manifest.json").write_text(json.dumps(manifest, indent=2) + "\n")
    _replace_folder(work, out_dir, overwrite)


def work_folder(out_dir: Path) -> Path:
    """A hidden folder next to ``out_dir`` to write a dataset into before it is renamed into place, with the
    permissions of an ordinary new folder (``tempfile.mkdtemp`` gives its owner alone access, which the renamed
    dataset would keep: others sharing the data could not read it)."""
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.partial-", dir=out_dir.parent))
    umask = os.umask(0)
    os.umask(umask)
    work.chmod(0o777 & ~umask)
    return work


def _replace_folder(work: Path, out_dir: Path, overwrite: bool) -> None:
    """Move the finished dataset into place; an existing one is moved aside first and removed afterwards."""
    old = None
    if out_dir.exists():
        if _is_dataset(out_dir) and not overwrite:  # it appeared while we were working
            raise DatasetExistsError(f"{out_dir} appeared while preparing; not replaced")
        old = out_dir.with_name(f".{out_dir.name}.old-{os.getpid()}")
        out_dir.rename(old)
    work.rename(out_dir)
    if old is not None and old.is_dir():
        shutil.rmtree(old)
    elif old is not None:
        old.unlink()


def skip_subject(subject_id: str, err: DataError, strict: bool, skipped: list[dict]) -> None:
    """A subject failed validation: raise ``err`` when ``strict``, else warn and record it in ``skipped``."""
    if strict:
        raise err
    warnings.warn(f"skipping subject {subject_id}: {err}")
    skipped.append({"subject": subject_id, "reason": str(err)})


def load_manifest(root: str | Path) -> dict:
    """The manifest of a prepared dataset, after checking that this version of mudiff reads its format."""
    path = Path(root) / "manifest.json"
    if not path.is_file():
        raise FileNotFoundError(f"{root} holds no prepared dataset (no manifest.json); run "
                                f"`python -m mudiff prepare --data <subject folders> --out {root}` first")
    manifest = json.loads(path.read_text())
    if manifest.get("format_version") != FORMAT_VERSION:
        raise ValueError(f"{path}: format version {manifest.get('format_version')}, but this mudiff reads version "
                         f"{FORMAT_VERSION}; prepare the data again with `python -m mudiff prepare`")
    return manifest


__all__ = ["FORMAT_VERSION", "ORIENTATION", "DatasetExistsError", "check_output_folder", "prepare_dataset",
           "preprocess_volume", "preprocess_label", "restore_volume", "brain_mask", "lesion_mask",
           "intensity_window", "normalize_intensity", "NORMALIZATIONS", "middle_slices", "split_subjects",
           "split_counts", "read_split_file", "load_manifest", "work_folder"]
