"""Local mutual information (LMI) maps, the conditioning of MIDiffusion (Wang et al., IEEE TMI 2024).

``lmi(src, tgt)`` gives, at every pixel, the largest mutual information between the p x p source patch around
it and p^2 candidate target patches drawn from the target's p x p neighbourhood (``../shared/MIDIFFUSION.md``
section 2.3, a general-size re-implementation of mgh-ccni/midiffusion ``models/conditioner.py::statistical_align``
with ``utils/MutualInformation.py``; no code copied).

MI of two paired sample vectors a, b in [0, 1]^n (n = p^2): grey levels v = 255 a, Gaussian (Parzen) kernels of
std ``2 sigma^2`` grey levels around p^3 bins evenly spread over [0, 255], soft marginals (mean of kernels,
normalised), soft joint histogram (K_a^T K_b, normalised), MI = H(a) + H(b) - H(a, b) in bits, optionally
normalised as 2 MI / (H(a) + H(b)) (in [0, 2]).

Candidates: the published layer tiles every target neighbourhood into a (pH, pW) image and unfolds it again, so
candidate (a, b) of pixel (i, j) takes its element (r, c) from the target at rows g(p i + a - h + r) and columns
g(p j + b - h + c), with g(u) = u // p + u % p - h (h = p // 2) and zero outside the tiled image or the target.
The centre candidate is the plain neighbourhood; the others are sub-blocks of it, mirror-repeated. The map is
the maximum over the p^2 candidates.

Two modes (one per run, recorded in its config):

================  ====================================================  ==========================================
                  ``faithful`` (the published arithmetic)               ``corrected``
================  ====================================================  ==========================================
grey levels       ``trunc(255 x)`` (``.int()``), not clipped            ``255 clip(x, 0, 1)``, not truncated
far outside       kernels underflow to 0 in float32 for |255 x - bin|   impossible: every value lies within half a
[0, 1]            > ~115; a patch of such values gets an all-zero       bin spacing of a bin (kernel >= 0.83)
                  histogram, MI = H(src), normalised 2.0 (the maximum)
arithmetic        float32                                               float32
================  ====================================================  ==========================================

Both are deterministic (no atomics) and run on any device. The work is chunked over image rows so that peak memory
stays near ``chunk_bytes`` whatever the image size; on the CPU the result does not depend on the chunking (tested;
on a GPU, matrix products over batches of other sizes may round differently).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from mudiff.config import LMI_MODES
GREY_LEVELS = 255.0
EPS = 1e-10  # the published regularisers of the normalisations and the logarithm
TINY = 1e-30  # the floor under log2's argument: keeps it off zero and off subnormals (its slow path)
MIB = 2 ** 20


def check_lmi_args(patch: int, sigma: float, mode: str) -> None:
    """Clear errors for a bad patch size, kernel width or mode."""
    if isinstance(patch, bool) or not isinstance(patch, int) or patch < 3 or patch % 2 == 0:
        raise ValueError(f"LMI patch must be an odd integer >= 3 (the published 3 or 5), got {patch!r}")
    if not sigma > 0:
        raise ValueError(f"LMI sigma must be > 0 (the published MIsigma is 2), got {sigma!r}")
    if mode not in LMI_MODES:
        raise ValueError(f"LMI mode must be one of {LMI_MODES}, got {mode!r}")


def candidate_indices(n: int, patch: int) -> Tensor:
    """(n, p, p) long: for position i, candidate offset a and patch row r, the index into the line zero-padded by
    h = p // 2 on both sides (index 0 is padding: an element outside the tiled image or the target)."""
    h = patch // 2
    i = torch.arange(n).view(n, 1, 1)
    a = torch.arange(patch).view(1, patch, 1)
    r = torch.arange(patch).view(1, 1, patch)
    u = patch * i + a + r - h  # row in the tiled (p n)-long line
    g = torch.div(u, patch, rounding_mode="floor") + u % patch - h  # row in the target
    valid = (u >= 0) & (u < patch * n) & (g >= 0) & (g < n)
    return torch.where(valid, g + h, torch.zeros_like(g))


def grey_levels(x: Tensor, mode: str) -> Tensor:
    """Images in [0, 1] -> float32 grey levels as the mode reads them (see the module docstring)."""
    x = x.float()
    if mode == "faithful":
        return (x * GREY_LEVELS).int().float()  # truncation toward zero, out-of-range values kept
    return x.clamp(0.0, 1.0) * GREY_LEVELS


def kernels(grey: Tensor, bins: int, sigma: float) -> Tensor:
    """Parzen kernel values of grey levels at ``bins`` centres over [0, 255]: (...) -> (..., bins) float32; they
    underflow to 0 for values far outside the range, as in the published float32 code."""
    centres = torch.linspace(0.0, GREY_LEVELS, bins, device=grey.device)
    return torch.exp(-0.5 * ((grey.unsqueeze(-1) - centres) / (2.0 * sigma ** 2)) ** 2)


def _entropy(q: Tensor) -> Tensor:
    """Entropy in bits of histograms q (..., bins), unnormalised, as the published code reads them: normalised to
    q / (S + 1e-10), S = sum q. One pass: H = (S log2 Z - q . log2 q) / Z with Z = S + 1e-10 (an all-zero q gives
    0). The published log2(p + 1e-10) differs from log2(p) by at most 1e-10 per entry. The dot product is one
    matrix product (a fused multiply-sum) and log2 never sees 0 (q < TINY contributes 0 either way)."""
    total = q.sum(-1)
    z = total + EPS
    plogp = (q.unsqueeze(-2) @ q.clamp_min(TINY).log2_().unsqueeze(-1))[..., 0, 0]
    return (total * torch.log2(z) - plogp) / z


def patch_mutual_information(ka: Tensor, kb: Tensor, normalized: bool = True) -> Tensor:
    """MI (bits, or normalised) of paired samples given their kernel values: ka (..., n, bins) of the n samples
    of one vector, kb (..., n, m, bins) of the same n samples of m candidate vectors -> (..., m).

    The building block of :func:`lmi`, exposed for a direct per-pixel computation."""
    n, bins = ka.shape[-2:]
    m = kb.shape[-2]
    # one (m bins x n) @ (n x bins) product per patch gives the joint histograms of all m candidates, each
    # flattened (entropy does not depend on the order of a histogram's cells)
    joint = kb.reshape(*kb.shape[:-3], n, m * bins).transpose(-1, -2) @ ka
    joint = joint.view(*joint.shape[:-2], m, bins * bins)
    ha = _entropy(ka.mean(-2)).unsqueeze(-1)
    hb = _entropy(kb.mean(-3))
    mi = ha + hb - _entropy(joint)
    if normalized:
        mi = 2.0 * (mi + EPS) / (ha + hb + EPS)
    return mi


def default_chunk_bytes(device: torch.device) -> int:
    """The working memory :func:`lmi` aims at: 2 MiB on the CPU (the allocator reuses its temporaries; large ones
    are mapped afresh each time, see ``benchmarks/lmi_benchmark.py --chunk-mib``), 256 MiB on an accelerator
    (fewer, larger kernels)."""
    return 2 * MIB if device.type == "cpu" else 256 * MIB


def lmi(src: Tensor, tgt: Tensor, patch: int = 3, sigma: float = 2.0, normalized: bool = True,
        mode: str = "faithful", chunk_bytes: int | None = None) -> Tensor:
    """LMI(src, tgt): src, tgt (B, 1, H, W) images in [0, 1] (tgt may be noisy) -> (B, 1, H, W) float32.

    ``patch`` p (odd), ``sigma`` the published MIsigma (kernel std 2 sigma^2 grey levels), p^3 bins;
    ``normalized``: 2 MI / (H(src) + H(tgt)); ``mode``: faithful or corrected (module docstring); ``chunk_bytes``:
    the working memory to aim at (rows of one image at a time, at least one row; default
    :func:`default_chunk_bytes`)."""
    check_lmi_args(patch, sigma, mode)
    if src.dim() != 4 or src.shape[1] != 1 or src.shape != tgt.shape:
        raise ValueError(f"LMI needs src and tgt of one shape (B, 1, H, W), got {tuple(src.shape)} and "
                         f"{tuple(tgt.shape)}")
    batch, _, height, width = src.shape
    h, n, bins = patch // 2, patch * patch, patch ** 3
    # (position, candidate offset, patch row) -> (position, patch row, candidate offset): samples before candidates
    rows = candidate_indices(height, patch).transpose(1, 2).to(src.device)
    cols = candidate_indices(width, patch).transpose(1, 2).to(src.device)
    # float32 values alive per pixel: candidate kernels, joint histograms and their logarithms
    per_pixel = 4 * (n * n * bins + 2 * n * bins * bins)
    chunk_bytes = default_chunk_bytes(src.device) if chunk_bytes is None else chunk_bytes
    step = max(1, chunk_bytes // (per_pixel * width))
    src_cols = cols[:, :, h].view(1, width, 1, patch)
    cand_cols = cols.view(1, width, 1, patch, 1, patch)
    out = torch.empty(batch, height, width, device=src.device)
    grey_src, grey_tgt = (F.pad(grey_levels(x, mode), (h, h, h, h))[:, 0] for x in (src, tgt))
    for k in range(batch):
        # kernel values of every pixel of image k once (zero padding is grey level 0): (H + 2h, W + 2h, bins)
        k_src, k_tgt = kernels(grey_src[k], bins, sigma), kernels(grey_tgt[k], bins, sigma)
        for i0 in range(0, height, step):
            r = rows[i0:i0 + step]
            ka = k_src[r[:, :, h].view(-1, 1, patch, 1), src_cols].reshape(-1, width, n, bins)
            kb = k_tgt[r.view(-1, 1, patch, 1, patch, 1), cand_cols]  # (rows, W, r, c, a, b, bins)
            kb = kb.reshape(-1, width, n, n, bins)  # (rows, W, sample rc, candidate ab, bins)
            out[k, i0:i0 + step] = patch_mutual_information(ka, kb, normalized).amax(-1)
    return out.unsqueeze(1)


__all__ = ["LMI_MODES", "lmi", "default_chunk_bytes", "patch_mutual_information", "candidate_indices", "grey_levels",
           "check_lmi_args"]
