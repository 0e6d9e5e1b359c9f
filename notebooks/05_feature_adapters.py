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
# # 05 Feature adapters, critic masks, x^p1 vs x^p2
#
# Inside the MU-Diff run of `01_training` (the paper's Fig. 5): the contrast-aware adapter tau's gate and feature
# maps per source (for the T1CE task the paper finds FLAIR's maps concentrating on the lesion), the critic's
# attentive masks M1 and M2 as heat maps over the two predictions, and x^p1 vs x^p2 vs the mutual result with
# their scores.

# %% tags=["parameters"]
SEED = 0  # seed of the draws (forward and posterior noise, z) and of the sampling
DEVICE = "auto"  # "auto" (CUDA if available, else CPU), "cuda", "cpu"
QUICK = True  # True: at most 16 slices scored, a pipeline check on a short run; False: N_SLICES slices
INTERACTIVE = None  # True/False/None (detect); only chooses widget or text progress bars here
RUN_DIR = "runs/quick"  # the MU-Diff run of 01_training
SLICES_DIR = "data/phantom_slices"  # the prepared slice dataset (its test split is analysed)
FIGURES = "figures"  # where figures (PNG) and their numbers (CSV) are written
N_MAPS = 8  # test slices with the largest lesions whose adapter maps are scored (the largest is shown)
T_MAPS = 0  # generator time index of the adapter maps (0: the least noisy input)
N_MASKS = 6  # test slices (evenly spaced) of the critic masks
T_MASK = 0  # generator time index of the critic masks (0: x_t is the posterior mean, no noise)
N_SLICES = 64  # test slices scored for x^p1 vs x^p2 vs mutual (None: all)
N_SHOW = 3  # rows in the mask and prediction figures
BATCH_SIZE = None  # slices per sampling call (None: 80, a whole volume, on a GPU; 8 on a CPU)

# %%
from pathlib import Path

from mudiff.display import explore

explore.start_notebook(INTERACTIVE)  # relative paths from the project root; text progress bars when headless
from mudiff.data.dataset import TaskDataset
from mudiff.evaluation import analysis
from mudiff.sample import Sampler

figures = Path(FIGURES)
figures.mkdir(parents=True, exist_ok=True)
sampler = Sampler.from_checkpoint(RUN_DIR, device=DEVICE)
test_set = TaskDataset(SLICES_DIR, sampler.cfg.data.task, "test")
schedule, z_dim = sampler.method.schedule, sampler.cfg.model.z_dim
note = analysis.QUICK_NOTE if QUICK else ""
print(analysis.run_label(RUN_DIR), test_set)

# %% [markdown]
# ## tau's gate and feature maps per source (Fig. 5a)
# Row i: the pair (source i, source i+1): phi2's adapted map of source i, the gate z_a on it, the leak gate z_b
# and the fused map. "lesion conc." > 0: the map is higher on the lesion than on the rest of the brain.

# %%
map_draws = analysis.fixed_draws(test_set, schedule, z_dim, t=T_MAPS, seed=SEED, device=sampler.device,
                                 indices=analysis.lesion_indices(test_set, N_MAPS))
maps = analysis.adapter_maps(sampler.method.generator, map_draws, test_set.sources)
analysis.plot_adapter_maps(maps, out=figures / "05_adapter_maps.png", note=note);

# %%
ranking = maps.scores.pivot_table(index="source", columns="map", values="lesion_concentration")
ranking.sort_values("feature", ascending=False)

# %% [markdown]
# ## The critic's attentive masks M1, M2 (Fig. 5b)

# %%
mask_draws = analysis.fixed_draws(test_set, schedule, z_dim, n=N_MASKS, t=T_MASK, seed=SEED, device=sampler.device)
masks = analysis.critic_masks(sampler.method, mask_draws, seed=SEED)
print(f"mask head: {sampler.cfg.model.mask_head}")
analysis.plot_critic_masks(masks, n_show=N_SHOW, out=figures / "05_critic_masks.png", note=note);

# %% [markdown]
# ## x^p1 vs x^p2 vs mutual (Fig. 5c, d)

# %%
n_slices = min(N_SLICES or len(test_set), 16) if QUICK else N_SLICES
result, scores = analysis.p1_p2_mutual(sampler, test_set, n=n_slices, seed=SEED, batch_size=BATCH_SIZE)
analysis.plot_p1_p2_mutual(result, scores, n_show=N_SHOW, out=figures / "05_p1_p2_mutual.png", note=note);
scores
