"""Matplotlib figures of a results directory (the papers' convergence, overfitting and
qualitative figures, plus one figure per ablation)."""

from __future__ import annotations

import ast
import glob
import os
from typing import Dict, List, Optional, Tuple

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402

from .aggregate import mean_ci, summarize  # noqa: E402
from .config import BenchmarkConfig  # noqa: E402


def load_histories(output_dir: str) -> pd.DataFrame:
    """All ``runs/<method>/seed<k>/history.jsonl`` stacked, with ``method`` and ``seed`` columns."""
    frames = []
    from .runner import read_history

    for path in sorted(glob.glob(os.path.join(output_dir, "runs", "*", "seed*", "history.jsonl"))):
        df = read_history(path)
        parts = path.split(os.sep)
        df["method"], df["seed"] = parts[-3], int(parts[-2][4:])
        frames.append(df)
    return pd.concat(frames, ignore_index=True) if frames else pd.DataFrame()


def _curves(ax, hist: pd.DataFrame, split: str, metric: str, methods: List[str], style="-"):
    colors = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    for i, m in enumerate(methods):
        part = hist[(hist.method == m) & (hist.split == split)]
        if part.empty:
            continue
        stats = [(e, *mean_ci(g[metric].tolist())) for e, g in part.groupby("epoch")]
        e, mu, ci = (np.array(x, dtype=float) for x in zip(*stats))
        ax.plot(e, 100 * mu, style, color=colors[i % len(colors)], label=f"{m} ({split})")
        ci = np.nan_to_num(ci)
        ax.fill_between(e, 100 * (mu - ci), 100 * (mu + ci), color=colors[i % len(colors)],
                        alpha=0.2)


def _save(fig, path: str, dpi: int = 120) -> str:
    fig.tight_layout()
    fig.savefig(path, dpi=dpi)
    plt.close(fig)
    return path


def _label(ax, xlabel: str, ylabel: str, title: str, legend: int = 8) -> None:
    ax.set(xlabel=xlabel, ylabel=ylabel, title=title)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=legend)


def convergence_figure(output_dir: str, methods: List[str], metric="precision_at_1") -> str:
    fig, ax = plt.subplots(figsize=(6, 4))
    _curves(ax, load_histories(output_dir), "val", metric, methods)
    _label(ax, "epoch", "validation R@1 (%)",
           "Convergence on the validation classes (mean ± 95% CI)")
    return _save(fig, os.path.join(output_dir, "figures", "convergence.png"))


def train_vs_test_figure(output_dir: str, methods: List[str]) -> str:
    hist = load_histories(output_dir)
    per_seed = pd.read_csv(os.path.join(output_dir, "per_seed.csv"))
    fig, (a, b) = plt.subplots(1, 2, figsize=(11, 4))
    _curves(a, hist, "train", "precision_at_1", methods, "--")
    _curves(a, hist, "val", "precision_at_1", methods, "-")
    _label(a, "epoch", "R@1 (%)", "train classes (dashed) vs validation classes (solid)", 7)
    s = summarize(per_seed, metrics=["train_precision_at_1", "precision_at_1"])
    x = np.arange(len(s))
    for off, col, name in ((-0.2, "train_precision_at_1", "train classes"),
                           (0.2, "precision_at_1", "test classes")):
        b.bar(x + off, 100 * s[f"{col}_mean"], 0.4, yerr=100 * np.nan_to_num(s[f"{col}_ci"]),
              capsize=3, label=name)
    b.set_xticks(x)
    b.set_xticklabels(s.method, rotation=20, fontsize=8)
    _label(b, "", "R@1 (%) at the selected checkpoint", "overfitting: train vs test R@1")
    return _save(fig, os.path.join(output_dir, "figures", "train_vs_test.png"))


def retrieval_grid_figure(output_dir: str, cfg: BenchmarkConfig, methods: List[str],
                          seed: Optional[int] = None, n_queries: int = 6, top_k: int = 4,
                          on_phase=None) -> str:
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
    fold = seed % cfg.data.num_folds
    splits = splits_for_fold(cfg, fold, trunk="cnn", augment="none", download=False)
    on_phase = on_phase or (lambda _: None)
    test = splits.test
    rng = np.random.default_rng(0)
    queries = np.sort(rng.choice(len(test), size=min(n_queries, len(test)), replace=False))
    on_phase("figures")
    try:
        cache: Dict[int, np.ndarray] = {}

        def image(i: int) -> np.ndarray:
            if i not in cache:
                x = test[i][0].numpy()
                x = (x - x.min()) / (x.max() - x.min() + 1e-12)
                cache[i] = x[0] if x.shape[0] == 1 else x.transpose(1, 2, 0)
            return cache[i]

        cols = len(results) * (top_k + 1)
        fig, axes = plt.subplots(len(queries), cols, squeeze=False,
                                 figsize=(cols * 0.9, len(queries) * 1.0 + 0.6))
        for j, (m, (emb, lab)) in enumerate(results.items()):
            sims = emb[queries] @ emb.T
            sims[np.arange(len(queries)), queries] = -np.inf
            top = np.argsort(-sims, axis=1)[:, :top_k]
            for r, q in enumerate(queries):
                row = [q] + top[r].tolist()
                for c, idx in enumerate(row):
                    ax = axes[r, j * (top_k + 1) + c]
                    ax.imshow(image(idx), cmap="gray")
                    ax.set_xticks([])
                    ax.set_yticks([])
                    color = "black" if c == 0 else ("green" if lab[idx] == lab[q] else "red")
                    for spine in ax.spines.values():
                        spine.set_edgecolor(color)
                        spine.set_linewidth(3 if c else 1)
                    if r == 0 and c == 0:
                        ax.set_title(m, fontsize=8, loc="left")
    finally:
        on_phase("idle")
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
    xs = {lab: x for lab, x in zip(per_seed.method, per_seed.x)}
    pairs = [tuple(ast.literal_eval(xs[lab])) for lab in s.method]
    anchors = sorted({p[0] for p in pairs})
    ms = sorted({p[1] for p in pairs})
    grid = np.full((len(anchors), len(ms)), np.nan)
    for (a, m), v in zip(pairs, s[f"{metric}_mean"]):
        grid[anchors.index(a), ms.index(m)] = 100 * v
    return anchors, ms, grid


def ablation_figure(per_seed: pd.DataFrame, ablation, fig_dir: str, name: str) -> str:
    os.makedirs(fig_dir, exist_ok=True)
    metric = "val_precision_at_1"
    fig, ax = plt.subplots(figsize=(6, 4))
    if ablation.kind == "heatmap":
        anchors, ms, grid = heatmap_grid(per_seed, metric)
        im = ax.imshow(grid, cmap="viridis", origin="lower")
        for i in range(len(anchors)):
            for j in range(len(ms)):
                if not np.isnan(grid[i, j]):
                    ax.text(j, i, f"{grid[i, j]:.1f}", ha="center", va="center", fontsize=7,
                            color="white")
        ax.set_xticks(range(len(ms)))
        ax.set_xticklabels(ms)
        ax.set_yticks(range(len(anchors)))
        ax.set_yticklabels(anchors)
        ax.set_xlabel("samples per class")
        ax.set_ylabel("anchors per class")
        fig.colorbar(im, ax=ax, label="validation R@1 (%)")
    else:
        s = summarize(per_seed, metrics=[metric])
        mu, ci = 100 * s[f"{metric}_mean"], 100 * np.nan_to_num(s[f"{metric}_ci"])
        if ablation.kind == "line":
            xs = {lab: per_seed[per_seed.method == lab].x.iloc[0] for lab in s.method}
            sel = s.method.isin([lab for lab, x in xs.items() if x.lstrip("-").isdigit()])
            x = [int(xs[lab]) for lab in s.method[sel]]
            ax.errorbar(x, mu[sel], yerr=ci[sel], marker="o", capsize=3, label="GroupLoss")
            for lab, m_, c_ in zip(s.method[~sel], mu[~sel], ci[~sel]):
                ax.axhspan(m_ - c_, m_ + c_, color="gray", alpha=0.2)
                ax.axhline(m_, color="gray", ls="--", label=lab)
            ax.set_xlabel(ablation.x_label)
            ax.legend(fontsize=8)
        else:
            ax.bar(range(len(s)), mu, yerr=ci, capsize=3)
            ax.set_xticks(range(len(s)))
            ax.set_xticklabels(s.method, rotation=15, fontsize=8)
        ax.set_ylabel("validation R@1 (%)")
        ax.grid(alpha=0.3)
    ax.set_title(ablation.description, fontsize=8)
    return _save(fig, os.path.join(fig_dir, f"ablation_{name}.png"))


def make_all(output_dir: str, cfg: BenchmarkConfig, on_phase=None) -> List[str]:
    os.makedirs(os.path.join(output_dir, "figures"), exist_ok=True)
    methods = [m for m in cfg.run.methods if os.path.isdir(os.path.join(output_dir, "runs", m))]
    paths = [convergence_figure(output_dir, methods)]
    if cfg.run.final_test:  # the others show test numbers
        paths.append(train_vs_test_figure(output_dir, methods))
    if cfg.run.final_test and cfg.run.save_embeddings:
        paths.append(retrieval_grid_figure(output_dir, cfg, methods, on_phase=on_phase))
    return paths
