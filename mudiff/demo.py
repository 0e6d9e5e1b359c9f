"""The demo workflow on the embedded phantom, and the steps the notebooks call.

``run_demo`` (``python -m mudiff demo``, ``make demo``) runs every notebook with the ``quick`` profile through
:func:`mudiff.reproduce.reproduce`: make the phantom, prepare 64x64 slices, train a quick CPU run, synthesise,
write figures. The other functions are the notebooks' steps, kept here so the notebooks stay thin.
"""
from __future__ import annotations

import json
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Sequence

import numpy as np
import pandas as pd


# ---- 00_data_prep ----------------------------------------------------------------------------------------------
def ensure_phantom(data_dir: str | Path, n_subjects: int, seed: int = 0, resolution: float = 2.0,
                   make: bool = True, kind: str = "tumour", extra_contrasts: Sequence[str] = ()) -> Path:
    """Make a phantom in ``data_dir`` unless it already holds data; returns ``data_dir``.

    An existing folder is used as it is (a phantom of other parameters, ``extra_contrasts`` included, triggers a
    warning; one whose generation did not finish is a DataError); with ``make=False`` the folder must exist (real
    BraTS or ISLES data).
    """
    data_dir = Path(data_dir)
    if _holds_subjects(data_dir):
        record = data_dir / "phantom.json"
        if record.is_file():
            meta = json.loads(record.read_text())
            from mudiff.data.phantom import CONTRASTS

            asked = {"n_subjects": n_subjects, "seed": seed, "resolution": float(resolution), "kind": kind,
                     "contrasts": [*CONTRASTS[kind], *extra_contrasts]}
            differs = {k: (meta[k], v) for k, v in asked.items() if k in meta and meta[k] != v}  # absent: unknown
            if differs:
                warnings.warn(f"{data_dir} holds a phantom made with other parameters (found, asked): {differs}; "
                              "using it as it is (delete the folder to make a new one)")
        print(f"using the subjects in {data_dir}")
        return data_dir
    if not make:
        raise FileNotFoundError(f"data folder {data_dir} does not exist or holds no subject folder; point DATA_DIR at "
                                "BraTS/ISLES subjects, or set MAKE_PHANTOM = True")
    from mudiff.data.phantom import generate_dataset

    generate_dataset(data_dir, n_subjects, seed=seed, kind=kind, resolution=resolution,
                     extra_contrasts=tuple(extra_contrasts))
    print(f"made {n_subjects} {kind} phantom subjects at {resolution} mm in {data_dir}")
    return data_dir


def _holds_subjects(data_dir: Path) -> bool:
    """Whether ``data_dir`` holds subject folders; a DataError if a generator did not finish writing them."""
    if not (data_dir.is_dir() and any(p.is_dir() for p in data_dir.iterdir())):
        return False
    from mudiff.data.subjects import check_finished

    check_finished(data_dir)
    return True


def ensure_slices(data_dir: str | Path, slices_dir: str | Path, size: int, slices: int, seed: int = 0,
                  split: Sequence[float] = (0.7, 0.2, 0.1), split_file: str | Path | None = None,
                  normalization: str = "percentile") -> Path:
    """Prepare ``data_dir`` into ``slices_dir`` unless it is prepared already with the same size, number of slices,
    split (``split`` fractions and ``seed``, or ``split_file``) and intensity normalisation; a folder prepared
    otherwise is a ValueError, rather than silently training or testing on other data. Returns ``slices_dir``."""
    from mudiff.data.prepare import prepare_dataset

    slices_dir = Path(slices_dir)

    def found(manifest: dict) -> dict:
        pre, split_ = manifest["preprocessing"], manifest["split"]
        return _preparation(pre["size"], pre["slices"], split_["seed"], split_["fractions"], split_["split_file"],
                            pre.get("normalization", "percentile"))

    if _prepared(slices_dir, _preparation(size, slices, seed, split, split_file, normalization), found):
        return slices_dir
    prepare_dataset(data_dir, slices_dir, size=size, slices=slices, seed=seed, split=tuple(split),
                    split_file=split_file, normalization=normalization)
    print(f"prepared {slices} slices of {size}x{size} per subject ({normalization} normalisation) into {slices_dir}")
    return slices_dir


def _prepared(slices_dir: Path, asked: dict, found: Callable[[dict], dict]) -> bool:
    """Whether ``slices_dir`` holds a prepared dataset; a ValueError if ``found(manifest)`` differs from ``asked``
    (rather than silently training or testing on other data)."""
    from mudiff.data.prepare import load_manifest

    if not (slices_dir / "manifest.json").is_file():
        return False
    settings = found(load_manifest(slices_dir))
    if settings != asked:
        differs = {k: (settings[k], asked[k]) for k in asked if settings[k] != asked[k]}
        raise ValueError(f"{slices_dir} was prepared with other settings (found, asked): {differs}; choose another "
                         "folder or delete it")
    print(f"using the prepared slices in {slices_dir}")
    return True


def _preparation(size, slices, seed, split, split_file, normalization) -> dict:
    """What decides a prepared folder's content, comparable between a manifest and a request."""
    plan = {"size": int(size), "slices": int(slices), "normalization": normalization}
    if split_file is not None:
        return plan | {"split_file": str(Path(split_file).resolve())}
    return plan | {"seed": int(seed), "split": [round(float(f), 9) for f in split]}


# ---- 01_training -----------------------------------------------------------------------------------------------
def run_overrides(overrides: Sequence[str], slices_dir: str | Path, seed: int, device: str) -> list[str]:
    """The notebook's ``--set`` overrides plus its data folder, seed and device (explicit overrides win)."""
    given = {o.partition("=")[0] for o in overrides}
    extra = {"data.root": str(slices_dir), "train.seed": str(seed), "train.device": device}
    return [f"{k}={v}" for k, v in extra.items() if k not in given] + list(overrides)


def validation_table(last_val: dict[str, float]) -> pd.DataFrame:
    """The last validation of a run as a table: PSNR (brain, dB) of each prediction and of copying each source,
    with the gain over copying the best source."""
    rows = [{"prediction": k.removeprefix("val_psnr_"), "psnr_brain_db": float(v)}
            for k, v in last_val.items() if k.startswith("val_psnr_")]
    table = pd.DataFrame(rows, columns=["prediction", "psnr_brain_db"])
    if "copy_best" in set(table["prediction"]):
        best = float(table.loc[table["prediction"] == "copy_best", "psnr_brain_db"].iloc[0])
        table["gain_vs_copy_best_db"] = table["psnr_brain_db"] - best
    return table


# ---- 02_sampling -----------------------------------------------------------------------------------------------
@dataclass
class SplitSynthesis:
    """Synthesised slices of a dataset: ``rows`` for :func:`mudiff.display.viz.plot_synthesis` and per-slice metrics."""

    rows: list[dict]
    metrics: pd.DataFrame

    def summary(self) -> pd.DataFrame:
        """Mean +- sd over slices of each prediction's brain metrics, with the slice count."""
        cols = ["psnr_B", "ssim_B", "mae_B"]
        g = self.metrics.groupby("prediction", sort=False)[cols]
        out = g.mean().add_suffix("_mean").join(g.std(ddof=1).add_suffix("_sd"))
        out["slices"] = g.size()
        return out.reset_index()


def synthesise_split(sampler, dataset, n: int | None = None, seed: int = 0, batch_size: int | None = None
                     ) -> SplitSynthesis:
    """Synthesise ``n`` evenly spaced items of ``dataset`` (all when None) and score x^{p1}, x^{p2}, mutual and
    copying each source against the ground truth (float protocol, brain and lesion)."""
    from mudiff.evaluation.metrics import slice_metrics

    count = len(dataset) if n is None else min(n, len(dataset))
    indices = np.unique(np.linspace(0, len(dataset) - 1, count).round().astype(int)).tolist()
    syn = sampler.synthesise_dataset(dataset, indices, seed=seed, batch_size=batch_size)
    items = [dataset[i] for i in indices]
    target = np.stack([(it["target"][0].numpy() + 1) / 2 for it in items])
    sources = np.stack([(it["sources"].numpy() + 1) / 2 for it in items])
    brain = np.stack([it["brain_mask"][0].numpy() for it in items])
    lesion = np.stack([it["lesion_mask"][0].numpy() for it in items])
    subjects = [it["subject"] for it in items]
    preds = {"x_p1": syn.x_p1, "x_p2": syn.x_p2, "mutual": syn.mutual,
             **{f"copy_{name}": sources[:, k] for k, name in enumerate(dataset.sources)}}
    frames = []
    for name, pred in preds.items():
        if pred is not None:
            df = slice_metrics(np.clip(pred, 0, 1), target, brain, lesion, subjects=subjects)
            df.insert(0, "prediction", name)
            df.insert(3, "z", [it["z"] for it in items])
            frames.append(df)
    rows = [{"title": f"{it['subject']}\nz={it['z']}", "sources": sources[k], "target": target[k],
             "x_p1": syn.x_p1[k], "x_p2": None if syn.x_p2 is None else syn.x_p2[k], "mutual": syn.mutual[k],
             "brain_mask": brain[k]}
            for k, it in enumerate(items)]
    return SplitSynthesis(rows, pd.concat(frames, ignore_index=True))


def subject_folder(slices_dir: str | Path, subject: str, data_dir: str | Path | None = None) -> Path:
    """The folder of a subject's volumes, from the prepared dataset's manifest (or ``data_dir/<subject>``)."""
    from mudiff.data.prepare import load_manifest

    manifest = load_manifest(slices_dir)
    files = manifest["source"]["files"].get(subject)
    if files:
        folder = Path(manifest["source"]["data_dir"]) / Path(next(iter(files.values()))["path"]).parent
        if folder.is_dir():
            return folder
    if data_dir is not None and (Path(data_dir) / subject).is_dir():
        return Path(data_dir) / subject
    raise FileNotFoundError(f"cannot find the volumes of subject {subject} (manifest of {slices_dir}, data folder "
                            f"{data_dir})")


def volume_views(subject_dir: str | Path, synthetic, target: str, out: str | Path | None = None):
    """Axial, coronal and sagittal sections of the real and the synthetic target volume through the lesion's
    centre (the volume's centre without a lesion), the real one normalised like the training data."""
    from mudiff.data.prepare import normalize_intensity
    from mudiff.data.subjects import find_subject, load_subject
    from mudiff.display import viz

    loaded = load_subject(find_subject(subject_dir), contrasts=[target])
    real = normalize_intensity(loaded.images[target])
    fake = np.asarray(synthetic.dataobj, np.float32)
    if loaded.label is not None and loaded.label.any():
        centre = [int(round(c)) for c in np.argwhere(loaded.label > 0).mean(0)]
    else:
        centre = [s // 2 for s in real.shape]
    table_rows = {"subject": loaded.id, "x": centre[0], "y": centre[1], "z": centre[2]}
    error = f"|difference| in [0, {viz.ERROR_VMAX}]"
    fig = viz.plot_volume_views({f"{target} (real)": real, f"{target} (synthetic)": fake,
                                 error: np.abs(fake - real) * ((fake > 0) | (real > 0))}, centre,
                                suptitle=f"{loaded.id}: whole-volume synthesis\n{viz.PHANTOM_NOTE}", error_key=error)
    viz.save_figure(fig, out, pd.DataFrame([table_rows]))
    return fig


# ---- 10_unpaired_mri_ct ----------------------------------------------------------------------------------------
def ensure_heads(head_dir: str | Path, n_subjects: int, seed: int = 0, resolution: float = 2.0,
                 make: bool = True) -> Path:
    """Make head phantoms (MR, CT, body mask: the SynthRAD layout) in ``head_dir`` unless it holds subjects
    already (used as they are; with ``make=False`` they must be there, e.g. SynthRAD2023 data); returns it."""
    head_dir = Path(head_dir)
    if _holds_subjects(head_dir):
        print(f"using the subjects in {head_dir}")
        return head_dir
    if not make:
        raise FileNotFoundError(f"data folder {head_dir} does not exist or holds no subject folder; point HEAD_DIR "
                                "at SynthRAD2023 subjects, or set MAKE_PHANTOM = True")
    from mudiff.data.head_phantom import generate_head_dataset

    generate_head_dataset(head_dir, n_subjects, seed=seed, resolution=resolution)
    print(f"made {n_subjects} head phantoms at {resolution} mm in {head_dir}")
    return head_dir


def ensure_mrct_slices(head_dir: str | Path, slices_dir: str | Path, height: int, width: int, slices: int,
                       seed: int = 0, split: Sequence[float] = (0.7, 0.2, 0.1)) -> Path:
    """Prepare the MR/CT subjects of ``head_dir`` into ``slices_dir`` unless it is prepared already with the same
    slice size, number of slices and split (prepared otherwise: a ValueError). Returns ``slices_dir``."""
    from mudiff.data.synthrad import prepare_synthrad

    slices_dir = Path(slices_dir)

    def settings(h, w, n, seed_, fractions) -> dict:
        return {"height": int(h), "width": int(w), "slices": int(n), "seed": int(seed_),
                "split": [round(float(f), 9) for f in fractions]}

    def found(manifest: dict) -> dict:
        pre, split_ = manifest["preprocessing"], manifest["split"]
        return settings(pre["height"], pre["width"], pre["slices"], split_["seed"], split_["fractions"])

    if _prepared(slices_dir, settings(height, width, slices, seed, split), found):
        return slices_dir
    prepare_synthrad(head_dir, slices_dir, height=height, width=width, slices=slices, split=tuple(split), seed=seed)
    print(f"prepared {slices} MR/CT slices of {height}x{width} per subject into {slices_dir}")
    return slices_dir


# ---- the demo --------------------------------------------------------------------------------------------------
def run_demo(workdir: str | Path = ".", quick_config: str | Path = "configs/quick.yaml") -> Path:
    """Run every notebook with the ``quick`` profile in ``workdir`` (training with ``quick_config``, checked
    before the first notebook runs); returns the folder of the executed notebooks."""
    from mudiff.config import load_config
    from mudiff.reproduce import project_file, reproduce

    config = project_file(quick_config).resolve()
    load_config(config)
    return reproduce("quick", workdir, parameters={"CONFIG": str(config)})


__all__ = ["ensure_phantom", "ensure_slices", "run_overrides", "validation_table", "SplitSynthesis",
           "synthesise_split", "subject_folder", "volume_views", "run_demo"]
