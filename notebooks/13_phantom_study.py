# ---
# jupyter:
#   jupytext:
#     formats: ipynb,py:percent
#     text_representation:
#       extension: .py
#       format_name: percent
#       format_version: '1.3'
#   kernelspec:
#     display_name: Python 3 (ipykernel)
#     language: python
#     name: python3
# ---

# %% [markdown]
# # 13 The phantom study: the paper's claims with seeds and p-values
#
# Every method of notebook 03 and every ablation of notebooks 06-08 is trained on one prepared phantom with
# several training seeds, then scored on held-out test subjects. Each claim of the paper (MU-Diff beats
# SynDiff-supervised and Pix2Pix on whole brain and lesion; the mutual result beats F1 and F2 alone; each component
# helps; T = 4 is the trade-off; the critic lowers FID; H1 and H2 have dissimilar encoders and similar first
# decoder blocks) becomes a row with its effect across subjects (seeds pooled and per seed), a 95 % interval, a
# paired test and a verdict: reproduced, not reproduced, or inconclusive at this scale. The same runs give
# uncertainty maps (K latent draws) and a comparison of intensity normalisations that ignore the lesion.
#
# `python -m mudiff reproduce --profile study` runs this notebook alone at the study's scale (hours on a 2-core
# CPU, in the background: every run folder resumes and finished runs are reused) and writes
# `docs/results/phantom_study.md`. **With `QUICK = True` (the quick and test profiles) the runs are tiny: the
# verdicts are a pipeline check, not a result.** Phantom data are a controlled benchmark, not evidence about
# patients.

# %% tags=["parameters"]
SEED = 0  # seed of the phantom and of its subject split (the training seeds are SEEDS)
DEVICE = "auto"  # "auto" (CUDA if available, else CPU), "cuda", "cpu"
QUICK = True  # True: tiny runs, a pipeline check (every figure says so); False: the study's scale
INTERACTIVE = None  # True: widget explorer; False: static figure; None: detect a notebook frontend
STUDY_CONFIG = "configs/study.yaml"  # base config of every run (the MU-Diff run)
OVERRIDES = []  # overrides of every run on top of STUDY_CONFIG (the quick and test profiles make them tiny)
DATA_DIR = "data/study_phantom"  # the study's phantom (made when missing)
SLICES_ROOT = "data/study_slices"  # prepared slices, one folder per normalisation: <SLICES_ROOT>_<normalization>
RUN_DIR = "runs/study"  # the study's run folders: <RUN_DIR>/<normalization>/seed<k>/<run>
N_SUBJECTS = 36  # tumour subjects of the phantom
RESOLUTION = 2.0  # mm
SPLIT = [0.5, 0.17, 0.33]  # train / val / test fractions of the subjects
SLICES = 16  # middle axial slices per subject
SIZE = None  # slice size (None: 48 on a CPU, 128 on a GPU)
RUNS = None  # study runs (None: all of mudiff.experiments.phantom_study.STUDY_RUNS)
SEEDS = [0, 1, 2]  # training seeds of every run
NORMALIZATIONS = ["percentile", "percentile_outside_lesion", "zscore_outside_lesion"]  # intensity normalisations
NORMALIZATION_RUNS = ["mudiff", "unet_l1", "copy_source"]  # runs trained under the other normalisations
NORMALIZATION_SEEDS = [0]  # their training seeds
WORKERS = 2  # training processes at once
THREADS = 1  # torch threads per training process
K_DRAWS = 8  # latent draws per test slice for the uncertainty maps
UNCERTAINTY_SLICES = None  # test slices for the uncertainty maps (None: all)
FID_SLICES = 96  # test slices per set for FID / KID (equal n)
CKA_DRAWS = 32  # test draws for the H1-vs-H2 CKA
DOMAIN_EPOCHS = 5  # epochs of the domain feature encoder of the FID table
FIGURES = "figures/phantom_study"  # the report, its figures and CSVs (the study profile writes docs/results)

# %%
from pathlib import Path

from mudiff.display import explore

explore.start_notebook(INTERACTIVE)  # relative paths from the project root; text progress bars when headless
from IPython.display import Image, Markdown, display

from mudiff.display.viz import QUICK_NOTE
from mudiff.experiments import phantom_study
from mudiff.reproduce import project_file

plan = phantom_study.StudyPlan(config=str(project_file(STUDY_CONFIG)), overrides=OVERRIDES, data_dir=DATA_DIR,
                               slices_root=SLICES_ROOT, runs_root=RUN_DIR, n_subjects=N_SUBJECTS, resolution=RESOLUTION,
                               split=SPLIT, slices=SLICES, size=SIZE or phantom_study.default_size(DEVICE),
                               runs=RUNS or list(phantom_study.STUDY_RUNS), seeds=SEEDS, normalizations=NORMALIZATIONS,
                               normalization_runs=NORMALIZATION_RUNS, normalization_seeds=NORMALIZATION_SEEDS,
                               phantom_seed=SEED, device=DEVICE, workers=WORKERS, threads=THREADS)
print(f"{len(plan.jobs())} runs: {len(plan.runs)} x seeds {plan.seeds}, plus {len(plan.normalization_runs)} under "
      f"each other normalisation")

# %% [markdown]
# ## Train (resuming), score, and test every claim

# %%
result = phantom_study.run_study(plan, FIGURES, k_draws=K_DRAWS, uncertainty_slices=UNCERTAINTY_SLICES,
                                 fid_slices=FID_SLICES, cka_draws=CKA_DRAWS, domain_epochs=DOMAIN_EPOCHS, device=DEVICE)
if QUICK:
    print(QUICK_NOTE)
display(Image(filename=str(Path(FIGURES) / "phantom_study_claims.png")))
result.claims[["claim", "metric", "effect", "ci_low", "ci_high", "p_ttest", "per_seed", "seed_sd", "verdict"]]

# %% [markdown]
# ## Convergence: validation curves per run and seed

# %%
display(Image(filename=str(Path(FIGURES) / "phantom_study_validation.png")))
result.convergence

# %% [markdown]
# ## Seed-to-seed spread, normalisations and uncertainty

# %%
display(result.seed_spread, result.normalization, result.uncertainty, result.uncertainty_scores)

# %% [markdown]
# ## Uncertainty explorer: seed 0's MU-Diff run on the test slices (static when headless)

# %%
from mudiff.data.dataset import TaskDataset
from mudiff.evaluation import uncertainty
from mudiff.evaluation.analysis import spread_indices
from mudiff.sample import Sampler

run = plan.run_dir(phantom_study.PAPER_NORMALIZATION, plan.seeds[0], "mudiff")
sampler = Sampler.from_checkpoint(run, device=DEVICE)
test_set = TaskDataset(sampler.cfg.data.root, sampler.cfg.data.task, "test")
draws = uncertainty.sample_draws(sampler, test_set, spread_indices(len(test_set), 8), k=K_DRAWS)
uncertainty.uncertainty_explorer(draws, interactive=INTERACTIVE, out=Path(FIGURES) / "phantom_study_uncertainty.png",
                                 note=QUICK_NOTE if QUICK else "");

# %% [markdown]
# ## The report

# %%
Markdown(result.report.read_text())
