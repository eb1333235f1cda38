"""Equal-budget hyperparameter search on validation folds (never on test classes).

Every method gets the same number of configurations: its default first, then ``budget - 1``
draws from its search space (``MethodSpec.search_space``; the trunk ``lr`` is part of every space)
with the same random generator seed. Each configuration is trained with every seed of the run
(seed s validates on class fold s mod num_folds); the configuration with the best mean
validation ``primary_metric`` wins. The winners go to ``best_params.json`` for
``pml-grouploss-bench run --params-file``.
"""

from __future__ import annotations

import json
import os
from typing import Any, Dict, List

import numpy as np
import pandas as pd

from .aggregate import VAL_METRICS, format_table, summarize, to_markdown
from .config import BenchmarkConfig
from .data import splits_for_fold
from .methods import get_method
from .runner import run_one

SEARCH_SEED = 2026


def sample_configurations(
    space: Dict[str, tuple], budget: int, seed: int = SEARCH_SEED
) -> List[Dict[str, Any]]:
    """``budget`` configurations: ``{}`` (the defaults) then distinct random draws."""
    if budget < 1:
        raise ValueError(f"--budget must be >= 1, got {budget}")
    rng = np.random.default_rng(seed)
    out: List[Dict[str, Any]] = [{}]
    seen = set()
    keys = sorted(space)
    attempts = 0
    while len(out) < budget and keys and attempts < 1000:
        attempts += 1
        conf = {k: space[k][int(rng.integers(len(space[k])))] for k in keys}
        key = json.dumps(conf, sort_keys=True, default=str)
        if key not in seen:
            seen.add(key)
            out.append({k: (v.item() if hasattr(v, "item") else v) for k, v in conf.items()})
    return out


def run_tuning(
    cfg: BenchmarkConfig, output_dir: str, budget: int = 6, fresh: bool = False, log=None
) -> Dict[str, Dict[str, Any]]:
    from .suite import check_dependencies, prepare_output, say

    log = log or say
    check_dependencies()
    prepare_output(cfg, output_dir, fresh)
    rows = []
    splits_cache: Dict[int, Any] = {}
    best: Dict[str, Dict[str, Any]] = {}
    for name in cfg.methods:
        spec = get_method(name)
        confs = sample_configurations(dict(spec.search_space), budget)
        for i, conf in enumerate(confs):
            overrides = {**cfg.overrides.get(name, {}), **conf}
            label = f"{name}#{i}"
            for seed in cfg.seeds:
                fold = seed % cfg.num_folds
                if fold not in splits_cache:
                    splits_cache[fold] = splits_for_fold(cfg, fold)
                row = run_one(
                    cfg,
                    spec,
                    seed,
                    splits_cache[fold],
                    os.path.join(output_dir, "runs", name, f"conf{i}", f"seed{seed}"),
                    label=label,
                    overrides=overrides,
                    final_test=False,
                )
                row.update(method_name=name, conf=json.dumps(conf, sort_keys=True))
                rows.append(row)
                log(f"{label} seed {seed} {conf}: val P@1 {100 * row['val_precision_at_1']:.1f}")
    per_seed = pd.DataFrame(rows)
    per_seed.to_csv(os.path.join(output_dir, "per_seed.csv"), index=False)
    summary = summarize(per_seed, metrics=[m for m, _ in VAL_METRICS])
    key = f"val_{cfg.primary_metric}_mean"
    confs_by_label = dict(zip(per_seed.method, per_seed.conf))
    summary["conf"] = summary.method.map(confs_by_label)
    summary.to_csv(os.path.join(output_dir, "summary.csv"), index=False)
    for name in cfg.methods:
        part = summary[summary.method.str.startswith(f"{name}#")]
        win = part.loc[part[key].idxmax()]
        best[name] = {**cfg.overrides.get(name, {}), **json.loads(win.conf)}
    with open(os.path.join(output_dir, "best_params.json"), "w") as f:
        json.dump(best, f, indent=2, sort_keys=True)
    table = format_table(summary, metrics=VAL_METRICS)
    table.insert(1, "configuration", summary.conf.tolist())
    md = to_markdown(table)
    with open(os.path.join(output_dir, "results.md"), "w") as f:
        f.write(f"# Equal-budget tuning ({budget} configurations per method, validation folds)\n\n")
        f.write(
            md
            + "\nWinners (best_params.json):\n\n```json\n"
            + json.dumps(best, indent=2, sort_keys=True)
            + "\n```\n"
        )
    log("\n" + md)
    log(f"best configurations in {os.path.join(output_dir, 'best_params.json')}")
    return best
