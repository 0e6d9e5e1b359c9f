"""MU-Diff workbench: mutual-learning adversarial diffusion for multi-contrast brain MRI synthesis.

Heavy modules (torch, nibabel) load on first use, so ``python -m mudiff phantom`` starts quickly.
"""
from importlib import import_module

from mudiff.config import DataConfig, ModelConfig, RunConfig, TrainConfig, load_config

__version__ = "0.1.0"

_LAZY = {
    "Schedule": "mudiff.diffusion",
    "MuDiff": "mudiff.models",
    "Critic": "mudiff.models",
    "TaskDataset": "mudiff.data.dataset",
    "Trainer": "mudiff.train",
    "train": "mudiff.train",
    "Sampler": "mudiff.sample",
}


def __getattr__(name: str):
    if name in _LAZY:
        return getattr(import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'mudiff' has no attribute {name!r}")


__all__ = ["DataConfig", "ModelConfig", "RunConfig", "TrainConfig", "load_config", *_LAZY]
