"""Zero-shot evaluation: histogram matching, translations of the test slices, the translation scores and the
judgement by a target-only segmenter with paired tests."""
from dataclasses import replace

import numpy as np
import pandas as pd
import pytest

from mudiff.evaluation.segmentation import TISSUE_CLASSES, load_split, train_segmenter, tumour_classes
from mudiff.experiments import zero_shot as zs
from mudiff.models.lmi import lmi
from mudiff.sample import Sampler

OVERRIDES = ["model.image_size=32", "model.base_channels=8", "model.channel_mult=[1, 2]", "model.ddpm_timesteps=50", "model.ddpm_sampling_steps=2",
             "model.zero_shot_sampling_steps=2", "train.max_steps=1", "train.batch_size=2"]


def test_histogram_match_takes_the_reference_quantiles_and_keeps_the_background():
    rng = np.random.default_rng(0)
    source = rng.random((2, 8, 8)).astype(np.float32)
    brain = np.zeros((2, 8, 8))
    brain[:, 2:6, 2:6] = 1
    reference = np.sort(rng.beta(5, 2, 1000))
    out = zs.histogram_match(1 - source, brain, reference)
    assert np.all(out[brain == 0] == 0)
    inside = out[0][brain[0] > 0]
    np.testing.assert_allclose([inside.min(), inside.max()], [reference[0], reference[-1]], rtol=1e-6)
    # monotone: the order of the (inverted) source is kept
    order = np.argsort((1 - source[0])[brain[0] > 0])
    assert np.all(np.diff(inside[order]) >= 0)


def test_paired_tests_pair_by_slice():
    scores = pd.DataFrame({"pair": "t2 -> t1", "class": "whole", "index": [0, 1, 2, 0, 1, 2],
                           "method": [zs.MIDIFFUSION] * 3 + [zs.RAW] * 3, "dice": [0.9, 0.8, np.nan, 0.5, 0.3, 0.1]})
    row = zs.paired_tests(scores, "dice").iloc[0]
    assert row["other"] == zs.RAW and row["n"] == 2 and row["mean_diff"] == pytest.approx(0.45)
    assert 0 < row["p_ttest"] < 1


def test_translations_scores_and_target_only_segmentation(tiny_slices, tmp_path):
    runs = zs.train_runs("configs/midiffusion_quick.yaml", tiny_slices, tmp_path, {"t1": "t2"}, ["midiffusion"],
                         OVERRIDES)
    sampler = Sampler.from_checkpoint(runs["midiffusion", "t1"], device="cpu")
    train = load_split(tiny_slices, "train")
    test = load_split(tiny_slices, "test", n=3)
    pairs = [("t2", "t1"), ("flair", "t1")]
    translations = zs.translate_pairs(test, pairs, {(zs.MIDIFFUSION, "t1"): sampler},
                                      {"t1": zs.reference_intensities(train, "t1")}, progress=False)
    assert list(translations) == ["t2 -> t1", "flair -> t1"]
    assert list(translations["t2 -> t1"]) == [zs.RAW, zs.HISTOGRAM, zs.INVERTED, zs.MIDIFFUSION]
    out = translations["t2 -> t1"][zs.MIDIFFUSION]
    assert out.shape == (3, 32, 32) and np.all(out[test.brain == 0] == 0)
    again = zs.translate(sampler, test.images[:, test.contrasts.index("t2")], test.index, "t2")
    np.testing.assert_allclose(again * test.brain, out, atol=1e-6)  # seeded by the slice index

    scores = zs.translation_scores(test, translations)
    assert len(scores) == 2 * 4 * 3 and scores["psnr_B"].notna().all()
    classes = zs.judge_classes(train)
    assert classes == tumour_classes(train.label) + TISSUE_CLASSES  # the phantom has a tissue map
    assert zs.judge_classes(replace(train, tissue=None)) == tumour_classes(train.label)
    segmenter = train_segmenter(zs.target_only(train, "t1"), channels=(8, 16), steps=2, batch_size=2,
                                progress=False, classes=classes)
    dice = zs.segmentation_scores({"t1": segmenter}, test, translations)
    assert set(dice["method"]) == {zs.REAL, zs.RAW, zs.HISTOGRAM, zs.INVERTED, zs.MIDIFFUSION}
    assert len(dice) == 2 * 5 * len(classes) * 3
    white = dice[dice["class"] == "white matter"]
    assert white["dice"].notna().all() and white["dice"].between(0, 1).all()  # every slice has white matter
    summary = zs.summary_table(dice, ["dice"])
    assert {"dice_mean", "dice_sd", "n"} <= set(summary)
    tests = zs.paired_tests(dice, "dice")
    assert set(tests["other"]) == {zs.REAL, zs.RAW, zs.HISTOGRAM, zs.INVERTED}
    assert set(tests["class"]) == set(segmenter.class_names)
    zs.plot_dice(summary, out=tmp_path / "dice.png")
    assert (tmp_path / "dice.png").is_file() and len(pd.read_csv(tmp_path / "dice.csv")) == len(summary)


def test_paired_upper_bound_is_supervised_from_its_source(tiny_slices, tmp_path):
    runs = zs.train_paired_runs("configs/midiffusion_quick.yaml", tiny_slices, tmp_path, [("t2", "t1")], OVERRIDES)
    sampler = Sampler.from_checkpoint(runs["t2", "t1"], device="cpu")
    assert (sampler.cfg.model.method, sampler.cfg.model.variant) == ("mudiff", "single")
    assert (sampler.target, sampler.sources, tuple(sampler.cfg.train.adam_betas)) == ("t1", ["t2"], (0.5, 0.9))
    train, test = load_split(tiny_slices, "train"), load_split(tiny_slices, "test", n=3)
    translations = zs.translate_pairs(test, [("t2", "t1"), ("flair", "t1")], {},
                                      {"t1": zs.reference_intensities(train, "t1")}, progress=False,
                                      paired={("t2", "t1"): sampler})
    assert zs.PAIRED in translations["t2 -> t1"] and zs.PAIRED not in translations["flair -> t1"]
    out = translations["t2 -> t1"][zs.PAIRED]
    assert out.shape == (3, 32, 32) and out.min() >= 0 and out.max() <= 1 and np.all(out[test.brain == 0] == 0)
    one_by_one = zs.translate(sampler, test.images[:, test.contrasts.index("t2")], test.index, "t2", batch_size=1)
    np.testing.assert_allclose(one_by_one * test.brain, out, atol=1e-5)  # seeded by the slice, not the batch
    with pytest.raises(ValueError, match="nor a paired run from 'flair'"):
        zs.translate(sampler, test.images[:, 0], test.index, "flair")


def test_errors(tiny_slices, tmp_path):
    test = load_split(tiny_slices, "test", n=2)
    segmenter = train_segmenter(test, channels=(8, 16), steps=1, batch_size=2, progress=False)  # all contrasts
    with pytest.raises(ValueError, match="only"):
        zs.segmentation_scores({"t1": segmenter}, test, {"t2 -> t1": {zs.RAW: test.images[:, 0]}})
    segmenter = train_segmenter(zs.target_only(test, "t1"), channels=(8, 16), steps=1, batch_size=2,
                                progress=False, classes=TISSUE_CLASSES)
    with pytest.raises(ValueError, match="need a tissue map"):  # data prepared without one
        zs.segmentation_scores({"t1": segmenter}, replace(test, tissue=None), {"t2 -> t1": {zs.RAW: test.images[:, 0]}})
    with pytest.raises(ValueError, match="not a zero-shot method"):
        zs.translate(type("S", (), {"method": object(), "sources": ["flair"], "cfg": type("C", (), {"model": type(
            "M", (), {"method": "ddpm"})})})(), test.images[:, 0], test.index, "t2")


def test_explorer_widgets_and_static_figure(tiny_slices, tmp_path, monkeypatch):
    from mudiff.display import explore

    runs = zs.train_runs("configs/midiffusion_quick.yaml", tiny_slices, tmp_path, {"t1": "t2"}, ["midiffusion"],
                         [*OVERRIDES, "model.lmi_normalized=false"])
    samplers = {(zs.MIDIFFUSION, "t1"): Sampler.from_checkpoint(runs["midiffusion", "t1"], device="cpu")}
    test = load_split(tiny_slices, "test", n=3)
    drawn, maps_drawn = [], []
    monkeypatch.setattr(explore, "show_figure", drawn.append)
    monkeypatch.setattr(zs, "lmi", lambda *args, **settings: maps_drawn.append(settings) or lmi(*args, **settings))
    box = zs.explorer(samplers, test, [("t2", "t1"), ("flair", "t1")], steps=2, interactive=True)
    (pair, _, _), (mode, seed), _ = box.children[0].children, box.children[1].children, box.children[2]
    assert len(drawn) == 1 and "t2 -> t1" in drawn[-1].get_suptitle() and "2 steps" in drawn[-1].get_suptitle()
    assert maps_drawn == 2 * [{"mode": "faithful", "patch": 3, "sigma": 2.0, "normalized": False}]  # the run's
    pair.value, seed.value = 1, 7
    assert len(drawn) == 3 and "flair -> t1" in drawn[-1].get_suptitle() and "seed 7" in drawn[-1].get_suptitle()
    mode.value = next(m for m in mode.options if m != mode.value)  # not the run's mode: said, not translated
    assert len(drawn) == 4 and "cannot translate" in drawn[-1].get_suptitle()
    zs.explorer(samplers, test, [("t2", "t1")], steps=2, interactive=False, out=tmp_path / "explorer.png")
    assert (tmp_path / "explorer.png").is_file()
