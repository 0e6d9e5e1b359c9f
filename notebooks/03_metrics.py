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
# # 03 Metrics: MU-Diff against the baselines
#
# Whole-brain (B) and lesion (T) PSNR, SSIM and MAE on the test split for MU-Diff and the baselines of the
# paper's comparison: one network F1 (supervised SynDiff, `model.variant=single`), Pix2Pix, a DDPM, a U-Net with
# an L1 loss and copying the closest source. Each runs from the config of `01_training`'s run with one override;
# runs that are missing are trained into `RUNS_ROOT/<name>`, and 01's run is reused where the config matches.
# Results tables give mean ± sd and the paired t-test (and Wilcoxon) of the best against the second best; box
# plots show the per-unit scores; the qualitative grid (the paper's Fig. 3) shows the ground truth and every
# method on test slices with a zoomed lesion inset and SSIM_B / SSIM_T under each image.
#
# **Phantom data are a controlled benchmark with known truth, not evidence about patients.**
# **With `QUICK = True` the runs are short CPU runs: the numbers are a pipeline check, not a result** (every title
# says so). By default every run here takes 01's config (01's MU-Diff run is reused); the quick and test profiles
# make them tiny and short on a small copy of the data, MU-Diff retrained with the same settings, so the comparison
# stays fair (same data, size, steps).
#
# MU-Diff's critic mask head is its config's `model.mask_head`: `learned` by default (trained as a per-location
# real/fake classifier in the critic loss), `fixed` for the published code's untrained projection. The run table
# below and every table caption name the head that was used.

# %% tags=["parameters"]
SEED = 0  # training seed of the runs trained here, and sampling seed of the evaluation
DEVICE = "auto"  # "auto" (CUDA if available, else CPU), "cuda", "cpu"
QUICK = True  # True: short CPU runs: every title says the numbers are a pipeline check, not a result
INTERACTIVE = None  # True: widget explorer; False: static figure; None: detect a notebook frontend
DATA_DIR = "data/phantom"  # subject folders; COMPARE_SLICES_DIR is prepared from them when missing
SLICES_DIR = "data/phantom_slices"  # the slices of 00_data_prep (01_training's data)
RUN_DIR = "runs/quick"  # the MU-Diff run of 01_training: base config of every run here, reused where it matches
RUNS_ROOT = "runs/compare"  # runs trained here go to RUNS_ROOT/<name>; notebooks 03 and 06-08 share them
COMPARE_SLICES_DIR = None  # slices the runs here train and test on (None: SLICES_DIR); prepared when missing
COMPARE_SIZE = 32  # slice size in pixels when COMPARE_SLICES_DIR is prepared
COMPARE_SLICES = 16  # middle axial slices per subject when COMPARE_SLICES_DIR is prepared
COMPARE_OVERRIDES = []  # overrides of every run here on top of RUN_DIR's config (e.g. tiny widths, few steps)
METHODS = ["mudiff", "single", "pix2pix", "ddpm", "unet_l1", "copy_source"]  # runs compared (comparisons.METHODS)
MAX_SLICES = None  # test slices scored per run, the first ones of the split (None: all)
BY = "subject"  # unit of the mean +- sd and of the paired tests: "subject" or "slice"
N_SHOW = 2  # test slices in the qualitative grid (those with the largest lesions)
BATCH_SIZE = None  # slices per sampling call (None: 80, a whole volume, on a GPU; 8 on a CPU)
TORCH_THREADS = 0  # CPU threads of torch (0: its default, one per core)
FIGURES = "figures"  # where figures (PNG) and their numbers (CSV, Markdown) are written

# %%
from pathlib import Path

from mudiff.display import explore

explore.start_notebook(INTERACTIVE)  # relative paths from the project root; text progress bars when headless
from mudiff.experiments import comparisons

slices, overrides, note = comparisons.comparison_setup(
    DATA_DIR, SLICES_DIR, COMPARE_SLICES_DIR, COMPARE_SIZE, COMPARE_SLICES, COMPARE_OVERRIDES, SEED, DEVICE, QUICK,
    FIGURES, TORCH_THREADS)
figures = Path(FIGURES)
print(note)

# %% [markdown]
# ## Runs: 01's MU-Diff where its config matches, the missing ones trained here

# %%
runs = comparisons.train_variants(RUN_DIR, comparisons.select(comparisons.METHODS, METHODS), RUNS_ROOT, overrides,
                                  reuse=[RUN_DIR])
comparisons.describe_runs(runs)

# %% [markdown]
# ## Results tables (B, T): mean ± sd, best vs second best, box plots

# %%
scores = comparisons.evaluate_runs(runs, max_slices=MAX_SLICES, seed=SEED, batch_size=BATCH_SIZE, device=DEVICE)
tables = comparisons.results_tables(scores, "03_results", figures, by=BY, note=note, run_dirs=runs)
print("\n".join(f"{region}: {caption}" for region, caption in tables.attrs["captions"].items()))
tables

# %% [markdown]
# ## Qualitative comparison (Fig. 3): zoomed lesion insets, SSIM_B / SSIM_T under each image

# %%
comparisons.qualitative_grid(runs, N_SHOW, seed=SEED, batch_size=BATCH_SIZE, device=DEVICE,
                             out=figures / "03_qualitative.png", note=note);

# %% [markdown]
# ## Explorer: a run's worst (or best) test slices by a metric, every run on them; a static figure when headless

# %%
comparisons.scores_explorer(runs, scores, interactive=INTERACTIVE, out=figures / "03_explorer.png", seed=SEED,
                            batch_size=BATCH_SIZE, device=DEVICE, note=note);
