"""Paired tests between methods, claims with verdicts over training seeds, results tables (CSV / Markdown) and box
plots of per-unit scores.

Inputs are ``slice_metrics`` frames, one per method, computed on the same slices. A unit is a subject
(per-subject mean over its slices, the default: slices of one subject are not independent) or a slice.
Every table and figure carries the metric protocol line (``describe_protocol``).
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import pandas as pd
from scipy.stats import t as student_t
from scipy.stats import ttest_1samp, ttest_rel, wilcoxon

from mudiff.display.viz import save_figure
from mudiff.evaluation.metrics import HIGHER_IS_BETTER, METRICS, aggregate, describe_protocol, unit_scores

ALPHA = 0.05
DECIMALS = {"psnr": 2, "ssim": 3, "mae": 3}
REGION_NAMES = {"B": "whole brain", "T": "lesion"}


VERDICTS = ("reproduced", "not reproduced", "inconclusive at this scale")


def mean_interval(values: np.ndarray) -> tuple[float, float, float, float]:
    """Mean, 95 % t interval and one-sample t-test p (against 0) of ``values`` (NaN where n < 2; equal values:
    a zero-width interval, p 0 unless they are 0)."""
    values = np.asarray(values, float)
    mean = float(values.mean()) if len(values) else math.nan
    if len(values) < 2:
        return mean, math.nan, math.nan, math.nan
    sem = float(values.std(ddof=1) / math.sqrt(len(values)))
    sem = 0.0 if sem <= 1e-12 * max(1.0, abs(mean)) else sem  # rounding noise of equal values
    half = float(student_t.ppf(0.975, len(values) - 1)) * sem
    with np.errstate(invalid="ignore", divide="ignore"):
        p = float(ttest_1samp(values, 0.0).pvalue) if sem > 0 else (0.0 if mean != 0 else 1.0)
    return mean, mean - half, mean + half, p


def verdict(kind: str, low: float, high: float, per_seed: Sequence[float], seed_sd: float,
            margin: float | None = None) -> str:
    """The verdict on an effect oriented so that > 0 favours ``a`` (the claim's side).

    ``beats``: reproduced when the 95 % interval lies above 0, every seed agrees and the effect exceeds the
    seed-to-seed spread; not reproduced when all of this holds in the opposite direction; else inconclusive.
    ``no_gain`` ("a gains nothing over b"): not reproduced when ``a`` beats ``b`` by the rule above; reproduced
    when the interval and every seed lie below the equivalence ``margin`` (the largest gain still called none:
    a gain that the data cannot rule out is not shown to be absent); else inconclusive.
    """
    if kind == "no_gain" and margin is None:
        raise ValueError("a no_gain verdict needs an equivalence margin")
    mean = (low + high) / 2
    per_seed = [v for v in per_seed if np.isfinite(v)]
    spread_ok = not np.isfinite(seed_sd) or abs(mean) > seed_sd

    def holds(sign: int) -> bool:
        return (np.isfinite(low) and sign * (low if sign > 0 else high) > 0 and spread_ok
                and all(sign * v > 0 for v in per_seed))

    if kind == "no_gain":
        if holds(+1):
            return "not reproduced"
        bounded = np.isfinite(high) and high < margin and all(v < margin for v in per_seed)
        return "reproduced" if bounded else "inconclusive at this scale"
    if holds(+1):
        return "reproduced"
    return "not reproduced" if holds(-1) else "inconclusive at this scale"


@dataclass(frozen=True)
class Claim:
    """``a`` beats ``b`` on ``metrics`` (``kind="beats"``), or ``a`` gains nothing over ``b`` (``"no_gain"``: no
    gain of ``margin`` or more, :func:`~mudiff.evaluation.stats.verdict`)."""

    text: str
    a: tuple[str, str]  # (run, output)
    b: tuple[str, str]
    metrics: tuple[str, ...]
    kind: str = "beats"
    margin: float | None = None  # no_gain: the largest gain still called none, in the metrics' unit


def paired_effect(scores: pd.DataFrame, a: tuple[str, str], b: tuple[str, str], metric: str) -> dict[str, Any]:
    """Effect of ``a`` over ``b`` (each a (run, output) pair) on ``metric`` across test subjects, oriented so that
    > 0 favours ``a`` (MAE: lower is better). ``scores``: one row per run, output, seed, subject (and slice: a
    subject's slices are averaged). Seeds pooled: per subject the mean over seeds of the paired difference; per
    seed: the mean difference over subjects. Subjects without a value (no lesion slice) are left out."""
    sign = -1.0 if metric.startswith("mae") else 1.0

    def pick(run_output: tuple[str, str]) -> pd.DataFrame:
        run, output = run_output
        sel = scores[(scores["run"] == run) & (scores["output"] == output)]
        return sel.pivot_table(index="subject", columns="seed", values=metric)

    pa, pb = pick(a), pick(b)
    seeds = sorted(set(pa.columns) & set(pb.columns))
    diff = sign * (pa[seeds] - pb[seeds]).dropna(how="all")
    if diff.empty:
        return {"n_subjects": 0, "seeds": []}
    pooled = diff.mean(axis=1).dropna().to_numpy()
    mean, low, high, p = mean_interval(pooled)
    per_seed = {int(s): float(diff[s].mean()) for s in seeds}
    seed_sd = float(np.std(list(per_seed.values()), ddof=1)) if len(seeds) > 1 else math.nan
    with np.errstate(invalid="ignore"):
        p_w = float(wilcoxon(pooled).pvalue) if len(pooled) > 1 and np.any(pooled != 0) else math.nan
    return {"n_subjects": len(pooled), "seeds": seeds, "effect": mean, "ci_low": low, "ci_high": high,
            "p_ttest": p, "p_wilcoxon": p_w, "per_seed": per_seed, "seed_sd": seed_sd}


def claims_table(scores: pd.DataFrame, claims: Sequence[Claim]) -> pd.DataFrame:
    """One row per (claim, metric): the effect across subjects (seeds pooled) with its 95 % interval, the paired
    t-test and Wilcoxon p, the per-seed effects and their spread, and the verdict. Claims whose runs are not
    (yet) trained are listed as not run."""
    rows = []
    for claim in claims:
        for metric in claim.metrics:
            e = paired_effect(scores, claim.a, claim.b, metric)
            row = {"claim": claim.text, "metric": metric, "a": "/".join(claim.a), "b": "/".join(claim.b)}
            if not e["seeds"]:
                rows.append({**row, "verdict": "not run"})
                continue
            rows.append({**row, "n_subjects": e["n_subjects"], "n_seeds": len(e["seeds"]), "effect": e["effect"],
                         "ci_low": e["ci_low"], "ci_high": e["ci_high"], "p_ttest": e["p_ttest"],
                         "p_wilcoxon": e["p_wilcoxon"], "seed_sd": e["seed_sd"],
                         "per_seed": ", ".join(f"{v:+.3g}" for v in e["per_seed"].values()),
                         "verdict": verdict(claim.kind, e["ci_low"], e["ci_high"], list(e["per_seed"].values()),
                                            e["seed_sd"], claim.margin)})
    return pd.DataFrame(rows)


def paired_test(a: pd.DataFrame, b: pd.DataFrame, metric: str, by: str = "subject") -> dict:
    """Paired t-test and Wilcoxon signed-rank test of column ``metric`` (e.g. "psnr_B") between two methods.

    Units are paired by subject id (``by="subject"``) or by (subject, slice); units with NaN in either method
    (e.g. subjects without a lesion slice) are dropped. Returns dict(n, mean_diff (a - b), p_ttest, p_wilcoxon);
    p-values are NaN for fewer than 2 pairs. Raises ValueError when the two frames cover different units.
    """
    sa, sb = unit_scores(a, by)[metric], unit_scores(b, by)[metric]
    only_a, only_b = sa.index.difference(sb.index), sb.index.difference(sa.index)
    if len(only_a) or len(only_b):
        raise ValueError(f"methods scored on different {by}s: only in the first {list(only_a)[:5]}, "
                         f"only in the second {list(only_b)[:5]} (score every method on the same test slices)")
    pairs = pd.concat([sa, sb.reindex(sa.index)], axis=1, keys=["a", "b"]).dropna()
    diff = pairs.a - pairs.b
    result = dict(n=len(pairs), mean_diff=float(diff.mean()) if len(pairs) else np.nan,
                  p_ttest=np.nan, p_wilcoxon=np.nan)
    if len(pairs) >= 2:
        with np.errstate(invalid="ignore"):  # all-zero differences: scipy returns p = 1 after a 0/0 warning
            result.update(p_ttest=float(ttest_rel(pairs.a, pairs.b).pvalue),
                          p_wilcoxon=float(wilcoxon(diff).pvalue))
    return result


def results_table(frames: dict[str, pd.DataFrame], region: str = "B", by: str = "subject",
                  note: str = "") -> pd.DataFrame:
    """Mean +- sd per method and metric of one region, the best method and its test against the second best.

    frames: {method: slice_metrics frame}, all with the same protocol. Returns one row per metric (psnr_B ...)
    with a "mean ± sd" column per method, then best, second, n (paired units), p_ttest, p_wilcoxon and
    significant (paired t-test p < 0.05). ``attrs["caption"]`` holds the region, unit, tests, protocol line and
    ``note`` (e.g. which critic mask head was used); the writers print it.
    """
    if region not in REGION_NAMES:
        raise ValueError(f"region must be 'B' or 'T', got {region!r}")
    protocols = {df.attrs.get("protocol") for df in frames.values()}
    if len(protocols) != 1:
        raise ValueError(f"frames computed with different metric protocols {protocols}: not comparable")
    summaries = {method: aggregate(df, by) for method, df in frames.items()}
    rows = []
    for metric in METRICS:
        col, d = f"{metric}_{region}", DECIMALS[metric]
        row = {"metric": col}
        for method, s in summaries.items():
            row[method] = f"{s.loc[col, 'mean']:.{d}f} ± {s.loc[col, 'sd']:.{d}f}"
        means = {method: s.loc[col, "mean"] for method, s in summaries.items() if np.isfinite(s.loc[col, "mean"])}
        ranked = sorted(means, key=means.get, reverse=HIGHER_IS_BETTER[metric])
        row.update(best=ranked[0] if ranked else None, second=ranked[1] if len(ranked) > 1 else None)
        test = (paired_test(frames[ranked[0]], frames[ranked[1]], col, by) if len(ranked) > 1
                else dict(n=0, p_ttest=np.nan, p_wilcoxon=np.nan))
        row.update(n=test["n"], p_ttest=test["p_ttest"], p_wilcoxon=test["p_wilcoxon"],
                   significant=bool(test["p_ttest"] < ALPHA))
        rows.append(row)
    table = pd.DataFrame(rows)
    table.attrs["protocol"] = protocols.pop()
    caption = (f"{REGION_NAMES[region]} ({region}), mean ± sd over {by}s; p: best vs second best, paired t-test "
               f"and Wilcoxon signed-rank over {by}s, significant at p < {ALPHA}. "
               + describe_protocol(table.attrs["protocol"]))
    table.attrs["caption"] = f"{caption}. {note}" if note else caption
    return table


def write_csv(table: pd.DataFrame, path: str | Path) -> Path:
    """CSV with the caption as a first '# ' line (read back with ``pd.read_csv(path, comment="#")``)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w") as f:
        f.write(f"# {table.attrs.get('caption', '')}\n")
        table.to_csv(f, index=False)
    return path


def to_markdown(table: pd.DataFrame, path: str | Path | None = None) -> str:
    """A Markdown table with its caption below; written to ``path`` when given.

    Written by hand rather than with ``DataFrame.to_markdown``, which needs the optional ``tabulate``.
    """
    def cell(v) -> str:
        return f"{v:.3g}" if isinstance(v, float) else str(v)

    lines = ["| " + " | ".join(map(str, table.columns)) + " |", "|" + "---|" * table.shape[1]]
    lines += ["| " + " | ".join(cell(v) for v in row) + " |" for row in table.itertuples(index=False)]
    text = "\n".join(lines) + f"\n\n*{table.attrs.get('caption', '')}*\n"
    if path is not None:
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        Path(path).write_text(text)
    return text


def box_plots(frames: dict[str, pd.DataFrame], region: str = "B", by: str = "subject", out: str | Path | None = None):
    """One panel per metric, one box per method over units; the best-vs-second p-values in each panel's title.

    Returns the Figure; with ``out`` (a .png path) also writes it and the scores behind it (same name, .csv).
    """
    import matplotlib.pyplot as plt
    import seaborn as sns

    table = results_table(frames, region, by).set_index("metric")
    cols = [f"{m}_{region}" for m in METRICS]
    scores = pd.concat([unit_scores(df, by)[cols].reset_index().assign(method=method)
                        for method, df in frames.items()])
    scores = scores.melt(id_vars=[c for c in scores.columns if c not in cols], var_name="metric").dropna()
    fig, axes = plt.subplots(1, len(cols), figsize=(3.6 * len(cols), 3.6))
    for ax, col in zip(axes, cols):
        sns.boxplot(data=scores[scores.metric == col], x="method", y="value", hue="method", ax=ax)
        t = table.loc[col]
        ax.set_title(f"{col}: {t.best} vs {t.second}\np_t = {t.p_ttest:.3g}, p_W = {t.p_wilcoxon:.3g} (n = {t.n})",
                     fontsize=8)
        ax.set_xlabel(""), ax.set_ylabel(col)
        ax.tick_params(axis="x", labelrotation=30, labelsize=7)
    fig.suptitle(f"{REGION_NAMES[region]}, per {by}; {describe_protocol(table.attrs['protocol'])}", fontsize=7)
    fig.tight_layout()
    return save_figure(fig, out, scores)
