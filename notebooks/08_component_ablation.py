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
# # 08 Component ablation: abl1-abl4 against the full MU-Diff
#
# The paper's Fig. 5g-i: abl1 a single network F1 (`model.variant=single`), abl2 two networks of F1's kind
# (`two_f1`: no rho, no tau), abl3 rho without tau (`no_tau`), abl4 no mask loss (`train.mask_loss=false`),
# against the full MU-Diff, on the whole brain (B) and the lesion (T) of the test split: mean ± sd, the paired
# test of the best against the second best, box plots. Runs of the same config trained by `01_training` or
# `03_metrics` are reused; the others are trained here.
#
# Phantom data are a controlled benchmark with known truth, not evidence about patients. **With `QUICK = True`
# the runs are short (the quick profile makes them tiny too): the numbers are a pipeline check, not a result**
# (every title says so).

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
ABLATIONS = ["abl1_single", "abl2_two_f1", "abl3_no_tau", "abl4_no_mask_loss", "mudiff"]  # comparisons.COMPONENTS
MAX_SLICES = None  # test slices scored per run, the first ones of the split (None: all)
BY = "subject"  # unit of the mean +- sd and of the paired tests: "subject" or "slice"
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
# ## Runs: the four ablations and the full model

# %%
runs = comparisons.train_variants(RUN_DIR, comparisons.select(comparisons.COMPONENTS, ABLATIONS), RUNS_ROOT,
                                  overrides, reuse=[RUN_DIR])
comparisons.describe_runs(runs)

# %% [markdown]
# ## Whole brain (B) and lesion (T): tables and box plots (Fig. 5g-i)

# %%
scores = comparisons.evaluate_runs(runs, max_slices=MAX_SLICES, seed=SEED, batch_size=BATCH_SIZE, device=DEVICE)
tables = comparisons.results_tables(scores, "08_ablation", figures, by=BY, note=note, run_dirs=runs)
print("\n".join(f"{region}: {caption}" for region, caption in tables.attrs["captions"].items()))
tables
