"""Slice metrics against scikit-image and hand-computed values; both protocols; aggregation."""
import numpy as np
import pandas as pd
import pytest
from skimage.metrics import peak_signal_noise_ratio, structural_similarity

from mudiff.evaluation.metrics import aggregate, describe_protocol, slice_metrics

H = 48


def phantom(seed: int = 0) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """A smooth 'brain' (ellipse with a gradient and a bright 'lesion') on black: image, brain and lesion masks."""
    yy, xx = np.mgrid[:H, :H] / H
    brain = ((yy - 0.5) ** 2 / 0.16 + (xx - 0.5) ** 2 / 0.12) < 1
    lesion = ((yy - 0.4) ** 2 + (xx - 0.55) ** 2) < 0.01
    rng = np.random.default_rng(seed)
    image = brain * (0.3 + 0.3 * xx + 0.05 * rng.random((H, H))) + 0.3 * lesion
    return image.clip(0, 1), brain.astype(float), lesion.astype(float)


def noisy(image: np.ndarray, sigma: float, seed: int = 1) -> np.ndarray:
    return (image + sigma * np.random.default_rng(seed).standard_normal(image.shape)).clip(0, 1)


def test_full_mask_matches_scikit_image():
    target, _, _ = phantom()
    pred = noisy(target, 0.05)
    full = np.ones_like(target)
    row = slice_metrics(pred, target, full, full).iloc[0]
    assert row.psnr_B == pytest.approx(peak_signal_noise_ratio(target, pred, data_range=1))
    assert row.ssim_B == pytest.approx(structural_similarity(target, pred, data_range=1))
    assert row.mae_B == pytest.approx(np.abs(pred - target).mean())
    assert row.psnr_T == row.psnr_B and row.ssim_T == row.ssim_B


def test_masked_psnr_mae_by_hand_and_background_ignored():
    target = np.zeros((32, 32))
    pred = np.ones((32, 32))  # wrong everywhere outside the mask
    mask = np.zeros((32, 32))
    mask[10:14, 10:14] = 1
    pred[10:14, 10:14] = 0.1
    pred[10:12, 10:14] = 0.3  # half the mask pixels off by 0.3, half by 0.1
    row = slice_metrics(pred, target, mask, None).iloc[0]
    assert row.psnr_B == pytest.approx(10 * np.log10(1 / ((0.3**2 + 0.1**2) / 2)))
    assert row.mae_B == pytest.approx(0.2)
    # pixels further than the SSIM window's half-width from the mask do not count at all
    pred2 = pred.copy()
    pred2[:5], pred2[20:] = 0.5, 0.0
    cols = ["psnr_B", "ssim_B", "mae_B"]
    assert np.allclose(slice_metrics(pred2, target, mask, None).iloc[0][cols].astype(float), row[cols].astype(float))


@pytest.mark.parametrize("protocol", ["float", "paper"])
def test_perfect_prediction_and_monotonic_noise(protocol):
    target, brain, lesion = phantom()
    perfect = slice_metrics(target, target, brain, lesion, protocol).iloc[0]
    for r in "BT":
        assert perfect[f"psnr_{r}"] == pytest.approx(100.0)  # MSE floored at 1e-10: capped, never inf
        assert perfect[f"ssim_{r}"] == pytest.approx(1.0)
        assert perfect[f"mae_{r}"] == 0.0
    sigmas = [0.02, 0.05, 0.1, 0.2]
    df = slice_metrics(np.stack([noisy(target, s) for s in sigmas]), np.stack([target] * 4),
                       np.stack([brain] * 4), np.stack([lesion] * 4), protocol)
    for r in "BT":
        assert (np.diff(df[f"psnr_{r}"]) < 0).all() and (np.diff(df[f"ssim_{r}"]) < 0).all()
        assert (np.diff(df[f"mae_{r}"]) > 0).all()


def test_paper_protocol_normalises_per_image():
    """An affine intensity change of the prediction is invisible to the paper protocol, not to the float one."""
    target, brain, lesion = phantom()
    pred = 0.5 * target + 0.2  # min-max maps it back onto the target exactly
    assert slice_metrics(pred, target, brain, lesion, "paper").psnr_B[0] > 50
    assert slice_metrics(pred, target, brain, lesion, "float").psnr_B[0] < 30
    assert "NOT comparable" in describe_protocol("paper")


def test_empty_lesion_excluded_and_subject_aggregation():
    target, brain, lesion = phantom()
    n = 4
    preds = np.stack([noisy(target, 0.05, seed=k) for k in range(n)])
    lesions = np.stack([lesion, 0 * lesion, lesion, 0 * lesion])
    df = slice_metrics(preds, np.stack([target] * n), np.stack([brain] * n), lesions,
                       subjects=["s1", "s1", "s2", "s3"])
    assert df.attrs["protocol"] == "float"
    assert list(df.slice) == [0, 1, 0, 0]
    assert df.psnr_T.isna().tolist() == [False, True, False, True]
    per_slice, per_subject = aggregate(df, by="slice"), aggregate(df, by="subject")
    assert per_slice.loc["psnr_T", "n"] == 2 and per_slice.loc["psnr_T", "n_excluded"] == 2
    assert per_subject.loc["psnr_T", "n"] == 2 and per_subject.loc["psnr_T", "n_excluded"] == 1  # s3: no lesion
    subject_means = [df.psnr_B[:2].mean(), df.psnr_B[2], df.psnr_B[3]]
    assert per_subject.loc["psnr_B", "mean"] == pytest.approx(np.mean(subject_means))
    assert per_subject.loc["psnr_B", "sd"] == pytest.approx(np.std(subject_means, ddof=1))
    assert per_subject.attrs["protocol"] == "float"


def test_input_errors():
    target, brain, lesion = phantom()
    with pytest.raises(ValueError, match="shape"):
        slice_metrics(target, target, brain[:-1], lesion)
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        slice_metrics(2 * target - 1, target, brain, lesion)
    with pytest.raises(ValueError, match="protocol"):
        slice_metrics(target, target, brain, lesion, protocol="jpeg")
    with pytest.raises(ValueError, match="subject"):
        aggregate(slice_metrics(target, target, brain, lesion), by="subject")


# --- statistics and tables (mudiff.evaluation.stats) ---

def method_frames(n_subjects: int = 6, slices: int = 2, sigmas: dict | None = None) -> dict:
    """slice_metrics frames of methods that differ by their noise level, on the same subjects and slices."""
    sigmas = sigmas or {"good": 0.03, "fair": 0.08, "poor": 0.15}
    target, brain, lesion = phantom()
    n = n_subjects * slices
    subjects = [f"s{k // slices}" for k in range(n)]
    stack = np.stack
    return {m: slice_metrics(stack([noisy(target, s, seed=k) for k in range(n)]), stack([target] * n),
                             stack([brain] * n), stack([lesion] * n), subjects=subjects) for m, s in sigmas.items()}


def test_paired_tests_and_subject_mismatch():
    from mudiff.evaluation.stats import paired_test

    frames = method_frames()
    test = paired_test(frames["good"], frames["fair"], "psnr_B")
    assert test["n"] == 6 and test["mean_diff"] > 0
    assert test["p_ttest"] < 0.05 and test["p_wilcoxon"] < 0.05
    same = paired_test(frames["good"], frames["good"], "ssim_B")
    assert same["mean_diff"] == 0 and same["p_wilcoxon"] == 1.0
    fewer = frames["fair"][frames["fair"].subject != "s0"]
    with pytest.raises(ValueError, match="only in the first"):
        paired_test(frames["good"], fewer, "psnr_B")
    # by slice, slices pair by their axial position: frames of other slices of the same subjects do not pair
    a, b = frames["good"].assign(z=frames["good"]["slice"]), frames["fair"].assign(z=frames["fair"]["slice"] + 2)
    with pytest.raises(ValueError, match="different slices"):
        paired_test(a, b, "psnr_B", by="slice")
    assert paired_test(a, b.assign(z=a["z"]), "psnr_B", by="slice")["n"] == 12


def test_results_table_writers_and_box_plots(tmp_path):
    from mudiff.evaluation.stats import box_plots, results_table, to_markdown, write_csv

    frames = method_frames()
    table = results_table(frames, region="T", note="mask head: learned")
    assert list(table.metric) == ["psnr_T", "ssim_T", "mae_T"]
    assert (table.best == "good").all() and (table.second == "fair").all()  # MAE: lower is better
    assert table.significant.all() and (table.n == 6).all()
    assert "float protocol" in table.attrs["caption"] and "mask head: learned" in table.attrs["caption"]
    md = to_markdown(table, tmp_path / "t.md")
    assert md.startswith("| metric | good | fair | poor | best |") and "float protocol" in md
    assert (tmp_path / "t.md").read_text() == md
    back = pd.read_csv(write_csv(table, tmp_path / "t.csv"), comment="#")
    assert back.best.tolist() == table.best.tolist()
    fig = box_plots(frames, "B", out=tmp_path / "box.png")
    assert "float protocol" in fig._suptitle.get_text() and "p_t" in fig.axes[0].get_title()
    assert (tmp_path / "box.png").stat().st_size > 0
    assert len(pd.read_csv(tmp_path / "box.csv")) == 3 * 3 * 6  # methods x metrics x subjects
    mixed = {**frames, "paper": frames["good"].copy()}
    mixed["paper"].attrs["protocol"] = "paper"
    with pytest.raises(ValueError, match="protocols"):
        results_table(mixed)
