"""MR <-> CT data in the SynthRAD2023 task-1 layout: find, validate, prepare, and the paired/unpaired datasets.

Layout (SynthRAD2023 brain, and the head phantom of :mod:`mudiff.data.head_phantom`): one folder per subject,
``<id>/mr.nii.gz``, ``<id>/ct.nii.gz`` (Hounsfield units), ``<id>/mask.nii.gz`` (body); ``.nii`` works too.

Preparation (:func:`prepare_synthrad`), into the same on-disk format as :mod:`mudiff.data.prepare` (so that
:class:`~mudiff.data.dataset.TaskDataset` reads square ones for the paired task ``ct_from_mr``):

- CT: clipped to :data:`HU_WINDOW` and scaled with the fixed mapping :func:`hu_to_unit` (HU are absolute: no
  per-volume min-max); :func:`unit_to_hu` inverts it.
- MR: per volume as for BraTS, clipped to the 1st-99th percentile of the body's voxels, min-max to [0, 1].
- Outside the body mask: MR 0 and CT -1024 HU (0), as the challenge scores inside the mask only.
- Slices: the middle ``slices`` axial slices of the body's z-extent; ``np.rot90`` (anterior up), zero-padded to
  the output's aspect ratio, resized to ``height`` x ``width`` (rectangular sizes allowed);
  :func:`restore_slices` inverts the geometry.
- ``brain_mask.npy`` holds the body mask (the region every metric uses); ``lesion_mask`` and ``label`` are zero.
"""
from __future__ import annotations

import os
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F
from torch.utils.data import Dataset

from mudiff.config import UNPAIRED_SUBJECTS
from mudiff.data.prepare import (SPLITS, _sha256, _shrink_npy, _write_rows, check_output_folder, check_slice_size,
                                 load_manifest, normalize_intensity, skip_subject, split_subjects, work_folder,
                                 write_prepared)
from mudiff.data.subjects import (DataError, _as_label, _check_contrast, _check_finite, _check_grid, _read,
                                  check_finished, natural_key, to_file_grid)

FILES = ("mr", "ct", "mask")
HU_WINDOW = (-1024.0, 3000.0)
"""CT values are clipped to this window (HU) and mapped linearly onto [0, 1] (onto [-1, 1] for the networks)."""
CT_MAPPING = (f"unit = (clip(HU, {HU_WINDOW[0]:g}, {HU_WINDOW[1]:g}) - ({HU_WINDOW[0]:g})) / "
              f"{HU_WINDOW[1] - HU_WINDOW[0]:g}")


def hu_to_unit(hu):
    """HU -> [0, 1] with the fixed window mapping (numpy arrays or tensors)."""
    low, high = HU_WINDOW
    clipped = hu.clip(low, high) if hasattr(hu, "clip") else min(max(hu, low), high)
    return (clipped - low) / (high - low)


def unit_to_hu(unit):
    """[0, 1] -> HU, the inverse of :func:`hu_to_unit` inside the window."""
    low, high = HU_WINDOW
    return unit * (high - low) + low


# ---- finding and loading ---------------------------------------------------------------------------------------
@dataclass
class PairSubject:
    """The files of one SynthRAD-layout subject."""

    id: str
    files: dict[str, Path]


@dataclass
class LoadedPair:
    """Validated volumes reoriented to RAS+: ``mr``, ``ct`` (HU) float32 and ``mask`` uint8, (X, Y, Z) each (``mr``
    or ``ct`` None for a subject without it, e.g. one to translate); ``affine`` of the reoriented arrays,
    ``file_affine`` the files' own (:func:`write_slices_nifti` writes results on the files' grid)."""

    id: str
    mr: np.ndarray | None
    ct: np.ndarray | None
    mask: np.ndarray
    affine: np.ndarray
    file_affine: np.ndarray


def _nifti(folder: Path, name: str) -> Path | None:
    found = [folder / f"{name}{ext}" for ext in (".nii.gz", ".nii") if (folder / f"{name}{ext}").is_file()]
    if len(found) > 1:
        raise DataError(f"{folder}: both {found[0].name} and {found[1].name}; keep one")
    return found[0] if found else None


def find_synthrad_subjects(root: str | Path) -> list[PairSubject]:
    """Every folder under ``root`` holding any of mr/ct/mask NIfTI files; a folder missing one of them is an error
    naming it (a folder with none is ignored). Sorted naturally by id (the folder name)."""
    root = Path(root)
    if not root.is_dir():
        raise FileNotFoundError(f"data folder {root} does not exist")
    check_finished(root)
    subjects = []
    for folder, dirnames, _ in os.walk(root):
        dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
        folder = Path(folder)
        files = {name: _nifti(folder, name) for name in FILES}
        present = {k: v for k, v in files.items() if v is not None}
        if not present:
            continue
        missing = [f"{k}.nii.gz" for k in FILES if k not in present]
        if missing:
            raise DataError(f"{folder}: missing {', '.join(missing)} (a SynthRAD subject needs mr, ct and mask)")
        subjects.append(PairSubject(folder.name, present))
    if not subjects:
        raise DataError(f"{root}: no subject found; expected folders <id>/{{mr,ct,mask}}.nii.gz (SynthRAD2023)")
    ids = [s.id for s in subjects]
    twice = sorted({i for i in ids if ids.count(i) > 1})
    if twice:
        raise DataError(f"{root}: subject id(s) {twice} found in more than one folder")
    return sorted(subjects, key=lambda s: natural_key(s.id))


def _check_hu(ct: np.ndarray, path: Path) -> None:
    """CT values must be Hounsfield units: air near -1000, nothing far below."""
    low, high = float(ct.min()), float(ct.max())
    if low >= 0:
        raise DataError(f"{path}: every value is >= 0 (min {low:g}, max {high:g}), so these are not Hounsfield "
                        "units; the file was probably stored with an offset of 1024 (subtract it, or fix the "
                        "rescale intercept)")
    if low < -4000 or high > 40000:
        raise DataError(f"{path}: values from {low:g} to {high:g} are not plausible Hounsfield units")
    if low > -500:
        raise DataError(f"{path}: no voxel below -500 HU (min {low:g}); a head CT always holds air (-1000 HU)")


def load_synthrad_subject(subject: PairSubject) -> LoadedPair:
    """Read and validate one subject: readable NIfTI, 3D, finite, same shape and affine, MR not constant, CT in
    HU, a binary non-empty mask. The mask and at least one of MR and CT are required (a subject to translate needs
    only its source). Raises :class:`DataError` naming the file."""
    import nibabel as nib

    if "mask" not in subject.files or not {"mr", "ct"} & set(subject.files):
        raise DataError(f"subject {subject.id}: needs mask and mr or ct files, has {sorted(subject.files)}")
    mr = ct = ref = None
    if "mr" in subject.files:
        mr, affine = _read(subject.files["mr"])
        ref = (subject.files["mr"], mr.shape, affine)
        _check_contrast(mr, subject.files["mr"])
    if "ct" in subject.files:
        ct_path = subject.files["ct"]
        ct, ct_affine = _read(ct_path)
        if ref is None:
            affine, ref = ct_affine, (ct_path, ct.shape, ct_affine)
        _check_grid(ct_path, ct.shape, ct_affine, ref)
        _check_finite(ct, ct_path)
        _check_hu(ct, ct_path)  # before the constant check: an offset CT is named as such
        _check_contrast(ct, ct_path)
    mask_path = subject.files["mask"]
    mask, mask_affine = _read(mask_path)
    _check_grid(mask_path, mask.shape, mask_affine, ref)
    mask = _as_label(mask, mask_path)
    if mask.max() == 0:
        raise DataError(f"{mask_path}: the body mask is empty")
    if mask.max() > 1:
        raise DataError(f"{mask_path}: a body mask holds 0 and 1, found values up to {mask.max()}")
    ornt = nib.orientations.io_orientation(affine)

    def reorient(a: np.ndarray) -> np.ndarray:
        return np.ascontiguousarray(nib.orientations.apply_orientation(a, ornt))

    return LoadedPair(subject.id, None if mr is None else reorient(mr), None if ct is None else reorient(ct),
                      reorient(mask), affine @ nib.orientations.inv_ornt_aff(ornt, mask.shape), affine)


# ---- geometry --------------------------------------------------------------------------------------------------
def _padded(rows: int, cols: int, height: int, width: int) -> tuple[int, int, int, int]:
    """The smallest (H', W') >= (rows, cols) with the aspect ratio height:width, and the offsets of the slice in it."""
    scale = max(rows / height, cols / width)
    ph, pw = max(rows, round(height * scale)), max(cols, round(width * scale))
    return ph, pw, (ph - rows) // 2, (pw - cols) // 2


def _resize(stack: np.ndarray, size: tuple[int, int], nearest: bool) -> np.ndarray:
    if stack.shape[1:] == tuple(size):
        return stack
    t = torch.from_numpy(np.ascontiguousarray(stack, dtype=np.float32))[:, None]
    out = (F.interpolate(t, size=size, mode="nearest-exact") if nearest else
           F.interpolate(t, size=size, mode="bilinear", align_corners=False, antialias=True))
    return out[:, 0].numpy().astype(stack.dtype)


def to_slices(volume: np.ndarray, size: tuple[int, int], z: Sequence[int]) -> np.ndarray:
    """(X, Y, Z) RAS+ -> (K, height, width): rot90 (anterior up), zero-padded to the aspect ratio, resized
    (integer arrays nearest, float bilinear)."""
    slices = np.rot90(volume[:, :, list(z)], k=1, axes=(0, 1)).transpose(2, 0, 1)  # (K, Y, X)
    ph, pw, top, left = _padded(*slices.shape[1:], *size)
    canvas = np.zeros((len(slices), ph, pw), volume.dtype)
    canvas[:, top:top + slices.shape[1], left:left + slices.shape[2]] = slices
    return _resize(canvas, tuple(size), nearest=not np.issubdtype(volume.dtype, np.floating))


def restore_slices(slices: np.ndarray, shape: Sequence[int], z: Sequence[int], fill: float = 0.0) -> np.ndarray:
    """Inverse geometry of :func:`to_slices`: (K, height, width) -> (X, Y, Z) holding ``fill`` outside the slices."""
    x, y, _ = shape
    slices = np.asarray(slices)
    ph, pw, top, left = _padded(y, x, *slices.shape[1:])
    nearest = not np.issubdtype(slices.dtype, np.floating)
    canvas = _resize(slices if nearest else slices.astype(np.float32), (ph, pw), nearest)
    cropped = canvas[:, top:top + y, left:left + x]  # (K, Y, X)
    volume = np.full(tuple(shape), fill, canvas.dtype)
    volume[:, :, list(z)] = np.rot90(cropped.transpose(1, 2, 0), k=-1, axes=(0, 1))
    return volume


def write_slices_nifti(slices: np.ndarray, modality: str, pair: LoadedPair, z: Sequence[int], path: str | Path
                       ) -> Path:
    """Write model-space slices (K, H, W) in [-1, 1] of ``pair``'s axial indices ``z`` as a NIfTI volume on the
    subject's files' grid (their axis order and affine, voxel for voxel): a CT in HU (:func:`unit_to_hu`; -1024
    outside the slices), an MR in [0, 1] (0 outside)."""
    import nibabel as nib

    if modality not in ("mr", "ct"):
        raise ValueError(f"modality must be 'mr' or 'ct', got {modality!r}")
    unit = (np.asarray(slices, np.float32) + 1) / 2
    fill = HU_WINDOW[0] if modality == "ct" else 0.0
    volume = restore_slices(unit_to_hu(unit) if modality == "ct" else unit, pair.mask.shape, z, fill)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    img = nib.Nifti1Image(to_file_grid(volume, pair.file_affine).astype(np.float32), pair.file_affine)
    img.set_sform(pair.file_affine, code=1)
    img.set_qform(pair.file_affine, code=1)
    nib.save(img, path)
    return path


def body_slices(mask: np.ndarray, k: int) -> list[int]:
    """The middle ``k`` axial indices of the body's z-extent (fewer if it spans fewer)."""
    occupied = np.flatnonzero(mask.any(axis=(0, 1)))
    first, extent = int(occupied[0]), int(occupied[-1] - occupied[0] + 1)
    start = first + max(0, (extent - k) // 2)
    return list(range(start, start + min(k, extent)))


def prepare_volumes(pair: LoadedPair, size: tuple[int, int], z: Sequence[int], low_percentile: float = 1.0,
                    high_percentile: float = 99.0) -> dict[str, np.ndarray]:
    """One subject's slices: ``mr`` and ``ct`` (those it has) (K, H, W) float32 in [0, 1] and ``mask`` (K, H, W)
    uint8."""
    body = pair.mask > 0
    all_z = range(len(z))
    mask = to_slices(pair.mask[:, :, list(z)], size, all_z)
    out = {"mask": mask}
    if pair.mr is not None:
        low, high = np.percentile(pair.mr[body], [low_percentile, high_percentile])
        if high <= low:
            raise DataError(f"subject {pair.id}: the MR is constant inside the body mask")
        mr = normalize_intensity(np.where(body, pair.mr, low)[:, :, list(z)], (float(low), float(high)))
        out["mr"] = np.clip(to_slices(mr, size, all_z), 0, 1) * mask
    if pair.ct is not None:
        ct = hu_to_unit(np.where(body, pair.ct, HU_WINDOW[0])[:, :, list(z)]).astype(np.float32)
        out["ct"] = np.clip(to_slices(ct, size, all_z), 0, 1) * mask
    return out


def prepare_synthrad(data_dir: str | Path, out_dir: str | Path, height: int = 256, width: int | None = None,
                     slices: int = 80, split: tuple[float, float, float] = (0.7, 0.2, 0.1), seed: int = 0,
                     strict: bool = False, overwrite: bool = False, low_percentile: float = 1.0,
                     high_percentile: float = 99.0) -> Path:
    """Prepare every subject under ``data_dir`` (SynthRAD layout) into ``out_dir``; returns the manifest path.

    A subject failing validation is skipped with a warning and recorded (``strict=True``: the error stops the
    run). Written into a hidden folder and renamed at the end, as :func:`mudiff.data.prepare.prepare_dataset`.
    """
    width = height if width is None else width
    check_slice_size(height, width)
    if slices < 1:
        raise ValueError(f"slices must be >= 1, got {slices}")
    if not 0 <= low_percentile < high_percentile <= 100:
        raise ValueError(f"need 0 <= low_percentile < high_percentile <= 100, got {low_percentile}, "
                         f"{high_percentile}")
    data_dir, out_dir = Path(data_dir), Path(out_dir)
    check_output_folder(out_dir, overwrite, [data_dir])
    subjects = find_synthrad_subjects(data_dir)
    planned = split_subjects([s.id for s in subjects], split, seed)
    work = work_folder(out_dir)
    size = (height, width)
    try:
        arrays = {"mr": "images_mr.npy", "ct": "images_ct.npy", "brain_mask": "brain_mask.npy",
                  "lesion_mask": "lesion_mask.npy", "label": "label.npy"}
        for name, file in arrays.items():
            np.lib.format.open_memmap(work / file, mode="w+", shape=(len(subjects) * slices, *size),
                                      dtype=np.float32 if name in ("mr", "ct") else np.uint8)
        table, info, files, skipped = [], {}, {}, []
        for subject in subjects:
            try:
                pair = load_synthrad_subject(subject)
                z = body_slices(pair.mask, slices)
                rows = prepare_volumes(pair, size, z, low_percentile, high_percentile)
            except DataError as err:
                skip_subject(subject.id, err, strict, skipped)
                continue
            start = len(table)
            for name, key in (("mr", "mr"), ("ct", "ct"), ("brain_mask", "mask")):
                _write_rows(work / arrays[name], start, rows[key])
            table += [(start + i, subject.id, zi) for i, zi in enumerate(z)]
            info[subject.id] = {"first_index": start, "slices": len(z), "z": [z[0], z[-1]],
                                "shape": list(pair.mask.shape), "affine": pair.affine.round(6).tolist()}
            files[subject.id] = {k: {"path": os.path.relpath(p, data_dir), "sha256": _sha256(p)}
                                 for k, p in subject.files.items()}
        if not table:
            raise DataError(f"{data_dir}: no valid subject to prepare; skipped: {skipped}")
        for file in arrays.values():
            _shrink_npy(work / file, len(table))
        split_ids = {name: [i for i in planned[name] if i in info] for name in SPLITS}
        write_prepared(work, out_dir, overwrite, table, split_ids, {
            "source": {"data_dir": str(data_dir.resolve()), "dataset": "synthrad", "files": files},
            "preprocessing": {"size": height if height == width else [height, width], "height": height,
                              "width": width, "slices": slices, "low_percentile": low_percentile,
                              "high_percentile": high_percentile,
                              "intensity": {"mr": "clip to the percentiles of the body's voxels, min-max to [0, 1]",
                                            "ct": CT_MAPPING},
                              "hu_window": list(HU_WINDOW), "outside_body": "MR 0, CT -1024 HU",
                              "slice_selection": "middle of the body's z-extent",
                              "orientation": "RAS+; slice = np.rot90(volume[:, :, z]), zero-padded to the aspect "
                                             "ratio, resized", "brain_mask": "the body mask (mask.nii.gz)",
                              "lesion": "none (zero)"},
            "contrasts": ["mr", "ct"],
            "arrays": {"mr": arrays["mr"], "ct": arrays["ct"], "brain_mask": arrays["brain_mask"],
                       "lesion_mask": arrays["lesion_mask"], "label": arrays["label"]},
            "split": {"seed": seed, "fractions": list(split), "split_file": None, **split_ids},
            "subjects": info, "skipped": skipped, "unlisted": [],
        })
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return out_dir / "manifest.json"


# ---- datasets --------------------------------------------------------------------------------------------------
class MRCTDataset(Dataset):
    """MR and CT slices of one split, scaled to [-1, 1].

    ``unpaired=False`` (evaluation): item i is slice i of both modalities (``mr``, ``ct``, ``body_mask``, each
    (1, H, W), ``subject``, ``z``, ``index``). ``unpaired=True`` (training): MR and CT slices come in two streams,
    each shuffled by its own generator per epoch (:meth:`set_epoch`); item i holds ``mr``, ``mr_mask``,
    ``mr_subject``, ``mr_index`` and the same for ``ct``. The streams' subjects (``subjects``): ``"disjoint"``, the
    split's subjects divided (seeded) into two halves, MR from one and CT from the other, so that no item can hold
    the MR and CT of one subject; ``"shared"``, both from every subject (the published code's emulation: "we
    shuffled subject identities"), twice the slices per domain, and an item holds one subject's MR and CT by chance
    only. No loss of the cycle methods reads both domains of an item, so neither can use a pairing.
    """

    def __init__(self, root: str | Path, split: str = "train", unpaired: bool = False, seed: int = 0,
                 subjects: str = "disjoint"):
        if subjects not in UNPAIRED_SUBJECTS:
            raise ValueError(f"subjects must be one of {UNPAIRED_SUBJECTS}, got {subjects!r}")
        self.root, self.split, self.unpaired, self.seed = Path(root), split, unpaired, seed
        manifest = load_manifest(self.root)
        missing = [c for c in ("mr", "ct") if c not in manifest["contrasts"]]
        if missing:
            raise ValueError(f"{self.root} holds no {missing} slices (contrasts {manifest['contrasts']}); prepare it "
                             "with mudiff.data.synthrad.prepare_synthrad")
        if split not in (*SPLITS, "all"):
            raise ValueError(f"split must be one of {(*SPLITS, 'all')}, got {split!r}")
        pre = manifest["preprocessing"]
        self.height, self.width = int(pre.get("height", pre["size"])), int(pre.get("width", pre["size"]))
        table = pd.read_csv(self.root / "slices.csv", dtype={"subject": str, "split": str})
        if split != "all":
            table = table[table["split"] == split]
        if table.empty:
            raise ValueError(f"the {split} split of {self.root} holds no slice")
        self._table = table.reset_index(drop=True)
        self._total = manifest["counts"]["slices"]
        self._files = {k: self.root / manifest["arrays"][k] for k in ("mr", "ct", "brain_mask")}
        self._arrays: dict[str, np.ndarray] | None = None
        names = sorted(self._table["subject"].unique(), key=natural_key)
        self.subjects_by_domain = {"mr": names, "ct": names}
        if unpaired and subjects == "disjoint":
            if len(names) < 2:
                raise ValueError(f"unpaired training needs >= 2 subjects in the {split} split of {self.root} (MR "
                                 f"and CT from disjoint subjects), found {len(names)}")
            order = np.random.default_rng(seed).permutation(len(names))
            half = len(names) // 2
            self.subjects_by_domain = {"mr": sorted([names[i] for i in order[:half]], key=natural_key),
                                       "ct": sorted([names[i] for i in order[half:]], key=natural_key)}
        if unpaired:
            self._rows = {d: self._table[self._table["subject"].isin(s)].reset_index(drop=True)
                          for d, s in self.subjects_by_domain.items()}
            self.set_epoch(0)

    def set_epoch(self, epoch: int) -> None:
        """Draw this epoch's independent shuffles of the MR and of the CT stream (unpaired mode)."""
        if self.unpaired:
            self._perm = {d: np.random.default_rng([self.seed, epoch, k]).permutation(len(rows))
                          for k, (d, rows) in enumerate(self._rows.items())}

    @property
    def arrays(self) -> dict[str, np.ndarray]:
        if self._arrays is None:
            arrays = {k: np.load(p, mmap_mode="r") for k, p in self._files.items()}
            wrong = {k: a.shape for k, a in arrays.items() if a.shape != (self._total, self.height, self.width)}
            if wrong:
                raise ValueError(f"the arrays in {self.root} do not match its manifest ({self._total} slices of "
                                 f"{self.height}x{self.width}): {wrong}; prepare the data again")
            self._arrays = arrays
        return self._arrays

    def __getstate__(self) -> dict:
        return {**self.__dict__, "_arrays": None}

    def __len__(self) -> int:
        return max(len(r) for r in self._rows.values()) if self.unpaired else len(self._table)

    def _image(self, name: str, row: int) -> torch.Tensor:
        return torch.from_numpy(np.asarray(self.arrays[name][row])[None] * np.float32(2) - np.float32(1))

    def _mask(self, row: int) -> torch.Tensor:
        return torch.from_numpy(np.asarray(self.arrays["brain_mask"][row])[None].astype(np.float32))

    def __getitem__(self, i: int) -> dict:
        if not self.unpaired:
            rec = self._table.iloc[i]
            j = int(rec["index"])
            return {"mr": self._image("mr", j), "ct": self._image("ct", j), "body_mask": self._mask(j),
                    "subject": str(rec["subject"]), "z": int(rec["z"]), "index": j}
        item = {}
        for domain, rows in self._rows.items():
            rec = rows.iloc[int(self._perm[domain][i % len(rows)])]
            j = int(rec["index"])
            item.update({domain: self._image(domain, j), f"{domain}_mask": self._mask(j),
                         f"{domain}_subject": str(rec["subject"]), f"{domain}_index": j})
        return item

    @property
    def slice_table(self) -> pd.DataFrame:
        return self._table.copy()

    def __repr__(self) -> str:
        mode = "unpaired" if self.unpaired else "paired"
        return (f"MRCTDataset({self.split!r}, {mode}, {len(self)} items, {self.height}x{self.width}, "
                f"root={str(self.root)!r})")


__all__ = ["HU_WINDOW", "CT_MAPPING", "hu_to_unit", "unit_to_hu", "PairSubject", "LoadedPair", "find_synthrad_subjects",
           "load_synthrad_subject", "to_slices", "restore_slices", "write_slices_nifti", "body_slices",
           "prepare_volumes",
           "prepare_synthrad", "MRCTDataset"]
