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
# # 04 CKA of H1 vs H2
#
# How similar are the two backbones of the mutual pair, block by block? Centred kernel alignment (CKA) of every
# encoder block of H1 against every encoder block of H2, and the same for the decoders (the paper's Fig. 2b), on
# fixed (x_{t+1}, t, z) draws from the test split (t cycles through the T steps). The paper reports encoders mostly
# below 0.55, the first decoder blocks above 0.7 and the last ones dissimilar again. The estimator (minibatch
# linear CKA, unbiased HSIC) is named in every title.

# %% tags=["parameters"]
SEED = 0  # seed of the draws (forward noise and z)
DEVICE = "auto"  # "auto" (CUDA if available, else CPU), "cuda", "cpu"
QUICK = True  # True: at most 16 draws, a pipeline check on a short run; False: N_DRAWS draws
INTERACTIVE = None  # True/False/None (detect); only chooses widget or text progress bars here
RUN_DIR = "runs/quick"  # the MU-Diff run of 01_training
SLICES_DIR = "data/phantom_slices"  # the prepared slice dataset (its test split gives the draws)
FIGURES = "figures"  # where figures (PNG) and their numbers (CSV) are written
N_DRAWS = 128  # (x_{t+1}, t, z) draws, evenly spaced over the test slices
BATCH_SIZE = 16  # draws per CKA minibatch (4 or more: the unbiased HSIC needs them)

# %%
from pathlib import Path

from mudiff.display import explore

explore.start_notebook(INTERACTIVE)  # relative paths from the project root; text progress bars when headless
from mudiff.data.dataset import TaskDataset
from mudiff.evaluation import analysis
from mudiff.evaluation.cka import cka_heatmap
from mudiff.sample import Sampler

figures = Path(FIGURES)
figures.mkdir(parents=True, exist_ok=True)
sampler = Sampler.from_checkpoint(RUN_DIR, device=DEVICE)
test_set = TaskDataset(SLICES_DIR, sampler.cfg.data.task, "test")
draws = analysis.fixed_draws(test_set, sampler.method.schedule, sampler.cfg.model.z_dim,
                             n=min(N_DRAWS, 16) if QUICK else N_DRAWS, seed=SEED, device=sampler.device)
label = f"{analysis.run_label(RUN_DIR)}, {len(draws)} test draws"
note = analysis.QUICK_NOTE if QUICK else ""
print(label)

# %% [markdown]
# ## Encoder blocks of H1 vs H2

# %%
encoder = analysis.h1_h2_cka(sampler.method.generator, draws, "encoder", batch_size=BATCH_SIZE)
cka_heatmap(encoder.matrix, encoder.blocks1, encoder.blocks2, "\n".join(filter(None, [
    f"CKA, H1 (rows) vs H2 (columns) encoder blocks: {label}", note])), out=figures / "04_cka_encoder.png");

# %% [markdown]
# ## Decoder blocks of H1 vs H2

# %%
decoder = analysis.h1_h2_cka(sampler.method.generator, draws, "decoder", batch_size=BATCH_SIZE)
cka_heatmap(decoder.matrix, decoder.blocks1, decoder.blocks2, "\n".join(filter(None, [
    f"CKA, H1 (rows) vs H2 (columns) decoder blocks: {label}", note])), out=figures / "04_cka_decoder.png");

# %% [markdown]
# ## Same-position blocks against the paper's description
# Paper: encoder blocks mostly below 0.55, the first decoder blocks above 0.7, the last ones dissimilar again.

# %%
summary = analysis.cka_summary([encoder, decoder])
summary.to_csv(figures / "04_cka_summary.csv", index=False)
summary.drop(columns="estimator")
