"""Seeded k-space motion artefacts for 2D slices (the paper's robustness test corrupts a source contrast).

A Cartesian acquisition fills k-space one phase-encode line at a time, in order from -k_max to +k_max. When the
head moves, the lines acquired afterwards come from the moved head: the inconsistency between lines gives
ghosts and blurring along the phase-encode axis only (the read-out direction of each line is instantaneous).

We simulate this directly rather than with torchio: torchio's ``RandomMotion`` splits k-space along the last
array axis, which is singleton for a slice laid out as (1, 1, H, W), so it does nothing useful in 2D.
"""
from __future__ import annotations

from typing import Sequence

import numpy as np
from scipy.ndimage import rotate


def motion_corrupt(image: np.ndarray, severity: float, seed: int, phase_axis: int = 0, n_events: int = 3,
                   max_rotation: float = 5.0, max_translation: float = 5.0) -> np.ndarray:
    """A slice with simulated rigid in-plane motion during its acquisition.

    image: (H, W) in [0, 1]. ``n_events`` motion events happen at random phase-encode lines (along
    ``phase_axis``); after each, the head holds a new pose: rotation up to ``max_rotation`` degrees and
    translation up to ``max_translation`` pixels per axis, both scaled by ``severity`` in [0, 1] (0: no motion).
    Lines acquired in a pose come from the image in that pose (rotation by resampling, translation by the
    Fourier shift theorem: a phase ramp). Returns the magnitude image (H, W), clipped to [0, 1], in the input's
    float dtype. The same seed gives the same events and directions at every severity, so severities of one
    seed are comparable (the error grows with severity on average; one seed's ghosts can partly cancel).
    """
    if not 0 <= severity <= 1:
        raise ValueError(f"severity must lie in [0, 1], got {severity}")
    if phase_axis not in (0, 1):
        raise ValueError(f"phase_axis must be 0 (rows) or 1 (columns), got {phase_axis}")
    image = np.asarray(image)
    x = image.astype(np.float64)
    if x.ndim != 2:
        raise ValueError(f"image must be (H, W), got shape {x.shape}")
    if phase_axis == 1:  # work with phase-encode lines as rows
        return motion_corrupt(image.T, severity, seed, 0, n_events, max_rotation, max_translation).T
    h, w = x.shape
    if not 1 <= n_events < h:
        raise ValueError(f"n_events must lie in [1, {h - 1}] for {h} phase-encode lines, got {n_events}")
    rng = np.random.default_rng(seed)
    starts = np.sort(rng.choice(np.arange(1, h), n_events, replace=False))  # line where each new pose begins
    poses = rng.uniform(-1, 1, (n_events, 3)) * severity * [max_rotation, max_translation, max_translation]
    ky = np.fft.fftshift(np.fft.fftfreq(h))[:, None]
    kx = np.fft.fftshift(np.fft.fftfreq(w))[None, :]
    kspace = np.fft.fftshift(np.fft.fft2(x))  # row i is the i-th line acquired
    for start, stop, (angle, dy, dx) in zip(starts, [*starts[1:], h], poses):
        moved = rotate(x, angle, reshape=False, order=1) if angle else x
        k_moved = np.fft.fftshift(np.fft.fft2(moved)) * np.exp(-2j * np.pi * (ky * dy + kx * dx))
        kspace[start:stop] = k_moved[start:stop]
    out = np.abs(np.fft.ifft2(np.fft.ifftshift(kspace))).clip(0, 1)
    return out.astype(image.dtype) if np.issubdtype(image.dtype, np.floating) else out


def motion_corrupt_batch(images: np.ndarray, severity: float, seeds: int | Sequence[int], **kwargs) -> np.ndarray:
    """``motion_corrupt`` over (N, H, W) slices with one seed per slice.

    seeds: N seeds, or an int s meaning seeds s, s + 1, ..., so slice i's artefact does not depend on the batch
    it is in. Other keyword arguments go to ``motion_corrupt``.
    """
    images = np.asarray(images)
    seeds = [seeds + i for i in range(len(images))] if isinstance(seeds, (int, np.integer)) else list(seeds)
    if len(seeds) != len(images):
        raise ValueError(f"{len(seeds)} seeds for {len(images)} slices")
    return np.stack([motion_corrupt(img, severity, int(s), **kwargs) for img, s in zip(images, seeds)])
