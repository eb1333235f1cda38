"""Equal-budget hyperparameter search with Optuna on validation folds (never on test classes).

Every method gets one study of ``budget`` trials: the first is the method's defaults, the others
come from a seeded TPE sampler over ``MethodSpec.search_space`` (the trunk ``lr`` included)
without the parameters fixed with ``--set``. A study is named by the method and a digest of the
settings its trials depend on, so a shared ``storage`` never mixes settings. A
trial trains with every seed of the run; its value is the mean validation ``primary_metric``;
each validation is reported (step = seed index x epochs + epoch) to a ``MedianPruner``. The
studies live in ``storage`` (default ``sqlite:///<output_dir>/optuna.db``): an interrupted tune
resumes (the interrupted trial is retried, reusing its finished runs) and several processes or
machines can share trials. The sampler is re-seeded from the number of finished trials, so one
process gives the same trials with or without interruptions. The winners go to
``best_params.json`` (for ``run --params-file``); details in docs/benchmark.md.
"""

from __future__ import annotations

import hashlib
import json
import os
import time
from typing import Any, Dict, List, Optional

import optuna
import pandas as pd

from .aggregate import VAL_METRICS
from .config import BenchmarkConfig
from .methods import get_method
from .suite import Grid, Log, OnPhase, Variant

SEARCH_SEED = 2026
FINISHED = (optuna.trial.TrialState.COMPLETE, optuna.trial.TrialState.PRUNED)


def search_space(name: str, cfg: BenchmarkConfig) -> Dict[str, tuple]:
    """``name``'s search space without the parameters the user fixed (``--set``)."""
    fixed = cfg.run.overrides.get(name, {})
    return {k: v for k, v in get_method(name).search_space.items() if k not in fixed}


def study_name(name: str, cfg: BenchmarkConfig) -> str:
    """``name`` and a digest of what a trial's value depends on (protocol, seeds, fixed
    parameters, search space): studies of other settings never share a ``--storage``."""
    key = {"protocol": cfg.protocol_key(), "seeds": list(cfg.run.seeds),
           "space": search_space(name, cfg)}
    digest = hashlib.sha1(json.dumps(key, sort_keys=True, default=str).encode()).hexdigest()
    return f"{name}-{digest[:10]}"


def default_trial(name: str, cfg: BenchmarkConfig) -> Dict[str, Any]:
    """The method's own defaults, as far as they are values of its search space."""
    spec = get_method(name)
    defaults = {**spec.params, "loss_lr": spec.loss_lr, "lr": cfg.optim.lr}
    return {k: defaults[k] for k, choices in search_space(name, cfg).items()
            if k in defaults and defaults[k] in choices}


def _variant(name: str, trial: optuna.trial.BaseTrial, cfg: BenchmarkConfig) -> Variant:
    space = search_space(name, cfg)
    conf = {k: trial.suggest_categorical(k, list(space[k])) for k in sorted(space)}
    key = json.dumps(conf, sort_keys=True)
    digest = hashlib.sha1(key.encode()).hexdigest()[:10]  # retried trials reuse their runs
    return Variant(f"{name}#{trial.number}", name, {**cfg.run.overrides.get(name, {}), **conf},
                   extra={"method_name": name, "conf": key}, run_dir=f"{name}/{digest}")


def _objective(grid: Grid, name: str):
    cfg = grid.cfg

    def objective(trial: optuna.Trial) -> float:
        variant, rows = _variant(name, trial, cfg), []
        for i, seed in enumerate(cfg.run.seeds):
            def report(epoch: int, value: float, offset: int = i * cfg.optim.epochs) -> bool:
                trial.report(value, offset + epoch)
                return not trial.should_prune()

            t0 = time.time()
            rows.append(grid.train(variant, seed, final_test=False, on_validation=report))
            grid.progress(i + 1, len(cfg.run.seeds), variant.label, seed, rows[-1],
                          time.time() - t0)
            trial.set_user_attr("rows", rows)
            if trial.should_prune():
                raise optuna.TrialPruned()
        return float(pd.DataFrame(rows)[f"val_{cfg.optim.primary_metric}"].mean())

    return objective


def tune_method(grid: Grid, name: str, budget: int, storage: str) -> optuna.Study:
    """Run trials of ``name``'s study until ``budget`` are finished (by any process)."""
    study = optuna.create_study(
        study_name=study_name(name, grid.cfg), storage=storage, direction="maximize",
        load_if_exists=True,
        pruner=optuna.pruners.MedianPruner(n_startup_trials=1, n_warmup_steps=0))
    if not study.trials:
        study.enqueue_trial(default_trial(name, grid.cfg))
    objective = _objective(grid, name)
    while True:
        trials = study.get_trials(deepcopy=False)
        finished = sum(t.state in FINISHED for t in trials)
        running = sum(t.state == optuna.trial.TrialState.RUNNING for t in trials)
        if finished + running >= budget:
            return study
        failed = [t for t in trials if t.state == optuna.trial.TrialState.FAIL and not any(
            u.number > t.number and u.params == t.params for u in trials)]
        if failed:  # interrupted: the same configuration again (its runs resume)
            study.enqueue_trial(failed[0].params)
        study.sampler = optuna.samplers.TPESampler(seed=SEARCH_SEED + finished)
        study.optimize(objective, n_trials=1)


def _check_storage(storage: str) -> None:
    """Open ``storage`` before any output exists; ``ValueError`` naming it otherwise."""
    try:
        optuna.storages.get_storage(storage)
    except Exception as err:  # SQLAlchemy's URL, driver and connection errors alike
        raise ValueError(
            f"storage {storage!r} cannot be opened ({type(err).__name__}: "
            f"{str(err).splitlines()[0][:160]}); give an Optuna storage URL such as "
            "sqlite:///path/to/optuna.db (its directory must exist)") from None


def run_tuning(cfg: BenchmarkConfig, output_dir: str, budget: int = 6, fresh: bool = False,
               storage: Optional[str] = None, log: Optional[Log] = None,
               on_phase: Optional[OnPhase] = None) -> Dict[str, Dict[str, Any]]:
    """Tune every method of ``cfg``; write the tables and ``best_params.json``."""
    if budget < 1:
        raise ValueError(f"budget must be >= 1 (trials per method), got {budget}")
    if storage is not None:
        _check_storage(storage)
    grid = Grid(cfg, output_dir, fresh, log, on_phase, job="tune")
    storage = storage or f"sqlite:///{os.path.abspath(os.path.join(output_dir, 'optuna.db'))}"
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    rows: List[Dict[str, Any]] = []
    best: Dict[str, Dict[str, Any]] = {}
    for name in cfg.run.methods:
        study = tune_method(grid, name, budget, storage)
        trials = [t for t in study.trials if t.state in FINISHED][:budget]
        for t in trials:
            rows += [{**r, "trial_state": t.state.name} for r in t.user_attrs.get("rows", [])]
        best[name] = {**cfg.run.overrides.get(name, {}), **study.best_trial.params}
    per_seed = pd.DataFrame(rows)
    confs = dict(zip(per_seed.method, per_seed.conf))
    winners = json.dumps(best, indent=2, sort_keys=True)
    grid.write(per_seed, f"Equal-budget tuning ({budget} trials per method, Optuna TPE + median "
               "pruning, validation folds)", metrics=VAL_METRICS,
               columns={"configuration": list(confs.values())},
               note=f"\nWinners (best_params.json):\n\n```json\n{winners}\n```\n")
    with open(os.path.join(output_dir, "best_params.json"), "w") as f:
        f.write(winners)
    grid.log(f"best configurations in {os.path.join(output_dir, 'best_params.json')}")
    return best
