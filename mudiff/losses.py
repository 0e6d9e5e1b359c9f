"""MU-Diff's losses (spec section 4) as plain functions of logits and images.

Shapes: logits (B,), mask logits (B, 1, h, w), images (B, 1, H, W), masks M (B, 1, H, W) in [0, 1].
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor


def critic_adversarial_loss(real_logits: Tensor, fake_logits: list[Tensor]) -> Tensor:
    """Non-saturating logistic critic loss: softplus(-psi(real)) + sum_j softplus(psi(fake_j))."""
    return F.softplus(-real_logits).mean() + sum(F.softplus(f).mean() for f in fake_logits)


def generator_adversarial_loss(fake_logits: list[Tensor]) -> Tensor:
    """L_c = sum_j softplus(-psi(x_t^{pj}))."""
    return sum(F.softplus(-f).mean() for f in fake_logits)


def r1_penalty(real_logits: Tensor, real_input: Tensor) -> Tensor:
    """||grad_{x_t} psi(x_t)||^2 per image, averaged; ``real_input`` must require grad."""
    (grad,) = torch.autograd.grad(real_logits.sum(), real_input, create_graph=True)
    return grad.float().pow(2).flatten(1).sum(1).mean()


def mask_head_loss(real_mask_logits: Tensor, fake_mask_logits: list[Tensor]) -> Tensor:
    """Per-location real/fake classification for the learned mask head: 0 = plausible (real), 1 = fake.

    Trained this way, M = sigmoid(head) marks where the critic finds a prediction implausible.
    """
    real = F.binary_cross_entropy_with_logits(real_mask_logits, torch.zeros_like(real_mask_logits))
    return real + sum(F.binary_cross_entropy_with_logits(m, torch.ones_like(m)) for m in fake_mask_logits)


def reconstruction_loss(x0: Tensor, predictions: list[Tensor]) -> Tensor:
    """L_s = sum_j mean |x0 - x^{pj}|."""
    return sum((p.float() - x0).abs().mean() for p in predictions)


def mutual_mask_loss(xt_p1: Tensor, xt_p2: Tensor, mask1: Tensor, mask2: Tensor) -> Tensor:
    """Feature-attentive mask loss L_m.

    L_m = mean(M2 * BCE(x_t^{p1}, sigmoid(x_t^{p2}))) + mean(M1 * BCE(x_t^{p2}, sigmoid(x_t^{p1}))).
    Each network's disagreement with the other is weighted by the other's mask. The targets and the masks are
    detached, as in deep mutual learning: each network learns from the other, and neither can lower its loss
    by moving the other's prediction or the critic's mask.
    """
    xt_p1, xt_p2 = xt_p1.float(), xt_p2.float()
    bce = F.binary_cross_entropy_with_logits
    return ((mask2.detach() * bce(xt_p1, torch.sigmoid(xt_p2.detach()), reduction="none")).mean()
            + (mask1.detach() * bce(xt_p2, torch.sigmoid(xt_p1.detach()), reduction="none")).mean())
