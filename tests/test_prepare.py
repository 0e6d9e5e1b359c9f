"""The slice pipeline: intensity and slice selection, geometry round trip, masks, split, writer, manifest."""
import hashlib
import json
import os
import warnings

import nibabel as nib
import numpy as np
import pandas as pd
import pytest

from mudiff.data import prepare as prep
from mudiff.data.prepare import (DatasetExistsError, brain_mask, intensity_window, lesion_mask, load_manifest, middle_slices,
                                 normalize_intensity, prepare_dataset, preprocess_label, preprocess_volume,
                                 read_split_file, restore_volume, split_counts, split_subjects)
from mudiff.data.subjects import DataError, find_subject, load_subject

SHAPE = (24, 20, 16)
CONTRASTS = ("t1", "t1ce", "t2", "flair")


def head(shape=SHAPE, z_range=(3, 13), seed=0):
    """An ellipsoid 'brain' filling z_range, with per-contrast intensities and a labelled lesion (1/2/4)."""
    rng = np.random.default_rng(seed)
    x, y, z = np.meshgrid(*[np.arange(n, dtype=float) for n in shape], indexing="ij")
    cz, rz = (z_range[0] + z_range[1] - 1) / 2, (z_range[1] - z_range[0]) / 2
    r = ((x - shape[0] / 2) / (shape[0] / 2.6)) ** 2 + ((y - shape[1] / 2) / (shape[1] / 2.6)) ** 2 + \
        ((z - cz) / rz) ** 2
    brain = (r <= 1) & (z >= z_range[0]) & (z < z_range[1])
    d = (x - shape[0] / 2 - 2) ** 2 + (y - shape[1] / 2) ** 2 + (z - cz) ** 2
    label = np.select([d <= 1, d <= 3, d <= 6], [4, 1, 2], 0).astype(np.uint8) * brain
    images = {c: brain * (rng.uniform(20, 30, shape) + 40 * i * (label > 0)) for i, c in enumerate(CONTRASTS)}
    return images, label


def write_subject(root, sid, contrasts=CONTRASTS, tissue=False, **head_args):
    """With ``tissue``, also a normal-tissue map as the phantom writes it: 1, 2, 3 by quadrant in the brain
    outside the lesion."""
    images, label = head(**head_args)
    folder = root / sid
    folder.mkdir(parents=True)
    affine = np.diag([-1.0, -1.0, 1.0, 1.0])
    for c in contrasts:
        nib.save(nib.Nifti1Image(images[c].astype(np.float32), affine), folder / f"{sid}_{c}.nii.gz")
    nib.save(nib.Nifti1Image(label, affine), folder / f"{sid}_seg.nii.gz")
    if tissue:
        x, y, _ = np.indices(label.shape)
        quadrant = 1 + (x >= label.shape[0] // 2) + (y >= label.shape[1] // 2)
        tissue_map = np.where((images[CONTRASTS[0]] > 0) & (label == 0), quadrant, 0).astype(np.uint8)
        nib.save(nib.Nifti1Image(tissue_map, affine), folder / f"{sid}_tissue.nii.gz")
    return folder


def write_subjects(root, n, **kw):
    for i in range(n):
        write_subject(root, f"S{i}", seed=i, **kw)
    return root


# ---- per-volume preprocessing ---------------------------------------------------------------------------------
def test_percentile_clip_and_min_max_on_a_known_volume():
    volume = np.zeros((10, 10, 10), np.float32)
    volume.flat[:100] = np.arange(1, 101)  # 100 non-zero voxels 1..100: 1st/99th percentiles 1.99 and 99.01
    out = normalize_intensity(volume)
    assert out.dtype == np.float32 and out.min() == 0 and out.max() == 1
    np.testing.assert_allclose(out.flat[[0, 1, 49, 98, 99, 500]],
                               [0, (2 - 1.99) / 97.02, (50 - 1.99) / 97.02, (99 - 1.99) / 97.02, 1, 0], atol=1e-6)


def test_constant_after_clipping_is_an_error():
    volume = np.zeros((10, 10, 10), np.float32)
    volume[:5] = 3.0
    volume[0, 0, 0] = 9.0  # above the 99th percentile: clipped away, the rest is constant
    with pytest.raises(DataError, match="constant after clipping"):
        normalize_intensity(volume)


def test_middle_slices_of_the_brain_extent():
    images, _ = head(z_range=(3, 13))
    assert middle_slices([images["t1"]], 4) == [6, 7, 8, 9]
    assert middle_slices([images["t1"]], 10) == list(range(3, 13))
    assert middle_slices([images["t1"]], 40) == list(range(3, 13))  # fewer than asked: what exists


@pytest.mark.parametrize("shape", [(12, 12, 5), (12, 9, 5), (7, 11, 4)])
def test_restore_volume_inverts_the_geometry(shape):
    rng = np.random.default_rng(1)
    volume = rng.uniform(1, 2, shape).astype(np.float32)
    z = [1, 3]
    side = max(shape[:2])
    slices = preprocess_volume(volume, side, z)
    assert slices.shape == (2, side, side) and slices.dtype == np.float32
    expected = np.zeros(shape, np.float32)
    expected[:, :, z] = normalize_intensity(volume)[:, :, z]
    np.testing.assert_array_equal(restore_volume(slices, shape, z), expected)
    label = rng.integers(0, 5, shape).astype(np.uint8)
    restored = restore_volume(preprocess_label(label, side, z), shape, z)
    assert restored.dtype == np.uint8
    np.testing.assert_array_equal(restored[:, :, z], label[:, :, z])


def test_display_orientation_and_resizing():
    marker = np.zeros((16, 16, 1), np.uint8)
    marker[0, 15, 0] = 1  # RAS: x=0 is the patient's left, y=15 anterior -> top-left of the display
    shown = preprocess_label(marker, 16, [0])[0]
    assert shown[0, 0] == 1 and shown.sum() == 1
    assert preprocess_label(marker, 32, [0])[0, :2, :2].all() and preprocess_label(marker, 32, [0]).sum() == 4
    volume = np.random.default_rng(0).uniform(1, 2, (16, 16, 3))
    big, small = preprocess_volume(volume, 32, [1]), preprocess_volume(volume, 16, [1])
    assert big.shape == (1, 32, 32) and big.min() >= 0 and big.max() <= 1
    np.testing.assert_allclose(big[0, ::2, ::2].mean(), small.mean(), atol=0.02)


def test_brain_mask_covers_the_brain_not_the_background():
    images, _ = head(shape=(40, 36, 12), z_range=(0, 12))
    brain, pocket, speck = (np.zeros(images["t1"].shape, np.uint8) for _ in range(3))
    brain[images["t1"] > 0] = 1
    pocket[18:22, 16:19, :] = 1
    speck[2, 2, :] = 1
    images["t1"][pocket == 1] = 0  # a dark pocket (CSF-like) inside the brain: must be filled
    images["t1"][speck == 1] = 30  # noise in the background: must go
    z, side = list(range(2, 10)), 40  # side = the padded slice: no resampling, so the truth maps exactly
    slices = np.stack([preprocess_volume(images[c], side, z) for c in ("t1", "t2")], axis=1)  # (K, C, H, W)
    truth, inside, noise = (preprocess_label(m, side, z) == 1 for m in (brain, pocket, speck))
    mask = brain_mask(slices)
    assert mask.shape == (8, side, side) and mask.dtype == np.uint8
    # not every voxel: the opening trims single-voxel steps of the digitised ellipsoid's edge
    assert mask[truth].mean() > 0.99 and mask[~truth].mean() < 0.01 and not mask[noise].any()
    assert (slices[:, 0][inside] == 0).all() and brain_mask(slices[:, 0])[inside].all()


def test_lesion_dilation_grows_the_mask():
    label = np.zeros((2, 11, 11), np.uint8)
    label[0, 5, 5] = 4
    assert lesion_mask(label).sum() == 1
    assert lesion_mask(label, 1).sum() == 9
    assert lesion_mask(label, 3).sum() == 49 and lesion_mask(label, 3)[1].sum() == 0  # in-plane only


# ---- split -----------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("n, counts", [(10, [7, 2, 1]), (4, [2, 1, 1]), (3, [1, 1, 1]), (335, [234, 67, 34]),
                                       (1, [1, 0, 0])])
def test_split_counts(n, counts):
    assert split_counts(n, (0.7, 0.2, 0.1)) == counts


def test_split_is_deterministic_and_partitions_the_subjects():
    ids = [f"S{i}" for i in range(20)]
    split = split_subjects(ids, seed=4)
    assert split == split_subjects(list(reversed(ids)), seed=4)
    assert split != split_subjects(ids, seed=5)
    assert [len(split[s]) for s in ("train", "val", "test")] == [14, 4, 2]
    assert sorted(sum(split.values(), [])) == sorted(ids)


def test_split_file(tmp_path):
    path = tmp_path / "split.yaml"
    path.write_text("train: [S0, S1]\nval: [S2]\ntest: [3]\n")
    assert read_split_file(path, ["S0", "S1", "S2", "3", "S4"]) == {"train": ["S0", "S1"], "val": ["S2"],
                                                                       "test": ["3"]}
    with pytest.raises(ValueError, match=r"not found in the data: \['3'\]"):
        read_split_file(path, ["S0", "S1", "S2"])
    path.write_text(json.dumps({"train": ["S0", "S1"], "test": ["S1"]}))
    with pytest.raises(ValueError, match=r"\['S1'\] listed more than once"):
        read_split_file(path, ["S0", "S1"])
    path.write_text(json.dumps({"training": ["S0"]}))
    with pytest.raises(ValueError, match="must map some of"):
        read_split_file(path, ["S0"])
    path.write_text("test: S0\n")  # a scalar, not a list: its letters are not ids
    with pytest.raises(ValueError, match="lists of subject ids"):
        read_split_file(path, ["S0"])
    path.write_text("train: [S0\n")
    with pytest.raises(ValueError, match="cannot be parsed"):
        read_split_file(path, ["S0"])


# ---- the writer ------------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def prepared(tmp_path_factory):
    data = write_subjects(tmp_path_factory.mktemp("data"), 4)
    out = tmp_path_factory.mktemp("out") / "slices"
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # a clean dataset prepares without any warning
        manifest_path = prepare_dataset(data, out, size=16, slices=6, seed=1)
    return data, out, manifest_path


def test_prepared_arrays_and_table(prepared):
    _, out, manifest_path = prepared
    assert manifest_path == out / "manifest.json"
    table = pd.read_csv(out / "slices.csv")
    assert list(table.columns) == ["index", "subject", "split", "z"] and len(table) == 24
    assert table["index"].tolist() == list(range(24))
    assert table.groupby("subject")["z"].apply(list).tolist() == [[5, 6, 7, 8, 9, 10]] * 4
    assert table.groupby("split")["subject"].nunique().to_dict() == {"test": 1, "train": 2, "val": 1}
    for c in CONTRASTS:
        images = np.load(out / f"images_{c}.npy", mmap_mode="r")
        assert images.shape == (24, 16, 16) and images.dtype == np.float32
        assert images.min() == 0 and images.max() <= 1 and images.max() > 0.5
    label = np.load(out / "label.npy")
    lesion = np.load(out / "lesion_mask.npy")
    assert label.dtype == np.uint8 and set(np.unique(label)) == {0, 1, 2, 4}  # raw labels, for per-label Dice
    np.testing.assert_array_equal(lesion, label > 0)
    brain = np.load(out / "brain_mask.npy")
    assert brain.shape == (24, 16, 16) and 0.2 < brain.mean() < 0.8
    assert not list(out.parent.glob(".slices.partial-*"))


def test_manifest_content_and_checksums(prepared):
    data, out, _ = prepared
    manifest = load_manifest(out)
    assert manifest["format_version"] == prep.FORMAT_VERSION and manifest["contrasts"] == list(CONTRASTS)
    assert manifest["preprocessing"]["size"] == 16 and manifest["preprocessing"]["slices"] == 6
    assert manifest["preprocessing"]["low_percentile"] == 1.0 and manifest["preprocessing"]["dilate_lesion"] == 0
    assert manifest["counts"]["slices"] == 24 and manifest["counts"]["subjects"] == 4
    assert manifest["split"]["seed"] == 1 and sorted(sum((manifest["split"][s] for s in prep.SPLITS), [])) == \
        ["S0", "S1", "S2", "S3"]
    assert manifest["skipped"] == [] and manifest["subjects"]["S2"]["slices"] == 6
    assert manifest["subjects"]["S2"]["orientation"] == "LPS"
    entry = manifest["source"]["files"]["S2"]["flair"]
    assert entry["path"] == "S2/S2_flair.nii.gz"
    assert entry["sha256"] == hashlib.sha256((data / entry["path"]).read_bytes()).hexdigest()
    assert set(manifest["source"]["files"]["S2"]) == {*CONTRASTS, "seg"}
    assert "tissue" not in manifest["arrays"] and not (out / "tissue.npy").exists()  # no tissue map, none kept


def test_tissue_maps_are_carried_when_every_subject_has_one(tmp_path):
    data = write_subjects(tmp_path / "data", 3, tissue=True)
    prepare_dataset(data, tmp_path / "out", size=16, slices=6)
    manifest, table = load_manifest(tmp_path / "out"), pd.read_csv(tmp_path / "out" / "slices.csv")
    assert manifest["arrays"]["tissue"] == "tissue.npy"
    assert manifest["source"]["files"]["S1"]["tissue"]["path"] == "S1/S1_tissue.nii.gz"
    tissue, label = np.load(tmp_path / "out" / "tissue.npy"), np.load(tmp_path / "out" / "label.npy")
    assert tissue.shape == (18, 16, 16) and tissue.dtype == np.uint8 and set(np.unique(tissue)) == {0, 1, 2, 3}
    assert not tissue[label > 0].any()
    loaded = load_subject(find_subject(data / "S1"))
    rows = table["subject"] == "S1"
    np.testing.assert_array_equal(tissue[rows], preprocess_label(loaded.tissue, 16, table["z"][rows].tolist()))

    write_subject(data, "S3", seed=3)  # without a tissue map: none is kept
    with pytest.warns(UserWarning, match="only 3 of 4 subjects have a tissue map"):
        prepare_dataset(data, tmp_path / "out", size=16, slices=6, overwrite=True)
    manifest = load_manifest(tmp_path / "out")
    assert "tissue" not in manifest["arrays"] and "tissue" not in manifest["source"]["files"]["S1"]
    assert not (tmp_path / "out" / "tissue.npy").exists()


def test_refuses_to_overwrite_and_overwrites_on_request(prepared):
    data, out, _ = prepared
    with pytest.raises(DatasetExistsError, match="overwrite=True"):
        prepare_dataset(data, out, size=16, slices=6)
    before = (out / "manifest.json").read_text()
    prepare_dataset(data, out, size=16, slices=2, seed=1, overwrite=True, contrasts=["t2", "t1"])
    manifest = load_manifest(out)
    assert manifest["counts"]["slices"] == 8 and manifest["contrasts"] == ["t2", "t1"]
    assert not (out / "images_flair.npy").exists() and before != (out / "manifest.json").read_text()
    assert [p.name for p in out.parent.iterdir()] == ["slices"]  # nothing left aside
    umask = os.umask(0)
    os.umask(umask)
    assert out.stat().st_mode & 0o777 == 0o777 & ~umask  # readable as any new folder, not by its owner alone


def test_overwrite_never_replaces_the_raw_data_or_a_folder_that_is_not_a_dataset(prepared, tmp_path):
    data, _, _ = prepared
    files = sorted(p.relative_to(data) for p in data.rglob("*"))
    for out in (data, data.parent):  # the input folder itself, and a folder that holds it
        with pytest.raises(DatasetExistsError, match="would replace the raw data"):
            prepare_dataset(data, out, size=16, slices=2, overwrite=True)
    assert sorted(p.relative_to(data) for p in data.rglob("*")) == files
    other = tmp_path / "notes"
    other.mkdir()
    (other / "todo.txt").write_text("mine")
    with pytest.raises(DatasetExistsError, match="not a prepared dataset"):
        prepare_dataset(data, other, size=16, slices=2, overwrite=True)
    assert (other / "todo.txt").read_text() == "mine"


def test_an_interrupted_run_leaves_no_dataset(tmp_path, monkeypatch):
    data = write_subjects(tmp_path / "data", 3)
    calls = []

    def interrupted(*args):
        calls.append(1)
        if len(calls) == 2:
            raise KeyboardInterrupt
        return process(*args)

    process = prep._process
    monkeypatch.setattr(prep, "_process", interrupted)
    with pytest.raises(KeyboardInterrupt):
        prepare_dataset(data, tmp_path / "out", size=16, slices=4)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["data"]


def test_bad_subject_is_skipped_and_reported_or_stops_in_strict_mode(tmp_path):
    data = write_subjects(tmp_path / "data", 4)
    (data / "S1" / "S1_t2.nii.gz").write_bytes(b"corrupt")
    with pytest.warns(UserWarning, match="skipping subject S1"):
        prepare_dataset(data, tmp_path / "out", size=16, slices=6)
    manifest = load_manifest(tmp_path / "out")
    assert [s["subject"] for s in manifest["skipped"]] == ["S1"]
    assert "S1_t2.nii.gz: cannot read" in manifest["skipped"][0]["reason"]
    assert manifest["counts"]["slices"] == 18 and "S1" not in sum((manifest["split"][s] for s in prep.SPLITS), [])
    assert np.load(tmp_path / "out" / "images_t1.npy", mmap_mode="r").shape == (18, 16, 16)
    with pytest.raises(DataError, match="S1_t2.nii.gz: cannot read"):
        prepare_dataset(data, tmp_path / "strict", size=16, slices=6, strict=True)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["data", "out"]


def test_short_brain_records_the_actual_number_of_slices(tmp_path):
    write_subject(tmp_path / "data", "S0", z_range=(4, 7))
    with pytest.warns(UserWarning, match="spans only 3 axial slices"):
        prepare_dataset(tmp_path / "data", tmp_path / "out", size=16, slices=6)
    manifest = load_manifest(tmp_path / "out")
    assert manifest["subjects"]["S0"]["slices"] == 3 and manifest["subjects"]["S0"]["z"] == [4, 6]


def test_split_file_and_dilation_in_prepare(tmp_path):
    data = write_subjects(tmp_path / "data", 3)
    (tmp_path / "split.json").write_text(json.dumps({"train": ["S2"], "test": ["S0"]}))
    with pytest.warns(UserWarning, match="not in .* left out"):
        prepare_dataset(data, tmp_path / "out", size=16, slices=3, split_file=tmp_path / "split.json",
                        dilate_lesion=2)
    manifest = load_manifest(tmp_path / "out")
    assert (manifest["split"]["train"], manifest["split"]["val"], manifest["split"]["test"]) == (["S2"], [], ["S0"])
    assert manifest["unlisted"] == ["S1"]
    lesion, label = np.load(tmp_path / "out" / "lesion_mask.npy"), np.load(tmp_path / "out" / "label.npy")
    assert lesion.sum() > (label > 0).sum() and (lesion[label > 0] == 1).all()


@pytest.mark.parametrize("kwargs, message", [
    (dict(size=8), "multiple of 16"),
    (dict(size=40), r"multiple of 16 .* got 40x40"),
    (dict(slices=0), "slices must be >= 1"),
    (dict(split=(0.5, 0.5, 0.5)), "summing to 1"),
    (dict(contrasts=["swi"]), "unknown contrast"),
    (dict(contrasts=["t1", "dwi"]), r"\['dwi'\] missing in every subject"),
    (dict(contrasts=["t1", "t1"]), "name a contrast twice"),
])
def test_argument_errors(tmp_path, kwargs, message):
    write_subjects(tmp_path / "data", 1)
    with pytest.raises(ValueError, match=message):
        prepare_dataset(tmp_path / "data", tmp_path / "out", **kwargs)


def test_load_manifest_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="python -m mudiff prepare"):
        load_manifest(tmp_path)
    (tmp_path / "manifest.json").write_text(json.dumps({"format_version": 0}))
    with pytest.raises(ValueError, match="format version 0"):
        load_manifest(tmp_path)


def test_shrink_npy_keeps_the_first_rows(tmp_path):
    path = tmp_path / "a.npy"
    array = np.lib.format.open_memmap(path, mode="w+", dtype=np.float32, shape=(100, 3, 2))
    array[:] = np.arange(600, dtype=np.float32).reshape(100, 3, 2)
    del array
    prep._shrink_npy(path, 7)  # the shape loses digits: the header keeps its length
    np.testing.assert_array_equal(np.load(path), np.arange(42, dtype=np.float32).reshape(7, 3, 2))
    assert path.stat().st_size == 128 + 42 * 4


# ---- intensity normalisation that ignores the lesion ------------------------------------------------------------
def _brain_with_lesion(lesion_value: float, lesion_size: int) -> tuple[np.ndarray, np.ndarray]:
    """A 'brain' of two tissues (100, 200) with a cubic lesion of ``lesion_value``; background 0. (X, Y, Z)."""
    rng = np.random.default_rng(0)
    volume = np.zeros((20, 20, 20), np.float32)
    volume[2:18, 2:18, 2:18] = rng.choice([100.0, 200.0], size=(16, 16, 16))
    lesion = np.zeros(volume.shape, bool)
    lesion[4:4 + lesion_size, 4:4 + lesion_size, 4:4 + lesion_size] = True
    volume[lesion] = lesion_value
    return volume, lesion


@pytest.mark.parametrize("normalization", ["percentile_outside_lesion", "zscore_outside_lesion"])
def test_lesion_free_windows_do_not_move_with_the_lesion(normalization):
    small, small_lesion = _brain_with_lesion(1000.0, 2)
    large, large_lesion = _brain_with_lesion(1000.0, 10)  # a large enhancing lesion: 1000 / 4096 brain voxels
    paper = [intensity_window(v) for v in (small, large)]
    assert paper[0][1] == 200.0 and paper[1][1] == 1000.0  # the paper's window: its top set by the lesion
    free = [intensity_window(v, normalization=normalization, lesion=m) for v, m in ((small, small_lesion),
                                                                                  (large, large_lesion))]
    width = free[0][1] - free[0][0]
    assert free[0] == pytest.approx(free[1], abs=0.02 * width)  # the normal brain maps to the same values
    assert free[0][1] < 1000.0
    with pytest.raises(DataError, match="needs the subject's lesion label"):
        intensity_window(small, normalization=normalization)


def test_zscore_window_is_mean_plus_fixed_sds():
    volume, lesion = _brain_with_lesion(1000.0, 4)
    normal = volume[(volume != 0) & ~lesion]
    low, high = intensity_window(volume, normalization="zscore_outside_lesion", lesion=lesion)
    assert low == pytest.approx(normal.mean() + prep.ZSCORE_WINDOW[0] * normal.std(), rel=1e-5)
    assert high == pytest.approx(normal.mean() + prep.ZSCORE_WINDOW[1] * normal.std(), rel=1e-5)
    slices = preprocess_volume(volume, 20, range(20), normalization="zscore_outside_lesion", lesion=lesion)
    assert slices.min() == 0 and slices.max() == 1
    assert np.all(slices[:, :2, :] == 0)  # background stays 0 although the window starts below it


def test_prepare_records_the_normalization_and_rejects_unknown(tmp_path):
    data = write_subjects(tmp_path / "data", 3)
    with pytest.raises(ValueError, match="normalization must be one of"):
        prepare_dataset(data, tmp_path / "bad", size=16, slices=2, normalization="whitestripe")
    prepare_dataset(data, tmp_path / "paper", size=16, slices=2, seed=1)
    prepare_dataset(data, tmp_path / "free", size=16, slices=2, seed=1, normalization="percentile_outside_lesion")
    manifest = load_manifest(tmp_path / "free")
    assert manifest["preprocessing"]["normalization"] == "percentile_outside_lesion"
    assert manifest["preprocessing"]["intensity"] == prep.NORMALIZATIONS["percentile_outside_lesion"]
    assert load_manifest(tmp_path / "paper")["preprocessing"]["normalization"] == "percentile"
    paper = np.load(tmp_path / "paper" / "images_t1ce.npy")
    free = np.load(tmp_path / "free" / "images_t1ce.npy")
    assert paper.shape == free.shape and not np.allclose(paper, free)
