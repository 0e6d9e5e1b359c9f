"""The phantom study: claims statistics and verdicts on constructed scores, and the `study` profile end to end at
tiny size (so that the profile and notebook 13 cannot rot)."""
import math
import re
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from mudiff.evaluation.stats import paired_effect
from mudiff.experiments import phantom_study
from mudiff.experiments.phantom_study import Claim, StudyPlan, claims_table, verdict


def _scores(effects: dict[int, float], noise: float = 0.1, subjects: int = 8) -> pd.DataFrame:
    """Per-subject psnr_B of runs 'a' and 'b' for seeds -> a - b = effects[seed] + subject noise."""
    rng = np.random.default_rng(0)
    rows = []
    for seed, effect in effects.items():
        for s in range(subjects):
            base = 20 + rng.normal()
            for run, value in (("a", base + effect + noise * rng.normal()), ("b", base)):
                rows.append({"normalization": "percentile", "seed": seed, "run": run, "output": "mutual",
                             "subject": f"S{s}", "psnr_B": value, "mae_B": -value / 100})
    return pd.DataFrame(rows)


def test_paired_effect_recovers_the_effect_per_seed_and_pooled():
    e = paired_effect(_scores({0: 1.0, 1: 2.0, 2: 3.0}), ("a", "mutual"), ("b", "mutual"), "psnr_B")
    assert e["n_subjects"] == 8 and e["seeds"] == [0, 1, 2]
    assert e["effect"] == pytest.approx(2.0, abs=0.1) and e["ci_low"] < 2.0 < e["ci_high"]
    assert [round(v) for v in e["per_seed"].values()] == [1, 2, 3] and e["seed_sd"] == pytest.approx(1.0, abs=0.1)
    assert e["p_ttest"] < 1e-6
    mae = paired_effect(_scores({0: 1.0}), ("a", "mutual"), ("b", "mutual"), "mae_B")
    assert mae["effect"] > 0  # oriented: a lower MAE favours a


@pytest.mark.parametrize("effects, expected", [
    ({0: 1.0, 1: 1.2, 2: 0.9}, "reproduced"),
    ({0: -1.0, 1: -1.2, 2: -0.9}, "not reproduced"),
    ({0: 1.0, 1: -1.0, 2: 1.0}, "inconclusive at this scale"),  # seeds disagree
    ({0: 0.0, 1: 0.0, 2: 0.0}, "inconclusive at this scale"),
])
def test_verdicts(effects, expected):
    table = claims_table(_scores(effects), [Claim("a beats b", ("a", "mutual"), ("b", "mutual"), ("psnr_B",))])
    assert table.loc[0, "verdict"] == expected


def test_an_effect_smaller_than_the_seed_spread_is_not_called_an_effect():
    assert verdict("beats", 0.1, 0.3, [0.1, 0.2, 0.3], seed_sd=0.5) == "inconclusive at this scale"
    assert verdict("beats", 0.1, 0.3, [0.1, 0.2, 0.3], seed_sd=0.05) == "reproduced"


def test_no_gain_is_reproduced_only_when_the_data_bound_the_gain_below_the_margin():
    assert verdict("no_gain", 0.1, 0.3, [0.1, 0.2, 0.3], seed_sd=0.05, margin=0.5) == "not reproduced"  # a gain
    assert verdict("no_gain", -0.1, 0.3, [0.1, 0.2, 0.3], seed_sd=0.05, margin=0.5) == "reproduced"
    assert verdict("no_gain", -0.1, 0.3, [0.1, 0.2, 0.3], seed_sd=0.05, margin=0.25) == "inconclusive at this scale"
    assert verdict("no_gain", -5.0, 10.0, [3.0, -2.0], seed_sd=3.5, margin=0.25) == "inconclusive at this scale"
    assert verdict("no_gain", math.nan, math.nan, [0.1], seed_sd=math.nan, margin=0.25) == "inconclusive at this scale"
    with pytest.raises(ValueError, match="margin"):
        verdict("no_gain", -0.1, 0.1, [0.0], seed_sd=0.05)


def test_missing_runs_are_listed_as_not_run():
    table = claims_table(_scores({0: 1.0}), [Claim("c beats b", ("c", "mutual"), ("b", "mutual"), ("psnr_B",))])
    assert table.loc[0, "verdict"] == "not run"


def test_claims_between_keeps_the_claims_whose_runs_are_all_named():
    texts = [c.text for c in phantom_study.claims_between(["mudiff", "single"])]
    assert texts == ["MU-Diff beats SynDiff-supervised (one network F1, = abl1)",
                     "the mutual result beats F1 alone (x^p1)", "the mutual result beats F2 alone (x^p2)"]
    assert phantom_study.claims_between(["single", "pix2pix"]) == []
    assert len(phantom_study.claims_between(list(phantom_study.STUDY_RUNS))) == len(phantom_study.CLAIMS)


def test_plan_validation_and_layout():
    with pytest.raises(ValueError, match="unknown study run"):
        StudyPlan(runs=["mudiff", "nope"])
    with pytest.raises(ValueError, match="unknown normalization"):
        StudyPlan(normalizations=["percentile", "whitestripe"])
    with pytest.raises(ValueError, match="must include 'percentile'"):
        StudyPlan(normalizations=["zscore_outside_lesion"])
    plan = StudyPlan(seeds=[0, 1], runs=["mudiff", "single", "T2"], normalization_runs=["mudiff"])
    jobs = plan.jobs()
    assert [j.label for j in jobs[:3]] == ["percentile/seed0/mudiff", "percentile/seed0/single", "percentile/seed0/T2"]
    assert len(jobs) == 2 * 3 + 2  # the other two normalisations: MU-Diff, seed 0
    t2 = next(j for j in jobs if j.run == "T2")
    assert t2.cfg.model.num_timesteps == 2 and t2.cfg.train.seed == 0
    assert t2.cfg.data.root == "data/study_slices_percentile"
    assert set(phantom_study.STUDY_RUNS) >= {"mudiff", "single", "pix2pix", "ddpm", "unet_l1", "copy_source", "T2",
                                             "T8", "no_critic", "abl2_two_f1", "abl3_no_tau", "abl4_no_mask_loss",
                                             "fixed_mask_head"}
    heads = StudyPlan(runs=["mudiff", "fixed_mask_head"], normalizations=["percentile"], normalization_runs=[]).jobs()
    # one per default seed, paper normalisation only; the study's runs keep the learned head they were trained with
    assert [(j.run, j.cfg.model.mask_head) for j in heads] == [("mudiff", "learned"), ("fixed_mask_head", "fixed")] * 3


def test_enhancement_contrast_and_its_summary():
    brain = np.zeros((2, 8, 8), np.float32)
    brain[:, 1:7, 1:7] = 1
    label = np.zeros((2, 8, 8), np.int64)
    label[0, 2:4, 2:4] = 4  # enhancing (BraTS 2019)
    label[1, 2:4, 2:4] = 3  # enhancing (BraTS 2023)
    label[:, 4, 4] = 2  # oedema: lesion, neither enhancing nor normal
    lesion = (label > 0).astype(np.float32)
    truth = np.full((2, 8, 8), 0.3, np.float32)
    truth[label >= 3] = 0.8
    truth[label == 2] = 0.0
    assert phantom_study.enhancement_contrast(truth, label, brain, lesion) == pytest.approx(0.5)
    invisible = np.full_like(truth, 0.3)
    assert phantom_study.enhancement_contrast(invisible, label, brain, lesion) == pytest.approx(0.0, abs=1e-6)
    assert np.isnan(phantom_study.enhancement_contrast(truth, np.zeros_like(label), brain, lesion))

    visibility = pd.DataFrame([
        {"run": "mudiff", "seed": seed, "subject": subject, "enhancing_pixels": px, "contrast_target": 0.5,
         "contrast_result": r * 0.5, "recovered": r}
        for seed, (r_small, r_large) in enumerate([(0.2, 0.6), (0.4, 0.8)])
        for subject, px, r in (("small", 10, r_small), ("large", 90, r_large))])
    scores = pd.DataFrame([{"normalization": "percentile", "seed": seed, "run": "mudiff", "output": "mutual",
                            "subject": subject, "psnr_T": 10.0 + seed, "ssim_T": 0.5}
                           for seed in (0, 1) for subject in ("small", "large")])
    table = phantom_study.visibility_summary(visibility, scores)
    assert list(table["subject"]) == ["large", "small"]  # largest enhancing lesion first
    assert table["recovered"].tolist() == pytest.approx([0.7, 0.3])
    assert table["recovered_sd"].tolist() == pytest.approx([np.std([0.6, 0.8], ddof=1)] * 2)
    assert table["psnr_T"].tolist() == pytest.approx([10.5, 10.5]) and (table["n_seeds"] == 2).all()


@pytest.mark.slow
def test_study_profile_runs_at_tiny_size(tmp_path):
    from mudiff.reproduce import load_profile, reproduce

    tiny = load_profile("test").notebooks["13_phantom_study"]  # the test profile's tiny sizes
    params = {k: v for k, v in tiny.items() if k != "FIGURES"}
    folder = reproduce("study", workdir=tmp_path, parameters={**params, "WORKERS": 1})
    assert [p.name for p in folder.glob("*.ipynb")] == ["13_phantom_study.ipynb"]  # the profile runs 13 alone
    report = (tmp_path / "docs" / "results" / "phantom_study.md").read_text()
    assert "## Claims" in report and "MU-Diff beats Pix2Pix" in report and "seeds [0, 1]" in report
    claims = pd.read_csv(tmp_path / "docs" / "results" / "phantom_study_claims.csv")
    assert set(claims["verdict"]) <= {*phantom_study.VERDICTS, "not run"}
    assert (claims["verdict"] != "not run").all()  # every claim's runs were trained
    assert {"fid", "kid_mean", "encoder mean_same_block"} <= set(claims["metric"])
    assert "## Does the enhancing lesion appear in the result?" in report
    visibility = pd.read_csv(tmp_path / "docs" / "results" / "phantom_study_visibility.csv")
    assert {"mudiff", "unet_l1"} == set(visibility["run"])  # every test subject has a tumour
    assert np.isfinite(visibility[["contrast_target", "contrast_result", "recovered"]].to_numpy()).all()
    assert (visibility["contrast_target"] > 0).all()  # enhancing tumour is brighter than the normal brain on T1CE
    assert re.search(r"training steps took \d+ min of wall time in\nall \(summed from their logs", report)


def test_runs_are_scored_on_more_held_out_subjects(tmp_path, monkeypatch):
    from mudiff.reproduce import load_profile

    config = str(Path("configs/study.yaml").resolve())
    monkeypatch.chdir(tmp_path)
    tiny = load_profile("test").notebooks["13_phantom_study"]
    plan = StudyPlan(config=config, overrides=tiny["OVERRIDES"], n_subjects=6, slices=4, size=32, runs=["mudiff"],
                     seeds=[0], normalizations=["percentile"], normalization_runs=[], workers=1)
    phantom_study.train_study(plan, log=lambda _: None)
    with pytest.raises(ValueError, match="the study's own"):
        phantom_study.external_test_data(plan, 3, plan.phantom_seed)
    external = phantom_study.external_test_data(plan, 3, phantom_seed=1)
    own = phantom_study.score_study(plan)
    more = phantom_study.score_study(plan, external=external)
    assert own["subject"].nunique() == 2 and more["subject"].nunique() == 3  # 6 x 0.33 test subjects; all 3 new
    run = plan.run_dir("percentile", 0, "mudiff")
    assert (run / "eval" / "external" / external["percentile"].name / "test_summary.json").is_file()
    pd.testing.assert_frame_equal(phantom_study.score_study(plan), own)  # the own evaluation was left as it was
