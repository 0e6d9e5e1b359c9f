"""The interface every synthesis method offers the :class:`~mudiff.train.Trainer` and the sampler.

A method owns its networks and optimisers, knows one training iteration and how to sample. The trainer owns
everything around it (data, epochs, learning-rate schedule, EMA, checkpoints, statistics, validation), so
MU-Diff, its ablations and the baselines are trained, logged and evaluated by the same loop on the same data.
"""
from __future__ import annotations

from typing import Callable, Sequence

import torch
from torch import Tensor, nn

from mudiff.config import RunConfig

Wrap = Callable[[nn.Module], nn.Module]


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
        """Adam with the configured betas, over the parameters that require gradients."""
        return torch.optim.Adam([p for p in params if p.requires_grad], lr=lr, betas=self.cfg.train.adam_betas)

    def setup(self, device: torch.device, amp_dtype: torch.dtype | None, memory_format: torch.memory_format,
              wrap: Wrap) -> "Method":
        """Move to ``device`` and wrap the networks used in training forward passes (DDP, compile)."""
        self.device, self.amp_dtype, self.memory_format = device, amp_dtype, memory_format
        self.to(device, memory_format=memory_format)
        return self

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

