"""Benchmark configuration: everything that is the same for every method of a run."""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field
from typing import Any, Dict, Optional, Tuple


@dataclass
class BenchmarkConfig:
    """Shared settings (the protocol). Defaults = the embedded Omniglot benchmark, sized to run in
    under 10 minutes on 2 CPU cores. Invalid values raise at construction
    (:mod:`~pml_grouploss.benchmark.validation`)."""

    dataset: str = "omniglot-small"
    data_root: Optional[str] = None
    download: bool = False
    trunk: str = "cnn"
    pretrained: bool = False
    embedder: str = "linear"
    embedding_size: int = 64
    image_size: int = 28
    augment: str = "none"
    classes_per_batch: int = 15
    samples_per_class: int = 8
    batch_size: Optional[int] = None
    epochs: int = 16
    iterations_per_epoch: Optional[int] = None
    optimizer: str = "adam"
    lr: float = 1e-3
    weight_decay: float = 1e-4
    lr_decay_epoch: Optional[int] = None
    eval_every: int = 2
    patience: Optional[int] = None
    num_folds: int = 5
    max_classes: Optional[int] = None
    primary_metric: str = "precision_at_1"
    recall_ks: Tuple[int, ...] = (1, 2, 4, 8)
    seeds: Tuple[int, ...] = (0, 1, 2)
    methods: Tuple[str, ...] = ("grouploss", "grouploss_ce", "triplet", "proxyanchor")
    overrides: Dict[str, Dict[str, Any]] = field(default_factory=dict)
    threads: Optional[int] = None
    device: str = "cpu"
    log_freq: int = 10
    eval_batch_size: int = 256
    save_embeddings: bool = True

    def __post_init__(self) -> None:
        """Validate every field once (``ConfigValueError`` / ``ConfigTypeError`` naming it)."""
        from .validation import validate_config

        validate_config(self)

    def to_json(self) -> str:
        return json.dumps(dataclasses.asdict(self), indent=2, sort_keys=True)

    @classmethod
    def from_dict(cls, d: Dict[str, Any]) -> "BenchmarkConfig":
        names = {f.name for f in dataclasses.fields(cls)}
        d = {k: (tuple(v) if isinstance(v, list) else v) for k, v in d.items() if k in names}
        return cls(**d)

    def protocol_key(self) -> Dict[str, Any]:
        """The fields that must match for a resumed run to reuse finished seeds."""
        d = dataclasses.asdict(self)
        for k in (
            "seeds",
            "methods",
            "threads",
            "log_freq",
            "eval_batch_size",
            "save_embeddings",
            "download",
        ):
            d.pop(k)
        return d


#: The papers' settings for the big datasets. Sources: GL ECCV'20 §4.1 and GL++ §5 (GoogLeNet with
#: BN pretrained on ImageNet, resize 256 / random crop 227 / centre crop, RAdam, 60 epochs with the
#: learning rate x0.1 after 30) and the reference train.py defaults per dataset (classes x samples
#: per batch, anchors, lr, weight decay, temperature, 1 refinement step; the classifier shares the
#: network's optimizer there, hence loss_lr = lr). Not reproduced: the 10 epochs of classification
#: warm-up and the reference's best-on-test checkpoint reloads. NOT RUN HERE (no GPU, no data);
#: a user with a GPU starts from ``pml-grouploss-bench --config cub-paper --data-root /data/cub``.
PAPER_CONFIGS: Dict[str, Dict[str, Any]] = {
    "cub-paper": dict(
        dataset="cub",
        trunk="googlenet",
        pretrained=True,
        embedder="identity",
        embedding_size=1024,
        image_size=227,
        augment="affine",
        classes_per_batch=6,
        samples_per_class=9,
        optimizer="radam",
        lr=1.563663718906821e-4,
        weight_decay=6.059722614369727e-6,
        epochs=60,
        lr_decay_epoch=30,
        eval_every=5,
        recall_ks=(1, 2, 4, 8),
        overrides={
            "grouploss": {
                "temperature": 24.0,
                "num_iterations": 1,
                "num_anchors": 2,
                "loss_lr": 1.563663718906821e-4,
            }
        },
    ),
    "cars-paper": dict(
        dataset="cars196",
        trunk="googlenet",
        pretrained=True,
        embedder="identity",
        embedding_size=1024,
        image_size=227,
        augment="affine",
        classes_per_batch=5,
        samples_per_class=7,
        optimizer="radam",
        lr=2e-4,
        weight_decay=4.863656728256105e-7,
        epochs=60,
        lr_decay_epoch=30,
        eval_every=5,
        recall_ks=(1, 2, 4, 8),
        overrides={
            "grouploss": {
                "temperature": 79.0,
                "num_iterations": 1,
                "num_anchors": 3,
                "loss_lr": 2e-4,
            }
        },
    ),
    "sop-paper": dict(
        dataset="sop",
        trunk="googlenet",
        pretrained=True,
        embedder="identity",
        embedding_size=1024,
        image_size=227,
        augment="affine",
        classes_per_batch=10,
        samples_per_class=6,
        optimizer="radam",
        lr=6.077651100709081e-4,
        weight_decay=5.2724883734490575e-12,
        epochs=60,
        lr_decay_epoch=30,
        eval_every=5,
        recall_ks=(1, 10, 100, 1000),
        overrides={
            "grouploss": {
                "temperature": 54.0,
                "num_iterations": 1,
                "num_anchors": 2,
                "loss_lr": 6.077651100709081e-4,
            }
        },
    ),
}
