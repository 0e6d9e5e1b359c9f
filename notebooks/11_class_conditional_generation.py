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
# # 11 Class-conditioned tumour image generation with a trust gate
#
# Labelled phantom slices (healthy, glioma, meningioma, metastases; imbalanced on purpose), the label-conditioned
# DDPM of DF_MRI (Nguyen et al. 2023) in two conditionings (`faithful`: the published additive bias from the scalar
# label; the default: a class embedding with classifier-free guidance), the unconditional "no label" ablation, and
# WGAN-GP / conditional WGAN-GP baselines, all trained by the shared loop. Every metric compares a generated set
# with the **held-out real test split of the same class at equal n**: FID / KID (offline Inception; no Inception
# Score: the offline network has no classifier head), the domain feature distance, class fidelity (a classifier
# trained on real training slices), train-on-synthetic-test-on-real (TSTR), and nearest training neighbours. The
# trust gate scores each generated image against the real class distribution with limits from held-out real images
# and regenerates the rejected ones; every metric is reported before and after it.
#
# **Phantom data are a controlled benchmark with known truth, not evidence about patients. With `QUICK = True` the
# runs are minutes of CPU training: the numbers are a pipeline check, not a result.**

# %% tags=["parameters"]
SEED = 0  # training and sampling seed
DEVICE = "auto"  # "auto" (CUDA if available, else CPU), "cuda", "cpu"
QUICK = True  # True: short CPU runs; every title says the numbers are a pipeline check
INTERACTIVE = None  # True: widget explorer; False: static figure; None: detect a notebook frontend
CLASS_SLICES_DIR = "data/class_slices"  # labelled phantom slices (made here when missing)
SUBJECTS_PER_CLASS = {"healthy": 12, "glioma": 8, "meningioma": 6, "metastases": 6}  # phantom subjects per class
SLICES_PER_SUBJECT = 4  # axial slices per subject
SIZE = 32  # slice size in pixels
CONTRASTS = ["t1ce"]  # contrasts stacked as channels
CLASS_CONFIG = "configs/class_quick.yaml"  # base config of every run; relative paths also resolve against the project root
RUN_DIR_ROOT = "runs/classgen"  # runs go to RUN_DIR_ROOT/<name>
RUNS = ["ddpm_cfg", "ddpm_faithful", "ddpm_uncond", "cwgan_gp", "wgan_gp"]  # runs compared (class_generation.RUNS)
OVERRIDES = []  # overrides of every run, strings as for `mudiff train --set` (section.key, equals sign, value)
GUIDANCE_SCALE = 2.0  # classifier-free guidance scale of ddpm_cfg's samples
CLASSIFIER_STEPS = 300  # training batches of the real-data classifiers (class fidelity, gate, judge, TSTR)
INCEPTION = True  # FID / KID and the probe judge with the offline Inception network (slow on a CPU); domain FD always
GATE_RULE = "quantile"  # trust gate limits: "quantile" (one-sided), "mean_sd" (DF_MRI's) or "mean_sd_one_sided"
N_SHOW = 4  # images per class in the sample grids
FIGURES = "figures"  # where figures (PNG) and their numbers (CSV) are written

# %%
from pathlib import Path

from mudiff.display import explore

explore.start_notebook(INTERACTIVE)  # relative paths from the project root; text progress bars when headless
from mudiff.experiments import class_generation as cx
from mudiff.experiments.comparisons import train_variants
from mudiff.reproduce import project_file
from mudiff.runtime import resolve_device

figures = Path(FIGURES)
device = str(resolve_device(DEVICE))
note = cx.note(QUICK)

# %% [markdown]
# ## Labelled data
# Each class has its own phantom subjects, split by subject; tumour slices are those where the lesion is largest,
# healthy slices random, all from the central 60 % of the brain's height (brain size must not give the class away).

# %%
data = cx.labelled_data(CLASS_SLICES_DIR, SUBJECTS_PER_CLASS, SIZE, CONTRASTS, SLICES_PER_SUBJECT, SEED)
classes = data["train"].classes
counts = cx.counts_table(data)
figures.mkdir(parents=True, exist_ok=True)
counts.to_csv(figures / "11_class_counts.csv")
print(counts.to_string())
cx.grid({"real (train)": cx.first_of_each_class(data["train"], N_SHOW)}, classes, N_SHOW, note,
        figures / "11_real_classes.png");

# %% [markdown]
# ## Training: one config, one override per run, the shared loop

# %%
runs = train_variants(project_file(CLASS_CONFIG), {name: cx.RUNS[name] for name in RUNS}, RUN_DIR_ROOT,
                      [f"data.root={CLASS_SLICES_DIR}", f"model.num_classes={len(classes)}",
                       f"model.image_channels={len(CONTRASTS)}", f"model.image_size={SIZE}",
                       f"train.seed={SEED}", f"train.device={DEVICE}", *OVERRIDES])

# %% [markdown]
# ## Generation at equal n, before and after the trust gate

# %%
comparison = cx.Comparison(runs, data, SEED, CLASSIFIER_STEPS, INCEPTION, device=device, gate_rule=GATE_RULE)
comparison.generate_all({"ddpm_cfg": {"guidance_scale": GUIDANCE_SCALE}})

# %%
show = {"real (test)": cx.first_of_each_class(data["test"], N_SHOW)}
show.update({name: cx.first_of_each_class(comparison.generated[name], N_SHOW) for name in runs})
cx.grid(show, classes, N_SHOW, f"samples per class (first channel); {note}", figures / "11_sample_grid.png");

# %% [markdown]
# ## Metrics: per class and pooled, against the held-out real test split at equal n
# `class_fidelity`: accuracy of the real-data classifier on the generated images (pooled: the mean over classes,
# whose chance is 1 / classes); the gate uses this classifier, so after the gate it is partly high by construction;
# `class_fidelity_judge`: the same accuracy by an independent judge, a second real-data classifier with its own seed
# that the gate never saw; `class_fidelity_probe` (with `INCEPTION`): by a judge of another model family, a linear
# probe on the Inception features of the real training split (its L2 weight chosen on the val split);
# `tstr_*`: balanced accuracy on the real test split of a classifier trained on the generated set (and on real +
# generated); `acceptance_rate`: the gate's share of accepted images. The `real` rows are the ceiling: the classifier
# on the real test split itself, and a classifier trained on the real training split.

# %%
table = comparison.metrics(list(runs), CLASSIFIER_STEPS)
table.to_csv(figures / "11_metrics.csv", index=False)
print(note)
table.round(3)

# %% [markdown]
# ## Control charts of the trust gate (DF_MRI's Fig. 5, with limits from held-out real images)

# %%
gated = "ddpm_cfg" if "ddpm_cfg" in runs else next(iter(runs))
for cls in classes:
    cx.plot_control_chart(comparison.gate_logs[gated], comparison.gate, cls,
                          figures / f"11_control_chart_{gated}_{cls}.png")

# %% [markdown]
# ## Memorisation check: the generated images closest to a training image

# %%
cx.nearest_neighbour_figure(comparison.generated[gated], data["train"], data["test"], 6,
                            f"{gated}: closest generated / training pairs; {note}", figures / "11_nearest.png");

# %% [markdown]
# ## Explorer: class, guidance scale, seed

# %%
if "ddpm_cfg" in runs:
    cx.explorer(comparison, "ddpm_cfg", INTERACTIVE, figures / "11_guidance_explorer.png")
