"""The grid runner that ``run``, ``tune``, ``ablate`` and ``inference`` share, and ``run`` itself.

:class:`Grid` owns a results directory: it checks the settings before creating anything, records
``config.json`` (a resumed run must match it) and ``environment.json``, caches the splits per
validation fold, runs (variant, seed) pairs seed-major with a progress line each, reusing finished
runs (resume), and writes ``per_seed.csv``, ``summary.csv`` and ``results.md``.
"""

from __future__ import annotations

import functools
import json
import os
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Dict, Iterator, List, Optional, Sequence, Tuple

import pandas as pd

from .aggregate import TABLE_METRICS, VAL_METRICS, format_table, summarize, to_markdown
from .config import BenchmarkConfig
from .data import Splits, class_folds, load_base, splits_for_fold
from .methods import get_method
from .provenance import environment
from .runner import run_one
from .validation import (FOLD_HINT, ConfigValueError, check_batch, check_output_dir,
                         read_json_object)

Log = Callable[..., None]
#: told the protocol phase ("train", "final_test", "figures", "idle"); the tests observe it
OnPhase = Callable[[str], None]
#: packages whose versions decide the numbers (kernels, samplers, k-NN, logging)
@dataclass(frozen=True)
class Variant:
    """One column of a comparison: ``method`` with ``overrides`` and protocol ``changes``,
    written to ``runs/<run_dir>/seed<s>``; ``extra`` columns go into its rows."""

    label: str
    method: str
    overrides: Dict[str, Any] = field(default_factory=dict)
    changes: Dict[str, Any] = field(default_factory=dict)
    extra: Dict[str, Any] = field(default_factory=dict)
    run_dir: str = ""


def check_before_output(cfg: BenchmarkConfig) -> None:
    """What needs the installed extras or the dataset's class list, before any output exists:
    record-keeper/tensorboard/faiss (PML's ``with-hooks-cpu`` extra), the folds and the batch."""
    import importlib.util

    missing = [m for m in ("record_keeper", "tensorboard", "faiss")
               if importlib.util.find_spec(m) is None]
    if missing:
        raise RuntimeError(f"the benchmark needs {', '.join(missing)}: pip install "
                           "'pml_grouploss[with-hooks-cpu]' (or [with-hooks] with faiss-gpu)")
    check_batch(cfg, training_classes(cfg))


def training_classes(cfg: BenchmarkConfig) -> int:
    """The fewest training classes of any fold (the validation fold removed)."""
    train_base = load_base(cfg.data.dataset, cfg.data.data_root, cfg.data.download)[0]
    n_train = min(len(set(train_base.labels)), cfg.data.max_classes or len(train_base.labels))
    try:
        largest = max(len(fold) for fold in class_folds(n_train, cfg.data.num_folds))
    except ValueError as err:  # too many folds for the training classes
        raise ConfigValueError("data.num_folds", f"data.{err}") from None
    if n_train < 2 * cfg.data.num_folds:
        raise ConfigValueError("data.num_folds", f"data.num_folds {cfg.data.num_folds}: the "
                               f"dataset has {n_train} training classes, fewer than the "
                               f"{2 * cfg.data.num_folds} that {FOLD_HINT}; lower data.num_folds")
    return n_train - largest


def prepare_output(cfg: BenchmarkConfig, output_dir: str, fresh: bool = False,
                   job: str = "run") -> None:
    """Create ``output_dir``; refuse to mix runs of different protocol settings, or of another
    ``job`` (``"run"``, ``"tune"``, ``"ablate <sweep>"``: each writes its own tables over the
    same file names; recorded in ``job.json``, absent in directories of older versions, which
    resume as before). A path that cannot be a writable directory raises ``ValueError``
    (naming ``output_dir``) first. ``cfg.run.threads`` sets torch's CPU threads here, before
    ``environment.json`` records them."""
    import shutil

    import torch

    path = os.path.join(output_dir, "config.json")
    check_output_dir(output_dir)
    if fresh and os.path.isdir(output_dir):
        _check_deletable(output_dir)
        for entry in os.scandir(output_dir):  # its contents: output_dir may be "."
            if entry.is_dir(follow_symlinks=False):
                shutil.rmtree(entry.path)
            else:
                os.remove(entry.path)
    os.makedirs(output_dir, exist_ok=True)
    _check_job(output_dir, job)
    if os.path.isfile(path):
        old = read_config(path).protocol_key()
        diff = sorted(k for k, v in cfg.protocol_key().items() if old.get(k) != v)
        if diff:
            raise ValueError(
                f"output_dir {output_dir!r} holds a run with different settings "
                f"({', '.join(diff)}); use another output_dir, or fresh=True to delete it and "
                "start over")
    with open(path, "w") as f:
        f.write(cfg.to_json())
    with open(os.path.join(output_dir, JOB_FILE), "w") as f:
        json.dump({"job": job}, f)
    if cfg.run.threads is not None:
        torch.set_num_threads(cfg.run.threads)
    env = {**environment(), "workers": cfg.run.workers}
    if cfg.run.workers > 1:
        env["torch_threads_per_worker"] = cfg.run.threads or 1
    with open(os.path.join(output_dir, "environment.json"), "w") as f:
        json.dump(env, f, indent=2)


JOB_FILE = "job.json"


def _check_deletable(output_dir: str) -> None:
    """``fresh=True`` deletes only a results directory (with ``config.json``) or an empty one:
    ``--fresh --output-dir .`` (or ``~``) would otherwise delete whatever the directory holds."""
    if os.listdir(output_dir) and not os.path.isfile(os.path.join(output_dir, "config.json")):
        raise ValueError(
            f"output_dir {output_dir!r} is not a results directory (no config.json) and not "
            "empty: fresh=True deletes results directories only; choose a new or empty "
            "output_dir")


def _check_job(output_dir: str, job: str) -> None:
    """Refuse ``output_dir`` when its ``job.json`` records another job."""
    path = os.path.join(output_dir, JOB_FILE)
    if not os.path.isfile(path):
        return
    old = read_json_object(path, f"{path!r} is damaged", 'a JSON object {"job": ...}',
                           "delete it if the directory holds the results of this job").get("job")
    if old != job:
        raise ValueError(
            f"output_dir {output_dir!r} holds the results of `{old}`, not of `{job}` (both write "
            "results.md, per_seed.csv and summary.csv); use another output_dir, or fresh=True to "
            "delete it and start over")


def results_config(output_dir: str) -> BenchmarkConfig:
    """The config of a finished results directory (its ``config.json``)."""
    path = os.path.join(output_dir, "config.json")
    if not os.path.isfile(path):
        raise FileNotFoundError(f"{output_dir!r} is not a results directory of `run` (no "
                                "config.json); run the benchmark first")
    return read_config(path)


def read_config(path: str) -> BenchmarkConfig:
    """The config a run recorded in ``path`` (its ``config.json``); ``ValueError`` naming the
    file and the fix when it is damaged."""
    fix = ("restore it, or rerun the benchmark with fresh=True to delete its directory and start "
           "over")
    data = read_json_object(path, f"{path!r} is damaged", "a JSON object of settings", fix)
    try:
        return BenchmarkConfig.from_recorded(data)
    except (TypeError, ValueError) as err:
        raise ValueError(f"{path!r} is damaged: not the settings of a run ({err}); {fix}") from None


class Grid:
    """Runs variants x seeds in ``output_dir`` for ``cfg`` (``job``: see :func:`prepare_output`).
    ``prepare=False`` for a directory that already holds a run (the inference ablation writes into
    a sub-directory of it)."""

    def __init__(self, cfg: BenchmarkConfig, output_dir: str, fresh: bool = False,
                 log: Optional[Log] = None, on_phase: Optional[OnPhase] = None,
                 prepare: bool = True, job: str = "run") -> None:
        self.cfg, self.output_dir = cfg, output_dir
        # progress lines on stdout, flushed (the run may be logged to a file)
        self.log = log or functools.partial(print, flush=True)
        self.on_phase = on_phase or (lambda _: None)
        self._splits: Dict[Any, Splits] = {}
        self.reused = False  # the last run was finished before (its final.json reused)
        if prepare:
            check_before_output(cfg)
            prepare_output(cfg, output_dir, fresh, job)
        os.makedirs(output_dir, exist_ok=True)

    def splits(self, seed: int, **changes: Any) -> Splits:
        """The splits of the validation fold of ``seed`` (cached per fold and changes)."""
        key = (seed % self.cfg.data.num_folds, tuple(sorted(changes.items())))
        if key not in self._splits:
            self._splits[key] = splits_for_fold(self.cfg, key[0], **changes)
        return self._splits[key]

    def train(self, variant: Variant, seed: int, final_test: bool = True,
              on_validation: Optional[Callable[[int, float], bool]] = None) -> Dict[str, Any]:
        """Train (or reuse) one (variant, seed); the row of ``per_seed.csv``."""
        cfg = self.cfg.replace(**variant.changes) if variant.changes else self.cfg
        run_dir = os.path.join(self.output_dir, "runs", variant.run_dir or variant.label,
                               f"seed{seed}")
        self.reused = os.path.isfile(os.path.join(run_dir, "final.json"))
        row = run_one(cfg, get_method(variant.method), seed, self.splits(seed), run_dir,
                      label=variant.label, overrides=variant.overrides, final_test=final_test,
                      on_phase=self.on_phase, on_validation=on_validation)
        return {**row, **variant.extra}

    def run(self, variants: Sequence[Variant], final_test: bool = True,
            execute: Optional[Callable[[Variant, int], Dict[str, Any]]] = None) -> pd.DataFrame:
        """Every variant for every seed, rows seed-major (finished seeds are complete
        comparisons); ``execute(variant, seed)`` makes a row (default: :meth:`train`). With
        ``cfg.run.workers`` > 1 and the default ``execute``, the trainings run in that many
        spawned processes (``cfg.run.threads or 1`` torch threads each; every run seeds itself,
        so the rows are the same); ``on_phase`` is not called across processes."""
        jobs = [(v, s) for s in self.cfg.run.seeds for v in variants]
        if execute is None and min(self.cfg.run.workers, len(jobs)) > 1:
            results = self._in_processes(jobs, final_test)
        else:
            execute = execute or (lambda v, s: self.train(v, s, final_test))
            results = ((i, *_timed(self, execute, v, s)) for i, (v, s) in enumerate(jobs))
        rows: List[Dict[str, Any]] = [{} for _ in jobs]
        for done, (i, row, self.reused, seconds) in enumerate(results, 1):
            rows[i] = row
            self.progress(done, len(jobs), jobs[i][0].label, jobs[i][1], row, seconds)
        return pd.DataFrame(rows)

    def _in_processes(self, jobs: List[Tuple[Variant, int]], final_test: bool) -> Iterator[Tuple]:
        """``(index, row, reused, seconds)`` of every job as its worker process finishes it."""
        import multiprocessing
        from concurrent.futures import ProcessPoolExecutor, as_completed

        pool = ProcessPoolExecutor(
            min(self.cfg.run.workers, len(jobs)), multiprocessing.get_context("spawn"),
            initializer=_start_worker, initargs=(self.cfg.run.threads or 1, os.getpid()))
        try:
            futures = {pool.submit(_train_in_worker, self.cfg, self.output_dir, v, s, final_test): i
                       for i, (v, s) in enumerate(jobs)}
            for future in as_completed(futures):
                yield (futures[future], *future.result())
        finally:
            pool.shutdown(cancel_futures=True)

    def progress(self, done: int, total: int, label: str, seed: int, row: Dict[str, Any],
                 seconds: float) -> None:
        where = "test" if "precision_at_1" in row else "val"
        metric = row.get("precision_at_1", row.get("val_precision_at_1"))
        status = "reused" if self.reused else f"{seconds:.0f}s"
        self.log(f"[{done}/{total}] {label} seed {seed}: {where} P@1 {100 * metric:.1f} "
                 f"({status})")

    def write(self, per_seed: pd.DataFrame, title: str, metrics=TABLE_METRICS,
              group: str = "method", columns: Optional[Dict[str, List[Any]]] = None,
              note: str = "") -> str:
        """per_seed.csv, summary.csv and results.md (``# title``, the table, ``note``); prints
        and returns the table. ``columns`` are inserted after the first."""
        per_seed.to_csv(os.path.join(self.output_dir, "per_seed.csv"), index=False)
        summary = summarize(per_seed, group=group, metrics=[m for m, _ in metrics])
        for name, values in (columns or {}).items():
            summary[name] = values
        summary.to_csv(os.path.join(self.output_dir, "summary.csv"), index=False)
        table = format_table(summary, group=group, metrics=metrics)
        for name, values in (columns or {}).items():
            table.insert(1, name, values)
        md = to_markdown(table)
        if len(summary) and summary.n_seeds.min() < 2:  # the title promises "± 95% CI"
            md += ("\nA row of one seed has no confidence interval (its cells have no ±): run "
                   "at least 2 seeds, e.g. --seeds 3.\n")
        with open(os.path.join(self.output_dir, "results.md"), "w") as f:
            f.write(f"# {title}\n\n{md}{note}")
        self.log("\n" + md)
        return md


def _timed(grid: Grid, execute: Callable, variant: Variant, seed: int) -> Tuple:
    """``(row, reused, seconds)`` of ``execute(variant, seed)``."""
    t0, grid.reused = time.time(), False
    row = execute(variant, seed)
    return row, grid.reused, time.time() - t0


def _start_worker(threads: int, parent: int) -> None:
    """Torch threads and quiet PML in a worker; it exits when its parent process is gone (e.g.
    killed by SIGTERM), instead of training on as an orphan."""
    import threading

    import torch

    from .runner import quiet_pml

    def watch() -> None:
        while os.getppid() == parent:
            time.sleep(1.0)
        os._exit(1)

    threading.Thread(target=watch, daemon=True).start()
    torch.set_num_threads(threads)
    quiet_pml(False)


def _train_in_worker(cfg: BenchmarkConfig, output_dir: str, variant: Variant, seed: int,
                     final_test: bool) -> Tuple:
    """:func:`_timed` :meth:`Grid.train` in a worker process."""
    grid = Grid(cfg, output_dir, prepare=False)
    return _timed(grid, lambda v, s: grid.train(v, s, final_test), variant, seed)


def run_benchmark(cfg: BenchmarkConfig, output_dir: str, fresh: bool = False,
                  figures: bool = True, log: Optional[Log] = None,
                  on_phase: Optional[OnPhase] = None) -> pd.DataFrame:
    """The main job: every method x seed, then tables and figures in ``output_dir``. With
    ``cfg.run.final_test`` False no test image is read: validation tables, convergence figure."""
    grid = Grid(cfg, output_dir, fresh, log, on_phase)
    t0 = time.time()
    variants = [Variant(m, m, dict(cfg.run.overrides.get(m, {}))) for m in cfg.run.methods]
    test = cfg.run.final_test
    per_seed = grid.run(variants, final_test=test)
    title = "Test classes (touched once)" if test else "Validation folds only (no test image read)"
    grid.write(per_seed, f"{title}, mean ± 95% CI over seeds",
               metrics=TABLE_METRICS if test else VAL_METRICS)
    if figures:
        from . import figures as figs

        figs.make_all(output_dir, cfg, on_phase=grid.on_phase)
    grid.log(f"results in {output_dir} ({time.time() - t0:.0f}s)")
    return per_seed
