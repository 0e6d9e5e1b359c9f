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
# # 09 Motion robustness and downstream segmentation
#
# Two uses of the MU-Diff run of `01_training` next to the single-network baseline (F1 only, the supervised
# SynDiff; trained here into `RUNS_ROOT/single` with the MU-Diff run's config when missing):
# - robustness (the paper's Fig. 4a, b): one source (FLAIR for the T1CE task) corrupted by simulated k-space motion
#   at graded severities; the synthesis scores vs severity, and their drop, per method;
# - downstream (Fig. 4c, d): a MONAI U-Net trained on the real contrasts segments the tumour; its Dice with all-real
#   inputs vs with the synthesised contrast in place of the real one (and with that contrast missing, as a floor).

# %% tags=["parameters"]
SEED = 0  # seed of the motion, the sampling and the U-Net
DEVICE = "auto"  # "auto" (CUDA if available, else CPU), "cuda", "cpu"
QUICK = True  # True: caps below (40-step single run, 8 slices, 150 U-Net steps): a pipeline check; False: as given
INTERACTIVE = None  # True/False/None (detect); only chooses widget or text progress bars here
RUN_DIR = "runs/quick"  # the MU-Diff run of 01_training
RUNS_ROOT = "runs/quick_baselines"  # the single-network baseline lives in RUNS_ROOT/single (trained when missing)
SINGLE_OVERRIDES = []  # extra config overrides of the single-network run (strings as for mudiff train --set)
SLICES_DIR = "data/phantom_slices"  # the prepared slice dataset
FIGURES = "figures"  # where figures (PNG) and their numbers (CSV) are written
CORRUPT = "flair"  # the source corrupted by motion
SEVERITIES = [0.0, 0.25, 0.5, 0.75, 1.0]  # motion severities (1: up to 5 degrees and 5 pixels per event)
ROBUST_SLICES = 64  # test slices of the robustness curves, evenly spaced (QUICK: at most 8)
SEG_CHANNELS = [16, 32, 64, 128]  # U-Net widths per level (QUICK: the first three)
SEG_STEPS = 3000  # U-Net training steps (QUICK: at most 150)
SEG_BATCH = 16  # U-Net batch size
SEG_LR = 0.001  # U-Net learning rate (QUICK: 0.002, for the short run)
SEG_SLICES = 0  # test slices segmented, evenly spaced (0: all; QUICK: at most 24)
BATCH_SIZE = None  # slices per sampling call (None: 80, a whole volume, on a GPU; 8 on a CPU)

# %%
from pathlib import Path

from mudiff.display import explore

explore.start_notebook(INTERACTIVE)  # relative paths from the project root; text progress bars when headless
from mudiff.data.dataset import TaskDataset
from mudiff.evaluation import analysis, robustness, segmentation
from mudiff.sample import Sampler

figures = Path(FIGURES)
figures.mkdir(parents=True, exist_ok=True)
note = analysis.QUICK_NOTE if QUICK else ""
quick_single = ["train.max_steps=40", "train.val_slices=8"] if QUICK else []
single_dir = robustness.ensure_variant_run(RUN_DIR, Path(RUNS_ROOT) / "single", "single",
                                           [f"data.root={SLICES_DIR}", f"train.device={DEVICE}", *quick_single,
                                            *SINGLE_OVERRIDES])
samplers = {"MU-Diff": Sampler.from_checkpoint(RUN_DIR, device=DEVICE),
            "single network": Sampler.from_checkpoint(single_dir, device=DEVICE)}
test_set = TaskDataset(SLICES_DIR, samplers["MU-Diff"].cfg.data.task, "test")
print(analysis.run_label(RUN_DIR), "|", analysis.run_label(single_dir))

# %% [markdown]
# ## Motion in a source contrast (Fig. 4a, b)

# %%
motion = robustness.motion_robustness(samplers, test_set, CORRUPT, SEVERITIES,
                                      n=min(ROBUST_SLICES, 8) if QUICK else ROBUST_SLICES, seed=SEED,
                                      batch_size=BATCH_SIZE)
robustness.plot_robustness(motion, out=figures / "09_robustness.png", note=note);
motion.table[["method", "severity", "psnr_B", "ssim_B", "mae_B", "drop_psnr_B", "drop_ssim_B", "slices"]]

# %% [markdown]
# ## Tumour segmentation with real and synthetic inputs (Fig. 4c, d)

# %%
train_data = segmentation.load_split(SLICES_DIR, "train")
test_data = segmentation.load_split(SLICES_DIR, "test", n=min(SEG_SLICES or 24, 24) if QUICK else SEG_SLICES or None)
segmenter = segmentation.train_segmenter(train_data, SEG_CHANNELS[:3] if QUICK else SEG_CHANNELS,
                                         min(SEG_STEPS, 150) if QUICK else SEG_STEPS, SEG_BATCH,
                                         0.002 if QUICK else SEG_LR, seed=SEED, device=DEVICE)
print(f"inputs {segmenter.contrasts}, outputs {segmenter.class_names}; loss {segmenter.losses[0]:.3f} -> "
      f"{sum(segmenter.losses[-10:]) / len(segmenter.losses[-10:]):.3f} (mean of the last 10 steps)")
synthetic = {name: segmentation.synthesise_for(s, test_data, SEED, BATCH_SIZE) for name, s in samplers.items()}
dice = segmentation.segmentation_dice(segmenter, test_data, synthetic)
dice.subjects.to_csv(figures / "09_segmentation_dice_subjects.csv", index=False)
segmentation.plot_segmentation_dice(dice, test_data, out=figures / "09_segmentation_dice.png", note=note);
dice.summary
