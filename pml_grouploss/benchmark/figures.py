"""Matplotlib figures of a results directory (the papers' convergence, overfitting and
qualitative figures, plus one figure per ablation)."""

from __future__ import annotations

import ast
import glob
import os
from typing import Callable, List, Optional, Tuple

import numpy as np
import pandas as pd
# Figures are drawn on matplotlib's Figure objects, not through pyplot: importing this module
# must not switch the backend of a notebook or script that also plots (pyplot's would go to
# Agg, and its plt.show() would then show nothing).
from matplotlib.figure import Figure

from .aggregate import mean_ci, summarize
from .config import BenchmarkConfig


def _subplots(*args, figsize, **kwargs):
    """``plt.subplots`` without pyplot: ``(figure, axes)``."""
    fig = Figure(figsize=figsize)
    return fig, fig.subplots(*args, **kwargs)


def load_histories(output_dir: str) -> pd.DataFrame:
    """All ``runs/<method>/seed<k>/history.jsonl`` stacked, with ``method`` and ``seed`` columns."""
    from .runner import read_history

    frames = []
    for path in sorted(glob.glob(os.path.join(output_dir, "runs", "*", "seed*", "history.jsonl"))):
        parts = path.split(os.sep)
        try:
            hist = read_history(path)
        except (ValueError, KeyError) as err:  # pandas: not JSON lines, or no epoch/split
            raise ValueError(f"{path!r} is damaged ({type(err).__name__}: {err}); delete "
                             f"{os.path.dirname(path)!r} and rerun the benchmark to train that "
                             "seed again") from None
        frames.append(hist.assign(method=parts[-3], seed=int(parts[-2][4:])))
    return pd.concat(frames, ignore_index=True) if frames else pd.DataFrame()


#: the ``per_seed.csv`` columns that :func:`train_vs_test_figure` reads
PER_SEED_COLUMNS = ("method", "precision_at_1", "train_precision_at_1")


def read_per_seed(output_dir: str, columns: Tuple[str, ...] = PER_SEED_COLUMNS) -> pd.DataFrame:
    """``output_dir/per_seed.csv``; errors name the file and the fix (rerunning the benchmark
    reuses the finished seeds and writes the tables again)."""
    path = os.path.join(output_dir, "per_seed.csv")
    rerun = ("rerun the benchmark with the same settings and output_dir (finished seeds are "
             "reused, the tables written again)")
    if not os.path.isfile(path):
        raise FileNotFoundError(f"{path!r} does not exist: the run has not finished; {rerun}, "
                                "then draw the figures")
    try:
        per_seed = pd.read_csv(path)
    except (ValueError, OSError) as err:  # pandas' EmptyDataError and ParserError are ValueErrors
        raise ValueError(f"{path!r} is damaged ({err}); {rerun}") from None
    missing = [c for c in columns if c not in per_seed.columns]
    if missing:
        raise ValueError(f"{path!r} is damaged or not written by a run with test numbers (no "
                         f"columns {missing}); {rerun}")
    return per_seed


def _curves(ax, hist: pd.DataFrame, split: str, methods: List[str], style: str = "-") -> None:
    """Mean ± 95% CI of R@1 per epoch on ``split``, one colour per method. A run that stopped
    early keeps its last value (its final model) up to the method's last epoch; x = a stop."""
    for i, m in enumerate(methods):
        part = hist[(hist.method == m) & (hist.split == split)] if len(hist) else hist
        if part.empty:
            continue
        wide = part.pivot_table(index="epoch", columns="seed", values="precision_at_1")
        stops = [e for e in wide.apply(pd.Series.last_valid_index) if e < wide.index.max()]
        wide = wide.ffill()
        e = wide.index.to_numpy(dtype=float)
        mu, ci = (np.array(x, dtype=float) for x in zip(*(
            mean_ci(row.dropna().tolist()) for _, row in wide.iterrows())))
        ax.plot(e, 100 * mu, style, color=f"C{i}", label=f"{m} ({split})")
        ax.plot(stops, 100 * mu[np.searchsorted(e, stops)], "x", color=f"C{i}")
        ci = np.nan_to_num(ci)
        ax.fill_between(e, 100 * (mu - ci), 100 * (mu + ci), color=f"C{i}", alpha=0.2)


def _save(fig, path: str, ax=None, dpi: int = 120, **labels: str) -> str:
    """Label and grid ``ax`` (if given), write ``fig`` to ``path``."""
    if ax is not None:
        ax.set(**labels)
        ax.grid(alpha=0.3)
    fig.tight_layout()
    os.makedirs(os.path.dirname(path), exist_ok=True)
    fig.savefig(path, dpi=dpi)
    return path


def band_label(hist: pd.DataFrame) -> str:
    """What the curves' band shows: a 95% CI over seeds, or nothing with one seed."""
    seeds = hist.seed.nunique() if len(hist) else 0
    return "mean ± 95% CI" if seeds > 1 else "one seed: no confidence band"


def convergence_figure(output_dir: str, methods: List[str]) -> str:
    fig, ax = _subplots(figsize=(6, 4))
    hist = load_histories(output_dir)
    _curves(ax, hist, "val", methods)
    ax.legend(fontsize=8)
    return _save(fig, os.path.join(output_dir, "figures", "convergence.png"), ax,
                 title=f"Convergence on the validation classes ({band_label(hist)})\n"
                 "x: a run stopped early (it keeps its last value)", xlabel="epoch",
                 ylabel="validation R@1 (%)")


def train_vs_test_figure(output_dir: str, methods: List[str],
                         per_seed: Optional[pd.DataFrame] = None) -> str:
    """Train vs validation curves, and train vs test R@1 of ``per_seed`` (default: the
    directory's ``per_seed.csv``)."""
    per_seed = read_per_seed(output_dir) if per_seed is None else per_seed
    hist = load_histories(output_dir)
    fig, (a, b) = _subplots(1, 2, figsize=(11, 4))
    _curves(a, hist, "train", methods, "--")
    _curves(a, hist, "val", methods, "-")
    a.set(xlabel="epoch", ylabel="R@1 (%)",
          title="train classes (dashed) vs validation classes (solid)")
    a.grid(alpha=0.3)
    a.legend(fontsize=7)
    columns = {"train_precision_at_1": "train classes", "precision_at_1": "test classes"}
    s = summarize(per_seed, metrics=list(columns))
    for off, (col, name) in zip((-0.2, 0.2), columns.items()):
        b.bar(np.arange(len(s)) + off, 100 * s[f"{col}_mean"], 0.4,
              yerr=100 * np.nan_to_num(s[f"{col}_ci"]), capsize=3, label=name)
    b.set_xticks(range(len(s)), s.method, rotation=20, fontsize=8)
    b.legend(fontsize=8)
    return _save(fig, os.path.join(output_dir, "figures", "train_vs_test.png"), b,
                 title="overfitting: train vs test R@1",
                 ylabel="R@1 (%) at the selected checkpoint")


def retrieval_grid_figure(output_dir: str, cfg: BenchmarkConfig, methods: List[str],
                          seed: Optional[int] = None, n_queries: int = 6, top_k: int = 4,
                          on_phase: Optional[Callable[[str], None]] = None) -> str:
    """Queries (left) and their top-``top_k`` test neighbours per method; green = same class."""
    from .data import splits_for_fold

    seed = cfg.run.seeds[0] if seed is None else seed
    results = {}
    for m in methods:
        path = os.path.join(output_dir, "runs", m, f"seed{seed}", "test_embeddings.npz")
        if os.path.isfile(path):
            with np.load(path) as f:
                results[m] = (f["embeddings"], f["labels"])
    if not results:
        raise FileNotFoundError(f"no test_embeddings.npz under {output_dir}/runs/*/seed{seed}")
    test = splits_for_fold(cfg, seed % cfg.data.num_folds, trunk="cnn", augment="none",
                           download=False).test
    queries = np.sort(np.random.default_rng(0).choice(len(test), min(n_queries, len(test)),
                                                      replace=False))
    cols = len(results) * (top_k + 1)
    fig, axes = _subplots(len(queries), cols, squeeze=False,
                           figsize=(cols * 0.9, len(queries) * 1.0 + 0.6))
    (on_phase or (lambda _: None))("figures")
    try:
        for j, (m, (emb, lab)) in enumerate(results.items()):
            sims = emb[queries] @ emb.T
            sims[np.arange(len(queries)), queries] = -np.inf
            top = np.argsort(-sims, axis=1)[:, :top_k]
            for r, q in enumerate(queries):
                for c, idx in enumerate([q] + top[r].tolist()):
                    x = test[idx][0].numpy()
                    x = (x - x.min()) / (x.max() - x.min() + 1e-12)
                    ax = axes[r, j * (top_k + 1) + c]
                    ax.imshow(x[0] if x.shape[0] == 1 else x.transpose(1, 2, 0), cmap="gray")
                    ax.set_xticks([])
                    ax.set_yticks([])
                    color = "black" if c == 0 else ("green" if lab[idx] == lab[q] else "red")
                    for spine in ax.spines.values():
                        spine.set(edgecolor=color, linewidth=3 if c else 1)
                axes[0, j * (top_k + 1)].set_title(m, fontsize=8, loc="left")
    finally:
        (on_phase or (lambda _: None))("idle")
    fig.suptitle(f"test queries and their top-{top_k} (green = same class, red = other), seed "
                 f"{seed}", fontsize=9)
    return _save(fig, os.path.join(output_dir, "figures", "retrieval_grid.png"), dpi=110)


def heatmap_grid(per_seed: pd.DataFrame, metric: str) -> Tuple[List[int], List[int], np.ndarray]:
    """Mean ``metric`` (in %) over seeds per (anchors, samples per class) cell of the anchors sweep.

    ``per_seed.x`` holds ``"(a, m)"`` as written by ``ablations.py``. Returns the sorted anchor
    counts (rows), the sorted samples per class (columns) and the ``(rows, columns)`` grid, NaN
    where a cell was not run.
    """
    s = summarize(per_seed, metrics=[metric])
    xs = dict(zip(per_seed.method, per_seed.x))
    pairs = [tuple(ast.literal_eval(xs[lab])) for lab in s.method]
    anchors, ms = sorted({p[0] for p in pairs}), sorted({p[1] for p in pairs})
    grid = np.full((len(anchors), len(ms)), np.nan)
    for (a, m), v in zip(pairs, s[f"{metric}_mean"]):
        grid[anchors.index(a), ms.index(m)] = 100 * v
    return anchors, ms, grid


def ablation_figure(per_seed: pd.DataFrame, ablation, fig_dir: str, name: str) -> str:
    """Validation R@1 of sweep ``name``: a heatmap, a line over x (other variants as grey
    bands) or bars, by ``ablation.kind``."""
    metric, ylabel = "val_precision_at_1", "validation R@1 (%)"
    fig, ax = _subplots(figsize=(6, 4))
    ax.set_title(ablation.description, fontsize=8)
    if ablation.kind == "heatmap":
        anchors, ms, grid = heatmap_grid(per_seed, metric)
        im = ax.imshow(grid, cmap="viridis", origin="lower")
        for (i, j), v in np.ndenumerate(grid):
            if not np.isnan(v):
                ax.text(j, i, f"{v:.1f}", ha="center", va="center", fontsize=7, color="white")
        ax.set_xticks(range(len(ms)), ms)
        ax.set_yticks(range(len(anchors)), anchors)
        fig.colorbar(im, ax=ax, label=ylabel)
        ax.set(xlabel="samples per class", ylabel="anchors per class")
        return _save(fig, os.path.join(fig_dir, f"ablation_{name}.png"))
    s = summarize(per_seed, metrics=[metric])
    mu, ci = 100 * s[f"{metric}_mean"], 100 * np.nan_to_num(s[f"{metric}_ci"])
    xs = dict(zip(per_seed.method, per_seed.x))
    line = s.method.map(lambda lab: xs[lab].lstrip("-").isdigit()) & (ablation.kind == "line")
    if line.any():
        ax.errorbar([int(xs[lab]) for lab in s.method[line]], mu[line], yerr=ci[line],
                    marker="o", capsize=3, label="GroupLoss")
        for lab, m_, c_ in zip(s.method[~line], mu[~line], ci[~line]):
            ax.axhspan(m_ - c_, m_ + c_, color="gray", alpha=0.2)
            ax.axhline(m_, color="gray", ls="--", label=lab)
        ax.legend(fontsize=8)
        ax.set_xlabel(ablation.x_label)
    else:
        ax.bar(range(len(s)), mu, yerr=ci, capsize=3)
        ax.set_xticks(range(len(s)), s.method, rotation=15, fontsize=8)
    return _save(fig, os.path.join(fig_dir, f"ablation_{name}.png"), ax, ylabel=ylabel)


def make_all(output_dir: str, cfg: BenchmarkConfig,
             on_phase: Optional[Callable[[str], None]] = None) -> List[str]:
    """Every figure of a ``run`` results directory (the convergence one only without test)."""
    methods = [m for m in cfg.run.methods if os.path.isdir(os.path.join(output_dir, "runs", m))]
    per_seed = read_per_seed(output_dir) if cfg.run.final_test else None  # before any figure
    paths = [convergence_figure(output_dir, methods)]
    if cfg.run.final_test:  # the others show test numbers
        paths.append(train_vs_test_figure(output_dir, methods, per_seed))
    if cfg.run.final_test and cfg.run.save_embeddings:
        paths.append(retrieval_grid_figure(output_dir, cfg, methods, on_phase=on_phase))
    return paths
