"""Benchmark configuration as data: every option once, with its help text, choices and bounds.

:class:`BenchmarkConfig` holds four typed sections (data, model, optim, run). The command line
(``cli``, one ``--help`` group per section, flat option names: field names are unique across
sections) and the validation (``validation``: once, when a config is made, errors naming the
dotted field ``optim.epochs``) are generated from the field metadata below. Defaults = the
embedded Omniglot benchmark, each method trained until its validation curve plateaus (about 16
minutes on 2 CPU cores, docs/benchmark.md "Run time").
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field
from typing import Any, Callable, Dict, Iterator, Mapping, Optional, Tuple, Union

from .data import DATASET_NAMES
from .methods import DEFAULT_METHODS, METHODS
from ..trunks import TRUNK_NAMES

METRICS = ("precision_at_1", "mean_average_precision_at_r", "NMI", "r_precision")


def option(default: Any, help: str, *, choices: Optional[Tuple[Any, ...]] = None,
           minimum: Union[None, float, Callable[[Any], float]] = None,
           above: Optional[float] = None, below: Optional[float] = None, hint: str = "",
           flag: Optional[str] = "", item: str = "") -> Any:
    """A config field with its command-line metadata. ``minimum``: ``>=`` bound (a callable gets
    the section); ``above``/``below``: strict bounds; ``hint``: appended to a bound error;
    ``flag``: the option (``""`` = ``--`` + field name with dashes, ``None`` = no option);
    ``item``: what a tuple holds (its error says "must name at least one <item>")."""
    meta = dict(help=help, choices=choices, minimum=minimum, above=above, below=below, hint=hint,
                flag=flag, item=item)
    if isinstance(default, dict):  # a mutable default
        return field(default_factory=dict, metadata=meta)
    return field(default=default, metadata=meta)


@dataclass
class DataConfig:
    """The dataset and its class-disjoint folds."""

    dataset: str = option(
        "omniglot-small", "omniglot-small = the subset embedded in the package (offline, "
        "default); omniglot = full Omniglot in torchvision's layout; cub, cars196, sop = PML's "
        "dataset classes. All but omniglot-small need --data-root.", choices=DATASET_NAMES)
    data_root: Optional[str] = option(
        None, "directory holding the dataset (see docs/datasets.md for each layout)")
    download: bool = option(False, "download the dataset into --data-root first (needs network)")
    max_classes: Optional[int] = option(
        None, "use only the first N training and N test classes (quick trials)", minimum=1)
    num_folds: int = option(
        5, "the training classes are cut into this many class-disjoint folds; seed s validates "
        "on fold s %% num_folds and trains on the others", minimum=2,
        hint="one fold of the training classes validates, the others train")
    augment: str = option("none", "training augmentation, the same for every method",
                          choices=("none", "affine"))
    label_noise: float = option(
        0.0, "symmetric noise on the training labels only: this fraction of them is replaced "
        "by another class (pml_grouploss.datasets.NoisyLabels)", minimum=0, below=1)


@dataclass
class ModelConfig:
    """Trunk, embedder and batches: the same for every method."""

    trunk: str = option(
        "cnn", "cnn = 4-block CNN for 28x28 inputs; torchvision trunks use the papers' "
        "preprocessing (resize 256, crop 227)", choices=TRUNK_NAMES)
    trunk_width: int = option(
        32, "channels of the cnn trunk's conv layers (the classic Omniglot trunk has 64: ~3x "
        "the training time, ~8-10 test (2-4 validation) points higher R@1 for every method; "
        "docs/benchmark.md)",
        minimum=1)
    pretrained: bool = option(
        False, "ImageNet weights for torchvision trunks (downloaded by torchvision; a clear "
        "error when offline)")
    embedder: str = option(
        "linear", "linear layer on the pooled features, or the pooled features themselves",
        choices=("linear", "identity"))
    embedding_size: int = option(64, "embedding dimension", minimum=1)
    image_size: int = option(
        28, "input side for the small CNN", minimum=lambda m: 16 if m.trunk == "cnn" else 1,
        hint="the cnn trunk halves its input four times")
    classes_per_batch: int = option(15, "classes per MPerClassSampler batch", minimum=2,
                                    hint="a batch of one class has no negative pair to learn from")
    samples_per_class: int = option(
        8, "samples per class in a batch, MPerClassSampler's m", minimum=1)
    sampler: str = option(
        "m_per_class", "m_per_class = PML's MPerClassSampler; nearest_class = pml_grouploss "
        "NearestClassSampler, hard batches of a seed class and its nearest classes by centroid "
        "(GL++ §5.1)", choices=("m_per_class", "nearest_class"))
    batch_size: Optional[int] = option(
        None, "batch size; must be divisible by --samples-per-class (default: classes-per-batch "
        "x samples-per-class)", minimum=1, hint="omit it for classes-per-batch x samples-per-class")


@dataclass
class OptimConfig:
    """Optimisation and model selection: the same for every method."""

    epochs: int = option(
        40, "the most epochs a training runs; with --patience it stops earlier, once its "
        "validation curve has plateaued", minimum=1)
    iterations_per_epoch: Optional[int] = option(
        None, "iterations per epoch (default: training images / batch size)", minimum=1,
        hint="omit it for one pass over the training images per epoch")
    optimizer: str = option("adam", "optimizer of trunk, embedder and loss parameters",
                            choices=("adam", "adamw", "radam", "sgd"))
    lr: float = option(
        1e-3, "learning rate of trunk and embedder; losses with parameters have their own (see "
        "--set METHOD.loss_lr=...)", above=0)
    weight_decay: float = option(1e-4, "weight decay", minimum=0)
    lr_decay_epoch: Optional[int] = option(
        None, "multiply every learning rate by 0.1 every N epochs (papers: 30)", minimum=1,
        hint="omit it for a constant learning rate")
    warmup_epochs: int = option(
        0, "epochs of classification warm-up at the start (pml_grouploss.trainers."
        "ClassificationWarmup, the papers' recipe) for the GroupLoss-family methods; the others "
        "ignore it; 0 = off", minimum=0)
    lr_plateau_patience: Optional[int] = option(
        4, "multiply every learning rate by 0.1 when the validation metric has not improved "
        "for N epochs (PyTorch's ReduceLROnPlateau, stepped by PML's HookContainer at each "
        "evaluation; a multiple of --eval-every)", minimum=1)
    eval_every: int = option(
        2, "evaluate validation and train classes every N epochs; --epochs must be a multiple",
        minimum=1)
    patience: Optional[int] = option(
        8, "early stopping: stop a training when the validation metric has not improved for "
        "more than N epochs (the same rule for every method)", minimum=0,
        hint="0 stops at the first evaluation without improvement; omit it to train every epoch")
    primary_metric: str = option(
        "precision_at_1", "validation metric that picks the checkpoint", choices=METRICS)
    train_eval_classes: Optional[int] = option(
        None, "train R@1 is measured on this many training classes (a fixed draw), default as "
        "many as the validation fold, so train and validation R@1 have the same gallery size",
        minimum=1)


@dataclass
class RunConfig:
    """What runs (methods, seeds) and where (device, threads); not part of the protocol but
    ``final_test``."""

    seeds: Tuple[int, ...] = option(
        (0, 1, 2), "number of seeds (e.g. 3 -> 0,1,2) or a comma list (e.g. 0,5,7)", minimum=0,
        below=2**32, item="seed", hint="e.g. seeds (0, 1, 2); NumPy takes seeds < 2**32")
    methods: Tuple[str, ...] = option(
        DEFAULT_METHODS, "comma-separated methods. Built in: " + ", ".join(
            f"{k} ({v.description})" for k, v in METHODS.items()) + ". Any PML loss class name "
        "also works (e.g. MultiSimilarityLoss, NormalizedSoftmaxLoss) with PML's defaults.",
        flag="--losses", item="method",
        hint="e.g. run.methods grouploss,triplet (omit run.methods for the default methods)")
    overrides: Dict[str, Dict[str, Any]] = option(
        {}, "{method: {param: value}}", flag="--set/--params-file")
    recall_ks: Tuple[int, ...] = option((1, 2, 4, 8), "K of Recall@K", minimum=1, flag=None)
    final_test: bool = option(
        True, "validation only: no test image is read; the tables show validation metrics",
        flag="--no-test")
    workers: int = option(
        2, "processes that train (method, seed) runs in parallel (default: 2), each with "
        "--threads torch threads (1 if not given); 1 = in this process", minimum=1)
    threads: Optional[int] = option(None, "torch CPU threads", minimum=1)
    device: str = option("cpu", "torch device: cpu, cuda or cuda:N (mps where PyTorch has it)")
    log_freq: int = option(10, "record-keeper logging interval", minimum=1, flag=None)
    eval_batch_size: int = option(256, "tester batch size", minimum=1, flag=None)
    save_embeddings: bool = option(True, "write test_embeddings.npz", flag=None)


#: the sections of a config and the titles of their ``--help`` groups, in order
SECTIONS = {
    "data": (DataConfig, "data"),
    "model": (ModelConfig, "model and batches (the same for every method)"),
    "optim": (OptimConfig, "optimisation (the same for every method)"),
    "run": (RunConfig, "run"),
}
#: run settings that a resumed run may change (the rest must match its config.json)
NOT_PROTOCOL = ("run.seeds", "run.methods", "run.workers", "run.threads", "run.log_freq",
                "run.eval_batch_size", "run.save_embeddings", "data.download")


def config_fields() -> Iterator[Tuple[str, dataclasses.Field]]:
    """``("optim.epochs", field)`` for every field of every section, in order."""
    for section, (cls, _) in SECTIONS.items():
        for f in dataclasses.fields(cls):
            yield f"{section}.{f.name}", f


#: flat option name -> dotted field ("epochs" -> "optim.epochs")
DOTTED = {dotted.split(".")[1]: dotted for dotted, _ in config_fields()}
#: fields added after runs were recorded, with the value those runs used (a ``config.json``
#: without the field ran with it: the cnn trunk had 64 channels before ``trunk_width``)
RECORDED_BEFORE = {"model.trunk_width": 64}


@dataclass
class BenchmarkConfig:
    """The protocol: everything that is the same for every method of a run. Invalid values raise
    ``ConfigValueError``/``ConfigTypeError`` naming the dotted field at construction. Make one
    from flat option names with :meth:`from_dict` (``{"epochs": 2}``) or change one with
    :meth:`replace`."""

    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    run: RunConfig = field(default_factory=RunConfig)

    def __post_init__(self) -> None:
        from .validation import validate_config

        validate_config(self)

    def get(self, dotted: str) -> Any:
        """The value of field ``"optim.epochs"``."""
        section, name = dotted.split(".")
        return getattr(getattr(self, section), name)

    def to_dict(self) -> Dict[str, Dict[str, Any]]:
        """``{"data": {...}, "model": {...}, ...}``, as ``config.json`` (:meth:`to_json`)."""
        return dataclasses.asdict(self)

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2, sort_keys=True)

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> "BenchmarkConfig":
        """From ``config.json`` (nested, or the flat one of older versions), a paper
        configuration or flat option names; sections and flat names may mix, a flat name wins.
        An unknown key is an error."""
        return cls().replace(**d)

    @classmethod
    def from_recorded(cls, d: Mapping[str, Any]) -> "BenchmarkConfig":
        """From a run's ``config.json``: :meth:`from_dict`, where a field of
        :data:`RECORDED_BEFORE` the file lacks gets the value its run used, not today's
        default; a ``data_root``/``download`` recorded with the embedded omniglot-small (which
        reads neither; older versions accepted them) is dropped."""
        present = {f"{section}.{k}" for section, value in d.items() if section in SECTIONS
                   for k in value} | {DOTTED.get(k, k) for k in d if k not in SECTIONS}
        missing = {k: v for k, v in RECORDED_BEFORE.items() if k not in present}
        return cls().replace(**{k.split(".")[1]: v for k, v in missing.items()}).replace(
            **_without_unused_data_options(d))

    def replace(self, **changes: Any) -> "BenchmarkConfig":
        """A copy with ``changes``: flat option names (``epochs=2``) or whole sections
        (``optim={"epochs": 2}``); validated again. An unknown key is an error."""
        from .validation import ConfigTypeError, ConfigValueError

        for key, value in changes.items():
            if key in SECTIONS and not (isinstance(value, Mapping) or isinstance(
                    value, SECTIONS[key][0])):
                raise ConfigTypeError(key, f"{key} must be a dict of its fields or a "
                                      f"{SECTIONS[key][0].__name__} instance, got {value!r}")
        flat = {f"{key}.{k}": v for key, value in changes.items() if key in SECTIONS for k, v in (
            dataclasses.asdict(value) if dataclasses.is_dataclass(value) else value).items()}
        flat.update({DOTTED.get(k, k): v for k, v in changes.items() if k not in SECTIONS})
        unknown = sorted(set(flat) - set(DOTTED.values()))
        if unknown:
            raise ConfigValueError(unknown[0], f"unknown config keys {unknown}; valid keys: "
                                   f"{', '.join(DOTTED)}")
        return BenchmarkConfig(**{section: dataclasses.replace(getattr(self, section), **{
            k.split(".")[1]: tuple(v) if isinstance(v, list) else v
            for k, v in flat.items() if k.startswith(section + ".")}) for section in SECTIONS})

    def protocol_key(self) -> Dict[str, Any]:
        """The fields that must match for a resumed run to reuse finished seeds."""
        return {k: self.get(k) for k, _ in config_fields() if k not in NOT_PROTOCOL}


def _without_unused_data_options(d: Mapping[str, Any]) -> Dict[str, Any]:
    """``d`` (a ``config.json``, nested or flat) without ``data_root`` and ``download`` when its
    dataset is omniglot-small, which reads neither."""
    d = dict(d)
    data = dict(d.get("data", {}))
    if {**data, **d}.get("dataset", "omniglot-small") != "omniglot-small":
        return d
    for key in ("data_root", "download"):
        d.pop(key, None)
        data.pop(key, None)
    if "data" in d:
        d["data"] = data
    return d


#: the papers' common settings (the classifier shares the network's optimizer in the reference)
PAPER_BASE: Dict[str, Any] = dict(
    dataset="cub", trunk="googlenet", pretrained=True, embedder="identity", embedding_size=1024,
    image_size=227, augment="affine", optimizer="radam", epochs=60, lr_decay_epoch=30,
    warmup_epochs=10, lr_plateau_patience=None, patience=None, eval_every=5,
    recall_ks=(1, 2, 4, 8))


def _paper(dataset: str, classes: int, samples: int, lr: float, weight_decay: float,
           temperature: float, anchors: int, **changes: Any) -> Dict[str, Any]:
    """:data:`PAPER_BASE` plus one dataset's settings (``loss_lr = lr`` as in the reference)."""
    grouploss = dict(temperature=temperature, num_iterations=1, num_anchors=anchors, loss_lr=lr)
    return {**PAPER_BASE, "dataset": dataset, "classes_per_batch": classes,
            "samples_per_class": samples, "lr": lr, "weight_decay": weight_decay,
            "overrides": {"grouploss": grouploss}, **changes}


#: The papers' settings for the big datasets. Sources: GL ECCV'20 §4.1 and GL++ §5 (GoogLeNet with
#: BN pretrained on ImageNet, resize 256 / random crop 227 / centre crop, RAdam, 60 epochs with the
#: learning rate x0.1 after 30, 10 epochs of classification warm-up) and the reference train.py
#: defaults per dataset (classes x samples per batch, anchors, lr, weight decay, temperature, 1
#: refinement step). Not reproduced: the reference's best-on-test checkpoint reloads. NOT RUN
#: HERE (no GPU, no data); start from ``pml-grouploss-bench --config cub-paper --data-root DIR``.
PAPER_CONFIGS: Dict[str, Dict[str, Any]] = {
    "cub-paper": _paper("cub", 6, 9, 1.563663718906821e-4, 6.059722614369727e-6, 24.0, 2),
    "cars-paper": _paper("cars196", 5, 7, 2e-4, 4.863656728256105e-7, 79.0, 3),
    "sop-paper": _paper("sop", 10, 6, 6.077651100709081e-4, 5.2724883734490575e-12, 54.0, 2,
                        recall_ks=(1, 10, 100, 1000)),
}
