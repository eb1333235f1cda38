"""Validation of a :class:`~pml_grouploss.benchmark.config.BenchmarkConfig`, once, when it is made.

The per-field checks come from the field metadata of ``config`` (type, choices, bounds); the
checks that relate fields follow. Every problem raises :class:`ConfigValueError` or
:class:`ConfigTypeError` (subclasses of ``ValueError`` / ``TypeError``) naming the config field;
:func:`cli_message` rewrites field names to command-line options. Checks that need the data
(classes per batch vs training classes: :func:`check_batch`) run before training in ``suite``.
"""

from __future__ import annotations

import dataclasses
import os
import re
import tempfile
import typing
from typing import TYPE_CHECKING, Any, Callable, Dict, Optional

from .._validation import check_choice, check_int, check_number

if TYPE_CHECKING:
    from .config import BenchmarkConfig


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


def _as_field(name: str, check: Callable[[], Any], hint: str = "") -> Any:
    """Run ``check``; re-raise its error as a Config error of field ``name`` (with ``hint``)."""
    try:
        return check()
    except TypeError as err:
        raise ConfigTypeError(name, f"{err}{'; ' + hint if hint else ''}") from None
    except ValueError as err:
        raise ConfigValueError(name, f"{err}{'; ' + hint if hint else ''}") from None


def _check_scalar(name: str, value: Any, kind: type, meta: Dict[str, Any], minimum: Any) -> None:
    if kind is bool:
        if not isinstance(value, bool):
            raise TypeError(f"{name} must be a bool, got {value!r}")
    elif meta["choices"] is not None:
        check_choice(name, value, meta["choices"])
    elif kind is int:
        check_int(name, value, minimum)
    elif kind is float:
        strict = meta["above"] is not None
        check_number(name, value, minimum=meta["above"] if strict else minimum,
                     strict_minimum=strict)
    elif kind is str and not isinstance(value, str):
        raise TypeError(f"{name} must be a str, got {value!r}")


def _check_field(cfg: "BenchmarkConfig", f: dataclasses.Field, kind: Any) -> None:
    """The checks of one field from its type and metadata."""
    meta, value = f.metadata, getattr(cfg, f.name)
    minimum = meta["minimum"](cfg) if callable(meta["minimum"]) else meta["minimum"]
    args = typing.get_args(kind)
    if type(None) in args:  # Optional[X]
        if value is None:
            return
        kind = next(a for a in args if a is not type(None))
    origin = typing.get_origin(kind)
    if origin is dict:
        if not isinstance(value, dict):
            raise ConfigTypeError(f.name, f"{f.name} must be a dict, got {value!r}")
    elif origin is tuple:
        if not isinstance(value, tuple) or not value:
            what = meta["item"] or "K"
            raise ConfigValueError(f.name, f"{f.name} must name at least one {what}, got {value!r}")
        for v in value:
            _as_field(f.name, lambda: _check_scalar(f.name, v, args[0], meta, minimum),
                      meta["hint"])
        if len(set(value)) != len(value):
            raise ConfigValueError(f.name, f"{f.name} must be distinct, got {list(value)}")
    else:
        _as_field(f.name, lambda: _check_scalar(f.name, value, kind, meta, minimum), meta["hint"])


def validate_config(cfg: "BenchmarkConfig") -> None:
    """Raise a Config error for the first invalid field of ``cfg``."""
    from .trunks import feature_size

    hints = typing.get_type_hints(type(cfg))
    for f in dataclasses.fields(cfg):
        _check_field(cfg, f, hints[f.name])
    rules = [
        ("data_root", cfg.dataset != "omniglot-small" and not cfg.data_root,
         f"data_root: dataset {cfg.dataset} needs data_root DIR (see docs/datasets.md)"),
        ("epochs", cfg.epochs % cfg.eval_every != 0,
         f"epochs {cfg.epochs} must be a multiple of eval_every {cfg.eval_every} so that the "
         "last epoch is evaluated"),
        ("max_classes", cfg.max_classes is not None and cfg.max_classes < cfg.num_folds,
         f"max_classes {cfg.max_classes} leaves fewer training classes than the {cfg.num_folds}"
         " validation folds (num_folds); raise max_classes or lower num_folds"),
        ("seeds", any(s >= 2**32 for s in cfg.seeds), "seeds must be < 2**32 (NumPy's limit)"),
        ("pretrained", cfg.pretrained and cfg.trunk == "cnn",
         "pretrained: the small CNN has no pretrained weights; use trunk resnet50, googlenet or "
         "densenet121, or drop pretrained"),
        ("embedding_size", cfg.embedder == "identity"
         and feature_size(cfg.trunk) != cfg.embedding_size,
         f"embedding_size must equal the {cfg.trunk} trunk's feature size "
         f"{feature_size(cfg.trunk)} with embedder identity, got {cfg.embedding_size}"),
        ("batch_size", cfg.batch_size is not None and cfg.batch_size % cfg.samples_per_class,
         f"batch_size {cfg.batch_size} is not divisible by samples_per_class "
         f"{cfg.samples_per_class}; use a multiple such as "
         f"{cfg.samples_per_class * ((cfg.batch_size or 0) // cfg.samples_per_class or 1)}"),
    ]
    for name, failed, message in rules:
        if failed:
            raise ConfigValueError(name, message)
    _validate_methods(cfg)
    _validate_device(cfg)


def _validate_methods(cfg: "BenchmarkConfig") -> None:
    from .methods import build_method, get_method

    for name in cfg.methods:
        _as_field("methods", lambda: get_method(name))
    for name, params in cfg.overrides.items():
        if not isinstance(params, dict) or not all(isinstance(k, str) for k in params):
            raise ConfigTypeError(
                "overrides", f"overrides[{name!r}] must map parameter names to values, got "
                f"{params!r}")
        spec = _as_field("overrides", lambda: get_method(name))
        _as_field("overrides", lambda: build_method(spec, 2, cfg.embedding_size, params))


def _validate_device(cfg: "BenchmarkConfig") -> None:
    import torch

    try:
        device = torch.device(cfg.device)
    except (RuntimeError, TypeError) as err:
        raise ConfigValueError("device", f"device {cfg.device!r} is not a torch device ({err})")
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ConfigValueError("device", f"device {cfg.device!r}: no CUDA device; use cpu")


def check_batch(cfg: "BenchmarkConfig", num_train_classes: int) -> int:
    """The batch size of ``cfg``; raise unless its classes fit the training classes."""
    batch_size = cfg.batch_size or cfg.classes_per_batch * cfg.samples_per_class
    classes = batch_size // cfg.samples_per_class
    if classes > num_train_classes:
        raise ConfigValueError(
            "classes_per_batch", f"classes_per_batch: {classes} classes per batch but only "
            f"{num_train_classes} training classes (after removing the validation fold); lower "
            "classes_per_batch or batch_size, or use fewer folds")
    return batch_size


def _flag(f: dataclasses.Field) -> Optional[str]:
    flag = f.metadata["flag"]
    return "--" + f.name.replace("_", "-") if flag == "" else flag


def cli_message(err: ConfigError) -> str:
    """``err``'s message with config field names replaced by the command-line options."""
    from .config import BenchmarkConfig

    flags = {f.name: _flag(f) for f in dataclasses.fields(BenchmarkConfig)}
    if err.field in flags and flags[err.field] is None:
        return f"config field {err}"
    text, flag = str(err), flags.get(err.field) or err.field
    for prefix in (err.field + ": ", err.field + " "):
        if text.startswith(prefix):
            text = text[len(prefix):]
            break
    for name, option in flags.items():  # other fields named in the message: multi-word only
        if option and "_" in name:
            text = re.sub(rf"\b{name}\b", option, text)
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
            f"choose another {name}")
    try:
        os.rmdir(tempfile.mkdtemp(prefix=".pml-grouploss-write-test-", dir=existing))
    except OSError as err:
        raise ValueError(
            f"{name} {str(path)!r} cannot be created or written in {existing!r} "
            f"({err.strerror or err}); choose a writable directory") from None
