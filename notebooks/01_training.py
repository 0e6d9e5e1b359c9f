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
# # 01 Training
#
# Train MU-Diff, an ablation or a baseline (chosen by `CONFIG` and `OVERRIDES`, e.g. `model.variant=single` or
# `model.method=pix2pix`) on the slices of `00_data_prep`. An existing run folder is resumed (a finished run is
# just read back). The loss curves are drawn live in JupyterLab; a headless run draws the final figure only.

# %% tags=["parameters"]
SEED = 0  # training seed (train.seed)
DEVICE = "auto"  # "auto" (CUDA if available, else CPU), "cuda", "cpu"
QUICK = True  # True: a short CPU run is expected; False: warn when the paper's setting would train on a CPU
INTERACTIVE = None  # True: live loss plot; False: final figure only; None: detect a notebook frontend
CONFIG = "configs/quick.yaml"  # run config (YAML); relative paths also resolve against the project root
OVERRIDES = []  # config overrides, strings as for `mudiff train --set` (section.key, equals sign, value)
SLICES_DIR = "data/phantom_slices"  # the prepared slice dataset (data.root)
RUN_DIR = "runs/quick"  # the run folder (created, or resumed when it exists)
FIGURES = "figures"  # where figures (PNG) and their numbers (CSV/JSON) are written
LIVE_EVERY_S = 10.0  # seconds between redraws of the live loss plot

# %%
import warnings
from pathlib import Path

from mudiff.display import explore

explore.start_notebook(INTERACTIVE)  # relative paths from the project root; text progress bars when headless
from mudiff import demo
from mudiff.display import viz
from mudiff.reproduce import project_file
from mudiff.runtime import resolve_device
from mudiff.train import read_stats, train

figures = Path(FIGURES)
figures.mkdir(parents=True, exist_ok=True)
overrides = demo.run_overrides(OVERRIDES, SLICES_DIR, SEED, DEVICE)
checkpoint = Path(RUN_DIR) / "checkpoints" / "last.pt"
print("resuming" if checkpoint.exists() else "starting", RUN_DIR, "with", project_file(CONFIG), overrides)
if not QUICK and resolve_device(DEVICE).type == "cpu":
    warnings.warn("QUICK = False on a CPU: the paper's setting takes days here; use a GPU or the quick profile")

# %% [markdown]
# ## Train (or resume)

# %%
live = explore.LivePlot(INTERACTIVE, every_s=LIVE_EVERY_S)
trainer = train(project_file(CONFIG), RUN_DIR, overrides=overrides, callbacks=[live])
print(f"step {trainer.step}, epoch {trainer.epoch}")

# %% [markdown]
# ## Training curves

# %%
viz.plot_training_curves(read_stats(Path(RUN_DIR) / "stats.jsonl"), out=figures / "01_training_curves.png");

# %% [markdown]
# ## Final validation: PSNR (brain, dB) of each prediction vs copying the best source

# %%
val = demo.validation_table(trainer.last_val)
val.to_csv(figures / "01_val_psnr.csv", index=False)
val.to_json(figures / "01_val_psnr.json", orient="records", indent=1)
viz.plot_scores(val, "psnr_brain_db", label="prediction", out=figures / "01_val_psnr.png",
                title=f"validation PSNR on the brain mask, step {trainer.step}",
                highlight=["mutual", "copy_best"]);
val
