"""Notebook 11's steps: labelled phantom data, the runs of the comparison (trained by the shared loop through
:func:`mudiff.experiments.comparisons.train_variants`), generation at equal n, metrics before and after the trust gate,
and the figures (sample grids, control charts, nearest neighbours) and the explorer.

Numbers on the phantom are a controlled benchmark with known truth, not evidence about real patients; quick
settings are short CPU runs, a pipeline check, not a result.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Mapping, Sequence

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import torch

from mudiff.data.labelled import LabelledSlices, load_labelled, phantom_class_slices, read_manifest
from mudiff.display.viz import PHANTOM_NOTE, QUICK_NOTE, save_figure
from mudiff.evaluation import class_eval
from mudiff.evaluation.stats import mean_interval, verdict
from mudiff.evaluation.trust_gate import GateBudgetError, TrustGate, plot_control_chart

RUNS: dict[str, list[str]] = {
    "ddpm_cfg": [],  # the default: class embedding + classifier-free guidance
    "ddpm_faithful": ["model.class_conditioning=faithful"],  # DF_MRI's additive scalar-label bias
    "ddpm_uncond": ["model.class_conditioning=none"],  # the "no label" ablation
    "cwgan_gp": ["model.method=cwgan_gp", "train.lr_g=2.0e-4", "train.adam_betas=[0.5, 0.999]"],
    "wgan_gp": ["model.method=wgan_gp", "train.lr_g=2.0e-4", "train.adam_betas=[0.5, 0.999]"],
}
"""The runs of the comparison: name -> overrides of the base config (``configs/class_quick.yaml``)."""
GATE_SEEDS, GATE_SEEDS_PER_CLASS = 10**9, 10**6
"""The gated sets' seeds: evaluation seed s, class k tries (s + 1) * 10**9 + k * 10**6 + 0, 1, ... (a try budget of
4 n stays inside its class's block for n < 250,000 images per class)."""
JUDGE_SEED = 10**6
"""At evaluation seed s the independent judge is a real-data classifier with seed s + JUDGE_SEED, a seed no other
classifier of the comparison draws (the gate's and the TSTR classifiers' have seed s)."""
COLUMNS = ["set", "class", "n", "fid", "kid_x1000", "fd_domain", "class_fidelity", "class_fidelity_judge",
           "class_fidelity_probe", "tstr_synthetic", "tstr_real+synthetic", "acceptance_rate"]
INCEPTION_COLUMNS = ("fid", "kid_x1000", "class_fidelity_probe")
"""The columns of :meth:`Comparison.metrics`; INCEPTION_COLUMNS only with the Inception features."""


def labelled_data(out: str | Path, subjects_per_class: Mapping[str, int], size: int, contrasts: Sequence[str],
                  slices_per_subject: int, seed: int) -> dict[str, LabelledSlices]:
    """The labelled phantom slices in ``out`` (made when missing; an existing folder must hold the same recipe)."""
    out = Path(out)
    recipe = {"subjects_per_class": dict(subjects_per_class), "size": size, "contrasts": list(contrasts),
              "slices_per_subject": slices_per_subject, "seed": seed}
    if (out / "manifest.json").is_file():
        source = read_manifest(out)["source"]
        differs = {k: (source.get(k), v) for k, v in recipe.items() if source.get(k) != v}
        if differs:
            raise ValueError(f"{out} holds other labelled slices ({differs}: found, asked); delete it or choose "
                             "another folder")
    else:
        phantom_class_slices(out, subjects_per_class, size, contrasts, slices_per_subject, seed=seed)
    return {s: load_labelled(out, s) for s in ("train", "val", "test")}


def counts_table(data: Mapping[str, LabelledSlices]) -> pd.DataFrame:
    """Images per class (rows) and split (columns)."""
    return pd.DataFrame({split: part.counts() for split, part in data.items()})


def grid(rows: Mapping[str, np.ndarray], classes: Sequence[str], per_class: int, title: str = "",
         out: str | Path | None = None) -> plt.Figure:
    """Sample grid: one row per set (name -> (N, C, H, W) in [-1, 1] ordered by class, ``per_class`` each), the
    classes side by side; the first channel shown."""
    fig, axes = plt.subplots(len(rows), len(classes) * per_class, squeeze=False,
                             figsize=(1.1 * len(classes) * per_class, 1.25 * len(rows) + 0.6))
    for r, (name, images) in enumerate(rows.items()):
        for j, ax in enumerate(axes[r]):
            ax.imshow(images[j, 0], cmap="gray", vmin=-1, vmax=1)
            ax.set_xticks([])
            ax.set_yticks([])
            if r == 0 and j % per_class == 0:
                ax.set_title(classes[j // per_class], fontsize=8, loc="left")
        axes[r, 0].set_ylabel(name, fontsize=8)
    fig.suptitle(title, fontsize=8)
    fig.tight_layout()
    return save_figure(fig, out)


def first_of_each_class(data: LabelledSlices, per_class: int) -> np.ndarray:
    """(K * per_class, C, H, W): the first ``per_class`` images of each class, classes in order."""
    return np.concatenate([data.of_class(c)[:per_class] for c in data.classes])


class Comparison:
    """The trained runs, evaluated against the held-out real test split at equal n per class.

    Args:
        runs: name -> run folder (class-conditioned generators).
        data: the labelled splits; train for the classifier and references, val for the gate's limits, test for
            the metrics.
        gate_rule: how the trust gate's limits come from held-out real scores (:data:`trust_gate.RULES`).
        probe: the linear probe on the Inception features, when already fitted on these data (it depends on the
            data alone, not on the seed); None: fitted here (with ``inception``).
    """

    def __init__(self, runs: Mapping[str, str | Path], data: Mapping[str, LabelledSlices], seed: int = 0,
                 classifier_steps: int = 300, inception: bool = True, domain_epochs: int = 20, device: str = "cpu",
                 batch_size: int = 32, gate_rule: str = "quantile", probe: class_eval.FeatureProbe | None = None):
        self.data, self.seed, self.device, self.batch_size = data, seed, device, batch_size
        self.classes = data["train"].classes
        self.models = {name: class_eval.load_generator(path, device) for name, path in runs.items()}
        self.classifier = class_eval.train_classifier(data["train"], classifier_steps, seed)
        self.judge = class_eval.train_classifier(data["train"], classifier_steps, seed + JUDGE_SEED)
        self.gate = TrustGate(self.classifier, data["train"], data["val"], rule=gate_rule)
        self.bank = class_eval.FeatureBank(data["train"], data["test"], inception, domain_epochs, seed, device)
        self.probe = probe  # a judge of another model family: a linear probe on the Inception features
        if inception and probe is None:
            train, val = (self.bank.features(data[s], f"real {s} images")["inception"] for s in ("train", "val"))
            self.probe = class_eval.FeatureProbe.fit(train, data["train"].labels, len(self.classes), val,
                                                     data["val"].labels)
        self.counts = data["test"].counts()
        self.generated: dict[str, LabelledSlices] = {}
        self.gate_logs: dict[str, pd.DataFrame] = {}

    def generate(self, name: str, gated: bool, **options) -> LabelledSlices:
        """Images of run ``name``, as many per class as the test split holds; ``gated``: through the trust gate
        (regenerating until accepted, budget 4 n). Seeds differ between the raw and the gated sets, and between the
        gated set's classes (each class tries its own block of seeds, as each raw image has its own seed)."""
        method, generator = self.models[name]
        key = f"{name}+gate" if gated else name
        if not gated:
            self.generated[key] = class_eval.generate_set(method, generator, self.counts, self.classes, self.seed,
                                                          self.batch_size, **options)
            return self.generated[key]
        images, labels, origins, logs = [], [], [], []
        for k, cls in enumerate(self.classes):
            def generate_fn(labels_, seeds):
                return method.generate(generator, torch.as_tensor(labels_), seeds, **options).cpu().numpy()
            n = self.counts[cls]
            try:
                result = self.gate.generate(generate_fn, cls, n, self.batch_size,
                                            seed=(self.seed + 1) * GATE_SEEDS + k * GATE_SEEDS_PER_CLASS)
                accepted, seeds, log = result.accepted, result.seeds, result.log
            except GateBudgetError as err:  # report it, and score what was accepted, then the first rejected tries
                log = err.log
                print(f"{name}: {err}")
                order = np.argsort(~log["accepted"].to_numpy(), kind="stable")[:n]
                seeds = log["seed"].to_numpy()[order].tolist()
                accepted = method.generate(generator, torch.full((n,), k), seeds, **options).cpu().numpy()
            images.append(accepted)
            labels.append(np.full(n, k))
            origins += [f"seed{s}" for s in seeds]
            logs.append(log.assign(run=name))
        self.gate_logs[name] = pd.concat(logs, ignore_index=True)
        self.generated[key] = LabelledSlices(np.concatenate(images), np.concatenate(labels), self.classes,
                                             np.array(origins))
        return self.generated[key]

    def generate_all(self, options: Mapping[str, dict] | None = None) -> None:
        """Every run's set before and after the gate; ``options[name]`` go to that run's ``generate``."""
        for name in self.models:
            for gated in (False, True):
                self.generate(name, gated, **(options or {}).get(name, {}))

    def metrics(self, names: Sequence[str], tstr_steps: int = 300) -> pd.DataFrame:
        """One row per set and class (and ``all``): n, FID, KID, domain FD, class fidelity (balanced over classes in
        the ``all`` row) by the gate's classifier, by the independent judge (a classifier the gate never saw) and,
        with the Inception features, by the linear probe on them (a judge of another model family), TSTR balanced
        accuracy (``all`` rows only), the gate's acceptance rate. The first set, ``real``, is the
        reference: the real test split itself (class fidelity: the classifiers' accuracy on it; TSTR: a classifier
        trained on the real training split; no distances), then each run and run+gate."""
        train, test = self.data["train"], self.data["test"]
        real_only = class_eval.accuracy(class_eval.train_classifier(train, tstr_steps, self.seed), test)["balanced"]
        tables = {"real": pd.DataFrame({"class": [*test.classes, "all"], "n": [*test.counts().values(), len(test)],
                                        "tstr_synthetic": real_only})}
        features = {"real": self.bank.real}
        for key in (k for name in names for k in (name, f"{name}+gate") if k in self.generated):
            useful = class_eval.tstr(self.generated[key], train, test, tstr_steps, self.seed)
            features[key] = self.bank.features(self.generated[key], f"{key} images")
            tables[key] = self.bank.distances(self.generated[key], key, features[key]).assign(
                tstr_synthetic=useful["synthetic"], **{"tstr_real+synthetic": useful["real+synthetic"]})
        rows = []
        for key, table in tables.items():
            images = test if key == "real" else self.generated[key]
            fidelity, judged = (class_eval.class_fidelity(c, images) for c in (self.classifier, self.judge))
            table = table.assign(set=key, class_fidelity=table["class"].map(fidelity),
                                 class_fidelity_judge=table["class"].map(judged))
            if self.probe is not None:
                probed = class_eval.class_fidelity(self.probe, images, features[key]["inception"])
                table["class_fidelity_probe"] = table["class"].map(probed)
            pooled = table["class"] == "all"
            for column in ("tstr_synthetic", "tstr_real+synthetic"):
                if column in table:
                    table[column] = table[column].where(pooled)
            if key.endswith("+gate"):
                log = self.gate_logs[key.removesuffix("+gate")]
                rates = log.groupby("class")["accepted"].mean().to_dict()
                table["acceptance_rate"] = table["class"].map({**rates, "all": log["accepted"].mean()})
            rows.append(table)
        columns = [c for c in COLUMNS if self.bank.inception or c not in INCEPTION_COLUMNS]
        return pd.concat(rows, ignore_index=True).reindex(columns=columns)


@dataclass(frozen=True)
class Target:
    """Set ``a`` beats set ``b`` (chance, 1 / classes, when ``b`` is None) on the pooled ``metric``."""

    text: str
    a: str
    b: str | None
    metric: str
    lower_is_better: bool = False


TARGETS = (
    Target("class fidelity of the guided DDPM is above chance", "ddpm_cfg", None, "class_fidelity"),
    Target("the guided DDPM's class fidelity beats the unconditional model's", "ddpm_cfg", "ddpm_uncond",
           "class_fidelity"),
    Target("the guided DDPM's TSTR beats cWGAN-GP's", "ddpm_cfg", "cwgan_gp", "tstr_synthetic"),
    Target("the trust gate lowers the guided DDPM's FID at equal n", "ddpm_cfg+gate", "ddpm_cfg", "fid",
           lower_is_better=True),
    Target("the trust gate raises the guided DDPM's class fidelity, judged by a classifier it did not use",
           "ddpm_cfg+gate", "ddpm_cfg", "class_fidelity_judge"),
    Target("the trust gate raises the guided DDPM's class fidelity, judged by a linear probe on Inception features",
           "ddpm_cfg+gate", "ddpm_cfg", "class_fidelity_probe"),
)
"""Issue 11's four quality targets, then whether the gate's gain in class fidelity holds for the independent judge
(the gate's own classifier favours what it accepted by construction) and for a judge of another model family (the
independent judge is a CNN like the gate's); tested over seeds by :func:`target_table`."""


def seed_evaluation(runs: Mapping[str, str | Path], data: Mapping[str, LabelledSlices], seeds: Sequence[int],
                    out_dir: str | Path, options: Mapping[str, dict] | None = None, classifier_steps: int = 300,
                    **comparison_options) -> pd.DataFrame:
    """:meth:`Comparison.metrics` of the same trained runs once per evaluation seed (the real-data classifier, the
    domain encoder, the generated and gated images, the TSTR classifiers all drawn anew), with a ``seed`` column.

    Each seed's table is written to ``out_dir/seed<k>.csv`` and read back when present, so that an interrupted
    call resumes and seeds can be split across processes. The spread measures sampling and evaluation noise, not
    training noise: the runs are trained once. A table written before a column was added is refused (delete it to
    rescore its seed), never read as if the column's targets had not been run.
    """
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    tables, probe = [], None  # the probe is the same at every seed: fitted once
    for seed in seeds:
        path = out_dir / f"seed{seed}.csv"
        if not path.is_file():
            comparison = Comparison(runs, data, seed, classifier_steps, probe=probe, **comparison_options)
            probe = comparison.probe
            comparison.generate_all(options)
            table = comparison.metrics(list(runs), classifier_steps).assign(seed=seed)
            table.to_csv(path.with_suffix(".tmp"), index=False)
            path.with_suffix(".tmp").replace(path)  # a table is either complete or absent
        table = pd.read_csv(path)
        missing = [c for c in COLUMNS if c not in table and ("fid" in table or c not in INCEPTION_COLUMNS)]
        if missing:
            raise ValueError(f"{path} was written by an earlier version (no {', '.join(missing)}); delete it to "
                             "rescore this seed")
        tables.append(table)
    return pd.concat(tables, ignore_index=True)


def target_table(metrics: pd.DataFrame, targets: Sequence[Target] = TARGETS) -> pd.DataFrame:
    """One row per target: the per-seed effect on the pooled rows of ``metrics`` (:func:`seed_evaluation`),
    oriented so that > 0 favours ``a``, its mean with a 95 % t interval and one-sample t-test p over seeds, and the
    verdict (met: the interval above 0 and every seed agreeing; missed: all of this the other way; else
    inconclusive). Targets whose sets are missing are listed as not run."""
    pooled = metrics[metrics["class"] == "all"].pivot_table(index="seed", columns="set", aggfunc="first")
    chance = 1 / metrics.loc[metrics["class"] != "all", "class"].nunique()
    labels = {"reproduced": "met", "not reproduced": "missed", "inconclusive at this scale": "inconclusive"}
    rows = []
    for target in targets:
        row = {"target": target.text, "metric": target.metric, "a": target.a, "b": target.b or f"chance ({chance:.3g})"}
        sets = [target.a] + ([target.b] if target.b else [])
        if target.metric not in pooled or any(s not in pooled[target.metric] for s in sets):
            rows.append({**row, "verdict": "not run"})
            continue
        values = pooled[target.metric]
        effect = (values[target.a] - (values[target.b] if target.b else chance)).dropna()
        effect = -effect if target.lower_is_better else effect
        mean, low, high, p = mean_interval(effect.to_numpy())
        rows.append({**row, "n_seeds": len(effect), "effect": mean, "ci_low": low, "ci_high": high, "p_ttest": p,
                     "per_seed": ", ".join(f"{v:+.3g}" for v in effect),
                     "verdict": labels[verdict("beats", low, high, list(effect), float("nan"))]})
    return pd.DataFrame(rows)


def nearest_neighbour_figure(generated: LabelledSlices, train: LabelledSlices, held_out: LabelledSlices, n: int = 6,
                             title: str = "", out: str | Path | None = None) -> plt.Figure:
    """The ``n`` generated images closest to a training image, above their nearest training image, with the
    distances; the median held-out real distance to the training set is the scale (memorised: far below it)."""
    table = class_eval.nearest_training_images(generated, train).head(n)
    scale = float(np.median(class_eval.train_nn_distances(train, held_out)))
    fig, axes = plt.subplots(2, n, figsize=(1.4 * n, 3.2), squeeze=False)
    for j, row in table.reset_index(drop=True).iterrows():
        axes[0, j].imshow(generated.images[int(row["index"]), 0], cmap="gray", vmin=-1, vmax=1)
        axes[1, j].imshow(train.images[int(row["nn_index"]), 0], cmap="gray", vmin=-1, vmax=1)
        axes[0, j].set_title(f"{row['class']}\nd={row['distance']:.3f}", fontsize=7)
    for ax in axes.ravel():
        ax.set_xticks([])
        ax.set_yticks([])
    axes[0, 0].set_ylabel("generated", fontsize=8)
    axes[1, 0].set_ylabel("nearest train", fontsize=8)
    fig.suptitle(f"{title}\nmedian held-out real distance to train: {scale:.3f}", fontsize=8)
    fig.tight_layout()
    return save_figure(fig, out, table.assign(held_out_median=scale))


def explorer(comparison: Comparison, name: str, interactive: bool | None = None, out: str | Path | None = None,
             classes: Sequence[str] | None = None, scales: Sequence[float] = (0.0, 1.0, 2.0, 4.0), n_seeds: int = 4):
    """Class x guidance scale x seed explorer for a DDPM run; a static figure (every class at each scale, seeds
    0..n_seeds-1) when headless."""
    from mudiff.display import explore

    method, generator = comparison.models[name]
    classes = list(classes or comparison.classes)

    def images(cls: str, scale: float, seeds: Sequence[int]) -> np.ndarray:
        labels = torch.full((len(seeds),), comparison.classes.index(cls))
        return method.generate(generator, labels, list(seeds), guidance_scale=scale).cpu().numpy()

    if not explore.is_interactive(interactive):
        rows = {f"w={w:g}": np.concatenate([images(c, w, range(n_seeds)) for c in classes]) for w in scales}
        return grid(rows, classes, n_seeds, f"{name}: guidance scale (rows) x class, seeds 0-{n_seeds - 1}", out)
    import ipywidgets as widgets

    cls = widgets.Dropdown(options=classes, description="class")
    scale = widgets.FloatSlider(value=2.0, min=0.0, max=6.0, step=0.5, description="guidance")
    seed = widgets.IntText(value=0, description="seed")
    output = widgets.Output()

    def redraw(_=None):
        with output:
            output.clear_output(wait=True)
            x = images(cls.value, scale.value, range(seed.value, seed.value + n_seeds))
            fig, axes = plt.subplots(1, n_seeds, figsize=(1.6 * n_seeds, 1.9))
            for k, ax in enumerate(axes):
                ax.imshow(x[k, 0], cmap="gray", vmin=-1, vmax=1)
                ax.set_title(f"seed {seed.value + k}", fontsize=7)
                ax.axis("off")
            fig.suptitle(f"{name}: {cls.value}, w = {scale.value:g}", fontsize=8)
            explore.show_figure(fig)

    for w in (cls, scale, seed):
        w.observe(redraw, names="value")
    redraw()
    return explore.show_widget(widgets.VBox([widgets.HBox([cls, scale, seed]), output]))


def note(quick: bool) -> str:
    return f"{PHANTOM_NOTE}; {QUICK_NOTE}" if quick else PHANTOM_NOTE


__all__ = ["RUNS", "JUDGE_SEED", "COLUMNS", "INCEPTION_COLUMNS", "labelled_data", "counts_table", "grid",
           "first_of_each_class", "Comparison", "Target", "TARGETS", "seed_evaluation", "target_table",
           "nearest_neighbour_figure", "explorer", "plot_control_chart", "note"]
