"""Image quality metrics on intensities in [0, 1].

Shapes: pred, target, mask: (B, 1, H, W); per-image results (B,).
"""
from __future__ import annotations

import torch
from torch import Tensor


def psnr(pred: Tensor, target: Tensor, mask: Tensor | None = None, data_range: float = 1.0) -> Tensor:
    """Peak signal-to-noise ratio per image, over the pixels where ``mask`` is 1 (all pixels without a mask)."""
    err = (pred.float() - target.float()) ** 2
    if mask is None:
        mse = err.flatten(1).mean(1)
    else:
        m = mask.float()
        mse = (err * m).flatten(1).sum(1) / m.flatten(1).sum(1).clamp(min=1.0)
    return 10.0 * torch.log10(data_range**2 / mse.clamp(min=1e-10))
