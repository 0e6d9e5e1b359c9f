"""The head phantom with CT: HU per tissue, bone only in the skull, air outside, T1 and CT orderings,
determinism, the SynthRAD + BraTS layout on disk."""
import nibabel as nib
import numpy as np
import pytest

from mudiff.data.head_phantom import (HEAD_LABELS, HU_RANGES, HeadParams, generate_head_dataset,
                                      generate_head_subject)

SEED = 5


@pytest.fixture(scope="module")
def head():
    return generate_head_subject(0, SEED, "tumour", resolution=2.0)


def mixed_hu(s):
    return sum(f * s.meta["hu"][k] for k, f in s.fractions.items())


def test_fractions_sum_to_one_and_hu_drawn_in_range(head):
    total = sum(head.fractions.values())
    np.testing.assert_allclose(total, 1.0, atol=1e-4)
    for tissue, value in head.meta["hu"].items():
        low, high = HU_RANGES[tissue]
        assert low <= value <= high, tissue
    assert {"cortical_bone", "diploe", "muscle", "fat", "air", "sinus", "csf", "gm", "wm"} <= set(head.fractions)


def test_ct_is_the_fraction_mix_plus_noise_and_cupping(head):
    residual = head.ct - mixed_hu(head)
    bound = head.meta["cupping_hu"] + 6 * head.meta["ct_noise_hu"]
    assert np.abs(residual).max() < bound
    assert abs(float(residual[head.body == 0].mean())) < 1.0  # no cupping outside the body


def test_hu_of_each_tissue_inside_its_label(head):
    margin = head.meta["cupping_hu"] + 3
    checked = 0
    for tissue in ("air", "csf", "gm", "wm", "fat", "muscle"):
        pure = head.fractions[tissue] > 0.97
        if pure.sum() < 20:
            continue
        low, high = HU_RANGES[tissue]
        assert low - margin <= np.median(head.ct[pure]) <= high + margin, tissue
        checked += 1
    assert checked >= 4
    for tissue in ("cortical_bone", "diploe"):  # thin layers: partial volume everywhere at 2 mm
        assert np.median(head.ct[head.labels == HEAD_LABELS[tissue]]) > 300, tissue


def test_bone_only_where_the_skull_is(head):
    bone = head.fractions["cortical_bone"] + head.fractions["diploe"]
    brain = sum(head.fractions[k] for k in ("gm", "wm", "necrosis", "enhancing", "oedema"))
    assert bone.max() > 0.9
    assert np.all(bone[brain > 0.01] == 0)
    dense = head.ct > 250
    assert dense.sum() > 1000 and np.all(bone[dense] > 0.15)


def test_air_outside_the_body(head):
    outside = head.body == 0
    assert outside.sum() > 0.3 * outside.size
    clear = outside & (head.fractions["air"] > 0.999)  # away from the skin's partial volume
    assert clear.sum() > 0.75 * outside.sum()
    assert np.all(np.abs(head.ct[clear] + 1000) < 6 * head.meta["ct_noise_hu"])
    assert np.median(head.ct[outside]) == pytest.approx(-1000, abs=2)
    t1 = head.images["t1"]
    assert np.median(t1[outside]) < 0.1 * np.median(t1[head.labels == HEAD_LABELS["wm"]])


def test_t1_and_ct_orderings(head):
    t1 = {k: np.median(head.images["t1"][head.labels == v]) for k, v in HEAD_LABELS.items()
          if (head.labels == v).sum() > 50}
    assert t1["fat"] > t1["wm"] > t1["gm"] > t1["csf"] > t1["air"]  # fat bright, CSF dark
    assert t1["diploe"] > t1["wm"]  # fatty marrow bright
    assert t1["cortical_bone"] < t1["wm"]  # cortical bone dark
    flair = {k: np.median(head.images["flair"][head.labels == v]) for k, v in HEAD_LABELS.items()
             if (head.labels == v).sum() > 50}
    assert flair["csf"] < flair["wm"] < flair["fat"]  # CSF nulled, fat is not
    pure = {k: np.median(head.ct[head.fractions[k] > 0.97]) for k in ("air", "csf", "wm", "gm")}
    assert pure["air"] < pure["csf"] < pure["wm"] < pure["gm"]
    hu = head.meta["hu"]
    assert hu["air"] < hu["fat"] < hu["csf"] < hu["diploe"] < hu["cortical_bone"]


def test_deterministic_per_seed_and_brain_twin(head):
    again = generate_head_subject(0, SEED, "tumour", resolution=2.0)
    np.testing.assert_array_equal(again.ct, head.ct)
    np.testing.assert_array_equal(again.images["t1"], head.images["t1"])
    other = generate_head_subject(1, SEED, "healthy", resolution=2.0, head=HeadParams(sinus_probability=0.0))
    assert not np.array_equal(other.ct, head.ct)
    assert other.meta["sinus"] is None


def test_misregistration_moves_only_the_ct():
    aligned = generate_head_subject(2, SEED, "healthy", resolution=2.0)
    moved = generate_head_subject(2, SEED, "healthy", resolution=2.0,
                                  head=HeadParams(misregistration_deg=2.0, misregistration_mm=2.0))
    np.testing.assert_array_equal(moved.images["t1"], aligned.images["t1"])
    assert np.abs(moved.ct - aligned.ct).mean() > 5
    assert set(moved.meta["misregistration"]) == {"rotation_deg", "shift_mm"}


def test_written_layout(tmp_path):
    [folder] = generate_head_dataset(tmp_path, 1, seed=SEED, kind="healthy", resolution=2.0)
    names = sorted(p.name for p in folder.iterdir())
    sid = folder.name
    assert names == sorted(["mr.nii.gz", "ct.nii.gz", "mask.nii.gz", "labels.nii.gz", f"{sid}_seg.nii.gz"]
                           + [f"{sid}_{c}.nii.gz" for c in ("t1", "t1ce", "t2", "flair")])
    ct, mr = nib.load(folder / "ct.nii.gz"), nib.load(folder / "mr.nii.gz")
    np.testing.assert_array_equal(ct.affine, mr.affine)
    np.testing.assert_array_equal(mr.get_fdata(), nib.load(folder / f"{sid}_t1.nii.gz").get_fdata())
    assert ct.get_fdata().min() < -900 and ct.get_fdata().max() > 1000
    with pytest.raises(FileExistsError):
        generate_head_dataset(tmp_path, 1, seed=SEED, kind="healthy", resolution=2.0)


@pytest.mark.parametrize("kwargs, match", [
    (dict(mr_contrast="dwi"), "mr_contrast"),
    (dict(head=HeadParams(sinus_probability=2.0)), "sinus_probability"),
    (dict(head=HeadParams(thickness_mm={"csf": (1.0, 2.0)})), "lacks layer"),
    (dict(kind="ghost"), "kind"),
])
def test_bad_input(tmp_path, kwargs, match):
    with pytest.raises(ValueError, match=match):
        generate_head_dataset(tmp_path, 1, **kwargs)
