"""Zero-shot evaluation: histogram matching, translations of the test slices, the translation scores and the
judgement by a target-only segmenter with paired tests."""
import json
import shutil
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


def _frames(wm_gain: float) -> tuple[pd.DataFrame, pd.DataFrame]:
    """translation_scores- and segmentation_scores-like frames of one pair: 3 subjects x 2 slices, MIDiffusion's
    white-matter Dice and PSNR ``wm_gain`` above the raw source's, its MAE 0.1 lower, the other classes level."""
    pair, rows, dice = "t2 -> t1", [], []
    for s in range(3):
        for k in range(2):
            index, base = 2 * s + k, 0.3 + 0.1 * s + 0.01 * k
            for method, gain in ((zs.MIDIFFUSION, wm_gain), (zs.RAW, 0.0)):
                rows.append({"pair": pair, "method": method, "subject": f"s{s}", "index": index,
                             "psnr_B": 10 + gain, "ssim_B": 0.5, "mae_B": 0.3 - 0.1 * (method == zs.MIDIFFUSION)})
                dice += [{"pair": pair, "method": method, "class": "white matter", "subject": f"s{s}",
                          "index": index, "dice": base + gain},
                         {"pair": pair, "method": method, "class": "grey matter", "subject": f"s{s}",
                          "index": index, "dice": base},
                         {"pair": pair, "method": method, "class": "CSF", "subject": f"s{s}", "index": index,
                          "dice": np.nan if k else base}]  # no CSF in the truth nor the prediction on slice 1
            dice += [{"pair": pair, "method": zs.REAL, "class": c, "subject": f"s{s}", "index": index, "dice": 0.8}
                     for c in ("white matter", "grey matter", "CSF")]
    return pd.DataFrame(rows), pd.DataFrame(dice)


def test_evidence_claims_read_the_long_scores():
    from mudiff.evaluation.stats import Claim, claims_table

    long = pd.concat([zs.long_scores(*_frames(wm_gain=0.05 + 0.01 * seed), seed) for seed in range(3)])
    assert {"run", "output", "seed", "subject", "dice_white_matter", "dice_CSF", "psnr_B", "mae_B"} <= set(long)
    assert len(long) == 3 * 3 * 6  # seeds x inputs (the real target too) x slices
    real = long[long["run"] == zs.REAL]
    assert real["psnr_B"].isna().all() and (real["dice_white_matter"] == 0.8).all()  # Dice only
    claims = zs.evidence_claims([("t2", "t1")])
    assert [c.text for c in claims] == [f"MIDiffusion beats {o} on t2 -> t1" for o in (zs.RAW, zs.HISTOGRAM, zs.SDEDIT)]
    versus = zs.evidence_claims([("t2", "t1"), ("t1", "t2")], a="A", others=("B",))
    assert [(c.a, c.b) for c in versus] == [(("A", "t2 -> t1"), ("B", "t2 -> t1")),
                                            (("A", "t1 -> t2"), ("B", "t1 -> t2"))]
    table = claims_table(long, claims).set_index(["claim", "metric"])
    row = table.loc["MIDiffusion beats raw source on t2 -> t1"]
    assert row.loc["dice_white_matter", "effect"] == pytest.approx(0.06)  # seeds pooled per subject
    assert row.loc["dice_white_matter", "verdict"] == "reproduced" and row.loc["dice_white_matter", "n_subjects"] == 3
    assert row.loc["psnr_B", "effect"] == pytest.approx(0.06) and row.loc["dice_grey_matter", "effect"] == 0
    assert row.loc["dice_CSF", "effect"] == pytest.approx(0.0)  # slice 1's NaN left out, not counted as 0
    assert table.loc[("MIDiffusion beats SDEdit on t2 -> t1", "psnr_B"), "verdict"] == "not run"
    mae = claims_table(long, [Claim("lower MAE", (zs.MIDIFFUSION, "t2 -> t1"), (zs.RAW, "t2 -> t1"), ("mae_B",))])
    assert mae["effect"].iloc[0] == pytest.approx(0.1)  # lower wins: the MAE column is carried and oriented
    worse = claims_table(zs.long_scores(*_frames(wm_gain=-0.05), 0), claims[:1]).set_index("metric")
    assert worse.loc["dice_white_matter", "effect"] == pytest.approx(-0.05)


def test_seed_evidence_scores_a_seed_and_reads_it_back_while_nothing_changed(tiny_slices, tmp_path, monkeypatch):
    """Scores are read back for the same judges; new judges score the kept translations (bit for bit the same as
    fresh ones: the first judge's scores come back from them) and their scores are kept beside the first's; new run
    steps translate again."""
    train = load_split(tiny_slices, "train")
    pairs = [("t2", "t1")]
    judge = train_segmenter(zs.target_only(train, "t1"), channels=(8, 16), steps=2, batch_size=2, progress=False,
                            classes=zs.judge_classes(train))
    references = {"t1": zs.reference_intensities(train, "t1")}
    args = ("configs/midiffusion_quick.yaml", tiny_slices, tiny_slices, tmp_path / "seed3", pairs, 3, OVERRIDES)
    scores = zs.seed_evidence(*args, {0: {"t1": judge}}, references)
    assert set(scores["run"]) == {zs.REAL, zs.RAW, zs.HISTOGRAM, zs.INVERTED, zs.MIDIFFUSION, zs.SDEDIT}
    assert (scores["seed"] == 3).all() and (scores["judge"] == 0).all() and scores["dice_white_matter"].notna().all()
    assert Sampler.from_checkpoint(tmp_path / "seed3" / "sdedit_t1", device="cpu").cfg.train.seed == 3
    monkeypatch.setattr(zs, "translate_pairs", lambda *a, **k: pytest.fail("translated again"))
    pd.testing.assert_frame_equal(zs.seed_evidence(*args, {0: {"t1": judge}}, references), scores)
    other = train_segmenter(zs.target_only(train, "t1"), channels=(8, 16), steps=2, batch_size=2, progress=False,
                            classes=zs.judge_classes(train), seed=1)
    assert zs.weights_digest(other.model) != zs.weights_digest(judge.model)
    both = zs.seed_evidence(*args, {0: {"t1": judge}, 1: {"t1": other}}, references)  # the kept translations, scored
    first, rescored = (both[both["judge"] == j].reset_index(drop=True) for j in (0, 1))
    pd.testing.assert_frame_equal(first, scores)
    assert not rescored["dice_white_matter"].equals(scores["dice_white_matter"])
    dice = [c for c in scores if c.startswith("dice")]
    pd.testing.assert_frame_equal(rescored.drop(columns=[*dice, "judge"]), scores.drop(columns=[*dice, "judge"]))
    monkeypatch.setattr(zs, "segmentation_scores", lambda *a, **k: pytest.fail("scored again"))
    pd.testing.assert_frame_equal(zs.seed_evidence(*args, {1: {"t1": other}, 0: {"t1": judge}}, references),
                                  pd.concat([rescored, first], ignore_index=True))  # both read back
    record = tmp_path / "seed3" / "translations.json"
    made = json.loads(record.read_text())
    record.write_text(json.dumps({**made, "run_steps": {k: v + 1 for k, v in made["run_steps"].items()}}))
    shutil.rmtree(tmp_path / "seed3" / "scores")
    with pytest.raises(pytest.fail.Exception, match="translated again"):  # made by other runs: translated anew
        zs.seed_evidence(*args, {1: {"t1": other}}, references)


def test_pool_judges_averages_each_slice_over_the_judges():
    """One row per (pair, input, seed, subject, slice); Dice the judges' mean, a judge's NaN (nothing to find,
    nothing found) left out; the judge-free metrics unchanged."""
    rows = {"output": "t2 -> t1", "run": zs.MIDIFFUSION, "seed": 0, "subject": "S0", "psnr_B": 20.0}
    scores = pd.DataFrame([{**rows, "index": 0, "judge": 0, "dice_CSF": 0.6},
                           {**rows, "index": 0, "judge": 1, "dice_CSF": 0.8},
                           {**rows, "index": 1, "judge": 0, "dice_CSF": np.nan},
                           {**rows, "index": 1, "judge": 1, "dice_CSF": 0.0}])
    pooled = zs.pool_judges(scores).set_index("index")
    assert "judge" not in pooled and len(pooled) == 2
    assert pooled.loc[0, "dice_CSF"] == pytest.approx(0.7) and pooled.loc[1, "dice_CSF"] == 0.0
    assert (pooled["psnr_B"] == 20.0).all()
