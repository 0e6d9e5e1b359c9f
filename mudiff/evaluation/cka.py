"""Layer similarity between two networks by centred kernel alignment (CKA), e.g. H1's vs H2's blocks.

``cka_matrix`` runs torch-cka's ``CKA``: linear kernels, HSIC estimated per minibatch with the unbiased
estimator and averaged over minibatches (Nguyen, Raghu & Kornblith 2021). We work around that package's
faults: it declares no dependencies but imports tqdm and matplotlib (both are mudiff dependencies); it never
removes its forward hooks (we remove every hook it added, also on error); it runs with gradients on (we run it
under ``no_grad``); its unbiased HSIC divides by (n - 2)(n - 3) and so fails for batches of 3 or fewer (we
require 4 or more); it feeds a single input to each model (generators are wrapped by ``FixedNoiseWrapper``); it
orders the rows by execution order, not by the layer list (we reorder); it needs a DataLoader yielding
(input, ...) tuples (we build one from the batches); it puts both models in eval mode (we restore the mode).

``linear_cka`` is the direct full-batch (biased HSIC) linear CKA, the reference in the tests.
"""
from __future__ import annotations

from pathlib import Path
from typing import Iterable, Sequence

import numpy as np
import pandas as pd
import torch
from torch import nn
from torch.utils.data import DataLoader

from mudiff.display.viz import save_figure

ESTIMATOR = "minibatch linear CKA, unbiased HSIC averaged over minibatches (Nguyen et al. 2021; torch-cka)"
MIN_BATCH = 4


def linear_cka(x: np.ndarray, y: np.ndarray) -> float:
    """Linear CKA of features x (n, p) and y (n, q) of the same n inputs: with centred columns,
    ||y^T x||_F^2 / (||x^T x||_F ||y^T y||_F). 1 for identical representations, invariant to orthogonal
    transforms and isotropic scaling of either, near 0 for independent features when n >> p, q."""
    x, y = (np.asarray(a, np.float64).reshape(len(a), -1) for a in (x, y))
    x, y = x - x.mean(0), y - y.mean(0)
    return float(np.linalg.norm(y.T @ x) ** 2 / (np.linalg.norm(x.T @ x) * np.linalg.norm(y.T @ y)))


class FixedNoiseWrapper(nn.Module):
    """A generator seen as a one-input module, for torch-cka: forward(idx (B,) long) -> (B, 1, H, W).

    Holds N fixed draws x_{t+1} (N, 1, H, W), sources (N, n, H, W), t (N,) long, z (N, z_dim) and, for F2,
    F1's predictions x_p1 (N, 1, H, W); calls ``generator(x_tp1[idx], sources[idx], t[idx], z[idx][, x_p1[idx]])``
    (the F1/F2 API). Two wrappers over the same draws fed the same index batches see identical inputs.
    Layer names for ``cka_matrix`` are "generator.<name in the generator>": see ``backbone_block_names``.
    """

    def __init__(self, generator: nn.Module, x_tp1: torch.Tensor, sources: torch.Tensor, t: torch.Tensor,
                 z: torch.Tensor, x_p1: torch.Tensor | None = None):
        super().__init__()
        if not len(x_tp1) == len(sources) == len(t) == len(z) or (x_p1 is not None and len(x_p1) != len(t)):
            raise ValueError("x_tp1, sources, t, z (and x_p1) must hold the same number of draws")
        self.generator = generator
        for name, value in (("x_tp1", x_tp1), ("sources", sources), ("t", t), ("z", z), ("x_p1", x_p1)):
            self.register_buffer(name, value)

    def forward(self, idx: torch.Tensor) -> torch.Tensor:
        args = [self.x_tp1[idx], self.sources[idx], self.t[idx], self.z[idx]]
        if self.x_p1 is not None:
            args.append(self.x_p1[idx])
        return self.generator(*args)


def backbone_block_names(generator: nn.Module, part: str = "all", prefix: str = "generator.") -> list[str]:
    """Names of the U-Net blocks of an F1/F2 ``generator`` (encoder blocks, bottleneck, decoder blocks),
    prefixed for use inside a ``FixedNoiseWrapper``. ``part``: "encoder", "decoder" or "all"."""
    unet = generator.backbone
    names = {"encoder": unet.encoder_block_names(), "decoder": unet.decoder_block_names(),
             "mid": ["mid_block1", "mid_attn", "mid_block2"]}
    if part not in ("encoder", "decoder", "all"):
        raise ValueError(f"part must be 'encoder', 'decoder' or 'all', got {part!r}")
    parts = ["encoder", "mid", "decoder"] if part == "all" else [part]
    return [f"{prefix}backbone.{name}" for p in parts for name in names[p]]


def index_batches(n: int, batch_size: int) -> list[torch.Tensor]:
    """Batches of the indices 0..n-1 for ``FixedNoiseWrapper``, a short last batch merged into the one before
    (the unbiased HSIC needs 4 or more samples per batch)."""
    if n < MIN_BATCH or batch_size < MIN_BATCH:
        raise ValueError(f"CKA needs at least {MIN_BATCH} samples per batch (n={n}, batch_size={batch_size})")
    batches = list(torch.arange(n).split(batch_size))
    if len(batches) > 1 and len(batches[-1]) < MIN_BATCH:
        batches[-2:] = [torch.cat(batches[-2:])]
    return batches


class _Batches(torch.utils.data.Dataset):
    """Ready-made batches, served one per item as the (input,) tuples torch-cka unpacks."""

    def __init__(self, batches: list[torch.Tensor]):
        self.batches = batches

    def __len__(self) -> int:
        return len(self.batches)

    def __getitem__(self, i: int) -> tuple[torch.Tensor]:
        return (self.batches[i],)


def cka_matrix(model1: nn.Module, model2: nn.Module, layers1: Sequence[str], layers2: Sequence[str],
               loader_or_batches: Iterable, device: str = "cpu",
               names: tuple[str, str] = ("model1", "model2")) -> tuple[np.ndarray, dict]:
    """CKA between the outputs of ``layers1`` of model1 and ``layers2`` of model2 on the same inputs.

    loader_or_batches: an iterable (e.g. a DataLoader, or ``index_batches`` for ``FixedNoiseWrapper``s) of input
    batches, each a tensor or a tuple/list whose first item is the input; every batch needs >= 4 samples.
    Both models see the same batches. The models are moved to ``device``. Returns the (len(layers1),
    len(layers2)) matrix, rows and columns in the order given, and a dict naming the estimator, the layers and
    the number of batches and samples.
    """
    from torch_cka import CKA

    batches = [b[0] if isinstance(b, (tuple, list)) else b for b in loader_or_batches]
    if not batches or min(len(b) for b in batches) < MIN_BATCH:
        raise ValueError(f"CKA needs at least {MIN_BATCH} samples in every batch (torch-cka's unbiased HSIC "
                         f"divides by (n - 2)(n - 3)); got batch sizes {[len(b) for b in batches]}")
    hooked = []
    for model, layers, name in ((model1, layers1, names[0]), (model2, layers2, names[1])):
        modules = dict(model.named_modules())
        missing = [layer for layer in layers if layer not in modules]
        if missing or len(set(layers)) != len(layers):
            raise ValueError(f"{name}: unknown or repeated layer names {missing or list(layers)}")
        hooked += [(modules[layer], set(modules[layer]._forward_hooks)) for layer in layers]
    modes = (model1.training, model2.training)
    loader = DataLoader(_Batches(batches), batch_size=None)
    try:
        with torch.no_grad():
            cka = CKA(model1, model2, names[0], names[1], list(layers1), list(layers2), device=device)
            try:
                cka.compare(loader, loader)
            except AssertionError as err:  # torch-cka's only check: NaN in the result
                raise ValueError("CKA is NaN: a layer did not run or gave constant outputs on these inputs") from err
    finally:
        for module, before in hooked:  # torch-cka keeps no handles: drop every hook it added
            for key in set(module._forward_hooks) - before:
                del module._forward_hooks[key]
        model1.train(modes[0]), model2.train(modes[1])
    # rows/columns come in the order the layers ran in the last forward pass; put them in the order given
    run1, run2 = list(cka.model1_features), list(cka.model2_features)
    matrix = cka.hsic_matrix.double().numpy()[np.ix_([run1.index(n) for n in layers1],
                                                     [run2.index(n) for n in layers2])]
    info = dict(estimator=ESTIMATOR, models=names, layers1=list(layers1), layers2=list(layers2),
                n_batches=len(batches), n_samples=sum(len(b) for b in batches))
    return matrix, info


def cka_heatmap(matrix: np.ndarray, layers1: Sequence[str], layers2: Sequence[str], title: str,
                out: str | Path | None = None):
    """Heat map of a CKA matrix (rows layers1, columns layers2), values written in the cells; the estimator
    is named under the title. Returns the Figure; with ``out`` (.png) also writes it and a long-format CSV."""
    import matplotlib.pyplot as plt

    matrix = np.asarray(matrix)
    fig, ax = plt.subplots(figsize=(1.0 + 0.5 * len(layers2), 1.0 + 0.45 * len(layers1)))
    im = ax.imshow(matrix, vmin=0, vmax=1, cmap="magma", origin="lower")
    for (i, j), v in np.ndenumerate(matrix):
        ax.text(j, i, f"{v:.2f}", ha="center", va="center", fontsize=6, color="white" if v < 0.6 else "black")
    ax.set_xticks(range(len(layers2)), layers2, rotation=90, fontsize=6)
    ax.set_yticks(range(len(layers1)), layers1, fontsize=6)
    ax.set_title(f"{title}\n{ESTIMATOR}", fontsize=7)
    fig.colorbar(im, ax=ax, fraction=0.046)
    fig.tight_layout()
    table = pd.DataFrame([(a, b, matrix[i, j]) for i, a in enumerate(layers1) for j, b in enumerate(layers2)],
                         columns=["layer1", "layer2", "cka"])
    return save_figure(fig, out, table)
