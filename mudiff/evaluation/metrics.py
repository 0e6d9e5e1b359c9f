"""Image quality metrics: PSNR, SSIM and MAE on the whole brain (B) and on the lesion (T).

Two protocols (``describe_protocol`` gives the one-line statement every table and figure prints):

- ``"float"`` (default): intensities as given (the slice pipeline already maps the ground truth to [0, 1]),
  data range 1. PSNR and MAE over the mask's pixels; SSIM from scikit-image's ``structural_similarity``
  (7x7 uniform window, ``data_range=1``, ``full=True``) computed on the mask's bounding box grown by the
  window's half-width (so every mask pixel's window sees real image content, not the crop edge) and
  averaged over the mask pixels whose window lies inside the image (scikit-image's own mean drops the same
  border band, so a mask covering the whole image gives exactly scikit-image's SSIM). A perfect prediction
  has PSNR capped at 100 dB (MSE floored at 1e-10 of the squared data range, as the training loop's ``psnr``),
  never ``inf``, in both protocols.
- ``"paper"``: the published MU-Diff code's protocol, offered only to compare with published figures:
  prediction and ground truth min-max normalised per image *separately*, converted to 8 bits, cropped to the
  mask's bounding box, all crop pixels scored (background inside the crop included), PSNR/SSIM with the data
  range of the ground-truth crop, MAE on the [0, 1] scale of the 8-bit images. The published code also
  stores JPEGs; the JPEG compression is not reproduced (this follows the protocol as the spec describes it).
  Its numbers are NOT comparable with the float protocol.

Slices whose mask is empty give NaN for that region (lesion metrics exist only on lesion slices); they are
left out of the aggregates, which report how many slices/subjects each mean is over.

The torch ``psnr`` below is the cheap batched version the training loop uses for validation.
"""
from __future__ import annotations

from typing import Sequence

import numpy as np
import pandas as pd
import torch
from skimage.metrics import structural_similarity
from torch import Tensor

PROTOCOLS = ("float", "paper")
REGIONS = ("B", "T")
METRICS = ("psnr", "ssim", "mae")
HIGHER_IS_BETTER = {"psnr": True, "ssim": True, "mae": False}
MSE_FLOOR = 1e-10  # relative to data_range**2: PSNR cap 10 * log10(1 / 1e-10) = 100 dB
SSIM_WIN = 7  # scikit-image's default window


def psnr(pred: Tensor, target: Tensor, mask: Tensor | None = None, data_range: float = 1.0) -> Tensor:
    """Peak signal-to-noise ratio per image, over the pixels where ``mask`` is 1 (all pixels without a mask).

    Shapes: pred, target, mask: (B, 1, H, W); result (B,).
    """
    err = (pred.float() - target.float()) ** 2
    if mask is None:
        mse = err.flatten(1).mean(1)
    else:
        m = mask.float()
        mse = (err * m).flatten(1).sum(1) / m.flatten(1).sum(1).clamp(min=1.0)
    return 10.0 * torch.log10(data_range**2 / mse.clamp(min=MSE_FLOOR))


def describe_protocol(protocol: str) -> str:
    """One line stating how the numbers of a table or figure were computed."""
    _check_protocol(protocol)
    if protocol == "float":
        return ("metrics: float protocol (intensities as given in [0, 1], data range 1; PSNR/MAE over mask pixels, "
                "SSIM 7x7 map averaged over mask pixels; PSNR capped at 100 dB; empty masks excluded)")
    return ("metrics: paper protocol (published MU-Diff code: per-image min-max, 8-bit, mask bounding-box crop, "
            "data range of the crop; NOT comparable with the float protocol)")


def slice_metrics(pred: np.ndarray, target: np.ndarray, brain_mask: np.ndarray, lesion_mask: np.ndarray | None,
                  protocol: str = "float", subjects: Sequence | None = None) -> pd.DataFrame:
    """PSNR, SSIM and MAE per slice on the brain (B) and on the lesion (T).

    pred, target: (N, H, W) or (H, W) in [0, 1]; brain_mask, lesion_mask: same shape, {0, 1} (``lesion_mask``
    None: no lesion labels, T columns are NaN). ``subjects``: N subject ids (needed to aggregate by subject).
    Returns one row per slice: subject, slice (index within its subject), psnr_B, ssim_B, mae_B, psnr_T,
    ssim_T, mae_T; ``attrs["protocol"]`` names the protocol.
    """
    _check_protocol(protocol)
    pred, target, brain = (np.asarray(a, np.float64) for a in (pred, target, brain_mask))
    lesion = np.zeros_like(brain) if lesion_mask is None else np.asarray(lesion_mask, np.float64)
    if pred.ndim == 2:
        pred, target, brain, lesion = pred[None], target[None], brain[None], lesion[None]
    if pred.ndim != 3 or any(a.shape != pred.shape for a in (target, brain, lesion)):
        raise ValueError(f"pred, target and masks must share one (N, H, W) or (H, W) shape, got "
                         f"{[np.shape(a) for a in (pred, target, brain_mask, lesion_mask)]}")
    for name, a in (("pred", pred), ("target", target)):
        if a.min() < -1e-6 or a.max() > 1 + 1e-6:
            raise ValueError(f"{name} must lie in [0, 1] (got [{a.min():.3g}, {a.max():.3g}]); map network "
                             "outputs from [-1, 1] with (x + 1) / 2")
    n = len(pred)
    if subjects is None:
        subjects = [None] * n
    elif len(subjects) != n:
        raise ValueError(f"{len(subjects)} subject ids for {n} slices")
    score = _float_scores if protocol == "float" else _paper_scores
    rows = []
    for i in range(n):
        row = {"subject": subjects[i]}
        for region, mask in (("B", brain[i] > 0.5), ("T", lesion[i] > 0.5)):
            values = score(pred[i], target[i], mask) if mask.any() else (np.nan,) * 3
            row.update({f"{m}_{region}": v for m, v in zip(METRICS, values)})
        rows.append(row)
    df = pd.DataFrame(rows)
    df.insert(1, "slice", df.groupby("subject", dropna=False, sort=False).cumcount())
    df.attrs["protocol"] = protocol
    return df


def aggregate(df: pd.DataFrame, by: str = "subject") -> pd.DataFrame:
    """Mean +- sd (ddof 1) of every metric of a ``slice_metrics`` frame.

    ``by="subject"``: per-subject means first (over that subject's slices with a value), then mean +- sd over
    subjects; ``by="slice"``: over slices. Columns: mean, sd, n (units with a value), n_excluded (units without,
    e.g. subjects with no lesion slice), one row per metric (psnr_B ... mae_T).
    """
    units = unit_scores(df, by)
    out = pd.DataFrame({"mean": units.mean(), "sd": units.std(ddof=1), "n": units.notna().sum(),
                        "n_excluded": units.isna().sum()})
    out.attrs.update(protocol=df.attrs.get("protocol"), by=by)
    return out


def unit_scores(df: pd.DataFrame, by: str) -> pd.DataFrame:
    """The metric columns per unit: per-subject means (indexed by subject) or per slice (by subject and the
    slice's axial position ``z`` when the frame has it, so that frames of different slices do not pair up; else by
    its running number within the subject)."""
    cols = [f"{m}_{r}" for r in REGIONS for m in METRICS]
    if by == "slice":
        return df.set_index(["subject", "z" if "z" in df else "slice"])[cols]
    if by != "subject":
        raise ValueError(f"by must be 'subject' or 'slice', got {by!r}")
    if df["subject"].isna().any():
        raise ValueError("no subject ids: pass subjects= to slice_metrics, or aggregate with by='slice'")
    return df.groupby("subject", sort=True)[cols].mean()


def _check_protocol(protocol: str) -> None:
    if protocol not in PROTOCOLS:
        raise ValueError(f"protocol must be one of {PROTOCOLS}, got {protocol!r}")


def _bbox(mask: np.ndarray, margin: int = 0, min_size: int = 1) -> tuple[slice, slice]:
    """Bounding box of ``mask`` (H, W) grown by ``margin`` and to at least ``min_size`` per side, inside the image."""
    box = []
    for axis, size in enumerate(mask.shape):
        idx = np.flatnonzero(mask.any(axis=1 - axis))
        lo, hi = idx[0] - margin, idx[-1] + 1 + margin
        grow = max(0, min_size - (hi - lo))
        lo, hi = lo - grow // 2, hi + grow - grow // 2
        # shift (not clip) a box that leaves the image, so that it keeps min_size where the image allows
        lo, hi = max(lo - max(hi - size, 0), 0), min(hi + max(-lo, 0), size)
        box.append(slice(int(lo), int(hi)))
    return tuple(box)


def _float_scores(pred: np.ndarray, target: np.ndarray, mask: np.ndarray) -> tuple[float, float, float]:
    """(PSNR, SSIM, MAE) over the pixels of a non-empty ``mask`` (H, W), data range 1."""
    err = pred[mask] - target[mask]
    psnr_value = 10 * np.log10(1.0 / max(np.mean(err**2), MSE_FLOOR))
    half = SSIM_WIN // 2
    box = _bbox(mask, margin=half, min_size=SSIM_WIN)
    _, ssim_map = structural_similarity(target[box], pred[box], data_range=1.0, full=True)
    # Pixels closer than the window's half-width to the image border have windows that leave the image:
    # excluded, as scikit-image's own mean does.
    inner = np.zeros(mask.shape, bool)
    inner[half:-half, half:-half] = True
    valid = (mask & inner)[box]
    ssim_value = ssim_map[valid].mean() if valid.any() else np.nan
    return float(psnr_value), float(ssim_value), float(np.abs(err).mean())


def _to_uint8(image: np.ndarray) -> np.ndarray:
    """Per-image min-max to [0, 255] and rounding to 8 bits, as the published code writes its images."""
    lo, hi = image.min(), image.max()
    scaled = (image - lo) / (hi - lo) if hi > lo else np.zeros_like(image)
    return np.round(scaled * 255).astype(np.uint8)


def _paper_scores(pred: np.ndarray, target: np.ndarray, mask: np.ndarray) -> tuple[float, float, float]:
    """(PSNR, SSIM, MAE) with the published code's protocol on the bounding box of ``mask`` (H, W)."""
    box = _bbox(mask, min_size=SSIM_WIN)
    p, t = (_to_uint8(a)[box].astype(np.float64) for a in (pred, target))
    data_range = max(t.max() - t.min(), 1.0)
    psnr_value = 10 * np.log10(1.0 / max(np.mean((p - t) ** 2) / data_range**2, MSE_FLOOR))
    ssim_value = structural_similarity(t, p, data_range=data_range)
    return float(psnr_value), float(ssim_value), float(np.abs(p - t).mean() / 255)
