"""Downstream use of synthetic contrasts: tumour segmentation with real vs synthetic inputs (spec section 7; the
paper's Fig. 4c, d).

A 2D MONAI U-Net (``monai.networks.nets.UNet``) is trained on the real contrasts of the training split (all the
prepared data's contrasts, in the manifest's order, one input channel each) to segment the whole tumour (every
non-zero label) and, when the labels hold several of BraTS' 1 (necrotic core), 2 (oedema), 4 (enhancing tumour),
each of those labels (one sigmoid output per class); asked to, it also segments the normal tissues
(``TISSUE_CLASSES``: CSF, grey and white matter, from the prepared ``tissue`` map the phantom provides). On the test
split we compare its Dice with all-real inputs against the Dice when contrasts are replaced by a run's synthetic
output: each synthesised contrast alone, then the first 2, 3, ... of them together (with one run per target
contrast this gives the paper's "1..4 replaced"), and, as a floor, the same contrasts replaced by zeros (a missing
contrast).

Dice is computed per subject over its test slices pooled (the subject's slab), then mean +- sd over subjects.
Everything is seeded (initialisation, batches, flips).
"""
from __future__ import annotations

from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Mapping, Sequence

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import torch
from torch import nn
from tqdm.auto import tqdm

from mudiff.data.phantom import TISSUE_LABELS
from mudiff.display.viz import PHANTOM_NOTE, overlay_rgb, save_figure

BRATS_LABELS = (1, 2, 4)
WHOLE = "whole tumour"
TISSUE_CLASSES = [(name, (TISSUE_LABELS[key],)) for name, key in (("CSF", "csf"), ("grey matter", "gm"),
                                                                     ("white matter", "wm"))]
"""Normal-tissue classes: their targets are values of the tissue map (``SegData.tissue``), not of the label."""
REAL = "all real"
ZERO = "zeros"


# ---- data --------------------------------------------------------------------------------------------------------
@dataclass
class SegData:
    """Slices of a prepared dataset with every contrast: images (N, C, H, W) float32 in [0, 1] (channels in the
    order of ``contrasts``), label (N, H, W) int, brain (N, H, W) {0, 1}; subjects, index (global slice index)
    and z per slice; tissue (N, H, W) int normal-tissue labels (0 none, 1 CSF, 2 grey, 3 white matter), None when
    the prepared data have no tissue map."""

    images: np.ndarray
    label: np.ndarray
    brain: np.ndarray
    contrasts: list[str]
    subjects: np.ndarray
    index: np.ndarray
    z: np.ndarray
    tissue: np.ndarray | None = None

    def __len__(self) -> int:
        return len(self.images)

    def replaced(self, replacements: Mapping[str, np.ndarray]) -> "SegData":
        """A copy whose channels named in ``replacements`` hold the given (N, H, W) images instead."""
        images = self.images.copy()
        for contrast, image in replacements.items():
            if contrast not in self.contrasts:
                raise ValueError(f"{contrast!r} is not one of the contrasts {self.contrasts}")
            if image.shape != images.shape[:1] + images.shape[2:]:
                raise ValueError(f"replacement for {contrast} has shape {image.shape}, need {images.shape[:1]} + "
                                 f"{images.shape[2:]}")
            images[:, self.contrasts.index(contrast)] = image
        return replace(self, images=images)


def load_split(root: str | Path, split: str, n: int | None = None, contrasts: Sequence[str] | None = None
               ) -> SegData:
    """The slices of ``split`` (train, val, test or all) of a prepared dataset with all its contrasts (or
    ``contrasts``, in that order); ``n``: evenly spaced slices only (all when None)."""
    from mudiff.data.prepare import load_manifest
    from mudiff.evaluation.analysis import spread_indices

    root = Path(root)
    manifest = load_manifest(root)
    contrasts = list(contrasts or manifest["contrasts"])
    missing = [c for c in contrasts if c not in manifest["contrasts"]]
    if missing:
        raise ValueError(f"{root} has no contrast(s) {missing}; available: {manifest['contrasts']}")
    table = pd.read_csv(root / "slices.csv", dtype={"subject": str, "split": str})
    if split != "all":
        table = table[table["split"] == split]
    if table.empty:
        raise ValueError(f"the {split} split of {root} holds no slice")
    table = table.iloc[spread_indices(len(table), n)]
    rows = table["index"].to_numpy(np.int64)
    arrays = {name: np.load(root / path, mmap_mode="r") for name, path in manifest["arrays"].items()}
    images = np.stack([np.asarray(arrays[c][rows], np.float32) for c in contrasts], axis=1)
    tissue = np.asarray(arrays["tissue"][rows]).astype(np.int64) if "tissue" in arrays else None
    return SegData(images, np.asarray(arrays["label"][rows]).astype(np.int64),
                   np.asarray(arrays["brain_mask"][rows]).astype(np.float32), contrasts,
                   table["subject"].to_numpy(), rows, table["z"].to_numpy(np.int64), tissue)


def tumour_classes(label: np.ndarray) -> list[tuple[str, tuple[int, ...]]]:
    """The segmentation outputs for labels seen in ``label``: the whole tumour (every non-zero label), and each of
    the BraTS labels 1/2/4 present when there is more than one label value. (name, label values) pairs."""
    present = tuple(int(v) for v in np.unique(label) if v != 0)
    if not present:
        raise ValueError("the labels hold no lesion: nothing to segment (healthy data?)")
    classes = [(WHOLE, present)]
    if len(present) > 1:
        classes += [(f"label {v}", (v,)) for v in BRATS_LABELS if v in present]
    return classes


def class_targets(label: np.ndarray, classes: Sequence[tuple[str, tuple[int, ...]]],
                  tissue: np.ndarray | None = None) -> np.ndarray:
    """(N, H, W) labels -> (N, K, H, W) float32 {0, 1}, one channel per class; the whole tumour is every non-zero
    label (also one the training labels did not hold); the classes of ``TISSUE_CLASSES`` take their values from the
    (N, H, W) ``tissue`` map instead."""
    in_tissue = [(name, tuple(values)) in TISSUE_CLASSES for name, values in classes]
    if any(in_tissue) and tissue is None:
        raise ValueError(f"the tissue classes {[c[0] for c, t in zip(classes, in_tissue) if t]} need a tissue map, "
                         "and the data have none (prepare subjects with <id>_tissue.nii.gz, such as the phantom's)")
    return np.stack([np.isin(tissue, values) if t else (label > 0 if name == WHOLE else np.isin(label, values))
                     for (name, values), t in zip(classes, in_tissue)], axis=1).astype(np.float32)


# ---- the network -------------------------------------------------------------------------------------------------
def build_unet(in_channels: int, out_channels: int, channels: Sequence[int] = (16, 32, 64, 128),
               num_res_units: int = 1) -> nn.Module:
    """MONAI's 2D U-Net: one level per entry of ``channels``, each but the last halving the resolution."""
    from monai.networks.nets import UNet

    if len(channels) < 2:
        raise ValueError(f"the U-Net needs at least two levels, got channels={list(channels)}")
    return UNet(spatial_dims=2, in_channels=in_channels, out_channels=out_channels, channels=tuple(channels),
                strides=(2,) * (len(channels) - 1), num_res_units=num_res_units)


@dataclass
class Segmenter:
    """A trained U-Net with its input contrasts (channel order) and output classes; ``losses``: one per step."""

    model: nn.Module
    contrasts: list[str]
    classes: list[tuple[str, tuple[int, ...]]]
    losses: list[float] = field(default_factory=list)

    @property
    def class_names(self) -> list[str]:
        return [name for name, _ in self.classes]

    @torch.no_grad()
    def predict(self, data: SegData, batch_size: int = 32) -> np.ndarray:
        """(N, K, H, W) bool: sigmoid > 0.5 per class."""
        if list(data.contrasts) != list(self.contrasts):
            raise ValueError(f"the data's contrasts {data.contrasts} differ from the U-Net's inputs {self.contrasts}")
        device = next(self.model.parameters()).device
        was = self.model.training
        self.model.eval()
        out = []
        try:
            for start in range(0, len(data), batch_size):
                x = torch.from_numpy(data.images[start:start + batch_size]).to(device)
                out.append((self.model(x) > 0).cpu().numpy())
        finally:
            self.model.train(was)
        return np.concatenate(out) if out else np.zeros((0, len(self.classes), *data.images.shape[2:]), bool)


def train_segmenter(train: SegData, channels: Sequence[int] = (16, 32, 64, 128), steps: int = 500,
                    batch_size: int = 16, lr: float = 1e-3, seed: int = 0, device: str = "cpu",
                    lesion_fraction: float = 0.5, num_res_units: int = 1, progress: bool = True,
                    classes: Sequence[tuple[str, tuple[int, ...]]] | None = None) -> Segmenter:
    """Train a U-Net on ``train`` (real contrasts) to segment ``classes`` (default: :func:`tumour_classes` of its
    labels; ``TISSUE_CLASSES`` need its tissue map) with MONAI's Dice loss plus binary cross-entropy, both with a
    sigmoid per class (the classes overlap: MONAI's DiceCELoss would apply a softmax cross-entropy to several
    channels), Dice over the batch; Adam, random left-right flips. Each batch draws ``lesion_fraction`` of its
    slices from those with a lesion (the rest from all slices), so that short runs see tumour. Seeded: same seed,
    same network."""
    from monai.losses import DiceLoss

    from mudiff.runtime import resolve_device

    if steps < 1 or batch_size < 1:
        raise ValueError(f"steps and batch_size must be >= 1, got {steps}, {batch_size}")
    if not 0 <= lesion_fraction <= 1:
        raise ValueError(f"lesion_fraction must lie in [0, 1], got {lesion_fraction}")
    dev = resolve_device(device)
    classes = tumour_classes(train.label) if classes is None else [(name, tuple(v)) for name, v in classes]
    targets = class_targets(train.label, classes, train.tissue)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = build_unet(len(train.contrasts), len(classes), channels, num_res_units).to(dev)
    optimiser = torch.optim.Adam(model.parameters(), lr=lr)
    dice_loss, bce = DiceLoss(sigmoid=True, batch=True), nn.BCEWithLogitsLoss()
    rng = np.random.default_rng(seed)
    with_lesion = np.flatnonzero(train.label.reshape(len(train), -1).any(1))
    n_lesion = int(round(batch_size * lesion_fraction)) if len(with_lesion) else 0
    model.train()
    losses = []
    for _ in tqdm(range(steps), desc="segmentation U-Net", disable=not progress, mininterval=2.0):
        idx = np.concatenate([rng.choice(with_lesion, n_lesion), rng.integers(0, len(train), batch_size - n_lesion)])
        x, y = train.images[idx], targets[idx]
        flip = rng.random(len(idx)) < 0.5
        flip = flip[:, None, None, None]
        x, y = np.where(flip, x[..., ::-1], x), np.where(flip, y[..., ::-1], y)
        x, y = torch.from_numpy(np.ascontiguousarray(x)).to(dev), torch.from_numpy(np.ascontiguousarray(y)).to(dev)
        logits = model(x)
        loss = dice_loss(logits, y) + bce(logits, y)
        optimiser.zero_grad(set_to_none=True)
        loss.backward()
        optimiser.step()
        losses.append(float(loss.detach()))
    model.eval()
    return Segmenter(model, list(train.contrasts), classes, losses)


# ---- Dice with real and synthetic inputs -------------------------------------------------------------------------
def dice(pred: np.ndarray, truth: np.ndarray) -> float:
    """2 |P & T| / (|P| + |T|) of two binary masks of the same shape; NaN when both are empty (nothing to find,
    nothing found: such units are left out of the means)."""
    pred, truth = np.asarray(pred, bool), np.asarray(truth, bool)
    if pred.shape != truth.shape:
        raise ValueError(f"shapes differ: {pred.shape} vs {truth.shape}")
    total = int(pred.sum()) + int(truth.sum())
    return float("nan") if total == 0 else 2.0 * int((pred & truth).sum()) / total


def synthesise_for(sampler, data: SegData, seed: int = 0, batch_size: int | None = None, progress: bool = False
                   ) -> dict[str, np.ndarray]:
    """A run's synthetic target for every slice of ``data`` (from the slices' real sources): {target: (N, H, W)}.
    Slices are seeded by their global index, as in :meth:`~mudiff.sample.Sampler.synthesise_dataset`."""
    from mudiff.evaluation.robustness import synthesise_sources

    missing = [c for c in (*sampler.sources, sampler.target) if c not in data.contrasts]
    if missing:
        raise ValueError(f"the data lack the run's contrast(s) {missing}")
    sampler.check_held_out(data.subjects, "the segmentation test data")
    sources = data.images[:, [data.contrasts.index(c) for c in sampler.sources]]
    return {sampler.target: synthesise_sources(sampler, sources, data.index.tolist(), seed, batch_size, progress,
                                               desc=f"synthesising {sampler.target}")}


def replacement_scenarios(synthetic: Mapping[str, Mapping[str, np.ndarray]], zero_baseline: bool = True
                          ) -> list[dict]:
    """The input sets to score: all real; per method (name -> {contrast: (N, H, W) synthetic}) each contrast alone,
    then its first 2, 3, ... contrasts together; and with ``zero_baseline`` the same contrast sets set to zero.
    Each scenario: {"scenario", "method", "replaced" (tuple of contrasts), "images" ({contrast: array})}."""
    scenarios = [{"scenario": REAL, "method": "real", "replaced": (), "images": {}}]
    sets: list[tuple[str, ...]] = []
    for method, images in synthetic.items():
        names = list(images)
        combos = [(c,) for c in names] + [tuple(names[:k]) for k in range(2, len(names) + 1)]
        for combo in combos:
            scenarios.append({"scenario": f"{method}: {'+'.join(combo)} synthetic", "method": method,
                              "replaced": combo, "images": {c: images[c] for c in combo}})
            if combo not in sets:
                sets.append(combo)
    if zero_baseline:
        for combo in sets:
            scenarios.append({"scenario": f"{ZERO}: {'+'.join(combo)} missing", "method": ZERO, "replaced": combo,
                              "images": None})
    return scenarios


@dataclass
class DiceResult:
    """subjects: one row per scenario, class and subject (dice, voxels); summary: one row per scenario and class
    (mean and sd over subjects with a value, their count, and the change from all-real inputs)."""

    subjects: pd.DataFrame
    summary: pd.DataFrame
    predictions: dict[str, np.ndarray]
    scenarios: list[dict]


def segmentation_dice(segmenter: Segmenter, data: SegData, synthetic: Mapping[str, Mapping[str, np.ndarray]],
                      zero_baseline: bool = True, batch_size: int = 32) -> DiceResult:
    """Dice of ``segmenter`` on ``data`` with real inputs and with the :func:`replacement_scenarios` of
    ``synthetic`` (method -> {contrast: (N, H, W) in [0, 1], aligned with ``data``'s slices})."""
    scenarios = replacement_scenarios(synthetic, zero_baseline)
    truth = class_targets(data.label, segmenter.classes, data.tissue).astype(bool)
    rows, predictions = [], {}
    for sc in scenarios:
        images = sc["images"] if sc["images"] is not None else {
            c: np.zeros(data.images.shape[:1] + data.images.shape[2:], np.float32) for c in sc["replaced"]}
        pred = segmenter.predict(data.replaced(images), batch_size)
        predictions[sc["scenario"]] = pred
        for subject in pd.unique(data.subjects):
            sel = data.subjects == subject
            for k, name in enumerate(segmenter.class_names):
                rows.append({"scenario": sc["scenario"], "method": sc["method"], "replaced": "+".join(sc["replaced"]),
                             "n_replaced": len(sc["replaced"]), "class": name, "subject": subject,
                             "dice": dice(pred[sel, k], truth[sel, k]), "true_pixels": int(truth[sel, k].sum()),
                             "predicted_pixels": int(pred[sel, k].sum()), "slices": int(sel.sum())})
    per_subject = pd.DataFrame(rows)
    g = per_subject.groupby(["scenario", "method", "replaced", "n_replaced", "class"], sort=False)["dice"]
    summary = pd.concat({"dice_mean": g.mean(), "dice_sd": g.std(ddof=1), "subjects": g.count()}, axis=1)
    summary = summary.reset_index()
    reference = summary[summary["scenario"] == REAL].set_index("class")["dice_mean"]
    summary["change_vs_real"] = summary["dice_mean"] - summary["class"].map(reference)
    return DiceResult(per_subject, summary, predictions, scenarios)


def plot_segmentation_dice(result: DiceResult, data: SegData, out: str | Path | None = None, title: str = "",
                           note: str = "") -> plt.Figure:
    """Left: Dice per class (groups) and input scenario (bars; mean over subjects, sd as error bars), the
    all-real reference as a dashed line. Below: the test slice with the largest tumour, with the whole-tumour
    ground truth and the prediction of each scenario. The CSV next to ``out`` is ``result.summary``."""
    summary = result.summary
    scenarios = list(dict.fromkeys(summary["scenario"]))
    classes = list(dict.fromkeys(summary["class"]))
    fig = plt.figure(figsize=(max(9.0, 2.0 * (len(scenarios) + 2)), 7.2))
    top, bottom = fig.subfigures(2, 1, height_ratios=[4.0, 2.6])
    ax = top.subplots()
    width = 0.8 / len(scenarios)
    colours = plt.get_cmap("tab10")
    for s, scenario in enumerate(scenarios):
        part = summary[summary["scenario"] == scenario].set_index("class").reindex(classes)
        x = np.arange(len(classes)) + (s - (len(scenarios) - 1) / 2) * width
        ax.bar(x, part["dice_mean"], width, yerr=part["dice_sd"], capsize=2, label=scenario,  # one subject: no bar
               color=colours(s % 10))
        for xi, v in zip(x, part["dice_mean"]):
            if np.isfinite(v):
                ax.text(xi, v, f"{v:.2f}", ha="center", va="bottom", fontsize=6)
    ref = summary[summary["scenario"] == REAL].set_index("class").reindex(classes)["dice_mean"]
    for k, v in enumerate(ref):
        ax.hlines(v, k - 0.45, k + 0.45, colors="black", linestyles="dashed", linewidth=0.8)
    ax.set_xticks(range(len(classes)), classes)
    ax.set_ylim(0, 1.05), ax.set_ylabel("Dice (per subject, mean +- sd; no sd bar from one subject)")
    ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1.0))
    n_sub = int(summary["subjects"].max()) if len(summary) else 0
    top.suptitle((title or f"tumour segmentation (MONAI U-Net on real contrasts) with real vs synthetic inputs; "
                 f"{n_sub} test subject(s); dashed: all real\n{PHANTOM_NOTE}") + (f"\n{note}" if note else ""),
                 fontsize=8)
    whole = result.subjects["class"].iloc[0] if len(result.subjects) else WHOLE
    k_class = classes.index(whole)
    areas = (data.label > 0).reshape(len(data), -1).sum(1)
    k = int(np.argmax(areas))
    panels = [("GT " + whole, data.label[k] > 0)] + [(sc, result.predictions[sc][k, k_class]) for sc in scenarios]
    axes = bottom.subplots(1, len(panels), squeeze=False)[0]
    base = data.images[k, -1]
    for ax_img, (name, mask) in zip(axes, panels):
        ax_img.imshow(overlay_rgb(base, mask.astype(np.uint8)), interpolation="nearest")
        ax_img.set_title(name, fontsize=6)
        ax_img.set_xticks([]), ax_img.set_yticks([])
    bottom.suptitle(f"{data.subjects[k]} z={data.z[k]}: {whole} (red) over {data.contrasts[-1]}", fontsize=7)
    return save_figure(fig, out, summary)


__all__ = ["SegData", "load_split", "tumour_classes", "TISSUE_CLASSES", "class_targets", "build_unet", "Segmenter",
           "train_segmenter", "dice", "synthesise_for", "replacement_scenarios", "DiceResult", "segmentation_dice",
           "plot_segmentation_dice", "WHOLE", "REAL", "ZERO"]
