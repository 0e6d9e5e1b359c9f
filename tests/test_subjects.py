"""Subject discovery for every naming scheme and validation of good and broken NIfTI files."""
import gzip

import nibabel as nib
import numpy as np
import pytest

from mudiff.data.subjects import DataError, find_subject, find_subjects, load_subject

SHAPE = (8, 7, 6)
LPS = np.diag([-2.0, -2.0, 2.0, 1.0])  # BraTS-like orientation, 2 mm voxels


def save(path, data, affine=LPS):
    path.parent.mkdir(parents=True, exist_ok=True)
    nib.save(nib.Nifti1Image(np.asarray(data), affine), path)
    return path


def volume(seed=0, shape=SHAPE):
    return np.random.default_rng(seed).uniform(1, 100, shape).astype(np.float32)


def label_map():
    return np.broadcast_to((np.arange(SHAPE[0]) % 3).astype(np.uint8)[:, None, None], SHAPE).copy()


def brats(root, sid, contrasts=("t1", "t1ce", "t2", "flair"), ext=".nii.gz", sep="_", **special):
    """A BraTS-layout subject with a label; ``special[c]`` replaces file c: an array, an image or raw bytes."""
    folder = root / sid
    folder.mkdir(parents=True, exist_ok=True)
    for i, c in enumerate([*contrasts, "seg"]):
        data = special.get(c, label_map() if c == "seg" else volume(i))
        path = folder / f"{sid}{sep}{c}{ext}"
        if isinstance(data, bytes):
            path.write_bytes(data)
        elif isinstance(data, nib.Nifti1Image):
            nib.save(data, path)
        else:
            save(path, data)
    return folder


def test_brats_layouts_nested_and_sorted(tmp_path):
    brats(tmp_path / "HGG", "BraTS19_10")
    brats(tmp_path / "LGG", "BraTS19_2", ext=".nii")
    brats(tmp_path, "Phantom_3", contrasts=("t1", "dwi", "t2", "flair"))
    (tmp_path / ".partial" / "x").mkdir(parents=True)
    subjects = find_subjects(tmp_path)
    assert [s.id for s in subjects] == ["BraTS19_2", "BraTS19_10", "Phantom_3"]  # natural order
    assert all(s.dataset == "brats" for s in subjects)
    assert set(subjects[0].images) == {"t1", "t1ce", "t2", "flair"}
    assert subjects[0].label.name == "BraTS19_2_seg.nii"
    assert set(subjects[2].images) == {"t1", "dwi", "t2", "flair"}


def test_brats2023_names_map_to_canonical_contrasts(tmp_path):
    brats(tmp_path, "BraTS-GLI-00001-000", contrasts=("t1n", "t1c", "t2w", "t2f"), sep="-")
    (subject,) = find_subjects(tmp_path)
    assert subject.dataset == "brats2023" and subject.id == "BraTS-GLI-00001-000"
    assert {c: p.name.split("-")[-1] for c, p in subject.images.items()} == {
        "t1": "t1n.nii.gz", "t1ce": "t1c.nii.gz", "t2": "t2w.nii.gz", "flair": "t2f.nii.gz"}
    assert load_subject(subject).images["t1ce"].dtype == np.float32


def test_isles2015_layout(tmp_path):
    case = tmp_path / "SISS2015_Training" / "7"
    for i, key in enumerate(["MR_T1", "MR_T2", "MR_DWI", "MR_Flair"]):
        save(case / f"VSD.Brain.XX.O.{key}.7061{i}" / f"VSD.Brain.XX.O.{key}.7061{i}.nii", volume(i))
    save(case / "VSD.Brain.XX.O.OT.70618" / "VSD.Brain.XX.O.OT.70618.nii", np.ones(SHAPE, np.uint8))
    (subject,) = find_subjects(tmp_path, dataset="isles2015")
    assert subject.id == "7" and subject.dataset == "isles2015"
    assert sorted(subject.images) == ["dwi", "flair", "t1", "t2"]
    assert subject.label.parent.name.startswith("VSD.Brain.XX.O.OT")
    assert find_subject(case).id == "7"
    with pytest.raises(DataError, match="no brats subject found.*isles2015"):
        find_subjects(tmp_path, dataset="brats")


def test_find_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="does not exist"):
        find_subjects(tmp_path / "nowhere")
    (tmp_path / "notes.txt").write_text("x")
    with pytest.raises(DataError, match="no subject found"):
        find_subjects(tmp_path)
    folder = brats(tmp_path, "S1")
    save(folder / "S1_t1.nii", volume())
    with pytest.raises(DataError, match="two files for 't1'"):
        find_subjects(tmp_path)
    with pytest.raises(ValueError, match="dataset must be"):
        find_subjects(tmp_path, dataset="brats2015")


def test_load_reorients_to_ras_and_keeps_world_coordinates(tmp_path):
    brats(tmp_path, "S1")
    loaded = load_subject(find_subjects(tmp_path)[0], ["t2", "t1"])
    raw = nib.load(tmp_path / "S1" / "S1_t2.nii.gz")
    assert list(loaded.images) == ["t2", "t1"] and loaded.orientation == "LPS"
    assert "".join(nib.aff2axcodes(loaded.affine)) == "RAS"
    np.testing.assert_array_equal(loaded.images["t2"], raw.get_fdata(dtype=np.float32)[::-1, ::-1, :])
    # the voxel (i, j, k) of the new array is the same point in the scanner as before
    i, j, k = 1, 2, 3
    old = raw.affine @ [SHAPE[0] - 1 - i, SHAPE[1] - 1 - j, k, 1]
    np.testing.assert_allclose(loaded.affine @ [i, j, k, 1], old)
    assert loaded.label.dtype == np.uint8 and loaded.label.shape == SHAPE
    assert loaded.voxel_size == (2.0, 2.0, 2.0)


def test_4d_singleton_is_accepted(tmp_path):
    brats(tmp_path, "S1", t1=volume()[..., None])
    assert load_subject(find_subjects(tmp_path)[0]).images["t1"].shape == SHAPE


GZ = gzip.compress(nib.Nifti1Image(volume(), LPS).to_bytes())
GZ_FLIPPED = GZ[:500] + bytes(20) + GZ[520:]  # nibabel alone would read this without noticing


BAD = {  # name: (subject files, the words the message must contain besides the file name)
    "missing contrast": (dict(), "missing contrast.*flair.*it has"),
    "shape mismatch": (dict(t2=volume(1, (8, 7, 5))), r"shape \(8, 7, 5\) differs"),
    "affine mismatch": (dict(t2=nib.Nifti1Image(volume(2), LPS + np.diag([0, 0, 0.1, 0]))), "affine differs"),
    "nan": (dict(t2=np.where(np.arange(336).reshape(SHAPE) < 3, np.nan, volume())), "3 non-finite voxel"),
    "inf": (dict(t2=np.where(np.arange(336).reshape(SHAPE) == 5, np.inf, volume())), "1 non-finite voxel"),
    "empty": (dict(t2=np.zeros(SHAPE, np.float32)), "empty volume"),
    "constant": (dict(t2=np.full(SHAPE, 7.0, np.float32)), "constant volume.*7"),
    "truncated header": (dict(t2=GZ[:300]), "cannot read.*truncated or corrupt"),
    "truncated data": (dict(t2=GZ[:-40]), "cannot read.*EOFError"),
    "corrupt gzip stream": (dict(t2=GZ_FLIPPED), "cannot read.*CRC check failed"),
    "garbage": (dict(t2=b"this is not a nifti file" * 20), "cannot read"),
    "garbage short": (dict(t2=b"nonsense"), "cannot read"),
    "2D": (dict(t2=volume()[:, :, 0]), "expected a 3D volume"),
    "4D": (dict(t2=np.stack([volume(), volume(1)], -1)), "expected a 3D volume"),
    "label shape": (dict(seg=np.zeros((8, 7, 4), np.uint8)), "shape .* differs"),
    "label values": (dict(seg=np.full(SHAPE, 1.5, np.float32)), "integers 0..255"),
    "RGB voxels": (dict(t2=nib.Nifti1Image(np.zeros(SHAPE, [("R", "u1"), ("G", "u1"), ("B", "u1")]), LPS)),
                   "cannot read"),
}


@pytest.mark.parametrize("case", BAD)
def test_bad_inputs_raise_data_error_naming_file_and_problem(tmp_path, case):
    special, words = BAD[case]
    contrasts = ("t1", "t1ce", "t2") if case == "missing contrast" else ("t1", "t1ce", "t2", "flair")
    folder = brats(tmp_path, "S1", contrasts, **special)
    culprit = "S1" if case == "missing contrast" else ("S1_seg" if case.startswith("label") else "S1_t2")
    with pytest.raises(DataError, match=words) as info:
        load_subject(find_subjects(tmp_path)[0], ["t1", "t1ce", "t2", "flair"])
    assert culprit in str(info.value) and str(folder) in str(info.value)


def test_a_contrast_asked_for_twice_is_named(tmp_path):
    brats(tmp_path, "S1")
    with pytest.raises(ValueError, match="name a contrast twice"):
        load_subject(find_subjects(tmp_path)[0], ["t1", "t1"])


def test_truncated_uncompressed_nii(tmp_path):
    folder = brats(tmp_path, "S1", ext=".nii")
    (folder / "S1_flair.nii").write_bytes(nib.Nifti1Image(volume(), LPS).to_bytes()[:-100])
    with pytest.raises(DataError, match="S1_flair.nii: cannot read.*Expected 1344 bytes"):
        load_subject(find_subjects(tmp_path)[0])
