"""Trivial reference: output the source contrast closest to the target, chosen on the training data.

Nothing is optimised. During training it accumulates each source's PSNR against the target, over the target's
non-zero region (the batch carries no brain mask; after the slice pipeline the background is exactly 0 in
[0, 1]), in buffers that the checkpoint keeps; sampling returns the source with the highest mean PSNR so far
(the first source before any training). Under data-parallel training each process counts its own shard and the
main process's counts are saved.
"""
from __future__ import annotations

from typing import Sequence

import torch
from torch import Tensor, nn

from mudiff.config import RunConfig
from mudiff.data.tasks import parse_task
from mudiff.evaluation.metrics import psnr
from mudiff.methods.base import Method


class SourceSelector(nn.Module):
    """sources (B, n, H, W) -> the best source so far (B, 1, H, W). Buffers: ``psnr_sum`` (n,) float64, the sum
    of each source's PSNR over the ``count`` (float64 scalar) scored slices."""

    def __init__(self, num_sources: int):
        super().__init__()
        self.register_buffer("psnr_sum", torch.zeros(num_sources, dtype=torch.float64))
        self.register_buffer("count", torch.zeros((), dtype=torch.float64))

    @property
    def mean_psnr(self) -> Tensor:
        """(n,) mean PSNR of each source (0 before any slice is scored)."""
        return self.psnr_sum / self.count.clamp(min=1)

    @property
    def best(self) -> int:
        return int(self.mean_psnr.argmax())

    def update(self, scores: Tensor) -> None:
        """Add the PSNR of every source on B slices: scores (B, n)."""
        self.psnr_sum += scores.sum(0).to(self.psnr_sum)
        self.count += scores.shape[0]

    def forward(self, sources: Tensor) -> Tensor:
        best = self.best
        return sources[:, best:best + 1]


class CopySourceMethod(Method):
    """The :class:`SourceSelector` as ``generator``; no optimiser, no EMA (no parameters); zero evaluations."""

    network_evaluations = 0
    """Network evaluations per synthesised slice."""

    def __init__(self, cfg: RunConfig):
        super().__init__(cfg)
        self.source_names = parse_task(cfg.data.task)[1]
        self.generator = SourceSelector(cfg.model.num_sources)
        self.optimizers = {}

    @torch.no_grad()
    def train_step(self, x0: Tensor, sources: Tensor, step: int) -> dict[str, Tensor]:
        """Score every source on the slices with a non-empty target; returns the chosen source's L1 (``loss_g``:
        what an L1 loss would charge this output; nothing is optimised), its batch PSNR and each source's PSNR."""
        target = (x0.float() + 1) / 2
        mask = (target > 0).float()
        scored = mask.flatten(1).any(1)
        scores = torch.stack([psnr((s.float() + 1) / 2, target, mask) for s in sources.unbind(1)], 1)[scored]
        self.generator.update(scores)
        best = self.generator.best
        out = {"loss_g": (sources[:, best:best + 1].float() - x0).abs().mean()}
        if len(scores):  # a batch of empty targets has no PSNR to log
            out.update({f"psnr_{name}": scores[:, k].mean() for k, name in enumerate(self.source_names)})
            out["psnr_best_source"] = scores[:, best].mean()
        return out

    @torch.no_grad()
    def sample(self, generator: nn.Module, sources: Tensor, seeds: Sequence[int]
               ) -> tuple[Tensor, Tensor | None, Tensor]:
        """The chosen source itself; ``seeds`` are ignored."""
        x = generator(sources).float()
        return x, None, x


__all__ = ["SourceSelector", "CopySourceMethod"]
