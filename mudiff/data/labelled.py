"""Labelled 2D slices for class-conditioned generation (issue 11): the phantom's tumour classes, a folder-per-class
image set, and a tumour / no-tumour slice export of BraTS, all written in one prepared layout::

    <root>/manifest.json   format_version, layout "labelled_slices", classes, counts per split and class, source
    <root>/{train,val,test}.npz   images (N, C, H, W) float32 in [-1, 1], labels (N,) int64, origins (N,) str

Splits are drawn per subject (phantom, BraTS) or per image (folder sets without their own split), stratified by
class, and every class must be present in every split. One loader (:class:`LabelledSliceDataset`) reads them all.
Phantom slices are a controlled benchmark with known truth, not evidence about real patients.
"""
from __future__ import annotations

import json
import math
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Mapping, Sequence

import numpy as np
import torch
from torch.utils.data import Dataset

from mudiff.data.prepare import FORMAT_VERSION, SPLITS, check_output_folder, preprocess_volume, split_counts
from mudiff.data.subjects import DataError, find_subjects, load_subject, natural_key

LAYOUT = "labelled_slices"
PHANTOM_CLASSES = {"healthy": "healthy", "glioma": "tumour", "meningioma": "meningioma", "metastases": "metastases"}
"""Class name -> phantom kind (``tumour`` is the phantom's glioma-like lesion)."""
DEFAULT_SUBJECTS = {"healthy": 12, "glioma": 8, "meningioma": 5, "metastases": 5}
"""Phantom subjects per class: imbalanced on purpose, as the small clinical sets this serves."""
CENTRAL_SHARE = 0.6
"""Slices are drawn from this central share of the brain's height (no tiny vertex or skull-base slices)."""
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg")
FOLDER_SPLITS = {"train": "train", "training": "train", "val": "val", "validation": "val", "test": "test",
                 "testing": "test"}
"""Split folder names understood in a folder-per-class set (case-insensitive), e.g. Kaggle's Training/Testing."""


@dataclass
class LabelledSlices:
    """images (N, C, H, W) float32 in [-1, 1]; labels (N,) int64 indices into ``classes``; origins (N,) where
    each came from (file path, or subject id and slice index)."""

    images: np.ndarray
    labels: np.ndarray
    classes: tuple[str, ...]
    origins: np.ndarray

    def __post_init__(self):
        self.images = np.asarray(self.images, np.float32)
        self.labels = np.asarray(self.labels, np.int64)
        self.origins = np.asarray(self.origins, str)
        if self.images.ndim != 4 or len(self.images) != len(self.labels) or len(self.labels) != len(self.origins):
            raise ValueError(f"need images (N, C, H, W), labels (N,), origins (N,); got {self.images.shape}, "
                             f"{self.labels.shape}, {self.origins.shape}")
        if len(self.labels) and not 0 <= self.labels.min() <= self.labels.max() < len(self.classes):
            raise ValueError(f"labels must index the {len(self.classes)} classes {self.classes}")
        if not np.isfinite(self.images).all() or self.images.min(initial=0) < -1 or self.images.max(initial=0) > 1:
            raise ValueError("images must be finite and in [-1, 1]")

    def __len__(self) -> int:
        return len(self.labels)

    def counts(self) -> dict[str, int]:
        """Images per class."""
        return {c: int((self.labels == k).sum()) for k, c in enumerate(self.classes)}

    def subset(self, index: np.ndarray | Sequence[int]) -> "LabelledSlices":
        index = np.asarray(index, np.int64)
        return LabelledSlices(self.images[index], self.labels[index], self.classes, self.origins[index])

    def of_class(self, name: str) -> np.ndarray:
        """(n, C, H, W) images of class ``name``."""
        if name not in self.classes:
            raise ValueError(f"unknown class {name!r}; classes: {self.classes}")
        return self.images[self.labels == self.classes.index(name)]


# ---- the prepared layout -----------------------------------------------------------------------------------------
def write_labelled(out: str | Path, splits: Mapping[str, LabelledSlices], source: dict,
                   overwrite: bool = False, inputs: Sequence[str | Path] = ()) -> Path:
    """Write ``splits`` (train, val, test) and the manifest into ``out``; every class must be in every split.
    ``inputs``: the folders the slices were read from (``out`` must not be one of them or hold one)."""
    out = Path(out)
    check_output_folder(out, overwrite, inputs)
    if set(splits) != set(SPLITS):
        raise ValueError(f"need the splits {SPLITS}, got {sorted(splits)}")
    classes = splits["train"].classes
    for name, part in splits.items():
        if part.classes != classes:
            raise ValueError(f"split {name} has classes {part.classes}, train has {classes}")
        missing = [c for c, n in part.counts().items() if n == 0]
        if missing:
            raise ValueError(f"class(es) {missing} missing from the {name} split ({part.counts()}); add images or "
                             "change the split fractions")
    shapes = {part.images.shape[1:] for part in splits.values()}
    if len(shapes) != 1:
        raise ValueError(f"the splits hold images of different shapes {sorted(shapes)}")
    if out.exists() and any(out.iterdir()):
        shutil.rmtree(out)  # a prepared dataset, replaced on request (check_output_folder)
    out.mkdir(parents=True, exist_ok=True)
    for name, part in splits.items():
        np.savez(out / f"{name}.npz", images=part.images, labels=part.labels, origins=part.origins)
    channels, height, width = shapes.pop()
    manifest = {"format_version": FORMAT_VERSION, "layout": LAYOUT, "classes": list(classes), "channels": channels,
                "image_size": [height, width], "counts": {n: splits[n].counts() for n in SPLITS},
                "range": [-1.0, 1.0], "source": source}
    (out / "manifest.json").write_text(json.dumps(manifest, indent=1) + "\n")
    return out


def read_manifest(root: str | Path) -> dict:
    """The manifest of a labelled-slice folder, with clear errors for anything else."""
    path = Path(root) / "manifest.json"
    if not path.is_file():
        raise FileNotFoundError(f"{root} holds no labelled slices (no manifest.json); make them with "
                                "mudiff.data.labelled.phantom_class_slices, prepare_image_folder or brats_slices")
    manifest = json.loads(path.read_text())
    if manifest.get("layout") != LAYOUT or manifest.get("format_version") != FORMAT_VERSION:
        raise ValueError(f"{path} is not a labelled-slice manifest of format {FORMAT_VERSION} "
                         f"(layout {manifest.get('layout')!r}, format {manifest.get('format_version')!r})")
    return manifest


def load_labelled(root: str | Path, split: str) -> LabelledSlices:
    """One split of a labelled-slice folder."""
    if split not in SPLITS:
        raise ValueError(f"split must be one of {SPLITS}, got {split!r}")
    manifest = read_manifest(root)
    with np.load(Path(root) / f"{split}.npz") as f:
        return LabelledSlices(f["images"], f["labels"], tuple(manifest["classes"]), f["origins"])


class LabelledSliceDataset(Dataset):
    """A split as items ``{"image": (C, H, W) float32 in [-1, 1], "label": () int64, "index": int}``."""

    def __init__(self, root: str | Path, split: str):
        self.root, self.split = Path(root), split
        self.data = load_labelled(root, split)
        self.classes = self.data.classes
        self.images = torch.from_numpy(self.data.images)
        self.labels = torch.from_numpy(self.data.labels)

    @property
    def channels(self) -> int:
        return self.images.shape[1]

    @property
    def image_size(self) -> int:
        """Side of the (square) images."""
        return self.images.shape[-1]

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, index: int) -> dict:
        return {"image": self.images[index], "label": self.labels[index], "index": int(index)}


# ---- splitting -----------------------------------------------------------------------------------------------------
def _stratified_split(groups: Mapping[str, Sequence[str]], fractions: Sequence[float], seed: int
                      ) -> dict[str, set[str]]:
    """Split the members of each class (``groups``: class -> member ids) by ``fractions``; -> split -> ids."""
    out: dict[str, set[str]] = {s: set() for s in SPLITS}
    rng = np.random.default_rng(seed)
    for cls, members in groups.items():
        ordered = sorted(members, key=natural_key)
        ordered = [ordered[i] for i in rng.permutation(len(ordered))]
        bounds = np.cumsum([0, *split_counts(len(ordered), fractions)])
        for k, split in enumerate(SPLITS):
            out[split].update(ordered[bounds[k]:bounds[k + 1]])
    return out


# ---- the phantom ---------------------------------------------------------------------------------------------------
def _volume_slices(images: Mapping[str, np.ndarray], contrasts: Sequence[str], size: int,
                   indices: Sequence[int]) -> np.ndarray:
    """(K, C, size, size) in [-1, 1] from (X, Y, Z) volumes: per-volume 1-99 percentile window, as prepare."""
    stack = np.stack([preprocess_volume(images[c], size, indices) for c in contrasts], axis=1)
    return stack * 2 - 1


def _lesion_share(seg: np.ndarray, brain: np.ndarray) -> np.ndarray:
    """(Z,) share of each axial slice's brain covered by lesion (seg, brain: (X, Y, Z))."""
    return (seg > 0).sum((0, 1)) / np.maximum(brain.sum((0, 1)), 1)


def _lesion_slices(seg: np.ndarray, brain: np.ndarray, min_fraction: float) -> np.ndarray:
    """Axial indices whose lesion covers at least ``min_fraction`` of the slice's brain (seg, brain: (X, Y, Z))."""
    return np.flatnonzero(brain.any((0, 1)) & (_lesion_share(seg, brain) >= min_fraction))


def _central_slices(brain: np.ndarray, keep: float) -> np.ndarray:
    """Axial indices in the central ``keep`` of the brain's z-extent (where slices look like brain, not a rim)."""
    occupied = np.flatnonzero(brain.any((0, 1)))
    lo, hi = occupied[0], occupied[-1]
    margin = (hi - lo) * (1 - keep) / 2
    return np.arange(math.ceil(lo + margin), math.floor(hi - margin) + 1)


def phantom_class_slices(out: str | Path, subjects_per_class: Mapping[str, int] | None = None, size: int = 32,
                         contrasts: Sequence[str] = ("t1ce",), slices_per_subject: int = 4,
                         split: Sequence[float] = (0.6, 0.2, 0.2), seed: int = 0, resolution: float = 2.0,
                         min_lesion_fraction: float = 0.015, overwrite: bool = False) -> Path:
    """Axial phantom slices labelled by class (``PHANTOM_CLASSES``), written in the labelled layout.

    Each class gets its own phantom subjects (``subjects_per_class``, imbalanced by default, seeds offset per class
    so that no healthy subject is the lesion-free twin of a tumour one), split by subject. A tumour subject gives
    the ``slices_per_subject`` slices where its lesion covers most of the brain (at least
    ``min_lesion_fraction``), a healthy one random slices, both within the central ``CENTRAL_SHARE`` of the
    brain's height. ``contrasts`` become
    the channels.
    """
    from mudiff.data.phantom import CONTRASTS, generate_subject, subject_id

    counts = dict(DEFAULT_SUBJECTS if subjects_per_class is None else subjects_per_class)
    unknown = set(counts) - set(PHANTOM_CLASSES)
    if unknown or not counts:
        raise ValueError(f"unknown phantom class(es) {sorted(unknown)}; choose among {list(PHANTOM_CLASSES)}")
    bad = {c: n for c, n in counts.items() if int(n) != n or n < len(SPLITS)}
    if bad:
        raise ValueError(f"every class needs at least {len(SPLITS)} subjects (one per split), got {bad}")
    missing = set(contrasts) - set(CONTRASTS["tumour"])
    if missing or not contrasts:
        raise ValueError(f"unknown contrast(s) {sorted(missing)}; the tumour phantoms have {CONTRASTS['tumour']}")
    if slices_per_subject < 1:
        raise ValueError(f"slices_per_subject must be >= 1, got {slices_per_subject}")
    classes = tuple(counts)
    members = {c: [f"{c}:{subject_id(PHANTOM_CLASSES[c], i)}" for i in range(counts[c])] for c in classes}
    assignment = _stratified_split(members, split, seed)
    parts: dict[str, list] = {s: [] for s in SPLITS}
    rng = np.random.default_rng(seed)
    for label, cls in enumerate(classes):
        kind = PHANTOM_CLASSES[cls]
        for i, member in enumerate(members[cls]):
            subject = generate_subject(i, seed * 1000 + 97 * label + 1, kind, resolution)
            brain = subject.images[contrasts[0]] > 0
            candidates = _central_slices(brain, CENTRAL_SHARE)
            if kind != "healthy":  # the same z-range for every class: brain size must not give the class away
                candidates = np.intersect1d(candidates, _lesion_slices(subject.seg, brain, min_lesion_fraction))
            if len(candidates) == 0:
                raise DataError(f"phantom subject {subject.id} ({cls}) has no slice whose lesion covers "
                                f"{min_lesion_fraction:.0%} of the brain in the central {CENTRAL_SHARE:.0%} of its "
                                "height; lower min_lesion_fraction")
            k = min(slices_per_subject, len(candidates))
            if kind == "healthy":
                chosen = np.sort(rng.choice(candidates, k, replace=False))
            else:  # the slices where the lesion is largest: the class must be visible at a small size
                chosen = np.sort(candidates[np.argsort(-_lesion_share(subject.seg, brain)[candidates],
                                                       kind="stable")[:k]])
            images = _volume_slices(subject.images, contrasts, size, chosen.tolist())
            split_name = next(s for s in SPLITS if member in assignment[s])
            parts[split_name].append((images, np.full(len(chosen), label), [f"{subject.id}:z{z}" for z in chosen]))
    splits = {s: LabelledSlices(np.concatenate([p[0] for p in parts[s]]), np.concatenate([p[1] for p in parts[s]]),
                                classes, np.concatenate([p[2] for p in parts[s]])) for s in SPLITS}
    source = {"kind": "phantom", "subjects_per_class": counts, "contrasts": list(contrasts), "size": size,
              "slices_per_subject": slices_per_subject, "split": list(split), "seed": seed,
              "resolution": resolution, "min_lesion_fraction": min_lesion_fraction,
              "class_to_phantom_kind": {c: PHANTOM_CLASSES[c] for c in classes}}
    return write_labelled(out, splits, source, overwrite)


# ---- a folder-per-class image set --------------------------------------------------------------------------------
def _read_image(path: Path, channels: int) -> np.ndarray:
    """(channels, h, w) float32 in [0, 1] from an 8- or 16-bit PNG/JPEG; grey for 1 channel, RGB for 3."""
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path) as img:
            img.load()
            if img.mode.startswith("I;16"):
                array = np.repeat(np.asarray(img, np.float32)[None] / 65535.0, channels, 0)
            else:
                array = np.asarray(img.convert("L" if channels == 1 else "RGB"), np.float32) / 255.0
                array = array[None] if channels == 1 else array.transpose(2, 0, 1)
    except (UnidentifiedImageError, OSError, ValueError) as err:
        raise DataError(f"cannot read image {path}: {err}") from err
    return np.clip(array, 0.0, 1.0)


def _resize_square(array: np.ndarray, size: int) -> np.ndarray:
    """(C, h, w) -> (C, size, size): zero-padded to a square (centred), then bilinear with anti-aliasing."""
    import torch.nn.functional as F

    c, h, w = array.shape
    side = max(h, w)
    square = np.zeros((c, side, side), np.float32)
    square[:, (side - h) // 2:(side - h) // 2 + h, (side - w) // 2:(side - w) // 2 + w] = array
    t = torch.from_numpy(square)[None]
    return F.interpolate(t, size=(size, size), mode="bilinear", align_corners=False, antialias=True)[0].numpy()


def read_image_folder(root: str | Path, size: int | None = None, channels: int = 1,
                      classes: Sequence[str] | None = None) -> LabelledSlices:
    """A folder-per-class image set ``<root>/<class>/*.png|jpg|jpeg`` (classes in natural order of their folder
    names, or ``classes``) -> images in [-1, 1].

    ``size`` None keeps the images as they are and requires one size; otherwise each is zero-padded to a square
    and resized to ``size``. Errors (:class:`DataError`) for no class folder, an empty class folder, an
    unreadable image, mixed sizes without ``size``, or a class named in ``classes`` without its folder.
    """
    root = Path(root)
    if channels not in (1, 3):
        raise ValueError(f"channels must be 1 (grey) or 3 (RGB), got {channels}")
    if not root.is_dir():
        raise DataError(f"{root} is not a folder")
    found = sorted((p.name for p in root.iterdir() if p.is_dir() and not p.name.startswith(".")), key=natural_key)
    names = list(classes) if classes is not None else found
    if not names:
        raise DataError(f"{root} holds no class folder (expected <root>/<class>/*.png|jpg)")
    missing = [c for c in names if c not in found]
    if missing:
        raise DataError(f"class folder(s) {missing} missing under {root} (found {found})")
    images, labels, origins = [], [], []
    for label, name in enumerate(names):
        files = sorted((p for p in (root / name).iterdir() if p.suffix.lower() in IMAGE_SUFFIXES),
                       key=lambda p: natural_key(p.name))
        if not files:
            raise DataError(f"class folder {root / name} holds no image ({'/'.join(IMAGE_SUFFIXES)})")
        for path in files:
            array = _read_image(path, channels)
            images.append(array if size is None else _resize_square(array, size))
            labels.append(label)
            origins.append(str(path))
    shapes = {a.shape for a in images}
    if len(shapes) > 1:
        examples = {a.shape: o for a, o in zip(images, origins)}
        raise DataError(f"{root}: images of different sizes {sorted(s[1:] for s in shapes)} (e.g. "
                        f"{', '.join(f'{o}: {s[1]}x{s[2]}' for s, o in list(examples.items())[:2])}); pass size= to "
                        "resize them")
    return LabelledSlices(np.stack(images) * 2 - 1, np.array(labels), tuple(names), np.array(origins))


def prepare_image_folder(root: str | Path, out: str | Path, size: int = 32, channels: int = 1,
                         split: Sequence[float] = (0.7, 0.15, 0.15), seed: int = 0, overwrite: bool = False) -> Path:
    """A folder-per-class set -> the labelled layout. If ``root`` holds split folders (train/val/test or
    Training/Testing, any case) with class folders inside, they are kept (a missing val split is carved from
    train by ``split``'s val share); otherwise the images are split per class by ``split``."""
    root = Path(root)
    if size < 8:
        raise ValueError(f"size must be >= 8 pixels, got {size}")
    if not root.is_dir():
        raise DataError(f"{root} is not a folder")
    split_dirs = {FOLDER_SPLITS[p.name.lower()]: p for p in root.iterdir()
                  if p.is_dir() and p.name.lower() in FOLDER_SPLITS}
    if split_dirs:
        if "train" not in split_dirs or "test" not in split_dirs:
            raise DataError(f"{root} has split folders {sorted(p.name for p in split_dirs.values())}; need at least "
                            "a train (Training) and a test (Testing) folder")
        train = read_image_folder(split_dirs["train"], size, channels)
        for s, d in split_dirs.items():  # the other splits are read with train's classes: an extra one would vanish
            extra = sorted({p.name for p in d.iterdir() if p.is_dir() and not p.name.startswith(".")}
                           - set(train.classes), key=natural_key)
            if extra:
                raise DataError(f"class folder(s) {extra} in {d} but not in {split_dirs['train']} (classes "
                                f"{list(train.classes)}); every class must be in every split")
        parts = {s: read_image_folder(d, size, channels, train.classes) for s, d in split_dirs.items() if s != "train"}
        if "val" not in parts:
            share = split[1] / (split[0] + split[1])
            carve = _stratified_split({c: [str(i) for i in np.flatnonzero(train.labels == k)]
                                       for k, c in enumerate(train.classes)}, (1 - share, share, 0.0), seed)
            parts["val"] = train.subset(sorted(int(i) for i in carve["val"]))
            train = train.subset(sorted(int(i) for i in carve["train"]))
        parts["train"] = train
    else:
        data = read_image_folder(root, size, channels)
        chosen = _stratified_split({c: [str(i) for i in np.flatnonzero(data.labels == k)]
                                    for k, c in enumerate(data.classes)}, split, seed)
        parts = {s: data.subset(sorted(int(i) for i in chosen[s])) for s in SPLITS}
    source = {"kind": "image_folder", "root": str(root), "size": size, "channels": channels, "split": list(split),
              "seed": seed, "own_splits": sorted(split_dirs)}
    return write_labelled(out, parts, source, overwrite, inputs=[root])


# ---- BraTS ---------------------------------------------------------------------------------------------------------
BRATS_CLASSES = ("no_tumour", "tumour")


def brats_slices(data_dir: str | Path, out: str | Path, size: int = 32, contrasts: Sequence[str] = ("t1ce",),
                 tumour_fraction: float = 0.05, slices_per_subject: int = 4, split: Sequence[float] = (0.7, 0.15, 0.15),
                 seed: int = 0, overwrite: bool = False) -> Path:
    """Axial slices of BraTS subjects labelled ``tumour`` (label area >= ``tumour_fraction`` of the slice's brain)
    or ``no_tumour`` (no tumour voxel, central 80 % of the brain's height); slices in between are ambiguous and
    skipped.
    Up to ``slices_per_subject`` per class and subject; split by subject."""
    subjects = [s for s in find_subjects(data_dir) if s.label is not None]
    if len(subjects) < len(SPLITS):
        raise DataError(f"{data_dir}: need at least {len(SPLITS)} subjects with a label, found {len(subjects)}")
    chosen = _stratified_split({"all": [s.id for s in subjects]}, split, seed)
    rng = np.random.default_rng(seed)
    parts: dict[str, list] = {s: [] for s in SPLITS}
    for subject in subjects:
        loaded = load_subject(subject, list(contrasts))
        brain = loaded.images[contrasts[0]] > 0
        tumour = (loaded.label > 0).sum((0, 1))
        candidates = {1: _lesion_slices(loaded.label, brain, tumour_fraction),
                      0: np.intersect1d(_central_slices(brain, 0.8), np.flatnonzero(tumour == 0))}
        split_name = next(s for s in SPLITS if subject.id in chosen[s])
        for label, pool in candidates.items():
            if len(pool) == 0:
                continue
            picked = np.sort(rng.choice(pool, min(slices_per_subject, len(pool)), replace=False))
            parts[split_name].append((_volume_slices(loaded.images, contrasts, size, picked.tolist()),
                                      np.full(len(picked), label), [f"{subject.id}:z{z}" for z in picked]))
    splits = {}
    for s in SPLITS:
        if not parts[s]:
            raise DataError(f"{data_dir}: no usable slice in the {s} split")
        splits[s] = LabelledSlices(*(np.concatenate([p[k] for p in parts[s]]) for k in range(2)), BRATS_CLASSES,
                                   np.concatenate([p[2] for p in parts[s]]))
    source = {"kind": "brats", "root": str(data_dir), "contrasts": list(contrasts), "size": size,
              "tumour_fraction": tumour_fraction, "slices_per_subject": slices_per_subject, "split": list(split),
              "seed": seed}
    return write_labelled(out, splits, source, overwrite, inputs=[data_dir])


__all__ = ["LAYOUT", "PHANTOM_CLASSES", "DEFAULT_SUBJECTS", "BRATS_CLASSES", "LabelledSlices",
           "LabelledSliceDataset", "write_labelled", "read_manifest", "load_labelled", "phantom_class_slices",
           "read_image_folder", "prepare_image_folder", "brats_slices"]
