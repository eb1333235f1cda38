"""GroupLoss ablation sweeps of the papers (GL++ Figs. 3-5, §3.4.1), each a table and a figure.

Every variant is trained with the run's protocol (same trunk, batches, epochs, seeds) and, by
default, judged on the validation fold only (no test feedback); ``--test`` adds the test numbers.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from typing import Any, Dict, List, Optional, Tuple

import pandas as pd

from .aggregate import TABLE_METRICS, VAL_METRICS
from .config import BenchmarkConfig
from .suite import Grid, Log, OnPhase, Variant, training_classes
from .validation import ConfigValueError, check_batch


@dataclass(frozen=True)
class Ablation:
    """A sweep: ``grid`` of (label, GroupLoss parameter overrides, protocol changes, x value(s)
    for the figure); ``kind`` of figure: "line", "bar" or "heatmap"."""

    description: str
    grid: Tuple[Tuple[str, Dict[str, Any], Dict[str, Any], Any], ...]
    kind: str
    x_label: str


ABLATIONS: Dict[str, Ablation] = {
    "steps": Ablation(
        "refinement steps T = 0..5 (GL++ Fig. 3; T=0 = no refinement) and plain CE",
        tuple((f"T={t}", {"num_iterations": t}, {}, t) for t in range(6))
        + (("plain CE (nll_weight=0)", {"nll_weight": 0.0}, {}, "CE"),),
        "line", "refinement steps T"),
    "anchors": Ablation(
        "anchors 0..4 x samples per class 5..10 (GL++ Fig. 4), a heatmap",
        tuple((f"a={a},m={m}", {"num_anchors": a}, {"samples_per_class": m}, (a, m))
              for m in range(5, 11) for a in range(0, 5)), "heatmap", "anchors"),
    "classes": Ablation(
        "classes per batch 3..20 at fixed samples per class (GL++ Fig. 5)",
        tuple((f"classes={c}", {}, {"classes_per_batch": c}, c) for c in (3, 5, 8, 10, 15, 20)),
        "line", "classes per batch"),
    "negatives": Ablation(
        "negative similarities clamped vs shifted (GL++ §3.4.1)",
        tuple((n, {"negatives": n}, {}, n) for n in ("clamp", "shift")), "bar", "negatives"),
    "diagonal": Ablation(
        "similarity diagonal kept (reference code) vs zeroed (paper)",
        (("diagonal kept", {"zero_diagonal": False}, {}, "kept"),
         ("diagonal zeroed", {"zero_diagonal": True}, {}, "zeroed")), "bar", "diagonal"),
    "nll": Ablation(
        "loss terms: refined-label NLL + CE, CE only (nll_weight=0), NLL only",
        (("GroupLoss", {}, {}, "GL"), ("nll_weight=0 (plain CE)", {"nll_weight": 0.0}, {}, "CE"),
         ("ce_weight=0 (NLL only)", {"ce_weight": 0.0}, {}, "NLL")), "bar", "loss terms"),
}


def ablation_variants(name: str, cfg: BenchmarkConfig) -> List[Variant]:
    """The grid variants of sweep ``name``: GroupLoss with the run's ``grouploss`` overrides plus
    the variant's, and its protocol changes (``batch_size`` follows them)."""
    base = dict(cfg.run.overrides.get("grouploss", {}))
    return [Variant(label, "grouploss", {**base, **overrides}, {**changes, "batch_size": None},
                    {"x": str(x)}, re.sub(r"[=(),]", "", re.sub("[ ,]", "_", label)))
            for label, overrides, changes, x in ABLATIONS[name].grid]


def _check_variants_fit(cfg: BenchmarkConfig, variants: List[Variant]) -> None:
    """Every variant's batch fits the training classes, before anything is trained."""
    classes = training_classes(cfg)
    for variant in variants:
        try:
            check_batch(cfg.replace(**variant.changes), classes)
        except ConfigValueError as err:
            why = str(err).split(": ", 1)[-1].split("; ")[0]
            raise ConfigValueError("data.num_folds", (
                f"data.num_folds: the sweep's variant {variant.label!r} does not fit ({why}); the "
                "sweep sets the batch, so use fewer folds or raise data.max_classes")) from None


def run_ablation(name: str, cfg: BenchmarkConfig, output_dir: str, fresh: bool = False,
                 final_test: bool = False, figures: bool = True, log: Optional[Log] = None,
                 on_phase: Optional[OnPhase] = None) -> pd.DataFrame:
    """Sweep ``name`` with the protocol of ``cfg``: tables (validation; test with
    ``final_test``) and ``figures/ablation_<name>.png`` in ``output_dir``."""
    variants = ablation_variants(name, cfg)
    _check_variants_fit(cfg, variants)
    grid = Grid(cfg, output_dir, fresh, log, on_phase, job=f"ablate {name}")
    per_seed = grid.run(variants, final_test=final_test)
    metrics = VAL_METRICS + (TABLE_METRICS[:7] if final_test else ())
    where = " and test classes" if final_test else " only"
    grid.write(per_seed, f"Ablation `{name}`: {ABLATIONS[name].description}\n\nValidation fold"
               f"{where}, mean ± 95% CI over seeds.", metrics=metrics)
    if figures:
        from .figures import ablation_figure

        ablation_figure(per_seed, ABLATIONS[name], os.path.join(output_dir, "figures"), name)
    return per_seed
