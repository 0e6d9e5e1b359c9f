"""Networks of MU-Diff: the generators F1, F2 (``MuDiff``), the critic psi and their building blocks."""
from torch import nn

from mudiff.models.adapters import ContrastAdapter, FeatureMapper, TargetAdapter
from mudiff.models.critic import Critic
from mudiff.models.generators import F1, F2, MuDiff
from mudiff.models.hooks import record_features
from mudiff.models.unet import UNet


def count_parameters(module: nn.Module) -> int:
    """Number of parameters of ``module``, trainable or not."""
    return sum(p.numel() for p in module.parameters())


__all__ = ["MuDiff", "F1", "F2", "Critic", "UNet", "FeatureMapper", "TargetAdapter", "ContrastAdapter",
           "record_features", "count_parameters"]
