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
# # 06 Timestep ablation: T = 2, 4, 8
#
# MU-Diff trained with T denoising steps (the paper's Fig. 5e): PSNR and SSIM on the whole brain (B) and the
# lesion (T) of the test split, and the sampling time per slice (2T network evaluations). The T = 4 run is
# `01_training`'s run when its config matches, or the one `03_metrics` trained; the others are trained here if
# missing. Sampling times are the fastest of a few timed passes on this machine, after a warm-up.
#
# Phantom data are a controlled benchmark with known truth, not evidence about patients. **With `QUICK = True`
# the runs are short (the quick profile makes them tiny too): the numbers are a pipeline check, not a result** (the
# figure title says so).

# %% tags=["parameters"]
SEED = 0  # training seed of the runs trained here, and sampling seed of the evaluation
DEVICE = "auto"  # "auto" (CUDA if available, else CPU), "cuda", "cpu"
QUICK = True  # True: short CPU runs: every title says the numbers are a pipeline check, not a result
INTERACTIVE = None  # no widgets here; kept so every notebook takes the same parameters
DATA_DIR = "data/phantom"  # subject folders; COMPARE_SLICES_DIR is prepared from them when missing
SLICES_DIR = "data/phantom_slices"  # the slices of 00_data_prep (01_training's data)
RUN_DIR = "runs/quick"  # the MU-Diff run of 01_training: base config of every run here, reused where it matches
RUNS_ROOT = "runs/compare"  # runs trained here go to RUNS_ROOT/<name>; notebooks 03 and 06-08 share them
COMPARE_SLICES_DIR = None  # slices the runs here train and test on (None: SLICES_DIR); prepared when missing
COMPARE_SIZE = 32  # slice size in pixels when COMPARE_SLICES_DIR is prepared
COMPARE_SLICES = 16  # middle axial slices per subject when COMPARE_SLICES_DIR is prepared
COMPARE_OVERRIDES = []  # overrides of every run here on top of RUN_DIR's config (e.g. tiny widths, few steps)
TIMESTEPS = [2, 4, 8]  # numbers of denoising steps T compared
MAX_SLICES = None  # test slices scored per run, the first ones of the split (None: all)
BY = "subject"  # unit of the mean +- sd: "subject" or "slice"
TIMING_SLICES = 16  # test slices synthesised per timed pass
TIMING_REPEATS = 3  # timed passes per run (the fastest counts)
BATCH_SIZE = None  # slices per sampling call (None: 80, a whole volume, on a GPU; 8 on a CPU)
TORCH_THREADS = 0  # CPU threads of torch (0: its default, one per core)
FIGURES = "figures"  # where figures (PNG) and their numbers (CSV) are written

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
# ## Runs: one per T (reused where a run of the same config exists)

# %%
runs = comparisons.train_variants(RUN_DIR, comparisons.timestep_runs(TIMESTEPS), RUNS_ROOT, overrides,
                                  reuse=[RUN_DIR])
comparisons.describe_runs(runs)

# %% [markdown]
# ## Quality and sampling time per T (Fig. 5e)

# %%
table = comparisons.timestep_table(runs, max_slices=MAX_SLICES, seed=SEED, batch_size=BATCH_SIZE, device=DEVICE,
                                   by=BY, timing_slices=TIMING_SLICES, repeats=TIMING_REPEATS)
comparisons.timestep_figure(table, figures / "06_timesteps.png", note=note);
print(table.attrs["caption"])
table
