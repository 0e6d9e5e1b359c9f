"""Evaluation of trained runs (spec section 7): per-slice metrics on a split, summaries, method comparisons.

``evaluate_run(run_dir)`` synthesises every slice of a split with the run's checkpoint (EMA weights when kept)
and writes, in ``<run_dir>/eval/``::

    <split>_slices.csv     one row per output (x_p1, x_p2, mutual) and slice: subject, slice, z, index and
                           PSNR/SSIM/MAE on the brain (B) and the lesion (T); first line: '# <protocol line>'
    <split>_summary.json   mean +- sd over subjects and over slices per output, with what was evaluated how
    <split>_summary.md     the same as Markdown tables, protocol line and method (MU-Diff: critic mask head)

An earlier evaluation of the split with other settings (protocol, seed, slices, checkpoint step, data) is moved
to ``eval/previous/<split>_<protocol>_seed<seed>_<slices>_step<step>/`` rather than overwritten.

``evaluate_run(run_dir, data_root=OTHER)`` scores the run on other prepared data (e.g. another site, or more
held-out subjects), prepared the same way as its own; those files go to ``<run_dir>/eval/external/<OTHER's name>/``.

``evaluate_runs({label: run_dir})`` scores several runs on the same slices, reusing their eval files when they
match; ``compare_runs`` also writes results tables with paired tests (best vs second best) and box plots.
"""
from __future__ import annotations

import json
import math
import time
import warnings
from pathlib import Path
from typing import Any, Mapping

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
from tqdm.auto import tqdm

from mudiff.checkpoint import checkpoint_file, checkpoint_info
from mudiff.config import RunConfig
from mudiff.data.dataset import TaskDataset
from mudiff.evaluation.metrics import METRICS, REGIONS, aggregate, describe_protocol, slice_metrics
from mudiff.evaluation.stats import DECIMALS, box_plots, results_table, to_markdown, write_csv
from mudiff.sample import Sampler

OUTPUTS = ("x_p1", "x_p2", "mutual")
"""The outputs scored per slice; ``mutual`` is every method's result, the only one scored for a single network
(where it equals x_p1)."""
COLUMNS = [f"{m}_{r}" for r in REGIONS for m in METRICS]


def evaluate_run(run_dir: str | Path, split: str = "test", protocol: str = "float", seed: int = 0,
                 batch_size: int | None = None, max_slices: int | None = None, device: str = "auto",
                 progress: bool = True, data_root: str | Path | None = None, checkpoint: str = "last"
                 ) -> dict[str, Any]:
    """Synthesise and score every slice of ``split`` (the first ``max_slices`` in dataset order if given) with the
    run's ``checkpoint`` (``last``, or ``best``: kept with ``train.keep_best``, scored into ``eval_best/``).

    The data come from the run's own config (``data.root``, ``data.task``), or from ``data_root``: other prepared
    data of the same contrasts, slice size and preprocessing (checked against the run's own data where those are
    still there; ValueError otherwise), scored into ``eval/external/<its folder name>/``. Slice seeds follow
    :class:`~mudiff.sample.Sampler` (``seed`` and the slice's global index), so a slice's output does not depend
    on ``batch_size``. Subjects are synthesised one at a time (memory stays bounded by one subject's slices).
    Returns the summary that is written to ``<run_dir>/eval/<split>_summary.json``.
    """
    run_dir = _run_folder(run_dir)
    protocol_line = describe_protocol(protocol)  # checks the protocol before any work
    if max_slices is not None and max_slices < 1:
        raise ValueError(f"max_slices must be >= 1 (or None for the whole split), got {max_slices}")
    step, has_ema = checkpoint_info(run_dir, checkpoint)
    sampler = Sampler.from_checkpoint(checkpoint_file(run_dir, checkpoint), device=device)
    cfg = sampler.cfg
    root = _data_root(cfg, data_root)
    dataset = TaskDataset(root, cfg.data.task, split)
    positions = list(range(len(dataset)))[:max_slices]
    by_subject: dict[str, list[int]] = {}
    for i, subject in zip(positions, dataset.slice_table["subject"].iloc[positions]):
        by_subject.setdefault(subject, []).append(i)

    frames, seconds = [], 0.0
    for subject, indices in tqdm(by_subject.items(), desc=f"evaluating {run_dir.name}", disable=not progress,
                                 mininterval=2.0):
        start = time.perf_counter()
        syn = sampler.synthesise_dataset(dataset, indices, seed=seed, batch_size=batch_size, progress=False)
        seconds += time.perf_counter() - start
        items = [dataset[i] for i in indices]
        target = np.clip((np.stack([it["target"][0].numpy() for it in items]) + 1) / 2, 0, 1)
        brain = np.stack([it["brain_mask"][0].numpy() for it in items])
        lesion = np.stack([it["lesion_mask"][0].numpy() for it in items])
        for output in OUTPUTS if syn.x_p2 is not None else ("mutual",):  # one network: x_p1 is the result
            df = slice_metrics(getattr(syn, output), target, brain, lesion, protocol, subjects=[subject] * len(items))
            df.insert(0, "output", output)
            df.insert(3, "z", [it["z"] for it in items])
            df.insert(4, "index", [it["index"] for it in items])
            frames.append(df)
    table = pd.concat(frames, ignore_index=True)

    out_dir = eval_dir(run_dir, data_root, checkpoint)
    out_dir.mkdir(parents=True, exist_ok=True)
    _keep_previous(out_dir, split, dict(protocol=protocol, seed=seed, max_slices=max_slices, checkpoint_step=step,
                                        data_root=root))
    with open(out_dir / f"{split}_slices.csv", "w") as f:
        f.write(f"# {protocol_line}\n")
        table.to_csv(f, index=False)
    summary = {
        "run_dir": str(run_dir), "method": cfg.model.method, "method_note": method_note(cfg),
        "variant": cfg.model.variant if cfg.model.method == "mudiff" else None,
        "mask_head": _mask_head(cfg), "task": cfg.data.task, "data_root": root, "split": split,
        "protocol": protocol, "protocol_line": protocol_line, "seed": seed, "max_slices": max_slices,
        "checkpoint": checkpoint, "checkpoint_step": step, "weights": "ema" if has_ema else "raw",
        "device": str(sampler.device),
        "subjects": len(by_subject), "slices": len(positions),
        "network_evaluations_per_slice": getattr(sampler.method, "network_evaluations", None),
        "sampling_seconds_per_slice": seconds / len(positions),
        "outputs": {output: {f"by_{by}": _aggregate(table, output, protocol, by) for by in ("subject", "slice")}
                    for output in OUTPUTS if output in set(table["output"])},
    }
    (out_dir / f"{split}_summary.json").write_text(json.dumps(summary, indent=2) + "\n")
    (out_dir / f"{split}_summary.md").write_text(_summary_markdown(summary))
    return summary


def load_slice_metrics(run_dir: str | Path, split: str = "test", output: str = "mutual",
                       data_root: str | Path | None = None, checkpoint: str = "last") -> pd.DataFrame:
    """The ``slice_metrics`` frame of one output from ``<run_dir>/eval/<split>_slices.csv`` (protocol in attrs;
    ``eval_best/`` for the best checkpoint); with ``data_root``, from the evaluation on those data (:func:`evaluate_run`; ValueError when its folder holds
    the scores on another data folder of the same name)."""
    run_dir = Path(run_dir)
    out_dir = eval_dir(run_dir, data_root, checkpoint)
    summary = json.loads((out_dir / f"{split}_summary.json").read_text())
    if data_root is not None and Path(summary["data_root"]).resolve() != Path(data_root).resolve():
        raise ValueError(f"{out_dir} holds the scores on {summary['data_root']}, not on {data_root} (another folder "
                         f"of the same name): evaluate the run on {data_root} first (evaluate_run, evaluate_runs)")
    table = pd.read_csv(out_dir / f"{split}_slices.csv", comment="#", dtype={"subject": str})
    if output not in set(table["output"]):
        raise ValueError(f"{run_dir} has no {output!r} output (it has {sorted(set(table['output']))})")
    df = table[table["output"] == output].drop(columns="output").reset_index(drop=True)
    df.attrs["protocol"] = summary["protocol"]
    return df


def shared_data(run_dirs: Mapping[str, str | Path]) -> tuple[dict[str, RunConfig], RunConfig]:
    """The runs' configs ({label: config}, and the first), checked to be trained runs that share the prepared data
    and the task (FileNotFoundError, ValueError otherwise)."""
    if not run_dirs:
        raise ValueError("no run given")
    configs = {label: _run_config(path) for label, path in run_dirs.items()}
    for field, key in (("data.root", lambda c: Path(c.data.root).resolve()), ("data.task", lambda c: c.data.task)):
        values = {label: key(cfg) for label, cfg in configs.items()}
        if len(set(values.values())) > 1:
            raise ValueError(f"runs differ in {field}: {', '.join(f'{k}={v}' for k, v in values.items())}; "
                             "compare runs trained and tested on the same prepared data and task")
    return configs, next(iter(configs.values()))


def evaluate_runs(run_dirs: Mapping[str, str | Path], split: str = "test", max_slices: int | None = None,
                  seed: int = 0, batch_size: int | None = None, device: str = "auto", protocol: str = "float",
                  output: str = "mutual", progress: bool = True, data_root: str | Path | None = None,
                  reuse: bool = True, checkpoint: str = "last") -> dict[str, pd.DataFrame]:
    """Per-slice metrics ({label: ``slice_metrics`` frame}) of every run on the same slices of ``split`` (of the
    runs' shared data, or of other prepared data ``data_root``), with each run's ``checkpoint`` (``last``, ``best``).

    Each run is scored by :func:`evaluate_run` unless ``reuse`` and its eval files were written for its current
    checkpoint with the same protocol, seed and ``max_slices`` (then they are read back: notebooks share them).
    """
    shared_data(run_dirs)
    frames = {}
    for label, folder in run_dirs.items():
        if not (reuse and _eval_is_current(Path(folder), split, protocol, seed, max_slices, data_root, checkpoint)):
            evaluate_run(folder, split, protocol, seed, batch_size, max_slices, device, progress, data_root,
                         checkpoint)
        frames[label] = load_slice_metrics(folder, split, output, data_root, checkpoint)
    return frames


def compare_runs(run_dirs: dict[str, str | Path], split: str = "test", out_dir: str | Path = "figures",
                 protocol: str = "float", seed: int = 0, batch_size: int | None = None, max_slices: int | None = None,
                 device: str = "auto", by: str = "subject", output: str = "mutual", reuse: bool = True,
                 progress: bool = True) -> pd.DataFrame:
    """Compare runs ({label: run folder}) on the same slices of one split.

    Each run is evaluated with :func:`evaluate_run`, unless ``reuse`` and its eval files were written for the
    same checkpoint step, protocol, seed and ``max_slices``. For each region (B, and T when any run has lesion
    slices) writes to ``out_dir``: ``compare_<split>_<region>.csv`` / ``.md`` (``results_table``: mean +- sd per
    method, best vs second best with paired t-test and Wilcoxon p-values over ``by``) and
    ``compare_<split>_<region>_box.png`` (box plots; scores in the .csv next to it). ``output`` picks the scored
    output of every run (``mutual``: the method's result). Returns the tables stacked, with a ``region`` column.
    Raises ValueError unless all runs share the data root and the task.
    """
    if len(run_dirs) < 2:
        raise ValueError(f"compare_runs needs at least two runs, got {list(run_dirs)}")
    configs, _ = shared_data(run_dirs)
    frames = evaluate_runs(run_dirs, split, max_slices, seed, batch_size, device, protocol, output, progress,
                           reuse=reuse)
    note = f"output: {output}; " + "; ".join(f"{label}: {method_note(cfg)}" for label, cfg in configs.items())

    out_dir = Path(out_dir)
    tables = []
    for region in REGIONS:
        if all(df[f"psnr_{region}"].isna().all() for df in frames.values()):
            continue  # no lesion labels on these slices
        table = results_table(frames, region, by, note)
        stem = out_dir / f"compare_{split}_{region}"
        write_csv(table, stem.with_suffix(".csv"))
        to_markdown(table, stem.with_suffix(".md"))
        plt.close(box_plots(frames, region, by, out=stem.with_name(stem.name + "_box.png")))
        tables.append(table.assign(region=region))
    result = pd.concat(tables, ignore_index=True)
    result.insert(0, "region", result.pop("region"))
    result.attrs["captions"] = {t["region"].iloc[0]: t.attrs["caption"] for t in tables}
    return result


def method_note(cfg: RunConfig) -> str:
    """What a run is, for captions: the method and, for MU-Diff, its variant and critic mask head."""
    mc = cfg.model
    if mc.method == "mudiff":
        critic = f"critic mask head {mc.mask_head}" if cfg.train.use_critic else "no critic"
        # abl4 (a single network has no mask loss by construction)
        abl4 = mc.variant != "single" and cfg.train.use_critic and not cfg.train.mask_loss
        mask_loss = ", no mask loss" if abl4 else ""
        return f"mudiff (variant {mc.variant}, T={mc.num_timesteps}, {critic}{mask_loss})"
    if mc.method == "ddpm":
        return f"ddpm (T={mc.ddpm_timesteps}, DDIM eta=0, {mc.ddpm_sampling_steps} steps)"
    return mc.method


def _mask_head(cfg: RunConfig) -> str | None:
    """The critic mask head of a MU-Diff run with a critic, else None."""
    return None if "model.mask_head" in cfg.unread() else cfg.model.mask_head


def _run_folder(run_dir: str | Path) -> Path:
    run_dir = Path(run_dir)
    if not (run_dir / "checkpoints" / "last.pt").is_file():
        raise FileNotFoundError(f"{run_dir} is not a run folder with a checkpoint (checkpoints/last.pt)")
    return run_dir


def _run_config(run_dir: str | Path) -> RunConfig:
    path = _run_folder(run_dir) / "config.json"
    if not path.is_file():
        raise FileNotFoundError(f"no config.json in the run folder {run_dir}")
    return RunConfig.from_dict(json.loads(path.read_text()))


def eval_dir(run_dir: Path, data_root: str | Path | None = None, checkpoint: str = "last") -> Path:
    """Where the run's eval files on its own data (``data_root`` None) or on ``data_root`` go: ``eval/`` for its
    last checkpoint, ``eval_best/`` for its best."""
    base = run_dir / ("eval" if checkpoint == "last" else f"eval_{checkpoint}")
    return base if data_root is None else base / "external" / Path(data_root).name


def _data_root(cfg: RunConfig, data_root: str | Path | None) -> str:
    """The data a run is scored on: its own, or ``data_root`` after checking that the run can read them."""
    if data_root is None:
        return cfg.data.root
    from mudiff.data.prepare import load_manifest

    other = load_manifest(data_root)["preprocessing"]
    if not (Path(cfg.data.root) / "manifest.json").is_file():
        warnings.warn(f"the run's own data ({cfg.data.root}) are gone, so {data_root}'s preprocessing cannot be "
                      "checked against them; make sure it matches the run's training data")
        return str(data_root)
    own = load_manifest(cfg.data.root)["preprocessing"]
    differs = {k: (own.get(k), other.get(k)) for k in own.keys() | other.keys() if own.get(k) != other.get(k)}
    if differs:
        raise ValueError(f"{data_root} was prepared differently from the run's own data {cfg.data.root} "
                         f"({differs}: own, other); prepare it with the same settings")
    return str(data_root)


def _eval_is_current(run_dir: Path, split: str, protocol: str, seed: int, max_slices: int | None,
                     data_root: str | Path | None = None, checkpoint: str = "last") -> bool:
    """Whether the run's eval files (on its own data, or on ``data_root``) were written for its current
    ``checkpoint`` and those data with these settings."""
    out_dir = eval_dir(run_dir, data_root, checkpoint)
    path = out_dir / f"{split}_summary.json"
    if not path.is_file() or not (out_dir / f"{split}_slices.csv").is_file():
        return False
    summary = json.loads(path.read_text())
    wanted = dict(protocol=protocol, seed=seed, max_slices=max_slices,
                  checkpoint_step=checkpoint_info(run_dir, checkpoint)[0],
                  data_root=_run_config(run_dir).data.root if data_root is None else str(data_root))
    return all(summary.get(k) == v for k, v in wanted.items())


def _keep_previous(out_dir: Path, split: str, settings: dict[str, Any]) -> None:
    """Move the split's eval files aside (``previous/``) when they were written with other ``settings``."""
    summary_path = out_dir / f"{split}_summary.json"
    if not summary_path.is_file():
        return
    old = json.loads(summary_path.read_text())
    if all(old.get(k) == v for k, v in settings.items()):
        return
    slices = "all" if old.get("max_slices") is None else f"n{old['max_slices']}"
    keep = out_dir / "previous" / (f"{split}_{old.get('protocol')}_seed{old.get('seed')}_{slices}_"
                                   f"step{old.get('checkpoint_step')}")
    keep.mkdir(parents=True, exist_ok=True)
    for name in (f"{split}_slices.csv", f"{split}_summary.json", f"{split}_summary.md"):
        if (out_dir / name).is_file():
            (out_dir / name).replace(keep / name)


def _aggregate(table: pd.DataFrame, output: str, protocol: str, by: str) -> dict[str, dict[str, float | None]]:
    """{metric: {mean, sd, n, n_excluded}} of one output, NaN (no unit with a value) as None for JSON."""
    df = table[table["output"] == output]
    df.attrs["protocol"] = protocol
    stats = aggregate(df, by)
    return {metric: {"mean": _number(row["mean"]), "sd": _number(row["sd"]), "n": int(row["n"]),
                     "n_excluded": int(row["n_excluded"])} for metric, row in stats.iterrows()}


def _number(value: float) -> float | None:
    return None if math.isnan(value) else float(value)


def _summary_markdown(summary: dict[str, Any]) -> str:
    """Mean +- sd per output and metric, one table per aggregation unit, with what was evaluated how."""
    s = summary
    nfe = s["network_evaluations_per_slice"]
    lines = [f"# {s['method_note']} on the {s['split']} split", "",
             f"Run `{s['run_dir']}`, {s['checkpoint']} checkpoint (step {s['checkpoint_step']}, {s['weights']} "
             f"weights), task {s['task']}, {s['slices']} slices of {s['subjects']} subject(s), seed {s['seed']}; "
             f"{s['sampling_seconds_per_slice']:.3g} s per slice on {s['device']}"
             + ("." if nfe is None else f" ({nfe} network evaluations)."), ""]
    for by in ("subject", "slice"):
        rows = []
        for output, stats in s["outputs"].items():
            row = {"output": output}
            for col in COLUMNS:
                agg, d = stats[f"by_{by}"][col], DECIMALS[col.split("_")[0]]
                mean, sd = (math.nan if agg[k] is None else agg[k] for k in ("mean", "sd"))
                row[col] = f"{mean:.{d}f} ± {sd:.{d}f} (n={agg['n']})"
            rows.append(row)
        table = pd.DataFrame(rows)
        table.attrs["caption"] = f"mean ± sd over {by}s; {s['protocol_line']}"
        lines.append(to_markdown(table))
    return "\n".join(lines)


__all__ = ["evaluate_run", "eval_dir", "shared_data", "evaluate_runs", "compare_runs", "load_slice_metrics",
           "method_note", "OUTPUTS"]
