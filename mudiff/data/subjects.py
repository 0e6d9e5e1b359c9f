"""Real subjects on disk: find them (BraTS 2019-2021 and 2023, ISLES 2015 SISS, the phantom) and load them.

Layouts, detected per subject folder (``dataset="auto"``) or chosen with ``dataset=``:

- ``brats``: ``<id>/<id>_{t1,t1ce,t2,flair,seg}.nii.gz`` (BraTS 2019-2021; the phantom, whose stroke kind has
  ``_dwi`` instead of ``_t1ce``, and which adds an optional normal-tissue label map ``<id>_tissue.nii.gz``).
  Nested folders (BraTS 2019's ``HGG/`` and ``LGG/``) are searched too.
- ``brats2023``: ``<id>/<id>-{t1n,t1c,t2w,t2f,seg}.nii.gz``, read as t1, t1ce, t2, flair.
- ``isles2015``: ``<case>/VSD.Brain.XX.O.MR_{T1,T2,DWI,Flair}.<n>/*.nii`` with the lesion in
  ``VSD.Brain.XX.O.OT.<n>/``; the case folder's name is the subject id.

Every layout also accepts uncompressed ``.nii``. Loading validates what a silent corruption would hide and raises
:class:`DataError` naming the file and the problem.
"""
from __future__ import annotations

import gzip
import os
import re
import zlib
from collections import Counter
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

import nibabel as nib
import numpy as np
from nibabel.filebasedimages import ImageFileError
from nibabel.spatialimages import HeaderDataError
from nibabel.wrapstruct import WrapStructError

CONTRASTS = ("t1", "t1ce", "t2", "flair", "dwi", "pd")
DATASETS = ("brats", "brats2023", "isles2015")
AFFINE_ATOL = 1e-3  # mm (translations) and direction cosines; float32 header rounding stays far below
_LABEL = "seg"
_TISSUE = "tissue"  # optional normal-tissue label map (the phantom's); real datasets have none
_NIFTI = re.compile(r"\.nii(\.gz)?$")
_FILE_LAYOUTS = {  # dataset -> (file name pattern, renaming of the file's key to a canonical contrast name)
    "brats": (re.compile(r"^(?P<id>.+)_(?P<key>t1|t1ce|t2|flair|dwi|pd|seg|tissue)\.nii(\.gz)?$"), {}),
    "brats2023": (re.compile(r"^(?P<id>.+)-(?P<key>t1n|t1c|t2w|t2f|seg)\.nii(\.gz)?$"),
                  {"t1n": "t1", "t1c": "t1ce", "t2w": "t2", "t2f": "flair"}),
}
_ISLES_DIR = re.compile(r"^VSD\.Brain[^.]*\.XX\.O\.(?P<key>MR_[A-Za-z0-9]+|OT)\.\d+$")
_ISLES_KEYS = {"mr_t1": "t1", "mr_t1c": "t1ce", "mr_t2": "t2", "mr_dwi": "dwi", "mr_flair": "flair", "ot": _LABEL}


class DataError(ValueError):
    """A subject's files cannot be used; the message names the file (or folder) and the problem."""


UNFINISHED = ".generating"  # in a data folder while a generator writes it; left there if the generator stops


@contextmanager
def generating(folder: Path, generator: str) -> Iterator[None]:
    """Mark ``folder`` unfinished while the block writes subjects into it: the mark stays if the block raises (or
    the process is killed), and :func:`check_finished` makes every reader refuse the half-written folder."""
    marker = folder / UNFINISHED
    marker.write_text(f"{generator} started writing this folder and has not finished\n")
    yield
    marker.unlink()


def check_finished(root: Path) -> None:
    """A DataError if a generator started writing ``root`` and did not finish (:func:`generating`)."""
    marker = root / UNFINISHED
    if marker.is_file():
        raise DataError(f"{root}: {marker.read_text().strip()} (interrupted?), so its subjects may be missing or "
                        "half-written; delete the folder, or generate it again with overwrite=True")


@dataclass
class Subject:
    """The files of one subject: ``images`` maps canonical contrast names to NIfTI paths; ``label`` and
    ``tissue`` (a normal-tissue label map) may be None."""

    id: str
    images: dict[str, Path]
    label: Path | None
    dataset: str
    folder: Path | None = None
    tissue: Path | None = None

    @property
    def files(self) -> dict[str, Path]:
        """Every file of the subject, the label under the key ``"seg"``, the tissue map under ``"tissue"``."""
        labels = {_LABEL: self.label, _TISSUE: self.tissue}
        return {**self.images, **{k: p for k, p in labels.items() if p is not None}}


@dataclass
class LoadedSubject:
    """Validated voxel data on one grid, reoriented to RAS+ (nibabel's closest canonical orientation).

    ``images[c]``: (X, Y, Z) float32, axis 2 axial (inferior to superior); ``label``, ``tissue``: (X, Y, Z) uint8
    or None; ``affine``: (4, 4) of the reoriented arrays; ``file_affine``: the files' own; ``orientation``: the
    files' axis codes. A result on the reoriented grid goes back to the files' with :func:`to_file_grid`.
    """

    id: str
    images: dict[str, np.ndarray]
    label: np.ndarray | None
    affine: np.ndarray
    file_affine: np.ndarray
    orientation: str
    voxel_size: tuple[float, float, float]
    tissue: np.ndarray | None = None

    @property
    def shape(self) -> tuple[int, int, int]:
        return next(iter(self.images.values())).shape


def natural_key(text: str) -> list:
    """Sort key that puts ``"2"`` before ``"10"`` (ISLES cases are numbered)."""
    return [int(part) if part.isdigit() else part for part in re.split(r"(\d+)", text)]


def _check_dataset(dataset: str) -> None:
    if dataset != "auto" and dataset not in DATASETS:
        raise ValueError(f"dataset must be 'auto' or one of {DATASETS}, got {dataset!r}")


def _put(files: dict[str, Path], key: str, path: Path) -> None:
    if key in files:
        raise DataError(f"{path.parent}: two files for {key!r}: {files[key].name} and {path.name}; keep one")
    files[key] = path


def _subjects_in(folder: Path, dirnames: list[str], filenames: list[str]) -> list[Subject]:
    """The subjects whose files lie directly in ``folder`` (BraTS) or in its VSD.Brain sub-folders (ISLES)."""
    groups: dict[tuple[str, str], dict[str, Path]] = {}
    for name in dirnames:
        match = _ISLES_DIR.match(name)
        key = _ISLES_KEYS.get(match["key"].lower()) if match else None
        if key:  # other ISLES maps (perfusion of SPES) are not contrasts of this workbench
            for path in sorted((folder / name).iterdir()):
                if _NIFTI.search(path.name):
                    _put(groups.setdefault(("isles2015", folder.name), {}), key, path)
    for name in filenames:
        for dataset, (pattern, rename) in _FILE_LAYOUTS.items():
            match = pattern.match(name)
            if match:
                key = rename.get(match["key"], match["key"])
                _put(groups.setdefault((dataset, match["id"]), {}), key, folder / name)
    return [Subject(sid, {k: p for k, p in files.items() if k not in (_LABEL, _TISSUE)}, files.get(_LABEL), dataset,
                    folder, files.get(_TISSUE))
            for (dataset, sid), files in groups.items()]


def find_subjects(root: str | Path, dataset: str = "auto") -> list[Subject]:
    """All subjects under ``root`` (searched recursively, hidden folders skipped), sorted by id."""
    _check_dataset(dataset)
    root = Path(root)
    if not root.is_dir():
        raise FileNotFoundError(f"data folder {root} does not exist")
    check_finished(root)
    subjects: list[Subject] = []
    for folder, dirnames, filenames in os.walk(root):
        dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
        subjects += _subjects_in(Path(folder), dirnames, sorted(filenames))
    layouts = sorted({s.dataset for s in subjects})
    if dataset != "auto":
        subjects = [s for s in subjects if s.dataset == dataset]
    if not subjects:
        found = f"; found only the layout(s) {layouts}" if layouts else ""
        raise DataError(
            f"{root}: no {'' if dataset == 'auto' else dataset + ' '}subject found{found}. Expected folders with "
            "<id>_t1.nii.gz ... <id>_seg.nii.gz (BraTS 2019-2021), <id>-t1n.nii.gz ... (BraTS 2023) or "
            "VSD.Brain.XX.O.MR_T1.<n>/ ... (ISLES 2015)")
    twice = sorted(sid for sid, n in Counter(s.id for s in subjects).items() if n > 1)
    if twice:
        where = [str(s.folder) for s in subjects if s.id in twice]
        raise DataError(f"{root}: subject id(s) {twice} found in more than one folder: {where}")
    return sorted(subjects, key=lambda s: natural_key(s.id))


def find_subject(folder: str | Path, dataset: str = "auto") -> Subject:
    """The one subject whose files lie in ``folder`` (not searched recursively)."""
    _check_dataset(dataset)
    folder = Path(folder)
    if not folder.is_dir():
        raise FileNotFoundError(f"subject folder {folder} does not exist")
    entries = sorted(folder.iterdir())
    found = [s for s in _subjects_in(folder, [p.name for p in entries if p.is_dir()],
                                     [p.name for p in entries if p.is_file()])
             if dataset in ("auto", s.dataset)]
    if len(found) != 1:
        raise DataError(f"{folder}: expected the files of one subject, found {len(found)} "
                        f"({[s.id for s in found]})")
    return found[0]


def _read(path: Path) -> tuple[np.ndarray, np.ndarray]:
    """(X, Y, Z) float32 voxels (header scaling applied) and the (4, 4) affine of a NIfTI file."""
    try:
        raw = path.read_bytes()
        if path.name.endswith(".gz"):
            # Decompress it all: this checks the gzip CRC, whereas nibabel reads only the bytes it needs and
            # returns garbage voxels from a corrupt stream without a word.
            raw = gzip.decompress(raw)
        image = (nib.Nifti2Image if raw[4:7] == b"n+2" else nib.Nifti1Image).from_bytes(raw)
        shape = image.shape
        if not (len(shape) == 3 or (len(shape) == 4 and shape[3] == 1)):
            raise DataError(f"{path}: expected a 3D volume (or 4D with one volume), got shape {shape}")
        data = image.get_fdata(dtype=np.float32).reshape(shape[:3])
    except (ImageFileError, HeaderDataError, WrapStructError, OSError, EOFError, ValueError, TypeError,
            zlib.error) as err:  # TypeError: voxel types that are not numbers (e.g. RGB)
        if isinstance(err, DataError):
            raise
        raise DataError(f"{path}: cannot read the NIfTI file, is it truncated or corrupt? "
                        f"({type(err).__name__}: {err})") from err
    return data, image.affine


def _check_finite(data: np.ndarray, path: Path) -> None:
    bad = data.size - np.count_nonzero(np.isfinite(data))
    if bad:
        raise DataError(f"{path}: {bad} non-finite voxel(s) (NaN or inf) out of {data.size}")


def _check_contrast(data: np.ndarray, path: Path) -> None:
    _check_finite(data, path)
    low, high = data.min(), data.max()
    if low == high:
        raise DataError(f"{path}: empty volume (every voxel is 0)" if high == 0
                        else f"{path}: constant volume (every voxel is {high:g})")


def _check_grid(path: Path, shape: tuple, affine: np.ndarray, ref: tuple[Path, tuple, np.ndarray]) -> None:
    ref_path, ref_shape, ref_affine = ref
    if shape != ref_shape:
        raise DataError(f"{path}: shape {shape} differs from {ref_shape} of {ref_path}")
    if not np.allclose(affine, ref_affine, rtol=0, atol=AFFINE_ATOL):
        raise DataError(f"{path}: affine differs from that of {ref_path} (largest difference "
                        f"{np.abs(affine - ref_affine).max():.3g}); the contrasts must be co-registered on one grid")


def _as_label(data: np.ndarray, path: Path) -> np.ndarray:
    _check_finite(data, path)
    if data.min() < 0 or data.max() > 255 or not np.array_equal(data, np.round(data)):
        raise DataError(f"{path}: a label map must hold integers 0..255, found values such as "
                        f"{np.unique(data)[:8].tolist()}")
    return data.astype(np.uint8)


def load_subject(subject: Subject, contrasts: list[str] | None = None) -> LoadedSubject:
    """Read and validate ``contrasts`` (default: all the subject has), the label and the tissue map (when the
    subject has them), reoriented to RAS+.

    Raises :class:`DataError` for a missing contrast, an unreadable file, a non-3D image, non-finite voxels,
    an empty or constant image, a label that is not integer, or shapes/affines that differ between the files.
    """
    names = list(subject.images) if contrasts is None else list(contrasts)
    if len(set(names)) != len(names):
        raise ValueError(f"contrasts {names} name a contrast twice")
    missing = [c for c in names if c not in subject.images]
    if missing or not names:
        raise DataError(f"subject {subject.id} ({subject.folder}): missing contrast(s) {missing or 'all'}; "
                        f"it has {sorted(subject.images)}")
    # One orientation for every dataset (BraTS is LPS, others differ) so slices look alike and axis 2 is axial;
    # each array is reoriented as soon as it is read, so a subject is held in memory once.
    ref_path = subject.images[names[0]]
    data, affine = _read(ref_path)
    ref = (ref_path, data.shape, affine)
    ornt = nib.orientations.io_orientation(affine)

    def reorient(a: np.ndarray) -> np.ndarray:
        return np.ascontiguousarray(nib.orientations.apply_orientation(a, ornt))

    images: dict[str, np.ndarray] = {}
    for name in names:
        path = subject.images[name]
        if path != ref_path:
            data, image_affine = _read(path)
            _check_grid(path, data.shape, image_affine, ref)
        _check_contrast(data, path)
        images[name] = reorient(data)
        del data  # the next read must not overlap this array
    def read_label(path: Path | None) -> np.ndarray | None:
        if path is None:
            return None
        data, image_affine = _read(path)
        _check_grid(path, data.shape, image_affine, ref)
        return reorient(_as_label(data, path))

    return LoadedSubject(
        id=subject.id, images=images, label=read_label(subject.label),
        affine=affine @ nib.orientations.inv_ornt_aff(ornt, ref[1]), file_affine=affine,
        orientation="".join(nib.aff2axcodes(affine)),
        voxel_size=tuple(float(v) for v in nib.affines.voxel_sizes(affine)), tissue=read_label(subject.tissue),
    )


def check_volume_output(out: str | Path, subject_dir: str | Path) -> Path:
    """A path to write a synthetic volume of the subject in ``subject_dir`` to: a NIfTI file name (.nii, .nii.gz)
    outside the subject's folder, where it could replace the subject's own images or be read as one of them.
    Checked before the synthesis, so that a bad name does not lose it."""
    out = Path(out)
    if not out.name.endswith((".nii", ".nii.gz")) or out.is_dir():
        raise ValueError(f"the output must be a NIfTI file name ending in .nii or .nii.gz, got {out}")
    if Path(subject_dir).resolve() in out.resolve().parents:
        raise ValueError(f"{out} is inside the subject's folder {subject_dir}: a synthetic volume there could replace "
                         "the subject's own images or be read as one of them; write it elsewhere")
    return out


def to_file_grid(volume: np.ndarray, file_affine: np.ndarray) -> np.ndarray:
    """Undo the loaders' reorientation to RAS+: an (X, Y, Z) array on the reoriented grid -> the same voxels in the
    axis order of the files whose affine is ``file_affine`` (BraTS: LPS). Saved with ``file_affine``, a result
    matches the source files voxel for voxel, not only in a viewer's world coordinates."""
    back = nib.orientations.ornt_transform(nib.orientations.axcodes2ornt("RAS"),
                                           nib.orientations.io_orientation(file_affine))
    return np.ascontiguousarray(nib.orientations.apply_orientation(volume, back))


__all__ = ["CONTRASTS", "DATASETS", "DataError", "UNFINISHED", "generating", "check_finished", "Subject",
           "LoadedSubject", "find_subjects", "find_subject", "load_subject", "natural_key", "check_volume_output",
           "to_file_grid"]
