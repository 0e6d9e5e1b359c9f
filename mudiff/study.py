"""The phantom study: the paper's claims tested with training seeds, held-out subjects and paired tests.

Every method of notebook 03 and every ablation of notebooks 06-08 is trained on the same prepared phantom with
several training seeds (:func:`train_study`, runs in parallel worker processes, each run folder resumes and a
finished one is only read back); each run is then scored on the held-out test subjects
(:func:`score_study`), and every claim of the paper becomes one row of a claims table with the effect across
subjects (seeds pooled and per seed), a 95 % interval, a paired test and a verdict (:func:`claims_table`).
The same runs give the uncertainty maps (:mod:`mudiff.uncertainty`) and the normalisation comparison.

Layout under ``plan.runs_root``: ``<normalization>/seed<k>/<run name>/`` (a normal run folder).
"""
from __future__ import annotations

import contextlib
import json
import math
import multiprocessing
import time
from concurrent.futures import ProcessPoolExecutor, as_completed
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import pandas as pd

from mudiff.config import RunConfig
from mudiff.experiments import COMPONENTS, CRITIC, METHODS, build_config, timestep_runs

STUDY_RUNS: dict[str, list[str]] = {
    **METHODS,  # mudiff (T = 4, the full model), single (abl1 and supervised SynDiff), pix2pix, ddpm, unet_l1, copy
    **{name: o for name, o in timestep_runs((2, 8)).items()},  # T = 4 is `mudiff`
    "no_critic": CRITIC["no_critic"],
    **{name: o for name, o in COMPONENTS.items() if name not in ("abl1_single", "mudiff")},  # abl1 is `single`
}
"""Every run of the study: run name -> overrides of the study's base config."""

PAPER_NORMALIZATION = "percentile"


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
    size: int = 64  # slice size (a GPU study may take 128 or 256)
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


# ---- training ---------------------------------------------------------------------------------------------------
def _train_job(config: dict, folder: str, threads: int) -> dict[str, Any]:
    """Train (or resume, or read back) one run in a worker process; returns its step and seconds. Its progress
    bars and warnings go to ``<folder>/train.log`` (many processes share the study's log)."""
    import torch

    from mudiff.train import train

    torch.set_num_threads(threads)
    start = time.perf_counter()
    Path(folder).mkdir(parents=True, exist_ok=True)
    with open(Path(folder) / "train.log", "a") as log, contextlib.redirect_stderr(log):
        trainer = train(RunConfig.from_dict(config), folder)
    return {"step": trainer.step, "seconds": time.perf_counter() - start}


def train_study(plan: StudyPlan, log=print) -> list[Job]:
    """Train every run of the plan that is not finished, ``plan.workers`` at a time; returns the jobs.

    A run that fails (e.g. non-finite losses) is reported and the others go on; the error is raised at the end.
    """
    prepare_study_data(plan)
    jobs = plan.jobs()
    failures = []
    start = time.perf_counter()
    context = multiprocessing.get_context("spawn")  # a fresh interpreter per worker: safe under Jupyter and CUDA
    with ProcessPoolExecutor(max_workers=plan.workers, mp_context=context) as pool:
        futures = {pool.submit(_train_job, job.cfg.to_dict(), str(job.folder), plan.threads): job for job in jobs}
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

