"""The phantom: MR contrast orderings on the noisy volumes, determinism, the written BraTS layout, errors."""
import json

import nibabel as nib
import numpy as np
import pytest
from scipy.ndimage import uniform_filter1d

from mudiff.data.phantom import TISSUE_LABELS, PhantomParams, generate_dataset, generate_subject, tissue_label

SEED = 11


@pytest.fixture(scope="module")
def subjects():
    """2 mm subjects, built on first use: (kind, field strength, index) -> PhantomSubject."""
    cache = {}

    def get(kind, field_strength=3.0, index=0, seed=SEED):
        key = (kind, field_strength, index, seed)
        if key not in cache:
            cache[key] = generate_subject(index, seed, kind, resolution=2.0, field_strength=field_strength)
        return cache[key]

    return get


def medians(subject, contrast):
    """Median of one noisy contrast per tissue, divided by the white-matter median (scaling is arbitrary).
    Normal tissues: fraction > 0.9 away from the lesion; lesion classes: their label in the seg."""
    img, lesion = subject.images[contrast], subject.seg > 0
    masks = {k: (subject.tissue[k] > 0.9) & ~lesion for k in ("csf", "gm", "wm")}
    labels = {"necrosis": 1, "oedema": 2, "enhancing": 4, "infarct": 1}
    masks.update({k: subject.seg == labels[k] for k in subject.tissue if k in labels})
    assert all(m.sum() >= 5 for m in masks.values()), {k: int(m.sum()) for k, m in masks.items()}
    wm = np.median(img[masks["wm"]])
    return {k: float(np.median(img[m]) / wm) for k, m in masks.items()}


def test_subject_arrays(subjects):
    s = subjects("tumour")
    assert s.id == "Phantom_tumour_000"
    assert list(s.images) == ["t1", "t1ce", "t2", "flair"]
    shape = (99, 117, 95)  # the 2 mm grid nilearn also uses for this template
    assert all(v.shape == shape and v.dtype == np.float32 for v in s.images.values())
    assert s.seg.shape == shape and s.seg.dtype == np.uint8
    assert set(np.unique(s.seg)) == {0, 1, 2, 4}
    np.testing.assert_allclose(s.affine, np.array([[2, 0, 0, -98], [0, 2, 0, -134], [0, 0, 2, -72], [0, 0, 0, 1]]))
    assert set(s.tissue) == {"csf", "gm", "wm", "necrosis", "enhancing", "oedema"}
    total = sum(s.tissue.values())
    brain = total > 0
    np.testing.assert_allclose(total[brain], 1.0, atol=1e-5)
    assert 1.0e6 < brain.sum() * 8 < 2.2e6  # brain + CSF volume in mm^3
    for img in s.images.values():  # skull-stripped: zero outside, positive inside
        assert np.all(img[~brain] == 0) and np.all(img[brain] > 0) and np.isfinite(img).all()


@pytest.mark.parametrize("field_strength", [3.0, 1.5])
def test_tumour_contrast_orderings(subjects, field_strength):
    s = subjects("tumour", field_strength)
    t1, t1ce, t2, flair = (medians(s, c) for c in ("t1", "t1ce", "t2", "flair"))
    assert flair["csf"] < 0.5 and flair["csf"] == min(flair.values())
    assert flair["oedema"] > 1.3 and flair["enhancing"] > 1.2
    assert t1ce["enhancing"] > (1.3 if field_strength == 3.0 else 1.15)
    assert t1ce["enhancing"] > t1["enhancing"] + 0.3
    others = [t2[k] for k in ("gm", "wm", "oedema", "enhancing")]
    assert min(t2["csf"], t2["necrosis"]) > max(others)
    assert t1["wm"] > t1["gm"] > t1["csf"] and t1["csf"] == min(t1.values())


@pytest.mark.parametrize("field_strength", [3.0, 1.5])
def test_stroke_contrasts(subjects, field_strength):
    s = subjects("stroke", field_strength)
    assert list(s.images) == ["t1", "t2", "dwi", "flair"]
    assert set(np.unique(s.seg)) == {0, 1}
    dwi, flair, t2 = (medians(s, c) for c in ("dwi", "flair", "t2"))
    assert dwi["infarct"] > 1.4 and dwi["infarct"] > dwi["gm"] and dwi["csf"] < 0.7
    assert flair["infarct"] > 1.3 and flair["csf"] == min(flair.values())
    assert t2["infarct"] > 1.3


def test_healthy_is_the_lesion_free_twin(subjects):
    healthy, tumour = subjects("healthy"), subjects("tumour")
    assert not healthy.seg.any() and set(healthy.tissue) == {"csf", "gm", "wm"}
    t1, t2 = medians(healthy, "t1"), medians(healthy, "t2")
    assert t1["wm"] > t1["gm"] > t1["csf"] and t2["csf"] > t2["gm"] > t2["wm"]
    # Same (seed, index): same anatomy; away from the tumour the fractions agree exactly.
    away = sum(tumour.tissue[k] for k in ("necrosis", "enhancing", "oedema")) == 0
    np.testing.assert_array_equal(healthy.tissue["wm"][away], tumour.tissue["wm"][away])


def test_deterministic_per_seed(subjects):
    a = subjects("tumour")
    b = generate_subject(0, SEED, "tumour", resolution=2.0)
    for c in a.images:
        np.testing.assert_array_equal(a.images[c], b.images[c])
    np.testing.assert_array_equal(a.seg, b.seg)
    other = subjects("tumour", seed=SEED + 1)
    assert np.abs(other.tissue["wm"] - a.tissue["wm"]).mean() > 0.02  # different anatomy
    assert other.meta["lesion"]["centre_template_mm"] != a.meta["lesion"]["centre_template_mm"]
    assert other.meta["lesion"]["core_radius_mm"] != a.meta["lesion"]["core_radius_mm"]
    overlap = ((a.seg > 0) & (other.seg > 0)).sum() / min((a.seg > 0).sum(), (other.seg > 0).sum())
    assert overlap < 0.9


def test_tissue_label_is_the_largest_normal_fraction_outside_the_lesion(subjects):
    s = subjects("tumour")
    label = tissue_label(s)
    brain, lesion = sum(s.tissue.values()) > 0, s.seg > 0
    assert label.shape == s.seg.shape and label.dtype == np.uint8
    assert TISSUE_LABELS == {"csf": 1, "gm": 2, "wm": 3} and set(np.unique(label)) == {0, 1, 2, 3}
    normal = brain & ~lesion
    largest = 1 + np.argmax(np.stack([s.tissue[k] for k in ("csf", "gm", "wm")]), 0)
    np.testing.assert_array_equal(label[normal], largest[normal])
    assert not label[~brain].any() and not label[lesion].any()
    assert all((label[brain] == v).mean() > 0.1 for v in TISSUE_LABELS.values())  # each a good part of the brain
    healthy = subjects("healthy")
    assert np.array_equal(tissue_label(healthy) > 0, sum(healthy.tissue.values()) > 0)  # no lesion: every voxel


def test_thick_slices_average_t2_and_flair_along_z():
    thin, thick = PhantomParams(), PhantomParams()
    for params in (thin, thick):
        params.acquisition.noise = (0.0, 0.0)  # noise is added after the slice averaging
    thick.acquisition.thick_slice_mm = 6.0  # 3 voxels of 2 mm
    thin, thick = (generate_subject(0, SEED, "healthy", resolution=2.0, params=p) for p in (thin, thick))
    brain = thin.images["t1"] > 0
    for c in ("t2", "flair"):
        averaged = uniform_filter1d(thin.images[c], 3, axis=2)
        np.testing.assert_allclose(thick.images[c][brain], averaged[brain], rtol=1e-4)
    np.testing.assert_array_equal(thick.images["t1"], thin.images["t1"])


def test_dataset_layout_matches_in_process_subjects(phantom_dir):
    """conftest's phantom folder (written by several workers): files, README, phantom.json, and its last subject
    equal to a single in-process generate_subject, so results depend neither on workers nor on n_subjects."""
    record = json.loads((phantom_dir / "phantom.json").read_text())
    n, kind = record["n_subjects"], record["kind"]
    folders = sorted(p.name for p in phantom_dir.iterdir() if p.is_dir())
    assert folders == [f"Phantom_{kind}_{i:03d}" for i in range(n)] == list(record["subjects"])
    assert record["version"] and record["seed"] is not None
    sid = folders[-1]
    files = sorted(p.name for p in (phantom_dir / sid).iterdir())
    assert files == [f"{sid}_{k}.nii.gz" for k in ("flair", "seg", "t1", "t1ce", "t2", "tissue")]
    assert record["tissue_values"] == TISSUE_LABELS
    ref = generate_subject(n - 1, record["seed"], kind, record["resolution"], record["field_strength"])
    expected = {**ref.images, "seg": ref.seg, "tissue": tissue_label(ref)}
    for key, array in expected.items():
        img = nib.load(phantom_dir / sid / f"{sid}_{key}.nii.gz")
        data = np.asanyarray(img.dataobj)
        np.testing.assert_array_equal(data, array)
        assert data.dtype == (np.uint8 if key in ("seg", "tissue") else np.float32)
        np.testing.assert_allclose(img.affine, ref.affine)
    assert "Louis Collins" in (phantom_dir / "README.md").read_text()


def test_overwrite_and_stroke_layout(tmp_path):
    (folder,) = generate_dataset(tmp_path, 1, seed=1, kind="stroke", resolution=2.0, workers=1)
    assert sorted(p.name for p in folder.iterdir()) == [
        f"Phantom_stroke_000_{k}.nii.gz" for k in ("dwi", "flair", "seg", "t1", "t2", "tissue")]
    (folder / "stale.txt").write_text("from an older run")
    with pytest.raises(FileExistsError, match="overwrite=True"):
        generate_dataset(tmp_path, 1, seed=1, kind="stroke", resolution=2.0, workers=1)
    generate_dataset(tmp_path, 1, seed=2, kind="stroke", resolution=2.0, workers=1, overwrite=True)
    assert not (folder / "stale.txt").exists()
    assert json.loads((tmp_path / "phantom.json").read_text())["seed"] == 2
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no temporary folder left


@pytest.mark.parametrize("kwargs, match", [
    (dict(kind="glioma"), "unknown phantom kind 'glioma'"),
    (dict(resolution=0.5), "resolution"),
    (dict(resolution=5), "resolution"),
    (dict(field_strength=7.0), "field_strength"),
    (dict(n_subjects=0), "n_subjects"),
    (dict(workers=0), "workers"),
])
def test_bad_input(tmp_path, kwargs, match):
    with pytest.raises(ValueError, match=match):
        generate_dataset(**{"out_dir": tmp_path / "out", "n_subjects": 1, "resolution": 2.0, **kwargs})
    assert not (tmp_path / "out").exists()
    if "n_subjects" not in kwargs and "workers" not in kwargs:
        with pytest.raises(ValueError, match=match):
            generate_subject(0, 0, **{"resolution": 2.0, **kwargs})
