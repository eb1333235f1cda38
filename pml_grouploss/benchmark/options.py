"""Parsed command-line options -> :class:`BenchmarkConfig` and the results directory.

Everything here runs before any data is read or any model trained. The config validates its own
fields (``validation``); this module reads what only the command line has: the ``--seeds``
syntax, ``--params-file``, the existence of ``--data-root`` and ``--output-dir``.
"""

from __future__ import annotations

import argparse
import json
import os
from typing import Any, Dict, Tuple

from .config import PAPER_CONFIGS, BenchmarkConfig
from .methods import parse_overrides
from .validation import check_output_dir

#: options copied into config fields of the same name when given
# fmt: off
CONFIG_OPTIONS = (
    "dataset", "data_root", "max_classes", "num_folds", "augment", "trunk", "pretrained",
    "embedder", "embedding_size", "image_size", "classes_per_batch", "samples_per_class",
    "batch_size", "epochs", "iterations_per_epoch", "optimizer", "lr", "weight_decay",
    "lr_decay_epoch", "eval_every", "primary_metric", "patience", "device", "threads",
)
# fmt: on


def parse_seeds(text: str) -> Tuple[int, ...]:
    """``"3"`` -> ``(0, 1, 2)``; ``"0,5,7"`` -> ``(0, 5, 7)`` (range checks: the config)."""
    parts = [x.strip() for x in text.split(",")]
    try:
        seeds = [int(x) for x in parts if x]
    except ValueError:
        raise ValueError(
            f"--seeds: expected a count or a comma list of integers, got {text!r}"
        ) from None
    if not seeds:
        raise ValueError(f"--seeds: give a count (e.g. 3) or a list (e.g. 0,5,7), got {text!r}")
    if len(seeds) == 1 and "," not in text:
        if seeds[0] < 1:
            raise ValueError(f"--seeds must be >= 1, got {seeds[0]}")
        return tuple(range(seeds[0]))
    return tuple(seeds)


def load_params_file(path: str) -> Dict[str, Dict[str, Any]]:
    """``--params-file``: JSON ``{method: {param: value}}``; errors name the option and file."""
    what = f"--params-file {path!r}"
    expected = 'expected JSON {"method": {"param": value}}, e.g. the best_params.json of `tune`'
    if not os.path.isfile(path):
        raise FileNotFoundError(f"{what} does not exist or is not a file")
    try:
        with open(path, encoding="utf-8") as f:
            data = json.load(f)
    except json.JSONDecodeError as err:
        raise ValueError(
            f"{what} is not valid JSON ({err.msg} at line {err.lineno} column {err.colno}); "
            f"{expected}"
        ) from None
    except (OSError, UnicodeDecodeError) as err:
        raise ValueError(f"{what} cannot be read ({err}); {expected}") from None
    if not isinstance(data, dict) or not all(
        isinstance(k, str) and isinstance(v, dict) for k, v in data.items()
    ):
        raise ValueError(f"{what}: {expected}; got {json.dumps(data)[:80]}")
    return data


def config_from_args(args: argparse.Namespace) -> BenchmarkConfig:
    """The run's config from parsed options (``--config`` first, explicit options override)."""
    base = dict(PAPER_CONFIGS[args.config]) if getattr(args, "config", None) else {}
    for name in CONFIG_OPTIONS:
        value = getattr(args, name, None)
        if value is not None:
            base[name] = value
    if getattr(args, "download", False):
        base["download"] = True
    if getattr(args, "seeds", None) is not None:
        base["seeds"] = parse_seeds(args.seeds)
    overrides = {k: dict(v) for k, v in base.get("overrides", {}).items()}
    if getattr(args, "params_file", None):
        for k, v in load_params_file(args.params_file).items():
            overrides.setdefault(k, {}).update(v)
    for k, v in parse_overrides(getattr(args, "set", [])).items():
        overrides.setdefault(k, {}).update(v)
    base["overrides"] = overrides
    if getattr(args, "losses", None) is not None:  # "" and "," are errors, not the default
        base["methods"] = tuple(m.strip() for m in args.losses.split(",") if m.strip())
    cfg = BenchmarkConfig.from_dict(base)
    unknown = sorted(set(cfg.overrides) - set(cfg.methods) - {"grouploss"})
    if unknown and getattr(args, "command", "run") == "run":
        raise ValueError(
            f"--set/--params-file name methods that are not run: {unknown}; "
            f"add them to --losses"
        )
    if cfg.data_root and not cfg.download and not os.path.isdir(cfg.data_root):
        raise FileNotFoundError(
            f"--data-root {cfg.data_root!r} does not exist; point it at the "
            f"{cfg.dataset} directory (docs/datasets.md) or add --download"
        )
    if getattr(args, "command", "run") == "tune" and args.budget < 1:
        raise ValueError(f"--budget must be >= 1 (configurations per method), got {args.budget}")
    return cfg


def output_dir_from_args(args: argparse.Namespace) -> str:
    """``--output-dir`` or the subcommand's default, checked writable (nothing is created)."""
    default = {"run": "main", "tune": "tune"}.get(args.command) or f"ablate_{args.sweep}"
    out = args.output_dir or os.path.join("results", default)
    check_output_dir(out, "--output-dir")
    return out
