"""Evaluation of class-conditioned generation (issue 11), built to mean something where DF_MRI's did not.

- Every generated set is compared with a **held-out real** set (the test split) **of the same class and the same
  n**, per class and pooled: FID and KID with the standard Inception features (:mod:`mudiff.evaluation.fid`, offline)
  and the domain feature distance (an autoencoder trained on the real training split only). Inputs are asserted to lie
  in the model range [-1, 1] before they are mapped to the extractor's [0, 1] (:func:`to_unit`).
- No Inception Score: the offline FID network ships without its ImageNet classifier head, so there are no class
  logits to score (and an ImageNet score says little about MRI anyway).
- **Class fidelity**: the accuracy, on generated images of each class, of a classifier trained on real training
  slices (:func:`train_classifier`); conditioning works only if this is high. A judge of another model family: a
  linear probe on the Inception features (:class:`FeatureProbe`).
- **TSTR** (train on synthetic, test on real): a classifier trained on generated images (and on real + generated)
  tested on the real test split, the number that says whether the generated data are useful.
- **Memorisation**: each generated image's nearest training image (RMS pixel distance), the closest pairs shown.

Numbers on the phantom are a controlled benchmark with known truth, not evidence about real patients.
"""
from __future__ import annotations

from pathlib import Path
from typing import Callable, Mapping, Sequence

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F
from torch import Tensor, nn
from tqdm.auto import tqdm

from mudiff.checkpoint import checkpoint_config, load_checkpoint
from mudiff.data.labelled import LabelledSlices
from mudiff.methods import build_method, no_wrap
from mudiff.methods.labelled import LabelledMethod
from mudiff.runtime import memory_format, resolve_device

SEED_STRIDE = 1_000_003  # image k of a generated set with seed s has the seed s * SEED_STRIDE + k


# ---- ranges ----------------------------------------------------------------------------------------------------------
def to_unit(images: np.ndarray | Tensor, name: str = "images") -> np.ndarray:
    """Model-range images (N, C, H, W) in [-1, 1] -> float32 in [0, 1], the range of the FID extractors.

    Raises ValueError for non-finite values or values outside [-1, 1] (e.g. images already in [0, 1] would pass,
    so callers keep one convention: the model range everywhere, [0, 1] only inside the metrics).
    """
    x = np.asarray(images.detach().cpu() if isinstance(images, Tensor) else images, np.float32)
    if x.ndim != 4:
        raise ValueError(f"{name} must be (N, C, H, W), got shape {x.shape}")
    if not np.isfinite(x).all():
        raise ValueError(f"{name} contain non-finite values")
    lo, hi = float(x.min(initial=0)), float(x.max(initial=0))
    if lo < -1 - 1e-6 or hi > 1 + 1e-6:
        raise ValueError(f"{name} must be in the model range [-1, 1] before the metrics map them to [0, 1]; "
                         f"found [{lo:.3g}, {hi:.3g}]")
    return np.clip((x + 1) / 2, 0, 1)


def metric_view(images: np.ndarray) -> np.ndarray:
    """(N, C, H, W) in [0, 1] -> the (N, H, W) or (N, 3, H, W) the extractors take: grey for 1 channel, RGB for 3,
    the first channel (the first contrast) otherwise."""
    if images.shape[1] == 3:
        return images
    return images[:, 0]


# ---- generated sets ------------------------------------------------------------------------------------------------
def load_generator(run_dir: str | Path, device: str = "auto", use_ema: bool = True
                   ) -> tuple[LabelledMethod, nn.Module]:
    """A trained class-generation run (folder or checkpoint) -> (method, generator in eval mode, EMA weights
    when the run kept them), rebuilt from the checkpoint alone."""
    state = load_checkpoint(run_dir)
    cfg = checkpoint_config(state)
    method = build_method(cfg)
    if not isinstance(method, LabelledMethod):
        raise ValueError(f"{run_dir} is a {cfg.model.method!r} run, not a class-conditioned generator")
    method.load_state_dict(state["method"])
    if use_ema and state.get("ema") is not None:
        method.generator.load_state_dict(state["ema"])
    dev = resolve_device(device)
    method.setup(dev, None, memory_format(cfg.train.channels_last, dev), no_wrap).eval()
    return method, method.generator


def generate_set(method: LabelledMethod, generator: nn.Module, counts: Mapping[str, int], classes: Sequence[str],
                 seed: int = 0, batch_size: int = 16, **options) -> LabelledSlices:
    """``counts[c]`` images of each class c (index in ``classes``), image k seeded ``seed * SEED_STRIDE + k``;
    ``options`` go to ``method.generate`` (e.g. guidance_scale, steps, sampler)."""
    labels = np.concatenate([np.full(n, classes.index(c)) for c, n in counts.items()]).astype(np.int64)
    seeds = [seed * SEED_STRIDE + k for k in range(len(labels))]
    out = []
    for s in tqdm(range(0, len(labels), batch_size), desc="generate", mininterval=10, leave=False):
        batch = torch.from_numpy(labels[s:s + batch_size])
        out.append(method.generate(generator, batch, seeds[s:s + batch_size], **options).cpu())
    images = torch.cat(out).numpy() if out else np.zeros((0, 1, 1, 1), np.float32)
    return LabelledSlices(images, labels, tuple(classes), np.array([f"seed{x}" for x in seeds]))


# ---- the real-data classifier ----------------------------------------------------------------------------------
class SliceClassifier(nn.Module):
    """A small CNN: images (B, C, H, W) in [-1, 1] -> class logits (B, K); ``features`` (B, 4 width) before the head
    (the trust gate's feature space)."""

    def __init__(self, channels: int, num_classes: int, width: int = 16):
        super().__init__()
        widths = [width, 2 * width, 4 * width]
        layers: list[nn.Module] = [nn.Conv2d(channels, widths[0], 3, padding=1), nn.GroupNorm(4, widths[0]),
                                   nn.SiLU()]
        for c_in, c_out in zip(widths, widths[1:] + widths[-1:]):
            layers += [nn.Conv2d(c_in, c_out, 4, 2, 1), nn.GroupNorm(4, c_out), nn.SiLU()]
        self.body = nn.Sequential(*layers, nn.AdaptiveAvgPool2d(1), nn.Flatten())
        self.head = nn.Sequential(nn.Dropout(0.2), nn.Linear(widths[-1], num_classes))

    def features(self, x: Tensor) -> Tensor:
        # Each image standardised first: per-volume windowing makes whole slices brighter or darker from subject
        # to subject (a large enhancing lesion darkens the rest), which must not decide the class.
        mean, std = x.mean((1, 2, 3), keepdim=True), x.std((1, 2, 3), keepdim=True)
        return self.body((x - mean) / (std + 1e-3))

    def forward(self, x: Tensor) -> Tensor:
        return self.head(self.features(x))


def _augment(x: Tensor, gen: torch.Generator, shift: int = 2) -> Tensor:
    """Random left-right flips, shifts of up to ``shift`` pixels and intensity gains 0.8-1.2 (B, C, H, W) in [-1, 1]."""
    flip = torch.rand(len(x), generator=gen) < 0.5
    x = torch.where(flip.view(-1, 1, 1, 1), x.flip(-1), x)
    dy, dx = torch.randint(-shift, shift + 1, (2,), generator=gen).tolist()
    x = torch.roll(x, (dy, dx), dims=(-2, -1))
    gain = 0.8 + 0.4 * torch.rand(len(x), 1, 1, 1, generator=gen)
    return ((x + 1) * gain - 1).clamp(-1, 1)


def train_classifier(data: LabelledSlices, steps: int = 300, seed: int = 0, width: int = 16, batch_size: int = 32,
                     lr: float = 2e-3, device: str = "cpu") -> SliceClassifier:
    """A :class:`SliceClassifier` trained for ``steps`` batches of ``data`` (class-balanced sampling,
    :func:`_augment`), cross entropy, AdamW; deterministic for a seed on CPU. Returned in eval mode."""
    if len(data) == 0 or len(np.unique(data.labels)) < 2:
        raise ValueError(f"a classifier needs images of at least two classes, got {data.counts()}")
    dev = resolve_device(device)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = SliceClassifier(data.images.shape[1], len(data.classes), width).to(dev)
        x, y = torch.from_numpy(data.images), torch.from_numpy(data.labels)
        counts = np.bincount(data.labels, minlength=len(data.classes)).astype(float)
        weights = torch.as_tensor(1.0 / np.maximum(counts, 1)[data.labels])
        opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=1e-4)
        gen = torch.Generator().manual_seed(seed)
        model.train()
        for _ in tqdm(range(steps), desc="classifier", mininterval=10, leave=False):
            idx = torch.multinomial(weights, batch_size, replacement=True, generator=gen)
            loss = F.cross_entropy(model(_augment(x[idx], gen).to(dev)), y[idx].to(dev))
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
    return model.eval()


@torch.no_grad()
def _batched(fn: Callable[[Tensor], Tensor], images: np.ndarray, device: torch.device, batch_size: int = 64
             ) -> np.ndarray:
    x = torch.as_tensor(np.asarray(images, np.float32))
    if len(x) == 0:
        raise ValueError("no images given")
    return torch.cat([fn(x[s:s + batch_size].to(device)).float().cpu() for s in range(0, len(x), batch_size)]).numpy()


def _device(module: nn.Module) -> torch.device:
    return next(module.parameters()).device


def predict_proba(classifier: SliceClassifier, images: np.ndarray) -> np.ndarray:
    """(N, C, H, W) in [-1, 1] -> (N, K) class probabilities."""
    to_unit(images, "classifier inputs")  # asserts the range
    return _batched(lambda x: classifier(x).softmax(1), images, _device(classifier))


def classifier_features(classifier: SliceClassifier, images: np.ndarray) -> np.ndarray:
    """(N, C, H, W) in [-1, 1] -> (N, F) features before the classifier's head."""
    to_unit(images, "classifier inputs")
    return _batched(classifier.features, images, _device(classifier))


def accuracy(classifier: SliceClassifier | FeatureProbe, data: LabelledSlices,
             features: np.ndarray | None = None) -> dict[str, float]:
    """Accuracy per class, ``all`` (pooled) and ``balanced`` (mean of the per-class accuracies) of a classifier on
    ``data``'s images, or of a :class:`FeatureProbe` on ``features`` (N, F) of them."""
    if isinstance(classifier, FeatureProbe):
        if features is None or len(features) != len(data):
            raise ValueError(f"a feature probe needs the features of the {len(data)} images")
        predicted = classifier.predict(features)
    else:
        predicted = predict_proba(classifier, data.images).argmax(1)
    scores = {data.classes[k]: value for k, value in per_class_accuracy(predicted, data.labels).items()}
    return {**scores, "all": float((predicted == data.labels).mean()),
            "balanced": float(np.mean(list(scores.values())))}


def per_class_accuracy(predicted: np.ndarray, labels: np.ndarray) -> dict[int, float]:
    """(N,) predicted and true class indices -> class index -> share of its items predicted as it (present
    classes only, in index order); their mean is the balanced accuracy."""
    return {int(k): float((predicted[labels == k] == k).mean()) for k in np.unique(labels)}


def class_fidelity(classifier: SliceClassifier | FeatureProbe, generated: LabelledSlices,
                   features: np.ndarray | None = None) -> dict[str, float]:
    """The real-data classifier's (or feature probe's, on ``features``) accuracy on generated images: per class, the
    share recognised as the class it was generated for; ``all``, their mean (balanced accuracy). For a generator that
    ignores the label the mean is exactly 1 / K, whatever the class counts, while pooled accuracy would score the
    class shares (e.g. 0.4 for a generator of healthy-looking images only, judged on a set that is 40 % healthy)."""
    scores = accuracy(classifier, generated, features)
    return {**{c: scores[c] for c in generated.classes if c in scores}, "all": scores["balanced"]}


# ---- a judge of another model family ---------------------------------------------------------------------------
PROBE_WEIGHT_DECAYS = (1e-4, 1e-3, 1e-2, 1e-1, 1.0)
"""The L2 weights :meth:`FeatureProbe.fit` chooses from, by balanced accuracy on the validation split."""


class FeatureProbe:
    """A linear classifier on fixed features (e.g. Inception pool features, (N, 2048)): class-balanced softmax
    regression on features standardised with the training set's mean and std, L2 weight chosen on a validation
    set, fitted by L-BFGS (deterministic). It shares with the CNN classifiers only the training images: a judge of
    another model family."""

    def __init__(self, mean: np.ndarray, std: np.ndarray, weight: Tensor, bias: Tensor, weight_decay: float):
        self.mean, self.std, self.weight, self.bias, self.weight_decay = mean, std, weight, bias, weight_decay

    @classmethod
    def fit(cls, features: np.ndarray, labels: np.ndarray, num_classes: int, val_features: np.ndarray,
            val_labels: np.ndarray, weight_decays: Sequence[float] = PROBE_WEIGHT_DECAYS) -> "FeatureProbe":
        """Fit on ``features`` (N, F) with ``labels`` (N,) for each of ``weight_decays``; keep the one with the best
        balanced accuracy on the validation set (the smallest weight on ties)."""
        if len(np.unique(labels)) < 2:
            raise ValueError(f"a feature probe needs at least two classes, got labels {np.unique(labels).tolist()}")
        mean, std = features.mean(0), features.std(0) + 1e-6
        x = torch.from_numpy(((features - mean) / std).astype(np.float32))
        y = torch.from_numpy(np.asarray(labels)).long()
        counts = np.bincount(labels, minlength=num_classes)
        balance = torch.tensor(len(labels) / (num_classes * np.maximum(counts, 1)), dtype=torch.float32)
        best = None
        for decay in weight_decays:
            weight = torch.zeros(num_classes, x.shape[1], requires_grad=True)
            bias = torch.zeros(num_classes, requires_grad=True)
            opt = torch.optim.LBFGS([weight, bias], max_iter=200, line_search_fn="strong_wolfe")

            def loss() -> Tensor:
                opt.zero_grad()
                value = F.cross_entropy(x @ weight.T + bias, y, weight=balance) + decay * weight.pow(2).sum()
                value.backward()
                return value

            opt.step(loss)
            probe = cls(mean, std, weight.detach(), bias.detach(), decay)
            score = np.mean(list(per_class_accuracy(probe.predict(val_features), np.asarray(val_labels)).values()))
            if best is None or score > best[0]:
                best = (score, probe)
        return best[1]

    def predict(self, features: np.ndarray) -> np.ndarray:
        """(N, F) features -> (N,) predicted class indices."""
        x = torch.from_numpy(((np.asarray(features) - self.mean) / self.std).astype(np.float32))
        return (x @ self.weight.T + self.bias).argmax(1).numpy()


def tstr(generated: LabelledSlices, real_train: LabelledSlices, real_test: LabelledSlices, steps: int = 300,
         seed: int = 0) -> dict[str, float]:
    """Balanced accuracy on the real test split of classifiers trained on the generated images alone
    (``synthetic``, TSTR) and on them plus the real training split (``real+synthetic``); the reference, a classifier
    trained on the real training split alone, is ``tstr(real_train, ...)["synthetic"]``."""
    both = LabelledSlices(np.concatenate([real_train.images, generated.images]),
                          np.concatenate([real_train.labels, generated.labels]), real_train.classes,
                          np.concatenate([real_train.origins, generated.origins]))
    return {name: accuracy(train_classifier(data, steps, seed), real_test)["balanced"]
            for name, data in (("synthetic", generated), ("real+synthetic", both))}


# ---- distribution distances ------------------------------------------------------------------------------------
class FeatureBank:
    """Features of the real reference set, computed once: Inception (optional) and the domain encoder's."""

    def __init__(self, real_train: LabelledSlices, real_reference: LabelledSlices, inception: bool = True,
                 domain_epochs: int = 20, seed: int = 0, device: str = "cpu"):
        from mudiff.evaluation.fid import train_domain_encoder

        self.inception, self.device = inception, device
        self.reference = real_reference
        train_view = metric_view(to_unit(real_train.images, "real training images"))
        self.encoder, _ = train_domain_encoder(train_view if train_view.ndim == 3 else train_view[:, 0],
                                               epochs=domain_epochs, seed=seed, device=device)
        self.real = self.features(real_reference, "real reference images")

    def features(self, data: LabelledSlices, name: str = "generated images") -> dict[str, np.ndarray]:
        """{"domain": (N, 64)[, "inception": (N, 2048)]} of a set in [-1, 1] (range asserted)."""
        from mudiff.evaluation.fid import domain_features, extract_features, inception

        view = metric_view(to_unit(data.images, name))
        out = {"domain": domain_features(self.encoder, view if view.ndim == 3 else view[:, 0], device=self.device)}
        if self.inception:
            out["inception"] = extract_features(view, inception(self.device), device=self.device)
        return out

    def distances(self, generated: LabelledSlices, name: str = "generated",
                  features: dict[str, np.ndarray] | None = None) -> pd.DataFrame:
        """Per class and pooled (``all``): n, FID, KID (x 1000) and the domain FD against the reference set of the
        same class; the generated set must hold as many images of each class as the reference. ``features``: its
        :meth:`features`, when already computed."""
        from mudiff.evaluation.fid import fid_kid_from_features, frechet_distance

        if generated.counts() != self.reference.counts():
            raise ValueError(f"compare at equal n per class: the reference has {self.reference.counts()}, "
                             f"{name} {generated.counts()}")
        fake = features if features is not None else self.features(generated, f"{name} images")
        rows = []
        for cls in [*generated.classes, None]:  # classes match by name (their label order may differ); None: all
            keep_r, keep_f = (np.ones(len(s), bool) if cls is None else s.labels == s.classes.index(cls)
                              for s in (self.reference, generated))
            row = {"set": name, "class": cls or "all", "n": int(keep_f.sum()),
                   "fd_domain": frechet_distance(self.real["domain"][keep_r], fake["domain"][keep_f])}
            if self.inception:
                scores = fid_kid_from_features(self.real["inception"][keep_r], fake["inception"][keep_f])
                row.update(fid=scores["fid"], kid_x1000=1000 * scores["kid_mean"])
            rows.append(row)
        return pd.DataFrame(rows)


# ---- memorisation ----------------------------------------------------------------------------------------------
def nearest_training_images(generated: LabelledSlices, train: LabelledSlices) -> pd.DataFrame:
    """For each generated image its nearest training image (RMS pixel distance in [0, 1] units, any class):
    columns index, class, nn_index, nn_class, distance; sorted from the closest pair."""
    g = torch.from_numpy(to_unit(generated.images, "generated images")).flatten(1)
    r = torch.from_numpy(to_unit(train.images, "training images")).flatten(1)
    dist = torch.cdist(g, r) / np.sqrt(g.shape[1])
    best, index = dist.min(1)
    return pd.DataFrame({"index": np.arange(len(g)), "class": [generated.classes[k] for k in generated.labels],
                         "nn_index": index.numpy(), "nn_class": [train.classes[k] for k in train.labels[index.numpy()]],
                         "distance": best.numpy()}).sort_values("distance", ignore_index=True)


def train_nn_distances(train: LabelledSlices, held_out: LabelledSlices) -> np.ndarray:
    """Distances of held-out real images to their nearest training image: the scale against which a generated
    image's distance reads as 'memorised' (far below it) or not."""
    return nearest_training_images(held_out, train)["distance"].to_numpy()


__all__ = ["SEED_STRIDE", "to_unit", "metric_view", "load_generator", "generate_set", "SliceClassifier",
           "train_classifier", "predict_proba", "classifier_features", "accuracy", "class_fidelity",
           "PROBE_WEIGHT_DECAYS", "FeatureProbe", "tstr", "FeatureBank", "nearest_training_images",
           "train_nn_distances"]
