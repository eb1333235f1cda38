"""The regimes of ``regime_search.py`` (issue 13 item 3): each is the benchmark's main command
with a few options changed."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Dict, Tuple

ALL = ("grouploss", "grouploss_ce", "triplet", "proxyanchor")


@dataclass(frozen=True)
class Regime:
    """``args`` added to the main command; ``methods`` retrained (the others come from
    ``default``)."""

    description: str
    args: Tuple[str, ...] = ()
    methods: Tuple[str, ...] = ALL
    #: the condition of the data it trains under (``"clean"``, or a label-noise regime's name):
    #: a method's test regime is chosen among the regimes of one condition, never across them
    condition: str = "clean"
    #: the regime whose runs stand in for the methods this one does not retrain
    base: str = "default"


WARMUP, POWER_2 = ("--warmup-epochs", "4"), ("--set", "grouploss.similarity_power=2")
NLL_ONLY, GL = ("--set", "grouploss.ce_weight=0"), ("grouploss",)  # GL: retrains GroupLoss only
#: issue 13 item 3 (a)-(e); every regime is this table's command
REGIMES: Dict[str, Regime] = {
    "default": Regime("the main command's settings (15 classes x 8 per batch)"),
    "classes_40x3": Regime("many classes per batch: 40 x 3 (batch 120)",
                           ("--classes-per-batch", "40", "--samples-per-class", "3")),
    "classes_60x2": Regime("many classes per batch: 60 x 2 (batch 120)",
                           ("--classes-per-batch", "60", "--samples-per-class", "2")),
    "nearest_class": Regime("hard batches: NearestClassSampler (GL++ §5.1), 15 x 8",
                            ("--sampler", "nearest_class")),
    **{f"label_noise_{p}": Regime(f"symmetric noise on {p}% of the training labels",
                                  ("--label-noise", str(p / 100)), condition=f"label_noise_{p}")
       for p in (10, 20, 40)},
    "warmup_4": Regime("the papers' recipe: 4 epochs of classification warm-up", WARMUP, GL),
    "similarity_power_2": Regime("a sharper similarity: W = relu(corr)^2", POWER_2, GL),
    "embedding_256": Regime("larger embeddings: 256", ("--embedding-size", "256")),
    "patience_16": Regime("a longer schedule: up to 80 epochs, learning rates x0.1 after 8 and "
                          "stop after 16 epochs without a better validation R@1 (default 40, 4, 8)",
                          ("--epochs", "80", "--lr-plateau-patience", "8", "--patience", "16")),
    "steps_3": Regime("three refinement steps (T=3; the one interval above 0 of the old steps "
                      "ablation)", ("--set", "grouploss.num_iterations=3"), ("grouploss",)),
    "nll_only": Regime("the refined-label NLL without the auxiliary CE (ce_weight=0; preferred "
                       "by the old loss-terms ablation)", NLL_ONLY, GL),
    "warmup_4_power_2": Regime("warm-up and a sharper similarity together (the two best above)",
                               WARMUP + POWER_2, GL),
    "nll_only_power_2": Regime("the NLL alone over the sharper similarity", NLL_ONLY + POWER_2, GL),
    "nll_only_warmup_4_power_2": Regime("warm-up, then the NLL alone over the sharper similarity",
                                        WARMUP + NLL_ONLY + POWER_2, GL),
    **{f"label_noise_{p}_nll_only": Regime(
        f"{p}% label noise, GroupLoss with the NLL alone"
        + (" (is the refinement what resists noise?)" if p == 20 else ""),
        ("--label-noise", str(p / 100), *NLL_ONLY), GL,
        condition=f"label_noise_{p}", base=f"label_noise_{p}") for p in (20, 10, 40)},
}
#: the conditions of the data, in the order of REGIMES
CONDITIONS = tuple(dict.fromkeys(r.condition for r in REGIMES.values()))
