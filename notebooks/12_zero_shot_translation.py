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
# # 12 Zero-shot cross-modality translation (MIDiffusion), judged by segmentation
#
# A segmentation network exists for one contrast (the target), the images come in another (the source), and no
# paired data exist. MIDiffusion (Wang et al., IEEE TMI 2024) trains a diffusion model on the **target contrast
# only** and translates a source by feeding local mutual information (LMI) maps between the source and the current
# sample into every reverse step (`mudiff/models/lmi.py`, `mudiff/methods/midiffusion.py`). SDEdit (an unconditional
# model of the target, the source noised then denoised), histogram matching (plain and inverted) and the raw source are
# the baselines; the upper bound is our supervised model trained on paired slices (which a zero-shot method never has).
# The judgement: a MONAI U-Net trained on the target contrast only segments the real target (the
# ceiling), the raw source and each translation. The phantom here has a proton-density-weighted contrast too.

# %% tags=["parameters"]
SEED = 0  # seed of the phantom, the sampling and the segmenters
DEVICE = "auto"  # "auto" (CUDA if available, else CPU), "cuda", "cpu"
QUICK = True  # True: figures say the numbers are a pipeline check (short CPU runs), not a result
INTERACTIVE = None  # True/False/None (detect): the explorer as widgets or as a static figure
DATA_DIR = "data/phantom_pd"  # phantom subjects with a PD contrast (made when missing and MAKE_PHANTOM)
SLICES_DIR = "data/phantom_pd_slices"  # their prepared slices (prepared when missing)
RUN_DIR = "runs/quick_zero_shot"  # one run per method and target: RUN_DIR/<method>_<target>
FIGURES = "figures"  # where figures (PNG) and their numbers (CSV) are written
ZERO_SHOT_CONFIG = "configs/midiffusion_quick.yaml"  # the runs' config (method, task and data root are set here)
OVERRIDES = []  # extra config overrides of every run (strings as for mudiff train --set)
MAKE_PHANTOM = True  # make the phantom when DATA_DIR holds no subjects
N_SUBJECTS = 10  # phantom subjects
SPLIT = [0.6, 0.2, 0.2]  # train/val/test fractions of the subjects
RESOLUTION = 2.0  # phantom voxel size in mm
SIZE = 32  # slice size (the runs' model.image_size)
SLICES = 12  # slices per subject (the quick profile's: both use SLICES_DIR)
PAIRS = [["t2", "t1"], ["flair", "t1"], ["pd", "t1"], ["t1", "t2"]]  # (source, target) pairs
TRAIN_STEPS = 0  # iterations per run (0: the config's epochs)
SAMPLING_STEPS = 0  # reverse steps of the translations (0: the config's zero_shot_sampling_steps)
COMPARE_STEPS = [10, 50]  # reverse step counts compared on the first pair (quality and time per slice)
COMPARE_SLICES = 8  # test slices of that comparison (0: all)
EVAL_SLICES = 0  # test slices evaluated, evenly spaced (0: all)
LMI_TIMESTEPS = [100, 300, 600, 999]  # noise levels of the LMI figure
SEG_CHANNELS = [16, 32, 64]  # target-only U-Net widths per level
SEG_STEPS = 300  # its training steps
SEG_BATCH = 16  # its batch size
BATCH_SIZE = None  # slices per sampling call (None: 80, a whole volume, on a GPU; 8 on a CPU)

# %%
from pathlib import Path

from mudiff.display import explore

explore.start_notebook(INTERACTIVE)  # relative paths from the project root; text progress bars when headless
import numpy as np
import torch

from mudiff import demo
from mudiff.display.viz import QUICK_NOTE
from mudiff.evaluation.segmentation import load_split, train_segmenter
from mudiff.experiments import zero_shot as zs
from mudiff.methods.ddpm import DDPMSchedule
from mudiff.reproduce import project_file
from mudiff.sample import Sampler

figures = Path(FIGURES)
figures.mkdir(parents=True, exist_ok=True)
note = QUICK_NOTE if QUICK else ""
pairs = [tuple(p) for p in PAIRS]
config = project_file(ZERO_SHOT_CONFIG)
demo.ensure_phantom(DATA_DIR, N_SUBJECTS, seed=SEED, resolution=RESOLUTION, make=MAKE_PHANTOM,
                    extra_contrasts=("pd",))
demo.ensure_slices(DATA_DIR, SLICES_DIR, size=SIZE, slices=SLICES, seed=SEED, split=SPLIT)
train_data = load_split(SLICES_DIR, "train")
test_data = load_split(SLICES_DIR, "test", n=EVAL_SLICES or None)
shown = int(np.argmax((test_data.label > 0).reshape(len(test_data), -1).sum(1)))  # the largest lesion
print(f"{len(train_data)} training and {len(test_data)} test slices, contrasts {train_data.contrasts}")

# %% [markdown]
# ## LMI maps: source, target and noisy samples, in both modes
# `faithful` is the published arithmetic (grey levels truncated, not clipped; float32 kernels underflow far outside
# [0, 1], so pure noise looks *more* informative than the image); `corrected` clips to the histogram range.

# %%
source, target = pairs[0]
base = zs.zero_shot_config(config, SLICES_DIR, target, source, "midiffusion", [f"model.image_size={SIZE}",
                                                                                   *OVERRIDES])
schedule = DDPMSchedule(base.model.ddpm_timesteps)
lmi_args = dict(patch=base.model.lmi_patch, sigma=base.model.lmi_sigma, normalized=base.model.lmi_normalized)
zs.plot_lmi_maps(test_data.images[shown, test_data.contrasts.index(source)],
                 test_data.images[shown, test_data.contrasts.index(target)], (source, target), LMI_TIMESTEPS,
                 schedule.alphas_cumprod, ["faithful", "corrected"], out=figures / "12_lmi_maps.png", seed=SEED,
                 **lmi_args);

# %% [markdown]
# ## Training on the target contrast only
# One MIDiffusion and one SDEdit run per target contrast, by the shared Trainer (reused when finished); and the
# upper bound, one paired supervised run per pair (`mudiff`, `model.variant: single`), the same number of steps.

# %%
overrides = [f"train.device={DEVICE}", f"model.image_size={SIZE}",
             *([f"train.max_steps={TRAIN_STEPS}"] if TRAIN_STEPS else []), *OVERRIDES]
targets = {t: s for s, t in pairs}  # each target's validation source
runs = zs.train_runs(config, SLICES_DIR, RUN_DIR, targets, overrides=overrides)
samplers = {(name, t): Sampler.from_checkpoint(runs[method, t], device=DEVICE)
            for name, method in zs.MODEL_METHODS.items() for t in targets}
paired_runs = zs.train_paired_runs(config, SLICES_DIR, RUN_DIR, pairs, overrides=overrides)
paired = {pair: Sampler.from_checkpoint(run, device=DEVICE) for pair, run in paired_runs.items()}
print({f"{m} {t}": str(path) for (m, t), path in runs.items()}, [str(path) for path in paired_runs.values()])

# %% [markdown]
# ## The reverse chain (first pair)

# %%
midiffusion = samplers[zs.MIDIFFUSION, target].method
snapshots = []
midiffusion.translate(midiffusion.generator, torch.from_numpy(
    test_data.images[shown:shown + 1, [test_data.contrasts.index(source)]]), [SEED], source, SAMPLING_STEPS or None,
    on_step=lambda t, x: snapshots.append((t, x[0, 0].cpu().numpy())))
keep = np.unique(np.linspace(0, len(snapshots) - 1, min(8, len(snapshots))).round().astype(int))
zs.plot_chain([snapshots[i] for i in keep], test_data.images[shown, test_data.contrasts.index(source)],
              test_data.images[shown, test_data.contrasts.index(target)],
              f"MIDiffusion {zs.pair_name(source, target)}: x_t along the reverse chain (clipped to [0, 1])\n{note}",
              out=figures / "12_reverse_chain.png");

# %% [markdown]
# ## Translations and their scores against the true target

# %%
references = {t: zs.reference_intensities(train_data, t) for t in targets}
translations = zs.translate_pairs(test_data, pairs, samplers, references, SEED, SAMPLING_STEPS or None, BATCH_SIZE,
                                  paired=paired)
scores = zs.translation_scores(test_data, translations)
translation_table = zs.summary_table(scores, ["psnr_B", "ssim_B", "mae_B"])
translation_table.to_csv(figures / "12_translation_scores.csv", index=False)
zs.plot_translations(test_data, translations, shown, out=figures / "12_translations.png", note=note);
translation_table

# %% [markdown]
# ## Respaced sampling: quality and time per slice

# %%
steps_table = zs.steps_comparison(samplers[zs.MIDIFFUSION, target], test_data, source, target, COMPARE_STEPS, SEED,
                                  BATCH_SIZE, COMPARE_SLICES or None)
steps_table.to_csv(figures / "12_respaced_steps.csv", index=False)
steps_table

# %% [markdown]
# ## The judgement: a segmenter trained on the target contrast only
# Dice per class and slice of the real target (ceiling), the raw source and each translation; paired tests of
# MIDiffusion against every other input (slices of one subject are not independent: read the p-values as
# descriptive). The classes are the tumour's and, when the data have a tissue map (the phantom's), CSF, grey and
# white matter: a small tumour may go unfound even on the real target, the normal tissues are large enough to judge.

# %%
classes = zs.judge_classes(train_data)
segmenters = {t: train_segmenter(zs.target_only(train_data, t), SEG_CHANNELS, SEG_STEPS, SEG_BATCH, seed=SEED,
                                 device=DEVICE, classes=classes) for t in targets}
dice = zs.segmentation_scores(segmenters, test_data, translations)
dice_table = zs.summary_table(dice, ["dice"])
dice_table.to_csv(figures / "12_dice.csv", index=False)
tests = zs.paired_tests(dice, "dice")
tests.to_csv(figures / "12_dice_paired_tests.csv", index=False)
zs.plot_dice(dice_table, out=figures / "12_dice.png", note=note);
means = dice_table.pivot(index=["class", "pair"], columns="method", values="dice_mean")
for name, _ in classes:
    part = means.loc[name]
    wins = [p for p in part.index if part.loc[p, zs.MIDIFFUSION] > max(part.loc[p, zs.RAW], part.loc[p, zs.HISTOGRAM])]
    print(f"{name}: MIDiffusion beats the raw source and histogram matching on {len(wins)} of {len(part)} pairs "
          f"({', '.join(wins) or 'none'})")
means

# %%
tests

# %% [markdown]
# ## Explorer: pair, slice, steps, LMI mode, seed

# %%
zs.explorer(samplers, test_data, pairs, SAMPLING_STEPS or None, SEED, shown, INTERACTIVE,
            out=figures / "12_explorer.png");
