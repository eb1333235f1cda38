"""Aggregation of per-seed results: mean and 95% confidence interval, tables."""

from __future__ import annotations

import math
from typing import Iterable, Sequence, Tuple

import numpy as np
import pandas as pd
from scipy import stats

#: columns of the main table, in order, with their display names
TABLE_METRICS = (
    ("recall_at_1", "R@1"), ("recall_at_2", "R@2"), ("recall_at_4", "R@4"), ("recall_at_8", "R@8"),
    ("mean_average_precision_at_r", "MAP@R"), ("precision_at_1", "P@1"), ("NMI", "NMI"),
    ("train_precision_at_1", "train R@1"), ("seconds_per_epoch", "s/epoch"),
)


def mean_ci(values: Sequence[float], confidence: float = 0.95) -> Tuple[float, float]:
    """Mean and half-width of the two-sided Student-t confidence interval of the mean.

    half-width = t_{(1+confidence)/2, n-1} * s / sqrt(n) with the sample standard deviation s
    (ddof=1). One value gives a half-width of NaN (no interval from one seed).
    """
    x = np.asarray([v for v in values if v is not None and not math.isnan(v)], dtype=np.float64)
    if x.size == 0:
        return float("nan"), float("nan")
    if x.size == 1:
        return float(x[0]), float("nan")
    half = stats.t.ppf(0.5 + confidence / 2.0, df=x.size - 1) * x.std(ddof=1) / math.sqrt(x.size)
    return float(x.mean()), float(half)


def summarize(per_seed: pd.DataFrame, group: str = "method", metrics: Iterable[str] = None,
              confidence: float = 0.95) -> pd.DataFrame:
    """One row per ``group`` with ``<metric>_mean``, ``<metric>_ci`` and ``n_seeds`` columns.

    ``per_seed`` has one row per (method, seed). Row order follows first appearance.
    """
    metrics = [m for m, _ in TABLE_METRICS] if metrics is None else list(metrics)
    metrics = [m for m in metrics if m in per_seed.columns]
    rows = []
    for name, df in per_seed.groupby(group, sort=False):
        row = {group: name, "n_seeds": int(len(df))}
        for m in metrics:
            row[f"{m}_mean"], row[f"{m}_ci"] = mean_ci(df[m].astype(float).tolist(), confidence)
        rows.append(row)
    return pd.DataFrame(rows)


VAL_METRICS = (
    ("val_precision_at_1", "val R@1"), ("val_mean_average_precision_at_r", "val MAP@R"),
    ("val_NMI", "val NMI"), ("train_precision_at_1", "train R@1"),
    ("seconds_per_epoch", "s/epoch"),
)


def format_table(summary: pd.DataFrame, group: str = "method", percent: bool = True,
                 metrics=TABLE_METRICS) -> pd.DataFrame:
    """Display table: ``"87.8 ± 1.2"`` cells (accuracies in %, seconds as is)."""
    out = {group: summary[group].tolist()}
    for m, title in metrics:
        if f"{m}_mean" not in summary.columns or summary[f"{m}_mean"].isna().all():
            continue
        scale = 100.0 if percent and m != "seconds_per_epoch" else 1.0
        out[title] = ["–" if math.isnan(mean) else f"{mean * scale:.1f}" + (
            "" if math.isnan(ci) else f" ± {ci * scale:.1f}")
            for mean, ci in zip(summary[f"{m}_mean"], summary[f"{m}_ci"])]
    out["seeds"] = summary["n_seeds"].tolist()
    return pd.DataFrame(out)


def to_markdown(table: pd.DataFrame) -> str:
    """GitHub Markdown table. Written here because ``DataFrame.to_markdown`` needs the optional
    ``tabulate`` package, which is not a dependency."""
    cols = [str(c) for c in table.columns]
    lines = ["| " + " | ".join(cols) + " |", "|" + "|".join("---" for _ in cols) + "|"]
    for row in table.itertuples(index=False):
        lines.append("| " + " | ".join(str(v) for v in row) + " |")
    return "\n".join(lines) + "\n"
