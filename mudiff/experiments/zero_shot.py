"""Zero-shot cross-modality translation (issue 12), judged by a segmenter of the target contrast.

A user has a segmentation network for one contrast (the target, e.g. T1) and images of another (the source).
MIDiffusion and SDEdit (:mod:`mudiff.methods.midiffusion`) are trained on the target contrast only and translate
the source; simple baselines need no training: the raw source, histogram matching of the source to the target's
training intensities, and the same after inverting the source (for contrasts that invert, e.g. T2 -> T1). The
upper bound is what zero-shot methods do without: our supervised model trained on paired source/target slices
(``mudiff`` with ``model.variant: single``, i.e. supervised SynDiff), one run per pair.

The judgement: a MONAI U-Net (:mod:`mudiff.evaluation.segmentation`) trained on the **target contrast only** segments
(a) the real target (the ceiling), (b) the raw source, (c) each translation; Dice per class and slice, with paired
tests of MIDiffusion against every other input. Its classes (:func:`judge_classes`) are the tumour's and, when the
data have a tissue map (the phantom), CSF, grey and white matter: at small sizes the tumour may go unfound even on
the real target, the normal tissues are large enough to give Dice something to measure. On the phantom every source
has its true target, so the translations are also scored by PSNR/SSIM/MAE
(:func:`mudiff.evaluation.metrics.slice_metrics`).

The evidence (``benchmarks/zero_shot_evidence.py``): the same comparison over training seeds on new subjects, each
seed in a worker (:func:`seed_evidence`), and :func:`evidence_claims` with verdicts over the seeds.
"""
from __future__ import annotations

import json
import os
from dataclasses import replace
from pathlib import Path
from typing import Callable, Mapping, Sequence, TypeVar

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import torch
from scipy.stats import ttest_rel, wilcoxon

from mudiff.config import RunConfig, load_config
from mudiff.display.viz import PHANTOM_NOTE, image_grid, save_figure
from mudiff.evaluation.metrics import slice_metrics
from mudiff.evaluation.segmentation import (TISSUE_CLASSES, SegData, Segmenter, class_targets, dice,
                                            tumour_classes)
from mudiff.evaluation.stats import Claim
from mudiff.models.lmi import lmi
from mudiff.sample import Sampler, seeded_batches

PAIRS = (("t2", "t1"), ("flair", "t1"), ("pd", "t1"), ("t1", "t2"))  # (source, target): the issue's four pairs
REAL = "real target"
RAW = "raw source"
HISTOGRAM = "histogram matching"
INVERTED = "inverted + histogram matching"
SDEDIT = "SDEdit"
MIDIFFUSION = "MIDiffusion"
PAIRED = "paired (upper bound)"
MODEL_METHODS = {MIDIFFUSION: "midiffusion", SDEDIT: "sdedit"}
PAIRED_OVERRIDES = ("model.method=mudiff", "model.variant=single", "train.adam_betas=[0.5, 0.9]")
"""The paired upper bound: supervised SynDiff, with MU-Diff's own Adam (the zero-shot configs set the published
MIDiffusion one)."""
PAIR_INPUT = " | "  # joins a pair and an input's name into a key of a seed's translations.npz
T = TypeVar("T")


def pair_name(source: str, target: str) -> str:
    return f"{source} -> {target}"


# ---- the runs ----------------------------------------------------------------------------------------------------
def zero_shot_config(base: str | Path, root: str | Path, target: str, source: str, method: str,
                     overrides: Sequence[str] = ()) -> RunConfig:
    """The config of a ``method`` run for ``target`` from ``base`` (YAML): for midiffusion and sdedit ``source`` is
    only the validation source (training sees the target alone); ``mudiff`` (the paired upper bound, with
    ``PAIRED_OVERRIDES``) learns ``target`` from ``source``."""
    return load_config(base, [f"data.root={root}", f"data.task={target}_from_{source}", f"model.method={method}",
                              "model.num_sources=1", *overrides])


def train_runs(base: str | Path, root: str | Path, runs_root: str | Path, targets: Mapping[str, str],
               methods: Sequence[str] = ("midiffusion", "sdedit"), overrides: Sequence[str] = ()
               ) -> dict[tuple[str, str], Path]:
    """Train (or resume, or reuse when finished) one run per method and target contrast with the shared Trainer:
    ``targets`` maps each target to its validation source. Returns {(method, target): run folder}."""
    from mudiff.train import train

    runs = {}
    for target, source in targets.items():
        for method in methods:
            run_dir = Path(runs_root) / f"{method}_{target}"
            train(zero_shot_config(base, root, target, source, method, overrides), run_dir)
            runs[method, target] = run_dir
    return runs


def train_paired_runs(base: str | Path, root: str | Path, runs_root: str | Path, pairs: Sequence[tuple[str, str]],
                      overrides: Sequence[str] = ()) -> dict[tuple[str, str], Path]:
    """Train (or resume, or reuse when finished) the paired upper bound of every (source, target) pair with the
    shared Trainer, in ``runs_root/paired_<source>_to_<target>``. Returns {(source, target): run folder}."""
    from mudiff.train import train

    runs = {}
    for source, target in pairs:
        runs[source, target] = Path(runs_root) / f"paired_{source}_to_{target}"
        train(zero_shot_config(base, root, target, source, "mudiff", [*PAIRED_OVERRIDES, *overrides]),
              runs[source, target])
    return runs


# ---- translations ------------------------------------------------------------------------------------------------
def reference_intensities(data: SegData, contrast: str, max_values: int = 200_000) -> np.ndarray:
    """Sorted brain intensities of ``contrast`` in ``data`` (the target's training slices), evenly thinned to at
    most ``max_values``: the histogram that histogram matching maps to."""
    values = np.sort(data.images[:, data.contrasts.index(contrast)][data.brain > 0])
    if not len(values):
        raise ValueError(f"no brain voxel in the {contrast} reference slices")
    return values[np.linspace(0, len(values) - 1, min(max_values, len(values))).round().astype(int)]


def histogram_match(source: np.ndarray, brain: np.ndarray, reference: np.ndarray) -> np.ndarray:
    """Per slice, map the brain voxels of ``source`` (N, H, W) in [0, 1] so that their quantiles are those of
    ``reference`` (sorted 1-D); background stays 0. -> (N, H, W) float32."""
    out = np.zeros_like(source, dtype=np.float32)
    quantiles = np.linspace(0, 1, len(reference))
    for k in range(len(source)):
        inside = brain[k] > 0
        if inside.sum() < 2:
            continue
        values = source[k][inside]
        ranks = np.argsort(np.argsort(values, kind="stable"), kind="stable") / (len(values) - 1)
        out[k][inside] = np.interp(ranks, quantiles, reference)
    return out


def translate(sampler: Sampler, images: np.ndarray, index: Sequence[int], source_contrast: str, seed: int = 0,
              steps: int | None = None, batch_size: int | None = None, progress: bool = False) -> np.ndarray:
    """A run's translation of (N, H, W) source slices in [0, 1] -> (N, H, W) in [0, 1]: a zero-shot run (midiffusion,
    sdedit; ``steps`` reverse steps, None: its config's) or a paired run trained from ``source_contrast`` (the upper
    bound). Slice k is seeded by ``seed * SEED_STRIDE + index[k]`` (its global slice index), so it does not depend
    on the batch (``batch_size`` None: the device's default, :func:`~mudiff.sample.seeded_batches`)."""
    method = sampler.method
    if not hasattr(method, "translate"):
        if sampler.sources != [source_contrast]:
            raise ValueError(f"{sampler.cfg.model.method!r} is not a zero-shot method (midiffusion, sdedit), nor a "
                             f"paired run from {source_contrast!r} (its sources: {sampler.sources})")
        return sampler.synthesise(images[:, None], index, seed, batch_size, progress).mutual

    def run(positions: slice, seeds: list[int]) -> np.ndarray:
        x = torch.from_numpy(np.ascontiguousarray(images[positions], np.float32))[:, None]
        return method.translate(method.generator, x, seeds, source_contrast, steps)[:, 0].cpu().numpy()

    out = seeded_batches(run, index, seed, batch_size, sampler.device, progress,
                         desc=f"{sampler.cfg.model.method} from {source_contrast}")
    return np.concatenate(out) if out else np.zeros_like(images, np.float32)


def translate_pairs(data: SegData, pairs: Sequence[tuple[str, str]], samplers: Mapping[tuple[str, str], Sampler],
                    references: Mapping[str, np.ndarray], seed: int = 0, steps: int | None = None,
                    batch_size: int | None = None, progress: bool = True,
                    paired: Mapping[tuple[str, str], Sampler] | None = None) -> dict[str, dict[str, np.ndarray]]:
    """Every input of the comparison for every (source, target) pair of the test slices ``data``:
    {pair name: {method: (N, H, W) in [0, 1]}} with the raw source, histogram matching (plain and inverted) to
    ``references[target]``, each zero-shot model in ``samplers`` ({(method name, target): Sampler}, e.g.
    ``("MIDiffusion", "t1")``) and ``PAIRED``, the pair's run in ``paired`` ({(source, target): Sampler}) where
    there is one; background set to 0 as in the real images."""
    out = {}
    for source, target in pairs:
        image = data.images[:, data.contrasts.index(source)]
        inputs = {RAW: image, HISTOGRAM: histogram_match(image, data.brain, references[target]),
                  INVERTED: histogram_match(1 - image, data.brain, references[target])}
        for (name, model_target), sampler in samplers.items():
            if model_target == target:
                inputs[name] = translate(sampler, image, data.index, source, seed, steps, batch_size,
                                         progress) * data.brain
        if paired and (source, target) in paired:
            inputs[PAIRED] = translate(paired[source, target], image, data.index, source, seed, None, batch_size,
                                       progress) * data.brain
        out[pair_name(source, target)] = inputs
    return out


def steps_comparison(sampler: Sampler, data: SegData, source: str, target: str, steps: Sequence[int], seed: int = 0,
                     batch_size: int | None = None, slices: int | None = None) -> pd.DataFrame:
    """The effect of respacing: translate ``source`` -> ``target`` on the first ``slices`` of ``data`` (all:
    None) with each number of reverse ``steps``; one row per count with the brain PSNR/SSIM/MAE means against the
    true target and the seconds per slice (wall clock of this machine)."""
    import time

    n_slices = len(data) if slices is None else min(slices, len(data))
    image, truth = (data.images[:n_slices, data.contrasts.index(c)] for c in (source, target))
    brain = data.brain[:n_slices]
    rows = []
    for n in steps:
        start = time.perf_counter()
        out = translate(sampler, image, data.index[:n_slices], source, seed, n, batch_size) * brain
        seconds = (time.perf_counter() - start) / n_slices
        scores = slice_metrics(out, truth, brain, None)[["psnr_B", "ssim_B", "mae_B"]].mean()
        rows.append({"pair": pair_name(source, target), "steps": n, **scores.to_dict(), "seconds_per_slice": seconds,
                     "slices": n_slices})
    return pd.DataFrame(rows)


# ---- scores ------------------------------------------------------------------------------------------------------
def translation_scores(data: SegData, translations: Mapping[str, Mapping[str, np.ndarray]]) -> pd.DataFrame:
    """PSNR/SSIM/MAE on the brain (B) and the lesion (T) of every translation against the true target, one row per
    pair, method and slice (float protocol of :func:`mudiff.evaluation.metrics.slice_metrics`)."""
    frames = []
    for pair, inputs in translations.items():
        target = pair.split(" -> ")[1]
        truth = data.images[:, data.contrasts.index(target)]
        for method, image in inputs.items():
            df = slice_metrics(np.clip(image, 0, 1), truth, data.brain, data.label > 0, subjects=data.subjects)
            frames.append(df.assign(pair=pair, method=method, index=data.index))
    return pd.concat(frames, ignore_index=True)


def target_only(data: SegData, target: str) -> SegData:
    """``data`` with the ``target`` channel only (the input of a target-contrast segmenter)."""
    return replace(data, images=data.images[:, [data.contrasts.index(target)]], contrasts=[target])


def judge_classes(data: SegData) -> list[tuple[str, tuple[int, ...]]]:
    """The target segmenter's classes: the tumour classes of ``data``'s labels, then ``TISSUE_CLASSES`` when
    ``data`` has a tissue map."""
    return tumour_classes(data.label) + (TISSUE_CLASSES if data.tissue is not None else [])


def segmentation_scores(segmenters: Mapping[str, Segmenter], data: SegData,
                        translations: Mapping[str, Mapping[str, np.ndarray]]) -> pd.DataFrame:
    """Dice per pair, input, class and slice of the target's segmenter (``segmenters[target]``, trained on the
    target contrast only) applied to the real target (``REAL``, the ceiling) and to every input of
    ``translations``. Dice is NaN on a slice where both the truth and the prediction are empty."""
    rows = []
    for pair, inputs in translations.items():
        target = pair.split(" -> ")[1]
        segmenter = segmenters[target]
        if segmenter.contrasts != [target]:
            raise ValueError(f"the segmenter for {target} reads {segmenter.contrasts}; train it on [{target!r}] only")
        real = target_only(data, target)
        truth = class_targets(data.label, segmenter.classes, data.tissue).astype(bool)
        for method, image in {REAL: real.images[:, 0], **inputs}.items():
            pred = segmenter.predict(real.replaced({target: np.asarray(image, np.float32)}))
            for k, name in enumerate(segmenter.class_names):
                rows += [{"pair": pair, "method": method, "class": name, "subject": data.subjects[i],
                          "index": int(data.index[i]), "dice": dice(pred[i, k], truth[i, k])}
                         for i in range(len(data))]
    return pd.DataFrame(rows)


def summary_table(scores: pd.DataFrame, columns: Sequence[str]) -> pd.DataFrame:
    """Mean and sd over slices of ``columns`` per pair and method (per class too when ``scores`` has one), in the
    order the inputs appear; n: slices with a value."""
    keys = ["pair", "method"] + (["class"] if "class" in scores else [])
    g = scores.groupby(keys, sort=False)
    parts = {f"{c}_mean": g[c].mean() for c in columns}
    parts.update({f"{c}_sd": g[c].std(ddof=1) for c in columns})
    parts["n"] = g[columns[0]].count()
    return pd.concat(parts, axis=1).reset_index()


def paired_tests(scores: pd.DataFrame, value: str, reference: str = MIDIFFUSION) -> pd.DataFrame:
    """``reference`` against every other input, per pair (and class), paired over slices with a value in both:
    n, mean difference (reference - other), paired t-test and Wilcoxon p-values (NaN below 2 pairs; slices of
    one subject are not independent, so read them as descriptive)."""
    keys = ["pair"] + (["class"] if "class" in scores else [])
    rows = []
    for group, part in scores.groupby(keys, sort=False):
        table = part.pivot_table(index="index", columns="method", values=value, dropna=False)
        if reference not in table:
            continue
        for other in [m for m in part["method"].unique() if m != reference]:
            pairs = table[[reference, other]].dropna()
            diff = pairs[reference] - pairs[other]
            row = dict(zip(keys, group if isinstance(group, tuple) else (group,)))
            row.update(other=other, n=len(pairs), mean_diff=float(diff.mean()) if len(pairs) else np.nan,
                       p_ttest=np.nan, p_wilcoxon=np.nan)
            if len(pairs) >= 2 and diff.abs().sum() > 0:
                row.update(p_ttest=float(ttest_rel(pairs[reference], pairs[other]).pvalue),
                           p_wilcoxon=float(wilcoxon(diff).pvalue))
            rows.append(row)
    return pd.DataFrame(rows)


# ---- evidence over training seeds --------------------------------------------------------------------------------
CLAIM_METRICS = ("dice_white_matter", "dice_grey_matter", "dice_CSF", "psnr_B")
"""The judge's Dice on the normal tissues (the tumour goes unfound even on the real target at CPU sizes) and the
brain PSNR against the true target."""


def evidence_claims(pairs: Sequence[tuple[str, str]] = PAIRS, a: str = MIDIFFUSION,
                    others: Sequence[str] = (RAW, HISTOGRAM, SDEDIT)) -> list[Claim]:
    """Per pair, ``a`` beats each of ``others`` on ``CLAIM_METRICS`` (by default issue 12's target, MIDiffusion's
    translation beats the raw source and histogram matching, and the paper's claim over SDEdit), as
    :func:`mudiff.evaluation.stats.claims_table` reads them from :func:`long_scores`."""
    return [Claim(f"{a} beats {other} on {pair_name(*pair)}", (a, pair_name(*pair)), (other, pair_name(*pair)),
                  CLAIM_METRICS) for pair in pairs for other in others]


def long_scores(translation: pd.DataFrame, dice: pd.DataFrame, seed: int) -> pd.DataFrame:
    """:func:`translation_scores` and :func:`segmentation_scores` of training seed ``seed`` as one frame: a row per
    pair, input and slice with ``run`` (the input), ``output`` (the pair), ``seed``, ``subject``, ``index``, the
    brain PSNR/SSIM/MAE and a ``dice_<class>`` column per class (spaces as underscores); the real target has Dice
    only."""
    keys = ["pair", "method", "subject", "index"]
    wide = (dice.assign(metric="dice_" + dice["class"].str.replace(" ", "_"))
            .pivot(index=keys, columns="metric", values="dice").reset_index())
    wide.columns.name = None
    frame = wide.merge(translation[keys + ["psnr_B", "ssim_B", "mae_B"]], on=keys, how="outer")
    return frame.rename(columns={"method": "run", "pair": "output"}).assign(seed=seed)


def weights_digest(model: torch.nn.Module) -> str:
    """SHA-1 of ``model``'s state (names, shapes and values): the same digest, the same network."""
    import hashlib

    digest = hashlib.sha1()
    for name, value in model.state_dict().items():
        digest.update(name.encode())
        digest.update(value.detach().cpu().contiguous().numpy().tobytes())
    return digest.hexdigest()


def judges_digests(segmenters: Mapping[str, Segmenter]) -> dict[str, str]:
    """{target: :func:`weights_digest` of its judge}: what a set of judges' scores were made with."""
    return {t: weights_digest(s.model) for t, s in segmenters.items()}


def seed_evidence(config: str | Path, root: str | Path, test_root: str | Path, runs_root: str | Path,
                  pairs: Sequence[tuple[str, str]], seed: int, overrides: Sequence[str],
                  judges: Mapping[int, Mapping[str, Segmenter]], references: Mapping[str, np.ndarray],
                  threads: int = 1) -> pd.DataFrame:
    """One training seed of the evidence (a worker process's job in the benchmark): train (or resume, or read back)
    MIDiffusion and SDEdit for every target of ``pairs`` on ``root`` at train.seed ``seed`` in ``runs_root``
    (``overrides`` as in :func:`train_runs`), translate the test split of ``test_root`` (sampling seed ``seed``) and
    score it with the untrained baselines and each set of target-only judges of ``judges`` ({judge seed: {target:
    segmenter}}): :func:`long_scores` with a ``judge`` column (the judge seed; PSNR/SSIM/MAE repeat per judge).
    The translations are kept in ``runs_root/translations.npz``, each judge set's scores in
    ``runs_root/scores/<digest>.csv``; each is read back while what it was made with is unchanged (the runs' steps,
    the test data, the pairs; for scores also the judges' weights), so new judges score the kept translations."""
    import hashlib

    from mudiff.checkpoint import checkpoint_info
    from mudiff.evaluation.segmentation import load_split

    torch.set_num_threads(threads)
    runs_root = Path(runs_root)
    targets = {t: s for s, t in pairs}
    runs = train_runs(config, root, runs_root, targets, overrides=[*overrides, f"train.seed={seed}"])
    translated_with = {"run_steps": {f"{method} {t}": checkpoint_info(run)[0] for (method, t), run in runs.items()},
                       "test": str(test_root), "pairs": [list(p) for p in pairs]}
    frames, test, translations = {}, None, None
    for judge, segmenters in judges.items():
        scored_with = {**translated_with, "judges": judges_digests(segmenters)}
        stem = runs_root / "scores" / hashlib.sha1(json.dumps(scored_with["judges"]).encode()).hexdigest()[:16]
        frames[judge] = _read_back(stem.with_suffix(".json"), scored_with,
                                   lambda: pd.read_csv(stem.with_suffix(".csv"), dtype={"subject": str}))
        if frames[judge] is not None:
            continue
        if translations is None:
            test = load_split(test_root, "test")
            translations = _read_back(runs_root / "translations.json", translated_with,
                                      lambda: _load_translations(runs_root / "translations.npz"))
        if translations is None:
            samplers = {(name, target): Sampler.from_checkpoint(runs[method, target], device="cpu")
                        for name, method in MODEL_METHODS.items() for target in targets}
            translations = translate_pairs(test, pairs, samplers, references, seed, progress=False)
            _save_translations(runs_root / "translations.npz", translations)
            (runs_root / "translations.json").write_text(json.dumps(translated_with))
        frames[judge] = long_scores(translation_scores(test, translations),
                                    segmentation_scores(segmenters, test, translations), seed)
        stem.parent.mkdir(exist_ok=True)
        frames[judge].to_csv(stem.with_suffix(".csv"), index=False)
        stem.with_suffix(".json").write_text(json.dumps(scored_with))
    return pd.concat([frame.assign(judge=judge) for judge, frame in frames.items()], ignore_index=True)


def pool_judges(scores: pd.DataFrame) -> pd.DataFrame:
    """:func:`seed_evidence`'s scores with every metric averaged over the ``judge`` column per run, pair, seed,
    subject and slice: one row per slice, as :func:`mudiff.evaluation.stats.claims_table` reads them. A judge's NaN
    Dice (nothing to find, nothing found) is left out of the mean; PSNR/SSIM/MAE do not depend on the judge."""
    keys = ["output", "run", "seed", "subject", "index"]
    return scores.drop(columns="judge").groupby(keys, as_index=False, sort=False).mean()


def _read_back(record: Path, made_with: dict, read: Callable[[], T]) -> T | None:
    """``read()`` if ``record`` says it was made with ``made_with``, else None."""
    if record.is_file() and json.loads(record.read_text()) == made_with:
        return read()
    return None


def _save_translations(path: Path, translations: Mapping[str, Mapping[str, np.ndarray]]) -> None:
    """{pair: {input: (N, H, W)}} -> ``path`` (npz, dtypes kept), written whole or not at all."""
    tmp = path.with_name(path.stem + ".tmp.npz")
    np.savez(tmp, **{f"{pair}{PAIR_INPUT}{name}": np.asarray(x)
                     for pair, inputs in translations.items() for name, x in inputs.items()})
    os.replace(tmp, path)


def _load_translations(path: Path) -> dict[str, dict[str, np.ndarray]]:
    """The inverse of :func:`_save_translations` (pairs and inputs in their saved order)."""
    translations: dict[str, dict[str, np.ndarray]] = {}
    with np.load(path) as saved:
        for key in saved.files:
            pair, name = key.split(PAIR_INPUT)
            translations.setdefault(pair, {})[name] = saved[key]
    return translations


# ---- figures -----------------------------------------------------------------------------------------------------
def lmi_panels(source: np.ndarray, target: np.ndarray, timesteps: Sequence[int], alphas_cumprod: torch.Tensor,
               modes: Sequence[str], seed: int = 0, **lmi_args) -> tuple[list[list[np.ndarray]], list[str]]:
    """LMI maps of one slice: per mode a row [LMI(s, s), LMI(s, target), LMI(s, x_t) for each t], x_t the noised
    target (the training input's distribution), with the column titles; source, target (H, W) in [0, 1]."""
    s = torch.from_numpy(np.asarray(source, np.float32))[None, None]
    y = torch.from_numpy(np.asarray(target, np.float32))[None, None]
    noise = torch.randn(y.shape, generator=torch.Generator().manual_seed(seed))
    noisy = [alphas_cumprod[t].sqrt() * y + (1 - alphas_cumprod[t]).sqrt() * noise for t in timesteps]
    rows = [[lmi(s, x, mode=mode, **lmi_args)[0, 0].numpy() for x in (s, y, *noisy)] for mode in modes]
    return rows, ["LMI(s, s)", "LMI(s, target)", *[f"LMI(s, x_t), t={t}" for t in timesteps]]


def plot_lmi_maps(source: np.ndarray, target: np.ndarray, names: tuple[str, str], timesteps: Sequence[int],
                  alphas_cumprod: torch.Tensor, modes: Sequence[str], out: str | Path | None = None, seed: int = 0,
                  **lmi_args) -> plt.Figure:
    """The source, the target and their LMI maps in each mode (rows), maps on a common [0, 2] scale (normalised
    MI); the CSV holds each map's brain mean."""
    rows, titles = lmi_panels(source, target, timesteps, alphas_cumprod, modes, seed, **lmi_args)
    brain = np.asarray(source) > 0
    table = pd.DataFrame([{"mode": m, "map": t, "brain_mean": float(v[brain].mean())}
                          for m, row in zip(modes, rows) for t, v in zip(titles, row)])
    vmax = max(float(np.max(v)) for row in rows for v in row)
    grid = [[source, target, *row] for row in rows]
    fig = image_grid(grid, [names[0] + " (s)", names[1], *titles], [f"{m} LMI" for m in modes],
                     cmaps=["gray", "gray"] + ["magma"] * len(titles), vmax=[1, 1] + [vmax] * len(titles),
                     suptitle=f"local mutual information, common scale [0, {vmax:.2f}]; {PHANTOM_NOTE}")
    return save_figure(fig, out, table)


def plot_chain(snapshots: Sequence[tuple[int, np.ndarray]], source: np.ndarray, target: np.ndarray,
               title: str = "", out: str | Path | None = None) -> plt.Figure:
    """The reverse chain as a strip: the source, snapshots (t, (H, W)) clipped to [0, 1], the true target."""
    images = [source] + [np.clip(x, 0, 1) for _, x in snapshots] + [target]
    titles = ["source"] + [f"t={t}" if t >= 0 else "result" for t, _ in snapshots] + ["true target"]
    return save_figure(image_grid([images], titles, suptitle=title or PHANTOM_NOTE, cell=1.6), out)


def plot_translations(data: SegData, translations: Mapping[str, Mapping[str, np.ndarray]], k: int,
                      out: str | Path | None = None, note: str = "") -> plt.Figure:
    """Slice ``k`` of every pair (rows): the source, the true target and each input (columns)."""
    methods = list(dict.fromkeys(m for inputs in translations.values() for m in inputs))
    rows = []
    for pair, inputs in translations.items():
        target = pair.split(" -> ")[1]
        rows.append([data.images[k, data.contrasts.index(target)]]
                    + [inputs[m][k] if m in inputs else None for m in methods])
    fig = image_grid(rows, ["true target", *methods], list(translations),
                     suptitle=f"{data.subjects[k]} z={data.z[k]}; {PHANTOM_NOTE}" + (f"\n{note}" if note else ""))
    return save_figure(fig, out)


def plot_dice(summary: pd.DataFrame, classes: Sequence[str] | None = None, out: str | Path | None = None,
              note: str = "") -> plt.Figure:
    """Mean Dice (sd as error bars) per pair (groups) and input (bars), one panel per class of ``classes``
    (default: every class of ``summary``, in its order)."""
    classes = list(dict.fromkeys(summary["class"])) if classes is None else list(classes)
    part = summary[summary["class"].isin(classes)]
    pairs, methods = list(dict.fromkeys(part["pair"])), list(dict.fromkeys(part["method"]))
    fig, axes = plt.subplots(len(classes), 1, squeeze=False, sharex=True,
                             figsize=(max(7.0, 1.6 * len(pairs) * len(methods) / 3), 0.6 + 3.0 * len(classes)))
    width = 0.8 / len(methods)
    for ax, class_name in zip(axes[:, 0], classes):
        for m, method in enumerate(methods):
            rows = part[(part["class"] == class_name) & (part["method"] == method)].set_index("pair").reindex(pairs)
            x = np.arange(len(pairs)) + (m - (len(methods) - 1) / 2) * width
            ax.bar(x, rows["dice_mean"], width, yerr=rows["dice_sd"].fillna(0), capsize=2, label=method,
                   color=f"C{m}")
        ax.set_xticks(range(len(pairs)), pairs)
        ax.set_ylim(0, 1.05), ax.set_ylabel(f"Dice, {class_name}\n(mean +- sd over slices)", fontsize=8)
    axes[0, 0].legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1.0))
    axes[0, 0].set_title(f"a segmenter trained on the target contrast only, applied to each input\n{PHANTOM_NOTE}"
                         + (f"\n{note}" if note else ""), fontsize=8)
    return save_figure(fig, out, part)


def explorer(samplers: Mapping[tuple[str, str], Sampler], data: SegData, pairs: Sequence[tuple[str, str]],
             steps: int | None = None, seed: int = 0, index: int | None = None, interactive: bool | None = None,
             out: str | Path | None = None):
    """Pick a pair (source contrast), a test slice, the reverse steps, the LMI mode and a seed: the source, the
    MIDiffusion translation, the true target and the maps LMI(s, s), LMI(s, translation) in that mode. A mode
    other than the run's shows why it cannot translate (the run was trained with its own mode).

    Headless: the static figure of the first pair on slice ``index`` (default: the largest lesion), saved to
    ``out``."""
    from mudiff.display.explore import is_interactive, show_figure, show_widget
    from mudiff.models.lmi import LMI_MODES

    if index is None:
        index = int(np.argmax((data.label > 0).reshape(len(data), -1).sum(1)))

    def figure(pair: int, k: int, n_steps: int | None, mode: str, image_seed: int) -> plt.Figure:
        source, target = pairs[pair]
        sampler = samplers[MIDIFFUSION, target]
        s = data.images[k, data.contrasts.index(source)]
        run_mode = sampler.cfg.model.lmi_mode
        title = f"{pair_name(source, target)}, {data.subjects[k]} z={data.z[k]}, seed {image_seed}, {mode} LMI"
        result = None
        if mode == run_mode:
            result = translate(sampler, s[None], [int(data.index[k])], source, image_seed, n_steps)[0] * data.brain[k]
            steps_used = sampler.method.network_evaluations if n_steps is None else n_steps
            title += f", {steps_used} steps"
        else:
            title += f": the {target} run was trained with {run_mode} LMI, so it cannot translate with {mode} LMI"
        s_t, m = torch.from_numpy(s)[None, None], sampler.cfg.model  # the maps with the run's LMI settings
        settings = dict(mode=mode, patch=m.lmi_patch, sigma=m.lmi_sigma, normalized=m.lmi_normalized)
        maps = [lmi(s_t, s_t, **settings)[0, 0].numpy(),
                None if result is None else lmi(s_t, torch.from_numpy(result)[None, None], **settings)[0, 0].numpy()]
        vmax = max(float(np.max(m)) for m in maps if m is not None)
        return image_grid([[s, result, data.images[k, data.contrasts.index(target)], *maps]],
                          [source, f"MIDiffusion {target}", f"true {target}", "LMI(s, s)", "LMI(s, result)"],
                          cmaps=["gray"] * 3 + ["magma"] * 2, vmax=[1, 1, 1, vmax, vmax],
                          suptitle=f"{title}\n{PHANTOM_NOTE}")

    if not is_interactive(interactive):
        mode = samplers[MIDIFFUSION, pairs[0][1]].cfg.model.lmi_mode
        return save_figure(figure(0, index, steps, mode, seed), out)

    import ipywidgets as w

    pick_pair = w.Dropdown(options=[(pair_name(*p), i) for i, p in enumerate(pairs)], value=0, description="pair")
    pick_slice = w.IntSlider(min=0, max=len(data) - 1, value=index, description="slice", continuous_update=False)
    pick_steps = w.BoundedIntText(value=steps or samplers[MIDIFFUSION, pairs[0][1]].method.network_evaluations,
                                  min=1, max=100_000, description="steps")
    pick_mode = w.Dropdown(options=list(LMI_MODES), value=samplers[MIDIFFUSION, pairs[0][1]].cfg.model.lmi_mode,
                           description="LMI mode")
    pick_seed = w.BoundedIntText(value=seed, min=0, max=2**31 - 1, description="seed")
    output = w.Output()
    controls = (pick_pair, pick_slice, pick_steps, pick_mode, pick_seed)

    def draw(_=None) -> None:
        with output:
            output.clear_output(wait=True)
            try:
                show_figure(figure(pick_pair.value, pick_slice.value, pick_steps.value, pick_mode.value,
                                   pick_seed.value))
            except ValueError as err:  # e.g. more steps than the run's T
                print(err)

    for control in controls:
        control.observe(draw, "value")
    draw()
    return show_widget(w.VBox([w.HBox(controls[:3]), w.HBox(controls[3:]), output]))


__all__ = ["PAIRS", "REAL", "RAW", "HISTOGRAM", "INVERTED", "SDEDIT", "MIDIFFUSION", "PAIRED", "MODEL_METHODS",
           "PAIRED_OVERRIDES", "pair_name", "zero_shot_config", "train_runs", "train_paired_runs",
           "reference_intensities", "histogram_match", "translate", "translate_pairs", "steps_comparison",
           "translation_scores", "target_only", "judge_classes", "segmentation_scores", "summary_table",
           "paired_tests", "CLAIM_METRICS", "evidence_claims", "long_scores", "weights_digest", "judges_digests",
           "seed_evidence", "pool_judges", "lmi_panels", "plot_lmi_maps", "plot_chain", "plot_translations",
           "plot_dice", "explorer"]
