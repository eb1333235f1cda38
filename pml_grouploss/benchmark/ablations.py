"""GroupLoss ablation sweeps of the papers (GL++ Figs. 3-5, §3.4.1), each a table and a figure.

Every variant is trained with the run's protocol (same trunk, batches, epochs, seeds) and, by
default, judged on the validation fold only (no test feedback); ``--test`` adds the test numbers.
"""

from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass
from typing import Any, Callable, Dict, List, Tuple

import pandas as pd

from .aggregate import TABLE_METRICS, VAL_METRICS, format_table, summarize, to_markdown
from .config import BenchmarkConfig
from .data import check_batch, splits_for_fold
from .methods import get_method
from .runner import run_one

#: (label, GroupLoss parameter overrides, protocol changes, x value(s) for the figure)
AblationVariant = Tuple[str, Dict[str, Any], Dict[str, Any], Any]


@dataclass(frozen=True)
class Ablation:
    description: str
    variants: Callable[[BenchmarkConfig], List[AblationVariant]]
    kind: str  # "line", "bar" or "heatmap"
    x_label: str


def _steps(cfg):
    out = [(f"T={t}", {"num_iterations": t}, {}, t) for t in range(6)]
    out.append(("plain CE (nll_weight=0)", {"nll_weight": 0.0}, {}, "CE"))
    return out


def _anchors(cfg):
    return [
        (f"a={a},m={m}", {"num_anchors": a}, {"samples_per_class": m}, (a, m))
        for m in range(5, 11)
        for a in range(0, 5)
    ]


def _classes(cfg):
    return [(f"classes={c}", {}, {"classes_per_batch": c}, c) for c in (3, 5, 8, 10, 15, 20)]


def _negatives(cfg):
    return [
        ("clamp", {"negatives": "clamp"}, {}, "clamp"),
        ("shift", {"negatives": "shift"}, {}, "shift"),
    ]


def _diagonal(cfg):
    return [
        ("diagonal kept", {"zero_diagonal": False}, {}, "kept"),
        ("diagonal zeroed", {"zero_diagonal": True}, {}, "zeroed"),
    ]


def _nll(cfg):
    return [
        ("GroupLoss", {}, {}, "GL"),
        ("nll_weight=0 (plain CE)", {"nll_weight": 0.0}, {}, "CE"),
        ("ce_weight=0 (NLL only)", {"ce_weight": 0.0}, {}, "NLL"),
    ]


ABLATIONS: Dict[str, Ablation] = {
    "steps": Ablation(
        "refinement steps T = 0..5 (GL++ Fig. 3; T=0 = no refinement) and plain CE",
        _steps,
        "line",
        "refinement steps T",
    ),
    "anchors": Ablation(
        "anchors 0..4 x samples per class 5..10 (GL++ Fig. 4), a heatmap",
        _anchors,
        "heatmap",
        "anchors",
    ),
    "classes": Ablation(
        "classes per batch 3..20 at fixed samples per class (GL++ Fig. 5)",
        _classes,
        "line",
        "classes per batch",
    ),
    "negatives": Ablation(
        "negative similarities clamped vs shifted (GL++ §3.4.1)", _negatives, "bar", "negatives"
    ),
    "diagonal": Ablation(
        "similarity diagonal kept (reference code) vs zeroed (paper)", _diagonal, "bar", "diagonal"
    ),
    "nll": Ablation(
        "loss terms: refined-label NLL + CE, CE only (nll_weight=0), NLL only",
        _nll,
        "bar",
        "loss terms",
    ),
}


def run_ablation(
    name: str,
    cfg: BenchmarkConfig,
    output_dir: str,
    fresh: bool = False,
    final_test: bool = False,
    figures: bool = True,
    log=None,
) -> pd.DataFrame:
    from .suite import check_dependencies, prepare_output, say

    log = log or say
    check_dependencies()
    ablation = ABLATIONS[name]
    variants = ablation.variants(cfg)
    prepare_output(cfg, output_dir, fresh)
    base_overrides = dict(cfg.overrides.get("grouploss", {}))
    spec = get_method("grouploss")
    rows = []
    splits_cache: Dict[Tuple, Any] = {}
    total, done = len(variants) * len(cfg.seeds), 0
    for seed in cfg.seeds:
        for label, overrides, changes, x in variants:
            vcfg = dataclasses.replace(cfg, **changes)
            key = (seed % cfg.num_folds,)
            if key not in splits_cache:
                splits_cache[key] = splits_for_fold(cfg, key[0])
            splits = splits_cache[key]
            check_batch(
                vcfg.classes_per_batch, vcfg.samples_per_class, None, splits.train.num_classes
            )
            safe = (
                label.replace(" ", "_")
                .replace("=", "")
                .replace(",", "_")
                .replace("(", "")
                .replace(")", "")
            )
            run_dir = os.path.join(output_dir, "runs", safe, f"seed{seed}")
            row = run_one(
                dataclasses.replace(vcfg, batch_size=None),
                spec,
                seed,
                splits,
                run_dir,
                label=label,
                overrides={**base_overrides, **overrides},
                final_test=final_test,
            )
            row["x"] = str(x)
            rows.append(row)
            done += 1
            log(
                f"[{done}/{total}] {label} seed {seed}: val P@1 "
                f"{100 * row['val_precision_at_1']:.1f}"
            )
    per_seed = pd.DataFrame(rows)
    per_seed.to_csv(os.path.join(output_dir, "per_seed.csv"), index=False)
    metrics = VAL_METRICS + (TABLE_METRICS[:7] if final_test else ())
    summary = summarize(per_seed, metrics=[m for m, _ in metrics])
    summary.to_csv(os.path.join(output_dir, "summary.csv"), index=False)
    md = to_markdown(format_table(summary, metrics=metrics))
    with open(os.path.join(output_dir, "results.md"), "w") as f:
        f.write(
            f"# Ablation `{name}`: {ablation.description}\n\nValidation fold"
            f"{' and test classes' if final_test else ' only'}, mean ± 95% CI over seeds.\n\n"
        )
        f.write(md)
    log("\n" + md)
    if figures:
        from .figures import ablation_figure

        ablation_figure(per_seed, ablation, os.path.join(output_dir, "figures"), name)
    return per_seed
