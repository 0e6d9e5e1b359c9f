"""Record intermediate outputs of named submodules, for the analysis notebooks (CKA, tau's maps, masks).

Names are those of ``module.named_modules()``; the stable ones are documented in :mod:`mudiff.models.unet`
(``encoder.{k}``, ``decoder.{k}``, ...), :mod:`mudiff.models.adapters` (``pairs.{i}.gate_a``, ...),
:mod:`mudiff.models.generators` (prefixes ``f1.``, ``f2.``) and :mod:`mudiff.models.critic` (``mask_head``).

    with record_features(model, ["f1.backbone.encoder.0", "f2.tau.pairs.0.gate_a"]) as feats:
        model(x_tp1, sources, t, z)
    feats["f2.tau.pairs.0.gate_a"]  # (B, nf, H, W), detached
"""
from __future__ import annotations

from collections.abc import Iterable, Iterator
from contextlib import contextmanager

import torch
from torch import nn


@contextmanager
def record_features(module: nn.Module, names: Iterable[str]) -> Iterator[dict[str, torch.Tensor]]:
    """Yield a dict that each forward pass fills with name -> detached output; the hooks go away on exit.

    A module called several times keeps its last output. Unknown names raise a ``KeyError`` before any hook
    is registered.
    """
    names = list(names)
    modules = dict(module.named_modules())
    missing = [name for name in names if name not in modules]
    if missing:
        raise KeyError(f"no submodule(s) {missing} in {type(module).__name__}; "
                       "see the module docstrings of mudiff.models for the stable names")
    features: dict[str, torch.Tensor] = {}

    def hook_for(name: str):
        def hook(_module, _inputs, output):
            features[name] = output.detach()
        return hook

    handles = [modules[name].register_forward_hook(hook_for(name)) for name in names]
    try:
        yield features
    finally:
        for handle in handles:
            handle.remove()
