"""Uncertainty maps: their informativeness is judged on a draw the map did not see."""
import numpy as np
import pytest

from mudiff.evaluation.uncertainty import Draws, informativeness


def _draws(spread: np.ndarray, k: int = 8, seed: int = 0) -> Draws:
    """K draws of 4 slices around a truth of 0.5, with a per-pixel noise sd ``spread`` (4, H, W)."""
    rng = np.random.default_rng(seed)
    target = np.full(spread.shape, 0.5)
    draws = target + spread * rng.standard_normal((k, *spread.shape))
    ones = np.ones(spread.shape)
    return Draws(draws, target, ones, 0 * ones, ["s"] * 4, [0, 1, 2, 3])


def test_a_map_that_knows_nothing_about_the_error_scores_no_link():
    d = _draws(np.full((4, 32, 32), 0.05))  # the same spread everywhere: the map carries no information
    scores = informativeness(d)
    assert abs(scores["pearson_r"]) < 0.06 and abs(scores["spearman_r"]) < 0.06
    assert scores["top_decile_error_ratio"] == pytest.approx(1.0, abs=0.12)


def test_a_map_that_marks_the_noisy_pixels_scores_a_link():
    spread = np.full((4, 32, 32), 0.02)
    spread[:, :, :8] = 0.2  # a quarter of each slice is ten times noisier
    scores = informativeness(_draws(spread))
    assert scores["pearson_r"] > 0.4 and scores["top_decile_error_ratio"] > 3


def test_the_held_out_map_needs_three_draws():
    with pytest.raises(ValueError, match="k >= 3"):
        informativeness(_draws(np.full((4, 8, 8), 0.05), k=2))
