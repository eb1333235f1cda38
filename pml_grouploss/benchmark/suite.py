"""Run every (method, seed) of a benchmark, aggregate, write tables and figures."""

from __future__ import annotations

import json
import os
import time
from typing import Any, Dict, List, Optional, Sequence, Tuple

import pandas as pd

from .aggregate import format_table, summarize, to_markdown
from .config import BenchmarkConfig
from .data import check_batch, splits_for_fold
from .methods import MethodSpec, get_method
from .runner import run_one
from .validation import check_output_dir


def say(*args) -> None:
    """Progress line on stdout, flushed (the run may be logged to a file)."""
    print(*args, flush=True)


#: (label, method name, parameter overrides) -- one column of a comparison
Variant = Tuple[str, str, Dict[str, Any]]


def check_dependencies() -> None:
    """The benchmark logs through record-keeper/tensorboard and searches neighbours with faiss
    (PML's ``with-hooks-cpu`` extra); say so at once instead of failing after training."""
    import importlib.util

    missing = [
        m for m in ("record_keeper", "tensorboard", "faiss") if importlib.util.find_spec(m) is None
    ]
    if missing:
        raise RuntimeError(
            f"the benchmark needs {', '.join(missing)}: "
            "pip install 'pml_grouploss[with-hooks-cpu]' "
            "(or [with-hooks] with faiss-gpu)"
        )


def variants_from_config(cfg: BenchmarkConfig) -> List[Variant]:
    out = []
    for name in cfg.methods:
        get_method(name)  # fail early on unknown names
        out.append((name, name, dict(cfg.overrides.get(name, {}))))
    return out


def prepare_output(cfg: BenchmarkConfig, output_dir: str, fresh: bool = False) -> None:
    """Create ``output_dir``; refuse to mix runs of different protocol settings. A path that
    cannot be a writable directory raises ``ValueError`` (naming ``output_dir``) first.
    ``cfg.threads`` (``--threads``) sets torch's CPU threads here, before ``environment.json``
    records them."""
    path = os.path.join(output_dir, "config.json")
    check_output_dir(output_dir)
    try:
        if fresh and os.path.isdir(output_dir):
            import shutil

            shutil.rmtree(output_dir)
        os.makedirs(output_dir, exist_ok=True)
    except OSError as err:
        raise ValueError(f"output_dir {output_dir!r} cannot be created ({err})") from None
    if os.path.isfile(path):
        with open(path) as f:
            old = BenchmarkConfig.from_dict(json.load(f))
        if old.protocol_key() != cfg.protocol_key():
            diff = sorted(
                k for k, v in cfg.protocol_key().items() if old.protocol_key().get(k) != v
            )
            raise ValueError(
                f"--output-dir {output_dir!r} holds a run with different settings "
                f"({', '.join(diff)}); "
                "use another --output-dir, or --fresh to delete it and start over"
            )
    with open(path, "w") as f:
        f.write(cfg.to_json())
    if cfg.threads is not None:
        import torch

        torch.set_num_threads(cfg.threads)
    with open(os.path.join(output_dir, "environment.json"), "w") as f:
        json.dump(environment(), f, indent=2)


#: packages whose versions decide the numbers (kernels, samplers, k-NN, logging)
ENVIRONMENT_PACKAGES = (
    "torch",
    "torchvision",
    "pytorch-metric-learning",
    "numpy",
    "scipy",
    "scikit-learn",
    "faiss-cpu",
    "faiss-gpu",
    "record-keeper",
    "pml_grouploss",
)


def environment() -> Dict[str, Any]:
    """Versions, threads and machine of this process: training on CPU is deterministic for a
    fixed environment, but another torch build or thread count gives other roundings, hence
    other (equally valid) training trajectories. Written next to ``config.json``."""
    import platform
    from importlib import metadata

    import torch

    versions = {}
    for name in ENVIRONMENT_PACKAGES:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            continue  # not installed (e.g. faiss-gpu beside faiss-cpu): nothing to record
    return {
        "git_commit": _git_commit(),
        "python": platform.python_version(),
        "platform": platform.platform(),
        "torch_threads": torch.get_num_threads(),
        "cpu_count": os.cpu_count(),
        "cuda": torch.version.cuda if torch.cuda.is_available() else None,
        "packages": versions,
    }


def _git_commit() -> Optional[str]:
    """The checkout's commit (with ``+dirty`` for uncommitted changes), None outside git."""
    import subprocess

    here = os.path.dirname(os.path.abspath(__file__))
    try:
        commit = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=here, capture_output=True, text=True, timeout=10
        )
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no"],
            cwd=here,
            capture_output=True,
            text=True,
            timeout=10,
        )
    except (OSError, subprocess.SubprocessError):
        return None
    if commit.returncode != 0:
        return None
    return commit.stdout.strip() + ("+dirty" if dirty.stdout.strip() else "")


def run_variants(
    cfg: BenchmarkConfig,
    variants: Sequence[Variant],
    output_dir: str,
    final_test: bool = True,
    log=None,
) -> pd.DataFrame:
    """Train every variant for every seed (seed-major, so finished seeds are complete
    comparisons) and return the per-seed rows. Finished runs are reused."""
    log = log or say
    rows = []
    splits_by_fold: Dict[int, Any] = {}
    total = len(variants) * len(cfg.seeds)
    done = 0
    for seed in cfg.seeds:
        fold = seed % cfg.num_folds
        if fold not in splits_by_fold:
            splits_by_fold[fold] = splits_for_fold(cfg, fold)
        splits = splits_by_fold[fold]
        for label, name, overrides in variants:
            spec: MethodSpec = get_method(name)
            run_dir = os.path.join(output_dir, "runs", label, f"seed{seed}")
            finished = os.path.isfile(os.path.join(run_dir, "final.json"))
            t0 = time.time()
            row = run_one(
                cfg,
                spec,
                seed,
                splits,
                run_dir,
                label=label,
                overrides=overrides,
                final_test=final_test,
            )
            done += 1
            status = "reused" if finished else f"{time.time() - t0:.0f}s"
            metric = row.get("precision_at_1", row.get("val_precision_at_1"))
            where = "test" if "precision_at_1" in row else "val"
            log(f"[{done}/{total}] {label} seed {seed}: {where} P@1 {100 * metric:.1f} ({status})")
            rows.append(row)
    return pd.DataFrame(rows)


def write_tables(per_seed: pd.DataFrame, output_dir: str, title: str = "") -> str:
    """per_seed.csv, summary.csv, results.md; returns the Markdown table."""
    per_seed.to_csv(os.path.join(output_dir, "per_seed.csv"), index=False)
    summary = summarize(per_seed)
    summary.to_csv(os.path.join(output_dir, "summary.csv"), index=False)
    md = to_markdown(format_table(summary))
    with open(os.path.join(output_dir, "results.md"), "w") as f:
        if title:
            f.write(f"# {title}\n\n")
        f.write(md)
    return md


def run_benchmark(
    cfg: BenchmarkConfig, output_dir: str, fresh: bool = False, figures: bool = True, log=None
) -> pd.DataFrame:
    """The main job: every method x seed, then tables and figures in ``output_dir``."""
    log = log or say
    from .data import load_base

    check_dependencies()
    variants = variants_from_config(cfg)
    train_base, _, _ = load_base(cfg.dataset, cfg.data_root, cfg.download)
    n_train = len(set(train_base.labels))
    if cfg.max_classes:
        n_train = min(n_train, cfg.max_classes)
    if cfg.num_folds > n_train:
        raise ValueError(
            f"--num-folds {cfg.num_folds} exceeds the {n_train} training classes; lower it "
            "(each fold needs a validation class)"
        )
    n_fit = n_train - -(-n_train // cfg.num_folds)  # training classes left after the largest fold
    check_batch(cfg.classes_per_batch, cfg.samples_per_class, cfg.batch_size, n_fit)
    prepare_output(cfg, output_dir, fresh)
    t0 = time.time()
    per_seed = run_variants(cfg, variants, output_dir, log=log)
    md = write_tables(
        per_seed, output_dir, title="Test classes (touched once), mean ± 95% CI over seeds"
    )
    log("\n" + md)
    if figures:
        from . import figures as figs

        figs.make_all(output_dir, cfg)
    log(f"results in {output_dir} ({time.time() - t0:.0f}s)")
    return per_seed
