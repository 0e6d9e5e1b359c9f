"""The paper's comparisons and ablations (spec sections 4 and 7; Fig. 3, Fig. 5e-i) as steps for the notebooks.

A comparison is a set of runs that differ from one base config (the MU-Diff run of ``01_training``) by a few
overrides: :data:`METHODS` (MU-Diff and the baselines), :data:`TIMESTEPS` (T = 2, 4, 8), :data:`CRITIC` (with and
without the critic) and :data:`COMPONENTS` (abl1-abl4). :func:`train_variants` trains the runs that are missing
and reuses every run folder that holds the same experiment (01's run, or a run an earlier notebook trained under
another name), so notebooks 03 and 06-08 share their runs. The other functions score runs on the same test slices
and draw the figures: results tables with paired tests and box plots (:func:`results_tables`), the qualitative
grid with zoomed lesion insets (:func:`qualitative_grid`), quality and sampling time per T
(:func:`timestep_table`, :func:`timestep_figure`) and FID / KID / domain feature distance (:func:`fid_table`,
:func:`fid_figure`).
"""
from __future__ import annotations

import json
import textwrap
import time
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import torch

from mudiff.config import RunConfig, apply_overrides, load_config
from mudiff.display.viz import PHANTOM_NOTE, QUICK_NOTE, save_figure
from mudiff.evaluation.evaluate import evaluate_runs, method_note, shared_data
from mudiff.evaluation.metrics import METRICS, REGIONS, aggregate, describe_protocol, slice_metrics, unit_scores

METHODS: dict[str, list[str]] = {
    "mudiff": [],
    "single": ["model.variant=single"],  # one network F1: supervised SynDiff (and abl1)
    "pix2pix": ["model.method=pix2pix"],
    "ddpm": ["model.method=ddpm"],
    "unet_l1": ["model.method=unet_l1"],
    "copy_source": ["model.method=copy_source"],
}
"""MU-Diff and the baselines of the comparison (Fig. 3, Table 1): run name -> overrides of the base config."""

def timestep_runs(timesteps: Sequence[int] = (2, 4, 8)) -> dict[str, list[str]]:
    """The timestep ablation (Fig. 5e): ``T<t>`` -> the override setting T = t."""
    if not timesteps or any(int(t) != t or t < 1 for t in timesteps):
        raise ValueError(f"timesteps must be positive integers, got {list(timesteps)}")
    return {f"T{t}": [f"model.num_timesteps={t}"] for t in timesteps}


TIMESTEPS = timestep_runs((2, 4, 8))
"""The timestep ablation of the paper (Fig. 5e): T = 2, 4, 8."""

CRITIC: dict[str, list[str]] = {"mudiff": [], "no_critic": ["train.use_critic=false"]}
"""MU-Diff with and without the critic (L_s only; Fig. 5f)."""

MASK_HEAD: dict[str, list[str]] = {"mudiff": [], "fixed_mask_head": ["model.mask_head=fixed"]}
"""MU-Diff with its base config's mask head and with the published code's fixed one, a random projection (spec
section 3: the learned head becomes the default once an ablation shows it no worse; the phantom study's config pins
the learned head, so there this is the ablation)."""

COMPONENTS: dict[str, list[str]] = {
    "abl1_single": ["model.variant=single"],
    "abl2_two_f1": ["model.variant=two_f1"],
    "abl3_no_tau": ["model.variant=no_tau"],
    "abl4_no_mask_loss": ["train.mask_loss=false"],
    "mudiff": [],
}
"""The component ablations (Fig. 5g-i) and the full model."""

BOOKKEEPING = ("data.root", "data.num_workers", "train.device", "train.compile", "train.compile_mode",
               "train.checkpoint_every", "train.log_every", "train.val_slices")
"""Config fields that do not change what a run learns: two runs that differ only here are the same experiment
(``data.root`` is compared as the resolved folder). All of them may change when a run is resumed."""


def _title(*parts: str, width: int = 160) -> str:
    """Non-empty ``parts`` as lines wrapped at ``width`` characters (long captions must not widen a figure)."""
    return "\n".join(textwrap.fill(p, width) for p in parts if p)


# ---- data and notes --------------------------------------------------------------------------------------------
def comparison_slices(data_dir: str | Path, slices_dir: str | Path, compare_slices_dir: str | Path | None = None,
                      size: int = 32, slices: int = 16) -> Path:
    """The prepared slices a comparison trains and tests on: ``slices_dir`` (01's data) when
    ``compare_slices_dir`` is None, else ``compare_slices_dir``, prepared from ``data_dir`` at ``size`` x ``size``
    (``slices`` middle axial slices per subject) with ``slices_dir``'s split and normalisation when missing (e.g. a
    32x32 copy for the CPU demo: the same subjects train, validate and test)."""
    if compare_slices_dir is None:
        return Path(slices_dir)
    from mudiff.data.prepare import load_manifest
    from mudiff.demo import ensure_slices

    manifest = load_manifest(slices_dir)
    plan = manifest["split"]
    return ensure_slices(data_dir, compare_slices_dir, size=size, slices=slices, seed=plan["seed"],
                         split=plan["fractions"], split_file=plan["split_file"],
                         normalization=manifest["preprocessing"].get("normalization", "percentile"))


def is_phantom(slices_dir: str | Path) -> bool:
    """Whether a prepared dataset was made from the phantom (its subject folder holds ``phantom.json``)."""
    from mudiff.data.prepare import load_manifest

    manifest = load_manifest(slices_dir)
    if (Path(manifest["source"]["data_dir"]) / "phantom.json").is_file():
        return True
    subjects = list(manifest["source"]["files"])
    return bool(subjects) and all(s.startswith("Phantom_") for s in subjects)


def figure_note(quick: bool, slices_dir: str | Path | None = None) -> str:
    """The caveat every title and caption of a comparison carries: the quick-profile note and the phantom note."""
    notes = [QUICK_NOTE] if quick else []
    if slices_dir is not None and is_phantom(slices_dir):
        notes.append(PHANTOM_NOTE)
    return "; ".join(notes)


def comparison_setup(data_dir, slices_dir, compare_slices_dir, size: int, slices: int, overrides: Sequence[str],
                     seed: int, device: str, quick: bool, figures: str | Path, torch_threads: int = 0
                     ) -> tuple[Path, list[str], str]:
    """The shared first cell of notebooks 03 and 06-08: threads, figure folder, the comparison slices (prepared
    when missing), the runs' overrides and the figure note. Returns (slices_dir, overrides, note)."""
    from mudiff.demo import run_overrides

    if torch_threads:
        torch.set_num_threads(torch_threads)
    Path(figures).mkdir(parents=True, exist_ok=True)
    folder = comparison_slices(data_dir, slices_dir, compare_slices_dir, size, slices)
    return Path(folder), run_overrides(overrides, folder, seed, device), figure_note(quick, folder)


# ---- configs and runs ------------------------------------------------------------------------------------------
def select(catalogue: Mapping[str, list[str]], names: Sequence[str] | None = None) -> dict[str, list[str]]:
    """The entries ``names`` of a catalogue such as :data:`METHODS` (all when None), in the order given."""
    if names is None:
        return dict(catalogue)
    unknown = [n for n in names if n not in catalogue]
    if unknown:
        raise ValueError(f"unknown run name(s) {unknown}; choose from {list(catalogue)}")
    return {n: list(catalogue[n]) for n in names}


def build_config(base: RunConfig | str | Path, overrides: Sequence[str] = ()) -> RunConfig:
    """``base`` (a RunConfig, a YAML/JSON config file or a run folder, whose ``config.json`` is read) with
    ``overrides`` (``section.key=value`` strings) applied; validated."""
    if isinstance(base, RunConfig):
        raw = base.to_dict()
    else:
        path = Path(base)
        if path.is_dir() or path.suffix not in (".yaml", ".yml", ".json"):  # a run folder
            path = path / "config.json"
            if not path.is_file():
                raise FileNotFoundError(f"{base} is not a run folder (no config.json): run 01_training first, or "
                                        "give a config file")
        raw = load_config(path).to_dict()
    return RunConfig.from_dict(apply_overrides(raw, list(overrides)))


def config_differences(a: RunConfig, b: RunConfig) -> list[str]:
    """The fields in which two configs differ as experiments (``BOOKKEEPING`` and fields that neither run reads
    ignored, roots resolved)."""
    diffs = [f"{name}: {x!r} != {y!r}" for name, (x, y) in a.differences(b, BOOKKEEPING).items()]
    if Path(a.data.root).resolve() != Path(b.data.root).resolve():
        diffs.append(f"data.root: {a.data.root!r} != {b.data.root!r}")
    return diffs


def _saved_config(run_dir: Path) -> RunConfig | None:
    path = run_dir / "config.json"
    return RunConfig.from_dict(json.loads(path.read_text())) if path.is_file() else None


def _checkpoint_step(run_dir: Path) -> int:
    path = run_dir / "checkpoints" / "last.pt"
    if not path.is_file():
        return 0
    return int(torch.load(path, map_location="cpu", weights_only=True, mmap=True)["step"])


def find_run(name: str, cfg: RunConfig, runs_root: str | Path, reuse: Sequence[str | Path] = ()) -> Path:
    """The folder of run ``name``: ``runs_root/name`` when it exists (it must hold the same experiment), else the
    first folder of ``reuse`` or of ``runs_root`` with a checkpoint and the same experiment, else
    ``runs_root/name`` (to be trained)."""
    own = Path(runs_root) / name
    saved = _saved_config(own)
    if saved is not None:
        diffs = config_differences(saved, cfg)
        if diffs:
            raise ValueError(f"{own} holds another experiment than the run {name!r} asked for ({'; '.join(diffs)});"
                             " delete the folder or choose another runs root")
        return own
    root = Path(runs_root)
    candidates = [Path(p) for p in reuse]
    if root.is_dir():
        candidates += sorted(p for p in root.iterdir() if p.is_dir())
    for folder in candidates:
        saved = _saved_config(folder)
        if saved is not None and (folder / "checkpoints" / "last.pt").is_file() and not config_differences(saved, cfg):
            return folder
    return own


def train_variants(base_config: RunConfig | str | Path, runs: Mapping[str, Sequence[str]], runs_root: str | Path,
                   common_overrides: Sequence[str] = (), reuse: Sequence[str | Path] = (),
                   callbacks: list[Callable[[dict[str, Any]], None]] | None = None) -> dict[str, Path]:
    """Train the runs that are missing; returns {name: run folder} in the order of ``runs``.

    Run ``name`` has the config ``base_config`` + ``common_overrides`` + ``runs[name]`` (all are built and
    validated before anything trains). Its folder is found by :func:`find_run`: a folder of ``reuse`` (e.g. the
    run of ``01_training``) or of ``runs_root`` that holds the same experiment is used as it is, otherwise
    ``runs_root/name``. Each folder then goes through :func:`mudiff.train.train`, which trains a new run, resumes
    an unfinished one and only reads back a finished one (no step is trained twice).
    """
    from mudiff.train import train

    configs = {name: build_config(base_config, [*common_overrides, *overrides]) for name, overrides in runs.items()}
    folders: dict[str, Path] = {}
    for name, cfg in configs.items():
        folder = find_run(name, cfg, runs_root, reuse)
        if folder != Path(runs_root) / name:  # another name's run: keep its own record, on this device
            saved = _saved_config(folder)
            saved.train.device = cfg.train.device
            cfg = saved
        before = _checkpoint_step(folder)
        trainer = train(cfg, folder, callbacks=callbacks)
        done = "trained" if trainer.step > before else "finished already"
        print(f"{name}: {folder} ({done}, step {trainer.step}; {method_note(cfg)})", flush=True)
        folders[name] = folder
    return folders


def describe_runs(run_dirs: Mapping[str, str | Path]) -> pd.DataFrame:
    """One row per run: name, folder, method (with MU-Diff's variant, T and critic mask head), trained steps,
    image size, width and data."""
    rows = []
    for name, folder in run_dirs.items():
        cfg = _saved_config(Path(folder))
        if cfg is None:
            raise FileNotFoundError(f"{folder} is not a run folder (no config.json)")
        rows.append({"run": name, "run_dir": str(folder), "method": method_note(cfg),
                     "steps": _checkpoint_step(Path(folder)), "image_size": cfg.model.image_size,
                     "base_channels": cfg.model.base_channels, "data": cfg.data.root, "task": cfg.data.task})
    return pd.DataFrame(rows)


# ---- scores ----------------------------------------------------------------------------------------------------
def runs_note(run_dirs: Mapping[str, str | Path]) -> str:
    """'label: method note; ...' of the runs, for captions (names MU-Diff's critic mask head)."""
    return "; ".join(f"{label}: {method_note(_saved_config(Path(p)))}" for label, p in run_dirs.items())


def results_tables(frames: Mapping[str, pd.DataFrame], prefix: str, out_dir: str | Path = "figures",
                   by: str = "subject", note: str = "", run_dirs: Mapping[str, str | Path] | None = None
                   ) -> pd.DataFrame:
    """Results tables and box plots per region (B, and T when any slice has a lesion) of scored runs.

    Writes ``<out_dir>/<prefix>_<region>.csv`` and ``.md`` (:func:`mudiff.evaluation.stats.results_table`: mean +- sd
    per run, best vs second best with paired t-test and Wilcoxon p-values over ``by``; caption with the protocol,
    ``note`` and, given ``run_dirs``, what each run is: :func:`runs_note`, which names MU-Diff's critic mask head),
    ``<prefix>_<region>.png`` (box plots, ``note`` in the title) and ``<prefix>_<region>_scores.csv``
    (the per-unit scores behind the boxes). Returns the tables stacked with a ``region`` column;
    ``attrs["captions"]`` holds each region's caption.
    """
    from mudiff.evaluation.stats import REGION_NAMES, box_plots, results_table, to_markdown, write_csv

    out_dir = Path(out_dir)
    tables = []
    for region in REGIONS:
        if all(df[f"psnr_{region}"].isna().all() for df in frames.values()):
            continue  # no lesion on these slices
        caption_note = "; ".join(s for s in (note, runs_note(run_dirs) if run_dirs else "") if s)
        table = results_table(dict(frames), region, by, caption_note)
        stem = out_dir / f"{prefix}_{region}"
        write_csv(table, stem.with_suffix(".csv"))
        to_markdown(table, stem.with_suffix(".md"))
        fig = box_plots(dict(frames), region, by)
        fig.suptitle(_title(f"{REGION_NAMES[region]}, per {by}; {describe_protocol(table.attrs['protocol'])}", note,
                            width=50 * len(METRICS)), fontsize=7)
        fig.tight_layout()
        save_figure(fig, stem.with_suffix(".png"))
        cols = [f"{m}_{region}" for m in METRICS]
        scores = pd.concat([unit_scores(df, by)[cols].reset_index().assign(run=label) for label, df in frames.items()])
        scores.to_csv(stem.with_name(stem.name + "_scores.csv"), index=False)
        tables.append(table.assign(region=region))
    if not tables:
        raise ValueError("no region has any score")
    result = pd.concat(tables, ignore_index=True)
    result.insert(0, "region", result.pop("region"))
    result.attrs["captions"] = {t["region"].iloc[0]: t.attrs["caption"] for t in tables}
    return result


# ---- Fig. 3: qualitative grid ----------------------------------------------------------------------------------
def lesion_slices(dataset, n: int) -> list[int]:
    """Positions of ``n`` slices of a TaskDataset with the largest lesions, one per subject first (evenly spaced
    slices when there is no lesion)."""
    rows = dataset.slice_table["index"].to_numpy()
    area = np.asarray(dataset.arrays["lesion_mask"][rows]).reshape(len(rows), -1).sum(1)
    if not area.any():
        return np.unique(np.linspace(0, len(rows) - 1, min(n, len(rows))).round().astype(int)).tolist()
    order = np.argsort(-area, kind="stable")
    subjects = dataset.slice_table["subject"].to_numpy()
    first, seen = [], set()
    for i in order:  # the largest lesion of each subject, then the next largest overall
        if area[i] > 0 and subjects[i] not in seen:
            first.append(int(i))
            seen.add(subjects[i])
    chosen = (first + [int(i) for i in order if int(i) not in first])[:n]
    return sorted(chosen)


def zoom_box(lesion: np.ndarray, min_size: int | None = None, margin: float = 0.5) -> tuple[slice, slice]:
    """A square box around the lesion mask (H, W), grown by ``margin`` of its size, at least ``min_size`` (default
    a quarter of the image) per side, inside the image (the image centre without a lesion)."""
    h, w = lesion.shape
    min_size = min_size or max(8, min(h, w) // 4)
    if lesion.any():
        ys, xs = np.nonzero(lesion)
        cy, cx = (ys.min() + ys.max() + 1) / 2, (xs.min() + xs.max() + 1) / 2
        side = max(ys.max() - ys.min() + 1, xs.max() - xs.min() + 1)
    else:
        cy, cx, side = h / 2, w / 2, 0
    side = int(min(max(round(side * (1 + margin)), min_size), h, w))
    y0 = int(np.clip(round(cy - side / 2), 0, h - side))
    x0 = int(np.clip(round(cx - side / 2), 0, w - side))
    return slice(y0, y0 + side), slice(x0, x0 + side)


def qualitative_grid(run_dirs: Mapping[str, str | Path], n_slices: int = 2, split: str = "test",
                     indices: Sequence[int] | None = None, seed: int = 0, batch_size: int | None = None,
                     device: str = "auto", out: str | Path | None = None, note: str = "", cell: float = 2.0
                     ) -> plt.Figure:
    """The Fig. 3 layout: one row per test slice, the ground truth then each run's result (MU-Diff: the mutual
    output), each with a zoomed inset of the lesion (its box drawn on the image) and SSIM_B / SSIM_T under it.

    Slices: ``indices`` (positions in the split) or the ``n_slices`` with the largest lesions
    (:func:`lesion_slices`). Writes the figure to ``out`` and the scores shown (PSNR, SSIM, MAE on B and T per
    slice and run, float protocol) next to it as CSV. Returns the Figure.
    """
    from matplotlib.patches import Rectangle

    from mudiff.data.dataset import TaskDataset
    from mudiff.sample import Sampler

    _, cfg = shared_data(run_dirs)
    dataset = TaskDataset(cfg.data.root, cfg.data.task, split)
    positions = list(indices) if indices is not None else lesion_slices(dataset, n_slices)
    items = [dataset[i] for i in positions]
    target = np.clip((np.stack([it["target"][0].numpy() for it in items]) + 1) / 2, 0, 1)
    brain = np.stack([it["brain_mask"][0].numpy() for it in items])
    lesion = np.stack([it["lesion_mask"][0].numpy() for it in items])
    subjects = [it["subject"] for it in items]
    images = {f"{dataset.target} (ground truth)": target}
    frames = []
    for label, folder in run_dirs.items():
        sampler = Sampler.from_checkpoint(folder, device=device)
        images[label] = sampler.synthesise_dataset(dataset, positions, seed=seed, batch_size=batch_size,
                                                   progress=False).mutual
        df = slice_metrics(images[label], target, brain, lesion, subjects=subjects)
        df.insert(0, "run", label)
        df.insert(2, "z", [it["z"] for it in items])
        df.insert(3, "index", [it["index"] for it in items])
        frames.append(df)
    table = pd.concat(frames, ignore_index=True)

    columns = list(images)
    # constrained layout: tight_layout ignores the insets and lets the score lines run into the next row
    fig, axes = plt.subplots(len(items), len(columns), figsize=(cell * len(columns), cell * 1.2 * len(items) + 0.6),
                             squeeze=False, layout="constrained")
    for r, it in enumerate(items):
        box = zoom_box(lesion[r] > 0.5)
        ys, xs = box
        h, w = target[r].shape
        # the inset goes into the corner farthest from the lesion box
        right = (xs.start + xs.stop) / 2 < w / 2
        bottom = (ys.start + ys.stop) / 2 < h / 2
        for c, name in enumerate(columns):
            ax, img = axes[r, c], images[name][r]
            ax.imshow(img, cmap="gray", vmin=0, vmax=1, interpolation="nearest")
            ax.set_xticks([]), ax.set_yticks([])
            ax.add_patch(Rectangle((xs.start - 0.5, ys.start - 0.5), xs.stop - xs.start, ys.stop - ys.start,
                                   fill=False, edgecolor="yellow", linewidth=0.8))
            inset = ax.inset_axes([0.6 if right else 0.0, 0.0 if bottom else 0.6, 0.4, 0.4])
            inset.imshow(img[box], cmap="gray", vmin=0, vmax=1, interpolation="nearest")
            inset.set_xticks([]), inset.set_yticks([])
            for spine in inset.spines.values():
                spine.set_edgecolor("yellow")
            if r == 0:
                ax.set_title(name, fontsize=8)
            if c == 0:
                ax.set_ylabel(f"{it['subject']}\nz={it['z']}", fontsize=7)
                ax.set_xlabel("SSIM_B / SSIM_T", fontsize=7)
            else:
                row = table[(table["run"] == name)].iloc[r]
                ax.set_xlabel(f"{_fmt(row['ssim_B'])} / {_fmt(row['ssim_T'])}", fontsize=7)
    fig.suptitle(_title(f"{dataset.target} synthesis on {split} slices; yellow box: the zoomed lesion region",
                        describe_protocol("float"), note, width=int(28 * cell * len(columns))), fontsize=7)
    return save_figure(fig, out, table)


def _fmt(value: float) -> str:
    return "n/a" if not np.isfinite(value) else f"{value:.3f}"


# ---- the scores explorer (03) ----------------------------------------------------------------------------------
def ranked_slices(frame: pd.DataFrame, metric: str, worst_first: bool = True) -> pd.DataFrame:
    """One run's per-slice scores (an :func:`evaluate_runs` frame) with a finite ``metric`` (e.g. ``psnr_B``),
    worst first or best first (MAE: lower is better; PSNR, SSIM: higher)."""
    if metric not in frame:
        raise ValueError(f"unknown metric {metric!r}; choose from {score_columns(frame)}")
    finite = frame[np.isfinite(frame[metric])]
    return finite.sort_values(metric, ascending=metric.startswith("mae") != worst_first, kind="stable")


def score_columns(frame: pd.DataFrame) -> list[str]:
    """The metric columns of a per-slice frame that hold any finite value (no T columns without lesions)."""
    return [f"{m}_{r}" for r in REGIONS for m in METRICS if np.isfinite(frame.get(f"{m}_{r}", [np.nan])).any()]


def scores_explorer(run_dirs: Mapping[str, str | Path], scores: Mapping[str, pd.DataFrame],
                    interactive: bool | None = None, out: str | Path | None = None, metric: str = "psnr_B",
                    seed: int = 0, batch_size: int | None = None, device: str = "auto", note: str = ""):
    """Find a run's worst (or best) test slices by a metric and see every run on them in the Fig. 3 layout.

    ``scores``: {label: per-slice frame} of :func:`evaluate_runs` on ``run_dirs``. Interactive: displays and
    returns widgets to pick the run, the metric, worst or best first and the rank. Headless: the first run's worst
    and best slice by ``metric`` as one :func:`qualitative_grid`, saved to ``out`` with its scores as CSV.
    """
    from mudiff.data.dataset import TaskDataset
    from mudiff.display.explore import is_interactive, show_figure, show_widget

    _, cfg = shared_data(run_dirs)
    test = TaskDataset(cfg.data.root, cfg.data.task, "test")
    position = {int(index): p for p, index in enumerate(test.slice_table["index"])}  # global index -> split position

    def grid(rows: Sequence[pd.Series], out: str | Path | None = None, caption: str = "") -> plt.Figure:
        return qualitative_grid(run_dirs, indices=[position[int(r["index"])] for r in rows], seed=seed,
                                batch_size=batch_size, device=device, out=out,
                                note="; ".join(p for p in (caption, note) if p))

    if not is_interactive(interactive):
        label = next(iter(scores))
        ranked = ranked_slices(scores[label], metric)
        worst, best = ranked.iloc[0], ranked.iloc[-1]
        return grid([worst, best], out, f"rows: {label}'s worst and best {metric} on the test split "
                                        f"({worst[metric]:.3g} and {best[metric]:.3g}); static view of the explorer")

    import ipywidgets as w

    pick_run = w.Dropdown(options=list(scores), description="run")
    pick_metric = w.Dropdown(options=score_columns(scores[pick_run.value]), value=metric, description="metric")
    pick_order = w.ToggleButtons(options=["worst first", "best first"], description="order")
    pick_rank = w.IntSlider(min=1, max=1, description="rank", continuous_update=False)  # 1: the worst (or best)
    shown, output, figures = w.Label(), w.Output(), {}  # figures: {split position: Figure}, each drawn once

    def ranked() -> pd.DataFrame:
        return ranked_slices(scores[pick_run.value], pick_metric.value, pick_order.value == "worst first")

    def draw(_=None) -> None:
        rows = ranked()
        row = rows.iloc[min(pick_rank.value, len(rows)) - 1]
        shown.value = (f"{row['subject']} z={int(row['z'])}: {pick_run.value} {pick_metric.value} = "
                       f"{row[pick_metric.value]:.4g}, rank {pick_rank.value} of {len(rows)} ({pick_order.value})")
        pos = position[int(row["index"])]
        if pos not in figures:
            figures[pos] = grid([row])
        with output:
            output.clear_output(wait=True)
            show_figure(figures[pos])

    def restart(_=None) -> None:
        if pick_rank.value != 1:
            pick_rank.value = 1  # redraws through its observer
        else:
            draw()
        pick_rank.max = len(ranked())

    pick_rank.observe(draw, "value")
    for widget in (pick_run, pick_metric, pick_order):
        widget.observe(restart, "value")
    restart()
    return show_widget(w.VBox([w.HBox([pick_run, pick_metric, pick_rank]), pick_order, shown, output]))


# ---- Fig. 5e: timesteps ----------------------------------------------------------------------------------------
def sampling_seconds(run_dir: str | Path, dataset, positions: Sequence[int], seed: int = 0,
                     batch_size: int | None = None, device: str = "auto", repeats: int = 3) -> float:
    """Wall-clock seconds per slice to synthesise ``positions`` of a dataset: the fastest of ``repeats`` passes
    (the least disturbed by other work on a shared machine), after one warm-up batch; CUDA work is finished when a
    pass returns (the outputs are copied to the host)."""
    from mudiff.sample import Sampler, resolve_batch_size

    sampler = Sampler.from_checkpoint(run_dir, device=device)
    positions = list(positions)
    warm_up = positions[:resolve_batch_size(batch_size, sampler.device)]
    sampler.synthesise_dataset(dataset, warm_up, seed=seed, batch_size=batch_size, progress=False)
    times = []
    for _ in range(max(1, repeats)):
        start = time.perf_counter()
        sampler.synthesise_dataset(dataset, positions, seed=seed, batch_size=batch_size, progress=False)
        times.append(time.perf_counter() - start)
    return min(times) / len(positions)


def timestep_table(run_dirs: Mapping[str, str | Path], split: str = "test", max_slices: int | None = None,
                   seed: int = 0, batch_size: int | None = None, device: str = "auto", by: str = "subject",
                   timing_slices: int = 16, repeats: int = 3, progress: bool = True) -> pd.DataFrame:
    """Quality and sampling cost of runs that differ in T (Fig. 5e), one row per run.

    Columns: run, T, network_evaluations (per slice), ``<metric>_<region>`` (mean over ``by``), ``..._sd``,
    ``n_B`` / ``n_T`` (units with a value), sampling_s_per_slice (fastest of ``repeats`` timed passes over the
    first ``timing_slices`` slices of the split, batch ``batch_size``, after a warm-up) and device.
    ``attrs["caption"]`` says how the numbers were made.
    """
    from mudiff.data.dataset import TaskDataset
    from mudiff.runtime import resolve_device
    from mudiff.sample import resolve_batch_size

    configs, cfg = shared_data(run_dirs)
    frames = evaluate_runs(run_dirs, split, max_slices, seed, batch_size, device, progress=progress)
    dataset = TaskDataset(cfg.data.root, cfg.data.task, split)
    timed = list(range(min(timing_slices, len(dataset))))
    rows = []
    for label, folder in run_dirs.items():
        stats = aggregate(frames[label], by)
        summary = json.loads((Path(folder) / "eval" / f"{split}_summary.json").read_text())  # from evaluate_runs
        row: dict[str, Any] = {"run": label, "T": configs[label].model.num_timesteps,
                               "network_evaluations": summary["network_evaluations_per_slice"]}
        for region in REGIONS:
            for metric in METRICS:
                col = f"{metric}_{region}"
                row[col], row[f"{col}_sd"] = stats.loc[col, "mean"], stats.loc[col, "sd"]
            row[f"n_{region}"] = int(stats.loc[f"psnr_{region}", "n"])
        row["sampling_s_per_slice"] = sampling_seconds(folder, dataset, timed, seed, batch_size, device, repeats)
        row["device"] = str(resolve_device(device))
        rows.append(row)
    table = pd.DataFrame(rows)
    caption = (f"mean ± sd over {by}s of the {split} split; sampling time: fastest of {repeats} passes over "
               f"{len(timed)} slices, batch {resolve_batch_size(batch_size, resolve_device(device))}, on "
               f"{rows[0]['device']}, per slice. "
               f"{describe_protocol(frames[next(iter(frames))].attrs['protocol'])}")
    table.attrs["caption"] = caption
    return table


def timestep_figure(table: pd.DataFrame, out: str | Path | None = None, note: str = "") -> plt.Figure:
    """PSNR and SSIM (B, T; mean +- sd) and sampling seconds per slice against T, from :func:`timestep_table`;
    writes the figure and the table (CSV) to ``out``."""
    t = table.sort_values("T")
    panels = [c for c in ("psnr_B", "ssim_B", "psnr_T", "ssim_T") if t[c].notna().any()]
    fig, axes = plt.subplots(1, len(panels) + 1, figsize=(3.0 * (len(panels) + 1), 3.0))
    for ax, col in zip(axes, panels):
        ax.errorbar(t["T"], t[col], yerr=t[f"{col}_sd"], marker="o", capsize=3)
        ax.set_title(col, fontsize=9), ax.set_xlabel("T (denoising steps)")
        ax.set_xticks(t["T"])
    ax = axes[-1]
    ax.bar(t["T"].astype(str), t["sampling_s_per_slice"], color="tab:gray")
    for x, (s, nfe) in enumerate(zip(t["sampling_s_per_slice"], t["network_evaluations"])):
        ax.annotate(f"{nfe} NFE", (x, s), ha="center", va="bottom", fontsize=7)
    ax.set_title(f"sampling s / slice ({t['device'].iloc[0]})", fontsize=9), ax.set_xlabel("T")
    fig.suptitle(_title("MU-Diff timestep ablation (Fig. 5e)", table.attrs.get("caption", ""), note,
                        width=45 * (len(panels) + 1)), fontsize=7)
    fig.tight_layout()
    return save_figure(fig, out, table)


# ---- Fig. 5f: FID / KID ----------------------------------------------------------------------------------------
def _targets(dataset, positions: Sequence[int]) -> np.ndarray:
    """(N, H, W) ground-truth targets in [0, 1] of some positions of a TaskDataset."""
    return np.clip((np.stack([dataset[i]["target"][0].numpy() for i in positions]) + 1) / 2, 0, 1)


def _spread(n_items: int, n: int | None) -> list[int]:
    count = n_items if n is None else min(n, n_items)
    return np.unique(np.linspace(0, n_items - 1, count).round().astype(int)).tolist()


def fid_table(run_dirs: Mapping[str, str | Path], split: str = "test", max_slices: int | None = None,
              seed: int = 0, batch_size: int | None = None, device: str = "auto", feature_batch_size: int = 16,
              domain_epochs: int = 20, domain_train_slices: int | None = None) -> pd.DataFrame:
    """FID and KID (standard Inception features) and the domain feature distance of each run's results against
    the real targets of the same ``max_slices`` slices of ``split`` (evenly spaced; all when None), so every
    compared set has the same n. A reference row scores real slices of the ``val`` split (same n where the split
    allows) against the same real slices: the value of two real sets of this size (FID and KID are biased at
    small n). The domain encoder (:func:`mudiff.evaluation.fid.train_domain_encoder`) is trained on the targets of the
    ``train`` split only (``domain_train_slices`` evenly spaced ones; all when None).

    Columns: set, kind (synthetic / real reference), method, fid, kid_mean, kid_std, n_real, n_fake,
    kid_subset_size, domain_feature_distance. ``attrs["caption"]`` says what was computed how.
    """
    from mudiff.data.dataset import TaskDataset
    from mudiff.evaluation import fid
    from mudiff.sample import Sampler

    configs, cfg = shared_data(run_dirs)
    test = TaskDataset(cfg.data.root, cfg.data.task, split)
    positions = _spread(len(test), max_slices)
    real = _targets(test, positions)
    val = TaskDataset(cfg.data.root, cfg.data.task, "val")
    sets = {"real (val split)": _targets(val, _spread(len(val), len(positions)))}
    for label, folder in run_dirs.items():
        sampler = Sampler.from_checkpoint(folder, device=device)
        sets[label] = sampler.synthesise_dataset(test, positions, seed=seed, batch_size=batch_size,
                                                 progress=False).mutual
    train_set = TaskDataset(cfg.data.root, cfg.data.task, "train")
    encoder, _ = fid.train_domain_encoder(_targets(train_set, _spread(len(train_set), domain_train_slices)),
                                          epochs=domain_epochs, seed=seed, device=device)
    inception = fid.inception(device)
    real_inception = fid.extract_features(real, inception, feature_batch_size, device)
    real_domain = fid.domain_features(encoder, real, device=device)
    rows = []
    for label, images in sets.items():
        scores = fid.fid_kid_from_features(real_inception, fid.extract_features(images, inception,
                                                                                feature_batch_size, device),
                                           seed=seed)
        reference = label not in run_dirs
        rows.append({"set": label, "kind": "real reference" if reference else "synthetic",
                     "method": "real slices" if reference else method_note(configs[label]),
                     "fid": scores["fid"], "kid_mean": scores["kid_mean"], "kid_std": scores["kid_std"],
                     "n_real": scores["n_real"], "n_fake": scores["n_fake"],
                     "kid_subset_size": scores["kid_subset_size"],
                     "domain_feature_distance": fid.frechet_distance(real_domain,
                                                                     fid.domain_features(encoder, images,
                                                                                         device=device))})
    table = pd.DataFrame(rows)
    caption = (f"FID / KID: standard TF-Inception pool features (2048-d), each set against the real targets of "
               f"the same {len(positions)} {split} slices; biased at small n: compare equal n only. "
               f"domain_feature_distance: Fréchet distance of features of a {fid.DOMAIN_LABEL}, trained "
               f"{domain_epochs} epochs; not FID.")
    table.attrs["caption"] = caption
    return table


def fid_figure(table: pd.DataFrame, out: str | Path | None = None, note: str = "") -> plt.Figure:
    """Bars of FID, KID (+- sd over subsets) and the domain feature distance per synthetic set, the real
    reference as a dashed line, n in the labels; writes the figure and the table (CSV) to ``out``."""
    syn = table[table["kind"] == "synthetic"]
    ref = table[table["kind"] != "synthetic"]
    labels = [f"{s}\n(n={n})" for s, n in zip(syn["set"], syn["n_fake"])]
    fig, axes = plt.subplots(1, 3, figsize=(11, 3.4))
    for ax, col, err, title in ((axes[0], "fid", None, "FID (Inception)"),
                                (axes[1], "kid_mean", "kid_std", "KID (Inception), ± sd over subsets"),
                                (axes[2], "domain_feature_distance", None, "domain feature distance (not FID)")):
        ax.bar(labels, syn[col], yerr=None if err is None else syn[err], capsize=3,
               color=[f"C{i}" for i in range(len(syn))])
        if len(ref):
            ax.axhline(float(ref[col].iloc[0]), color="k", linestyle="--", linewidth=1,
                       label=f"{ref['set'].iloc[0]} (n={int(ref['n_fake'].iloc[0])})")
            ax.legend(fontsize=7)
        ax.set_title(title, fontsize=9)
        ax.tick_params(axis="x", labelsize=7)
    fig.suptitle(_title(f"lower is better; every set vs the same {int(syn['n_real'].iloc[0])} real slices",
                        note, width=150), fontsize=7)
    fig.tight_layout()
    return save_figure(fig, out, table)


__all__ = ["METHODS", "TIMESTEPS", "CRITIC", "COMPONENTS", "BOOKKEEPING", "QUICK_NOTE", "timestep_runs",
           "comparison_slices", "is_phantom", "figure_note", "select", "build_config", "config_differences",
           "find_run", "train_variants", "describe_runs", "evaluate_runs", "runs_note", "results_tables",
           "lesion_slices", "zoom_box", "qualitative_grid", "ranked_slices", "score_columns", "scores_explorer",
           "sampling_seconds", "timestep_table", "timestep_figure", "fid_table", "fid_figure"]
