"""Unpaired MR <-> CT: baselines that need no training, synthesis with trained runs, SynthRAD-style evaluation,
tables, figures and the explorer of notebook 10.

- :class:`BulkDensity` (MR -> CT): the classic MR-only radiotherapy approach. Inside the body, MR voxels darker
  than an Otsu threshold (fitted on training MR only) within the outer shell of the head are bone, every other
  body voxel soft tissue; each class gets a fixed HU (air outside the body).
- :class:`HistogramMatch` (CT -> MR): copy the CT with its body intensities mapped onto the training MR's
  intensity distribution (quantile mapping): the trivial bar a CT -> MR model must beat.
- :func:`synthesise`: a trained run (``syndiff_cycle``, ``cyclegan``, or the paired upper bound ``mudiff`` with
  ``model.variant: single`` trained on ``ct_from_mr`` / ``mr_from_ct``) on the paired test slices.
- :func:`score`: per slice, inside the body mask, SynthRAD2023's MAE in HU, PSNR over the clipped HU window
  (data range 4024 HU) and SSIM for sCT, plus the MAE per tissue class of the real CT (air < -200 HU, bone >=
  250 HU, soft tissue between): bone is where synthetic CT fails. MR outputs: PSNR, SSIM, MAE in [0, 1].
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

import numpy as np
import pandas as pd
import torch
from scipy import ndimage as ndi
from scipy.stats import ttest_rel, wilcoxon

from mudiff.checkpoint import checkpoint_config, load_checkpoint
from mudiff.config import RunConfig, replace
from mudiff.data.synthrad import HU_WINDOW, MRCTDataset, hu_to_unit, unit_to_hu
from mudiff.data.tasks import parse_task
from mudiff.display.viz import save_figure
from mudiff.evaluation.metrics import slice_metrics
from mudiff.evaluation.stats import Claim
from mudiff.methods.syndiff_cycle import cycle_domains
from mudiff.runtime import autocast

HU_RANGE = HU_WINDOW[1] - HU_WINDOW[0]
TISSUE_CLASSES = {"air": (-np.inf, -200.0), "soft": (-200.0, 250.0), "bone": (250.0, np.inf)}
"""Tissue classes of the real CT (HU, lower bound included) for the per-tissue MAE, inside the body mask."""
DIRECTIONS = ("mr_to_ct", "ct_to_mr")
PHANTOM_NOTE = "head phantom: a controlled benchmark, not evidence about patients"


def otsu_threshold(values: np.ndarray, bins: int = 256) -> float:
    """Otsu's threshold of a 1-D sample (maximises the between-class variance)."""
    hist, edges = np.histogram(values, bins=bins)
    centres = (edges[:-1] + edges[1:]) / 2
    w0 = np.cumsum(hist)
    w1 = w0[-1] - w0
    m0 = np.cumsum(hist * centres) / np.maximum(w0, 1)
    m1 = (np.sum(hist * centres) - np.cumsum(hist * centres)) / np.maximum(w1, 1)
    return float(centres[np.argmax(w0 * w1 * (m0 - m1) ** 2)])


def _shell(mask: np.ndarray, fraction: float) -> np.ndarray:
    """(H, W) the outer band of a body mask, ``fraction`` of its equivalent radius deep."""
    depth = fraction * np.sqrt(mask.sum() / np.pi)
    return (mask > 0) & (ndi.distance_transform_edt(mask > 0) <= max(depth, 1.0))


def body_mr_values(train: MRCTDataset, max_slices: int) -> np.ndarray:
    """MR intensities (unit [0, 1]) inside the body of up to ``max_slices`` evenly spread training slices, flat."""
    picks = np.linspace(0, len(train) - 1, min(len(train), max_slices)).round().astype(int)
    values = []
    for i in picks:
        item = train[int(i)]
        values.append((item["mr"][0].numpy()[item["body_mask"][0].numpy() > 0.5] + 1) / 2)
    return np.concatenate(values)


@dataclass
class BulkDensity:
    """MR (unit [0, 1]) -> CT (unit [0, 1]) with one HU per tissue class; :meth:`fit` sets ``dark_threshold``."""

    hu: dict[str, float] = field(default_factory=lambda: {"air": -1000.0, "soft": 20.0, "bone": 700.0})
    shell_fraction: float = 0.2  # the outer band of the head searched for bone
    dark_threshold: float | None = None

    def fit(self, train: MRCTDataset, max_slices: int = 400) -> "BulkDensity":
        """Otsu threshold of the training MR inside the body (the CT is not looked at)."""
        self.dark_threshold = otsu_threshold(body_mr_values(train, max_slices))
        return self

    def classes(self, mr: np.ndarray, mask: np.ndarray) -> np.ndarray:
        """(N, H, W) class map: 0 air (outside the body), 1 soft tissue, 2 bone."""
        if self.dark_threshold is None:
            raise ValueError("BulkDensity is not fitted; call .fit(train_set) first")
        out = np.zeros(mr.shape, np.uint8)
        for k in range(len(mr)):
            body = mask[k] > 0.5
            out[k][body] = 1
            out[k][_shell(body, self.shell_fraction) & (mr[k] < self.dark_threshold)] = 2
        return out

    def predict(self, mr: np.ndarray, mask: np.ndarray) -> np.ndarray:
        """mr, mask (N, H, W) -> CT (N, H, W) in [0, 1] (the fixed HU window mapping)."""
        values = np.array([self.hu["air"], self.hu["soft"], self.hu["bone"]], np.float32)
        return hu_to_unit(values[self.classes(mr, mask)])


@dataclass
class HistogramMatch:
    """CT (unit) -> MR (unit): body intensities quantile-mapped onto the training MR's body distribution."""

    quantiles: np.ndarray | None = None

    def fit(self, train: MRCTDataset, max_slices: int = 400, n: int = 1001) -> "HistogramMatch":
        self.quantiles = np.quantile(body_mr_values(train, max_slices), np.linspace(0, 1, n))
        return self

    def predict(self, ct: np.ndarray, mask: np.ndarray) -> np.ndarray:
        if self.quantiles is None:
            raise ValueError("HistogramMatch is not fitted; call .fit(train_set) first")
        out = np.zeros(ct.shape, np.float32)
        for k in range(len(ct)):
            body = mask[k] > 0.5
            if body.any():
                ranks = (np.argsort(np.argsort(ct[k][body], kind="stable"), kind="stable") + 0.5) / body.sum()
                out[k][body] = np.interp(ranks, np.linspace(0, 1, len(self.quantiles)), self.quantiles)
        return out


# ---- synthesis with trained runs -------------------------------------------------------------------------------
@dataclass
class TestSlices:
    """The paired test slices in [0, 1]: ``mr``, ``ct``, ``mask`` (N, H, W); ``subject``, ``z``, ``index`` (N,)."""

    mr: np.ndarray
    ct: np.ndarray
    mask: np.ndarray
    subject: np.ndarray
    z: np.ndarray
    index: np.ndarray

    @classmethod
    def load(cls, root: str | Path, split: str = "test", max_slices: int | None = None) -> "TestSlices":
        data = MRCTDataset(root, split)
        picks = range(len(data)) if max_slices is None or max_slices >= len(data) else \
            np.linspace(0, len(data) - 1, max_slices).round().astype(int)
        items = [data[int(i)] for i in picks]
        unit = lambda key: np.stack([(it[key][0].numpy() + 1) / 2 for it in items])  # noqa: E731
        return cls(unit("mr"), unit("ct"), np.stack([it["body_mask"][0].numpy() for it in items]),
                   np.array([it["subject"] for it in items]), np.array([it["z"] for it in items]),
                   np.array([it["index"] for it in items]))

    def __len__(self) -> int:
        return len(self.index)


def synthesise(run_dir: str | Path, slices: TestSlices, source: str, seed: int = 0, batch_size: int | None = None,
               device: str = "auto") -> np.ndarray:
    """The other modality of ``source`` ("mr" or "ct") for every test slice, in [0, 1]: (N, H, W).

    A cycle run translates in either direction; a paired run only in its task's direction. Slice i uses seed
    ``seed * SEED_STRIDE + index`` (independent of the batch; ``batch_size`` None: the device's default)."""
    from mudiff.sample import Sampler, seeded_batches, unit_slices

    sampler = Sampler.from_checkpoint(run_dir, device=device)
    method = sampler.method
    translates = hasattr(method, "translate")
    if not translates and sampler.sources != [source]:
        raise ValueError(f"run {run_dir} synthesises {sampler.target} from {sampler.sources}, not from {source!r}")
    images = torch.from_numpy(getattr(slices, source))[:, None] * 2 - 1

    def run(positions: slice, seeds: list[int]) -> np.ndarray:
        x = images[positions].to(sampler.device)
        return unit_slices(method.translate(method.generator, x, source, seeds) if translates else sampler(x, seeds)[2])

    return np.concatenate(seeded_batches(run, slices.index, seed, batch_size, sampler.device))


SHARED_SUBJECTS = "syndiff_cycle_shared"


def comparison_configs(cfg: RunConfig, shared_subjects: bool = False) -> dict[str, RunConfig]:
    """The trained runs of the comparison, from one ``syndiff_cycle`` config: SynDiff (cycle), CycleGAN (its
    translators alone, same weights and schedule) and the paired upper bound in each direction (``mudiff`` with
    ``model.variant: single`` on paired slices, i.e. supervised SynDiff), all trained by the same Trainer. With
    ``shared_subjects``, also SynDiff (cycle) with MR and CT from every training subject (``SHARED_SUBJECTS``), for a
    config whose domains take disjoint halves: the paired runs see every subject, so this run tells the lack of
    pairs from the lack of slices."""
    if cfg.model.method != "syndiff_cycle":
        raise ValueError(f"expected a syndiff_cycle config, got model.method={cfg.model.method!r}")
    if cfg.model.image_width and cfg.model.image_width != cfg.model.image_size:
        raise ValueError("the paired upper bound (mudiff) needs square images; set model.image_width=0")
    if shared_subjects and cfg.data.unpaired_subjects == "shared":
        raise ValueError("the config's SynDiff run already shares its subjects (data.unpaired_subjects: shared)")
    a, b = cycle_domains(cfg.data.task)
    paired = {"method": "mudiff", "variant": "single", "image_width": 0}
    shared = {SHARED_SUBJECTS: replace(cfg, data={"unpaired_subjects": "shared"})} if shared_subjects else {}
    return {"syndiff_cycle": cfg, **shared, "cyclegan": replace(cfg, model={"method": "cyclegan"}),
            f"paired_{a}_to_{b}": replace(cfg, model=paired, data={"task": f"{b}_from_{a}"}),
            f"paired_{b}_to_{a}": replace(cfg, model=paired, data={"task": f"{a}_from_{b}"})}


def train_comparison(cfg: RunConfig, runs_root: str | Path, names: Sequence[str] | None = None,
                     callbacks: Sequence | None = None) -> dict[str, Path]:
    """Train (or resume, or reuse when finished) every run of :func:`comparison_configs` under ``runs_root``."""
    from mudiff.train import train

    runs = {}
    for name, run_cfg in comparison_configs(cfg).items():
        if names is not None and name not in names:
            continue
        runs[name] = Path(runs_root) / name
        print(f"training {name} in {runs[name]}")
        train(run_cfg, runs[name], callbacks=list(callbacks or []))
    return runs


def compare(runs: dict[str, str | Path], slices: TestSlices, train_set: MRCTDataset, seed: int = 0,
            batch_size: int | None = None, device: str = "auto") -> tuple[dict, dict]:
    """Every run and the two untrained baselines on the test slices.

    Returns ``preds`` {method: {direction: (N, H, W) in [0, 1]}} and ``scores`` {direction: {method: per-slice
    frame}}; paired runs appear in their direction only."""
    preds: dict[str, dict[str, np.ndarray]] = {
        "bulk_density": {"mr_to_ct": BulkDensity().fit(train_set).predict(slices.mr, slices.mask)},
        "histogram_matched_ct": {"ct_to_mr": HistogramMatch().fit(train_set).predict(slices.ct, slices.mask)}}
    for name, run_dir in runs.items():
        cfg = checkpoint_config(load_checkpoint(run_dir))
        if cfg.model.method in ("syndiff_cycle", "cyclegan"):
            preds[name] = {f"{s}_to_{t}": synthesise(run_dir, slices, s, seed, batch_size, device)
                           for s, t in (("mr", "ct"), ("ct", "mr"))}
        else:
            target, (source,) = parse_task(cfg.data.task)
            preds[name] = {f"{source}_to_{target}": synthesise(run_dir, slices, source, seed, batch_size, device)}
    scores = {d: {m: score(p[d], slices, d.split("_to_")[1]) for m, p in preds.items() if d in p}
              for d in DIRECTIONS}
    return preds, scores


TRANSLATOR_ALONE = "syndiff_cycle: G_nd alone"
OWN_TRANSLATION = "syndiff_cycle: G_diff on G_nd(target)"


def translator_diagnostic(run_dir: str | Path, slices: TestSlices, seed: int = 0, batch_size: int | None = None,
                          device: str = "auto") -> dict[str, dict[str, pd.DataFrame]]:
    """What a SynDiff cycle run's networks do apart, scored like :func:`compare` ({direction: {name: frame}}).

    In training G_diff^target is conditioned on its translator's image of the real target, G_nd^{target->source}
    (x^target) (SynDiff's cycle), never on a real source; at test time it gets the real source. Per direction:
    ``TRANSLATOR_ALONE``, G_nd^{source->target}(real source), the translator as a translation of its own; and
    ``OWN_TRANSLATION``, G_diff^target conditioned as in training, on G_nd^{target->source}(real target). The
    latter sees the truth through the translator: far better than the real translation, it says that G_diff has
    learned to read its translator's images, and real sources are not those (a train/test mismatch of the cycle)."""
    from mudiff.sample import Sampler, seeded_batches, unit_slices

    sampler = Sampler.from_checkpoint(run_dir, device=device)
    method, generator = sampler.method, sampler.method.generator
    if sampler.cfg.model.method != "syndiff_cycle":
        raise ValueError(f"{run_dir} is not a syndiff_cycle run (model.method={sampler.cfg.model.method!r})")
    scores = {}
    for source, target in (("mr", "ct"), ("ct", "mr")):
        real = {d: torch.from_numpy(getattr(slices, d))[:, None] * 2 - 1 for d in (source, target)}

        def alone(positions: slice, seeds: list[int], source=source, target=target, real=real) -> np.ndarray:
            with torch.no_grad(), autocast(sampler.device, method.amp_dtype):
                return unit_slices(generator.translate(real[source][positions].to(sampler.device), source, target))

        def own(positions: slice, seeds: list[int], source=source, target=target, real=real) -> np.ndarray:
            with torch.no_grad(), autocast(sampler.device, method.amp_dtype):
                condition = generator.translate(real[target][positions].to(sampler.device), target, source).float()
            return unit_slices(method.translate(generator, condition, source, seeds))

        preds = {name: np.concatenate(seeded_batches(run, slices.index, seed, batch_size, sampler.device))
                 for name, run in ((TRANSLATOR_ALONE, alone), (OWN_TRANSLATION, own))}
        scores[f"{source}_to_{target}"] = {name: score(p, slices, target) for name, p in preds.items()}
    return scores


def translate_volume(run_dir: str | Path, subject_dir: str | Path, source: str, out: str | Path, seed: int = 0,
                     batch_size: int | None = None, device: str = "auto") -> Path:
    """Translate every body slice of a SynthRAD-layout subject with a cycle run and write the result as NIfTI on
    the subject's files' grid (their axis order and affine, voxel for voxel): a synthetic CT in HU
    (``source="mr"``) or a synthetic MR in [0, 1]."""
    from mudiff.data.synthrad import (PairSubject, _nifti, body_slices, load_synthrad_subject, prepare_volumes,
                                      write_slices_nifti)
    from mudiff.data.subjects import check_volume_output
    from mudiff.methods.syndiff_cycle import image_shape
    from mudiff.sample import Sampler, seeded_batches

    folder, out = Path(subject_dir), check_volume_output(out, subject_dir)
    files = {k: _nifti(folder, k) for k in ("mr", "ct", "mask")}
    missing = [k for k in (source, "mask") if files.get(k) is None]
    if missing:
        raise FileNotFoundError(f"{folder}: missing {missing} (translating from {source} needs {source} and mask "
                                "NIfTI files)")
    sampler = Sampler.from_checkpoint(run_dir, device=device)
    method = sampler.method
    if not hasattr(method, "translate"):
        raise ValueError(f"{run_dir} is not a cycle run (model.method={sampler.cfg.model.method!r})")
    pair = load_synthrad_subject(PairSubject(folder.name, {k: v for k, v in files.items() if v is not None}))
    z = body_slices(pair.mask, pair.mask.shape[2])
    unit = prepare_volumes(pair, image_shape(sampler.cfg.model), z)
    images = torch.from_numpy(unit[source])[:, None] * 2 - 1

    def run(positions: slice, seeds: list[int]) -> np.ndarray:
        y = method.translate(method.generator, images[positions].to(sampler.device), source, seeds)
        return y.clamp(-1, 1)[:, 0].cpu().numpy()

    outs = seeded_batches(run, z, seed, batch_size, sampler.device)
    target = "ct" if source == "mr" else "mr"
    return write_slices_nifti(np.concatenate(outs), target, pair, z, out)


# ---- scoring ---------------------------------------------------------------------------------------------------
def score(pred: np.ndarray, slices: TestSlices, target: str) -> pd.DataFrame:
    """Per-slice metrics inside the body of predictions ``pred`` (N, H, W) in [0, 1] of ``target`` ("ct" or "mr").

    Columns: subject, z, psnr, ssim, mae (unit scale), and for CT mae_hu and mae_hu_<tissue> (NaN where the slice
    has none of that tissue)."""
    truth = getattr(slices, target)
    base = slice_metrics(np.clip(pred, 0, 1), truth, slices.mask, None, subjects=list(slices.subject))
    df = pd.DataFrame({"subject": slices.subject, "z": slices.z, "psnr": base["psnr_B"], "ssim": base["ssim_B"],
                       "mae": base["mae_B"]})
    if target == "ct":
        df["mae_hu"] = df["mae"] * HU_RANGE
        hu = unit_to_hu(truth)
        err = np.abs(pred - truth) * HU_RANGE
        for name, (low, high) in TISSUE_CLASSES.items():
            region = (slices.mask > 0.5) & (hu >= low) & (hu < high)
            count = region.reshape(len(region), -1).sum(1)
            total = (err * region).reshape(len(region), -1).sum(1)
            df[f"mae_hu_{name}"] = np.where(count > 0, total / np.maximum(count, 1), np.nan)
    return df


METRIC_COLUMNS = {"mr_to_ct": ["mae_hu", "mae_hu_air", "mae_hu_soft", "mae_hu_bone", "psnr", "ssim"],
                  "ct_to_mr": ["mae", "psnr", "ssim"]}
LOWER_IS_BETTER = {"mae", "mae_hu", "mae_hu_air", "mae_hu_soft", "mae_hu_bone"}


def results_table(scores: dict[str, pd.DataFrame], direction: str, by: str = "subject") -> pd.DataFrame:
    """Mean +- sd per method (rows) and metric (columns) over subjects (or slices), the best method per metric
    and its paired t-test / Wilcoxon p against every other method on that metric (``p_<metric>``)."""
    cols = METRIC_COLUMNS[direction]
    units = {m: (df.groupby("subject")[cols].mean() if by == "subject" else df[cols]) for m, df in scores.items()}
    rows = []
    for method, u in units.items():
        row = {"method": method, "n": len(u)}
        row.update({c: f"{u[c].mean():.{1 if 'hu' in c else 3}f} ± {u[c].std(ddof=1):.{1 if 'hu' in c else 3}f}"
                    for c in cols})
        rows.append(row)
    table = pd.DataFrame(rows).set_index("method")
    for c in cols:
        means = {m: u[c].mean() for m, u in units.items()}
        best = min(means, key=means.get) if c in LOWER_IS_BETTER else max(means, key=means.get)
        table.loc[best, c] = table.loc[best, c] + " *"
        for m, u in units.items():
            a, b = units[best][c], u[c]
            pairs = pd.concat([a, b], axis=1, keys=["a", "b"]).dropna() if by == "subject" else \
                pd.DataFrame({"a": a.to_numpy(), "b": b.to_numpy()}).dropna()
            p = np.nan
            if m != best and len(pairs) >= 2 and (pairs.a != pairs.b).any():
                p = float(ttest_rel(pairs.a, pairs.b).pvalue)
            table.loc[m, f"p_{c}"] = p
    table.attrs["caption"] = (f"{direction.replace('_to_', ' -> ')}: mean ± sd over {by}s inside the body mask; "
                              "* best; "
                              f"p_<metric>: paired t-test of the best vs that method over {by}s. MAE in HU over "
                              f"the window {HU_WINDOW}; tissues of the real CT: air < -200, bone >= 250 HU. "
                              + PHANTOM_NOTE)
    return table


def paired_p(scores: dict[str, pd.DataFrame], a: str, b: str, metric: str, by: str = "subject") -> dict:
    """Paired t-test and Wilcoxon signed-rank test of ``metric`` between methods a and b."""
    ua = scores[a].groupby("subject")[metric].mean() if by == "subject" else scores[a][metric]
    ub = scores[b].groupby("subject")[metric].mean() if by == "subject" else scores[b][metric]
    pairs = pd.DataFrame({"a": ua.to_numpy(), "b": ub.to_numpy()}).dropna()
    out = {"n": len(pairs), "mean_diff": float((pairs.a - pairs.b).mean()), "p_ttest": np.nan, "p_wilcoxon": np.nan}
    if len(pairs) >= 2 and (pairs.a != pairs.b).any():
        out.update(p_ttest=float(ttest_rel(pairs.a, pairs.b).pvalue),
                   p_wilcoxon=float(wilcoxon(pairs.a - pairs.b).pvalue))
    return out


CLAIMS = (
    Claim("SynDiff (cycle) beats bulk density on MR -> CT", ("syndiff_cycle", "mr_to_ct"),
          ("bulk_density", "mr_to_ct"), ("mae_hu", "mae_hu_bone", "psnr")),
    Claim("SynDiff (cycle) beats the histogram-matched CT on CT -> MR", ("syndiff_cycle", "ct_to_mr"),
          ("histogram_matched_ct", "ct_to_mr"), ("mae", "psnr", "ssim")),
    Claim("SynDiff (cycle) beats CycleGAN on MR -> CT", ("syndiff_cycle", "mr_to_ct"), ("cyclegan", "mr_to_ct"),
          ("mae_hu", "mae_hu_bone", "psnr")),
    Claim("SynDiff (cycle) beats CycleGAN on CT -> MR", ("syndiff_cycle", "ct_to_mr"), ("cyclegan", "ct_to_mr"),
          ("mae", "psnr", "ssim")),
    Claim("the paired upper bound beats bulk density on MR -> CT", ("paired_mr_to_ct", "mr_to_ct"),
          ("bulk_density", "mr_to_ct"), ("mae_hu", "mae_hu_bone", "psnr")),
    Claim("the paired upper bound beats SynDiff (cycle) on MR -> CT", ("paired_mr_to_ct", "mr_to_ct"),
          ("syndiff_cycle", "mr_to_ct"), ("mae_hu", "mae_hu_bone", "psnr")),
    Claim("the paired upper bound beats SynDiff (cycle) on CT -> MR", ("paired_ct_to_mr", "ct_to_mr"),
          ("syndiff_cycle", "ct_to_mr"), ("mae", "psnr", "ssim")),
    Claim("SynDiff (cycle) with every subject in both domains beats bulk density on MR -> CT",
          (SHARED_SUBJECTS, "mr_to_ct"), ("bulk_density", "mr_to_ct"), ("mae_hu", "mae_hu_bone", "psnr")),
    Claim("SynDiff (cycle) with every subject in both domains beats it with disjoint halves on MR -> CT",
          (SHARED_SUBJECTS, "mr_to_ct"), ("syndiff_cycle", "mr_to_ct"), ("mae_hu", "mae_hu_bone", "psnr")),
    Claim("SynDiff (cycle) with every subject in both domains beats it with disjoint halves on CT -> MR",
          (SHARED_SUBJECTS, "ct_to_mr"), ("syndiff_cycle", "ct_to_mr"), ("mae", "psnr", "ssim")),
    Claim("the paired upper bound beats SynDiff (cycle) with every subject in both domains on MR -> CT",
          ("paired_mr_to_ct", "mr_to_ct"), (SHARED_SUBJECTS, "mr_to_ct"), ("mae_hu", "mae_hu_bone", "psnr")),
    Claim("the paired upper bound beats SynDiff (cycle) with every subject in both domains on CT -> MR",
          ("paired_ct_to_mr", "ct_to_mr"), (SHARED_SUBJECTS, "ct_to_mr"), ("mae", "psnr", "ssim")),
)
"""Issue 10's two targets (the unpaired model beats the untrained baselines), SynDiff's claim over CycleGAN, and
the paired upper bound's: whether the task is learnable from pairs at the scale where SynDiff is tested, and how
much SynDiff loses to it, split into the lack of slices (the unpaired domains' disjoint halves of the subjects
against every subject, with the first target again for every subject) and the lack of pairs (every subject,
unpaired against paired). Claims over training seeds and test subjects
(:func:`mudiff.evaluation.stats.claims_table` on :func:`long_scores` of :func:`comparison_configs`' runs with
``shared_subjects``, named as there for a ``ct_from_mr`` config whose domains take disjoint halves)."""


def long_scores(scores: dict[str, dict[str, pd.DataFrame]], seed: int) -> pd.DataFrame:
    """:func:`compare`'s ``scores`` of training seed ``seed`` as one frame: a row per slice with ``run`` (the method),
    ``output`` (the direction) and ``seed``, as :func:`mudiff.evaluation.stats.claims_table` reads them."""
    return pd.concat([frame.assign(run=method, output=direction, seed=seed)
                      for direction, by_method in scores.items() for method, frame in by_method.items()],
                     ignore_index=True)


# ---- figures ---------------------------------------------------------------------------------------------------
def box_plots(scores: dict[str, pd.DataFrame], direction: str, by: str = "subject", out: str | Path | None = None):
    """One panel per metric, one box per method over subjects (or slices)."""
    import matplotlib.pyplot as plt

    cols = METRIC_COLUMNS[direction]
    long = pd.concat([(df.groupby("subject")[cols].mean().reset_index() if by == "subject" else df[cols])
                      .assign(method=m) for m, df in scores.items()])
    fig, axes = plt.subplots(1, len(cols), figsize=(2.6 * len(cols), 3.0))
    for ax, col in zip(np.atleast_1d(axes), cols):
        data = [long.loc[long.method == m, col].dropna() for m in scores]
        ax.boxplot(data, tick_labels=list(scores))
        ax.set_title(col, fontsize=8)
        ax.tick_params(axis="x", labelrotation=40, labelsize=7)
    fig.suptitle(f"{direction.replace('_to_', ' -> ')}, per {by}; {PHANTOM_NOTE}", fontsize=8)
    fig.tight_layout()
    return save_figure(fig, out, long)


def plot_head(subject_dir: str | Path, out: str | Path | None = None, window: tuple[float, float] = (-200, 1500)):
    """A head phantom subject: MR, CT in a HU window, body mask and tissue labels (axial, coronal)."""
    import matplotlib.pyplot as plt
    import nibabel as nib

    folder = Path(subject_dir)
    vols = {k: np.asarray(nib.load(folder / f"{k}.nii.gz").dataobj) for k in ("mr", "ct", "mask", "labels")}
    z = int(np.argmax(vols["mask"].sum(axis=(0, 1)))) + 8
    y = vols["mr"].shape[1] // 2
    fig, axes = plt.subplots(2, 4, figsize=(11, 5.6))
    for row, cut in enumerate((lambda v: np.rot90(v[:, :, z]), lambda v: np.rot90(v[:, y, :]))):
        for ax, (key, kw) in zip(axes[row], [("mr", dict(cmap="gray")),
                                             ("ct", dict(cmap="gray", vmin=window[0], vmax=window[1])),
                                             ("mask", dict(cmap="gray", vmin=0, vmax=1)),
                                             ("labels", dict(cmap="tab20", vmin=0, vmax=19, interpolation="nearest"))]):
            ax.imshow(cut(vols[key]), **kw)
            hu = f" HU [{window[0]:g}, {window[1]:g}]" if key == "ct" else ""
            ax.set_title(f"{key}{hu} ({'axial' if row == 0 else 'coronal'})", fontsize=8)
            ax.axis("off")
    fig.suptitle(f"{folder.name}; {PHANTOM_NOTE}", fontsize=8)
    fig.tight_layout()
    return save_figure(fig, out)


def hu_histograms(data_dir: str | Path, subjects: Sequence[str] | None = None, out: str | Path | None = None):
    """Histograms of the CT (HU) per tissue label of head-phantom subjects, and the numbers per tissue."""
    import matplotlib.pyplot as plt
    import nibabel as nib

    from mudiff.data.head_phantom import HEAD_LABELS

    folders = sorted(p for p in Path(data_dir).iterdir() if (p / "labels.nii.gz").is_file())
    if subjects is not None:
        folders = [f for f in folders if f.name in set(subjects)]
    values: dict[str, list[np.ndarray]] = {}
    for folder in folders:
        ct = np.asarray(nib.load(folder / "ct.nii.gz").dataobj)
        labels = np.asarray(nib.load(folder / "labels.nii.gz").dataobj)
        for name, v in HEAD_LABELS.items():
            if name != "air" and (labels == v).any():
                values.setdefault(name, []).append(ct[labels == v])
    merged = {k: np.concatenate(v) for k, v in values.items()}
    table = pd.DataFrame([{"tissue": k, "voxels": len(v), "median_hu": float(np.median(v)),
                           "p5_hu": float(np.percentile(v, 5)), "p95_hu": float(np.percentile(v, 95))}
                          for k, v in merged.items()])
    fig, ax = plt.subplots(figsize=(8, 3.4))
    for name, v in merged.items():
        ax.hist(np.clip(v, -300, 2000), bins=120, range=(-300, 2000), histtype="step", density=True, label=name)
    ax.set_xlabel("HU (label = tissue with the largest fraction; partial volume widens each peak)")
    ax.set_yscale("log")
    ax.legend(fontsize=7, ncol=3)
    ax.set_title(f"CT per tissue label, {len(folders)} subject(s); {PHANTOM_NOTE}", fontsize=8)
    fig.tight_layout()
    save_figure(fig, out, table)
    return table


def plot_translations(slices: TestSlices, preds: dict[str, dict[str, np.ndarray]], rows: Sequence[int],
                      direction: str, out: str | Path | None = None):
    """For each slice in ``rows``: source, truth, each method's output and its absolute error map (HU for CT)."""
    import matplotlib.pyplot as plt

    source, target = direction.split("_to_")
    methods = [m for m in preds if direction in preds[m]]
    ncols = 2 + 2 * len(methods)
    fig, axes = plt.subplots(len(rows), ncols, figsize=(1.7 * ncols, 1.9 * len(rows)), squeeze=False)
    for r, k in enumerate(rows):
        mask = slices.mask[k] > 0.5
        panels = [(getattr(slices, source)[k], f"{slices.subject[k]} z={slices.z[k]}\n{source} (source)", source),
                  (getattr(slices, target)[k], f"{target} (real)", target)]
        for m in methods:
            pred = preds[m][direction][k]
            err = np.abs(pred - getattr(slices, target)[k]) * (HU_RANGE if target == "ct" else 1) * mask
            score_text = f"MAE {err[mask].mean():.0f} HU" if target == "ct" else f"MAE {err[mask].mean():.3f}"
            panels += [(pred, m, target), (err, f"|err| {score_text}", "error")]
        for ax, (img, title, kind) in zip(axes[r], panels):
            if kind == "error":
                ax.imshow(img, cmap="magma", vmin=0, vmax=500 if target == "ct" else 0.3)
            elif kind == "ct":  # a soft-tissue-to-bone window, -200..1500 HU
                ax.imshow(img, cmap="gray", vmin=hu_to_unit(-200.0), vmax=hu_to_unit(1500.0))
            else:
                ax.imshow(img, cmap="gray", vmin=0, vmax=1)
            ax.set_title(title, fontsize=6)
            ax.axis("off")
    fig.suptitle(f"{direction.replace('_to_', ' -> ')}; error maps 0-{'500 HU' if target == 'ct' else '0.3'}; "
                 f"{PHANTOM_NOTE}", fontsize=7)
    fig.tight_layout()
    return save_figure(fig, out)


def translation_explorer(slices: TestSlices, preds: dict[str, dict[str, np.ndarray]],
                         interactive: bool | None = None, out: str | Path | None = None):
    """Pick subject, slice, direction and method; headless: a static figure of the middle slice of the first
    subject in both directions with every method."""
    from mudiff.display.explore import is_interactive, show_figure, show_widget

    subjects = list(dict.fromkeys(slices.subject))
    if not is_interactive(interactive):
        first = np.flatnonzero(slices.subject == subjects[0])
        k = int(first[len(first) // 2])
        figs = [plot_translations(slices, preds, [k], d, out=None if out is None else
                                  Path(out).with_name(f"{Path(out).stem}_{d}.png")) for d in DIRECTIONS]
        return figs

    import ipywidgets as w

    pick_subject = w.Dropdown(options=subjects, description="subject")
    pick_slice = w.IntSlider(min=0, max=0, description="slice", continuous_update=False)
    pick_direction = w.ToggleButtons(options=list(DIRECTIONS), description="direction")
    pick_method = w.SelectMultiple(options=list(preds), value=tuple(preds), description="methods")
    output = w.Output()

    def rows_of_subject() -> np.ndarray:
        return np.flatnonzero(slices.subject == pick_subject.value)

    def draw(_=None) -> None:
        chosen = {m: preds[m] for m in pick_method.value}
        with output:
            output.clear_output(wait=True)
            k = int(rows_of_subject()[min(pick_slice.value, len(rows_of_subject()) - 1)])
            import matplotlib.pyplot as plt

            if not any(pick_direction.value in p for p in chosen.values()):
                print("no chosen method translates in this direction")
                return
            show_figure(plot_translations(slices, chosen, [k], pick_direction.value))
            plt.close("all")

    def new_subject(_=None) -> None:
        pick_slice.max = len(rows_of_subject()) - 1
        pick_slice.value = pick_slice.max // 2
        draw()

    pick_subject.observe(new_subject, "value")
    for widget in (pick_slice, pick_direction, pick_method):
        widget.observe(draw, "value")
    new_subject()
    return show_widget(w.VBox([w.HBox([pick_subject, pick_slice]), w.HBox([pick_direction, pick_method]), output]))


__all__ = ["TISSUE_CLASSES", "DIRECTIONS", "BulkDensity", "HistogramMatch", "TestSlices", "synthesise", "score",
           "SHARED_SUBJECTS", "comparison_configs", "train_comparison", "compare", "translate_volume", "CLAIMS",
           "long_scores", "TRANSLATOR_ALONE", "OWN_TRANSLATION", "translator_diagnostic",
           "results_table", "paired_p", "box_plots", "plot_head", "hu_histograms", "plot_translations",
           "translation_explorer", "otsu_threshold"]
