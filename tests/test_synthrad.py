"""SynthRAD-layout MR/CT data: bad inputs named, preparation (fixed HU mapping, body masks, rectangular slices),
the HU round trip, and unpaired batches that never pair an MR with its CT."""

import nibabel as nib
import numpy as np
import pytest

from mudiff.config import RunConfig
from mudiff.data.prepare import DatasetExistsError
from mudiff.data.subjects import DataError
from mudiff.data.synthrad import (HU_WINDOW, MRCTDataset, find_synthrad_subjects, hu_to_unit, load_synthrad_subject,
                                  prepare_synthrad, unit_to_hu, write_slices_nifti)

SHAPE = (16, 32, 8)  # X, Y, Z: a stored slice is (Y, X) = 32 x 16
AFFINE = np.diag([1.5, 1.5, 3.0, 1.0])
LPS = np.diag([-1.5, -1.5, 3.0, 1.0])  # the files' x and y run opposite to RAS+, as in DICOM-converted data


def save(path, data, affine=AFFINE):
    nib.save(nib.Nifti1Image(np.asarray(data), affine), path)


def make_subject(folder, seed, affine=AFFINE):
    """A fake head: an ellipsoid body of soft tissue with a bony shell, air outside; MR bright soft tissue; noise
    makes every voxel distinct."""
    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True)
    idx = np.indices(SHAPE).astype(np.float32)
    r = np.sqrt(((idx[0] - 7.5) / 7) ** 2 + ((idx[1] - 9.5) / 9) ** 2 + ((idx[2] - 3.5) / 5) ** 2)
    body = r < 1.0
    ct = np.where(body, 40.0, -1000.0) + np.where((r > 0.8) & body, 900.0, 0.0) + rng.normal(0, 5, SHAPE)
    mr = np.where(body, 300.0, 5.0) - np.where((r > 0.8) & body, 250.0, 0.0) + rng.normal(0, 3, SHAPE)
    save(folder / "mr.nii.gz", mr.astype(np.float32), affine)
    save(folder / "ct.nii.gz", ct.astype(np.float32), affine)
    save(folder / "mask.nii.gz", body.astype(np.uint8), affine)
    return folder


@pytest.fixture
def subjects_dir(tmp_path):
    for i in range(6):
        make_subject(tmp_path / "raw" / f"1BA{i:03d}", i)
    return tmp_path / "raw"


def test_hu_mapping_is_fixed_and_invertible():
    hu = np.array([-3000.0, -1024.0, 0.0, 1000.0, 3000.0, 5000.0])
    unit = hu_to_unit(hu)
    np.testing.assert_allclose(unit, [0, 0, 1024 / 4024, 2024 / 4024, 1, 1])
    np.testing.assert_allclose(unit_to_hu(unit), np.clip(hu, *HU_WINDOW), atol=1e-9)


@pytest.mark.parametrize("damage, match", [
    ("missing", "missing ct.nii.gz"),
    ("shape", "shape"),
    ("affine", "affine differs"),
    ("nan", "non-finite"),
    ("truncated", "truncated or corrupt"),
    ("offset", "offset of 1024"),
    ("mask_values", "0 and 1"),
    ("constant", "constant volume"),
])
def test_bad_inputs_are_named(tmp_path, damage, match):
    folder = make_subject(tmp_path / "raw" / "1BA001", 0)
    ct_path = folder / "ct.nii.gz"
    ct = nib.load(ct_path).get_fdata().astype(np.float32)
    if damage == "missing":
        ct_path.unlink()
    elif damage == "shape":
        save(ct_path, ct[:, :, :-1])
    elif damage == "affine":
        save(ct_path, ct, AFFINE @ np.diag([1, 1, 1.1, 1]))
    elif damage == "nan":
        ct[3, 3, 3] = np.nan
        save(ct_path, ct)
    elif damage == "truncated":
        raw = ct_path.read_bytes()
        ct_path.write_bytes(raw[: len(raw) // 2])
    elif damage == "offset":
        save(ct_path, ct + 1024)
    elif damage == "constant":
        save(ct_path, np.full_like(ct, -1000.0))  # all air: no CT at all
    elif damage == "mask_values":
        save(folder / "mask.nii.gz", (nib.load(folder / "mask.nii.gz").get_fdata() * 2).astype(np.uint8))
    with pytest.raises(DataError, match=match) as err:
        load_synthrad_subject(find_synthrad_subjects(tmp_path / "raw")[0])
    assert "1BA001" in str(err.value)


def test_prepare_manifest_and_body_masks(subjects_dir, tmp_path):
    out = tmp_path / "slices"
    prepare_synthrad(subjects_dir, out, height=16, width=16, slices=4, split=(0.5, 0.25, 0.25))
    data = MRCTDataset(out, "train")
    assert (data.height, data.width) == (16, 16) and len(data) == 3 * 4
    item = data[0]
    assert item["mr"].shape == item["ct"].shape == item["body_mask"].shape == (1, 16, 16)
    outside = item["body_mask"] == 0
    assert (item["ct"][outside] == -1).all() and (item["mr"][outside] == -1).all()
    bone = item["ct"][~outside].max()
    assert unit_to_hu((bone.item() + 1) / 2) > 500  # the shell's HU survive (no per-volume min-max)
    with pytest.raises(ValueError, match="not empty"):
        prepare_synthrad(subjects_dir, out, height=16)


def test_a_bad_subject_is_skipped_and_recorded(subjects_dir, tmp_path):
    save(subjects_dir / "1BA002" / "ct.nii.gz", np.full(SHAPE, 10.0, np.float32))
    import json
    with pytest.warns(UserWarning, match="1BA002"):
        manifest = prepare_synthrad(subjects_dir, tmp_path / "s", height=16, slices=2)
    skipped = json.loads(manifest.read_text())["skipped"]
    assert [s["subject"] for s in skipped] == ["1BA002"] and "not Hounsfield" in skipped[0]["reason"]
    with pytest.raises(DataError, match="1BA002"):
        prepare_synthrad(subjects_dir, tmp_path / "s2", height=16, slices=2, strict=True)


@pytest.mark.parametrize("affine", [AFFINE, LPS], ids=["RAS", "LPS"])
def test_hu_round_trip_prepare_model_space_nifti(tmp_path, affine):
    """prepare -> model space [-1, 1] -> NIfTI gives back the HU (clipped to the window) on the source files' grid,
    voxel for voxel, whatever their axis order."""
    subjects_dir = tmp_path / "raw"
    for i in range(4):
        make_subject(subjects_dir / f"1BA{i:03d}", i, affine)
    out = tmp_path / "rect"
    prepare_synthrad(subjects_dir, out, height=32, width=16, slices=SHAPE[2], split=(0.5, 0.25, 0.25))
    data = MRCTDataset(out, "all")
    subject = data.slice_table["subject"].iloc[0]
    rows = [i for i in range(len(data)) if data[i]["subject"] == subject]
    model = np.stack([data[i]["ct"][0].numpy() for i in rows])  # (K, 32, 16) in [-1, 1]
    z = [data[i]["z"] for i in rows]
    pair = load_synthrad_subject(find_synthrad_subjects(subjects_dir)[0])
    assert pair.id == subject
    back = nib.load(write_slices_nifti(model, "ct", pair, z, tmp_path / "sct.nii.gz"))
    np.testing.assert_allclose(back.affine, affine)
    src = nib.load(subjects_dir / subject / "ct.nii.gz").get_fdata()
    body = nib.load(subjects_dir / subject / "mask.nii.gz").get_fdata() > 0
    expected = np.where(body, np.clip(src, *HU_WINDOW), HU_WINDOW[0])[:, :, z]
    np.testing.assert_allclose(back.get_fdata()[:, :, z], expected, atol=0.01)


def test_overwrite_never_replaces_the_raw_subjects(subjects_dir):
    files = sorted(subjects_dir.rglob("*.nii.gz"))
    with pytest.raises(DatasetExistsError, match="would replace the raw data"):
        prepare_synthrad(subjects_dir, subjects_dir, height=16, slices=2, overwrite=True)
    assert sorted(subjects_dir.rglob("*.nii.gz")) == files


def test_rectangular_slices_keep_the_aspect(subjects_dir, tmp_path):
    prepare_synthrad(subjects_dir, tmp_path / "r", height=32, width=48, slices=2)
    item = MRCTDataset(tmp_path / "r", "train")[0]
    assert item["ct"].shape == (1, 32, 48)
    with pytest.raises(ValueError, match=r"multiple of 16 .* got 32x24"):  # no critic could train on it
        prepare_synthrad(subjects_dir, tmp_path / "w", height=32, width=24, slices=2)


def test_unpaired_mode_never_yields_paired_slices(subjects_dir, tmp_path):
    prepare_synthrad(subjects_dir, tmp_path / "u", height=16, slices=4, split=(0.7, 0.15, 0.15))
    data = MRCTDataset(tmp_path / "u", "train", unpaired=True, seed=3)
    mr_subjects, ct_subjects = data.subjects_by_domain["mr"], data.subjects_by_domain["ct"]
    assert mr_subjects and ct_subjects and not set(mr_subjects) & set(ct_subjects)
    seen_pairs, orders = set(), []
    for epoch in range(3):
        data.set_epoch(epoch)
        items = [data[i] for i in range(len(data))]
        orders.append([(it["mr_index"], it["ct_index"]) for it in items])
        for it in items:
            assert it["mr_subject"] != it["ct_subject"]
            assert it["mr_subject"] in mr_subjects and it["ct_subject"] in ct_subjects
            assert it["mr_index"] != it["ct_index"]
            seen_pairs.add((it["mr_index"], it["ct_index"]))
    assert orders[0] != orders[1]  # each stream reshuffled per epoch
    assert len(seen_pairs) > len(data)  # partners change between epochs
    paired = MRCTDataset(tmp_path / "u", "train")
    assert all(paired[i]["index"] == paired.slice_table["index"].iloc[i] for i in range(len(paired)))
    with pytest.raises(ValueError, match=">= 2 subjects"):
        MRCTDataset(tmp_path / "u", "val", unpaired=True)


def test_unpaired_mode_with_shared_subjects_draws_both_domains_from_every_subject(subjects_dir, tmp_path):
    """``subjects="shared"``: each stream holds every training slice once per epoch, in its own order."""
    prepare_synthrad(subjects_dir, tmp_path / "u", height=16, slices=4, split=(0.7, 0.15, 0.15))
    disjoint = MRCTDataset(tmp_path / "u", "train", unpaired=True, seed=3)
    data = MRCTDataset(tmp_path / "u", "train", unpaired=True, seed=3, subjects="shared")
    every = sorted(data.slice_table["index"])
    subjects = sorted(disjoint.subjects_by_domain["mr"] + disjoint.subjects_by_domain["ct"])
    assert sorted(data.subjects_by_domain["mr"]) == sorted(data.subjects_by_domain["ct"]) == subjects
    assert len(data) == len(every) > len(disjoint)
    for epoch in range(2):
        data.set_epoch(epoch)
        items = [data[i] for i in range(len(data))]
        assert sorted(it["mr_index"] for it in items) == sorted(it["ct_index"] for it in items) == every
        assert [it["mr_index"] for it in items] != [it["ct_index"] for it in items]  # two shuffles, not pairs
    assert len(MRCTDataset(tmp_path / "u", "val", unpaired=True, subjects="shared")) > 0  # one subject is enough
    with pytest.raises(ValueError, match="subjects must be one of"):
        MRCTDataset(tmp_path / "u", "train", unpaired=True, subjects="paired")
    with pytest.raises(ValueError, match="data.unpaired_subjects must be one of"):
        RunConfig.from_dict({"data": {"unpaired_subjects": "halves"}})


def test_bad_arguments_are_named(subjects_dir, tmp_path):
    with pytest.raises(ValueError, match="low_percentile < high_percentile"):
        prepare_synthrad(subjects_dir, tmp_path / "p", height=16, slices=2, low_percentile=99, high_percentile=1)


def test_ensure_mrct_slices_reuses_only_a_folder_prepared_alike(subjects_dir, tmp_path):
    from mudiff.demo import ensure_heads, ensure_mrct_slices

    assert ensure_heads(subjects_dir, 6, make=False) == subjects_dir  # SynthRAD data: used as it is
    with pytest.raises(FileNotFoundError, match="HEAD_DIR"):
        ensure_heads(tmp_path / "none", 6, make=False)
    out = ensure_mrct_slices(subjects_dir, tmp_path / "s", 16, 16, 2, split=(0.5, 0.25, 0.25))
    first = (out / "images_ct.npy").stat().st_mtime_ns
    assert ensure_mrct_slices(subjects_dir, out, 16, 16, 2, split=[0.5, 0.25, 0.25]) == out
    assert (out / "images_ct.npy").stat().st_mtime_ns == first  # reused, not prepared again
    with pytest.raises(ValueError, match=r"'slices': \(2, 4\)"):
        ensure_mrct_slices(subjects_dir, out, 16, 16, 4, split=(0.5, 0.25, 0.25))
    with pytest.raises(ValueError, match=r"'width': \(16, 24\)"):
        ensure_mrct_slices(subjects_dir, out, 16, 24, 2, split=(0.5, 0.25, 0.25))
