"""The interface every synthesis method offers the :class:`~mudiff.train.Trainer` and the sampler.

A method owns its networks and optimisers, knows one training iteration and how to sample. The trainer owns
everything around it (data, epochs, learning-rate schedule, EMA, checkpoints, statistics, validation), so
MU-Diff, its ablations and the baselines are trained, logged and evaluated by the same loop on the same data.
"""
from __future__ import annotations

from typing import Any, Callable, Sequence

import torch
from torch import Tensor, nn
from torch.utils.data import Dataset

from mudiff.config import RunConfig
from mudiff.evaluation.metrics import psnr

Wrap = Callable[..., nn.Module]
"""``wrap(module, ddp=True, compile=True)``: the module for training forward passes (DDP under torchrun unless
``ddp=False``, compiled when the run compiles unless ``compile=False``)."""


def no_wrap(module: nn.Module, **_) -> nn.Module:
    """The :data:`Wrap` of a single-process, uncompiled use (sampling, analyses, tests)."""
    return module


class Method(nn.Module):
    """Base class. Subclasses set ``self.generator`` (the network that is EMA-averaged and sampled) and
    ``self.optimizers`` (name -> optimiser; the trainer anneals every group's lr from its ``initial_lr``)."""

    generator: nn.Module
    optimizers: dict[str, torch.optim.Optimizer]

    def __init__(self, cfg: RunConfig):
        super().__init__()
        self.cfg = cfg
        self.device = torch.device("cpu")
        self.amp_dtype: torch.dtype | None = None
        self.memory_format = torch.contiguous_format

    @property
    def network_evaluations(self) -> int:
        """Network forward passes per synthesised slice (the cost of sampling)."""
        raise NotImplementedError

    def adam(self, params, lr: float) -> torch.optim.Adam:
        """Adam with the configured betas, over the parameters that require gradients (its implementation is
        chosen for the device in :meth:`setup`)."""
        return torch.optim.Adam([p for p in params if p.requires_grad], lr=lr, betas=self.cfg.train.adam_betas)

    def setup(self, device: torch.device, amp_dtype: torch.dtype | None, memory_format: torch.memory_format,
              wrap: Wrap) -> "Method":
        """Move to ``device`` and wrap the networks used in training forward passes (DDP, compile)."""
        self.device, self.amp_dtype, self.memory_format = device, amp_dtype, memory_format
        self.to(device, memory_format=memory_format)
        for opt in self.optimizers.values():  # CUDA: one fused kernel per step; CPU: the multi-tensor loop
            for group in opt.param_groups:
                group["fused"], group["foreach"] = device.type == "cuda", device.type != "cuda"
        return self

    def dataset(self, split: str) -> Dataset:
        """The ``split`` (train, val, test) of the data this method trains on; the default is the paired
        synthesis task of ``cfg.data`` (items with ``target``, ``sources``, ``brain_mask``, ``index``).
        A method with other data (unpaired, labelled, one modality) returns its own dataset here."""
        from mudiff.data.dataset import TaskDataset  # local import: methods must not need prepared data to build

        data = TaskDataset(self.cfg.data.root, self.cfg.data.task, split)
        size = self.cfg.model.image_size
        if data.image_size != size:
            raise ValueError(
                f"the prepared slices in {self.cfg.data.root} are {data.image_size}x{data.image_size} but "
                f"model.image_size={size}; set model.image_size={data.image_size} or run "
                f"`python -m mudiff prepare --size {size}`")
        return data

    def train_batch(self, batch: dict[str, Any], step: int) -> dict[str, Tensor]:
        """One training iteration on a collated batch of :meth:`dataset` items (moved to the device here)."""
        x0 = batch["target"].to(self.device, non_blocking=True)
        sources = batch["sources"].to(self.device, non_blocking=True).contiguous(memory_format=self.memory_format)
        return self.train_step(x0, sources, step)

    @torch.no_grad()
    def validate(self, generator: nn.Module, val_set: Dataset, indices: Sequence[int], batch_size: int
                 ) -> dict[str, float]:
        """Scores of ``generator`` on the items ``indices`` of ``val_set``, for the log and the live plot.

        The default: brain-mask PSNR (images in [0, 1]) of x^{p1}, x^{p2}, the result, and of copying each source
        (``val_psnr_copy_best``: the best of them, the trivial bar to beat)."""
        scores: dict[str, list[Tensor]] = {}
        for start in range(0, len(indices), batch_size):
            items = [val_set[i] for i in indices[start:start + batch_size]]
            target = torch.stack([it["target"] for it in items]).to(self.device)
            sources = torch.stack([it["sources"] for it in items]).to(self.device)
            mask = torch.stack([it["brain_mask"] for it in items]).to(self.device)
            x1, x2, mutual = self.sample(generator, sources, [it["index"] for it in items])
            candidates = {"x_p1": x1, "mutual": mutual, **({"x_p2": x2} if x2 is not None else {})}
            candidates.update({f"copy_{name}": sources[:, k:k + 1] for k, name in enumerate(val_set.sources)})
            for key, pred in candidates.items():
                scores.setdefault(key, []).append(psnr((pred.float() + 1) / 2, (target + 1) / 2, mask))
        val = {f"val_psnr_{k}": torch.cat(v).mean().item() for k, v in scores.items()}
        val["val_psnr_copy_best"] = max(v for k, v in val.items() if k.startswith("val_psnr_copy_"))
        return val

    def train_step(self, x0: Tensor, sources: Tensor, step: int) -> dict[str, Tensor]:
        """One training iteration on targets x0 (B, 1, H, W) and sources (B, n, H, W) in [-1, 1]; returns
        detached scalar losses for the log."""
        raise NotImplementedError

    @torch.no_grad()
    def sample(self, generator: nn.Module, sources: Tensor, seeds: Sequence[int]
               ) -> tuple[Tensor, Tensor | None, Tensor]:
        """Synthesise with ``generator`` (``self.generator`` or its EMA copy): sources (B, n, H, W) ->
        (x_p1, x_p2 | None, result), each (B, 1, H, W) in [-1, 1], image k seeded by ``seeds[k]`` alone."""
        raise NotImplementedError

