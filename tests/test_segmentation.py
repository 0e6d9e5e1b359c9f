"""Downstream segmentation: the Dice function, the data and classes, a few U-Net steps lower the loss, and the
table of real vs synthetic inputs."""
from dataclasses import replace

import numpy as np
import pytest

from mudiff.data.dataset import TaskDataset
from mudiff.data.prepare import load_manifest
from mudiff.evaluation import segmentation as seg
from mudiff.sample import Sampler

TINY = dict(channels=(4, 8), num_res_units=0, batch_size=4)


def test_dice():
    truth = np.zeros((2, 8, 8), bool)
    truth[0, 2:5, 2:5] = True
    assert seg.dice(truth, truth) == 1.0
    assert seg.dice(np.zeros_like(truth), truth) == 0.0
    assert np.isnan(seg.dice(np.zeros_like(truth), np.zeros_like(truth)))
    half = np.zeros_like(truth)
    half[0, 2:5, 2:4] = True  # 6 of the 9 pixels, nothing outside
    assert seg.dice(half, truth) == pytest.approx(2 * 6 / (6 + 9))
    with pytest.raises(ValueError, match="shapes"):
        seg.dice(truth[0], truth)


def test_data_and_classes(tiny_slices):
    train = seg.load_split(tiny_slices, "train")
    contrasts = load_manifest(tiny_slices)["contrasts"]
    assert train.contrasts == contrasts and train.images.shape[1] == len(contrasts)
    assert train.images.dtype == np.float32 and 0 <= train.images.min() and train.images.max() <= 1
    item = TaskDataset(tiny_slices, f"{contrasts[1]}_from_{contrasts[0]}", "train")[3]
    np.testing.assert_allclose(train.images[3, :2], (np.concatenate([item["target"], item["sources"]])[[1, 0]] + 1) / 2,
                               atol=1e-6)
    assert len(seg.load_split(tiny_slices, "test", n=3)) == 3
    assert [n for n, _ in seg.tumour_classes(np.array([0, 1, 2, 4]))] == [seg.WHOLE, "label 1", "label 2", "label 4"]
    assert seg.tumour_classes(np.array([0, 1])) == [(seg.WHOLE, (1,))]
    with pytest.raises(ValueError, match="no lesion"):
        seg.tumour_classes(np.zeros(4))
    targets = seg.class_targets(np.array([[0, 1, 4]]), [(seg.WHOLE, (1, 2, 4)), ("label 4", (4,))])
    assert targets.tolist() == [[[0, 1, 1], [0, 0, 1]]]
    # a test tumour with a label the training labels lacked (necrosis, 1) is still whole tumour
    whole = seg.class_targets(np.array([[0, 1, 2, 4]]), seg.tumour_classes(np.array([0, 2, 4]))[:1])
    assert whole.tolist() == [[[0, 1, 1, 1]]]


def test_tissue_classes_take_the_tissue_map(tiny_slices):
    train = seg.load_split(tiny_slices, "train")
    assert train.tissue.shape == train.label.shape and set(np.unique(train.tissue)) == {0, 1, 2, 3}
    assert not train.tissue[train.label > 0].any()  # the phantom's tissue map is 0 in the lesion
    classes = seg.tumour_classes(train.label) + seg.TISSUE_CLASSES
    targets = seg.class_targets(train.label, classes, train.tissue)
    for k, (name, values) in enumerate(classes):
        source = train.tissue if (name, values) in seg.TISSUE_CLASSES else train.label
        np.testing.assert_array_equal(targets[:, k], np.isin(source, values))
    label = np.array([[0, 1, 2]])
    with pytest.raises(ValueError, match=r"tissue classes \['CSF', 'grey matter', 'white matter'\] need a tissue map"):
        seg.class_targets(label, seg.TISSUE_CLASSES)
    with pytest.raises(ValueError, match="need a tissue map"):
        seg.train_segmenter(replace(train, tissue=None), steps=1, progress=False, classes=classes, **TINY)
    model = seg.train_segmenter(train, steps=3, seed=0, progress=False, classes=classes, **TINY)
    assert model.classes == classes and np.isfinite(model.losses).all()
    test = seg.load_split(tiny_slices, "test")
    assert model.predict(test).shape == (len(test), len(classes), 32, 32)


def test_a_few_steps_lower_the_loss_and_are_seeded(tiny_slices):
    train = seg.load_split(tiny_slices, "train")
    model = seg.train_segmenter(train, steps=40, lr=3e-3, seed=0, progress=False, **TINY)
    assert len(model.losses) == 40 and np.isfinite(model.losses).all()
    assert np.mean(model.losses[-8:]) < np.mean(model.losses[:8]) - 0.05
    a = seg.train_segmenter(train, steps=3, seed=1, progress=False, **TINY)
    b = seg.train_segmenter(train, steps=3, seed=1, progress=False, **TINY)
    assert a.losses == b.losses
    pred = model.predict(seg.load_split(tiny_slices, "test"))
    assert pred.dtype == bool and pred.shape[1] == len(model.classes)


@pytest.fixture(scope="module")
def trained(tiny_slices):
    return seg.train_segmenter(seg.load_split(tiny_slices, "train"), steps=5, seed=0, progress=False, **TINY)


def test_replacement_table_has_the_expected_rows(trained, tiny_slices, tmp_path):
    test = seg.load_split(tiny_slices, "test")
    real = {c: test.images[:, test.contrasts.index(c)] for c in ("t1ce", "flair")}
    noise = np.random.default_rng(0).random(real["t1ce"].shape).astype(np.float32)
    synthetic = {"copy": {"t1ce": real["t1ce"]}, "two": {"t1ce": noise, "flair": real["flair"]}}
    result = seg.segmentation_dice(trained, test, synthetic)
    expected = ["all real", "copy: t1ce synthetic", "two: t1ce synthetic", "two: flair synthetic",
                "two: t1ce+flair synthetic", "zeros: t1ce missing", "zeros: flair missing", "zeros: t1ce+flair missing"]
    classes = trained.class_names
    summary = result.summary
    assert list(dict.fromkeys(summary["scenario"])) == expected
    assert len(summary) == len(expected) * len(classes)
    assert list(summary["class"][: len(classes)]) == classes
    assert summary.groupby("scenario")["n_replaced"].first()["two: t1ce+flair synthetic"] == 2
    same = summary[summary["scenario"] == "copy: t1ce synthetic"]
    assert np.allclose(same["change_vs_real"].fillna(0), 0), "replacing a contrast by itself changes nothing"
    assert len(result.subjects) == len(expected) * len(classes) * len(set(test.subjects))
    seg.plot_segmentation_dice(result, test, out=tmp_path / "dice.png")
    assert (tmp_path / "dice.png").is_file() and (tmp_path / "dice.csv").is_file()


def test_synthetic_contrast_is_aligned_with_the_slices(tiny_run, tiny_slices):
    sampler = Sampler.from_checkpoint(tiny_run, device="cpu")
    test = seg.load_split(tiny_slices, "test", n=3)
    synthetic = seg.synthesise_for(sampler, test, seed=0, batch_size=2)
    dataset = TaskDataset(tiny_slices, sampler.cfg.data.task, "test")
    positions = [int(np.flatnonzero(dataset.slice_table["index"] == i)[0]) for i in test.index]
    reference = sampler.synthesise_dataset(dataset, positions, seed=0, batch_size=3, progress=False).mutual
    assert list(synthetic) == ["t1ce"]
    np.testing.assert_allclose(synthetic["t1ce"], reference, atol=1e-5)
