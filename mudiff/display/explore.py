"""Interactive explorers for the notebooks (ipywidgets) that degrade to a static figure when nothing shows widgets.

Whether a notebook is interactive is decided once, by :func:`is_interactive`: an explicit ``INTERACTIVE``
notebook parameter wins; otherwise a run launched by :func:`mudiff.reproduce.reproduce` (papermill) is headless
(it sets ``MUDIFF_HEADLESS=1`` for its kernels), and anything else is interactive only inside a Jupyter kernel.
Headless, an explorer draws the figure its default view would show, saves it (PNG + CSV) and returns it, so an
executed notebook holds a picture instead of a widget's text.
"""
from __future__ import annotations

import os
import time
from functools import cached_property
from pathlib import Path
from typing import Any, Sequence

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
from matplotlib.figure import Figure

from mudiff.display import viz

HEADLESS_ENV = "MUDIFF_HEADLESS"


# ---- interactivity ---------------------------------------------------------------------------------------------
def in_kernel() -> bool:
    """True inside a Jupyter (IPython) kernel, False in a plain interpreter or an IPython terminal."""
    try:
        from IPython import get_ipython
    except ImportError:
        return False
    shell = get_ipython()
    return shell is not None and "IPKernelApp" in shell.config


def is_interactive(flag: bool | None = None) -> bool:
    """Whether widgets will be seen: ``flag`` when given, else False under ``MUDIFF_HEADLESS=1``, else whether
    this runs in a Jupyter kernel."""
    if flag is not None:
        return bool(flag)
    if os.environ.get(HEADLESS_ENV, "") not in ("", "0"):
        return False
    return in_kernel()


def console_progress() -> None:
    """Make ``tqdm.auto`` give text bars (throttled stderr lines) instead of notebook widgets.

    A headless kernel records a widget bar as its first frame only; text bars end up in papermill's log and the
    executed notebook. Affects modules that import ``tqdm.auto`` afterwards, so call it before importing them.
    """
    import tqdm.auto
    import tqdm.std

    tqdm.auto.tqdm = tqdm.std.tqdm
    tqdm.auto.trange = tqdm.std.trange


def start_notebook(interactive: bool | None = None) -> Path:
    """What every notebook does first: work in the project root when the kernel started in its ``notebooks/``
    folder (JupyterLab starts a kernel next to its notebook, papermill here runs in the root), so relative
    parameters such as ``data/phantom`` name the same folders both ways; text progress bars when headless (see
    :func:`console_progress`). Returns the working directory."""
    here = Path.cwd()
    if here.name == "notebooks" and (here.parent / "configs").is_dir():
        os.chdir(here.parent)
        print(f"working directory: {here.parent}")
    if not is_interactive(interactive):
        console_progress()
    return Path.cwd()


def show_widget(widget):
    """Display an explorer's widget box in the notebook and return it."""
    from IPython.display import display

    display(widget)
    return widget


def show_figure(fig: Figure) -> None:
    """Display ``fig`` (inside an explorer's Output widget) and close it, so pyplot does not show it again."""
    from IPython.display import display

    display(fig)
    plt.close(fig)


# ---- the prepared slices ---------------------------------------------------------------------------------------
class SliceStore:
    """Read-only view of a prepared slice dataset (``python -m mudiff prepare``) for figures: all contrasts,
    labels and masks by global slice index, memory-mapped."""

    def __init__(self, root: str | Path):
        from mudiff.data.prepare import load_manifest

        self.root = Path(root)
        self.manifest = load_manifest(self.root)
        self.table = pd.read_csv(self.root / "slices.csv", dtype={"subject": str, "split": str})
        self.contrasts: list[str] = list(self.manifest["contrasts"])

    @cached_property
    def arrays(self) -> dict[str, np.ndarray]:
        return {name: np.load(self.root / file, mmap_mode="r") for name, file in self.manifest["arrays"].items()}

    def __repr__(self) -> str:
        counts = self.manifest["counts"]
        size = self.manifest["preprocessing"]["size"]
        return (f"SliceStore({str(self.root)!r}: {counts['subjects']} subjects, {counts['slices']} slices of "
                f"{size}x{size}, contrasts {self.contrasts})")

    def subjects(self, split: str | None = None) -> list[str]:
        """Subject ids (of one split), in the order of the dataset."""
        table = self.table if split is None else self.table[self.table["split"] == split]
        return list(dict.fromkeys(table["subject"]))

    def rows(self, subject: str) -> np.ndarray:
        """Global slice indices of a subject, inferior to superior."""
        part = self.table[self.table["subject"] == subject].sort_values("z")
        if part.empty:
            raise ValueError(f"subject {subject!r} is not in {self.root}; known: {self.subjects()[:10]}")
        return part["index"].to_numpy()

    def image(self, contrast: str, row: int) -> np.ndarray:
        return np.asarray(self.arrays[contrast][row])

    def label(self, row: int) -> np.ndarray:
        return np.asarray(self.arrays["label"][row])

    def brain(self, row: int) -> np.ndarray:
        return np.asarray(self.arrays["brain_mask"][row])

    def lesion_row(self, subject: str) -> int:
        """The subject's slice with the largest lesion (the middle slice when it has none)."""
        rows = self.rows(subject)
        area = np.asarray(self.arrays["lesion_mask"][rows]).reshape(len(rows), -1).sum(1)
        return int(rows[int(np.argmax(area))] if area.max() > 0 else rows[len(rows) // 2])

    def view(self, row: int, title: str = "") -> dict[str, Any]:
        """One slice as a row of :func:`mudiff.display.viz.plot_data_overview`."""
        return {"title": title or self.describe(row), "images": {c: self.image(c, row) for c in self.contrasts},
                "label": self.label(row), "brain_mask": self.brain(row)}

    def describe(self, row: int) -> str:
        r = self.table.loc[self.table["index"] == row].iloc[0]
        return f"{r['subject']}\n{r['split']}, z={r['z']}"

    def split_counts(self) -> pd.DataFrame:
        """Subjects and slices per split."""
        counts = self.table.groupby("split", sort=False).agg(subjects=("subject", "nunique"),
                                                             slices=("index", "size"))
        order = [s for s in ("train", "val", "test") if s in counts.index]
        counts = counts.reindex(order).reset_index()
        total = pd.DataFrame([{"split": "total", "subjects": counts["subjects"].sum(),
                               "slices": counts["slices"].sum()}])
        return pd.concat([counts, total], ignore_index=True)


def overview(store: SliceStore, n_subjects: int = 3, out: str | Path | None = None) -> Figure:
    """Every contrast, the label overlay and the brain mask of the largest-lesion slice of a few subjects, taken
    from each split in turn (train, val, test, train, ...)."""
    per_split = [store.subjects(s) for s in ("train", "val", "test")]
    chosen: list[str] = []
    while len(chosen) < n_subjects and any(per_split):
        for ids in per_split:
            if ids and len(chosen) < n_subjects:
                chosen.append(ids.pop(0))
    views = [store.view(store.lesion_row(s)) for s in chosen]
    overlay_on = "t1ce" if "t1ce" in store.contrasts else store.contrasts[-1]
    return viz.plot_data_overview(views, store.contrasts, overlay_on, out=out)


def intensity_histograms(store: SliceStore, bins: int = 64, max_slices_per_split: int | None = None,
                         seed: int = 0) -> pd.DataFrame:
    """Density of each contrast's intensities inside the brain mask, per split.

    ``max_slices_per_split`` subsamples slices (seeded) to keep it quick; None uses every slice. Returns columns
    contrast, split, voxels, bin_left, bin_right, density.
    """
    edges = np.linspace(0.0, 1.0, bins + 1)
    rng = np.random.default_rng(seed)
    records = []
    for split in ("train", "val", "test"):
        rows = store.table.loc[store.table["split"] == split, "index"].to_numpy()
        if not len(rows):
            continue
        if max_slices_per_split is not None and len(rows) > max_slices_per_split:
            rows = rng.choice(rows, max_slices_per_split, replace=False)
        rows = np.sort(rows)
        mask = np.asarray(store.arrays["brain_mask"][rows]) > 0
        for contrast in store.contrasts:
            values = np.asarray(store.arrays[contrast][rows])[mask]
            density, _ = np.histogram(values, bins=edges, density=True)
            records += [{"contrast": contrast, "split": split, "voxels": int(values.size), "bin_left": lo,
                         "bin_right": hi, "density": d} for lo, hi, d in zip(edges[:-1], edges[1:], density)]
    return pd.DataFrame(records)


# ---- the slice explorer ----------------------------------------------------------------------------------------
def _slice_figure(store: SliceStore, row: int, contrast: str, show_label: bool) -> Figure:
    names = store.contrasts if contrast == "all" else [contrast]
    images = [store.image(c, row) for c in names]
    if show_label:
        images = [viz.overlay_rgb(im, store.label(row)) for im in images]
    fig = viz.image_grid([images + [store.brain(row).astype(np.float32)]], [*names, "brain mask"],
                         [store.describe(row)], cell=2.6 if contrast == "all" else 3.6)
    return fig


def slice_explorer(root: str | Path, interactive: bool | None = None, out: str | Path | None = None,
                   subject: str | None = None, n_static: int = 4):
    """Browse a prepared dataset: subject, slice, contrast (or all) and the label overlay.

    Interactive: displays and returns an ipywidgets box. Headless: returns a
    static figure of ``n_static`` evenly spaced slices of ``subject`` (default: the first test subject) with every
    contrast and the label overlay, saved to ``out`` with the slices shown as CSV.
    """
    store = SliceStore(root)
    subject = subject or (store.subjects("test") or store.subjects())[0]
    if not is_interactive(interactive):
        rows = store.rows(subject)
        picks = rows[np.unique(np.linspace(0, len(rows) - 1, min(n_static, len(rows))).round().astype(int))]
        overlay_on = "t1ce" if "t1ce" in store.contrasts else store.contrasts[-1]
        grid = [[store.image(c, r) for c in store.contrasts] + [viz.overlay_rgb(store.image(overlay_on, r),
                                                                                store.label(r))] for r in picks]
        z_of = store.table.set_index("index")["z"]
        fig = viz.image_grid(grid, [*store.contrasts, f"label on {overlay_on}"], [f"z={z_of[r]}" for r in picks],
                             suptitle=f"{subject}: evenly spaced slices (static view of the explorer)")
        table = store.table.set_index("index").loc[picks].reset_index()
        return viz.save_figure(fig, out, table)

    import ipywidgets as w

    subjects = store.subjects()
    pick_subject = w.Dropdown(options=subjects, value=subject, description="subject")
    pick_slice = w.IntSlider(min=0, max=len(store.rows(subject)) - 1, value=len(store.rows(subject)) // 2,
                             description="slice", continuous_update=False)
    pick_contrast = w.ToggleButtons(options=[*store.contrasts, "all"], value="all", description="contrast")
    show_label = w.Checkbox(value=True, description="label overlay")
    output = w.Output()

    def draw(_=None) -> None:
        rows = store.rows(pick_subject.value)
        with output:
            output.clear_output(wait=True)
            show_figure(_slice_figure(store, int(rows[min(pick_slice.value, len(rows) - 1)]), pick_contrast.value,
                                   show_label.value))

    def new_subject(_=None) -> None:
        pick_slice.max = len(store.rows(pick_subject.value)) - 1
        draw()

    pick_subject.observe(new_subject, "value")
    for widget in (pick_slice, pick_contrast, show_label):
        widget.observe(draw, "value")
    draw()
    return show_widget(w.VBox([w.HBox([pick_subject, pick_slice, show_label]), pick_contrast, output]))


# ---- live training curves --------------------------------------------------------------------------------------
class LivePlot:
    """A :func:`mudiff.train.train` callback that redraws the loss curves at most every ``every_s`` seconds.

    Headless it only collects the records (the notebook draws the final figure once, from ``stats.jsonl``).
    """

    def __init__(self, interactive: bool | None = None, every_s: float = 10.0,
                 keys: Sequence[str] = ("loss_g", "loss_d", "l1")):
        self.interactive = is_interactive(interactive)
        self.every_s, self.keys = every_s, tuple(keys)
        self.records: list[dict] = []
        self._handle, self._last = None, 0.0

    def __call__(self, record: dict) -> None:
        self.records.append(record)
        if self.interactive and time.monotonic() - self._last >= self.every_s:
            self.draw()

    def figure(self) -> Figure:
        # A pyplot figure (so that the inline backend has registered its PNG formatter), closed at once so that
        # the inline backend does not show it again at the end of the cell.
        fig = plt.figure(figsize=(6, 2.8))
        plt.close(fig)
        ax = fig.add_subplot()
        train = pd.DataFrame([r for r in self.records if "sec_per_step" in r])  # log lines, not validations
        for key in self.keys:
            if key in train:
                ax.plot(train["step"], train[key], label=key)
        val = [r for r in self.records if "val_psnr_mutual" in r]
        title = f"step {self.records[-1]['step']}" if self.records else "waiting for the first log step"
        if val:
            title += f"; val PSNR mutual {val[-1]['val_psnr_mutual']:.2f} dB"
        ax.set_xlabel("step"), ax.set_title(title, fontsize=9)
        if len(train):
            ax.legend(fontsize=7)
        fig.tight_layout()
        return fig

    def draw(self) -> None:
        from IPython.display import display

        self._last = time.monotonic()
        fig = self.figure()
        if self._handle is None:
            self._handle = display(fig, display_id=True)
        else:
            self._handle.update(fig)


# ---- the synthesis explorer ------------------------------------------------------------------------------------
class SynthesisCache:
    """Synthesises single items of a dataset with a sampler, remembering (index, seed) results."""

    def __init__(self, sampler, dataset):
        self.sampler, self.dataset = sampler, dataset
        self._done: dict[tuple[int, int], dict] = {}

    def row(self, index: int, seed: int, title: str | None = None) -> dict:
        key = (int(index), int(seed))
        if key not in self._done:
            item = self.dataset[index]
            syn = self.sampler.synthesise_dataset(self.dataset, [index], seed=seed, batch_size=1, progress=False)
            self._done[key] = {"sources": (item["sources"].numpy() + 1) / 2,
                               "target": (item["target"][0].numpy() + 1) / 2,
                               "x_p1": syn.x_p1[0], "x_p2": None if syn.x_p2 is None else syn.x_p2[0],
                               "mutual": syn.mutual[0], "brain_mask": item["brain_mask"][0].numpy(),
                               "subject": item["subject"], "z": item["z"]}
        row = dict(self._done[key])
        row["title"] = title or f"{row['subject']}\nz={row['z']}, seed {seed}"
        return row


def _errors_table(rows: Sequence[dict]) -> pd.DataFrame:
    records = []
    for r in rows:
        mask = r["brain_mask"] > 0.5
        rec = {"slice": r["title"]}
        for key in ("x_p1", "x_p2", "mutual"):
            if r[key] is not None and mask.any():
                rec[f"mae_brain_{key}"] = float(np.abs(r[key] - r["target"])[mask].mean())
        records.append(rec)
    return pd.DataFrame(records)


def synthesis_explorer(sampler, dataset, interactive: bool | None = None, out: str | Path | None = None,
                       index: int | None = None, seeds: Sequence[int] = (0, 1, 2)):
    """Pick a slice of ``dataset`` (a :class:`~mudiff.data.dataset.TaskDataset`) and a seed and see the sources,
    the ground truth, x^{p1}, x^{p2}, the mutual result and the error maps.

    Headless: a static figure of slice ``index`` (default: the one with the largest lesion) synthesised with each
    of ``seeds``, saved to ``out`` with the brain MAE of each prediction as CSV.
    """
    cache = SynthesisCache(sampler, dataset)
    if index is None:
        index = _largest_lesion(dataset)
    if not is_interactive(interactive):
        rows = [cache.row(index, s) for s in seeds]
        fig = viz.plot_synthesis(rows, dataset.sources, dataset.target, out=out, table=_errors_table(rows),
                                 suptitle=f"seed variation (static view of the explorer); error maps in "
                                          f"[0, {viz.ERROR_VMAX}]; {viz.PHANTOM_NOTE}")
        return fig

    import ipywidgets as w

    pick_slice = w.IntSlider(min=0, max=len(dataset) - 1, value=index, description="slice",
                             continuous_update=False)
    pick_seed = w.BoundedIntText(value=seeds[0], min=0, max=2**31 - 1, description="seed")
    output = w.Output()

    def draw(_=None) -> None:
        with output:
            output.clear_output(wait=True)
            row = cache.row(pick_slice.value, pick_seed.value)
            show_figure(viz.plot_synthesis([row], dataset.sources, dataset.target))

    pick_slice.observe(draw, "value")
    pick_seed.observe(draw, "value")
    draw()
    return show_widget(w.VBox([w.HBox([pick_slice, pick_seed]), output]))


def _largest_lesion(dataset) -> int:
    """Position in ``dataset`` of its slice with the largest lesion (the middle one when there is no lesion)."""
    from mudiff.data.prepare import load_manifest

    lesion = np.load(dataset.root / load_manifest(dataset.root)["arrays"]["lesion_mask"], mmap_mode="r")
    rows = dataset.slice_table["index"].to_numpy()
    area = np.asarray(lesion[rows]).reshape(len(rows), -1).sum(1)
    return int(np.argmax(area)) if area.max() > 0 else len(rows) // 2


__all__ = ["HEADLESS_ENV", "in_kernel", "is_interactive", "console_progress", "start_notebook", "show_widget",
           "show_figure", "SliceStore", "overview", "intensity_histograms", "slice_explorer", "LivePlot",
           "SynthesisCache", "synthesis_explorer"]
