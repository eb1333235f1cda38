"""Class-disjoint splits for the benchmark: train / validation fold / test.

The test classes come from the dataset's own test split (alphabet-disjoint for Omniglot, the
second half of the classes for CUB/Cars/SOP). Validation classes are carved from the *training*
classes only: the training classes are shuffled once with a fixed seed and cut into
``num_folds`` folds; a run on fold ``k`` validates on fold ``k`` and trains on the rest. Test images
are read only by the final evaluation.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import TYPE_CHECKING, Callable, Optional, Tuple

import numpy as np
from torch.utils.data import Dataset

from ..datasets.class_subset import FOLD_SEED, ClassSubset, assert_disjoint, class_folds

__all__ = ["ClassSubset", "Splits", "assert_disjoint", "build_splits", "class_folds",
           "splits_for_fold"]  # the first, third and fifth: pml_grouploss.datasets.class_subset

if TYPE_CHECKING:
    from .config import BenchmarkConfig

DATASET_NAMES = ("omniglot-small", "omniglot", "cub", "cars196", "sop")


@dataclass
class Splits:
    train: Dataset  # training classes minus the validation fold (augmented, noisy labels)
    train_eval: ClassSubset  # as many of those classes as validates, clean (train R@1)
    val: ClassSubset  # validation fold (model selection)
    test: ClassSubset  # unseen test classes (touched once)
    in_channels: int


def load_base(dataset: str, data_root: Optional[str], download: bool = False):
    """Return ``(train_base, test_base, in_channels)``: images as PIL, class ids unique across
    the two (train ``0..C_train-1``, test ``C_train..C_train+C_test-1``)."""
    from .. import datasets as ds
    from .validation import ConfigValueError

    if dataset == "omniglot-small":
        return ds.Omniglot(split="train"), ds.Omniglot(split="test"), 1
    if data_root is None or not (download or os.path.isdir(data_root)):
        raise ConfigValueError(
            "data.data_root", f"data.data_root {data_root!r} does not exist; point it at the "
            f"{dataset} directory (see docs/datasets.md) or add data.download")
    if dataset == "omniglot":
        return (ds.Omniglot(data_root, split="train", download=download),
                ds.Omniglot(data_root, split="test"), 1)
    cls = {"cub": ds.CUB, "cars196": ds.Cars196, "sop": ds.StanfordOnlineProducts}[dataset]
    return cls(data_root, split="train", download=download), cls(data_root, split="test"), 3


def build_transforms(trunk: str, in_channels: int, image_size: int,
                     augment: str) -> Tuple[Callable, Callable]:
    """(train transform, eval transform).

    Small CNN: resize to ``image_size``, tensor, standardise. torchvision trunks: the papers'
    preprocessing (resize 256, random crop 227 + horizontal flip for training, centre crop 227 for
    evaluation, ImageNet statistics), grayscale replicated to 3 channels.
    """
    from torchvision import transforms as T

    if trunk == "cnn":
        mean, std = (([0.08] * in_channels, [0.25] * in_channels) if in_channels == 1
                     else ([0.485, 0.456, 0.406], [0.229, 0.224, 0.225]))
        base = [T.Resize((image_size, image_size))]
        tail = [T.ToTensor(), T.Normalize(mean, std)]
        aug = ([T.RandomAffine(10, translate=(0.1, 0.1), scale=(0.9, 1.1))]
               if augment == "affine" else [])
        return T.Compose(base + aug + tail), T.Compose(base + tail)
    to3 = [T.Grayscale(3)] if in_channels == 1 else []
    norm = [T.ToTensor(), T.Normalize([0.485, 0.456, 0.406], [0.229, 0.224, 0.225])]
    crop = T.RandomResizedCrop(227) if augment == "affine" else T.RandomCrop(227)
    train = T.Compose(to3 + [T.Resize(256), crop, T.RandomHorizontalFlip()] + norm)
    test = T.Compose(to3 + [T.Resize(256), T.CenterCrop(227)] + norm)
    return train, test


def build_splits(dataset: str, data_root: Optional[str], fold: int, num_folds: int,
                 trunk: str = "cnn", image_size: int = 28, augment: str = "none",
                 max_classes: Optional[int] = None, download: bool = False,
                 label_noise: float = 0.0, train_eval_classes: Optional[int] = None) -> Splits:
    """Load the data and carve validation fold ``fold`` (of ``num_folds``) from the training
    classes. ``max_classes`` keeps only the first training/test classes (for quick runs).

    ``label_noise``: that fraction of the *training* labels is replaced by another class
    (:class:`~pml_grouploss.datasets.NoisyLabels`, seeded by the fold); ``train_eval``,
    validation and test keep their labels. ``train_eval`` holds ``train_eval_classes`` of the
    training classes (a fixed draw; default as many as the validation fold, so that train and
    validation R@1 search galleries of the same size)."""
    train_base, test_base, in_channels = load_base(dataset, data_root, download)
    n_train = len(set(train_base.labels))
    test_classes = sorted(set(test_base.labels))  # ids unique across splits: after the train ids
    n_test = len(test_classes)
    if max_classes is not None:
        n_train, n_test = min(n_train, max_classes), min(n_test, max_classes)
    folds = class_folds(n_train, num_folds)
    val_classes = folds[fold % num_folds]
    train_classes = np.setdiff1d(np.arange(n_train), val_classes)
    tr_tf, ev_tf = build_transforms(trunk, in_channels, image_size, augment)
    small = trunk == "cnn"  # 28x28 inputs: caching the deterministic transforms costs ~10 MB
    n_eval = min(len(train_classes), train_eval_classes or len(val_classes))
    draw = np.random.default_rng(FOLD_SEED + fold).permutation(len(train_classes))[:n_eval]
    train: Dataset = ClassSubset(train_base, train_classes, tr_tf, "train",
                                 small and augment == "none")
    if label_noise > 0:
        from ..datasets import NoisyLabels

        train = NoisyLabels(train, label_noise, seed=FOLD_SEED + fold)
    splits = Splits(
        train=train,
        train_eval=ClassSubset(train_base, train_classes[draw], ev_tf, "train", small),
        val=ClassSubset(train_base, val_classes, ev_tf, "val", small),
        test=ClassSubset(test_base, test_classes[:n_test], ev_tf, "test", small),
        in_channels=in_channels,
    )
    assert_disjoint(splits.train, splits.val, splits.test)
    return splits


def splits_for_fold(cfg: "BenchmarkConfig", fold: int, **changes) -> Splits:
    """:func:`build_splits` with the data settings of ``cfg`` (validation fold ``fold``), e.g.
    ``augment="none"`` for evaluation only."""
    data, model = cfg.data, cfg.model
    settings = dict(trunk=model.trunk, image_size=model.image_size, augment=data.augment,
                    max_classes=data.max_classes, download=data.download,
                    label_noise=data.label_noise, train_eval_classes=cfg.optim.train_eval_classes)
    settings.update(changes)
    return build_splits(data.dataset, data.data_root, fold, data.num_folds, **settings)
