"""A physics-based multi-contrast brain phantom with lesions, built from the MNI ICBM152 2009a template.

The recipe is ``PHANTOM.md``: tissue fractions from the template's grey/white-matter maps (shipped in the nilearn
wheel, no download), a random affine plus a smooth displacement per subject, per-subject jitter of the tissue
parameters and a short-range texture, a lesion (glioma-like tumour, meningioma, metastases or stroke-like
infarcts, or none), MR signal equations per tissue mixed by fraction, a bias field, Rician noise and an arbitrary
scale per volume.

Output is the BraTS layout, ``<out>/<id>/<id>_{t1,t1ce,t2,flair,seg}.nii.gz`` (stroke subjects: ``_dwi`` instead
of ``_t1ce``; ``_pd``, proton-density weighted, with ``extra_contrasts=("pd",)``), float32 images, uint8 labels.
Labels follow BraTS 2019: 1 necrotic core, 2 oedema, 4 enhancing tumour (meningioma: no necrotic core; its dural
tail is labelled enhancing); stroke subjects: 1 infarct; healthy subjects: an all-zero label map. Beside them,
``<id>_tissue.nii.gz`` (uint8, :func:`tissue_label`) labels the normal tissue: 1 CSF, 2 grey matter, 3 white
matter, 0 outside the brain and in the lesion.

Subject ``i`` of seed ``s`` depends only on ``(s, i)``: its generator is ``SeedSequence(s).spawn(n)[i]``, split
into independent streams for anatomy, lesion and acquisition. The same ``(s, i)`` therefore gives the same anatomy,
bias field and noise whatever the kind or field strength, so ``Phantom_healthy_007`` is the lesion-free twin of
``Phantom_tumour_007``.

The phantom is a controlled benchmark with known truth, not evidence about real patients.
"""
from __future__ import annotations

import json
import math
import multiprocessing
import os
import shutil
from concurrent.futures import as_completed
from dataclasses import asdict, dataclass, field
from functools import lru_cache
from pathlib import Path

import numpy as np
from scipy import ndimage as ndi

from mudiff.processes import worker_pool

KINDS = ("tumour", "stroke", "healthy", "meningioma", "metastases")
TUMOUR_KINDS = ("tumour", "meningioma", "metastases")
"""Kinds whose lesion is drawn as tumour core (enhancing, maybe a necrotic centre) plus oedema; ``tumour`` is the
glioma-like one."""
CONTRASTS = {**dict.fromkeys(TUMOUR_KINDS + ("healthy",), ("t1", "t1ce", "t2", "flair")),
             "stroke": ("t1", "t2", "dwi", "flair")}
OPTIONAL_CONTRASTS = ("pd",)  # written only when asked for (``extra_contrasts``): a proton-density-weighted spin echo
LESION_CLASSES = {"tumour": ("necrosis", "enhancing", "oedema"), "stroke": ("infarct",), "healthy": (),
                  "meningioma": ("enhancing", "oedema"), "metastases": ("necrosis", "enhancing", "oedema")}
LABELS = {"necrosis": 1, "oedema": 2, "enhancing": 4, "infarct": 1}  # BraTS 2019 values; stroke: 1 = lesion
NORMAL = ("csf", "gm", "wm")
TISSUE_LABELS = {"csf": 1, "gm": 2, "wm": 3}  # values of <id>_tissue.nii.gz; 0: outside the brain or lesion
RESOLUTION_RANGE = (1.0, 4.0)  # mm; the template is 1 mm, coarser grids are resampled with partial volume


# ----------------------------------------------------------------------------------------------- parameters
@dataclass
class Tissue:
    """One tissue: T1, T2 in ms, PD relative to water, ADC in mm^2/s."""

    t1: float
    t2: float
    pd: float
    adc: float


@dataclass(frozen=True)
class LesionTissue:
    """A lesion class as ratios to a tissue of the same subject: T1 = t1_ratio * T1[t1_ref], likewise T2; fixed PD
    and ADC; gadolinium concentration (mM) drawn per subject from ``gd_mM`` for T1CE."""

    t1_ratio: float
    t1_ref: str
    t2_ratio: float
    t2_ref: str
    pd: float
    adc: float
    gd_mM: tuple[float, float] = (0.0, 0.0)


# Lesion tissues shared by several lesion kinds (ratios to the same subject's tissues).
NECROSIS = LesionTissue(0.7, "csf", 4.0, "wm", 0.95, 2.0e-3)
RING_ENHANCING = LesionTissue(2.0, "wm", 2.4, "wm", 0.85, 1.1e-3, gd_mM=(0.25, 0.5))
VASOGENIC_OEDEMA = LesionTissue(1.35, "wm", 1.7, "wm", 0.82, 1.4e-3, gd_mM=(0.01, 0.03))


@dataclass
class Sequence:
    """One pulse sequence. ``kind``: ``gre`` spoiled gradient echo, ``se`` spin echo, ``ir`` magnitude inversion
    recovery (``ti=None`` nulls the field's nominal CSF), ``dwi`` diffusion-weighted spin echo. Times in ms, flip in
    degrees, b in s/mm^2."""

    kind: str
    tr: float
    te: float
    flip_deg: float = 90.0
    ti: float | None = None
    b: float = 0.0


@dataclass
class FieldParams:
    """Normal tissues, the gadolinium relaxivity (L/mmol/s) and the sequences (``t1`` also serves T1CE)."""

    tissues: dict[str, Tissue]
    gd_r1: float
    sequences: dict[str, Sequence]


# ADC (mm^2/s, field-independent): CSF ~3.0e-3 is free water at 37 C (Le Bihan 2003 Nat Rev Neurosci 4:469);
# GM ~0.8e-3 and WM ~0.7e-3 (Helenius 2002 Acta Radiol 43:7); acute infarct ~0.4e-3, about half of normal
# parenchyma (Schlaug 1997 Neurology 49:113; Lansberg 2000 AJNR 21:1075).
def _field_1p5t() -> FieldParams:
    """BrainWeb relaxation values (Kwan 1999); gadobutrol r1 4.78 at 1.5 T (Szomolanyi 2019)."""
    return FieldParams(
        tissues={"csf": Tissue(2569.0, 329.0, 1.00, 3.0e-3), "gm": Tissue(833.0, 83.0, 0.86, 0.8e-3),
                 "wm": Tissue(500.0, 70.0, 0.77, 0.7e-3)},
        gd_r1=4.78,
        sequences={"t1": Sequence("se", 500.0, 12.0), "t2": Sequence("se", 4000.0, 100.0),
                   "flair": Sequence("ir", 9000.0, 120.0), "dwi": Sequence("dwi", 6000.0, 90.0, b=1000.0),
                   "pd": Sequence("se", 3000.0, 15.0)})


def _field_3t() -> FieldParams:
    """GM/WM from Wansapura 1999, CSF close to water; gadobutrol r1 4.97 at 3 T (Szomolanyi 2019)."""
    return FieldParams(
        tissues={"csf": Tissue(4300.0, 2000.0, 1.00, 3.0e-3), "gm": Tissue(1331.0, 110.0, 0.80, 0.8e-3),
                 "wm": Tissue(832.0, 80.0, 0.70, 0.7e-3)},
        gd_r1=4.97,
        sequences={"t1": Sequence("gre", 8.0, 3.0, flip_deg=12.0), "t2": Sequence("se", 5000.0, 100.0),
                   "flair": Sequence("ir", 9000.0, 120.0), "dwi": Sequence("dwi", 6000.0, 90.0, b=1000.0),
                   "pd": Sequence("se", 3000.0, 15.0)})


@dataclass
class AnatomyParams:
    """Subject variability: affine, smooth displacement, tissue-parameter jitter, texture."""

    rotation_deg: float = 8.0  # each Euler angle uniform in +-
    scale: float = 0.06  # each axis scaled by 1 +- this
    displacement_mm: float = 2.0  # std of each displacement component
    displacement_scale_mm: float = 25.0  # its correlation length
    jitter: float = 0.10  # T1, T2, ADC of every tissue times 1 +- this; PD times 1 +- half of it
    texture: float = 0.04  # std of the log of the multiplicative texture on the T1, T2 and PD maps
    texture_mm: float = 1.0  # its correlation length (short range)


@dataclass
class TumourParams:
    """Glioma-like lesion: necrotic centre, enhancing rim, oedema spreading further along white matter.
    Relaxation ratios after de Blank 2019; necrosis is a modelling assumption (fluid-like, not fully nulled)."""

    core_radius_mm: tuple[float, float] = (8.0, 22.0)  # necrosis + enhancing tumour
    rim_mm: tuple[float, float] = (3.0, 8.0)  # enhancing rim thickness; no necrosis if the core is thinner
    oedema_margin_mm: tuple[float, float] = (5.0, 25.0)  # beyond the core, in white matter
    wm_spread: float = 0.7  # in grey matter the oedema margin shrinks to (1 - wm_spread) of it
    elongation: float = 0.25  # ellipsoid semi-axes times 1 +- this
    shape_noise: float = 0.2  # relative amplitude of the smooth noise on the distance (irregular border)
    shape_noise_mm: float = 6.0
    edge_mm: float = 1.0  # soft (partial-volume) border width
    edge_distance_mm: float = 8.0  # centre at least core radius + this from the brain border
    min_z_mm: float = -10.0  # centre above this MNI z (supratentorial, as most gliomas)
    necrosis: LesionTissue = NECROSIS
    enhancing: LesionTissue = RING_ENHANCING
    oedema: LesionTissue = VASOGENIC_OEDEMA


@dataclass
class StrokeParams:
    """Stroke-like (ISLES-like) infarcts in grey and white matter: one main lesion plus smaller satellites.
    Subacute infarct: T1 and T2 prolonged, ADC about half of normal parenchyma (bright on DWI and FLAIR)."""

    n_lesions: tuple[int, int] = (1, 3)
    radius_mm: tuple[float, float] = (6.0, 20.0)  # main lesion; satellites 0.3-0.6 of it
    satellite_distance_mm: float = 30.0
    elongation: float = 0.4
    shape_noise: float = 0.3
    shape_noise_mm: float = 5.0
    edge_mm: float = 1.0
    edge_distance_mm: float = 3.0
    min_z_mm: float = -25.0
    infarct: LesionTissue = LesionTissue(1.3, "wm", 1.6, "wm", 0.82, 0.4e-3)


@dataclass
class MeningiomaParams:
    """Extra-axial, dural-based tumour: a blob centred on the brain surface (only its part inside the skull-stripped
    brain is imaged), solid and homogeneously, strongly enhancing, with a thin enhancing dural tail spreading along
    the surface and little oedema. Enhancing-tissue ratios are modelling assumptions (iso- to slightly
    hyperintense to grey matter on T2, avid gadolinium uptake)."""

    radius_mm: tuple[float, float] = (15.0, 25.0)
    tail_mm: tuple[float, float] = (8.0, 20.0)  # dural tail reach beyond the tumour, along the surface
    tail_thickness_mm: float = 2.0
    oedema_margin_mm: tuple[float, float] = (0.0, 5.0)  # little oedema
    surface_depth_mm: tuple[float, float] = (5.0, 10.0)  # centre this deep below the (skull-stripped) surface
    elongation: float = 0.15
    shape_noise: float = 0.08  # smooth, rounded border
    shape_noise_mm: float = 8.0
    edge_mm: float = 1.0
    min_z_mm: float = -10.0
    max_z_mm: float = 50.0  # centre below this MNI z: lateral convexity or falx, not the vertex
    enhancing: LesionTissue = LesionTissue(1.5, "wm", 1.4, "wm", 0.85, 0.9e-3, gd_mM=(0.4, 0.7))
    oedema: LesionTissue = VASOGENIC_OEDEMA


@dataclass
class MetastasesParams:
    """Several small ring-enhancing lesions at the grey-white junction, each with a necrotic centre (when larger
    than its rim) and proportionally large oedema. Tissue ratios as for the glioma-like tumour."""

    n_lesions: tuple[int, int] = (2, 5)
    radius_mm: tuple[float, float] = (3.0, 8.0)
    rim_mm: tuple[float, float] = (1.5, 3.0)
    oedema_margin_mm: tuple[float, float] = (6.0, 16.0)
    wm_spread: float = 0.7
    junction: tuple[float, float] = (0.3, 0.7)  # centres where the grey-matter share of parenchyma is in this range
    elongation: float = 0.15
    shape_noise: float = 0.1
    shape_noise_mm: float = 4.0
    edge_mm: float = 1.0
    edge_distance_mm: float = 4.0
    min_z_mm: float = -30.0
    necrosis: LesionTissue = NECROSIS
    enhancing: LesionTissue = RING_ENHANCING
    oedema: LesionTissue = VASOGENIC_OEDEMA


@dataclass
class AcquisitionParams:
    """Bias field, noise, slice thickness and arbitrary scaling."""

    bias: float = 0.2  # shared multiplicative bias: up to exp(+-bias)
    bias_contrast: float = 0.05  # extra per-contrast part
    bias_scale_mm: float = 60.0
    noise: tuple[float, float] = (0.01, 0.04)  # Rician sigma as a fraction of the brightest normal tissue
    thick_slice_mm: float = 0.0  # > resolution: T2 and FLAIR averaged over this many mm along z (0 = off)
    gain: tuple[float, float] = (100.0, 3000.0)  # log-uniform scale per volume (arbitrary units)


@dataclass
class PhantomParams:
    """Every physical and random-variation parameter of the phantom; defaults from PHANTOM.md."""

    fields: dict[float, FieldParams] = field(default_factory=lambda: {1.5: _field_1p5t(), 3.0: _field_3t()})
    anatomy: AnatomyParams = field(default_factory=AnatomyParams)
    tumour: TumourParams = field(default_factory=TumourParams)
    stroke: StrokeParams = field(default_factory=StrokeParams)
    meningioma: MeningiomaParams = field(default_factory=MeningiomaParams)
    metastases: MetastasesParams = field(default_factory=MetastasesParams)
    acquisition: AcquisitionParams = field(default_factory=AcquisitionParams)

    def lesion_tissues(self, kind: str) -> dict[str, LesionTissue]:
        """The lesion classes of ``kind`` and their parameters (empty for healthy subjects)."""
        group = getattr(self, kind, None)
        return {name: getattr(group, name) for name in LESION_CLASSES[kind]}


@dataclass
class PhantomSubject:
    """One subject. ``images[c]``, ``seg``, ``tissue[k]``: (X, Y, Z) on the grid of ``affine`` (4, 4);
    images float32, seg uint8 (BraTS values), tissue fractions float32 summing to 1 inside the brain
    (keys csf, gm, wm and the lesion classes of the kind). ``meta``: the drawn random parameters."""

    id: str
    images: dict[str, np.ndarray]
    seg: np.ndarray
    affine: np.ndarray
    tissue: dict[str, np.ndarray]
    meta: dict = field(default_factory=dict)


def subject_id(kind: str, index: int) -> str:
    """``Phantom_<kind>_<index>``, the index zero-padded to three digits."""
    return f"Phantom_{kind}_{index:03d}"


def _check(kind: str, resolution: float, field_strength: float, params: PhantomParams,
           extra_contrasts: tuple[str, ...] = ()) -> None:
    if kind not in KINDS:
        raise ValueError(f"unknown phantom kind {kind!r}; choose one of {KINDS}")
    unknown = [c for c in extra_contrasts if c not in OPTIONAL_CONTRASTS]
    if unknown or len(set(extra_contrasts)) != len(extra_contrasts):
        raise ValueError(f"extra_contrasts must be distinct names from {OPTIONAL_CONTRASTS}, got "
                         f"{list(extra_contrasts)}")
    if not RESOLUTION_RANGE[0] <= resolution <= RESOLUTION_RANGE[1]:
        raise ValueError(f"resolution must be a voxel size in mm between {RESOLUTION_RANGE[0]:g} and "
                         f"{RESOLUTION_RANGE[1]:g} (1 or 2 are usual), got {resolution!r}")
    if field_strength not in params.fields:
        raise ValueError(f"field_strength must be one of {tuple(params.fields)} (tesla), got {field_strength!r}")


# ----------------------------------------------------------------------------------------------- template
@dataclass(frozen=True)
class _Template:
    """The template on the output grid: gm, wm, brain (soft mask), edt (mm to the border): (X, Y, Z) float32."""

    gm: np.ndarray
    wm: np.ndarray
    brain: np.ndarray
    edt: np.ndarray
    affine: np.ndarray
    centre: np.ndarray  # (3,) voxel coordinates of the brain's centre of mass

    def z_mm(self, k: np.ndarray) -> np.ndarray:
        """World z of voxel index k along axis 2 (the template grid is axis-aligned)."""
        return self.affine[2, 2] * k + self.affine[2, 3]


@lru_cache(maxsize=None)
def _template(resolution: float) -> _Template:
    """Template tissue maps at ``resolution`` mm, cached per process (nilearn import, mask and EDT take a few seconds)."""
    from nilearn.datasets import load_mni152_gm_template, load_mni152_wm_template

    gm_img = load_mni152_gm_template(resolution=1)
    gm = np.asarray(gm_img.get_fdata(), np.float32)
    wm = np.asarray(load_mni152_wm_template(resolution=1).get_fdata(), np.float32)
    gm, wm = gm / gm.max(), wm / wm.max()  # nilearn >= 0.10 rescales to [0, 1]; older releases gave 0-255
    affine = gm_img.affine.copy()
    if not np.allclose(affine[:3, :3], np.diag(np.diag(affine[:3, :3]))):
        raise RuntimeError("expected an axis-aligned MNI template affine from nilearn")
    brain = ndi.binary_dilation(ndi.binary_fill_holes(ndi.binary_closing(gm + wm > 0.1, iterations=2)))
    maps = [gm, wm, brain.astype(np.float32)]
    if resolution != 1.0:
        # Partial volume of an r-mm voxel: a Gaussian with the variance of a box of width r, minus the 1 mm one.
        sigma = math.sqrt((resolution ** 2 - 1.0) / 12.0)
        shape = [int((n - 1) // resolution) + 1 for n in gm.shape]
        points = np.meshgrid(*(np.arange(n, dtype=np.float32) * resolution for n in shape), indexing="ij")
        maps = [ndi.map_coordinates(ndi.gaussian_filter(m, sigma), points, order=1) for m in maps]
        affine = affine @ np.diag([resolution, resolution, resolution, 1.0])
    gm, wm, brain = (np.ascontiguousarray(m, np.float32) for m in maps)
    inside = brain >= 0.5
    edt = (ndi.distance_transform_edt(inside) * resolution).astype(np.float32)
    return _Template(gm, wm, brain, edt, affine, np.array(ndi.center_of_mass(inside)))


# ----------------------------------------------------------------------------------------------- random fields
def _smooth_noise(rng: np.random.Generator, shape: tuple[int, ...], cell: float) -> np.ndarray:
    """(shape) float32 smooth Gaussian random field, unit variance, correlation length ~``cell`` voxels.

    White noise on a lattice every ``cell`` voxels, interpolated with Gaussian weights one axis at a time: the
    separable form costs a few matrix products instead of a 3D filter or spline over the whole volume.
    """
    field_ = rng.standard_normal([int(n // cell) + 4 for n in shape]).astype(np.float32)
    for axis, n in enumerate(shape):
        nodes = (np.arange(field_.shape[axis]) - 1.5) * cell
        w = np.exp(-0.5 * ((np.arange(n)[:, None] - nodes[None]) / cell) ** 2)
        w /= np.sqrt((w ** 2).sum(1, keepdims=True))  # unit variance at every voxel
        field_ = np.moveaxis(np.tensordot(w.astype(np.float32), field_, axes=(1, axis)), 0, axis)
    return field_


def _rotation(angles: np.ndarray) -> np.ndarray:
    """(3, 3) rotation from three Euler angles in radians (x, then y, then z)."""
    (cx, cy, cz), (sx, sy, sz) = np.cos(angles), np.sin(angles)
    rx = np.array([[1, 0, 0], [0, cx, -sx], [0, sx, cx]])
    ry = np.array([[cy, 0, sy], [0, 1, 0], [-sy, 0, cy]])
    rz = np.array([[cz, -sz, 0], [sz, cz, 0], [0, 0, 1]])
    return rz @ ry @ rx


def _sigmoid(x: np.ndarray) -> np.ndarray:
    return (0.5 + 0.5 * np.tanh(0.5 * x)).astype(np.float32)


# ----------------------------------------------------------------------------------------------- lesions
@dataclass
class _Lesion:
    """Lesion indicator fields in template voxel space: ``maps[k]`` (bx, by, bz) float32 in [0, 1] on the box
    starting at voxel ``lo`` (3,); outside the box every indicator is 0."""

    lo: np.ndarray
    maps: dict[str, np.ndarray]
    meta: dict


def _pick_centre(rng: np.random.Generator, tm: _Template, candidates: np.ndarray, min_edge_mm: float,
                 min_z_mm: float) -> np.ndarray:
    """(3,) voxel centre drawn among ``candidates`` (bool volume) far enough from the border and high enough;
    if none qualifies (a huge lesion) the deepest candidate."""
    z_ok = tm.z_mm(np.arange(tm.brain.shape[2])) >= min_z_mm
    ok = np.flatnonzero(candidates & (tm.edt >= min_edge_mm) & z_ok[None, None, :])
    flat = ok[rng.integers(len(ok))] if len(ok) else int(np.argmax(np.where(candidates, tm.edt, -1)))
    return np.array(np.unravel_index(flat, tm.brain.shape), dtype=np.float64)


def _box(tm: _Template, centres: list[np.ndarray], half_mm: float) -> tuple[np.ndarray, tuple[slice, ...]]:
    """Voxel box (lo (3,), slices) covering ``half_mm`` around every centre, clipped to the grid."""
    r = tm.affine[0, 0]
    lo = np.maximum(np.floor(np.min(centres, 0) - half_mm / r), 0).astype(int)
    hi = np.minimum(np.ceil(np.max(centres, 0) + half_mm / r) + 1, tm.brain.shape).astype(int)
    return lo, tuple(slice(a, b) for a, b in zip(lo, hi))


def _blob_distance(rng: np.random.Generator, shape: tuple[int, ...], lo: np.ndarray, centre: np.ndarray,
                   r: float, elongation: float, noise: float, noise_mm: float) -> np.ndarray:
    """(shape) float32 irregular 'distance' in mm from ``centre``: a randomly oriented ellipsoidal distance
    (unit-mean semi-axes) times (1 + noise * smooth noise), so iso-surfaces are irregular closed blobs."""
    axes = rng.uniform(1 - elongation, 1 + elongation, 3)
    rot = _rotation(rng.uniform(-np.pi, np.pi, 3))
    offset = (np.indices(shape, dtype=np.float32) + (lo - centre)[:, None, None, None].astype(np.float32)) * r
    q = np.tensordot((rot.T / axes[:, None]).astype(np.float32), offset, axes=1)
    dist = np.sqrt((q ** 2).sum(0))
    return dist * (1 + noise * _smooth_noise(rng, shape, noise_mm / r))


def _tumour(rng: np.random.Generator, tm: _Template, p: TumourParams) -> _Lesion:
    """Indicators ``core`` (necrosis + enhancing), ``necrosis`` and ``extent`` (core + oedema)."""
    r = tm.affine[0, 0]
    radius, rim, margin = (rng.uniform(*p.core_radius_mm), rng.uniform(*p.rim_mm),
                           rng.uniform(*p.oedema_margin_mm))
    centre = _pick_centre(rng, tm, tm.wm >= 0.9, radius * (1 + p.elongation) + p.edge_distance_mm, p.min_z_mm)
    lo, box = _box(tm, [centre], (radius + margin) * (1 + p.elongation) * (1 + 3 * p.shape_noise) + 4 * p.edge_mm)
    shape = tm.brain[box].shape
    dist = _blob_distance(rng, shape, lo, centre, r, p.elongation, p.shape_noise, p.shape_noise_mm)
    edge = math.hypot(p.edge_mm, 0.3 * r)
    wm_local = ndi.gaussian_filter(tm.wm[box], 2.0 / r)  # oedema follows white-matter tracts
    reach = radius + margin * (1 - p.wm_spread + p.wm_spread * wm_local)
    maps = {"core": _sigmoid((radius - dist) / edge), "necrosis": _sigmoid((radius - rim - dist) / edge),
            "extent": _sigmoid((reach - dist) / edge)}
    meta = {"centre_template_mm": (tm.affine @ np.append(centre, 1))[:3].round(1).tolist(),
            "core_radius_mm": round(radius, 2), "rim_mm": round(rim, 2), "oedema_margin_mm": round(margin, 2)}
    return _Lesion(lo, maps, meta)


def _meningioma(rng: np.random.Generator, tm: _Template, p: MeningiomaParams) -> _Lesion:
    """Indicators ``core`` (solid enhancing tumour plus its dural tail) and ``extent`` (core + thin oedema); the
    centre lies just below the brain surface, so the tumour presses on the brain from outside."""
    r = tm.affine[0, 0]
    radius, tail, margin = (rng.uniform(*p.radius_mm), rng.uniform(*p.tail_mm), rng.uniform(*p.oedema_margin_mm))
    depth = rng.uniform(*p.surface_depth_mm)
    below = tm.z_mm(np.arange(tm.brain.shape[2])) <= p.max_z_mm
    surface = (tm.brain >= 0.5) & (np.abs(tm.edt - depth) <= r) & below[None, None, :]
    centre = _pick_centre(rng, tm, surface, 0.0, p.min_z_mm)
    lo, box = _box(tm, [centre], (radius + max(tail, margin)) * (1 + p.elongation) * (1 + 3 * p.shape_noise)
                   + 4 * p.edge_mm)
    dist = _blob_distance(rng, tm.brain[box].shape, lo, centre, r, p.elongation, p.shape_noise, p.shape_noise_mm)
    edge = math.hypot(p.edge_mm, 0.3 * r)
    solid = _sigmoid((radius - dist) / edge)
    dural = _sigmoid((radius + tail - dist) / edge) * _sigmoid((p.tail_thickness_mm - tm.edt[box]) / edge)
    core = np.maximum(solid, dural)
    maps = {"core": core, "extent": np.maximum(_sigmoid((radius + margin - dist) / edge), core)}
    meta = {"centre_template_mm": (tm.affine @ np.append(centre, 1))[:3].round(1).tolist(),
            "radius_mm": round(radius, 2), "tail_mm": round(tail, 2), "oedema_margin_mm": round(margin, 2)}
    return _Lesion(lo, maps, meta)


def _metastases(rng: np.random.Generator, tm: _Template, p: MetastasesParams) -> _Lesion:
    """Indicators ``core``, ``necrosis`` and ``extent`` of several ring-enhancing lesions (their union), centred
    at the grey-white junction."""
    r = tm.affine[0, 0]
    parenchyma = tm.gm + tm.wm
    gm_share = tm.gm / np.maximum(parenchyma, 1e-6)
    junction = (parenchyma >= 0.9) & (gm_share >= p.junction[0]) & (gm_share <= p.junction[1])
    n = int(rng.integers(p.n_lesions[0], p.n_lesions[1] + 1))
    radii = rng.uniform(*p.radius_mm, n)
    rims = rng.uniform(*p.rim_mm, n)
    margins = rng.uniform(*p.oedema_margin_mm, n)
    centres = [_pick_centre(rng, tm, junction, rad + p.edge_distance_mm, p.min_z_mm) for rad in radii]
    lo, box = _box(tm, centres, float(np.max(radii + margins)) * (1 + p.elongation) * (1 + 3 * p.shape_noise)
                   + 4 * p.edge_mm)
    shape = tm.brain[box].shape
    edge = math.hypot(p.edge_mm, 0.3 * r)
    wm_local = ndi.gaussian_filter(tm.wm[box], 2.0 / r)
    maps = {k: np.zeros(shape, np.float32) for k in ("core", "necrosis", "extent")}
    for centre, radius, rim, margin in zip(centres, radii, rims, margins):
        dist = _blob_distance(rng, shape, lo, centre, r, p.elongation, p.shape_noise, p.shape_noise_mm)
        reach = radius + margin * (1 - p.wm_spread + p.wm_spread * wm_local)
        for key, value in (("core", _sigmoid((radius - dist) / edge)),
                           ("necrosis", _sigmoid((radius - rim - dist) / edge)),
                           ("extent", _sigmoid((reach - dist) / edge))):
            maps[key] = np.maximum(maps[key], value)
    meta = {"centres_template_mm": [(tm.affine @ np.append(c, 1))[:3].round(1).tolist() for c in centres],
            "radii_mm": radii.round(2).tolist(), "rims_mm": rims.round(2).tolist(),
            "oedema_margins_mm": margins.round(2).tolist()}
    return _Lesion(lo, maps, meta)


def _stroke(rng: np.random.Generator, tm: _Template, p: StrokeParams) -> _Lesion:
    """Indicator ``infarct``: union of a main irregular blob and smaller satellites nearby, in parenchyma."""
    r = tm.affine[0, 0]
    parenchyma = tm.gm + tm.wm >= 0.9
    main_radius = rng.uniform(*p.radius_mm)
    centres = [_pick_centre(rng, tm, parenchyma, main_radius + p.edge_distance_mm, p.min_z_mm)]
    radii = [main_radius]
    for _ in range(rng.integers(p.n_lesions[0], p.n_lesions[1] + 1) - 1):
        direction = rng.standard_normal(3)
        spot = centres[0] + direction / np.linalg.norm(direction) * rng.uniform(0.5, 1.0) * (
            main_radius + p.satellite_distance_mm) / r
        index = tuple(np.clip(np.round(spot).astype(int), 0, np.array(tm.brain.shape) - 1))
        if parenchyma[index]:  # satellites falling in CSF or outside the brain are not drawn
            centres.append(spot)
            radii.append(main_radius * rng.uniform(0.3, 0.6))
    lo, box = _box(tm, centres, max(radii) * (1 + p.elongation) * (1 + 3 * p.shape_noise) + 4 * p.edge_mm)
    shape = tm.brain[box].shape
    edge = math.hypot(p.edge_mm, 0.3 * r)
    infarct = np.zeros(shape, np.float32)
    for centre, radius in zip(centres, radii):
        dist = _blob_distance(rng, shape, lo, centre, r, p.elongation, p.shape_noise, p.shape_noise_mm)
        infarct = np.maximum(infarct, _sigmoid((radius - dist) / edge))
    meta = {"centres_template_mm": [(tm.affine @ np.append(c, 1))[:3].round(1).tolist() for c in centres],
            "radii_mm": [round(x, 2) for x in radii]}
    return _Lesion(lo, {"infarct": infarct}, meta)


LESION_MAKERS = {"tumour": _tumour, "stroke": _stroke, "meningioma": _meningioma, "metastases": _metastases}


def _fractions(kind: str, normal: dict[str, np.ndarray], ind: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Tissue fractions (N,) per class from normal fractions and lesion indicators. The tumour core replaces all
    tissue, oedema and infarct replace parenchyma only (CSF spaces stay fluid); fractions still sum to 1."""
    csf, gm, wm = normal["csf"], normal["gm"], normal["wm"]
    if kind in TUMOUR_KINDS:  # a kind without a ``necrosis`` indicator (meningioma) has no necrotic class
        core = ind["core"]
        necrosis = np.minimum(ind.get("necrosis", 0.0), core)
        extent = np.maximum(ind["extent"], core)
        fractions = {"csf": csf * (1 - core), "gm": gm * (1 - extent), "wm": wm * (1 - extent), "necrosis": necrosis,
                     "enhancing": core - necrosis, "oedema": (extent - core) * (gm + wm)}
        return {k: v for k, v in fractions.items() if k in NORMAL or k in LESION_CLASSES[kind]}
    if kind == "stroke":
        lesion = ind["infarct"]
        return {"csf": csf, "gm": gm * (1 - lesion), "wm": wm * (1 - lesion), "infarct": lesion * (gm + wm)}
    return dict(normal)


# ----------------------------------------------------------------------------------------------- anatomy
def _warp(rng: np.random.Generator, tm: _Template,
          p: AnatomyParams) -> tuple[tuple[slice, ...], np.ndarray, np.ndarray, dict]:
    """Random affine + smooth displacement of the template onto the output grid.

    Returns ``box`` (slices of the output grid that can hold brain), ``support`` (box-shaped bool: brain voxels)
    and ``src`` (3, N) template voxel coordinates of the support voxels, plus the drawn parameters.
    """
    r = tm.affine[0, 0]
    angles = rng.uniform(-1, 1, 3) * p.rotation_deg
    scales = rng.uniform(1 - p.scale, 1 + p.scale, 3)
    m = _rotation(np.radians(angles)) @ np.diag(scales)  # output -> template, about the brain's centre
    # Output region: the template brain's bounding box mapped forward, padded for the displacement.
    nz = np.nonzero(tm.brain >= 0.5)
    corners = np.array(np.meshgrid(*([a.min(), a.max()] for a in nz), indexing="ij")).reshape(3, -1)
    fwd = tm.centre[:, None] + np.linalg.solve(m, corners - tm.centre[:, None])
    pad = (5 * p.displacement_mm + 2 * r) / r
    lo = np.maximum(np.floor(fwd.min(1) - pad), 0).astype(int)
    hi = np.minimum(np.ceil(fwd.max(1) + pad) + 1, tm.brain.shape).astype(int)
    box = tuple(slice(a, b) for a, b in zip(lo, hi))
    shape = tuple(hi - lo)
    grid = np.indices(shape, dtype=np.float32) + (lo - tm.centre)[:, None, None, None].astype(np.float32)
    src = np.tensordot(m.astype(np.float32), grid, axes=1) + tm.centre[:, None, None, None].astype(np.float32)
    del grid
    for axis in range(3):
        src[axis] += _smooth_noise(rng, shape, p.displacement_scale_mm / r) * (p.displacement_mm / r)
    support = ndi.map_coordinates(tm.brain, src, order=1) >= 0.5
    meta = {"rotation_deg": angles.round(2).tolist(), "scale": scales.round(4).tolist()}
    return box, support, src[:, support], meta


def _sample(volume: np.ndarray, points: np.ndarray, lo: np.ndarray | None = None) -> np.ndarray:
    """(N,) linear interpolation of ``volume`` at (3, N) voxel points, 0 outside (``lo``: the volume's origin)."""
    if lo is None:
        return ndi.map_coordinates(volume, points, order=1)
    local = points - lo[:, None]
    inside = np.all((local >= 0) & (local <= np.array(volume.shape)[:, None] - 1), axis=0)
    out = np.zeros(points.shape[1], np.float32)
    out[inside] = ndi.map_coordinates(volume, local[:, inside], order=1)
    return out


def _texture(rng: np.random.Generator, support: np.ndarray, amount: float, sigma: float) -> np.ndarray:
    """(N,) multiplicative short-range texture exp(amount * g) at the support voxels, g unit-std smoothed noise."""
    g = ndi.gaussian_filter(rng.standard_normal(support.shape, dtype=np.float32), sigma)[support]
    return np.exp(amount * g / g.std())


def _scatter(values: np.ndarray, shape: tuple[int, ...], box: tuple[slice, ...], support: np.ndarray,
             dtype) -> np.ndarray:
    """(shape) volume with ``values`` (N,) at the ``support`` voxels of ``box``, 0 elsewhere (skull-stripped)."""
    vol = np.zeros(shape, dtype)
    vol[box][support] = values
    return vol


# ----------------------------------------------------------------------------------------------- physics
def _jittered_normal(rng: np.random.Generator, fp: FieldParams, jitter: float) -> dict[str, Tissue]:
    """Per-subject parameters of the normal tissues: T1, T2, ADC times 1 +- jitter, PD times 1 +- jitter / 2."""
    return {k: Tissue(t.t1 * rng.uniform(1 - jitter, 1 + jitter), t.t2 * rng.uniform(1 - jitter, 1 + jitter),
                      t.pd * rng.uniform(1 - jitter / 2, 1 + jitter / 2), t.adc * rng.uniform(1 - jitter, 1 + jitter))
            for k, t in fp.tissues.items()}


def _jittered_lesions(rng: np.random.Generator, normal: dict[str, Tissue], lesions: dict[str, LesionTissue],
                      jitter: float) -> tuple[dict[str, Tissue], dict[str, float]]:
    """Lesion parameters from their ratios to the subject's own (jittered) normal tissues, jittered again, and
    their gadolinium concentrations in mM."""
    tissues, gd = {}, {}
    for name, lt in lesions.items():
        tissues[name] = Tissue(lt.t1_ratio * normal[lt.t1_ref].t1 * rng.uniform(1 - jitter, 1 + jitter),
                               lt.t2_ratio * normal[lt.t2_ref].t2 * rng.uniform(1 - jitter, 1 + jitter),
                               lt.pd * rng.uniform(1 - jitter / 2, 1 + jitter / 2),
                               lt.adc * rng.uniform(1 - jitter, 1 + jitter))
        gd[name] = rng.uniform(*lt.gd_mM)
    return tissues, gd


def _signal(seq: Sequence, csf_t1: float, pd, t1, t2, adc):
    """Magnitude signal of one pure tissue (PHANTOM.md section 5); arrays or scalars, times in ms."""
    t2_decay = np.exp(-seq.te / t2)
    if seq.kind == "gre":
        e1, a = np.exp(-seq.tr / t1), math.radians(seq.flip_deg)
        return pd * math.sin(a) * (1 - e1) / (1 - math.cos(a) * e1) * t2_decay
    if seq.kind == "se":
        return pd * (1 - np.exp(-seq.tr / t1)) * t2_decay
    if seq.kind == "ir":
        # The scanner nulls the nominal CSF T1; a subject's jittered CSF is nulled only approximately.
        ti = seq.ti if seq.ti is not None else csf_t1 * math.log(2 / (1 + math.exp(-seq.tr / csf_t1)))
        return pd * np.abs(1 - 2 * np.exp(-ti / t1) + np.exp(-seq.tr / t1)) * t2_decay
    if seq.kind == "dwi":
        return pd * t2_decay * np.exp(-seq.b * adc)
    raise ValueError(f"unknown sequence kind {seq.kind!r}; use gre, se, ir or dwi")


def _contrast(name: str, fp: FieldParams, tissues: dict[str, Tissue], gd: dict[str, float],
              frac: dict[str, np.ndarray], texture: np.ndarray) -> np.ndarray:
    """(N,) noise-free signal: sum_k f_k S_k with textured parameters; ``texture`` (3, N) multiplies T1, T2, PD."""
    seq = fp.sequences["t1" if name == "t1ce" else name]
    csf_t1 = fp.tissues["csf"].t1
    out = np.zeros(texture.shape[1], np.float32)
    for k, f in frac.items():
        idx = np.flatnonzero(f > 1e-4)  # lesion classes cover a small part of the brain
        t = tissues[k]
        t1 = t.t1 * texture[0, idx]
        if name == "t1ce" and gd[k] > 0:
            t1 = 1.0 / (1.0 / t1 + fp.gd_r1 * gd[k] / 1000.0)  # R1 = R1_0 + r1 C, r1 in /mM/s, times in ms
        out[idx] += f[idx] * _signal(seq, csf_t1, t.pd * texture[2, idx], t1, t.t2 * texture[1, idx], t.adc)
    return out


# ----------------------------------------------------------------------------------------------- subject
def generate_subject(index: int, seed: int, kind: str = "tumour", resolution: float = 1.0,
                     field_strength: float = 3.0, params: PhantomParams | None = None,
                     extra_contrasts: tuple[str, ...] = ()) -> PhantomSubject:
    """Subject ``index`` of the phantom dataset with ``seed`` (depends on nothing else); see the module docstring.
    ``extra_contrasts`` (from ``OPTIONAL_CONTRASTS``) are simulated after the kind's contrasts, which therefore
    stay the same with or without them."""
    params = params or PhantomParams()
    resolution, field_strength = float(resolution), float(field_strength)
    extra_contrasts = tuple(extra_contrasts)
    _check(kind, resolution, field_strength, params, extra_contrasts)
    contrasts = CONTRASTS[kind] + extra_contrasts
    if index < 0:
        raise ValueError(f"index must be >= 0, got {index}")
    anatomy_rng, lesion_rng, acq_rng = (np.random.default_rng(s) for s in
                                        np.random.SeedSequence(seed, spawn_key=(int(index),)).spawn(3))
    tm = _template(resolution)
    r, grid = resolution, tm.brain.shape
    fp = params.fields[field_strength]
    ap, qp = params.anatomy, params.acquisition

    # Anatomy: warp the template, tissue parameters, texture.
    box, support, src, meta = _warp(anatomy_rng, tm, ap)
    gm = np.clip(_sample(tm.gm, src), 0, 1)
    wm = np.clip(_sample(tm.wm, src), 0, 1)
    excess = np.maximum(gm + wm, 1.0)
    normal = {"gm": gm / excess, "wm": wm / excess}
    normal = {"csf": 1 - normal["gm"] - normal["wm"], **normal}
    tissues = _jittered_normal(anatomy_rng, fp, ap.jitter)
    gd = dict.fromkeys(tissues, 0.0)
    texture = np.stack([_texture(anatomy_rng, support, ap.texture, ap.texture_mm / r) for _ in range(3)])

    # Lesion, drawn in template space and warped with the anatomy.
    frac = normal
    if kind != "healthy":
        lesion = LESION_MAKERS[kind](lesion_rng, tm, getattr(params, kind))
        frac = _fractions(kind, normal, {k: _sample(v, src, lesion.lo) for k, v in lesion.maps.items()})
        lesion_tissues, lesion_gd = _jittered_lesions(lesion_rng, tissues, params.lesion_tissues(kind), ap.jitter)
        tissues, gd = {**tissues, **lesion_tissues}, {**gd, **lesion_gd}
        meta["lesion"] = {**lesion.meta, "gd_mM": {k: round(v, 3) for k, v in lesion_gd.items()}}
    del src

    # Acquisition: signal, bias, optional thick slices, Rician noise, arbitrary gain.
    def smooth_bias(amplitude: float) -> np.ndarray:
        g = _smooth_noise(acq_rng, support.shape, qp.bias_scale_mm / r)[support]
        return np.exp(acq_rng.uniform(0, amplitude) * g / np.abs(g).max())

    shared = smooth_bias(qp.bias)
    brightest = {c: max(float(_signal(fp.sequences["t1" if c == "t1ce" else c], fp.tissues["csf"].t1, t.pd, t.t1,
                                      t.t2, t.adc)) for k, t in tissues.items() if k in NORMAL)
                 for c in contrasts}
    images, meta["noise"], meta["gain"] = {}, {}, {}
    for c in contrasts:
        s = _contrast(c, fp, tissues, gd, frac, texture) * shared * smooth_bias(qp.bias_contrast)
        if qp.thick_slice_mm > r and c in ("t2", "flair"):
            vol = np.zeros(support.shape, np.float32)
            vol[support] = s
            s = ndi.uniform_filter1d(vol, max(1, round(qp.thick_slice_mm / r)), axis=2)[support]
        noise = acq_rng.uniform(*qp.noise)
        sigma = noise * brightest[c]
        s = np.hypot(s + acq_rng.normal(0, sigma, s.shape), acq_rng.normal(0, sigma, s.shape))
        gain = math.exp(acq_rng.uniform(*np.log(qp.gain)))
        images[c] = _scatter(s * gain, grid, box, support, np.float32)
        meta["noise"][c], meta["gain"][c] = round(noise, 4), round(gain, 2)

    # Labels: the class with the largest fraction (all normal tissue counted together).
    classes = LESION_CLASSES[kind]
    stack = np.stack([sum(frac[k] for k in NORMAL)] + [frac[k] for k in classes])
    labels = np.array([0] + [LABELS[k] for k in classes], np.uint8)
    seg = _scatter(labels[np.argmax(stack, 0)], grid, box, support, np.uint8)
    tissue = {k: _scatter(v, grid, box, support, np.float32) for k, v in frac.items()}
    return PhantomSubject(subject_id(kind, index), images, seg, tm.affine.copy(), tissue, meta)


def tissue_label(subject: PhantomSubject) -> np.ndarray:
    """(X, Y, Z) uint8: in the brain outside the lesion (seg 0), the normal tissue with the largest fraction
    (``TISSUE_LABELS``: 1 CSF, 2 grey matter, 3 white matter); 0 outside the brain and in the lesion, so the tissue
    map and the seg together label every brain voxel once."""
    normal = np.argmax(np.stack([subject.tissue[k] for k in NORMAL]), 0)
    values = np.array([TISSUE_LABELS[k] for k in NORMAL], np.uint8)[normal]
    brain = sum(subject.tissue.values()) > 0
    return np.where(brain & (subject.seg == 0), values, 0).astype(np.uint8)


# ----------------------------------------------------------------------------------------------- dataset
LICENCE = """\
## Licence of the template the phantom is derived from

The phantom is derived from the MNI ICBM152 2009a nonlinear symmetric template (grey- and white-matter probability
maps as shipped with nilearn). Its licence asks that this notice travel with derived data:

Copyright (C) 1993-2009 Louis Collins, McConnell Brain Imaging Centre, Montreal Neurological Institute,
McGill University. Permission to use, copy, modify, and distribute this software and its documentation for any
purpose and without fee is hereby granted, provided that the above copyright notice appear in all copies. The
authors and McGill University make no representations about the suitability of this software for any purpose.
It is provided "as is" without express or implied warranty. The authors are not responsible for any data loss,
equipment damage, property loss, or injury to subjects or patients resulting from the use or misuse of this
software package.

References: Fonov et al., NeuroImage 47 (2009) S102 and NeuroImage 54 (2011) 313-327.
"""

README = """\
# MU-Diff phantom subjects

Written by `mudiff.data.phantom` (`python -m mudiff phantom`); the parameters of each generation are in
`phantom.json`. One folder per subject in the BraTS layout, `<id>/<id>_{t1,t1ce,t2,flair,seg}.nii.gz` (stroke
subjects: `_dwi` instead of `_t1ce`; `_pd`, a proton-density-weighted spin echo, when asked for). Labels: tumour
(glioma-like), meningioma, metastases 1 necrotic core, 2 oedema, 4 enhancing tumour (BraTS 2019; meningioma: no
necrotic core); stroke 1 infarct; healthy subjects have an all-zero label map. `<id>_tissue.nii.gz` labels the
normal tissue with the largest fraction: 1 CSF, 2 grey matter, 3 white matter (0 outside the brain and in the
lesion).

Each subject is the MNI ICBM152 2009a template warped by a random affine and a smooth displacement, with tissue
parameters jittered per subject, a lesion drawn with known truth, MR signal equations (spoiled gradient echo or
spin echo T1w, gadolinium for T1CE, spin echo T2w, CSF-nulled FLAIR, DWI at b = 1000 s/mm^2) mixed by tissue
fraction, a smooth bias field, Rician noise and an arbitrary scale per volume.

## Honest limits
Every subject is a warped average template: smoother and cleaner than a scan, with no real cortical folding
differences, vessels, skull-stripping errors, motion or mass effect. Lesion relaxation values are ratios from
the literature and modelling assumptions. Results on this phantom are a controlled benchmark with known truth,
not evidence about real patients.

"""


def _cpu_count() -> int:
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


def _write_subject(subject: PhantomSubject, out: Path) -> Path:
    """Write the subject's NIfTI files into a hidden temporary folder, then move it into place (no half-written
    subject folder is ever visible to a loader)."""
    import nibabel as nib

    final, tmp = out / subject.id, out / f".{subject.id}.tmp"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    for key, data in [*subject.images.items(), ("seg", subject.seg), ("tissue", tissue_label(subject))]:
        img = nib.Nifti1Image(data, subject.affine)
        img.set_data_dtype(data.dtype)
        img.header.set_xyzt_units("mm")
        img.set_qform(subject.affine, code=2)  # "aligned": template-like space, not exactly MNI after the warp
        img.set_sform(subject.affine, code=2)
        nib.save(img, tmp / f"{subject.id}_{key}.nii.gz")
    if final.exists():  # generate_dataset only gets here with overwrite=True
        shutil.rmtree(final)
    os.replace(tmp, final)
    return final


def _make_and_write(index: int, seed: int, kind: str, resolution: float, field_strength: float,
                    params: PhantomParams, out: Path, extra_contrasts: tuple[str, ...] = ()) -> tuple[Path, dict]:
    subject = generate_subject(index, seed, kind, resolution, field_strength, params, extra_contrasts)
    return _write_subject(subject, out), subject.meta


def generate_dataset(out_dir, n_subjects: int, seed: int = 0, kind: str = "tumour", resolution: float = 1.0,
                     field_strength: float = 3.0, workers: int | None = None, overwrite: bool = False,
                     params: PhantomParams | None = None, extra_contrasts: tuple[str, ...] = ()) -> list[Path]:
    """Write subjects ``0 .. n_subjects - 1`` of ``seed`` into ``out_dir`` (BraTS layout) with ``README.md`` (the
    MNI licence notice) and ``phantom.json`` (the parameters); returns the subject folders in index order.

    ``workers`` processes (default: one per core, at most ``n_subjects``); the result does not depend on it.
    Existing subject folders of the same ids are an error unless ``overwrite=True``. ``extra_contrasts``: see
    :func:`generate_subject` (``("pd",)`` adds ``<id>_pd.nii.gz``).
    """
    from mudiff import __version__
    from mudiff.data.subjects import generating  # imports nibabel: loaded when writing, as in _write_subject

    params = params or PhantomParams()
    resolution, field_strength = float(resolution), float(field_strength)
    extra_contrasts = tuple(extra_contrasts)
    _check(kind, resolution, field_strength, params, extra_contrasts)
    if int(n_subjects) != n_subjects or n_subjects < 1:
        raise ValueError(f"n_subjects must be an integer >= 1, got {n_subjects!r}")
    if workers is not None and workers < 1:
        raise ValueError(f"workers must be >= 1, got {workers}")
    workers = min(n_subjects, _cpu_count() if workers is None else workers)
    out = Path(out_dir)
    ids = [subject_id(kind, i) for i in range(n_subjects)]
    existing = [i for i in ids if (out / i).exists()]
    if existing and not overwrite:
        shown = ", ".join(existing[:3]) + (f" and {len(existing) - 3} more" if len(existing) > 3 else "")
        raise FileExistsError(f"{out}: subject folder(s) {shown} already exist; pass overwrite=True "
                              "(--overwrite) to replace them, or choose another output folder")
    out.mkdir(parents=True, exist_ok=True)
    with generating(out, "mudiff.data.phantom.generate_dataset"):
        (out / "README.md").write_text(README + LICENCE)
        metas = _write_subjects(n_subjects, workers, seed=seed, kind=kind, resolution=resolution,
                                field_strength=field_strength, params=params, out=out, extra_contrasts=extra_contrasts)
        record = {"generator": "mudiff.data.phantom", "version": __version__, "seed": seed, "kind": kind,
                  "resolution": resolution, "field_strength": field_strength, "n_subjects": n_subjects,
                  "label_values": {k: LABELS[k] for k in LESION_CLASSES[kind]},
                  "tissue_values": TISSUE_LABELS, "contrasts": list(CONTRASTS[kind] + extra_contrasts),
                  "params": asdict(params), "subjects": {ids[i]: metas[i] for i in range(n_subjects)}}
        _write_record(out / "phantom.json", record)
    return [out / i for i in ids]


def _write_subjects(n_subjects: int, workers: int, **args) -> dict[int, dict]:
    """Make and write subjects ``0 .. n_subjects - 1`` in ``workers`` processes; returns their metadata by index."""
    from tqdm.auto import tqdm

    metas: dict[int, dict] = {}
    with tqdm(total=n_subjects, desc=f"phantom {args['kind']}", unit="subject", mininterval=1) as bar:
        if workers == 1:
            for i in range(n_subjects):
                metas[i] = _make_and_write(i, **args)[1]
                bar.update()
        else:
            _template(args["resolution"])  # load once here: forked workers inherit the cache
            start_method = "fork" if "fork" in multiprocessing.get_all_start_methods() else "spawn"
            with worker_pool(workers, start_method) as pool:
                futures = {pool.submit(_make_and_write, i, **args): i for i in range(n_subjects)}
                try:
                    for future in as_completed(futures):
                        metas[futures[future]] = future.result()[1]
                        bar.update()
                except BaseException:
                    pool.shutdown(wait=True, cancel_futures=True)
                    raise
    return metas


def _write_record(path: Path, record: dict) -> None:
    """Write ``record`` as phantom.json; earlier generations into the same folder whose subjects were not all
    replaced are kept under ``previous_runs``, so every subject folder stays documented."""
    previous = []
    if path.exists():
        old = json.loads(path.read_text())
        previous = [run for run in old.pop("previous_runs", []) + [old]
                    if not set(run.get("subjects", {})) <= set(record["subjects"])]
    tmp = path.with_suffix(".json.tmp")
    tmp.write_text(json.dumps({**record, **({"previous_runs": previous} if previous else {})}, indent=1))
    os.replace(tmp, path)
