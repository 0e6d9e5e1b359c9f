"""Figures shared by the CLI demo and the notebooks. Every function returns the matplotlib Figure and, given
``out``, also writes it as PNG (and the numbers behind it as CSV where there are any)."""
from __future__ import annotations

from pathlib import Path
from typing import Sequence

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd

PHANTOM_NOTE = "phantom data: a controlled benchmark with known truth, not evidence about patients"
QUICK_NOTE = "quick setting: short CPU runs on a small phantom, a pipeline check, not a result"
LABEL_COLOURS = {1: (0.9, 0.2, 0.2), 2: (0.2, 0.8, 0.2), 3: (1.0, 0.85, 0.1), 4: (1.0, 0.85, 0.1)}


def save_figure(fig: plt.Figure, out: str | Path | None, table: pd.DataFrame | None = None) -> plt.Figure:
    """Write ``fig`` to ``out`` (PNG) and ``table`` next to it (same name, .csv)."""
    if out is not None:
        out = Path(out)
        out.parent.mkdir(parents=True, exist_ok=True)
        fig.savefig(out, dpi=120, bbox_inches="tight")
        if table is not None:
            table.to_csv(out.with_suffix(".csv"), index=False)
    return fig


def label_overlay(label: np.ndarray) -> np.ndarray:
    """(H, W) integer labels -> (H, W, 4) RGBA image, transparent where 0."""
    rgba = np.zeros((*label.shape, 4), np.float32)
    for value, colour in LABEL_COLOURS.items():
        rgba[label == value] = (*colour, 0.8)
    return rgba


def image_grid(rows: Sequence[Sequence[np.ndarray | None]], col_titles: Sequence[str],
               row_titles: Sequence[str] = (), cmaps: Sequence[str] | None = None, vmax: Sequence[float] | None = None,
               suptitle: str = "", cell: float = 1.9) -> plt.Figure:
    """A grid of (H, W) images (None leaves a cell empty); grey [0, 1] unless ``cmaps``/``vmax`` say otherwise."""
    n_rows, n_cols = len(rows), len(col_titles)
    fig, axes = plt.subplots(n_rows, n_cols, figsize=(cell * n_cols, cell * n_rows), squeeze=False)
    for r, row in enumerate(rows):
        for c, img in enumerate(row):
            ax = axes[r, c]
            ax.set_xticks([]), ax.set_yticks([])
            if img is None:
                ax.axis("off")
                continue
            if img.ndim == 3:  # RGBA overlay
                ax.imshow(img, interpolation="nearest")
            else:
                ax.imshow(img, cmap=cmaps[c] if cmaps else "gray", vmin=0, vmax=vmax[c] if vmax else 1,
                          interpolation="nearest")
            if r == 0:
                ax.set_title(col_titles[c], fontsize=9)
            if c == 0 and r < len(row_titles):
                ax.set_ylabel(row_titles[r], fontsize=8)
    if suptitle:
        fig.suptitle(suptitle, fontsize=9)
    fig.tight_layout()
    return fig


def plot_training_curves(stats: Sequence[dict], out: str | Path | None = None) -> plt.Figure:
    """Losses per step and validation PSNR per epoch from a run's ``stats.jsonl`` records."""
    train = pd.DataFrame([r for r in stats if "loss_g" in r])
    val = pd.DataFrame([r for r in stats if any(k.startswith("val_psnr") for k in r)])
    fig, axes = plt.subplots(1, 2, figsize=(10, 3.2))
    for key in ("loss_g", "loss_d", "l1", "adv", "mask"):
        if key in train:
            axes[0].plot(train["step"], train[key], label=key)
    axes[0].set_xlabel("step"), axes[0].set_title("training losses"), axes[0].legend(fontsize=7)
    if len(val):
        for key in [k for k in val.columns if k.startswith("val_psnr") and not k.startswith("val_psnr_copy_")
                    or k == "val_psnr_copy_best"]:
            axes[1].plot(val["step"], val[key], marker="o", label=key.removeprefix("val_psnr_"))
        axes[1].legend(fontsize=7)
    axes[1].set_xlabel("step"), axes[1].set_ylabel("PSNR (dB, brain)"), axes[1].set_title("validation")
    fig.tight_layout()
    return save_figure(fig, out, pd.concat([train, val], ignore_index=True) if len(train) else None)


# ---- notebook figures (data overview, histograms, synthesis, volumes) ------------------------------------------
def overlay_rgb(image: np.ndarray, label: np.ndarray, alpha: float = 0.55) -> np.ndarray:
    """A grey (H, W) image in [0, 1] with the label colours blended in: (H, W, 3)."""
    rgb = np.repeat(np.clip(image, 0, 1)[..., None], 3, axis=-1).astype(np.float32)
    for value, colour in LABEL_COLOURS.items():
        hit = label == value
        rgb[hit] = (1 - alpha) * rgb[hit] + alpha * np.asarray(colour, np.float32)
    return rgb


def plot_data_overview(rows: Sequence[dict], contrasts: Sequence[str], overlay_on: str | None = None,
                       out: str | Path | None = None, suptitle: str = PHANTOM_NOTE) -> plt.Figure:
    """One row per slice: every contrast, the label over ``overlay_on`` and the brain mask.

    rows: dicts with ``title`` (str), ``images`` ({contrast: (H, W) in [0, 1]}), ``label`` and ``brain_mask``
    ((H, W)). The table written next to ``out`` lists the slices shown and their lesion and brain areas.
    """
    overlay_on = overlay_on or contrasts[-1]
    grid = [[r["images"][c] for c in contrasts] + [overlay_rgb(r["images"][overlay_on], r["label"]),
                                                   r["brain_mask"].astype(np.float32)] for r in rows]
    fig = image_grid(grid, [*contrasts, f"label on {overlay_on}", "brain mask"], [r["title"] for r in rows],
                     suptitle=suptitle)
    table = pd.DataFrame([{"slice": r["title"], "lesion_pixels": int((r["label"] > 0).sum()),
                           "brain_pixels": int((r["brain_mask"] > 0).sum())} for r in rows])
    return save_figure(fig, out, table)


def plot_intensity_histograms(hist: pd.DataFrame, out: str | Path | None = None) -> plt.Figure:
    """Intensity densities inside the brain mask, one panel per contrast, one line per split.

    hist: columns contrast, split, bin_left, bin_right, density (as from
    ``mudiff.display.explore.intensity_histograms``).
    """
    contrasts = list(dict.fromkeys(hist["contrast"]))
    fig, axes = plt.subplots(1, len(contrasts), figsize=(3.0 * len(contrasts), 2.6), squeeze=False, sharey=True)
    for ax, contrast in zip(axes[0], contrasts):
        part = hist[hist["contrast"] == contrast]
        for split, h in part.groupby("split", sort=False):
            centres = (h["bin_left"] + h["bin_right"]) / 2
            ax.plot(centres, h["density"], label=f"{split} ({int(h['voxels'].iloc[0])} px)")
        ax.set_title(contrast, fontsize=9), ax.set_xlabel("intensity (brain mask)", fontsize=8)
        ax.legend(fontsize=6)
    axes[0, 0].set_ylabel("density")
    fig.suptitle(f"intensity histograms per split; {PHANTOM_NOTE}", fontsize=8)
    fig.tight_layout()
    return save_figure(fig, out, hist)


ERROR_VMAX = 0.3  # absolute-error maps share this colour range ([0, 1] intensities)


def plot_synthesis(rows: Sequence[dict], source_names: Sequence[str], target: str, out: str | Path | None = None,
                   table: pd.DataFrame | None = None, suptitle: str = "") -> plt.Figure:
    """Sources, ground truth, x^{p1}, x^{p2}, mutual and their absolute errors, one row per slice.

    rows: dicts with ``title``, ``sources`` ((n, H, W)), ``target``, ``x_p1``, ``x_p2`` (None for a single
    network) and ``mutual`` ((H, W)), all in [0, 1], and optionally ``brain_mask`` ((H, W)): error maps are then
    shown inside the brain only (where the metrics are taken), in the range [0, ``ERROR_VMAX``].
    """
    preds = ("x_p1", "x_p2", "mutual")
    titles = [*source_names, f"{target} (GT)", "x^p1", "x^p2", "mutual", *(f"|{p} - GT|" for p in ("x^p1", "x^p2",
                                                                                                   "mutual"))]
    grid = []
    for r in rows:
        inside = r["brain_mask"] > 0.5 if r.get("brain_mask") is not None else 1.0
        errors = [None if r[p] is None else np.abs(r[p] - r["target"]) * inside for p in preds]
        grid.append([*r["sources"], r["target"], *(r[p] for p in preds), *errors])
    n_img = len(source_names) + 4
    fig = image_grid(grid, titles, [r["title"] for r in rows], cmaps=["gray"] * n_img + ["inferno"] * 3,
                     vmax=[1.0] * n_img + [ERROR_VMAX] * 3,
                     suptitle=suptitle or f"error maps: |prediction - GT| in [0, {ERROR_VMAX}]; {PHANTOM_NOTE}")
    return save_figure(fig, out, table)


def plot_volume_views(volumes: dict[str, np.ndarray], centre: Sequence[int] | None = None,
                      out: str | Path | None = None, suptitle: str = "", error_key: str | None = None
                      ) -> plt.Figure:
    """Axial, coronal and sagittal sections (rows) through ``centre`` of RAS+ volumes (X, Y, Z) in [0, 1], one
    column per volume; the column ``error_key`` (an absolute difference) uses the error map colours."""
    first = next(iter(volumes.values()))
    cx, cy, cz = centre if centre is not None else [s // 2 for s in first.shape]
    views = (lambda v: v[:, :, cz], lambda v: v[:, cy, :], lambda v: v[cx, :, :])
    grid = [[np.rot90(view(v)) for v in volumes.values()] for view in views]
    cmaps = ["inferno" if k == error_key else "gray" for k in volumes]
    vmax = [ERROR_VMAX if k == error_key else 1.0 for k in volumes]
    fig = image_grid(grid, list(volumes), [f"axial z={cz}", f"coronal y={cy}", f"sagittal x={cx}"], cmaps=cmaps,
                     vmax=vmax, cell=2.4, suptitle=suptitle)
    return save_figure(fig, out)


def plot_scores(scores: pd.DataFrame, value: str, label: str = "name", out: str | Path | None = None,
                title: str = "", highlight: Sequence[str] = ()) -> plt.Figure:
    """Horizontal bars of ``scores[value]`` per ``scores[label]`` (e.g. validation PSNR per prediction)."""
    fig, ax = plt.subplots(figsize=(5.5, 0.35 * len(scores) + 1.0))
    colours = ["tab:orange" if name in highlight else "tab:blue" for name in scores[label]]
    ax.barh(scores[label], scores[value], color=colours)
    for y, v in enumerate(scores[value]):
        ax.text(v, y, f" {v:.2f}", va="center", fontsize=7)
    ax.invert_yaxis()
    ax.set_xlabel(value), ax.set_title(title, fontsize=9)
    ax.set_xlim(0, float(scores[value].max()) * 1.15 if len(scores) else 1)
    fig.tight_layout()
    return save_figure(fig, out, scores)
