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
# # 02 Sampling
#
# Synthesise test-split slices with the run of `01_training` (EMA weights, rebuilt from the checkpoint alone) and
# a whole test subject as a NIfTI volume next to the run (`<RUN_DIR>/samples/<id>_<target>_synthetic.nii.gz`,
# on the sources' grid: it matches them voxel for voxel and overlays them in ITK-SNAP or 3D Slicer).

# %% tags=["parameters"]
SEED = 0  # sampling seed (slice k uses its own seed derived from it)
DEVICE = "auto"  # "auto" (CUDA if available, else CPU), "cuda", "cpu"
QUICK = True  # True: score at most 16 test slices; False: the whole test split
INTERACTIVE = None  # True: widget explorer; False: static figure; None: detect a notebook frontend
RUN_DIR = "runs/quick"  # the trained run folder
SLICES_DIR = "data/phantom_slices"  # the prepared slice dataset (its test split is synthesised)
DATA_DIR = "data/phantom"  # subject folders (looked up when the manifest's path has moved)
SUBJECT = None  # test subject synthesised as a volume (None: the first of the test split)
N_SHOW = 4  # slices in the synthesis figure
K_DRAWS = 8  # latent draws per slice for the uncertainty maps (their per-pixel std)
UNCERTAINTY_SLICES = 16  # test slices (evenly spaced) for the uncertainty maps (None: all)
BATCH_SIZE = None  # slices per sampling call (None: 80, a whole volume, on a GPU; 8 on a CPU)
FIGURES = "figures"  # where figures (PNG) and their numbers (CSV) are written

# %%
from pathlib import Path

from mudiff.display import explore

explore.start_notebook(INTERACTIVE)  # relative paths from the project root; text progress bars when headless
from mudiff import demo
from mudiff.data.dataset import TaskDataset
from mudiff.display import viz
from mudiff.sample import Sampler

figures = Path(FIGURES)
figures.mkdir(parents=True, exist_ok=True)
sampler = Sampler.from_checkpoint(RUN_DIR, device=DEVICE)
test_set = TaskDataset(SLICES_DIR, sampler.cfg.data.task, "test")
test_set

# %% [markdown]
# ## Test slices: sources, ground truth, x^p1, x^p2, mutual and the error maps

# %%
result = demo.synthesise_split(sampler, test_set, n=16 if QUICK else None, seed=SEED, batch_size=BATCH_SIZE)
result.metrics.to_csv(figures / "02_synthesis_metrics.csv", index=False)
shown = result.rows[:: max(1, len(result.rows) // N_SHOW)][:N_SHOW]
viz.plot_synthesis(shown, test_set.sources, test_set.target, out=figures / "02_synthesis.png",
                   table=result.summary());
result.summary()

# %% [markdown]
# ## A whole test subject as a NIfTI volume

# %%
subject = SUBJECT or test_set.subjects[0]
volume_path = Path(RUN_DIR) / "samples" / f"{subject}_{sampler.target}_synthetic.nii.gz"
subject_dir = demo.subject_folder(SLICES_DIR, subject, DATA_DIR)
volume = sampler.synthesise_subject(subject_dir, volume_path, seed=SEED, batch_size=BATCH_SIZE)
demo.volume_views(subject_dir, volume, sampler.target, out=figures / "02_volume.png");
print("wrote", volume_path, volume.shape)

# %% [markdown]
# ## Explorer (slice, seed); a static figure of a few seeds when run headless

# %%
explore.synthesis_explorer(sampler, test_set, interactive=INTERACTIVE, out=figures / "02_explorer.png");

# %% [markdown]
# ## Uncertainty: the per-pixel std of K latent draws beside the error
#
# MU-Diff draws a fresh latent and fresh noise at every step, so each synthesis is one sample. K draws of the same
# slice give a per-pixel standard deviation. It is informative if it is high where the error is high: the table
# gives the correlation of the std with the absolute error of one draw over brain pixels, and the mean error of
# the top-decile-std pixels against the rest (ratio > 1: the map points at errors). The mean of the K draws is
# scored as a prediction too.

# %%
import json

from mudiff.evaluation import uncertainty
from mudiff.evaluation.analysis import spread_indices
from mudiff.evaluation.evaluate import COLUMNS

draws = uncertainty.sample_draws(sampler, test_set, spread_indices(len(test_set), UNCERTAINTY_SLICES), k=K_DRAWS,
                                 seed=SEED, batch_size=BATCH_SIZE)
informative = uncertainty.informativeness(draws)
means = uncertainty.score_draws(draws).groupby("prediction", sort=False)[COLUMNS].mean()  # over slices
means.to_csv(figures / "02_uncertainty_scores.csv")
(figures / "02_uncertainty.json").write_text(json.dumps(informative, indent=2) + "\n")
uncertainty.uncertainty_explorer(draws, interactive=INTERACTIVE, out=figures / "02_uncertainty.png",
                                 note=viz.PHANTOM_NOTE);
informative, means
