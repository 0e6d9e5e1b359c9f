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
# # 07 FID with and without the critic
#
# MU-Diff with its critic against MU-Diff trained with the L1 loss only (`train.use_critic=false`), as in the
# paper's Fig. 5f: FID and KID from the standard Inception features, every synthetic set and a real reference set
# (val-split slices) against the real targets of the same test slices, so all compared sets have the same n
# (reported: both scores are biased at small n). The domain feature distance is a Fréchet distance of features
# from a small autoencoder trained on the training split only; it is labelled as such, it is not FID.
# The Inception forward pass is slow on a CPU: `MAX_SLICES` caps the test slices.
#
# Phantom data are a controlled benchmark with known truth, not evidence about patients. **With `QUICK = True`
# the runs are short (the quick profile makes them tiny too) and n is small: the numbers are a pipeline check, not
# a result** (the figure title says so).

# %% tags=["parameters"]
SEED = 0  # training seed of the runs trained here, sampling seed, and seed of the KID subsets
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
MAX_SLICES = None  # test slices scored, evenly spaced over the split (None: all); the same n for every set
DOMAIN_EPOCHS = 20  # training epochs of the domain feature autoencoder (training split only)
FEATURE_BATCH_SIZE = 16  # images per Inception forward pass
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
# ## Runs: MU-Diff with and without the critic

# %%
runs = comparisons.train_variants(RUN_DIR, comparisons.CRITIC, RUNS_ROOT, overrides, reuse=[RUN_DIR])
comparisons.describe_runs(runs)

# %% [markdown]
# ## FID, KID (n reported) and the domain feature distance (Fig. 5f)

# %%
table = comparisons.fid_table(runs, max_slices=MAX_SLICES, seed=SEED, batch_size=BATCH_SIZE, device=DEVICE,
                              feature_batch_size=FEATURE_BATCH_SIZE, domain_epochs=DOMAIN_EPOCHS)
comparisons.fid_figure(table, figures / "07_fid.png", note=note);
print(table.attrs["caption"])
table
