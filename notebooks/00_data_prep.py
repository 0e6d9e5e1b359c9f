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
# # 00 Data preparation
#
# Make the phantom (or use real BraTS/ISLES subjects in `DATA_DIR`), prepare the slice dataset, and look at it:
# the contrasts, labels and brain masks, the subject-level split and the intensity distributions per split.
# Phantom data are a controlled benchmark with known truth, not evidence about patients.

# %% tags=["parameters"]
SEED = 0  # seed of the phantom, the split and the histogram subsample
DEVICE = "auto"  # unused here (no network); kept so every notebook takes the same parameters
QUICK = True  # True: histograms from a subsample of slices; False: from every slice
INTERACTIVE = None  # True: widget explorer; False: static figure; None: detect a notebook frontend
DATA_DIR = "data/phantom"  # subject folders (BraTS/ISLES layout); made as a phantom when missing
MAKE_PHANTOM = True  # make the phantom in DATA_DIR if it is missing (False: DATA_DIR must hold real data)
N_SUBJECTS = 14  # phantom subjects (tumour)
RESOLUTION = 2.0  # phantom voxel size in mm (1 or 2)
SLICES_DIR = "data/phantom_slices"  # the prepared slice dataset (made when missing)
SIZE = 64  # slice size in pixels
SLICES = 40  # middle axial slices kept per subject
SPLIT = [0.6, 0.2, 0.2]  # train/val/test fractions of the subjects (the paper: 70/20/10; of 14 subjects 8/3/3)
RUN_DIR = "runs/quick"  # the run folder of the later notebooks (not used here)
FIGURES = "figures"  # where figures (PNG) and their numbers (CSV) are written
N_SHOW = 3  # subjects in the overview figure

# %%
from pathlib import Path

from mudiff.display import explore

explore.start_notebook(INTERACTIVE)  # relative paths from the project root; text progress bars when headless
from mudiff import demo
from mudiff.display import viz

figures = Path(FIGURES)
figures.mkdir(parents=True, exist_ok=True)

# %% [markdown]
# ## Data: make the phantom and prepare slices when missing

# %%
demo.ensure_phantom(DATA_DIR, N_SUBJECTS, seed=SEED, resolution=RESOLUTION, make=MAKE_PHANTOM)
demo.ensure_slices(DATA_DIR, SLICES_DIR, size=SIZE, slices=SLICES, seed=SEED, split=SPLIT)
store = explore.SliceStore(SLICES_DIR)
store

# %% [markdown]
# ## Overview: contrasts, label overlay and brain mask (largest-lesion slice per subject)

# %%
explore.overview(store, n_subjects=N_SHOW, out=figures / "00_data_overview.png");

# %% [markdown]
# ## Subject-level split

# %%
split = store.split_counts()
split.to_csv(figures / "00_split.csv", index=False)
split

# %% [markdown]
# ## Intensities inside the brain mask, per contrast and split

# %%
hist = explore.intensity_histograms(store, max_slices_per_split=200 if QUICK else None, seed=SEED)
viz.plot_intensity_histograms(hist, out=figures / "00_histograms.png");

# %% [markdown]
# ## Explorer (subject, slice, contrast); a static figure when run headless

# %%
explore.slice_explorer(SLICES_DIR, interactive=INTERACTIVE, out=figures / "00_explorer.png");
