"""Uncertainty maps of a stochastic synthesis: K latent draws per slice give a per-pixel standard deviation.

MU-Diff samples a fresh latent z and fresh posterior noise at every step, so its result is a draw from a
distribution. :func:`sample_draws` synthesises K draws of each slice (draw j with the sampler's seed j, so every draw
is reproducible and independent of the batch size); their per-pixel standard deviation is the uncertainty map.
:func:`informativeness` measures whether it says anything about the error of a prediction it did not see: the
correlation between the per-pixel std of draws 1..K-1 and the absolute error of draw 0 over brain pixels, and the
mean error of the pixels in the top decile of that std against the others. (With draw 0 inside the std, its own large
deviations would raise both numbers, and an uninformative map would still correlate with its error.) The mean of the
K draws is also a prediction, scored by :func:`score_draws` against a single draw.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np
import pandas as pd

from mudiff.display.viz import ERROR_VMAX, image_grid, save_figure
from mudiff.evaluation.metrics import slice_metrics


@dataclass
class Draws:
    """K draws of N slices and their ground truth; arrays in [0, 1] (masks in {0, 1})."""

    draws: np.ndarray  # (K, N, H, W): the result of draw k of slice n
    target: np.ndarray  # (N, H, W)
    brain: np.ndarray  # (N, H, W)
    lesion: np.ndarray  # (N, H, W)
    subjects: list[str]
    z: list[int]

    @property
    def mean(self) -> np.ndarray:
        """(N, H, W) mean of the draws."""
        return self.draws.mean(axis=0)

    @property
    def std(self) -> np.ndarray:
        """(N, H, W) per-pixel standard deviation over the draws (the uncertainty map)."""
        return self.draws.std(axis=0, ddof=1)

    @property
    def held_out_std(self) -> np.ndarray:
        """(N, H, W) per-pixel standard deviation over draws 1..K-1: the map without the draw it is judged on."""
        return self.draws[1:].std(axis=0, ddof=1)

    @property
    def error(self) -> np.ndarray:
        """(N, H, W) absolute error of the first draw (an ordinary single prediction)."""
        return np.abs(self.draws[0] - self.target)


def sample_draws(sampler, dataset, indices: Sequence[int], k: int = 8, seed: int = 0, batch_size: int | None = None
                 ) -> Draws:
    """K draws (sampler seeds ``seed`` .. ``seed + k - 1``) of the items ``indices`` of a TaskDataset."""
    if k < 2:
        raise ValueError(f"need k >= 2 draws for a standard deviation, got {k}")
    indices = list(indices)
    if not indices:
        raise ValueError("no slice to draw")
    draws = np.stack([sampler.synthesise_dataset(dataset, indices, seed=seed + j, batch_size=batch_size,
                                                 progress=False).mutual for j in range(k)])
    items = [dataset[i] for i in indices]
    field = lambda key: np.stack([it[key][0].numpy() for it in items])  # noqa: E731
    return Draws(draws, np.clip((field("target") + 1) / 2, 0, 1), field("brain_mask"), field("lesion_mask"),
                 [it["subject"] for it in items], [int(it["z"]) for it in items])


def informativeness(d: Draws) -> dict[str, float]:
    """Whether high uncertainty marks high error, over the brain pixels of all slices: the std of draws 1..K-1
    (:attr:`Draws.held_out_std`, K >= 3) against the absolute error of draw 0.

    pearson_r / spearman_r: correlation of the per-pixel std with the absolute error; mean_slice_pearson_r: the same
    per slice, averaged; error_top_decile / error_rest: mean absolute error of the pixels in the top 10 % of std vs
    the others, and their ratio (> 1: the map points at errors)."""
    from scipy.stats import pearsonr, spearmanr

    if len(d.draws) < 3:
        raise ValueError(f"need k >= 3 draws: the std of draws 1..K-1 is judged on draw 0's error, got {len(d.draws)}")
    brain = d.brain > 0.5
    held_out = d.held_out_std
    std, err = held_out[brain], d.error[brain]
    if std.size < 3 or np.all(std == std[0]):
        raise ValueError("too few brain pixels, or a constant uncertainty map: nothing to correlate")
    top = std >= np.quantile(std, 0.9)
    per_slice = [pearsonr(held_out[i][brain[i]], d.error[i][brain[i]]).statistic for i in range(len(brain))
                 if brain[i].sum() > 2 and held_out[i][brain[i]].std() > 0 and d.error[i][brain[i]].std() > 0]
    return {"pixels": int(std.size), "pearson_r": float(pearsonr(std, err).statistic),
            "spearman_r": float(spearmanr(std, err).statistic),
            "mean_slice_pearson_r": float(np.mean(per_slice)) if per_slice else float("nan"),
            "error_top_decile": float(err[top].mean()), "error_rest": float(err[~top].mean()),
            "top_decile_error_ratio": float(err[top].mean() / err[~top].mean())}


def score_draws(d: Draws) -> pd.DataFrame:
    """Per-slice metrics (B and T) of one draw and of the mean of the K draws: a ``slice_metrics`` frame with a
    ``prediction`` column."""
    frames = []
    for name, pred in (("one draw", d.draws[0]), (f"mean of {len(d.draws)} draws", d.mean)):
        frame = slice_metrics(pred, d.target, d.brain, d.lesion, subjects=d.subjects)
        frame.insert(0, "prediction", name)
        frames.append(frame)
    return pd.concat(frames, ignore_index=True)


def uncertainty_figure(d: Draws, positions: Sequence[int] | None = None, out: str | Path | None = None,
                       note: str = ""):
    """Per slice: ground truth, one draw, the mean of the draws, the error of the draw and the std map (same
    colour scale as the error, so they can be compared by eye)."""
    positions = list(range(min(3, len(d.target)))) if positions is None else list(positions)
    vmax = ERROR_VMAX
    rows = [[d.target[i], d.draws[0][i], d.mean[i], d.error[i] * d.brain[i], d.std[i] * d.brain[i]]
            for i in positions]
    fig = image_grid(rows, ["ground truth", "one draw", f"mean of {len(d.draws)}", "|error| of the draw",
                            f"std over {len(d.draws)} draws"],
                     [f"{d.subjects[i]}\nz={d.z[i]}" for i in positions],
                     cmaps=["gray", "gray", "gray", "magma", "magma"], vmax=[1, 1, 1, vmax, vmax],
                     suptitle=f"uncertainty: per-pixel std of K latent draws beside the error (both in [0, {vmax}])"
                              + (f"\n{note}" if note else ""))
    return save_figure(fig, out)


def uncertainty_explorer(d: Draws, interactive: bool | None = None, out: str | Path | None = None, note: str = ""):
    """Step through the slices' uncertainty and error maps; headless: the static figure of the first slices."""
    from mudiff.display.explore import is_interactive, show_figure, show_widget

    if not is_interactive(interactive):
        return uncertainty_figure(d, out=out, note=note)
    import ipywidgets as w

    pick = w.IntSlider(min=0, max=len(d.target) - 1, value=0, description="slice", continuous_update=False)
    output = w.Output()

    def draw(_=None) -> None:
        with output:
            output.clear_output(wait=True)
            show_figure(uncertainty_figure(d, [pick.value], note=note))

    pick.observe(draw, "value")
    draw()
    return show_widget(w.VBox([pick, output]))


__all__ = ["Draws", "sample_draws", "informativeness", "score_draws", "uncertainty_figure", "uncertainty_explorer"]
