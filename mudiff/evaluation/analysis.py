"""Looking inside a trained MU-Diff (spec section 7, the paper's Fig. 2b and Fig. 5).

- :func:`fixed_draws`: N seeded (x0, sources, t, x_t, x_{t+1}, z) draws from a split, the common inputs of every
  analysis here (the same seed gives the same draws, whatever the device).
- :func:`adapter_maps`: tau's per-source gate and feature maps (``f2.tau.pairs.{i}.gate_a|gate_b|fuse`` and phi2's
  adapted source maps), with a score of how much each map concentrates on the lesion.
- :func:`critic_masks`: the critic's attentive masks M1, M2 over the posterior samples x_t^{p1}, x_t^{p2} of both
  predictions at a chosen t (and over the real x_t, for reference); :func:`critic_separation`: whether its logits
  tell the real x_t from them.
- :func:`p1_p2_mutual`: x^{p1} vs x^{p2} vs the mutual result, scored slice by slice.
- :func:`h1_h2_cka`: CKA of every encoder (or decoder) block of H1 against every one of H2 on fixed draws
  (:mod:`mudiff.evaluation.cka`).

Maps are reduced over channels: gates (sigmoids) by their channel mean, so they stay in [0, 1]; feature maps by the
channel mean of their magnitude.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import torch
from torch import Tensor, nn

from mudiff.display.viz import ERROR_VMAX, PHANTOM_NOTE, QUICK_NOTE, save_figure
from mudiff.sample import unit_slices

MAP_KINDS = ("feature", "gate_a", "gate_b", "fuse")
"""Per pair i (source i with source i+1 mod n): phi2's adapted map of source i, the gate z_a on it, the leak gate z_b,
and the fused map z_b * f'_i + (1 - z_b) * f_{i+1}."""
MAP_LABELS = {"feature": "phi2 map |f_i|", "gate_a": "gate z_a", "gate_b": "leak gate z_b", "fuse": "fused |.|"}


def run_label(run_dir: str | Path) -> str:
    """'<run_dir> (<variant>, <task>, step <last logged step>)', for titles."""
    import json

    from mudiff.train import read_stats

    run_dir = Path(run_dir)
    cfg = json.loads((run_dir / "config.json").read_text())
    stats = run_dir / "stats.jsonl"
    steps = [r["step"] for r in read_stats(stats)] if stats.is_file() else []
    step = f", step {max(steps)}" if steps else ""
    return f"{run_dir} ({cfg['model']['variant']}, {cfg['data']['task']}{step})"


# ---- fixed draws ------------------------------------------------------------------------------------------------
@dataclass
class Draws:
    """N fixed inputs of the generators, tensors on one device.

    x0: (N, 1, H, W) clean target and sources (N, n, H, W), both in [-1, 1]; t: (N,) long; x_t, x_tp1: (N, 1, H, W)
    the forward pair of x0 at t; z: (N, z_dim); brain, lesion: (N, H, W) {0, 1} masks (float); subjects, z_slice,
    index: per draw, the subject id, axial position and global slice index.
    """

    x0: Tensor
    sources: Tensor
    t: Tensor
    x_t: Tensor
    x_tp1: Tensor
    z: Tensor
    brain: Tensor
    lesion: Tensor
    subjects: list[str] = field(default_factory=list)
    z_slice: list[int] = field(default_factory=list)
    index: list[int] = field(default_factory=list)

    def __len__(self) -> int:
        return len(self.t)


def spread_indices(n_items: int, n: int | None) -> list[int]:
    """``n`` evenly spaced indices of 0..n_items-1 (all when ``n`` is None or >= n_items)."""
    if n is None or n >= n_items:
        return list(range(n_items))
    return np.unique(np.linspace(0, n_items - 1, n).round().astype(int)).tolist()


def lesion_indices(dataset, n: int) -> list[int]:
    """Indices of ``n`` dataset items with a lesion, evenly spaced over the lesion slices ranked by lesion area
    (largest first); slices without a lesion fill up when there are too few lesion slices."""
    areas = np.array([float(dataset[i]["lesion_mask"].sum()) for i in range(len(dataset))])
    order = np.argsort(-areas, kind="stable")
    with_lesion = order[areas[order] > 0]
    chosen = [int(with_lesion[k]) for k in spread_indices(len(with_lesion), n)] if len(with_lesion) else []
    chosen += [int(i) for i in order if int(i) not in chosen][: max(0, n - len(chosen))]
    return chosen[:n]


def fixed_draws(dataset, schedule, z_dim: int, n: int | None = None, seed: int = 0, t: int | None = None,
                indices: Sequence[int] | None = None, device: str | torch.device = "cpu") -> Draws:
    """Seeded draws (x0, sources, t, x_t, x_{t+1}, z) from a :class:`~mudiff.data.dataset.TaskDataset`.

    indices: the items (default: ``n`` evenly spaced ones, all when ``n`` is None); t: one generator time index
    for every draw, or None to cycle through 0..T-1 (draw k has t = k mod T). The forward noise and z come from
    a CPU generator seeded with ``seed``, so the draws do not depend on the device or on global RNG state.
    """
    chosen = list(indices) if indices is not None else spread_indices(len(dataset), n)
    if not chosen:
        raise ValueError("no draws: the dataset is empty or n = 0")
    steps = schedule.num_timesteps
    if t is not None and not 0 <= t < steps:
        raise ValueError(f"t must lie in 0..{steps - 1} (the generator's time indices), got {t}")
    items = [dataset[i] for i in chosen]
    x0 = torch.stack([it["target"] for it in items])
    tt = torch.full((len(items),), t, dtype=torch.long) if t is not None else torch.arange(len(items)) % steps
    with torch.random.fork_rng(devices=[]):  # q_sample_pairs draws from the global RNG: keep it untouched
        torch.manual_seed(seed)
        x_t, x_tp1 = schedule.to("cpu").q_sample_pairs(x0, tt)
        z = torch.randn(len(items), z_dim)
    move = dict(device=device)
    return Draws(x0.to(**move), torch.stack([it["sources"] for it in items]).to(**move), tt.to(**move),
                 x_t.to(**move), x_tp1.to(**move), z.to(**move),
                 torch.stack([it["brain_mask"][0] for it in items]).to(**move),
                 torch.stack([it["lesion_mask"][0] for it in items]).to(**move),
                 [it["subject"] for it in items], [int(it["z"]) for it in items], [int(it["index"]) for it in items])


def lesion_concentration(maps: np.ndarray, brain: np.ndarray, lesion: np.ndarray) -> float:
    """How much a map concentrates on the lesion: (mean inside the lesion - mean over the rest of the brain) /
    sd over the brain, pooled over the slices (N, H, W). > 0: higher on the lesion; NaN without lesion pixels."""
    maps, brain, lesion = (np.asarray(a, np.float64) for a in (maps, brain, lesion))
    inside, rest = (lesion > 0.5) & (brain > 0.5), (lesion <= 0.5) & (brain > 0.5)
    if not inside.any() or not rest.any():
        return float("nan")
    sd = maps[brain > 0.5].std()
    return float((maps[inside].mean() - maps[rest].mean()) / sd) if sd > 0 else 0.0


# ---- tau's gate and feature maps ----------------------------------------------------------------------------------
@dataclass
class AdapterMaps:
    """tau's maps for a batch of draws.

    pairs: one dict per source pair i (source i with source i+1 mod n): ``pair``, ``source``, ``partner`` and the
    maps ``feature``, ``gate_a``, ``gate_b``, ``fuse``, each (N, H, W) (gates in [0, 1], the others >= 0).
    scores: one row per pair and map kind with its :func:`lesion_concentration` and the mean over the brain.
    """

    pairs: list[dict]
    scores: pd.DataFrame
    draws: Draws
    prediction: np.ndarray  # x^{p2} of the draws, (N, H, W) in [0, 1]


@torch.no_grad()
def adapter_maps(generator: nn.Module, draws: Draws, source_names: Sequence[str]) -> AdapterMaps:
    """Run the MU-Diff pair on ``draws`` and record tau's per-source maps (``f2.phi`` split per source and
    ``f2.tau.pairs.{i}.gate_a|gate_b|fuse``). ``generator``: a :class:`~mudiff.models.MuDiff` with tau."""
    from mudiff.models.adapters import ContrastAdapter
    from mudiff.models.hooks import record_features

    tau = getattr(getattr(generator, "f2", None), "tau", None)
    if not isinstance(tau, ContrastAdapter):
        raise ValueError(f"the generator (variant {getattr(generator, 'variant', '?')!r}) has no contrast-aware "
                         "adapter tau; train model.variant=mudiff")
    n = draws.sources.shape[1]
    if len(source_names) != n:
        raise ValueError(f"{len(source_names)} source names for {n} sources")
    if not tau.pairs:
        raise ValueError("a single source has no pair: tau is the identity and has no gates")
    names = ["f2.phi", *(f"f2.tau.{name}" for name in tau.feature_names())]
    was_training = generator.training
    generator.eval()
    try:
        with record_features(generator, names) as feats:
            _, x_p2 = generator(draws.x_tp1, draws.sources, draws.t, draws.z)
    finally:
        generator.train(was_training)
    per_source = feats["f2.phi"].float().split(tau.channels, dim=1)
    brain, lesion = draws.brain.cpu().numpy(), draws.lesion.cpu().numpy()
    pairs, rows = [], []
    for i in range(len(tau.pairs)):
        maps = {"feature": per_source[i].abs().mean(1),
                "gate_a": feats[f"f2.tau.pairs.{i}.gate_a"].float().mean(1),
                "gate_b": feats[f"f2.tau.pairs.{i}.gate_b"].float().mean(1),
                "fuse": feats[f"f2.tau.pairs.{i}.fuse"].float().abs().mean(1)}
        maps = {k: v.cpu().numpy() for k, v in maps.items()}
        pairs.append({"pair": i, "source": source_names[i], "partner": source_names[(i + 1) % n], **maps})
        for kind, m in maps.items():
            rows.append({"pair": i, "source": source_names[i], "partner": source_names[(i + 1) % n], "map": kind,
                         "lesion_concentration": lesion_concentration(m, brain, lesion),
                         "brain_mean": float(m[brain > 0.5].mean()) if (brain > 0.5).any() else float("nan")})
    return AdapterMaps(pairs, pd.DataFrame(rows), draws, unit_slices(x_p2))


def plot_adapter_maps(result: AdapterMaps, kinds: Sequence[str] = MAP_KINDS, slot: int | None = None,
                      out: str | Path | None = None, suptitle: str = "", note: str = "") -> plt.Figure:
    """One draw (``slot``: default the one with the largest lesion): its sources with the lesion outline, then one
    row per source pair with each map kind; the map's lesion concentration (over all draws) in its title. Each map
    is shown over its own range inside the brain (given in its title; gates lie in [0, 1])."""
    d = result.draws
    lesion_area = d.lesion.flatten(1).sum(1).cpu().numpy()
    k = int(np.argmax(lesion_area)) if slot is None else slot
    brain, lesion = d.brain[k].cpu().numpy(), d.lesion[k].cpu().numpy()
    scores = result.scores.set_index(["pair", "map"])["lesion_concentration"]
    n_cols = max(len(kinds), d.sources.shape[1] + 2)
    fig, axes = plt.subplots(1 + len(result.pairs), n_cols, figsize=(2.0 * n_cols, 2.0 * (1 + len(result.pairs))),
                             squeeze=False)
    for ax in axes.ravel():
        ax.set_xticks([]), ax.set_yticks([]), ax.axis("off")
    sources = ((d.sources[k].float() + 1) / 2).cpu().numpy()
    top = [(name, sources[j]) for j, name in enumerate(p["source"] for p in result.pairs)]
    top += [("target (GT)", unit_slices(d.x0[k:k + 1])[0]), ("x^p2", result.prediction[k])]
    for ax, (title, img) in zip(axes[0], top):
        ax.axis("on")
        ax.imshow(img, cmap="gray", vmin=0, vmax=1, interpolation="nearest")
        ax.contour(lesion, levels=[0.5], colors="red", linewidths=0.6)
        ax.set_title(title, fontsize=8)
    for r, pair in enumerate(result.pairs, start=1):
        for c, kind in enumerate(kinds):
            ax = axes[r, c]
            ax.axis("on")
            img = pair[kind][k]
            inside = img[brain > 0.5] if (brain > 0.5).any() else img.ravel()
            lo, hi = float(inside.min()), max(float(inside.max()), float(inside.min()) + 1e-8)
            ax.imshow(np.where(brain > 0.5, img, lo), cmap="viridis", vmin=lo, vmax=hi, interpolation="nearest")
            ax.contour(lesion, levels=[0.5], colors="red", linewidths=0.6)
            ax.set_title(f"{MAP_LABELS[kind]} [{lo:.2f}, {hi:.2f}]\nlesion conc. "
                         f"{scores[(pair['pair'], kind)]:+.2f}", fontsize=7)
            if c == 0:
                ax.set_ylabel(f"pair {pair['pair']}: {pair['source']}\nwith {pair['partner']}", fontsize=8)
    fig.suptitle((suptitle or f"tau's maps per source, {d.subjects[k]} z={d.z_slice[k]}, t={int(d.t[k])} "
                 f"(red: lesion; lesion conc. = (mean on lesion - mean on rest of brain) / sd over brain)\n"
                 f"{PHANTOM_NOTE}") + (f"\n{note}" if note else ""), fontsize=8)
    fig.tight_layout()
    return save_figure(fig, out, result.scores)


# ---- the critic's attentive masks --------------------------------------------------------------------------------
@dataclass
class CriticMasks:
    """The critic's view of both predictions at the draws' t. Arrays (N, H, W); images in [0, 1] (x_t's mapped
    like the images, from [-1, 1]), masks in [0, 1]; logits (N,) (higher: judged real). The ``*_p2`` entries
    are None for a single network; ``head``: the critic's mask head (``model.mask_head``)."""

    x0: np.ndarray
    x_p1: np.ndarray
    x_p2: np.ndarray | None
    xt_p1: np.ndarray
    xt_p2: np.ndarray | None
    x_t: np.ndarray
    m1: np.ndarray
    m2: np.ndarray | None
    m_real: np.ndarray
    logits: pd.DataFrame
    draws: Draws
    head: str


@torch.no_grad()
def critic_masks(method, draws: Draws, seed: int = 0) -> CriticMasks:
    """M_j = the critic's mask on x_t^{pj} ~ q(x_t | x_{t+1}, x0 = x^{pj}) (spec section 4, L_m), for the draws'
    (x_{t+1}, t, z); also the mask on the real x_t. ``method``: a trained MU-Diff method (``sampler.method``),
    with ``generator``, ``critic`` and ``schedule``. The posterior noise is seeded (one draw shared by x^{p1} and
    x^{p2}, as both predictions share z)."""
    critic = getattr(method, "critic", None)
    if critic is None:
        raise ValueError("the run was trained without a critic (train.use_critic=false): there are no masks")
    from mudiff.models.critic import Critic

    generator, schedule = method.generator, method.schedule
    sees = method.cfg.model.critic_sees_sources
    size = tuple(draws.x0.shape[-2:])
    modes = (generator.training, critic.training)
    generator.eval(), critic.eval()
    try:
        x_p1, x_p2 = generator(draws.x_tp1, draws.sources, draws.t, draws.z)
        noise = torch.randn(draws.x0.shape, generator=torch.Generator().manual_seed(seed)).to(draws.x0.device)
        xt = {"p1": schedule.posterior_sample(x_p1, draws.x_tp1, draws.t, noise)}
        if x_p2 is not None:
            xt["p2"] = schedule.posterior_sample(x_p2, draws.x_tp1, draws.t, noise)
        xt["real"] = draws.x_t
        outs = {k: critic(v.float(), draws.x_tp1, draws.t, draws.sources if sees else None) for k, v in xt.items()}
    finally:
        generator.train(modes[0]), critic.train(modes[1])
    masks = {k: Critic.mask(o[1].float(), size)[:, 0].cpu().numpy() for k, o in outs.items()}
    logits = pd.DataFrame({"subject": draws.subjects, "z": draws.z_slice, "t": draws.t.cpu().numpy(),
                           **{f"logit_{k}": o[0].float().cpu().numpy() for k, o in outs.items()},
                           **{f"mask_mean_{k}": m.mean((1, 2)) for k, m in masks.items()}})
    return CriticMasks(unit_slices(draws.x0), unit_slices(x_p1), None if x_p2 is None else unit_slices(x_p2),
                       unit_slices(xt["p1"]), unit_slices(xt["p2"]) if "p2" in xt else None,
                       unit_slices(draws.x_t), masks["p1"], masks.get("p2"), masks["real"], logits, draws,
                       method.cfg.model.mask_head)


def critic_separation(result: CriticMasks) -> pd.DataFrame:
    """Whether the critic tells the real x_t from the posterior samples x_t^{pj}, from :func:`critic_masks`' logits:
    per t and over all draws (``t = "all"``), the share of draws whose real x_t scores above x_t^{pj}
    (``real_above_pj``: 0.5 is chance, 1 a critic that always tells them apart) and the mean logits. Draws with
    ``t=None`` in :func:`fixed_draws` cover every t."""
    logits = result.logits
    fakes = [k for k in ("p1", "p2") if f"logit_{k}" in logits]
    rows = []
    for t, group in [*logits.groupby("t"), ("all", logits)]:
        row = {"t": t, "n": len(group), "logit_real": group["logit_real"].mean()}
        for k in fakes:
            row[f"logit_{k}"] = group[f"logit_{k}"].mean()
            row[f"real_above_{k}"] = (group["logit_real"] > group[f"logit_{k}"]).mean()
        rows.append(row)
    return pd.DataFrame(rows)


HEADS = {"fixed": "fixed mask head (never trained: a random projection, as published)",
         "learned": "learned mask head (trained as a per-location real/fake classifier)"}
"""How the masks' figure names each ``model.mask_head``."""


def plot_critic_masks(result: CriticMasks, n_show: int = 3, out: str | Path | None = None,
                      suptitle: str = "", note: str = "") -> plt.Figure:
    """Per draw: GT, then M1 over x^{p1}, M2 over x^{p2} and the mask on the real x_t over the GT, as heat maps
    on the grey images. All masks share one colour range (their 1st-99th percentiles over the draws shown, given
    in the colour bar), so small differences between M1, M2 and the real mask stay visible."""
    show = spread_indices(len(result.draws), n_show)
    masks = [m[show] for m in (result.m1, result.m2, result.m_real) if m is not None]
    lo, hi = np.percentile(np.concatenate([m.ravel() for m in masks]), [1, 99])
    hi = max(hi, lo + 1e-6)
    cols = ["target (GT)", "x^p1", "M1 over x^p1", "x^p2", "M2 over x^p2", "M (real x_t) over GT"]
    fig, axes = plt.subplots(len(show), len(cols), figsize=(2.0 * len(cols), 2.1 * len(show)), squeeze=False)
    heat = None
    for r, k in enumerate(show):
        p2 = None if result.x_p2 is None else result.x_p2[k]
        panels = [(result.x0[k], None), (result.x_p1[k], None), (result.x_p1[k], result.m1[k]), (p2, None),
                  (p2, None if result.m2 is None else result.m2[k]), (result.x0[k], result.m_real[k])]
        for c, (img, mask) in enumerate(panels):
            ax = axes[r, c]
            ax.set_xticks([]), ax.set_yticks([])
            if img is None:
                ax.axis("off")
                continue
            ax.imshow(img, cmap="gray", vmin=0, vmax=1, interpolation="nearest")
            if mask is not None:
                heat = ax.imshow(mask, cmap="jet", vmin=lo, vmax=hi, alpha=0.5, interpolation="bilinear")
                ax.text(1, 1, f"mean {mask.mean():.3f}", color="white", fontsize=6, va="top")
            if r == 0:
                ax.set_title(cols[c], fontsize=8)
            if c == 0:
                d = result.draws
                ax.set_ylabel(f"{d.subjects[k]} z={d.z_slice[k]}\nt={int(d.t[k])}", fontsize=7)
    if heat is not None:
        fig.colorbar(heat, ax=axes.ravel().tolist(), fraction=0.02, label=f"mask M (shown range {lo:.3f}-{hi:.3f})")
    fig.suptitle((suptitle or f"critic masks M_j = sigmoid(mask head) on the posterior samples x_t^pj, bilinear to "
                 f"image size, over the predictions; {HEADS[result.head]}\n{PHANTOM_NOTE}")
                 + (f"\n{note}" if note else ""), fontsize=8)
    return save_figure(fig, out, result.logits)


# ---- x^p1 vs x^p2 vs mutual --------------------------------------------------------------------------------------
PREDICTIONS = ("x_p1", "x_p2", "mutual")


def p1_p2_mutual(sampler, dataset, n: int | None = None, seed: int = 0, batch_size: int | None = None):
    """Synthesise ``n`` evenly spaced items and score x^{p1}, x^{p2} and mutual (float protocol, brain and
    lesion). Returns (:class:`~mudiff.demo.SplitSynthesis`, summary): the summary has per prediction the mean and
    sd over slices of every metric and the mean paired difference to mutual (positive: better than mutual)."""
    from mudiff.demo import synthesise_split
    from mudiff.evaluation.metrics import HIGHER_IS_BETTER, METRICS, REGIONS

    result = synthesise_split(sampler, dataset, n=n, seed=seed, batch_size=batch_size)
    df = result.metrics[result.metrics["prediction"].isin(PREDICTIONS)]
    cols = [f"{m}_{r}" for r in REGIONS for m in METRICS]
    g = df.groupby("prediction", sort=False)[cols]
    summary = g.mean().add_suffix("_mean").join(g.std(ddof=1).add_suffix("_sd"))
    mutual = df[df["prediction"] == "mutual"].set_index(["subject", "slice"])[cols]
    for name in summary.index:
        mine = df[df["prediction"] == name].set_index(["subject", "slice"])[cols]
        for col in ("psnr_B", "ssim_B", "mae_B"):
            sign = 1 if HIGHER_IS_BETTER[col.split("_")[0]] else -1
            summary.loc[name, f"{col}_vs_mutual"] = sign * float((mine[col] - mutual[col]).mean())
    summary["slices"] = g.size()
    summary = summary.reindex([p for p in PREDICTIONS if p in summary.index]).reset_index()
    summary.attrs["protocol"] = df.attrs.get("protocol", "float")
    return result, summary


def plot_p1_p2_mutual(result, summary: pd.DataFrame, n_show: int = 3, out: str | Path | None = None,
                      suptitle: str = "", note: str = "") -> plt.Figure:
    """Rows of GT, x^{p1}, x^{p2}, mutual, |x^{p1} - x^{p2}| and the errors, with per-slice PSNR_B in the titles;
    a last row of bars: mean PSNR_B and SSIM_B per prediction (sd as error bars)."""
    from mudiff.evaluation.metrics import describe_protocol

    shown = list(range(len(result.rows)))[:: max(1, len(result.rows) // n_show)][:n_show]
    rows = [result.rows[k] for k in shown]
    preds = [p for p in PREDICTIONS if rows and rows[0][p] is not None]
    psnr = {p: result.metrics.loc[result.metrics["prediction"] == p, "psnr_B"].to_numpy()[shown] for p in preds}
    cols = ["target (GT)", *preds, "|x^p1 - x^p2|", *(f"|{p} - GT|" for p in preds)]
    fig = plt.figure(figsize=(1.9 * len(cols), 2.0 * len(rows) + 3.0))
    sub_img, sub_bar = fig.subfigures(3, 1, height_ratios=[0.45, 2.0 * len(rows), 2.4])[1:]
    axes = sub_img.subplots(len(rows), len(cols), squeeze=False)
    for r, row in enumerate(rows):
        inside = row["brain_mask"] > 0.5
        p2 = row["x_p2"]
        panels = [(row["target"], "gray", 1.0), *((row[p], "gray", 1.0) for p in preds),
                  (None if p2 is None else np.abs(row["x_p1"] - p2) * inside, "inferno", ERROR_VMAX),
                  *((np.abs(row[p] - row["target"]) * inside, "inferno", ERROR_VMAX) for p in preds)]
        for c, (img, cmap, vmax) in enumerate(panels):
            ax = axes[r, c]
            ax.set_xticks([]), ax.set_yticks([])
            if img is None:
                ax.axis("off")
                continue
            ax.imshow(img, cmap=cmap, vmin=0, vmax=vmax, interpolation="nearest")
            title = cols[c] if r == 0 else ""
            if 1 <= c <= len(preds):
                title += f"\nPSNR_B {psnr[preds[c - 1]][r]:.2f}"
            ax.set_title(title, fontsize=7)
            if c == 0:
                ax.set_ylabel(row["title"], fontsize=7)
    bars = sub_bar.subplots(1, 2)
    for ax, col in zip(bars, ("psnr_B", "ssim_B")):
        ax.bar(summary["prediction"], summary[f"{col}_mean"], yerr=summary[f"{col}_sd"].fillna(0),
               color=["tab:blue", "tab:green", "tab:orange"][: len(summary)], capsize=3)
        for x, v in enumerate(summary[f"{col}_mean"]):
            ax.text(x, v, f"{v:.3f}", ha="center", va="bottom", fontsize=7)
        lo = float((summary[f"{col}_mean"] - summary[f"{col}_sd"].fillna(0)).min())
        ax.set_ylim(lo - 0.1 * abs(lo), None)
        ax.set_title(f"{col} (mean +- sd over {int(summary['slices'].max())} slices)", fontsize=8)
    fig.suptitle((suptitle or f"x^p1 vs x^p2 vs mutual; error maps in [0, {ERROR_VMAX}]\n"
                 f"{describe_protocol(summary.attrs.get('protocol', 'float'))}\n{PHANTOM_NOTE}")
                 + (f"\n{note}" if note else ""), fontsize=7)
    return save_figure(fig, out, summary)


# ---- CKA of H1 vs H2 ---------------------------------------------------------------------------------------------
@dataclass
class CKAResult:
    """CKA of H1's blocks (rows) against H2's (columns) for one part of the U-Net."""

    part: str
    matrix: np.ndarray
    blocks1: list[str]
    blocks2: list[str]
    info: dict

    @property
    def diagonal(self) -> pd.DataFrame:
        """CKA of each block of H1 with the same block of H2."""
        k = min(len(self.blocks1), len(self.blocks2))
        return pd.DataFrame({"part": self.part, "block": self.blocks1[:k], "cka": np.diag(self.matrix)[:k]})


def generator_wrappers(generator: nn.Module, draws: Draws):
    """H1's and H2's generators as one-input modules over the same draws
    (:class:`~mudiff.evaluation.cka.FixedNoiseWrapper`); F2 gets F1's predictions on the draws, as in the mutual pair's
    forward pass."""
    from mudiff.evaluation.cka import FixedNoiseWrapper
    from mudiff.models.generators import F2

    if getattr(generator, "f2", None) is None:
        raise ValueError("a single network has no H2 to compare with; use a two-network run")
    args = (draws.x_tp1, draws.sources, draws.t, draws.z)
    x_p1 = None
    if isinstance(generator.f2, F2):
        with torch.no_grad():
            was = generator.training
            generator.eval()
            x_p1 = generator.f1(*args).float()
            generator.train(was)
    return FixedNoiseWrapper(generator.f1, *args), FixedNoiseWrapper(generator.f2, *args, x_p1=x_p1)


def h1_h2_cka(generator: nn.Module, draws: Draws, part: str = "encoder", batch_size: int = 8,
              device: str | torch.device | None = None) -> CKAResult:
    """CKA (:func:`mudiff.evaluation.cka.cka_matrix`, minibatch linear CKA) of every ``part`` block ("encoder",
    "decoder" or "all") of H1 against every one of H2, on the draws (>= 4 per batch; a short last batch is merged)."""
    from mudiff.evaluation.cka import backbone_block_names, cka_matrix, index_batches

    h1, h2 = generator_wrappers(generator, draws)
    blocks1 = backbone_block_names(generator.f1, part)
    blocks2 = backbone_block_names(generator.f2, part)
    device = device if device is not None else draws.x0.device
    matrix, info = cka_matrix(h1, h2, blocks1, blocks2, index_batches(len(draws), batch_size), device=str(device),
                              names=("H1", "H2"))
    short = [b.removeprefix("generator.backbone.") for b in blocks1]
    info = {**info, "t": draws.t.cpu().tolist()}
    return CKAResult(part, matrix, short, [b.removeprefix("generator.backbone.") for b in blocks2], info)


def cka_summary(results: Sequence[CKAResult]) -> pd.DataFrame:
    """Per part: the mean CKA of same-position blocks, its share below 0.55 (the paper: encoders mostly < 0.55),
    the first and last blocks' CKA (the paper: first decoder blocks > 0.7, the last dissimilar again)."""
    rows = []
    for res in results:
        d = res.diagonal["cka"].to_numpy()
        rows.append({"part": res.part, "blocks": len(d), "mean_same_block": float(d.mean()),
                     "share_below_0.55": float((d < 0.55).mean()), "first_block": float(d[0]),
                     "last_block": float(d[-1]), "draws": res.info["n_samples"],
                     "estimator": res.info["estimator"]})
    return pd.DataFrame(rows)


__all__ = ["QUICK_NOTE", "run_label", "Draws", "fixed_draws",
           "spread_indices", "lesion_indices", "lesion_concentration", "AdapterMaps",
           "adapter_maps", "plot_adapter_maps", "CriticMasks", "critic_masks", "critic_separation", "plot_critic_masks",
           "p1_p2_mutual", "plot_p1_p2_mutual", "CKAResult", "generator_wrappers", "h1_h2_cka", "cka_summary",
           "MAP_KINDS"]
