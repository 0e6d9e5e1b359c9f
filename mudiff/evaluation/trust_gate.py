"""The trust gate (issue 11): per-sample quality control of generated images, a working version of DF_MRI's
"trustworthiness control" (which exists there only as a figure of per-sample FID/IS control charts).

Each generated image of a requested class gets per-sample scores:

- ``mahalanobis``: distance of its features (the real-data classifier's,
  :func:`~mudiff.evaluation.class_eval.classifier_features`) to the real training images of the class (mean and
  Ledoit-Wolf shrunk covariance);
- ``confidence``: the real-data classifier's probability of the requested class;
- basic checks: finite, not constant, a brain-like foreground share (within the range seen on real images of the
  class, widened by ``foreground_margin``), and not a near-duplicate of an image accepted before (mode collapse).

Control limits come from the same scores on held-out **real** images of the class (the calibration split), by
one of three rules (``quantile`` = 1 - alpha, 0.95):

- ``rule="quantile"`` (default): the upper (1 - alpha / 2) quantile of the distance and the lower alpha / 2
  quantile of the confidence, so that a real held-out image passes both at about the nominal rate 1 - alpha.
  One-sided: an image that looks *more* typical than real ones is not rejected, which a gate on quality should not do.
- ``rule="mean_sd"``: DF_MRI's control chart (Fig. 5, "95 % confidence interval"), mean +- z sd of the held-out
  scores with z = Phi^-1(1 - alpha / 2) (1.96), two-sided on both scores: a distance below the band or a
  confidence above it is rejected too. (The source has no code for its chart; this is the spec's reading of it.)
- ``rule="mean_sd_one_sided"``: the same mean +- z sd limits on the side that marks a poor image only (the upper
  distance limit, the lower confidence limit), as the spec asks one- or two-sided rejection to be a choice.

Rejected images are logged with their reason; :meth:`TrustGate.generate` generates until N images are accepted
or the try budget ends (then :class:`GateBudgetError` with the acceptance rate).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Sequence

import numpy as np
import pandas as pd
import torch
from scipy.stats import norm
from sklearn.covariance import LedoitWolf

from mudiff.data.labelled import LabelledSlices
from mudiff.evaluation.class_eval import SliceClassifier, classifier_features, predict_proba, to_unit

FOREGROUND_LEVEL = 0.05  # of the [0, 1] range: pixels above it (in any channel) count as foreground
MIN_STD = 1e-3  # images whose pixel standard deviation (in [0, 1] units) is below this are "constant"
RULES = ("quantile", "mean_sd", "mean_sd_one_sided")  # how the control limits come from the held-out real scores


class GateBudgetError(RuntimeError):
    """The try budget ended before N images were accepted; ``log`` holds every scored image."""

    def __init__(self, message: str, log: pd.DataFrame):
        super().__init__(message)
        self.log = log


@dataclass
class ClassLimits:
    """Reference statistics and control limits of one class."""

    mean: np.ndarray  # (F,) feature mean of the real training images
    precision: np.ndarray  # (F, F) inverse of the shrunk covariance
    mahalanobis_range: tuple[float, float]  # lower and upper control limits (quantile rule: lower 0)
    confidence_range: tuple[float, float]  # (quantile rule: upper 1)
    foreground: tuple[float, float]  # accepted range of the foreground share
    calibration_mahalanobis: np.ndarray  # the held-out real scores the limits come from
    calibration_confidence: np.ndarray


@dataclass
class GateResult:
    """``accepted``: the N accepted images (N, C, H, W) in [-1, 1]; ``seeds``: theirs; ``log``: every scored image
    (columns try, seed, class, scores, accepted, reason)."""

    accepted: np.ndarray
    seeds: list[int]
    log: pd.DataFrame

    @property
    def acceptance_rate(self) -> float:
        return float(self.log["accepted"].mean())


def _foreground(unit: np.ndarray) -> np.ndarray:
    """(N, C, H, W) in [0, 1] -> (N,) share of pixels above FOREGROUND_LEVEL in any channel."""
    return (unit.max(1) > FOREGROUND_LEVEL).mean((1, 2))


def _band(score: str, value: float, band: tuple[float, float], digits: int) -> tuple[str, bool]:
    """(rejection reason, whether ``value`` lies outside the closed ``band``)."""
    low, high = band
    return f"{score} {value:.{digits}f} outside [{low:.{digits}f}, {high:.{digits}f}]", not low <= value <= high


class TrustGate:
    """Per-sample quality control against a real class distribution (see the module docstring).

    Args:
        classifier: trained on real training slices (:func:`~mudiff.evaluation.class_eval.train_classifier`).
        reference: the real training slices (the class distributions).
        calibration: held-out real slices (not the test split the final metrics use) for the control limits.
        quantile: nominal pass rate of held-out real images (1 - alpha).
        rule: ``quantile`` (one-sided empirical limits), ``mean_sd`` (DF_MRI's two-sided mean +- z sd) or
            ``mean_sd_one_sided`` (mean +- z sd on the poor side only).
        foreground_margin: the foreground share may lie this far (absolute) outside the real range.
        duplicate_distance: RMS distance (in [0, 1] units) below which an image duplicates an accepted one;
            None: half the smallest distance between two calibration images of a class.
    """

    def __init__(self, classifier: SliceClassifier, reference: LabelledSlices, calibration: LabelledSlices,
                 quantile: float = 0.95, foreground_margin: float = 0.05, duplicate_distance: float | None = None,
                 rule: str = "quantile"):
        if not 0.5 < quantile < 1:
            raise ValueError(f"quantile must be in (0.5, 1), got {quantile}")
        if rule not in RULES:
            raise ValueError(f"rule must be one of {RULES}, got {rule!r}")
        if reference.classes != calibration.classes:
            raise ValueError(f"reference classes {reference.classes} differ from calibration {calibration.classes}")
        self.classifier, self.classes, self.quantile, self.rule = classifier, reference.classes, quantile, rule
        alpha = 1 - quantile
        ref_features = classifier_features(classifier, reference.images)
        cal_features = classifier_features(classifier, calibration.images)
        cal_confidence = predict_proba(classifier, calibration.images)
        ref_foreground = _foreground(to_unit(reference.images))
        self.limits: dict[str, ClassLimits] = {}
        closest = []
        for k, cls in enumerate(self.classes):
            ref, cal = reference.labels == k, calibration.labels == k
            if ref.sum() < 2 or cal.sum() < 2:
                raise ValueError(f"class {cls!r} needs at least 2 reference and 2 calibration images, got "
                                 f"{int(ref.sum())} and {int(cal.sum())}")
            shrunk = LedoitWolf().fit(ref_features[ref])
            mean, precision = shrunk.location_, shrunk.precision_
            cal_maha = self._mahalanobis(cal_features[cal], mean, precision)
            cal_conf = cal_confidence[cal, k]
            fg = ref_foreground[ref]
            if rule == "quantile":
                maha_range = (0.0, float(np.quantile(cal_maha, 1 - alpha / 2)))
                conf_range = (float(np.quantile(cal_conf, alpha / 2)), 1.0)
            else:
                z = float(norm.ppf(1 - alpha / 2))
                maha_range, conf_range = ((float(v.mean() - z * v.std(ddof=1)), float(v.mean() + z * v.std(ddof=1)))
                                          for v in (cal_maha, cal_conf))
                if rule == "mean_sd_one_sided":  # no lower distance limit, no upper confidence limit
                    maha_range, conf_range = (0.0, maha_range[1]), (conf_range[0], 1.0)
            self.limits[cls] = ClassLimits(mean, precision, maha_range, conf_range,
                                           (float(fg.min() - foreground_margin), float(fg.max() + foreground_margin)),
                                           cal_maha, cal_conf)
            flat = torch.from_numpy(to_unit(calibration.images[cal])).flatten(1)
            dist = torch.cdist(flat, flat) / np.sqrt(flat.shape[1])
            closest.append(float(dist[~torch.eye(len(flat), dtype=torch.bool)].min()))
        self.duplicate_distance = 0.5 * min(closest) if duplicate_distance is None else duplicate_distance

    @staticmethod
    def _mahalanobis(features: np.ndarray, mean: np.ndarray, precision: np.ndarray) -> np.ndarray:
        d = features - mean
        return np.sqrt(np.maximum(np.einsum("nf,fg,ng->n", d, precision, d), 0))

    def score(self, images: np.ndarray, labels: Sequence[int], accepted_before: np.ndarray | None = None
              ) -> pd.DataFrame:
        """Scores and the verdict of each image (N, C, H, W) in [-1, 1] for its requested class ``labels`` (N,):
        columns class, finite, std, foreground, mahalanobis, confidence, duplicate, accepted, reason. An image
        duplicates one of ``accepted_before`` (M, C, H, W) or an earlier accepted image of this call."""
        images = np.asarray(images, np.float32)
        labels = np.asarray(labels, np.int64)
        if images.ndim != 4 or len(images) != len(labels):
            raise ValueError(f"need images (N, C, H, W) and N labels, got {images.shape} and {labels.shape}")
        finite = np.isfinite(images).all((1, 2, 3))
        safe = np.where(np.isfinite(images), images, 0).clip(-1, 1)  # scored only to report; verdict below
        unit = to_unit(safe)
        std = unit.std((1, 2, 3))
        foreground = _foreground(unit)
        features = classifier_features(self.classifier, safe)
        confidence = predict_proba(self.classifier, safe)[np.arange(len(labels)), labels]
        out_of_range = ~((images >= -1 - 1e-6) & (images <= 1 + 1e-6)).all((1, 2, 3)) & finite
        rows, kept = [], [] if accepted_before is None else list(to_unit(accepted_before).reshape(
            len(accepted_before), -1))
        for i, k in enumerate(labels):
            lim = self.limits[self.classes[k]]
            maha = float(self._mahalanobis(features[i:i + 1], lim.mean, lim.precision)[0])
            flat = unit[i].reshape(-1)
            duplicate = bool(kept) and float(np.min(np.sqrt(((np.stack(kept) - flat) ** 2).mean(1)))) \
                < self.duplicate_distance
            reasons = [r for r, bad in (
                ("non-finite values", not finite[i]),
                ("outside [-1, 1]", out_of_range[i]),
                ("constant image", std[i] < MIN_STD),
                _band("foreground", foreground[i], lim.foreground, 2),
                _band("mahalanobis", maha, lim.mahalanobis_range, 1),
                _band("confidence", confidence[i], lim.confidence_range, 2),
                ("near-duplicate of an accepted image (mode collapse)", duplicate)) if bad]
            if not reasons:
                kept.append(flat)
            rows.append({"class": self.classes[k], "finite": bool(finite[i]), "std": float(std[i]),
                         "foreground": float(foreground[i]), "mahalanobis": maha, "confidence": float(confidence[i]),
                         "duplicate": duplicate, "accepted": not reasons, "reason": "; ".join(reasons)})
        return pd.DataFrame(rows)

    def generate(self, generate_fn: Callable[[np.ndarray, list[int]], np.ndarray], class_name: str, n: int,
                 batch_size: int = 16, max_tries: int | None = None, seed: int = 0) -> GateResult:
        """Generate images of ``class_name`` with ``generate_fn(labels (B,), seeds) -> (B, C, H, W) in [-1, 1]``
        until ``n`` are accepted (seeds ``seed``, ``seed + 1``, ...); at most ``max_tries`` images (default
        4 n). Raises GateBudgetError (with the acceptance rate and the log) when the budget ends first."""
        if class_name not in self.classes:
            raise ValueError(f"unknown class {class_name!r}; classes: {self.classes}")
        budget = 4 * n if max_tries is None else max_tries
        label = self.classes.index(class_name)
        accepted: list[np.ndarray] = []
        seeds: list[int] = []
        logs: list[pd.DataFrame] = []
        tried = 0
        while len(accepted) < n and tried < budget:
            batch_seeds = list(range(seed + tried, seed + tried + min(batch_size, budget - tried)))
            images = np.asarray(generate_fn(np.full(len(batch_seeds), label), batch_seeds), np.float32)
            log = self.score(images, np.full(len(batch_seeds), label),
                             np.stack(accepted) if accepted else None)
            log.insert(0, "seed", batch_seeds)
            log.insert(0, "try", np.arange(tried, tried + len(batch_seeds)))
            logs.append(log)
            for ok, image, s in zip(log["accepted"], images, batch_seeds):
                if ok and len(accepted) < n:
                    accepted.append(image)
                    seeds.append(s)
            tried += len(batch_seeds)
        log = pd.concat(logs, ignore_index=True) if logs else pd.DataFrame()
        if len(accepted) < n:
            rate = float(log["accepted"].mean()) if len(log) else 0.0
            common = log.loc[~log["accepted"], "reason"].str.split("; ").explode().str.split(" ").str[0]
            raise GateBudgetError(
                f"trust gate: only {len(accepted)} of {n} {class_name} images accepted in {tried} tries (acceptance "
                f"rate {rate:.1%}); most common rejections: {common.value_counts().head(3).to_dict()}. Train longer, "
                "raise max_tries or check the generator.", log)
        return GateResult(np.stack(accepted), seeds, log)


def plot_control_chart(log: pd.DataFrame, gate: TrustGate, class_name: str, out=None):
    """DF_MRI's Fig. 5 done with working limits: per generated sample (in try order) its Mahalanobis distance and
    classifier confidence, the control limits from held-out real images (one per side the rule has), rejected
    samples marked."""
    import matplotlib.pyplot as plt

    from mudiff.display.viz import save_figure

    rows = log[log["class"] == class_name].reset_index(drop=True)
    lim = gate.limits[class_name]
    fig, axes = plt.subplots(1, 2, figsize=(10, 3.2))
    sides = {"mahalanobis": (1,), "confidence": (0,)} if gate.rule == "quantile" else dict.fromkeys(
        ("mahalanobis", "confidence"), (0, 1))  # which limits the rule has: 0 lower, 1 upper
    for ax, score, limits in ((axes[0], "mahalanobis", lim.mahalanobis_range),
                              (axes[1], "confidence", lim.confidence_range)):
        ok = rows["accepted"]
        ax.plot(rows.index, rows[score], color="0.7", lw=0.8, zorder=1)
        ax.scatter(rows.index[ok], rows.loc[ok, score], s=14, color="tab:blue", label="accepted", zorder=2)
        ax.scatter(rows.index[~ok], rows.loc[~ok, score], s=22, marker="x", color="tab:red", label="rejected",
                   zorder=3)
        for side in sides[score]:
            ax.axhline(limits[side], ls=":", color="k",
                       label=f"{('lower', 'upper')[side]} limit (held-out real, {gate.rule}, {gate.quantile:.0%})")
        real = lim.calibration_mahalanobis if score == "mahalanobis" else lim.calibration_confidence
        ax.axhline(float(np.mean(real)), ls="--", color="0.4", lw=0.8, label="held-out real mean")
        ax.set(xlabel="sample number", ylabel=score, title=f"{class_name}: {score} control chart")
    axes[0].legend(fontsize=7, loc="upper right")
    fig.tight_layout()
    return save_figure(fig, out, rows)


__all__ = ["TrustGate", "GateResult", "GateBudgetError", "ClassLimits", "RULES", "plot_control_chart"]
