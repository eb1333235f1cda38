"""GroupLoss++ inference ablation (GL++ Tables 3 and 4) on the GroupLoss models of a finished run.

For every seed of a results directory the selected GroupLoss checkpoint (best validation epoch) is
evaluated with: the baseline; each strategy alone (flip inference, beta-normalization, mixed
pooling, leaky-ReLU swap, k-reciprocal re-ranking); and the strategies added cumulatively. Each
strategy's parameter is chosen on the run's validation fold (strategy alone on top of the
baseline); the test classes only report the rows of the table. Strategies whose surgery cannot be
applied to the trunk are reported as not applicable, and so is mixed pooling on a trunk whose final
feature map is already 1x1 (the ``cnn`` trunk at 28x28), where it is the identity: both are left out
of the table, with the reason in the chosen parameters' notes.
"""

from __future__ import annotations

import json
import os
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple

import pandas as pd
import torch
from pytorch_metric_learning.utils import common_functions as c_f

from .config import BenchmarkConfig
from .runner import clean_accuracies, make_accuracy_calculator
from .suite import Grid, Log, OnPhase, results_config
from ..trunks import build_embedder, build_trunk

#: validation grids (GL++ Table 7 values included)
GRIDS: Dict[str, Tuple[Any, ...]] = {
    "beta": (0.0005, 0.002, 0.004, 0.01, 0.05),
    "mixed_pooling": (0.25, 0.5, 0.75, 1.0),
    "leaky_relu": (0.2, 0.4, 0.75, 1.0),
    "re_ranking": ((20, 6, 0.3), (10, 3, 0.5), (50, 20, 0.85)),
}
INFERENCE_METRICS = ("precision_at_1", "mean_average_precision_at_r", "NMI")
ORDER = ("flip", "beta", "mixed_pooling", "leaky_relu", "re_ranking")


def _load_best(cfg: BenchmarkConfig, run_dir: str, in_channels: int, device):
    trunk, feat = build_trunk(cfg.model.trunk, in_channels, pretrained=False,
                              width=cfg.model.trunk_width)
    embedder = build_embedder(feat, cfg.model.embedding_size, cfg.model.embedder)
    folder = os.path.join(run_dir, "models")
    epoch, suffix = c_f.latest_version(folder, "trunk_*.pth", best=True)
    if suffix is None:
        raise FileNotFoundError(f"no best checkpoint in {folder}; finish the run first")
    models = {"trunk": trunk, "embedder": embedder}
    c_f.load_dict_of_models(models, suffix, folder, device, log_if_successful=False)
    return trunk.to(device), embedder.to(device)


def _evaluate(cfg, trunk, embedder, dataset, settings: Dict[str, Any], device) -> Dict[str, float]:
    from ..inference import GroupLossPlusPlusTester, KReciprocalReRanker
    from ..inference import install_leaky_relu, install_mixed_pooling

    if "mixed_pooling" in settings:
        trunk = install_mixed_pooling(trunk, alpha=settings["mixed_pooling"])
    if "leaky_relu" in settings:
        trunk = install_leaky_relu(trunk, negative_slope=settings["leaky_relu"])
    kwargs = {}
    if "re_ranking" in settings:
        k1, k2, lam = settings["re_ranking"]
        kwargs["knn_func"] = KReciprocalReRanker(k1=k1, k2=k2, lambda_value=lam)
    calc = make_accuracy_calculator(cfg.run.recall_ks, INFERENCE_METRICS, **kwargs)
    tester = GroupLossPlusPlusTester(
        flip=bool(settings.get("flip", False)), beta=settings.get("beta"),
        accuracy_calculator=calc, batch_size=cfg.run.eval_batch_size, dataloader_num_workers=0,
        data_device=device)
    acc = tester.test({"split": dataset}, 0, trunk, embedder, splits_to_eval=[("split", ["split"])])
    return clean_accuracies(acc["split"])


def _mixed_pooling_identity(trunk: torch.nn.Module, dataset, device) -> Optional[str]:
    """Why mixed pooling is left out if it does not change ``trunk``'s output on a few images of
    ``dataset`` (a 1x1 final feature map: max and average pooling agree), else ``None``."""
    from ..inference import install_mixed_pooling

    try:
        pooled = install_mixed_pooling(trunk, alpha=1.0).eval()
    except (TypeError, ValueError):  # reported by the grid as not applicable
        return None
    images = torch.stack([dataset[i][0] for i in range(min(4, len(dataset)))]).to(device)
    with torch.no_grad():
        if not torch.equal(trunk.eval()(images), pooled(images)):
            return None
    return ("not applicable: the identity on this trunk (its final feature map is 1x1, where "
            "max and average pooling agree)")


def _choose(evaluate: Callable, metric: str, identity: Callable[[str], Optional[str]]
            ) -> Tuple[Dict[str, Any], Dict[str, str]]:
    """Each strategy's parameter with the best validation ``metric`` (strategy alone on the
    baseline), and a note for each strategy that cannot be applied to the trunk or, by
    ``identity(name)``, does not change it."""
    chosen: Dict[str, Any] = {"flip": True}
    notes: Dict[str, str] = {}
    for name, grid in GRIDS.items():
        note = identity(name)
        if note:
            notes[name] = note
            continue
        try:
            scores = [evaluate({name: value}, "val")[metric] for value in grid]
        except Exception as err:  # surgery not applicable to this trunk
            notes[name] = f"not applicable: {type(err).__name__}: {err}"[:160]
            continue
        chosen[name] = grid[scores.index(max(scores))]  # the first of equal scores
    return chosen, notes


def _table(chosen: Dict[str, Any]) -> List[Tuple[str, Dict[str, Any]]]:
    """Baseline, each strategy alone, then the strategies added cumulatively (GL++ Tables 3-4)."""
    table: List[Tuple[str, Dict[str, Any]]] = [("baseline", {})]
    names = [n for n in ORDER if n in chosen]
    table += [(f"+ {n} alone", {n: chosen[n]}) for n in names]
    table += [("cumulative: " + " + ".join(names[:i]), {n: chosen[n] for n in names[:i]})
              for i in range(2, len(names) + 1)]
    return table


def check_finished(results_dir: str, method: str, seeds: Sequence[int]) -> None:
    """Raise ``ValueError`` (naming ``method`` and the methods that can be evaluated) unless
    ``method`` has a finished seed of ``seeds`` in ``results_dir``."""
    runs = os.path.join(results_dir, "runs")
    found = sorted(m for m in (os.listdir(runs) if os.path.isdir(runs) else ())
                   if os.path.isdir(os.path.join(runs, m)))
    done = [m for m in found if any(os.path.isfile(os.path.join(runs, m, f"seed{s}", "final.json"))
                                    for s in seeds)]
    if method in done:
        return
    rerun = ("rerun the benchmark that wrote it (same settings and output_dir; it resumes) to "
             "finish its runs")
    if not done:
        raise ValueError(f"{results_dir!r} holds no finished run yet (no runs/<method>/seed<s>/"
                         f"final.json for seeds {', '.join(map(str, seeds))}); {rerun}")
    why = (f"its runs are not finished; {rerun}, or" if method in found
           else f"{results_dir!r} has no runs of it;")
    raise ValueError(f"method={method!r}: {why} choose a method with finished runs: "
                     f"{', '.join(done)}")


def run_inference_ablation(results_dir: str, method: str = "grouploss", log: Optional[Log] = None,
                           on_phase: Optional[OnPhase] = None) -> pd.DataFrame:
    """The GL++ inference ablation on ``method``'s checkpoints in ``results_dir``, written to
    ``results_dir/inference_ablation_<method>``; test classes are read only for the table rows,
    after every choice on the validation fold (``on_phase("final_test")``)."""
    cfg = results_config(results_dir)
    check_finished(results_dir, method, cfg.run.seeds)
    device = torch.device(cfg.run.device)
    grid = Grid(cfg, os.path.join(results_dir, f"inference_ablation_{method}"), log=log,
                on_phase=on_phase, prepare=False)
    rows: List[Dict[str, Any]] = []
    chosen_all = {}
    for seed in cfg.run.seeds:
        run_dir = os.path.join(results_dir, "runs", method, f"seed{seed}")
        if not os.path.isfile(os.path.join(run_dir, "final.json")):
            grid.log(f"skip seed {seed}: {run_dir} is not finished")
            continue
        splits = grid.splits(seed, augment="none", download=False)

        def evaluate(settings, split):
            trunk, embedder = _load_best(cfg, run_dir, splits.in_channels, device)
            grid.on_phase("final_test" if split == "test" else "validation")
            try:
                dataset = splits.test if split == "test" else splits.val
                return _evaluate(cfg, trunk, embedder, dataset, settings, device)
            finally:
                grid.on_phase("idle")

        def identity(name):
            if name != "mixed_pooling":
                return None
            grid.on_phase("validation")
            try:
                trunk, _ = _load_best(cfg, run_dir, splits.in_channels, device)
                return _mixed_pooling_identity(trunk, splits.val, device)
            finally:
                grid.on_phase("idle")

        chosen, notes = _choose(evaluate, cfg.optim.primary_metric, identity)
        chosen_all[seed] = {**chosen, **{f"{k}_note": v for k, v in notes.items()}}
        for label, settings in _table(chosen):
            acc = evaluate(settings, "test")
            rows.append({"configuration": label, "seed": seed, **acc,
                         "settings": json.dumps(settings, default=str)})
            grid.log(f"seed {seed} {label} {settings}: test R@1 {100 * acc['precision_at_1']:.1f}")
    chosen_json = json.dumps(chosen_all, indent=2, default=str)
    grid.write(pd.DataFrame(rows), f"GroupLoss++ inference ablation ({method} models of "
               f"{results_dir})\n\nParameters chosen on the validation fold of each seed; test "
               "classes, mean ± 95% CI over seeds.", group="configuration",
               note=f"\nChosen parameters per seed:\n\n```json\n{chosen_json}\n```\n")
    return pd.DataFrame(rows)
