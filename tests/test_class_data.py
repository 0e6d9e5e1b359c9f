"""Labelled 2D data for class-conditioned generation: the new phantom tumour kinds, the phantom class slices, the
folder-per-class loader and its error cases, the BraTS slice export."""
import json

import numpy as np
import pytest
from PIL import Image
from scipy import ndimage as ndi

from mudiff.data.labelled import (LabelledSliceDataset, LabelledSlices, brats_slices, load_labelled,
                                  phantom_class_slices, prepare_image_folder, read_image_folder, write_labelled)
from mudiff.data.phantom import generate_dataset, generate_subject
from mudiff.data.prepare import DatasetExistsError
from mudiff.data.subjects import DataError


@pytest.fixture(scope="module")
def subjects():
    return {kind: generate_subject(0, 3, kind, resolution=2.0) for kind in ("meningioma", "metastases")}


def _ratio(subject, contrast, mask):
    wm = subject.tissue["wm"] > 0.9
    return subject.images[contrast][mask].mean() / subject.images[contrast][wm].mean()


def test_meningioma_is_dural_based_homogeneous_enhancing_with_little_oedema(subjects):
    s = subjects["meningioma"]
    enhancing, oedema = s.seg == 4, s.seg == 2
    assert not (s.seg == 1).any(), "a meningioma has no necrotic core"
    brain = s.images["t1"] > 0
    depth = ndi.distance_transform_edt(brain) * 2.0  # mm to the brain surface
    assert depth[enhancing].min() <= 2.0, "the tumour must touch the brain surface (extra-axial)"
    assert np.median(depth[enhancing]) < 12.0
    assert oedema.sum() < enhancing.sum(), "little oedema"
    assert _ratio(s, "t1ce", enhancing) > 1.5 * _ratio(s, "t1", enhancing), "strong enhancement"
    values = s.images["t1ce"][enhancing & (depth > 2)]
    assert values.std() / values.mean() < 0.35, "homogeneous enhancement"


def test_metastases_are_several_ring_enhancing_lesions_with_oedema(subjects):
    s = subjects["metastases"]
    _, n_lesions = ndi.label(ndi.binary_dilation((s.seg == 4) | (s.seg == 1)))
    assert n_lesions >= 2
    assert (s.seg == 1).any() and (s.seg == 4).any()
    assert (s.seg == 2).sum() > (s.seg == 4).sum(), "oedema larger than the small lesions"
    assert _ratio(s, "t1ce", s.seg == 4) > _ratio(s, "t1", s.seg == 4)
    assert _ratio(s, "flair", s.seg == 2) > 1.2


def test_new_kinds_in_the_dataset_writer(tmp_path):
    (folder,) = generate_dataset(tmp_path, 1, seed=2, kind="meningioma", resolution=2.0, workers=1)
    record = json.loads((tmp_path / "phantom.json").read_text())
    assert record["label_values"] == {"enhancing": 4, "oedema": 2}
    assert (folder / f"{folder.name}_t1ce.nii.gz").is_file()


@pytest.fixture(scope="module")
def phantom_root(tmp_path_factory):
    root = tmp_path_factory.mktemp("classes")
    counts = {"healthy": 4, "glioma": 3, "meningioma": 3, "metastases": 3}
    return phantom_class_slices(root / "slices", counts, size=32, contrasts=("t1ce", "flair"), slices_per_subject=2,
                                split=(0.4, 0.3, 0.3), seed=1)


def test_phantom_class_slices_layout_counts_and_ranges(phantom_root):
    manifest = json.loads((phantom_root / "manifest.json").read_text())
    assert manifest["classes"] == ["healthy", "glioma", "meningioma", "metastases"]
    assert manifest["channels"] == 2 and manifest["image_size"] == [32, 32]
    origins = {}
    for split in ("train", "val", "test"):
        data = load_labelled(phantom_root, split)
        assert data.images.shape[1:] == (2, 32, 32)
        assert data.images.min() >= -1 and data.images.max() <= 1 and data.images.max() > 0.5
        assert all(n > 0 for n in data.counts().values())
        assert data.counts() == manifest["counts"][split]
        origins[split] = {o.split(":")[0] for o in data.origins}
    assert not origins["train"] & origins["test"] and not origins["train"] & origins["val"], "split by subject"
    ds = LabelledSliceDataset(phantom_root, "train")
    item = ds[0]
    assert item["image"].shape == (2, 32, 32) and item["label"].dtype.is_floating_point is False
    assert ds.image_size == 32 and ds.channels == 2


def test_phantom_classes_look_different(phantom_root):
    """Glioma and meningioma slices hold enhancing tissue far brighter on T1CE than the slice's median brain."""
    ratios = {}
    for split in ("train", "val", "test"):
        data = load_labelled(phantom_root, split)
        for image, label in zip((data.images[:, 0] + 1) / 2, data.labels):
            brain = image[image > 0.05]
            ratios.setdefault(data.classes[label], []).append(np.quantile(brain, 0.995) / np.median(brain))
    healthy = np.mean(ratios["healthy"])
    assert np.mean(ratios["glioma"]) > healthy and np.mean(ratios["meningioma"]) > 1.3 * healthy


def test_phantom_class_slices_bad_arguments(tmp_path):
    with pytest.raises(ValueError, match="unknown phantom class"):
        phantom_class_slices(tmp_path / "a", {"pituitary": 3})
    with pytest.raises(ValueError, match="at least 3 subjects"):
        phantom_class_slices(tmp_path / "b", {"healthy": 2, "glioma": 3})
    with pytest.raises(ValueError, match="unknown contrast"):
        phantom_class_slices(tmp_path / "c", {"healthy": 3}, contrasts=("dwi",))


def _write_png(path, array):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.asarray(array, np.uint8)).save(path)


@pytest.fixture
def folder_set(tmp_path):
    rng = np.random.default_rng(0)
    root = tmp_path / "set"
    for name, level in (("no", 40), ("yes", 200)):
        for k in range(6):
            _write_png(root / name / f"img{k}.png", np.clip(rng.normal(level, 10, (20, 20)), 0, 255))
    return root


def test_image_folder_reads_classes_and_values(folder_set):
    data = read_image_folder(folder_set)
    assert data.classes == ("no", "yes") and data.images.shape == (12, 1, 20, 20)
    assert data.images[data.labels == 1].mean() > 0.3 > data.images[data.labels == 0].mean()
    resized = read_image_folder(folder_set, size=8, channels=3)
    assert resized.images.shape == (12, 3, 8, 8)


def test_image_folder_errors(folder_set, tmp_path):
    (folder_set / "empty").mkdir()
    with pytest.raises(DataError, match="holds no image"):
        read_image_folder(folder_set)
    (folder_set / "empty").rmdir()
    (folder_set / "no" / "broken.png").write_bytes(b"not a png")
    with pytest.raises(DataError, match="cannot read image .*broken.png"):
        read_image_folder(folder_set)
    (folder_set / "no" / "broken.png").unlink()
    _write_png(folder_set / "yes" / "big.png", np.zeros((30, 24)))
    with pytest.raises(DataError, match="different sizes"):
        read_image_folder(folder_set)
    assert read_image_folder(folder_set, size=16).images.shape == (13, 1, 16, 16)
    with pytest.raises(DataError, match="missing"):
        read_image_folder(folder_set, classes=("no", "maybe"))
    with pytest.raises(DataError, match="no class folder"):
        read_image_folder(tmp_path / "set" / "no")


def test_prepare_image_folder_with_and_without_splits(folder_set, tmp_path):
    out = prepare_image_folder(folder_set, tmp_path / "flat", size=16, split=(0.5, 0.25, 0.25))
    sizes = {s: len(load_labelled(out, s)) for s in ("train", "val", "test")}
    assert sum(sizes.values()) == 12 and all(v > 0 for v in sizes.values())
    images = sorted(folder_set.rglob("*.png"))
    with pytest.raises(DatasetExistsError, match="would replace the raw data"):  # the images' own folder
        prepare_image_folder(folder_set, folder_set, size=16, overwrite=True)
    assert sorted(folder_set.rglob("*.png")) == images
    prepare_image_folder(folder_set, out, size=16, split=(0.5, 0.25, 0.25), seed=1, overwrite=True)  # a dataset
    # Kaggle-style Training/Testing folders; the test split lacks a class -> a clear error
    split_root = tmp_path / "kaggle"
    for split in ("Training", "Testing"):
        for name in ("no", "yes"):
            for k in range(4):
                _write_png(split_root / split / name / f"{k}.png", np.full((10, 10), 100 if name == "yes" else 10))
    out = prepare_image_folder(split_root, tmp_path / "kaggle_out", size=16)
    assert len(load_labelled(out, "test")) == 8 and len(load_labelled(out, "val")) > 0
    for f in (split_root / "Testing" / "yes").iterdir():
        f.unlink()
    (split_root / "Testing" / "yes").rmdir()
    with pytest.raises(DataError, match=r"missing under .*Testing"):
        prepare_image_folder(split_root, tmp_path / "kaggle_bad", size=16)
    # the training split lacks a class the test split has -> a clear error, not a silently dropped class
    (split_root / "Training" / "yes").rename(split_root / "Testing" / "yes")
    with pytest.raises(DataError, match=r"\['yes'\] in .*Testing but not in .*Training"):
        prepare_image_folder(split_root, tmp_path / "kaggle_bad2", size=16)


def test_a_class_missing_from_a_split_is_an_error(tmp_path):
    images = np.zeros((4, 1, 8, 8), np.float32)
    full = LabelledSlices(images, [0, 1, 0, 1], ("a", "b"), ["1", "2", "3", "4"])
    lacking = LabelledSlices(images[:2], [0, 0], ("a", "b"), ["5", "6"])
    with pytest.raises(ValueError, match=r"\['b'\] missing from the test split"):
        write_labelled(tmp_path / "x", {"train": full, "val": full, "test": lacking}, {})
    with pytest.raises(ValueError, match=r"in \[-1, 1\]"):
        LabelledSlices(images + 2, [0, 1, 0, 1], ("a", "b"), ["1", "2", "3", "4"])


def test_brats_slice_export(tmp_path):
    data_dir = tmp_path / "brats"
    generate_dataset(data_dir, 3, seed=5, kind="tumour", resolution=2.0, workers=1)
    out = brats_slices(data_dir, tmp_path / "brats_slices", size=32, slices_per_subject=2, split=(0.34, 0.33, 0.33))
    for split in ("train", "val", "test"):
        data = load_labelled(out, split)
        assert data.classes == ("no_tumour", "tumour") and data.counts() == {"no_tumour": 2, "tumour": 2}
