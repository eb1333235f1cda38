"""Validation of a :class:`~pml_grouploss.benchmark.config.BenchmarkConfig`, once, when it is made.

The per-field checks come from the field metadata of ``config`` (type, choices, bounds); the
checks that relate fields follow. Every problem raises :class:`ConfigValueError` or
:class:`ConfigTypeError` (subclasses of ``ValueError`` / ``TypeError``) naming the dotted config
field (``optim.epochs``); ``cli.cli_message`` rewrites field names to command-line options.
Checks that need the data (classes per batch vs training classes: :func:`check_batch`) run
before training in ``suite``.
"""

from __future__ import annotations

import json

import os
import tempfile
import typing
from typing import TYPE_CHECKING, Any, Callable, Dict

from .._validation import check_choice, check_int, check_number

if TYPE_CHECKING:
    from .config import BenchmarkConfig


class ConfigError(Exception):
    """Mixin: the invalid config ``field`` (dotted, e.g. ``"optim.epochs"``)."""

    def __init__(self, field: str, message: str) -> None:
        super().__init__(message)
        self.field = field


class ConfigValueError(ConfigError, ValueError):
    """A config field has an invalid value."""


class ConfigTypeError(ConfigError, TypeError):
    """A config field has a value of the wrong type."""


#: why a validation fold needs two classes (the end of "fewer training classes than the N that")
FOLD_HINT = ("data.num_folds validation folds of at least 2 classes need (P@1 on one class is 1 "
             "whatever the model)")


def _as_field(name: str, check: Callable[[], Any], hint: str = "") -> Any:
    """Run ``check``; re-raise its error as a Config error of field ``name`` (with ``hint``)."""
    try:
        return check()
    except TypeError as err:
        raise ConfigTypeError(name, f"{err}{'; ' + hint if hint else ''}") from None
    except ValueError as err:
        raise ConfigValueError(name, f"{err}{'; ' + hint if hint else ''}") from None


def _check_value(name: str, value: Any, kind: Any, meta: Dict[str, Any], minimum: Any) -> None:
    """Raise ``TypeError``/``ValueError`` unless ``value`` fits type ``kind`` and ``meta``."""
    args = typing.get_args(kind)
    if type(None) in args:  # Optional[X]
        if value is None:
            return
        kind = next(a for a in args if a is not type(None))
    origin = typing.get_origin(kind)
    if origin is tuple:
        if not isinstance(value, tuple) or not value:
            raise ValueError(f"{name} must name at least one {meta['item'] or 'K'}, got {value!r}")
        for v in value:
            _check_value(name, v, typing.get_args(kind)[0], meta, minimum)
        if len(set(value)) != len(value):
            raise ValueError(f"{name} must be distinct, got {list(value)}")
    elif meta["choices"] is not None:
        check_choice(name, value, meta["choices"])
    elif kind in (int, float):
        strict = meta["above"] is not None
        number = check_int(name, value, minimum) if kind is int else check_number(
            name, value, minimum=meta["above"] if strict else minimum, strict_minimum=strict)
        if meta["below"] is not None and not number < meta["below"]:
            raise ValueError(f"{name} must be < {meta['below']:g}, got {value!r}")
    elif not isinstance(value, origin or kind):  # bool, str, dict
        raise TypeError(f"{name} must be a {(origin or kind).__name__}, got {value!r}")


def validate_config(cfg: "BenchmarkConfig") -> None:
    """Raise a Config error for the first invalid field of ``cfg``."""
    from .config import SECTIONS, config_fields
    from ..trunks import feature_size

    for section, (cls, _) in SECTIONS.items():
        if not isinstance(getattr(cfg, section), cls):
            raise ConfigTypeError(section, f"{section} must be a {cls.__name__}, got "
                                  f"{getattr(cfg, section)!r}")
    hints = {s: typing.get_type_hints(cls) for s, (cls, _) in SECTIONS.items()}
    for name, f in config_fields():
        section, meta = getattr(cfg, name.split(".")[0]), f.metadata
        minimum = meta["minimum"](section) if callable(meta["minimum"]) else meta["minimum"]
        kind = hints[name.split(".")[0]][f.name]
        _as_field(name, lambda: _check_value(name, getattr(section, f.name), kind, meta, minimum),
                  meta["hint"])
    data, model, optim = cfg.data, cfg.model, cfg.optim
    rules = [
        ("data.data_root", data.dataset != "omniglot-small" and not data.data_root,
         f"data.data_root: dataset {data.dataset} needs data.data_root DIR (see "
         "docs/datasets.md)"),
        ("data.data_root", data.dataset == "omniglot-small" and data.data_root is not None,
         "data.data_root: dataset omniglot-small is embedded in the package and reads no "
         "data.data_root; drop data.data_root, or choose the data.dataset under it (omniglot, "
         "cub, cars196, sop)"),
        ("data.download", data.dataset == "omniglot-small" and data.download,
         "data.download: dataset omniglot-small is embedded in the package and is not "
         "downloaded; drop data.download, or choose the data.dataset to download (omniglot, "
         "cub, cars196, sop)"),
        ("optim.warmup_epochs", optim.warmup_epochs >= optim.epochs,
         f"optim.warmup_epochs {optim.warmup_epochs} is not below optim.epochs {optim.epochs}: "
         "the GroupLoss methods would train as plain cross-entropy only and be reported as "
         "GroupLoss; lower optim.warmup_epochs (0 = off) or raise optim.epochs"),
        ("optim.lr_decay_epoch", (optim.lr_decay_epoch or 0) >= optim.epochs,
         f"optim.lr_decay_epoch {optim.lr_decay_epoch} is not below optim.epochs "
         f"{optim.epochs}: the learning rate would never decay; lower optim.lr_decay_epoch or "
         "omit it (constant learning rate)"),
        ("optim.epochs", optim.epochs % optim.eval_every != 0,
         f"optim.epochs {optim.epochs} must be a multiple of optim.eval_every "
         f"{optim.eval_every} so that the last epoch is evaluated"),
        ("optim.lr_plateau_patience", (optim.lr_plateau_patience or 0) % optim.eval_every,
         f"optim.lr_plateau_patience {optim.lr_plateau_patience} must be a multiple of "
         f"optim.eval_every {optim.eval_every} (the plateau is judged at evaluations)"),
        ("data.max_classes", (data.max_classes or 2 * data.num_folds) < 2 * data.num_folds,
         f"data.max_classes {data.max_classes} leaves fewer training classes than the "
         f"{2 * data.num_folds} that {FOLD_HINT}; raise data.max_classes or lower data.num_folds"),
        ("model.pretrained", model.pretrained and model.trunk == "cnn",
         "model.pretrained: the small CNN has no pretrained weights; use model.trunk resnet50, "
         "googlenet or densenet121, or drop model.pretrained"),
        ("model.embedding_size", model.embedder == "identity"
         and feature_size(model.trunk, model.trunk_width) != model.embedding_size,
         f"model.embedding_size must equal the {model.trunk} trunk's feature size "
         f"{feature_size(model.trunk, model.trunk_width)} with model.embedder identity, got "
         f"{model.embedding_size}"),
        ("model.batch_size", model.batch_size is not None
         and model.batch_size % model.samples_per_class,
         f"model.batch_size {model.batch_size} is not divisible by model.samples_per_class "
         f"{model.samples_per_class}; use a multiple such as "
         f"{model.samples_per_class * ((model.batch_size or 0) // model.samples_per_class or 1)}"),
        ("model.batch_size", (model.batch_size or 2 * model.samples_per_class)
         < 2 * model.samples_per_class,
         f"model.batch_size {model.batch_size} holds one class of model.samples_per_class "
         f"{model.samples_per_class}: a batch of one class has no negative pair to learn from; "
         f"use at least {2 * model.samples_per_class}"),
    ]
    for name, failed, message in rules:
        if failed:
            raise ConfigValueError(name, message)
    _validate_methods(cfg)
    _validate_device(cfg.run.device)


def _validate_methods(cfg: "BenchmarkConfig") -> None:
    """Every method and every ``overrides`` entry builds with its parameters and takes one
    batch of the configured shape (:func:`~.methods.check_trains`); global random states are
    kept."""
    import torch

    from .methods import build_method, check_trains, get_method

    model = cfg.model
    samples = model.samples_per_class
    classes = (model.batch_size or model.classes_per_batch * samples) // samples
    for name in cfg.run.methods:
        _as_field("run.methods", lambda: get_method(name))
    for name, params in cfg.run.overrides.items():
        if not isinstance(params, dict) or not all(isinstance(k, str) for k in params):
            raise ConfigTypeError(
                "run.overrides", f"run.overrides[{name!r}] must map parameter names to values, "
                f"got {params!r}")
    for name in dict.fromkeys((*cfg.run.overrides, *cfg.run.methods)):
        field = "run.overrides" if name in cfg.run.overrides else "run.methods"
        spec = _as_field(field, lambda: get_method(name))
        with torch.random.fork_rng(devices=[]):
            built = _as_field(field, lambda: build_method(
                spec, classes, model.embedding_size, cfg.run.overrides.get(name)))
        _as_field(field, lambda: check_trains(built, classes, samples, model.embedding_size))


def _validate_device(name: str) -> None:
    import torch

    try:
        device = torch.device(name)
    except (RuntimeError, TypeError) as err:
        raise ConfigValueError("run.device", f"run.device {name!r} is not a torch device ({err})")
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ConfigValueError("run.device", f"run.device {name!r}: no CUDA device; use cpu")
    if device.type == "cuda" and (device.index or 0) >= torch.cuda.device_count():
        raise ConfigValueError("run.device", f"run.device {name!r}: only "
                               f"{torch.cuda.device_count()} CUDA devices; use cuda:0 or cpu")
    usable = {"cpu": True, "cuda": True, "mps": torch.backends.mps.is_available()}
    if not usable.get(device.type, False):
        raise ConfigValueError("run.device", f"run.device {name!r} cannot train here; use cpu "
                               "or cuda (or mps where PyTorch has it)")


def check_batch(cfg: "BenchmarkConfig", num_train_classes: int) -> int:
    """The batch size of ``cfg``; raise unless its classes fit the training classes."""
    model = cfg.model
    batch_size = model.batch_size or model.classes_per_batch * model.samples_per_class
    classes = batch_size // model.samples_per_class
    if classes > num_train_classes:
        raise ConfigValueError(
            "model.classes_per_batch", f"model.classes_per_batch: {classes} classes per batch but"
            f" only {num_train_classes} training classes (after removing the validation fold); "
            "lower model.classes_per_batch or model.batch_size, or use fewer folds")
    return batch_size


def check_output_dir(path: Any, name: str = "output_dir") -> None:
    """Raise ``ValueError`` (naming ``name``) unless ``path`` is a writable directory or can be
    created as one. Creates nothing (a probe directory is made and removed)."""
    if not isinstance(path, (str, os.PathLike)) or not str(path):
        raise ValueError(f"{name} must be a directory path, got {path!r}")
    full = existing = os.path.abspath(os.fspath(path))
    while not os.path.exists(existing):
        existing = os.path.dirname(existing)
    if not os.path.isdir(existing):
        why = "is" if existing == full else f"cannot be created: {existing!r} is"
        raise ValueError(f"{name} {str(path)!r} {why} a file, not a directory; choose another "
                         f"{name}")
    try:
        os.rmdir(tempfile.mkdtemp(prefix=".pml-grouploss-write-test-", dir=existing))
    except OSError as err:
        raise ValueError(
            f"{name} {str(path)!r} cannot be created or written in {existing!r} "
            f"({err.strerror or err}); choose a writable directory") from None


def read_json_object(path: str, what: str, expected: str, fix: str) -> Dict[str, Any]:
    """The JSON object in ``path``; a ``ValueError`` starting with ``what`` and ending with
    ``fix`` when the file cannot be read, is not JSON, or holds no object (``expected``)."""
    try:
        with open(path, encoding="utf-8") as f:
            data = json.load(f)
    except json.JSONDecodeError as err:
        raise ValueError(f"{what}: not valid JSON ({err.msg} at line {err.lineno} column "
                         f"{err.colno}); {fix}") from None
    except (OSError, UnicodeDecodeError) as err:
        raise ValueError(f"{what}: cannot be read ({err}); {fix}") from None
    if not isinstance(data, dict):
        raise ValueError(f"{what}: expected {expected}, got {json.dumps(data)[:60]}; {fix}")
    return data
