"""The phantom study: the paper's claims tested with training seeds, held-out subjects and paired tests.

Every method of notebook 03 and every ablation of notebooks 06-08 is trained on the same prepared phantom with
several training seeds (:func:`train_study`, runs in parallel worker processes, each run folder resumes and a
finished one is only read back); each run is then scored on the held-out test subjects
(:func:`score_study`), and every claim of the paper becomes one row of a claims table with the effect across
subjects (seeds pooled and per seed), a 95 % interval, a paired test and a verdict (:func:`claims_table`).
The same runs give the uncertainty maps (:mod:`mudiff.evaluation.uncertainty`) and the normalisation comparison.

Layout under ``plan.runs_root``: ``<normalization>/seed<k>/<run name>/`` (a normal run folder).
"""
from __future__ import annotations

import json
import math
import time
from concurrent.futures import as_completed
from dataclasses import dataclass, field
from pathlib import Path
from typing import Mapping, Sequence

import numpy as np
import pandas as pd

from mudiff.config import RunConfig
from mudiff.evaluation import stats
from mudiff.evaluation.stats import VERDICTS, Claim, mean_interval, verdict
from mudiff.experiments.comparisons import COMPONENTS, CRITIC, MASK_HEAD, METHODS, build_config, timestep_runs
from mudiff.processes import train_in_worker, worker_pool

STUDY_RUNS: dict[str, list[str]] = {
    **METHODS,  # mudiff (T = 4, the full model), single (abl1 and supervised SynDiff), pix2pix, ddpm, unet_l1, copy
    **timestep_runs((2, 8)),  # T = 4 is `mudiff`
    "no_critic": CRITIC["no_critic"],
    **{name: o for name, o in COMPONENTS.items() if name not in ("abl1_single", "mudiff")},  # abl1 is `single`
    "fixed_mask_head": MASK_HEAD["fixed_mask_head"],
}
"""Every run of the study: run name -> overrides of the study's base config."""

PAPER_NORMALIZATION = "percentile"


def default_size(device: str = "auto") -> int:
    """The study's slice size for a device: 48 on a CPU (the size at which the study profile's training fits about
    1.7 of the 2.5 hours on a 2-core CPU: benchmarks/study_cost_benchmark.py; at 64 it needs 2.9), 128 on a GPU."""
    from mudiff.runtime import resolve_device

    return 128 if resolve_device(device).type == "cuda" else 48


@dataclass
class StudyPlan:
    """What the study trains and on which data; every path is relative to the working directory."""

    config: str = "configs/study.yaml"  # base config of every run (the MU-Diff run)
    overrides: list[str] = field(default_factory=list)  # on top of it, for every run (e.g. tiny sizes in tests)
    data_dir: str = "data/study_phantom"  # phantom subjects, made when missing
    slices_root: str = "data/study_slices"  # prepared slices: <slices_root>_<normalization>
    runs_root: str = "runs/study"
    n_subjects: int = 36
    resolution: float = 2.0  # mm
    split: tuple[float, float, float] = (0.5, 0.17, 0.33)  # by subject: train / val (choices) / test (claims)
    slices: int = 16  # middle axial slices per subject
    size: int = 48  # slice size (default_size: 48 on a CPU, 128 on a GPU)
    runs: list[str] = field(default_factory=lambda: list(STUDY_RUNS))
    seeds: list[int] = field(default_factory=lambda: [0, 1, 2])  # training seeds of every run
    normalizations: list[str] = field(default_factory=lambda: [PAPER_NORMALIZATION, "percentile_outside_lesion",
                                                               "zscore_outside_lesion"])
    normalization_runs: list[str] = field(default_factory=lambda: ["mudiff", "unet_l1", "copy_source"])
    normalization_seeds: list[int] = field(default_factory=lambda: [0])
    phantom_seed: int = 0  # seed of the phantom and of the subject split
    device: str = "auto"
    workers: int = 2  # training processes at once (2 on a 2-core CPU: one thread each)
    threads: int = 1  # torch threads per training process

    def __post_init__(self) -> None:
        from mudiff.data.prepare import NORMALIZATIONS

        unknown = [r for r in [*self.runs, *self.normalization_runs] if r not in STUDY_RUNS]
        if unknown:
            raise ValueError(f"unknown study run(s) {unknown}; choose from {list(STUDY_RUNS)}")
        bad = [n for n in self.normalizations if n not in NORMALIZATIONS]
        if bad:
            raise ValueError(f"unknown normalization(s) {bad}; choose from {list(NORMALIZATIONS)}")
        if PAPER_NORMALIZATION not in self.normalizations:
            raise ValueError(f"normalizations must include {PAPER_NORMALIZATION!r}: the claims are tested on it")
        if not self.seeds or len(set(self.seeds)) != len(self.seeds):
            raise ValueError(f"seeds must be distinct and at least one, got {self.seeds}")
        if self.workers < 1 or self.threads < 1:
            raise ValueError(f"workers and threads must be >= 1, got {self.workers}, {self.threads}")
        self.split = tuple(self.split)

    def slices_dir(self, normalization: str) -> Path:
        return Path(f"{self.slices_root}_{normalization}")

    def run_dir(self, normalization: str, seed: int, name: str) -> Path:
        return Path(self.runs_root) / normalization / f"seed{seed}" / name

    def jobs(self) -> list["Job"]:
        """Every (normalization, seed, run) of the plan, the paper's normalisation and the lowest seeds first
        (so a study stopped early can already be scored on its first seeds)."""
        wanted = [(PAPER_NORMALIZATION, s, r) for s in self.seeds for r in self.runs]
        wanted += [(n, s, r) for n in self.normalizations if n != PAPER_NORMALIZATION
                   for s in self.normalization_seeds for r in self.normalization_runs]
        return [Job(n, s, r, self.run_dir(n, s, r), self.run_config(n, s, r)) for n, s, r in wanted]

    def run_config(self, normalization: str, seed: int, name: str) -> RunConfig:
        return build_config(self.config, [*self.overrides, *STUDY_RUNS[name], f"data.root={self.slices_dir(normalization)}",
                                          f"train.seed={seed}", f"train.device={self.device}",
                                          f"model.image_size={self.size}"])


@dataclass
class Job:
    normalization: str
    seed: int
    run: str
    folder: Path
    cfg: RunConfig

    @property
    def label(self) -> str:
        return f"{self.normalization}/seed{self.seed}/{self.run}"


# ---- data -------------------------------------------------------------------------------------------------------
def prepare_study_data(plan: StudyPlan) -> dict[str, Path]:
    """The phantom (made when missing) and its slices under every normalisation, all with the same split."""
    from mudiff.demo import ensure_phantom, ensure_slices

    ensure_phantom(plan.data_dir, plan.n_subjects, seed=plan.phantom_seed, resolution=plan.resolution)
    return {n: ensure_slices(plan.data_dir, plan.slices_dir(n), size=plan.size, slices=plan.slices,
                             seed=plan.phantom_seed, split=plan.split, normalization=n)
            for n in plan.normalizations}


def external_test_data(plan: StudyPlan, n_subjects: int, phantom_seed: int) -> dict[str, Path]:
    """More held-out subjects: ``n_subjects`` new phantom subjects (``phantom_seed`` other than the plan's, so none
    is a subject the runs saw), all in the test split, prepared like the plan's data under every normalisation;
    normalization -> prepared data, for :func:`score_study`'s ``external``."""
    from mudiff.demo import ensure_phantom, ensure_slices

    if phantom_seed == plan.phantom_seed:
        raise ValueError(f"phantom_seed {phantom_seed} is the study's own: its subjects include the training ones")
    data_dir = f"{plan.data_dir}_external_seed{phantom_seed}"
    ensure_phantom(data_dir, n_subjects, seed=phantom_seed, resolution=plan.resolution)
    return {n: ensure_slices(data_dir, f"{plan.slices_root}_external_seed{phantom_seed}_{n}", size=plan.size,
                             slices=plan.slices, seed=phantom_seed, split=(0.0, 0.0, 1.0), normalization=n)
            for n in plan.normalizations}


# ---- training ---------------------------------------------------------------------------------------------------
def train_study(plan: StudyPlan, log=print) -> list[Job]:
    """Train every run of the plan that is not finished, ``plan.workers`` at a time; returns the jobs.

    A run that fails (e.g. non-finite losses) is reported and the others go on; the error is raised at the end.
    """
    prepare_study_data(plan)
    jobs = plan.jobs()
    failures = []
    start = time.perf_counter()
    with worker_pool(plan.workers) as pool:
        futures = {pool.submit(train_in_worker, job.cfg.to_dict(), str(job.folder), plan.threads): job for job in jobs}
        for done, future in enumerate(as_completed(futures), 1):
            job = futures[future]
            try:
                result = future.result()
            except Exception as err:  # noqa: BLE001 - reported, then raised after the other runs
                failures.append(f"{job.label}: {type(err).__name__}: {err}")
                log(f"[{done}/{len(jobs)}] {job.label} FAILED: {err}")
                continue
            log(f"[{done}/{len(jobs)}] {job.label}: step {result['step']} ({result['seconds']:.0f} s; "
                f"{(time.perf_counter() - start) / 60:.1f} min so far)")
    if failures:
        raise RuntimeError(f"{len(failures)} study run(s) failed: " + "; ".join(failures[:3])
                           + ("; ..." if len(failures) > 3 else ""))
    return jobs



# ---- scores -----------------------------------------------------------------------------------------------------
def is_finished(job: Job) -> bool:
    """Whether the job's run folder holds a checkpoint at the end of its training."""
    import torch

    path = job.folder / "checkpoints" / "last.pt"
    if not path.is_file():
        return False
    state = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
    tc = job.cfg.train
    return state["epoch"] >= tc.epochs or (tc.max_steps > 0 and state["step"] >= tc.max_steps)


def score_study(plan: StudyPlan, eval_seed: int = 0, progress: bool = False,
                external: Mapping[str, str | Path] | None = None, checkpoint: str = "last") -> pd.DataFrame:
    """Per-subject test scores of every finished run: one row per (normalization, seed, run, output, subject)
    with the metric columns (psnr_B ... mae_T) and the run's sampling seconds per slice. Outputs: ``mutual`` (every
    method's result) and, for two networks, ``x_p1`` and ``x_p2``. Eval files are written once per checkpoint.
    ``external`` (normalization -> prepared data): score the runs of each normalisation on the test split of
    those data instead (e.g. more held-out subjects, :func:`external_test_data`). ``checkpoint``: each run's
    ``last`` or ``best`` (kept with ``train.keep_best``)."""
    from mudiff.evaluation.evaluate import eval_dir, evaluate_runs, load_slice_metrics
    from mudiff.evaluation.metrics import unit_scores

    frames = []
    for job in plan.jobs():
        if not is_finished(job):
            continue
        data_root = None if external is None else external[job.normalization]
        evaluate_runs({job.label: job.folder}, split="test", seed=eval_seed, progress=progress, data_root=data_root,
                      checkpoint=checkpoint)
        summary = json.loads((eval_dir(job.folder, data_root, checkpoint) / "test_summary.json").read_text())
        for output in summary["outputs"]:
            units = unit_scores(load_slice_metrics(job.folder, "test", output, data_root, checkpoint),
                                "subject").reset_index()
            units.insert(0, "output", output)
            units.insert(0, "run", job.run)
            units.insert(0, "seed", job.seed)
            units.insert(0, "normalization", job.normalization)
            units["sampling_seconds_per_slice"] = summary["sampling_seconds_per_slice"]
            frames.append(units)
    if not frames:
        raise ValueError(f"no finished run under {plan.runs_root}: train the study first (train_study)")
    return pd.concat(frames, ignore_index=True)


# ---- claims -----------------------------------------------------------------------------------------------------
NO_GAIN_DB = 0.25
"""The largest PSNR gain (dB) that a no-gain claim still calls none: the study's convergence tolerance, below which
a run counts as no longer improving (:func:`convergence_table`)."""


def _both(metric_prefix: str) -> tuple[str, ...]:
    return tuple(f"{metric_prefix}_{r}" for r in ("B", "T"))


CLAIMS = (
    Claim("MU-Diff beats SynDiff-supervised (one network F1, = abl1)", ("mudiff", "mutual"), ("single", "mutual"),
          ("psnr_B", "ssim_B", "psnr_T", "ssim_T")),
    Claim("MU-Diff beats Pix2Pix", ("mudiff", "mutual"), ("pix2pix", "mutual"), ("psnr_B", "ssim_B", "psnr_T", "ssim_T")),
    Claim("the mutual result beats F1 alone (x^p1)", ("mudiff", "mutual"), ("mudiff", "x_p1"), _both("psnr")),
    Claim("the mutual result beats F2 alone (x^p2)", ("mudiff", "mutual"), ("mudiff", "x_p2"), _both("psnr")),
    Claim("rho and tau help: MU-Diff beats two F1-type networks (abl2)", ("mudiff", "mutual"),
          ("abl2_two_f1", "mutual"), _both("psnr")),
    Claim("tau helps: MU-Diff beats F2 without tau (abl3)", ("mudiff", "mutual"), ("abl3_no_tau", "mutual"),
          _both("psnr")),
    Claim("the mask loss helps: MU-Diff beats no mask loss (abl4)", ("mudiff", "mutual"),
          ("abl4_no_mask_loss", "mutual"), _both("psnr")),
    Claim("T = 4 beats T = 2", ("mudiff", "mutual"), ("T2", "mutual"), _both("psnr")),
    Claim("T = 8 gains nothing over T = 4 (T = 4 is the trade-off)", ("T8", "mutual"), ("mudiff", "mutual"),
          _both("psnr"), kind="no_gain", margin=NO_GAIN_DB),
    Claim("the learned mask head (the study's) is no worse: the published fixed head gains nothing over it",
          ("fixed_mask_head", "mutual"), ("mudiff", "mutual"), _both("psnr"), kind="no_gain", margin=NO_GAIN_DB),
)
"""The paper's claims that per-subject test scores can test (the FID and CKA claims: :func:`fid_claims`,
:func:`cka_claims`)."""

def claims_between(runs: Sequence[str]) -> list[Claim]:
    """The claims of :data:`CLAIMS` that compare only runs among ``runs`` (run names of :data:`STUDY_RUNS`)."""
    return [c for c in CLAIMS if {c.a[0], c.b[0]} <= set(runs)]


def claims_table(scores: pd.DataFrame, claims: Sequence[Claim] = CLAIMS) -> pd.DataFrame:
    """:func:`mudiff.evaluation.stats.claims_table` on the scores of the paper's normalisation."""
    return stats.claims_table(scores[scores["normalization"] == PAPER_NORMALIZATION], claims)


def seed_spread(scores: pd.DataFrame, metrics: Sequence[str] = ("psnr_B", "psnr_T", "ssim_B")) -> pd.DataFrame:
    """Per run and output (paper normalisation): the mean over subjects for each seed, and the mean +- sd over
    seeds, so that a difference smaller than the seed-to-seed spread is visible as such."""
    rows = scores[scores["normalization"] == PAPER_NORMALIZATION]
    per_seed = rows.groupby(["run", "output", "seed"])[list(metrics)].mean()
    table = per_seed.groupby(["run", "output"]).agg(["mean", "std", "count"])
    table.columns = [f"{m}_{stat.replace('std', 'seed_sd').replace('count', 'seeds')}" for m, stat in table.columns]
    return table.reset_index()


def fid_claim(plan: StudyPlan, max_slices: int = 96, domain_epochs: int = 5, device: str = "auto"
              ) -> tuple[pd.DataFrame, pd.DataFrame]:
    """The critic lowers FID: per seed, FID / KID of MU-Diff and of its no-critic run against the same real test
    slices (equal n); the effect FID(no critic) - FID(MU-Diff) over seeds (> 0 favours the critic).
    Returns (per-seed FID table, claims rows)."""
    from mudiff.experiments.comparisons import fid_table

    per_seed = []
    for seed in plan.seeds:
        runs = {r: plan.run_dir(PAPER_NORMALIZATION, seed, r) for r in ("mudiff", "no_critic")}
        jobs = [j for j in plan.jobs() if j.normalization == PAPER_NORMALIZATION and j.seed == seed and j.run in runs]
        if len(jobs) < 2 or not all(is_finished(j) for j in jobs):
            continue
        table = fid_table(runs, max_slices=max_slices, seed=0, device=device, domain_epochs=domain_epochs)
        table.insert(0, "seed", seed)
        per_seed.append(table)
    if not per_seed:
        return pd.DataFrame(), pd.DataFrame([{"claim": "the critic lowers FID", "verdict": "not run"}])
    fids = pd.concat(per_seed, ignore_index=True)
    rows = []
    for metric in ("fid", "kid_mean"):
        wide = fids[fids["kind"] == "synthetic"].pivot_table(index="seed", columns="set", values=metric)
        effects = (wide["no_critic"] - wide["mudiff"]).to_numpy()
        mean, low, high, p = mean_interval(effects)
        rows.append({"claim": "the critic lowers FID (FID of the no-critic run minus MU-Diff's)", "metric": metric,
                     "a": "mudiff", "b": "no_critic", "n_subjects": None, "n_seeds": len(effects), "effect": mean,
                     "ci_low": low, "ci_high": high, "p_ttest": p, "p_wilcoxon": math.nan, "seed_sd": math.nan,
                     "per_seed": ", ".join(f"{v:+.3g}" for v in effects),
                     "verdict": verdict("beats", low, high, list(effects), math.nan)})
    return fids, pd.DataFrame(rows)


CKA_CLAIMS = (("the encoders of H1 and H2 are dissimilar (mean same-block CKA < 0.55)", "encoder", "mean_same_block",
               "below", 0.55),
              ("the first decoder blocks are similar (CKA > 0.7)", "decoder", "first_block", "above", 0.7))


def cka_claims(plan: StudyPlan, n_draws: int = 32, batch_size: int = 8, device: str = "auto"
               ) -> tuple[pd.DataFrame, pd.DataFrame]:
    """H1-vs-H2 CKA of every seed's MU-Diff run on the same seeded test draws; the claims over seeds (95 % t
    interval of the per-seed values against the paper's thresholds). Returns (per-seed summary, claims rows)."""
    from mudiff.data.dataset import TaskDataset
    from mudiff.evaluation.analysis import cka_summary, fixed_draws, h1_h2_cka
    from mudiff.sample import Sampler

    summaries = []
    for job in plan.jobs():
        if job.normalization != PAPER_NORMALIZATION or job.run != "mudiff" or not is_finished(job):
            continue
        sampler = Sampler.from_checkpoint(job.folder, device=device)
        test = TaskDataset(job.cfg.data.root, job.cfg.data.task, "test")
        draws = fixed_draws(test, sampler.method.schedule, job.cfg.model.z_dim, n=n_draws, seed=0,
                            device=sampler.device)
        results = [h1_h2_cka(sampler.method.generator, draws, part, batch_size) for part in ("encoder", "decoder")]
        summary = cka_summary(results)
        summary.insert(0, "seed", job.seed)
        summaries.append(summary)
    if not summaries:
        return pd.DataFrame(), pd.DataFrame([{"claim": c[0], "verdict": "not run"} for c in CKA_CLAIMS])
    table = pd.concat(summaries, ignore_index=True)
    rows = []
    for text, part, column, side, threshold in CKA_CLAIMS:
        values = table.loc[table["part"] == part, column].to_numpy()
        mean, low, high, _ = mean_interval(values)
        sign = 1 if side == "above" else -1  # oriented so that > 0 agrees with the paper
        lo, hi = sorted((sign * (low - threshold), sign * (high - threshold)))
        rows.append({"claim": text, "metric": f"{part} {column}", "a": "mudiff H1", "b": "mudiff H2",
                     "n_seeds": len(values), "effect": mean, "ci_low": low, "ci_high": high,
                     "per_seed": ", ".join(f"{v:.3f}" for v in values),
                     "verdict": verdict("beats", lo, hi, [sign * (v - threshold) for v in values], math.nan)})
    return table, pd.DataFrame(rows)


# ---- convergence and normalisation ------------------------------------------------------------------------------
def convergence_table(plan: StudyPlan, last_fraction: float = 0.25, tolerance_db: float = 0.25) -> pd.DataFrame:
    """Per finished run: validation PSNR of the result at the end, its gain over the last ``last_fraction`` of
    the validations, whether it has converged (gain below ``tolerance_db``) or is still improving, and the wall
    minutes its training steps took (``train_min``, from its log)."""
    from mudiff.train import read_stats, training_seconds

    rows = []
    for job in plan.jobs():
        stats = job.folder / "stats.jsonl"
        if not stats.is_file():
            continue
        records = read_stats(stats)
        curve = [r["val_psnr_mutual"] for r in records if "val_psnr_mutual" in r]
        if len(curve) < 2:
            continue
        start = curve[max(0, int(round(len(curve) * (1 - last_fraction))) - 1)]
        gain = curve[-1] - start
        rows.append({"normalization": job.normalization, "seed": job.seed, "run": job.run,
                     "validations": len(curve), "val_psnr_end": curve[-1], "best": max(curve),
                     "gain_last_quarter_db": gain,
                     "status": "converged" if gain < tolerance_db else f"still improving (+{gain:.2f} dB)",
                     "train_min": training_seconds(records) / 60})
    return pd.DataFrame(rows)


def validation_curves(plan: StudyPlan, out: str | Path | None = None):
    """Validation PSNR of the result against training steps, one panel per run, one line per seed."""
    import matplotlib.pyplot as plt

    from mudiff.display.viz import save_figure
    from mudiff.train import read_stats

    runs = list(dict.fromkeys(j.run for j in plan.jobs() if j.normalization == PAPER_NORMALIZATION))
    cols = min(4, len(runs))
    fig, axes = plt.subplots(math.ceil(len(runs) / cols), cols, figsize=(3.2 * cols, 2.4 * math.ceil(len(runs) / cols)),
                             squeeze=False)
    for ax, run in zip(axes.flat, runs):
        for seed in plan.seeds:
            stats = plan.run_dir(PAPER_NORMALIZATION, seed, run) / "stats.jsonl"
            records = [r for r in read_stats(stats) if "val_psnr_mutual" in r] if stats.is_file() else []
            if records:
                ax.plot([r["step"] for r in records], [r["val_psnr_mutual"] for r in records], marker=".",
                        label=f"seed {seed}")
                ax.axhline(records[-1]["val_psnr_copy_best"], color="grey", lw=0.7, ls=":")
        ax.set_title(run, fontsize=8)
        ax.set_xlabel("step", fontsize=7)
        ax.set_ylabel("val PSNR_B (dB)", fontsize=7)
        ax.tick_params(labelsize=6)
    for ax in list(axes.flat)[len(runs):]:
        ax.axis("off")
    axes.flat[0].legend(fontsize=6)
    fig.suptitle("validation PSNR of each run's result per seed (dotted: copying the best source)", fontsize=8)
    fig.tight_layout()
    return save_figure(fig, out)


def normalization_table(scores: pd.DataFrame) -> pd.DataFrame:
    """Per normalisation and run (``mutual``, the normalisation seeds): mean PSNR_B / PSNR_T over test subjects,
    the per-subject spread (sd and range of PSNR_B) and the method ranking by PSNR_B. Each normalisation's scores
    are on its own intensity scale: compare spreads and rankings, not levels across normalisations."""
    rows = scores[scores["output"] == "mutual"]
    seeds = rows[rows["normalization"] != PAPER_NORMALIZATION]["seed"].unique()
    rows = rows[rows["seed"].isin(seeds)] if len(seeds) else rows
    runs = rows[rows["normalization"] != PAPER_NORMALIZATION]["run"].unique()
    rows = rows[rows["run"].isin(runs)] if len(runs) else rows
    per_subject = rows.groupby(["normalization", "run", "subject"])[["psnr_B", "psnr_T"]].mean().reset_index()
    table = per_subject.groupby(["normalization", "run"]).agg(
        psnr_B=("psnr_B", "mean"), psnr_B_subject_sd=("psnr_B", "std"), psnr_B_min=("psnr_B", "min"),
        psnr_B_max=("psnr_B", "max"), psnr_T=("psnr_T", "mean"), subjects=("psnr_B", "count")).reset_index()
    table["rank_psnr_B"] = table.groupby("normalization")["psnr_B"].rank(ascending=False).astype(int)
    return table


def uncertainty_study(plan: StudyPlan, k: int = 8, max_slices: int | None = None, device: str = "auto"
                      ) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Per seed's MU-Diff run: K draws of the test slices (evenly spaced ``max_slices``, all when None); whether
    the std map is informative (:func:`mudiff.evaluation.uncertainty.informativeness`) and the mean of K draws scored
    against one draw (by subject). Returns (informativeness per seed, scores per seed and prediction)."""
    from mudiff.data.dataset import TaskDataset
    from mudiff.evaluation.analysis import spread_indices
    from mudiff.evaluation.metrics import unit_scores
    from mudiff.evaluation.uncertainty import informativeness, sample_draws, score_draws
    from mudiff.sample import Sampler

    info, scores = [], []
    for job in plan.jobs():
        if job.normalization != PAPER_NORMALIZATION or job.run != "mudiff" or not is_finished(job):
            continue
        sampler = Sampler.from_checkpoint(job.folder, device=device)
        test = TaskDataset(job.cfg.data.root, job.cfg.data.task, "test")
        draws = sample_draws(sampler, test, spread_indices(len(test), max_slices), k=k)
        info.append({"seed": job.seed, "k": k, "slices": len(draws.target), **informativeness(draws)})
        frame = score_draws(draws)
        for prediction, part in frame.groupby("prediction", sort=False):
            units = unit_scores(part, "subject")
            scores.append({"seed": job.seed, "prediction": prediction, **units.mean().to_dict()})
    return pd.DataFrame(info), pd.DataFrame(scores)


ENHANCING_LABELS = (3, 4)
"""Label values of the enhancing tumour: 4 in BraTS 2019-2021 (and the phantom), 3 in BraTS 2023."""


def enhancement_contrast(image: np.ndarray, label: np.ndarray, brain: np.ndarray, lesion: np.ndarray) -> float:
    """Contrast of the enhancing tumour to the normal brain, mean(image[E]) - mean(image[N]), over (N, H, W) slices:
    E = enhancing label inside the brain, N = brain outside the lesion. NaN without enhancing or normal pixels."""
    brain = brain > 0.5
    enhancing = np.isin(label, ENHANCING_LABELS) & brain
    normal = brain & (lesion < 0.5)
    if not enhancing.any() or not normal.any():
        return float("nan")
    return float(image[enhancing].mean() - image[normal].mean())


def lesion_visibility(plan: StudyPlan, runs: Sequence[str] = ("mudiff", "unet_l1"),
                      device: str = "auto") -> pd.DataFrame:
    """Does the enhancing lesion appear in the synthesised target? Per finished run of ``runs`` (the paper's
    normalisation), seed and test subject with enhancing tumour: the enhancement contrast
    (:func:`enhancement_contrast`) of the result and of the truth over the subject's test slices, and
    ``recovered`` = their ratio (1: as bright as the truth, 0: the lesion is invisible)."""
    from mudiff.data.dataset import TaskDataset
    from mudiff.sample import Sampler

    rows = []
    for job in plan.jobs():
        if job.normalization != PAPER_NORMALIZATION or job.run not in runs or not is_finished(job):
            continue
        test = TaskDataset(job.cfg.data.root, job.cfg.data.task, "test")
        pred = Sampler.from_checkpoint(job.folder, device=device).synthesise_dataset(test, progress=False).mutual
        items = [test[i] for i in range(len(test))]
        stack = lambda key: np.stack([it[key][0].numpy() for it in items])  # noqa: E731
        target = np.clip((stack("target") + 1) / 2, 0, 1)
        label, brain, lesion = stack("label"), stack("brain_mask"), stack("lesion_mask")
        subjects = np.array([it["subject"] for it in items])
        for subject in dict.fromkeys(subjects):
            at = subjects == subject
            truth = enhancement_contrast(target[at], label[at], brain[at], lesion[at])
            if np.isnan(truth):
                continue
            result = enhancement_contrast(pred[at], label[at], brain[at], lesion[at])
            rows.append({"run": job.run, "seed": job.seed, "subject": subject,
                         "enhancing_pixels": int((np.isin(label[at], ENHANCING_LABELS) & (brain[at] > 0.5)).sum()),
                         "contrast_target": truth, "contrast_result": result, "recovered": result / truth})
    return pd.DataFrame(rows, columns=["run", "seed", "subject", "enhancing_pixels", "contrast_target",
                                       "contrast_result", "recovered"])


def visibility_summary(visibility: pd.DataFrame, scores: pd.DataFrame) -> pd.DataFrame:
    """Per run and test subject (largest enhancing lesion first): the enhancement recovered (mean and sd over seeds)
    beside the subject's lesion PSNR and SSIM of the result (mean over seeds)."""
    if visibility.empty:
        return visibility
    lesion = (scores[(scores["normalization"] == PAPER_NORMALIZATION) & (scores["output"] == "mutual")]
              .groupby(["run", "subject"])[["psnr_T", "ssim_T"]].mean())
    table = (visibility.groupby(["run", "subject"])
             .agg(enhancing_pixels=("enhancing_pixels", "first"), contrast_target=("contrast_target", "first"),
                  contrast_result=("contrast_result", "mean"), recovered=("recovered", "mean"),
                  recovered_sd=("recovered", "std"), n_seeds=("seed", "nunique"))
             .join(lesion).reset_index())
    order = {run: k for k, run in enumerate(dict.fromkeys(visibility["run"]))}
    return (table.assign(_run=table["run"].map(order))
            .sort_values(["_run", "enhancing_pixels"], ascending=[True, False]).drop(columns="_run")
            .reset_index(drop=True))


# ---- the whole study --------------------------------------------------------------------------------------------
@dataclass
class StudyResult:
    claims: pd.DataFrame
    scores: pd.DataFrame
    seed_spread: pd.DataFrame
    convergence: pd.DataFrame
    normalization: pd.DataFrame
    fid: pd.DataFrame
    cka: pd.DataFrame
    uncertainty: pd.DataFrame
    uncertainty_scores: pd.DataFrame
    visibility: pd.DataFrame
    report: Path


def claims_figure(claims: pd.DataFrame, out: str | Path | None = None, note: str = ""):
    """Forest plot: each claim's effect (> 0 favours the claim's side) with its 95 % interval, coloured by verdict;
    the per-seed effects as dots. FID/KID and CKA claims are in the table only (other units)."""
    import matplotlib.pyplot as plt

    from mudiff.display.viz import save_figure

    rows = claims[claims["verdict"].ne("not run") & claims["metric"].isin(
        [f"{m}_{r}" for m in ("psnr", "ssim", "mae") for r in ("B", "T")])].reset_index(drop=True)
    colours = {"reproduced": "tab:green", "not reproduced": "tab:red", "inconclusive at this scale": "tab:grey"}
    fig, axes = plt.subplots(1, 2, figsize=(12, 0.32 * max(len(rows), 4) + 1.2), sharey=True)
    for ax, prefix in zip(axes, ("psnr", "ssim")):
        for i, row in rows.iterrows():
            if not row["metric"].startswith(prefix):
                continue
            ax.errorbar(row["effect"], i, xerr=[[row["effect"] - row["ci_low"]], [row["ci_high"] - row["effect"]]],
                        fmt="o", color=colours[row["verdict"]], capsize=2)
            seeds = [float(v) for v in str(row["per_seed"]).split(",") if v.strip()]
            ax.plot(seeds, [i] * len(seeds), ".", color="black", markersize=3)
        ax.axvline(0, color="black", lw=0.7)
        ax.set_xlabel(f"effect on {prefix.upper()} (claim side - other side); bar: 95 % CI over subjects", fontsize=7)
    axes[0].set_yticks(range(len(rows)))
    axes[0].set_yticklabels([f"{r.claim[:60]} [{r.metric}]" for r in rows.itertuples()], fontsize=6)
    axes[0].invert_yaxis()
    fig.suptitle("the paper's claims on the phantom: green reproduced, red not reproduced, grey inconclusive; "
                 "dots: per-seed effects" + (f"\n{note}" if note else ""), fontsize=8)
    fig.tight_layout()
    return save_figure(fig, out, rows)


def run_study(plan: StudyPlan, out_dir: str | Path = "docs/results", k_draws: int = 8,
              uncertainty_slices: int | None = None, fid_slices: int = 96, cka_draws: int = 32,
              domain_epochs: int = 5, device: str = "auto", command: str = "", log=print) -> StudyResult:
    """Train (resuming) every run of the plan, score them and write the claims report with its figures:
    ``<out_dir>/phantom_study.md`` and ``phantom_study_*.png`` / ``.csv`` beside it."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()
    train_study(plan, log)
    trained = time.perf_counter() - start
    log("scoring the test subjects ...")
    scores = score_study(plan)
    claims = claims_table(scores)
    log("FID / KID with and without the critic ...")
    fids, fid_rows = fid_claim(plan, fid_slices, domain_epochs, device)
    log("H1-vs-H2 CKA ...")
    cka, cka_rows = cka_claims(plan, cka_draws, device=device)
    claims = pd.concat([claims, fid_rows, cka_rows], ignore_index=True)
    log("uncertainty maps ...")
    unc, unc_scores = uncertainty_study(plan, k_draws, uncertainty_slices, device)
    log("is the enhancing lesion visible? ...")
    visibility = visibility_summary(lesion_visibility(plan, device=device), scores)
    result = StudyResult(claims, scores, seed_spread(scores), convergence_table(plan), normalization_table(scores),
                         fids, cka, unc, unc_scores, visibility, out_dir / "phantom_study.md")
    note = _scale(plan, scores)
    claims_figure(claims, out_dir / "phantom_study_claims.png", note)
    validation_curves(plan, out_dir / "phantom_study_validation.png")
    for name in ("claims", "scores", "seed_spread", "convergence", "normalization", "fid", "cka", "uncertainty",
                 "uncertainty_scores", "visibility"):
        getattr(result, name).to_csv(out_dir / f"phantom_study_{name}.csv", index=False)
    _write_report(result, plan, note, command, trained, time.perf_counter() - start)
    log(f"wrote {result.report}")
    return result


def _scale(plan: StudyPlan, scores: pd.DataFrame, tested_on: str = "") -> str:
    """The study's scale in words; ``tested_on``: what the runs were scored on instead of its test split."""
    cfg = plan.run_config(PAPER_NORMALIZATION, plan.seeds[0], "mudiff")
    subjects = scores["subject"].nunique()
    held_out = f"tested on {subjects} {tested_on}" if tested_on else f"{subjects} held out for testing"
    return (f"phantom study at {plan.size}x{plan.size}, {plan.n_subjects} tumour subjects ({held_out}), "
            f"{plan.slices} slices each, width {cfg.model.base_channels}, {cfg.train.epochs} epochs at "
            f"batch {cfg.train.batch_size}, seeds {plan.seeds}")


def _md(table: pd.DataFrame, columns: Sequence[str] | None = None) -> str:
    from mudiff.evaluation.stats import to_markdown

    shown = table if columns is None else table[[c for c in columns if c in table]]
    return to_markdown(shown.copy()).rsplit("\n\n*", 1)[0] + "\n" if len(shown) else "(none)\n"


def _write_report(r: StudyResult, plan: StudyPlan, note: str, command: str, trained_s: float, total_s: float) -> None:
    import platform

    import torch

    from mudiff.train import read_stats, training_seconds

    counts = r.claims["verdict"].value_counts().to_dict()
    runs = plan.jobs()
    done = sum(is_finished(j) for j in runs)
    logs = [j.folder / "stats.jsonl" for j in runs]
    train_min = sum(training_seconds(read_stats(f)) for f in logs if f.is_file()) / 60
    claim_cols = ["claim", "metric", "n_subjects", "n_seeds", "effect", "ci_low", "ci_high", "p_ttest", "p_wilcoxon",
                  "seed_sd", "per_seed", "verdict"]
    text = f"""# The paper's claims on the phantom: a study with seeds and p-values

Written by `mudiff.experiments.phantom_study.run_study` ({command or 'python -m mudiff reproduce --profile study'}).
**Scale:** {note}; {done}/{len(runs)} runs finished; device {platform.processor() or platform.machine()}
(torch {torch.__version__}); the runs' training steps took {train_min:.0f} min of wall time in
all (summed from their logs, across every call that trained them, on whatever else the machine was running); this
call: {trained_s / 60:.0f} min training, {total_s / 60:.0f} min with the scoring.
**Phantom data are a controlled benchmark with known truth, not evidence about patients;** the networks are far
smaller and trained far shorter than the paper's, so a claim that is not reproduced here is a result at this
scale, not a refutation.

How to read it: an effect is the claim's side minus the other side, oriented so that > 0 agrees with the claim
(MAE: lower is better), averaged over seeds per test subject, then over subjects with a 95 % t interval; p from
the paired t-test and the Wilcoxon signed-rank test across subjects. `per_seed`: the effect of each training
seed; `seed_sd`: their standard deviation. **Verdict:** *reproduced* when the interval lies on the claim's side,
every seed agrees and the effect exceeds the seed-to-seed spread; *not reproduced* when all of that holds the
other way; *inconclusive at this scale* otherwise. A "gains nothing" claim is *reproduced* only when the interval
and every seed lie below {NO_GAIN_DB} dB (a gain the data cannot rule out is not shown to be absent) and *not
reproduced* when the gain is shown. Choices were made on the validation split; the test split was scored once.

Verdicts: {', '.join(f'{v} {n}' for v, n in counts.items())}.

## Claims

{_md(r.claims, claim_cols)}
![claims](phantom_study_claims.png)

## Seed-to-seed spread (test subjects, mean over subjects per seed, then mean and sd over seeds)

{_md(r.seed_spread)}
## Convergence (validation PSNR of the result)

![validation curves](phantom_study_validation.png)

{_md(r.convergence)}
## FID / KID with and without the critic (per seed, equal n)

{_md(r.fid, ["seed", "set", "kind", "fid", "kid_mean", "kid_std", "n_real", "n_fake", "domain_feature_distance"])}
## CKA of H1 vs H2 (per seed)

{_md(r.cka)}
## Uncertainty maps (K latent draws per test slice)

Is the per-pixel std informative? Correlation of the std with the absolute error of one draw over brain pixels,
and the mean error of the top-decile-std pixels against the rest:

{_md(r.uncertainty)}
The mean of the K draws scored as a prediction, against one draw (mean over test subjects):

{_md(r.uncertainty_scores)}
## Does the enhancing lesion appear in the result?

In notebook 02 (quick config) the synthesised T1CE of the test subject with the large enhancing tumour shows no
lesion. Here, per run and test subject (largest enhancing lesion first): the enhancing tumour's contrast to the
normal brain (mean intensity in the enhancing label minus mean in the brain outside the lesion, [0, 1] scale) in the
truth and in the result, and `recovered` = result / truth (1: as bright as the truth, 0: invisible), mean and sd over
seeds, beside the subject's lesion PSNR/SSIM.

{_md(r.visibility)}
## Intensity normalisation that does not depend on the lesion

Each normalisation's scores are on its own intensity scale: compare the per-subject spread and the ranking of
methods, not the levels.

{_md(r.normalization)}
"""
    r.report.write_text(text)


__all__ = ["STUDY_RUNS", "PAPER_NORMALIZATION", "default_size", "StudyPlan", "Job", "prepare_study_data", "train_study",
           "is_finished", "score_study", "Claim", "CLAIMS", "VERDICTS", "verdict", "claims_table",
           "seed_spread", "fid_claim", "cka_claims", "convergence_table", "validation_curves", "normalization_table",
           "uncertainty_study", "ENHANCING_LABELS", "enhancement_contrast", "lesion_visibility", "visibility_summary",
           "StudyResult", "claims_figure", "run_study"]
