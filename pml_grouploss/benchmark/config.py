"""Benchmark configuration as data: every option once, with its help text, choices and bounds.

:class:`BenchmarkConfig` is the single source of truth: the command line (``cli``) and its
``--help`` are generated from the field metadata below, and the same metadata drives the
validation (``validation``), which runs once, when a config is made, and raises errors that name
the field (the CLI rewrites the field to its option). Defaults = the embedded Omniglot benchmark,
sized to run in under 10 minutes on 2 CPU cores.
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field
from typing import Any, Callable, Dict, Optional, Tuple, Union

from .data import DATASET_NAMES
from .methods import DEFAULT_METHODS, METHODS
from .trunks import TRUNK_NAMES

#: the option groups of ``--help``, in order
GROUPS = {
    "data": "data",
    "model": "model and batches (the same for every method)",
    "optim": "optimisation (the same for every method)",
    "run": "run",
}
METRICS = ("precision_at_1", "mean_average_precision_at_r", "NMI", "r_precision")


def option(
    default: Any,
    help: str,
    group: str = "run",
    *,
    choices: Optional[Tuple[Any, ...]] = None,
    minimum: Union[None, float, Callable[["BenchmarkConfig"], float]] = None,
    above: Optional[float] = None,
    hint: str = "",
    flag: Optional[str] = "",
    item: str = "",
) -> Any:
    """A config field with its command-line metadata. ``minimum``: ``>=`` bound (a callable gets
    the config); ``above``: strict ``>`` bound; ``hint``: appended to a bound error; ``flag``:
    the option (``""`` = ``--`` + field name with dashes, ``None`` = no option); ``item``: what a
    tuple holds (its error says "must name at least one <item>")."""
    meta = dict(help=help, group=group, choices=choices, minimum=minimum, above=above, hint=hint)
    meta.update(flag=flag, item=item)
    if isinstance(default, dict):
        return field(default_factory=dict, metadata=meta)
    return field(default=default, metadata=meta)


@dataclass
class BenchmarkConfig:
    """The protocol: everything that is the same for every method of a run. Invalid values raise
    ``ConfigValueError``/``ConfigTypeError`` naming the field at construction."""

    dataset: str = option(
        "omniglot-small", "omniglot-small = the subset embedded in the package (offline, "
        "default); omniglot = full Omniglot in torchvision's layout; cub, cars196, sop = PML's "
        "dataset classes. All but omniglot-small need --data-root.", "data", choices=DATASET_NAMES)
    data_root: Optional[str] = option(
        None, "directory holding the dataset (see docs/datasets.md for each layout)", "data")
    download: bool = option(
        False, "download the dataset into --data-root first (needs network)", "data")
    max_classes: Optional[int] = option(
        None, "use only the first N training and N test classes (quick trials)", "data", minimum=1)
    num_folds: int = option(
        5, "the training classes are cut into this many class-disjoint folds; seed s validates "
        "on fold s %% num_folds and trains on the others", "data", minimum=2,
        hint="one fold of the training classes validates, the others train")
    augment: str = option("none", "training augmentation, the same for every method", "data",
                          choices=("none", "affine"))
    trunk: str = option(
        "cnn", "cnn = 4-block CNN for 28x28 inputs; torchvision trunks use the papers' "
        "preprocessing (resize 256, crop 227)", "model", choices=TRUNK_NAMES)
    pretrained: bool = option(
        False, "ImageNet weights for torchvision trunks (downloaded by torchvision; a clear "
        "error when offline)", "model")
    embedder: str = option(
        "linear", "linear layer on the pooled features, or the pooled features themselves",
        "model", choices=("linear", "identity"))
    embedding_size: int = option(64, "embedding dimension", "model", minimum=1)
    image_size: int = option(
        28, "input side for the small CNN", "model",
        minimum=lambda cfg: 16 if cfg.trunk == "cnn" else 1,
        hint="the cnn trunk halves its input four times")
    classes_per_batch: int = option(15, "classes per MPerClassSampler batch", "model", minimum=1)
    samples_per_class: int = option(
        8, "samples per class in a batch, MPerClassSampler's m", "model", minimum=1)
    batch_size: Optional[int] = option(
        None, "batch size; must be divisible by --samples-per-class (default: classes-per-batch "
        "x samples-per-class)", "model", minimum=1,
        hint="omit it for classes-per-batch x samples-per-class")
    epochs: int = option(16, "epochs", "optim", minimum=1)
    iterations_per_epoch: Optional[int] = option(
        None, "iterations per epoch (default: training images / batch size)", "optim", minimum=1,
        hint="omit it for one pass over the training images per epoch")
    optimizer: str = option("adam", "optimizer of trunk, embedder and loss parameters", "optim",
                            choices=("adam", "adamw", "radam", "sgd"))
    lr: float = option(
        1e-3, "learning rate of trunk and embedder; losses with parameters have their own (see "
        "--set METHOD.loss_lr=...)", "optim", above=0)
    weight_decay: float = option(1e-4, "weight decay", "optim", minimum=0)
    lr_decay_epoch: Optional[int] = option(
        None, "multiply every learning rate by 0.1 every N epochs (papers: 30)", "optim",
        minimum=1, hint="omit it for a constant learning rate")
    eval_every: int = option(
        2, "evaluate validation and train classes every N epochs; --epochs must be a multiple",
        "optim", minimum=1)
    patience: Optional[int] = option(
        None, "early stopping: stop a training when the validation metric has not improved for "
        "more than N epochs (default: off, train all --epochs)", "optim", minimum=0,
        hint="0 stops at the first evaluation without improvement; omit it to train every epoch")
    primary_metric: str = option(
        "precision_at_1", "validation metric that picks the checkpoint", "optim", choices=METRICS)
    recall_ks: Tuple[int, ...] = option((1, 2, 4, 8), "K of Recall@K", minimum=1, flag=None)
    seeds: Tuple[int, ...] = option(
        (0, 1, 2), "number of seeds (e.g. 3 -> 0,1,2) or a comma list (e.g. 0,5,7)", minimum=0,
        item="seed", hint="e.g. seeds (0, 1, 2)")
    methods: Tuple[str, ...] = option(
        DEFAULT_METHODS, "comma-separated methods. Built in: " + ", ".join(
            f"{k} ({v.description})" for k, v in METHODS.items()) + ". Any PML loss class name "
        "also works (e.g. MultiSimilarityLoss, NormalizedSoftmaxLoss) with PML's defaults.",
        flag="--losses", item="method")
    overrides: Dict[str, Dict[str, Any]] = option(
        {}, "{method: {param: value}}", flag="--set/--params-file")
    threads: Optional[int] = option(None, "torch CPU threads", minimum=1)
    device: str = option("cpu", "torch device")
    log_freq: int = option(10, "record-keeper logging interval", minimum=1, flag=None)
    eval_batch_size: int = option(256, "tester batch size", minimum=1, flag=None)
    save_embeddings: bool = option(True, "write test_embeddings.npz", flag=None)

    def __post_init__(self) -> None:
        from .validation import validate_config

        validate_config(self)

    def to_json(self) -> str:
        return json.dumps(dataclasses.asdict(self), indent=2, sort_keys=True)

    @classmethod
    def from_dict(cls, d: Dict[str, Any]) -> "BenchmarkConfig":
        """From ``config.json`` or a paper configuration; an unknown key is an error."""
        from .validation import ConfigValueError

        names = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(d) - names)
        if unknown:
            raise ConfigValueError(
                unknown[0],
                f"unknown config keys {unknown}; valid keys: {', '.join(sorted(names))}")
        return cls(**{k: (tuple(v) if isinstance(v, list) else v) for k, v in d.items()})

    def protocol_key(self) -> Dict[str, Any]:
        """The fields that must match for a resumed run to reuse finished seeds."""
        d = dataclasses.asdict(self)
        for k in ("seeds", "methods", "threads", "log_freq", "eval_batch_size",
                  "save_embeddings", "download"):
            d.pop(k)
        return d


def _paper(dataset: str, classes: int, samples: int, lr: float, weight_decay: float,
           temperature: float, anchors: int, **changes: Any) -> Dict[str, Any]:
    """The papers' common settings plus one dataset's (the classifier shares the network's
    optimizer in the reference, hence ``loss_lr = lr``)."""
    grouploss = dict(temperature=temperature, num_iterations=1, num_anchors=anchors, loss_lr=lr)
    paper = dict(
        dataset=dataset, trunk="googlenet", pretrained=True, embedder="identity",
        embedding_size=1024, image_size=227, augment="affine", optimizer="radam", epochs=60,
        lr_decay_epoch=30, eval_every=5, recall_ks=(1, 2, 4, 8), classes_per_batch=classes,
        samples_per_class=samples, lr=lr, weight_decay=weight_decay,
        overrides={"grouploss": grouploss})
    return {**paper, **changes}


#: The papers' settings for the big datasets. Sources: GL ECCV'20 §4.1 and GL++ §5 (GoogLeNet with
#: BN pretrained on ImageNet, resize 256 / random crop 227 / centre crop, RAdam, 60 epochs with the
#: learning rate x0.1 after 30) and the reference train.py defaults per dataset (classes x samples
#: per batch, anchors, lr, weight decay, temperature, 1 refinement step). Not reproduced: the 10
#: epochs of classification warm-up and the reference's best-on-test checkpoint reloads. NOT RUN
#: HERE (no GPU, no data); start from ``pml-grouploss-bench --config cub-paper --data-root DIR``.
PAPER_CONFIGS: Dict[str, Dict[str, Any]] = {
    "cub-paper": _paper("cub", 6, 9, 1.563663718906821e-4, 6.059722614369727e-6, 24.0, 2),
    "cars-paper": _paper("cars196", 5, 7, 2e-4, 4.863656728256105e-7, 79.0, 3),
    "sop-paper": _paper("sop", 10, 6, 6.077651100709081e-4, 5.2724883734490575e-12, 54.0, 2,
                        recall_ks=(1, 10, 100, 1000)),
}
