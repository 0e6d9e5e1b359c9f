"""A whole-head phantom with CT: the brain phantom of :mod:`mudiff.data.phantom` inside a skull and scalp.

The brain phantom is skull-stripped. Around its brain (the support of its tissue fractions) this module builds,
from the distance to the brain in mm, the layers of a head: subarachnoid CSF, the skull's inner table, diploe,
outer table, scalp muscle and scalp fat, then air. Each layer's thickness varies smoothly per subject (a smooth
random field), the bone layers are thicker at the occiput, and an optional frontal-sinus air pocket replaces
inner table and diploe. Every tissue is a smooth fraction map (soft sigmoid boundaries that sum to 1), so partial
volume is right in every contrast.

- **CT** in Hounsfield units from the same fractions: every tissue's HU drawn per subject within its literature
  range (:data:`HU_RANGES`), mixed by fraction, plus a mild beam-hardening cupping and Gaussian noise.
- **MR** contrasts with the head tissues too: the brain's noise-free signal comes from the brain phantom (same
  seed, same anatomy and lesion), the head tissues' signal from the same equations with their own relaxation
  times (:data:`HEAD_TISSUES`); then bias, Rician noise and an arbitrary gain over the whole head. T1: cortical
  bone dark, marrow and fat bright; T2 and FLAIR follow PHANTOM.md's physics (FLAIR nulls CSF, not fat).
- An optional small rigid misregistration of the CT against the MR (real pairs are never perfectly aligned).

Written per subject as ``<out>/<id>/{mr,ct,mask}.nii.gz`` (the SynthRAD2023 task-1 layout; ``mask`` = body,
``mr`` = the T1 by default), next to the BraTS-layout MR files ``<id>_{t1,...,seg}.nii.gz`` of the whole head and
``labels.nii.gz``, the tissue with the largest fraction per voxel (:data:`HEAD_LABELS`).

Like the brain phantom: a controlled benchmark with known truth, not evidence about real patients.
"""
from __future__ import annotations

import dataclasses
import json
import math
import os
import shutil
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
from scipy import ndimage as ndi

from mudiff.data.phantom import (CONTRASTS, LESION_CLASSES, LICENCE, NORMAL, PhantomParams, Tissue, _check,
                                 _rotation, _sigmoid, _signal, _smooth_noise, generate_subject)

HEAD_LAYERS = ("csf", "inner_table", "diploe", "outer_table", "muscle", "fat")
"""The layers outside the brain, inside out; ``csf`` is the subarachnoid space (merged into the brain's CSF)."""

HEAD_LABELS = {"air": 0, "csf": 1, "gm": 2, "wm": 3, "necrosis": 4, "enhancing": 5, "oedema": 6, "infarct": 7,
               "cortical_bone": 8, "diploe": 9, "muscle": 10, "fat": 11, "sinus": 12}
"""Values of ``labels.nii.gz``: the tissue with the largest fraction (inner and outer table are cortical bone)."""

HU_RANGES = {"air": (-1000.0, -1000.0), "sinus": (-1000.0, -1000.0), "fat": (-110.0, -90.0), "csf": (5.0, 15.0),
             "wm": (20.0, 30.0), "gm": (35.0, 45.0), "muscle": (40.0, 60.0), "enhancing": (25.0, 45.0),
             "necrosis": (25.0, 45.0), "oedema": (15.0, 25.0), "infarct": (15.0, 25.0),
             "diploe": (300.0, 800.0), "cortical_bone": (1000.0, 1900.0)}
"""CT number of each tissue (HU), drawn uniformly per subject: literature values (air -1000, fat about -100,
CSF 5-15, WM 20-30, GM 35-45, blood/muscle 40-60, tumour 25-45 (necrosis counted as tumour), oedema 15-25 (a
subacute infarct likewise), diploe 300-800, cortical bone 1000-1900)."""


def _head_tissues(field_strength: float) -> dict[str, Tissue]:
    """Relaxation of the head tissues (T1, T2 in ms, PD, ADC mm^2/s). Approximate literature values: muscle
    (Stanisz 2005 MRM 54:507), subcutaneous fat (Gold 2004 AJR 183:343), fatty marrow as fat with a shorter T2,
    cortical bone with T2* ~0.5 ms and little mobile water (Du 2012), so it is dark in every sequence here."""
    if field_strength >= 3.0:
        return {"cortical_bone": Tissue(250.0, 0.5, 0.10, 0.0), "diploe": Tissue(365.0, 50.0, 0.80, 0.05e-3),
                "muscle": Tissue(1420.0, 32.0, 0.80, 1.5e-3), "fat": Tissue(371.0, 133.0, 0.90, 0.01e-3)}
    return {"cortical_bone": Tissue(200.0, 0.5, 0.10, 0.0), "diploe": Tissue(300.0, 45.0, 0.80, 0.05e-3),
            "muscle": Tissue(1008.0, 44.0, 0.80, 1.5e-3), "fat": Tissue(343.0, 58.0, 0.90, 0.01e-3)}


@dataclass
class HeadParams:
    """Head layers (mm, each drawn per subject), their smooth variation, the sinus, CT and misregistration."""

    thickness_mm: dict[str, tuple[float, float]] = field(default_factory=lambda: {
        "csf": (1.5, 3.0), "inner_table": (1.5, 2.5), "diploe": (2.0, 5.0), "outer_table": (1.5, 2.5),
        "muscle": (2.0, 4.0), "fat": (2.5, 5.0)})
    variation: float = 0.25  # relative std of the smooth thickness field
    variation_scale_mm: float = 40.0  # its correlation length
    occipital_factor: tuple[float, float] = (1.3, 1.6)  # bone thickness at the back of the head, times this
    edge_mm: float = 0.7  # width of the soft layer boundaries
    sinus_probability: float = 0.7  # chance of a frontal-sinus air pocket
    sinus_radius_mm: tuple[float, float] = (5.0, 9.0)
    hu: dict[str, tuple[float, float]] = field(default_factory=lambda: dict(HU_RANGES))
    ct_noise_hu: tuple[float, float] = (3.0, 8.0)  # Gaussian noise std
    cupping_hu: tuple[float, float] = (0.0, 6.0)  # beam-hardening cupping: the head's centre this much lower
    jitter: float = 0.10  # head-tissue T1, T2 times 1 +- this, PD times 1 +- half of it
    misregistration_deg: float = 0.0  # rigid CT-vs-MR misregistration: each angle uniform in +- (0 = aligned)
    misregistration_mm: float = 0.0  # each translation uniform in +-

    def validate(self) -> None:
        missing = sorted(set(HEAD_LAYERS) - set(self.thickness_mm))
        if missing:
            raise ValueError(f"HeadParams.thickness_mm lacks layer(s) {missing}")
        for name, (low, high) in {**self.thickness_mm, "sinus_radius_mm": self.sinus_radius_mm}.items():
            if not 0 < low <= high:
                raise ValueError(f"HeadParams: need 0 < low <= high for {name}, got ({low}, {high})")
        absent = sorted(set(HEAD_LABELS) - set(self.hu))
        if absent:
            raise ValueError(f"HeadParams.hu lacks tissue(s) {absent}")
        if not 0 <= self.sinus_probability <= 1:
            raise ValueError(f"HeadParams.sinus_probability must be in [0, 1], got {self.sinus_probability}")
        if min(self.misregistration_deg, self.misregistration_mm, self.variation, self.edge_mm) < 0:
            raise ValueError("HeadParams: variation, edge_mm and the misregistration must be >= 0")


@dataclass
class HeadSubject:
    """One head. ``images[c]`` MR contrasts, ``ct`` (HU), ``body`` (uint8), ``labels`` (uint8, HEAD_LABELS),
    ``seg`` (the brain phantom's lesion labels), ``fractions[tissue]`` float32 summing to 1 everywhere (air
    included): (X, Y, Z) on the grid of ``affine``. ``meta``: the drawn parameters (``hu`` per tissue...)."""

    id: str
    images: dict[str, np.ndarray]
    ct: np.ndarray
    body: np.ndarray
    labels: np.ndarray
    seg: np.ndarray
    fractions: dict[str, np.ndarray]
    affine: np.ndarray
    meta: dict


def head_subject_id(kind: str, index: int) -> str:
    """``Head_<kind>_<index>``, the index zero-padded to three digits."""
    return f"Head_{kind}_{index:03d}"


def _noise_free(params: PhantomParams) -> PhantomParams:
    """The brain phantom's parameters without bias, noise, thick slices or gain: its signal per tissue mix."""
    quiet = dataclasses.replace(params.acquisition, bias=0.0, bias_contrast=0.0, noise=(0.0, 0.0),
                                thick_slice_mm=0.0, gain=(1.0, 1.0))
    return dataclasses.replace(params, acquisition=quiet)


def _layers(rng: np.random.Generator, brain: np.ndarray, hp: HeadParams, r: float
            ) -> tuple[dict[str, np.ndarray], dict]:
    """Fractions of the head layers outside ``brain`` (bool (X, Y, Z)), and the drawn thicknesses.

    c_k = sigmoid((b_k - d) / edge) is the fraction inside the outer boundary b_k of layer k (d: mm to the brain);
    layer k gets c_k - c_{k-1}, air 1 - c_K; all are zero inside the brain.
    """
    shape = brain.shape
    d = (ndi.distance_transform_edt(~brain) * r).astype(np.float32)
    cell = hp.variation_scale_mm / r
    bone_field, soft_field = (1 + hp.variation * _smooth_noise(rng, shape, cell) for _ in range(2))
    # thicker bone at the occiput: weight rising from the brain's centre to its back (RAS: -y is posterior)
    y = np.arange(shape[1], dtype=np.float32)
    ys = np.flatnonzero(brain.any(axis=(0, 2)))
    centre, back = (ys[0] + ys[-1]) / 2, ys[0]
    occipital = rng.uniform(*hp.occipital_factor)
    weight = np.clip((centre - y) / max(centre - back, 1), 0, 1) ** 2
    bone_scale = (1 + (occipital - 1) * weight)[None, :, None] * np.clip(bone_field, 0.4, None)
    soft_scale = np.clip(soft_field, 0.4, None)
    drawn = {k: float(rng.uniform(*hp.thickness_mm[k])) for k in HEAD_LAYERS}
    edge = math.hypot(hp.edge_mm, 0.3 * r)
    outside = (~brain).astype(np.float32)
    fractions, boundary, inner = {}, np.zeros(shape, np.float32), np.zeros(shape, np.float32)
    for name in HEAD_LAYERS:
        scale = bone_scale if name in ("inner_table", "diploe", "outer_table") else soft_scale
        boundary = boundary + drawn[name] * scale
        c = _sigmoid((boundary - d) / edge)
        fractions[name] = (c - inner) * outside
        inner = c
    fractions["air"] = (1 - inner) * outside
    meta = {"thickness_mm": {k: round(v, 2) for k, v in drawn.items()}, "occipital_factor": round(occipital, 3)}
    return fractions, meta


def _sinus(rng: np.random.Generator, fr: dict[str, np.ndarray], affine: np.ndarray, hp: HeadParams,
           r: float) -> dict:
    """Turn inner table and diploe near the frontal midline into air (``fr["sinus"]``) inside an ellipsoid."""
    fr["sinus"] = np.zeros_like(fr["air"])
    if rng.uniform() >= hp.sinus_probability:
        return {"sinus": None}
    world = lambda axis, n: affine[axis, axis] * np.arange(n) + affine[axis, 3]  # noqa: E731 (axis-aligned grid)
    x, z = world(0, fr["air"].shape[0]), world(2, fr["air"].shape[2])
    height = rng.uniform(0.0, 25.0)
    near = (np.abs(x)[:, None, None] <= 2 * r) & (np.abs(z - height)[None, None, :] <= 2 * r)
    bone = (fr["diploe"] + fr["inner_table"] > 0.4) & near
    if not bone.any():
        return {"sinus": None}
    candidates = np.argwhere(bone)
    centre = candidates[np.argmax(candidates[:, 1])].astype(np.float32)  # the most anterior bone there
    radius = rng.uniform(*hp.sinus_radius_mm)
    axes = np.array([1.2, 0.6, 1.0]) * radius  # wider than deep
    offset = (np.indices(fr["air"].shape, dtype=np.float32) - centre[:, None, None, None]) * r
    dist = np.sqrt(((offset / axes[:, None, None, None]) ** 2).sum(0)) * radius
    pocket = _sigmoid((radius - dist) / math.hypot(hp.edge_mm, 0.3 * r))
    for name in ("inner_table", "diploe"):
        taken = fr[name] * pocket
        fr[name] -= taken
        fr["sinus"] += taken
    centre_mm = (affine @ np.append(centre, 1))[:3].round(1).tolist()
    return {"sinus": {"centre_mm": centre_mm, "radius_mm": round(radius, 2)}}


def _rigid(volume: np.ndarray, rng: np.random.Generator, hp: HeadParams, r: float, fill: float
           ) -> tuple[np.ndarray, dict]:
    """Resample ``volume`` after a small random rotation (about the grid centre) and translation."""
    angles = rng.uniform(-1, 1, 3) * hp.misregistration_deg
    shift = rng.uniform(-1, 1, 3) * hp.misregistration_mm
    rot = _rotation(np.radians(angles))
    centre = (np.array(volume.shape) - 1) / 2
    offset = centre - rot @ centre - shift / r
    moved = ndi.affine_transform(volume, rot, offset=offset, order=1, mode="constant", cval=fill)
    return moved.astype(np.float32), {"rotation_deg": angles.round(2).tolist(), "shift_mm": shift.round(2).tolist()}


def generate_head_subject(index: int, seed: int, kind: str = "tumour", resolution: float = 2.0,
                          field_strength: float = 3.0, head: HeadParams | None = None,
                          params: PhantomParams | None = None) -> HeadSubject:
    """Head ``index`` of ``seed``: the brain phantom's subject ``(seed, index)`` (same anatomy and lesion) inside
    a skull and scalp drawn from its own streams, with MR contrasts and a CT (see the module docstring)."""
    head = head or HeadParams()
    head.validate()
    params = params or PhantomParams()
    resolution, field_strength = float(resolution), float(field_strength)
    _check(kind, resolution, field_strength, params)
    brain_subject = generate_subject(index, seed, kind, resolution, field_strength, _noise_free(params))
    layer_rng, tissue_rng, acq_rng, ct_rng = (np.random.default_rng(s) for s in np.random.SeedSequence(
        seed, spawn_key=(int(index), 100)).spawn(4))
    r, affine = resolution, brain_subject.affine
    brain_total = sum(brain_subject.tissue.values())
    brain = brain_total > 0.5

    # Fractions: the brain's inside, the head layers outside; the subarachnoid CSF joins the brain's CSF.
    layers, meta = _layers(layer_rng, brain, head, r)
    meta.update(_sinus(layer_rng, layers, affine, head, r))
    fr = {k: v.astype(np.float32) for k, v in brain_subject.tissue.items()}
    fr["csf"] = fr["csf"] + layers.pop("csf")
    fr["cortical_bone"] = layers.pop("inner_table") + layers.pop("outer_table")
    fr.update(layers)  # diploe, muscle, fat, air, sinus

    # CT: HU per tissue drawn per subject, mixed by fraction; cupping; noise.
    hu = {k: float(ct_rng.uniform(*head.hu[k])) for k in fr}
    ct = sum(fr[k] * np.float32(hu[k]) for k in fr)
    body = (fr["air"] < 0.5)
    cupping = ct_rng.uniform(*head.cupping_hu)
    if cupping > 0:
        idx = np.indices(body.shape[:2], dtype=np.float32)
        weight = np.zeros(body.shape, np.float32)
        for k in np.flatnonzero(body.any(axis=(0, 1))):  # per axial slice: lower at the head's centre
            inside = body[:, :, k]
            cx, cy = (idx[a][inside].mean() for a in range(2))
            rho2 = (idx[0] - cx) ** 2 + (idx[1] - cy) ** 2
            weight[:, :, k] = np.clip(1 - rho2 / max(rho2[inside].max(), 1), 0, 1)
        ct = ct - cupping * weight * (1 - fr["air"])
    ct_noise = ct_rng.uniform(*head.ct_noise_hu)
    ct = (ct + ct_rng.normal(0, ct_noise, ct.shape)).astype(np.float32)
    meta.update(hu={k: round(v, 1) for k, v in hu.items()}, ct_noise_hu=round(ct_noise, 2),
                cupping_hu=round(cupping, 2))
    if head.misregistration_deg > 0 or head.misregistration_mm > 0:
        ct, meta["misregistration"] = _rigid(ct, ct_rng, head, r, fill=float(head.hu["air"][0]))

    # MR: the brain's noise-free signal plus the head tissues', then bias, Rician noise and gain.
    fp = params.fields[field_strength]
    tissues = {k: Tissue(t.t1 * tissue_rng.uniform(1 - head.jitter, 1 + head.jitter),
                         t.t2 * tissue_rng.uniform(1 - head.jitter, 1 + head.jitter),
                         t.pd * tissue_rng.uniform(1 - head.jitter / 2, 1 + head.jitter / 2), t.adc)
               for k, t in _head_tissues(field_strength).items()}
    qp, csf_t1 = params.acquisition, fp.tissues["csf"].t1
    subarachnoid = fr["csf"] * (~brain)
    csf = fp.tissues["csf"]  # the subarachnoid CSF takes the nominal CSF relaxation
    shape = brain.shape

    def bias(amplitude: float) -> np.ndarray:
        g = _smooth_noise(acq_rng, shape, qp.bias_scale_mm / r)
        return np.exp(acq_rng.uniform(0, amplitude) * g / np.abs(g).max())

    shared = bias(qp.bias)
    images, meta["mr_noise"], meta["mr_gain"] = {}, {}, {}
    for c in CONTRASTS[kind]:
        seq = fp.sequences["t1" if c == "t1ce" else c]
        signal = brain_subject.images[c] + subarachnoid * _signal(seq, csf_t1, csf.pd, csf.t1, csf.t2, csf.adc)
        for name, t in tissues.items():
            signal = signal + fr[name] * np.float32(_signal(seq, csf_t1, t.pd, t.t1, t.t2, t.adc))
        signal = signal * shared * bias(qp.bias_contrast)
        brightest = max(float(_signal(seq, csf_t1, t.pd, t.t1, t.t2, t.adc)) for k, t in fp.tissues.items()
                        if k in NORMAL)
        noise = acq_rng.uniform(*qp.noise)
        sigma = noise * brightest
        signal = np.hypot(signal + acq_rng.normal(0, sigma, shape), acq_rng.normal(0, sigma, shape))
        gain = math.exp(acq_rng.uniform(*np.log(qp.gain)))
        images[c] = (signal * gain).astype(np.float32)
        meta["mr_noise"][c], meta["mr_gain"][c] = round(noise, 4), round(gain, 2)

    names = list(HEAD_LABELS)
    stack = np.stack([fr.get(k, np.zeros(shape, np.float32)) for k in names])
    labels = np.array([HEAD_LABELS[k] for k in names], np.uint8)[np.argmax(stack, 0)]
    meta["brain"] = brain_subject.meta
    return HeadSubject(head_subject_id(kind, index), images, ct, body.astype(np.uint8), labels, brain_subject.seg,
                       fr, affine.copy(), meta)


# ----------------------------------------------------------------------------------------------- writing
README = """\
# MU-Diff head phantom with CT

Written by `mudiff.data.head_phantom` (`generate_head_dataset`); parameters in `head_phantom.json`. One folder
per subject: `mr.nii.gz`, `ct.nii.gz` (Hounsfield units), `mask.nii.gz` (body) as in SynthRAD2023 task 1, the
whole-head MR contrasts in the BraTS layout `<id>_{t1,...}.nii.gz` with the lesion labels `<id>_seg.nii.gz`, and
`labels.nii.gz` (the tissue with the largest fraction: 0 air, 1 CSF, 2 GM, 3 WM, 4 necrosis, 5 enhancing,
6 oedema, 7 infarct, 8 cortical bone, 9 diploe, 10 muscle, 11 fat, 12 sinus air).

Each head is the brain phantom (a warped MNI ICBM152 2009a template) inside skull and scalp layers grown from
the brain's distance field, with CT numbers drawn per subject from literature ranges.

## Honest limits
No face, no skull base, no ears or vessels: the skull is a smooth shell around the brain, the neck is the
brainstem wrapped in the same layers. Results on this phantom are a controlled benchmark with known truth, not
evidence about real patients.

"""


def _save_nifti(data: np.ndarray, affine: np.ndarray, path: Path) -> None:
    import nibabel as nib

    img = nib.Nifti1Image(data, affine)
    img.set_data_dtype(data.dtype)
    img.header.set_xyzt_units("mm")
    img.set_qform(affine, code=2)
    img.set_sform(affine, code=2)
    nib.save(img, path)


def write_head_subject(subject: HeadSubject, out: str | Path, mr_contrast: str = "t1") -> Path:
    """Write one head (SynthRAD and BraTS files) into ``out/<id>`` through a hidden temporary folder."""
    if mr_contrast not in subject.images:
        raise ValueError(f"mr_contrast {mr_contrast!r} is not one of the subject's contrasts {list(subject.images)}")
    out = Path(out)
    final, tmp = out / subject.id, out / f".{subject.id}.tmp"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    files = {"mr": subject.images[mr_contrast], "ct": subject.ct, "mask": subject.body, "labels": subject.labels,
             **{f"{subject.id}_{c}": v for c, v in subject.images.items()}, f"{subject.id}_seg": subject.seg}
    for name, data in files.items():
        _save_nifti(data, subject.affine, tmp / f"{name}.nii.gz")
    if final.exists():
        shutil.rmtree(final)
    os.replace(tmp, final)
    return final


def generate_head_dataset(out_dir: str | Path, n_subjects: int, seed: int = 0, kind: str = "tumour",
                          resolution: float = 2.0, field_strength: float = 3.0, mr_contrast: str = "t1",
                          overwrite: bool = False, head: HeadParams | None = None) -> list[Path]:
    """Write heads ``0 .. n_subjects - 1`` of ``seed`` into ``out_dir`` with ``README.md`` (and the MNI notice)
    and ``head_phantom.json``; returns the subject folders in index order."""
    from tqdm.auto import tqdm

    from mudiff import __version__
    from mudiff.data.subjects import generating

    head = head or HeadParams()
    head.validate()
    if int(n_subjects) != n_subjects or n_subjects < 1:
        raise ValueError(f"n_subjects must be an integer >= 1, got {n_subjects!r}")
    if kind not in LESION_CLASSES:
        raise ValueError(f"unknown phantom kind {kind!r}; choose one of {tuple(LESION_CLASSES)}")
    if mr_contrast not in CONTRASTS[kind]:
        raise ValueError(f"mr_contrast {mr_contrast!r} is not a contrast of {kind} subjects {CONTRASTS[kind]}")
    out = Path(out_dir)
    ids = [head_subject_id(kind, i) for i in range(n_subjects)]
    existing = [i for i in ids if (out / i).exists()]
    if existing and not overwrite:
        raise FileExistsError(f"{out}: subject folder(s) {existing[:3]} already exist; pass overwrite=True")
    out.mkdir(parents=True, exist_ok=True)
    with generating(out, "mudiff.data.head_phantom.generate_head_dataset"):
        (out / "README.md").write_text(README + LICENCE)
        metas = {}
        for i in tqdm(range(n_subjects), desc=f"head phantom {kind}", unit="subject", mininterval=1):
            subject = generate_head_subject(i, seed, kind, resolution, field_strength, head)
            write_head_subject(subject, out, mr_contrast)
            metas[subject.id] = subject.meta
        record = {"generator": "mudiff.data.head_phantom", "version": __version__, "seed": seed, "kind": kind,
                  "resolution": float(resolution), "field_strength": float(field_strength),
                  "mr_contrast": mr_contrast, "labels": HEAD_LABELS, "head": asdict(head), "subjects": metas}
        (out / "head_phantom.json").write_text(json.dumps(record, indent=1, default=float))
    return [out / i for i in ids]


__all__ = ["HEAD_LABELS", "HEAD_LAYERS", "HU_RANGES", "HeadParams", "HeadSubject", "generate_head_subject",
           "generate_head_dataset", "write_head_subject", "head_subject_id"]
