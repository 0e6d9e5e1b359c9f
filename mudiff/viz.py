"""Figures shared by the CLI demo and the notebooks. Every function returns the matplotlib Figure and, given
``out``, also writes it as PNG (and the numbers behind it as CSV where there are any)."""
from __future__ import annotations

from pathlib import Path
from typing import Sequence

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd

PHANTOM_NOTE = "phantom data: a controlled benchmark with known truth, not evidence about patients"
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
