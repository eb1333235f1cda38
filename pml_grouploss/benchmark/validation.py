"""Validation of a :class:`~pml_grouploss.benchmark.config.BenchmarkConfig`, once, when it is made.

Every problem raises :class:`ConfigValueError` or :class:`ConfigTypeError` (subclasses of
``ValueError`` / ``TypeError``) whose message starts with the config field and says the fix; its
``field`` attribute lets the CLI name the command-line option instead (:func:`cli_message`).
Checks that need the data (classes per batch vs. training classes) run before training in
``suite``; :func:`check_output_dir` checks a results directory without creating anything.
"""

from __future__ import annotations

import os
import tempfile
from typing import TYPE_CHECKING, Any, Callable

from .._validation import check_choice, check_int, check_number

if TYPE_CHECKING:
    from .config import BenchmarkConfig

#: command-line option of each config field (the others are ``--`` + field with dashes)
FLAGS = {
    "methods": "--losses",
    "overrides": "--set/--params-file",
}
#: fields without a command-line option (set by --config or by library code)
NOT_OPTIONS = ("recall_ks", "log_freq", "eval_batch_size", "save_embeddings")
#: the small CNN halves its input four times (2x2 max-pools)
MIN_CNN_IMAGE_SIZE = 16
CHOICES = {
    "embedder": ("linear", "identity"),
    "augment": ("none", "affine"),
    "optimizer": ("adam", "adamw", "radam", "sgd"),
    "primary_metric": ("precision_at_1", "mean_average_precision_at_r", "NMI", "r_precision"),
}


class ConfigError(Exception):
    """Mixin: the invalid config ``field``."""

    field: str = ""


class ConfigValueError(ConfigError, ValueError):
    def __init__(self, field: str, message: str) -> None:
        super().__init__(message)
        self.field = field


class ConfigTypeError(ConfigError, TypeError):
    def __init__(self, field: str, message: str) -> None:
        super().__init__(message)
        self.field = field


def _field(field: str, check: Callable[[], Any], hint: str = "") -> Any:
    """Run ``check``; re-raise its error as a Config error of ``field`` (with ``hint``)."""
    try:
        return check()
    except TypeError as err:
        raise ConfigTypeError(field, f"{err}{'; ' + hint if hint else ''}") from None
    except ValueError as err:
        raise ConfigValueError(field, f"{err}{'; ' + hint if hint else ''}") from None


def _optional_int(cfg: "BenchmarkConfig", field: str, minimum: int, hint: str = "") -> None:
    value = getattr(cfg, field)
    if value is not None:
        _field(field, lambda: check_int(field, value, minimum), hint)


def validate_config(cfg: "BenchmarkConfig") -> None:
    """Raise a Config error for the first invalid field of ``cfg``."""
    from .data import DATASET_NAMES
    from .trunks import TRUNK_NAMES

    _field("dataset", lambda: check_choice("dataset", cfg.dataset, DATASET_NAMES))
    _field("trunk", lambda: check_choice("trunk", cfg.trunk, TRUNK_NAMES))
    for field, choices in CHOICES.items():
        _field(field, lambda: check_choice(field, getattr(cfg, field), choices))
    for field in ("download", "pretrained", "save_embeddings"):
        if not isinstance(getattr(cfg, field), bool):
            raise ConfigTypeError(field, f"{field} must be a bool, got {getattr(cfg, field)!r}")
    if cfg.dataset != "omniglot-small" and not cfg.data_root:
        raise ConfigValueError(
            "data_root",
            f"data_root: --dataset {cfg.dataset} needs --data-root DIR (see docs/datasets.md)",
        )
    for field in (
        "embedding_size",
        "classes_per_batch",
        "samples_per_class",
        "epochs",
        "eval_every",
        "log_freq",
        "eval_batch_size",
    ):
        _field(field, lambda: check_int(field, getattr(cfg, field), 1))
    _validate_sizes(cfg)
    _validate_schedule(cfg)
    _validate_folds(cfg)
    _validate_seeds(cfg)
    _validate_methods(cfg)
    _validate_device(cfg)


def _validate_sizes(cfg: "BenchmarkConfig") -> None:
    minimum = MIN_CNN_IMAGE_SIZE if cfg.trunk == "cnn" else 1
    hint = "the cnn trunk halves its input four times" if cfg.trunk == "cnn" else ""
    _field("image_size", lambda: check_int("image_size", cfg.image_size, minimum), hint)
    _optional_int(cfg, "batch_size", 1, "omit it for classes-per-batch x samples-per-class")
    _optional_int(cfg, "threads", 1)
    if not isinstance(cfg.recall_ks, tuple) or not cfg.recall_ks:
        raise ConfigValueError("recall_ks", f"recall_ks must be a tuple of K, got {cfg.recall_ks}")
    for k in cfg.recall_ks:
        _field("recall_ks", lambda: check_int("recall_ks", k, 1))


def _validate_schedule(cfg: "BenchmarkConfig") -> None:
    _optional_int(
        cfg, "iterations_per_epoch", 1, "omit it for one pass over the training images per epoch"
    )
    _optional_int(cfg, "lr_decay_epoch", 1, "omit it for a constant learning rate")
    _optional_int(
        cfg,
        "patience",
        0,
        "0 stops at the first evaluation without improvement; omit it to train every epoch",
    )
    _field("lr", lambda: check_number("lr", cfg.lr, minimum=0, strict_minimum=True))
    _field("weight_decay", lambda: check_number("weight_decay", cfg.weight_decay, minimum=0))
    if cfg.epochs % cfg.eval_every != 0:
        raise ConfigValueError(
            "epochs",
            f"epochs {cfg.epochs} must be a multiple of --eval-every {cfg.eval_every} so that "
            "the last epoch is evaluated",
        )


def _validate_folds(cfg: "BenchmarkConfig") -> None:
    _field(
        "num_folds",
        lambda: check_int("num_folds", cfg.num_folds, 2),
        "one fold of the training classes validates, the others train",
    )
    _optional_int(cfg, "max_classes", 1)
    if cfg.max_classes is not None and cfg.max_classes < cfg.num_folds:
        raise ConfigValueError(
            "max_classes",
            f"max_classes {cfg.max_classes} leaves fewer training classes than the "
            f"{cfg.num_folds} validation folds (--num-folds); raise --max-classes or lower "
            "--num-folds",
        )


def _validate_seeds(cfg: "BenchmarkConfig") -> None:
    if not isinstance(cfg.seeds, tuple) or not cfg.seeds:
        raise ConfigValueError("seeds", f"seeds must name at least one seed, got {cfg.seeds!r}")
    for s in cfg.seeds:
        _field("seeds", lambda: check_int("seeds", s, 0), "e.g. --seeds 3 or --seeds 0,5,7")
        if s >= 2**32:
            raise ConfigValueError("seeds", f"seeds must be < 2**32 (NumPy's limit), got {s}")
    if len(set(cfg.seeds)) != len(cfg.seeds):
        raise ConfigValueError("seeds", f"seeds must be distinct, got {list(cfg.seeds)}")


def _validate_methods(cfg: "BenchmarkConfig") -> None:
    from .methods import get_method

    if not isinstance(cfg.methods, tuple) or not cfg.methods:
        raise ConfigValueError(
            "methods",
            "methods must name at least one method, e.g. --losses grouploss,triplet "
            "(omit --losses for the default methods)",
        )
    if len(set(cfg.methods)) != len(cfg.methods):
        raise ConfigValueError("methods", f"methods must be distinct, got {list(cfg.methods)}")
    for name in cfg.methods:
        _field("methods", lambda: get_method(name))
    if not isinstance(cfg.overrides, dict):
        raise ConfigTypeError("overrides", f"overrides must be a dict, got {cfg.overrides!r}")
    for name, params in cfg.overrides.items():
        if not isinstance(params, dict) or not all(isinstance(k, str) for k in params):
            raise ConfigTypeError(
                "overrides",
                f"overrides[{name!r}] must map parameter names to values, got {params!r}",
            )
        try:
            spec = get_method(name)
        except ValueError:
            continue  # not a method: `run` refuses it (options), the ablations ignore it
        _field("overrides", lambda: _check_builds(spec, params, cfg.embedding_size))


def _check_builds(spec: Any, params: dict, embedding_size: int) -> None:
    """Build the loss and miner of method ``spec`` with ``params`` (for 2 classes); an error
    names the method."""
    from .methods import build_method

    try:
        build_method(spec, 2, embedding_size, params)
    except (TypeError, ValueError) as err:
        text = str(err).removeprefix(f"--set {spec.name}.*: ")
        raise type(err)(text if spec.name in text else f"{spec.name}: {text}") from None


def _validate_device(cfg: "BenchmarkConfig") -> None:
    import torch

    try:
        device = torch.device(cfg.device)
    except (RuntimeError, TypeError) as err:
        raise ConfigValueError("device", f"device {cfg.device!r} is not a torch device ({err})")
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ConfigValueError("device", f"device {cfg.device!r}: no CUDA device; use cpu")


def cli_message(err: ConfigError) -> str:
    """``err``'s message with its config field replaced by the command-line option."""
    text = str(err)
    if err.field in NOT_OPTIONS:
        return f"config field {text}"
    flag = FLAGS.get(err.field, "--" + err.field.replace("_", "-"))
    if text.startswith(flag):
        return text
    if text.startswith(err.field + ":"):
        text = text[len(err.field) + 1 :].lstrip()
    elif text.startswith(err.field + " "):
        text = text[len(err.field) + 1 :]
    return f"argument {flag}: {text}"


def check_output_dir(path: Any, name: str = "output_dir") -> None:
    """Raise ``ValueError`` (naming ``name``) unless ``path`` is a writable directory or can be
    created as one. Creates nothing (a probe directory is made and removed)."""
    if not isinstance(path, (str, os.PathLike)) or not str(path):
        raise ValueError(f"{name} must be a directory path, got {path!r}")
    full = os.path.abspath(os.fspath(path))
    if os.path.exists(full) and not os.path.isdir(full):
        raise ValueError(f"{name} {str(path)!r} is a file, not a directory; choose another {name}")
    existing = full
    while not os.path.exists(existing):
        existing = os.path.dirname(existing)
    if not os.path.isdir(existing):
        raise ValueError(
            f"{name} {str(path)!r} cannot be created: {existing!r} is a file, not a directory; "
            f"choose another {name}"
        )
    try:
        os.rmdir(tempfile.mkdtemp(prefix=".pml-grouploss-write-test-", dir=existing))
    except OSError as err:
        raise ValueError(
            f"{name} {str(path)!r} cannot be created or written in {existing!r} "
            f"({err.strerror or err}); choose a writable directory"
        ) from None
