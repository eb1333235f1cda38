"""Issue 13's regime search: where does Group Loss's refinement pay?

Usage::

    python benchmarks/regime_search.py validate default label_noise_20   # validation runs
    python benchmarks/regime_search.py validate --all                     # every regime
    python benchmarks/regime_search.py report                             # paired table
    python benchmarks/regime_search.py test                               # the chosen regime, once

Each regime is the benchmark's main command (``pml-grouploss-bench run``) with a few options
changed, run on the **validation folds only** (``--no-test``: no test image is read) with
``--seeds 5`` (seed s validates on class fold s), into ``docs/results/regimes/<regime>/``.
Regimes that change only GroupLoss (warm-up, a sharper similarity) train only GroupLoss and pair
it with the other methods' runs of ``default`` (the same folds, seeds and protocol).

``report`` pairs every regime's per-seed validation R@1 and MAP@R: GroupLoss - plain CE on the
same classifier (``grouploss_ce``), GroupLoss - ProxyAnchor, GroupLoss - Triplet and GroupLoss -
the better of the two by mean; mean and Student-t 95% CI over the seeds (``aggregate.mean_ci``).
It chooses the regime whose smallest lower CI bound of GroupLoss - CE and GroupLoss - better is
largest; ``test`` runs that regime once with the test classes (all methods, same seeds) and
reports the same paired differences on test. Everything lands in
``docs/results/regimes/README.md``.
"""

from __future__ import annotations

import argparse
import os
import sys
from dataclasses import dataclass
from typing import Dict, List, Optional, Sequence, Tuple

import pandas as pd

from pml_grouploss.benchmark.aggregate import mean_ci
from pml_grouploss.benchmark.cli import main as bench

ROOT = os.path.join("docs", "results", "regimes")
ALL = ("grouploss", "grouploss_ce", "triplet", "proxyanchor")


@dataclass(frozen=True)
class Regime:
    """``args`` added to the main command; ``methods`` retrained (the others come from
    ``default``)."""

    description: str
    args: Tuple[str, ...] = ()
    methods: Tuple[str, ...] = ALL


#: issue 13 item 3 (a)-(e); every regime is this table's command
REGIMES: Dict[str, Regime] = {
    "default": Regime("the main command's settings (15 classes x 8 per batch)"),
    "classes_40x3": Regime("many classes per batch: 40 x 3 (batch 120)",
                           ("--classes-per-batch", "40", "--samples-per-class", "3")),
    "classes_60x2": Regime("many classes per batch: 60 x 2 (batch 120)",
                           ("--classes-per-batch", "60", "--samples-per-class", "2")),
    "nearest_class": Regime("hard batches: NearestClassSampler (GL++ §5.1), 15 x 8",
                            ("--sampler", "nearest_class")),
    "label_noise_10": Regime("symmetric noise on 10% of the training labels",
                             ("--label-noise", "0.1")),
    "label_noise_20": Regime("symmetric noise on 20% of the training labels",
                             ("--label-noise", "0.2")),
    "label_noise_40": Regime("symmetric noise on 40% of the training labels",
                             ("--label-noise", "0.4")),
    "warmup_4": Regime("the papers' recipe: 4 epochs of classification warm-up",
                       ("--warmup-epochs", "4"), ("grouploss",)),
    "similarity_power_2": Regime("a sharper similarity: W = relu(corr)^2",
                                 ("--set", "grouploss.similarity_power=2"), ("grouploss",)),
    "embedding_256": Regime("larger embeddings: 256", ("--embedding-size", "256")),
    "steps_3": Regime("three refinement steps (T=3; the one interval above 0 of the old steps "
                      "ablation)", ("--set", "grouploss.num_iterations=3"), ("grouploss",)),
    "nll_only": Regime("the refined-label NLL without the auxiliary CE (ce_weight=0; preferred "
                       "by the old loss-terms ablation)", ("--set", "grouploss.ce_weight=0"),
                       ("grouploss",)),
    "warmup_4_power_2": Regime("warm-up and a sharper similarity together (the two best above)",
                               ("--warmup-epochs", "4", "--set", "grouploss.similarity_power=2"),
                               ("grouploss",)),
    "nll_only_power_2": Regime("the NLL alone over the sharper similarity",
                               ("--set", "grouploss.ce_weight=0",
                                "--set", "grouploss.similarity_power=2"), ("grouploss",)),
    "nll_only_warmup_4_power_2": Regime(
        "warm-up, then the NLL alone over the sharper similarity",
        ("--warmup-epochs", "4", "--set", "grouploss.ce_weight=0",
         "--set", "grouploss.similarity_power=2"), ("grouploss",)),
}
#: options that make a regime command a seconds-long smoke run (the tests)
TINY = ("--max-classes", "80", "--epochs", "2", "--iterations-per-epoch", "1", "--workers", "1",
        "--eval-every", "1", "--patience", "1")
PAIRS = (("grouploss_ce", "plain CE"), ("proxyanchor", "ProxyAnchor"), ("triplet", "Triplet"),
         ("better", "better of PA/Triplet"))
METRICS = (("precision_at_1", "R@1"), ("mean_average_precision_at_r", "MAP@R"))


def command(name: str, seeds: int, root: str, test: bool, tiny: bool) -> List[str]:
    """The benchmark arguments of regime ``name``."""
    regime = REGIMES[name]
    out = os.path.join(root, ("test_" if test else "") + name)
    args = ["run", "--seeds", str(seeds), "--output-dir", out, "--losses",
            ",".join(ALL if test else regime.methods), *regime.args]
    return args + ([] if test else ["--no-test"]) + (list(TINY) if tiny else [])


def per_seed(name: str, root: str, test: bool) -> Optional[pd.DataFrame]:
    """One row per (method, seed) of a regime, with ``default``'s rows for the methods the regime
    does not retrain; None if it has not run."""
    prefix = "test_" if test else ""
    path = os.path.join(root, prefix + name, "per_seed.csv")
    if not os.path.isfile(path):
        return None
    rows = pd.read_csv(path)
    base = os.path.join(root, prefix + "default", "per_seed.csv")
    if name != "default" and os.path.isfile(base):
        other = pd.read_csv(base)
        rows = pd.concat([rows, other[~other.method.isin(rows.method)]], ignore_index=True)
    return rows


def paired(rows: pd.DataFrame, column: str) -> Dict[str, Tuple[float, float]]:
    """GroupLoss minus each comparison, per seed: (mean, 95% CI half-width) in points."""
    wide = rows.pivot_table(index="seed", columns="method", values=column)
    out = {"grouploss": mean_ci((100 * wide["grouploss"]).tolist())}
    better = max(("proxyanchor", "triplet"), key=lambda m: wide[m].mean())
    for other, _ in PAIRS:
        ref = wide[better if other == "better" else other]
        out[other] = mean_ci((100 * (wide["grouploss"] - ref)).dropna().tolist())
    return out


def _cell(mean_half: Tuple[float, float]) -> str:
    mean, half = mean_half
    return f"{mean:+.1f} ± {half:.1f}" if half == half else f"{mean:+.1f}"


def table(root: str, test: bool) -> Tuple[str, Dict[str, float]]:
    """The paired table (Markdown) and each regime's score (the smallest lower CI bound of
    GroupLoss - CE and GroupLoss - better, on R@1 and MAP@R)."""
    prefix = "val_" if not test else ""
    head = ["regime", "n", "GroupLoss R@1"] + [f"− {t} {m}" for _, m in METRICS for _, t in PAIRS]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    scores: Dict[str, float] = {}
    for name in REGIMES:
        rows = per_seed(name, root, test)
        if rows is None:
            continue
        cells, bounds = [], []
        for metric, _ in METRICS:
            diffs = paired(rows, prefix + metric)
            cells += [_cell(diffs[o]) for o, _ in PAIRS]
            bounds += [diffs[o][0] - diffs[o][1] for o in ("grouploss_ce", "better")]
        gl = mean_ci((100 * rows[rows.method == "grouploss"][prefix + "precision_at_1"]).tolist())
        n = int((rows.method == "grouploss").sum())
        lines.append(f"| {name} | {n} | {gl[0]:.1f} ± {gl[1]:.1f} | " + " | ".join(cells) + " |")
        scores[name] = min(bounds)
    return "\n".join(lines) + "\n", scores


def report(root: str) -> str:
    """Write ``root/README.md``: the validation table, the chosen regime, and its test table."""
    val, scores = table(root, test=False)
    chosen = max(scores, key=scores.get) if scores else None
    text = ["# Regime search (issue 13)", "",
            "GroupLoss minus each comparison, paired per seed (same fold and seed), mean ± 95% CI "
            "over seeds, in points. Validation folds only (no test image read):", "", val]
    text += [f"- `{k}`: {r.description}; `python benchmarks/regime_search.py validate {k}`"
             + ("" if per_seed(k, root, False) is not None else " (**not run yet**)")
             for k, r in REGIMES.items()]
    if len(scores) > 1:
        text += ["", f"Chosen on validation (largest smallest lower bound, {scores[chosen]:+.1f}): "
                 f"**{chosen}**."]
    elif scores:
        text += ["", f"Only `{chosen}` has run: there is no regime to choose yet."]
    test, _ = table(root, test=True)
    if test.count("\n") > 2:
        text += ["", "Test classes, the chosen regime run once:", "", test]
    md = "\n".join(text) + "\n"
    with open(os.path.join(root, "README.md"), "w") as f:
        f.write(md)
    return md


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("action", choices=("validate", "report", "test"))
    parser.add_argument("regimes", nargs="*", help="of: " + ", ".join(REGIMES))
    parser.add_argument("--all", action="store_true", help="every regime")
    parser.add_argument("--seeds", type=int, default=5)
    parser.add_argument("--root", default=ROOT)
    parser.add_argument("--tiny", action="store_true", help="seconds-long smoke runs (tests)")
    args = parser.parse_args(argv)
    if args.action == "report":
        print(report(args.root))
        return 0
    names = list(REGIMES) if args.all else list(args.regimes)
    unknown = sorted(set(names) - set(REGIMES))
    if unknown:
        parser.error(f"unknown regimes {unknown}; choose from {', '.join(REGIMES)}")
    if args.action == "test" and not names:
        _, scores = table(args.root, test=False)
        names = [max(scores, key=scores.get)]
    for name in names:
        code = bench(command(name, args.seeds, args.root, args.action == "test", args.tiny))
        if code:
            return code
    return 0


if __name__ == "__main__":
    sys.exit(main())
