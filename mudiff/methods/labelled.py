"""The part shared by the class-conditioned generators (``class_ddpm``, ``wgan_gp``, ``cwgan_gp``; issue 11): their
data are labelled slices (:mod:`mudiff.data.labelled`), not the paired synthesis task, and they generate from class
labels and per-image seeds instead of translating sources."""
from __future__ import annotations

from typing import Any, Sequence

import torch
from torch import Tensor, nn
from torch.utils.data import Dataset

from mudiff.methods.base import Method


class LabelledMethod(Method):
    """A generator of labelled images: ``generate(generator, labels, seeds)`` -> (B, C, H, W) in [-1, 1]."""

    conditional: bool = True
    """False: the labels are ignored (an unconditional model)."""

    def dataset(self, split: str) -> Dataset:
        """The ``split`` of the labelled slices in ``data.root``; their classes, channels and size must match the
        model config."""
        from mudiff.data.labelled import LabelledSliceDataset, read_manifest

        root, mc = self.cfg.data.root, self.cfg.model
        manifest = read_manifest(root)
        expected = {"num_classes": len(manifest["classes"]), "image_channels": manifest["channels"],
                    "image_size": manifest["image_size"][0]}
        wrong = [f"model.{k}={getattr(mc, k)} but the data have {v}" for k, v in expected.items()
                 if getattr(mc, k) != v]
        if wrong or manifest["image_size"][0] != manifest["image_size"][1]:
            raise ValueError(f"the labelled slices in {root} ({manifest['classes']}, {manifest['channels']} "
                             f"channel(s), {manifest['image_size']}) do not fit the config: "
                             f"{'; '.join(wrong) or 'not square'}")
        return LabelledSliceDataset(root, split)

    def train_batch(self, batch: dict[str, Any], step: int) -> dict[str, Tensor]:
        x0 = batch["image"].to(self.device, non_blocking=True).contiguous(memory_format=self.memory_format)
        return self.train_labelled(x0, batch["label"].to(self.device, non_blocking=True), step)

    def train_labelled(self, x0: Tensor, labels: Tensor, step: int) -> dict[str, Tensor]:
        """One iteration on images x0 (B, C, H, W) in [-1, 1] and labels (B,) long; detached scalar losses."""
        raise NotImplementedError

    @torch.no_grad()
    def generate(self, generator: nn.Module, labels: Tensor, seeds: Sequence[int], **options) -> Tensor:
        """Images of classes ``labels`` (B,) long with ``generator`` (``self.generator`` or its EMA copy):
        (B, C, H, W) float32 in [-1, 1], image k a function of ``(labels[k], seeds[k])`` alone."""
        raise NotImplementedError

    @torch.no_grad()
    def validate(self, generator: nn.Module, val_set: Dataset, indices: Sequence[int], batch_size: int
                 ) -> dict[str, float]:
        """``val_class_mean_mae``: one image generated per chosen val item (its class, seeded by its index); the
        mean over classes of the mean absolute difference (in [0, 1] units) between the mean generated and the
        mean real image of the class. Low when each class's average appearance is right."""
        items = [val_set[i] for i in indices]
        real = torch.stack([it["image"] for it in items]).to(self.device)
        labels = torch.stack([it["label"] for it in items]).to(self.device)
        fake = torch.cat([self.generate(generator, labels[s:s + batch_size], indices[s:s + batch_size])
                          for s in range(0, len(items), batch_size)])
        errors = [((fake[labels == c].mean(0) - real[labels == c].mean(0)).abs().mean() / 2).item()
                  for c in labels.unique()]
        return {"val_class_mean_mae": sum(errors) / len(errors)}


__all__ = ["LabelledMethod"]
