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
# # 10 Unpaired MRI <-> CT translation
#
# SynDiff's cycle-consistent adversarial diffusion (`model.method: syndiff_cycle`, `../shared/SYNDIFF_CYCLE.md`)
# learns MR -> CT and CT -> MR from **unpaired** slices: in every batch the MR and the CT come from disjoint
# subjects. It is compared with its translators alone (CycleGAN), the paired upper bound (supervised SynDiff,
# i.e. `mudiff` with `model.variant: single` on paired slices, one run per direction), bulk density (MR -> CT)
# and a histogram-matched copy of the CT (CT -> MR), all trained by the same Trainer and scored the way
# SynthRAD2023 does: MAE in HU, PSNR over the HU window and SSIM inside the body mask, plus the MAE per tissue.
#
# Data: a whole-head phantom with CT (`mudiff.data.head_phantom`) in the SynthRAD2023 layout; for real data set
# `HEAD_DIR` to a SynthRAD2023 task-1 brain folder (`<id>/{mr,ct,mask}.nii.gz`) and `MAKE_PHANTOM = False`.
# The quick profile's runs are a few steps each: a pipeline check, not a result; the benchmark
# `benchmarks/unpaired_benchmark.py` trains longer and its numbers are in `benchmarks/results/unpaired_cpu.json`.

# %% tags=["parameters"]
SEED = 0  # phantom, split, training and sampling seed
DEVICE = "auto"  # "auto" (CUDA if available, else CPU), "cuda", "cpu"
QUICK = True  # True: score at most 48 test slices; False: the whole test split
INTERACTIVE = None  # True: live plot and explorer widgets; False: static figures; None: detect a notebook frontend
HEAD_DIR = "data/head_phantom"  # subject folders <id>/{mr,ct,mask}.nii.gz (SynthRAD2023 layout)
HEAD_SLICES_DIR = "data/head_slices"  # the prepared MR/CT slices
MAKE_PHANTOM = True  # make the head phantom when HEAD_DIR holds no subjects
N_SUBJECTS = 10  # phantom subjects
RESOLUTION = 2.0  # phantom voxel size in mm
SPLIT = [0.6, 0.2, 0.2]  # train/val/test fractions of subjects (train MR and CT come from disjoint halves)
SIZE = 64  # slice height (pixels)
WIDTH = 0  # slice width (0: square; cycle methods only, the paired upper bound needs square slices)
SLICES = 24  # axial slices per subject (middle of the body)
UNPAIRED_CONFIG = "configs/unpaired_quick.yaml"  # the syndiff_cycle run config; the other runs derive from it
OVERRIDES = []  # config overrides, strings as for `mudiff train --set` (section.key, equals sign, value)
RUN_DIR_ROOT = "runs/unpaired"  # the run folders, one per method (resumed, or reused when finished)
BY = "subject"  # unit of the tables and tests: "subject" or "slice"
N_SHOW = 3  # test slices in the translation figures
BATCH_SIZE = None  # slices per sampling call (None: 80, a whole volume, on a GPU; 8 on a CPU)
FIGURES = "figures"  # where figures (PNG) and their numbers (CSV) are written
LIVE_EVERY_S = 10.0  # seconds between redraws of the live loss plot

# %%
from pathlib import Path

from IPython.display import display

from mudiff.display import explore

explore.start_notebook(INTERACTIVE)  # relative paths from the project root; text progress bars when headless
from mudiff import demo
from mudiff.config import load_config
from mudiff.data.prepare import load_manifest
from mudiff.data.synthrad import MRCTDataset
from mudiff.display import viz
from mudiff.evaluation.stats import to_markdown
from mudiff.experiments import unpaired
from mudiff.reproduce import project_file
from mudiff.train import read_stats

figures = Path(FIGURES)
figures.mkdir(parents=True, exist_ok=True)
height, width = SIZE, WIDTH or SIZE

# %% [markdown]
# ## The head phantom: MR, CT in a HU window, body mask, tissue labels; CT histograms per tissue

# %%
demo.ensure_heads(HEAD_DIR, N_SUBJECTS, seed=SEED, resolution=RESOLUTION, make=MAKE_PHANTOM)
subjects = sorted(p for p in Path(HEAD_DIR).iterdir() if (p / "ct.nii.gz").is_file())
if (subjects[0] / "labels.nii.gz").is_file():  # phantom subjects carry their tissue labels
    unpaired.plot_head(subjects[0], out=figures / "10_head.png")
    hu_table = unpaired.hu_histograms(HEAD_DIR, [p.name for p in subjects[:4]], out=figures / "10_hu_histograms.png")
    display(hu_table)

# %% [markdown]
# ## Slices: CT clipped to [-1024, 3000] HU with a fixed mapping, MR per volume, body masks, subject split

# %%
demo.ensure_mrct_slices(HEAD_DIR, HEAD_SLICES_DIR, height, width, SLICES, seed=SEED, split=SPLIT)
train_set = MRCTDataset(HEAD_SLICES_DIR, "train", unpaired=True, seed=SEED)
print(train_set, "\nMR from", train_set.subjects_by_domain["mr"], "\nCT from", train_set.subjects_by_domain["ct"])
print("CT mapping:", load_manifest(HEAD_SLICES_DIR)["preprocessing"]["intensity"]["ct"])

# %% [markdown]
# ## Training: SynDiff (cycle), CycleGAN and the paired upper bound per direction, in the same Trainer

# %%
overrides = [f"data.root={HEAD_SLICES_DIR}", f"train.seed={SEED}", f"train.device={DEVICE}",
             f"model.image_size={height}", *([f"model.image_width={width}"] if WIDTH else []), *OVERRIDES]
cfg = load_config(project_file(UNPAIRED_CONFIG), overrides)
live = explore.LivePlot(INTERACTIVE, every_s=LIVE_EVERY_S, keys=("loss_g", "loss_d", "loss_d_patch", "cycle", "l1"))
runs = unpaired.train_comparison(cfg, RUN_DIR_ROOT, callbacks=[live])
viz.plot_training_curves(read_stats(runs["syndiff_cycle"] / "stats.jsonl"),
                         out=figures / "10_training_curves.png");

# %% [markdown]
# ## Both directions on the test subjects, against the baselines

# %%
test = unpaired.TestSlices.load(HEAD_SLICES_DIR, "test", max_slices=48 if QUICK else None)
preds, scores = unpaired.compare(runs, test, MRCTDataset(HEAD_SLICES_DIR, "train"), seed=SEED,
                                 batch_size=BATCH_SIZE, device=DEVICE)
tables = {}
for direction in unpaired.DIRECTIONS:
    tables[direction] = unpaired.results_table(scores[direction], direction, by=BY)
    tables[direction].to_csv(figures / f"10_{direction}_table.csv")
    print(to_markdown(tables[direction].reset_index(), figures / f"10_{direction}_table.md"))

# %% [markdown]
# ## Per-tissue MAE (MR -> CT): bone is where synthetic CT fails

# %%
unpaired.box_plots(scores["mr_to_ct"], "mr_to_ct", by=BY, out=figures / "10_mr_to_ct_boxes.png");
unpaired.box_plots(scores["ct_to_mr"], "ct_to_mr", by=BY, out=figures / "10_ct_to_mr_boxes.png");

# %% [markdown]
# ## Translations with their error maps (HU for CT)

# %%
shown = list(range(0, len(test), max(1, len(test) // N_SHOW)))[:N_SHOW]
for direction in unpaired.DIRECTIONS:
    unpaired.plot_translations(test, preds, shown, direction, out=figures / f"10_{direction}_examples.png")

# %% [markdown]
# ## A whole test subject as NIfTI: synthetic CT in HU on the MR's grid, with its affine

# %%
subject = str(test.subject[0])
sct_path = unpaired.translate_volume(runs["syndiff_cycle"], Path(HEAD_DIR) / subject, "mr",
                                     Path(RUN_DIR_ROOT) / "samples" / f"{subject}_sct.nii.gz", seed=SEED,
                                     batch_size=BATCH_SIZE, device=DEVICE)
print("wrote", sct_path)

# %% [markdown]
# ## Explorer (subject, slice, direction, methods); a static figure when run headless

# %%
unpaired.translation_explorer(test, preds, interactive=INTERACTIVE, out=figures / "10_explorer.png");
