"""Robustness to motion in a source contrast (spec section 7; the paper's Fig. 4a, b).

One source (FLAIR for the T1CE task) is corrupted with the seeded k-space motion simulator
(:func:`mudiff.evaluation.motion.motion_corrupt_batch`) at graded severities; every method synthesises the target from
the corrupted sources and is scored against the clean ground truth. The drop of a method at a severity is its score at
that severity minus its score at severity 0 (no motion), signed so that a positive drop is always a loss.

Every slice has one motion seed and one sampling seed at all severities and for all methods (common random
numbers): the only thing that changes along a curve is the severity of the same motion events.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Mapping, Sequence

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
from tqdm.auto import tqdm

from mudiff.display.viz import PHANTOM_NOTE, save_figure

SEVERITIES = (0.0, 0.25, 0.5, 0.75, 1.0)
SCORES = ("psnr_B", "ssim_B", "mae_B", "psnr_T", "ssim_T", "mae_T")


def synthesise_sources(sampler, sources: np.ndarray, slice_ids: Sequence[int], seed: int = 0,
                       batch_size: int | None = None, progress: bool = False, desc: str = "sampling") -> np.ndarray:
    """A :class:`~mudiff.sample.Sampler`'s final (mutual) result for sources (N, n, H, W) in [0, 1]: (N, H, W) in
    [0, 1], also for N = 0 (``Sampler.synthesise(...).mutual``, which is None then).

    Slice k is seeded with ``seed * SEED_STRIDE + slice_ids[k]``, as :meth:`~mudiff.sample.Sampler.synthesise_dataset`
    seeds a dataset item with global index ``slice_ids[k]``: the same slice gets the same noise here and there.
    ``batch_size`` None: the device's default (:func:`~mudiff.sample.seeded_batches`).
    """
    mutual = sampler.synthesise(sources, slice_ids, seed, batch_size, progress, desc).mutual
    return np.zeros((0, *sources.shape[2:]), np.float32) if mutual is None else mutual


def ensure_variant_run(run_dir: str | Path, out_dir: str | Path, variant: str = "single",
                       overrides: Sequence[str] = (), callbacks: list | None = None) -> Path:
    """Train ``run_dir``'s config with ``model.variant=variant`` (plus ``overrides``) into ``out_dir``, or read the
    finished run back when it is there already (:func:`mudiff.train.train` resumes or returns at once). The
    single-network baseline of the paper is ``variant="single"``. Returns ``out_dir``."""
    from mudiff.config import load_config
    from mudiff.train import train

    config = Path(run_dir) / "config.json"
    if not config.is_file():
        raise FileNotFoundError(f"{config} is missing: train the MU-Diff run of 01_training first")
    cfg = load_config(config, [f"model.variant={variant}", *overrides])
    out_dir = Path(out_dir)
    done = (out_dir / "checkpoints" / "last.pt").is_file()
    trainer = train(cfg, out_dir, callbacks=callbacks)
    print(f"{'read back' if done else 'trained'} the {variant} run {out_dir}: step {trainer.step}, "
          f"epoch {trainer.epoch}")
    return out_dir


@dataclass
class RobustnessResult:
    """Scores of every method at every severity.

    slices: one row per method, severity and slice (subject, slice, z and the metrics of ``SCORES``);
    table: one row per method and severity: the slice means of the metrics, their drops from severity 0
    (``drop_<metric>``, positive = worse) and the number of slices; source: one row per severity, the corrupted
    source against the clean one (brain metrics); examples: images of one slice for the figure.
    """

    slices: pd.DataFrame
    table: pd.DataFrame
    source: pd.DataFrame
    examples: dict
    corrupted: str
    target: str


def motion_robustness(samplers: Mapping[str, object], dataset, corrupt: str = "flair",
                      severities: Sequence[float] = SEVERITIES, n: int | None = None, seed: int = 0,
                      batch_size: int | None = None, progress: bool = True, protocol: str = "float",
                      **motion_kwargs) -> RobustnessResult:
    """Corrupt source ``corrupt`` of ``n`` evenly spaced dataset items (all when None) at each severity, synthesise
    with each sampler (name -> :class:`~mudiff.sample.Sampler` of the dataset's task) and score the results
    against the clean target (``protocol``: see :mod:`mudiff.evaluation.metrics`). Severity 0 is always evaluated (it is
    the reference of the drops); ``motion_kwargs`` go to :func:`mudiff.evaluation.motion.motion_corrupt`."""
    from mudiff.evaluation.analysis import spread_indices
    from mudiff.evaluation.metrics import HIGHER_IS_BETTER, slice_metrics
    from mudiff.evaluation.motion import motion_corrupt_batch
    from mudiff.sample import SEED_STRIDE

    if not samplers:
        raise ValueError("no sampler given")
    if corrupt not in dataset.sources:
        raise ValueError(f"{corrupt!r} is not a source of the task {dataset.task!r} (sources {dataset.sources})")
    for name, sampler in samplers.items():
        if list(sampler.sources) != list(dataset.sources) or sampler.target != dataset.target:
            raise ValueError(f"sampler {name!r} synthesises {sampler.target} from {sampler.sources}, the dataset "
                             f"{dataset.target} from {dataset.sources}")
        sampler.check_held_out(dataset.slice_table["subject"], f"the slices scored for {name!r}")
    levels = sorted({0.0, *map(float, severities)})
    if levels[0] < 0 or levels[-1] > 1:
        raise ValueError(f"severities must lie in [0, 1], got {list(severities)}")
    indices = spread_indices(len(dataset), n)
    items = [dataset[i] for i in indices]
    clean = np.stack([(it["sources"].numpy() + 1) / 2 for it in items])  # (N, n, H, W)
    target = np.stack([(it["target"][0].numpy() + 1) / 2 for it in items])
    brain = np.stack([it["brain_mask"][0].numpy() for it in items])
    lesion = np.stack([it["lesion_mask"][0].numpy() for it in items])
    subjects, ids = [it["subject"] for it in items], [int(it["index"]) for it in items]
    channel = dataset.sources.index(corrupt)
    motion_seeds = [seed * SEED_STRIDE + i for i in ids]
    show = int(np.argmax(lesion.reshape(len(items), -1).sum(1)))  # the example slice: the largest lesion
    examples = {"title": f"{subjects[show]} z={items[show]['z']}", "target": target[show], "brain": brain[show],
                "source": {}, "prediction": {name: {} for name in samplers}}

    frames, source_rows = [], []
    steps = tqdm(total=len(levels) * len(samplers), desc="severities x methods", disable=not progress,
                 mininterval=2.0)
    for level in levels:
        sources = clean.copy()
        sources[:, channel] = motion_corrupt_batch(clean[:, channel], level, motion_seeds, **motion_kwargs)
        examples["source"][level] = sources[show, channel]
        src = slice_metrics(sources[:, channel], clean[:, channel], brain, None, protocol, subjects)
        source_rows.append({"severity": level, **src[["psnr_B", "ssim_B", "mae_B"]].mean().to_dict(),
                            "slices": len(src)})
        for name, sampler in samplers.items():
            pred = synthesise_sources(sampler, sources, ids, seed, batch_size)
            examples["prediction"][name][level] = pred[show]
            df = slice_metrics(np.clip(pred, 0, 1), target, brain, lesion, protocol, subjects)
            df.insert(0, "method", name)
            df.insert(1, "severity", level)
            df.insert(4, "z", [it["z"] for it in items])
            frames.append(df)
            steps.update()
    steps.close()
    slices = pd.concat(frames, ignore_index=True)
    table = slices.groupby(["method", "severity"], sort=False)[list(SCORES)].mean()
    table["slices"] = slices.groupby(["method", "severity"], sort=False).size()
    order = {name: k for k, name in enumerate(samplers)}
    table = table.reset_index().sort_values(["method", "severity"], key=lambda c: c.map(order) if c.name == "method"
                                            else c, ignore_index=True)
    for col in SCORES:
        ref = table["method"].map(table[table["severity"] == 0.0].set_index("method")[col])
        sign = 1 if HIGHER_IS_BETTER[col.split("_")[0]] else -1
        table[f"drop_{col}"] = sign * (ref - table[col])
    table.attrs["protocol"] = protocol
    return RobustnessResult(slices, table, pd.DataFrame(source_rows), examples, corrupt, dataset.target)


def plot_robustness(result: RobustnessResult, metrics: Sequence[str] = ("psnr_B", "ssim_B"),
                    out: str | Path | None = None, title: str = "", note: str = "") -> plt.Figure:
    """Top: the example slice's corrupted source and each method's synthesis at every severity. Bottom: each
    metric vs severity per method (mean over slices), the drop in the first metric, and the corrupted source's
    PSNR against the clean one. The CSV next to ``out`` is ``result.table``."""
    from mudiff.evaluation.metrics import describe_protocol

    ex = result.examples
    levels = sorted(ex["source"])
    methods = list(ex["prediction"])
    fig = plt.figure(figsize=(max(2.0 * (len(levels) + 1), 3.2 * (len(metrics) + 2)), 2.0 * (1 + len(methods)) + 3.4))
    top, bottom = fig.subfigures(2, 1, height_ratios=[2.0 * (1 + len(methods)), 3.4])
    axes = top.subplots(1 + len(methods), len(levels) + 1, squeeze=False)
    rows = [(f"{result.corrupted} (corrupted)", ex["source"], None)]
    rows += [(name, ex["prediction"][name], ex["target"]) for name in methods]
    for r, (label, images, gt) in enumerate(rows):
        first = axes[r, 0]
        first.imshow(ex["target"] if gt is not None else images[0.0], cmap="gray", vmin=0, vmax=1)
        first.set_title(f"{result.target} (GT)" if gt is not None else f"{result.corrupted} (clean)", fontsize=7)
        first.set_ylabel(label, fontsize=8)
        for c, level in enumerate(levels, start=1):
            axes[r, c].imshow(images[level], cmap="gray", vmin=0, vmax=1)
            axes[r, c].set_title(f"severity {level:g}", fontsize=7)
        for ax in axes[r]:
            ax.set_xticks([]), ax.set_yticks([])
    top.suptitle((title or f"{result.target} synthesised with {result.corrupted} corrupted by k-space motion "
                 f"(example: {ex['title']})\n{PHANTOM_NOTE}") + (f"\n{note}" if note else ""), fontsize=8)
    panels = bottom.subplots(1, len(metrics) + 2)
    table = result.table
    for ax, col in zip(panels, [*metrics, f"drop_{metrics[0]}"]):
        for name in methods:
            part = table[table["method"] == name]
            ax.plot(part["severity"], part[col], marker="o", label=name)
        ax.set_xlabel("motion severity"), ax.set_title(col + (" (positive = worse)" if col.startswith("drop") else ""),
                                                       fontsize=8)
        ax.legend(fontsize=7)
    src = result.source
    panels[-1].plot(src["severity"], src["psnr_B"].clip(upper=60), marker="o", color="grey")
    panels[-1].set_xlabel("motion severity"), panels[-1].set_title(f"corrupted {result.corrupted} vs clean: PSNR_B "
                                                                  "(capped at 60 dB)", fontsize=8)
    n = int(table["slices"].max())
    bottom.suptitle(f"means over {n} slices; {describe_protocol(table.attrs.get('protocol', 'float'))}", fontsize=7)
    return save_figure(fig, out, table)


__all__ = ["SEVERITIES", "synthesise_sources", "ensure_variant_run", "RobustnessResult", "motion_robustness",
           "plot_robustness"]
