"""Shared shape of the adapters over PML's image-folder datasets (CUB, Cars196, SOP)."""

from __future__ import annotations

import os
from typing import Callable, Dict, List, Optional, Sequence, Set

import torch
from torch.utils.data import Dataset

from .. import _validation as v
from ._files import read_image


class PMLDatasetAdapter(Dataset):
    """Wrap a ``pytorch_metric_learning.datasets`` class for class-disjoint benchmarks.

    PML's classes read the files and split the classes (first half train, second half test); this
    wrapper adds what a metric-learning training loop needs on top of them: a clear
    ``FileNotFoundError`` naming what to download and where, a ``ValueError`` naming the file and
    line of a malformed annotation file, an error naming a damaged image file, RGB images (some
    CUB/Cars images are grayscale or CMYK, which breaks 3-channel transforms), and contiguous
    labels, with the original class ids kept in ``original_labels``.

    Labels (``unique_labels=True``, the default): class ids are unique across splits, as PML's
    own ids are. Train labels are ``0..C_train-1`` (what a loss with ``num_classes`` such as
    GroupLoss or ProxyAnchorLoss expects), test labels continue after them
    (``C_train..C_train+C_test-1``) and ``"train+test"`` uses the same id for each class as its
    own split does, so test queries evaluated against training references never match a
    different class by sharing its number. ``unique_labels=False`` numbers every split
    ``0..C-1`` (test labels then collide with unrelated training labels). Either way the labels
    of a split are ``label_offset..label_offset+num_classes-1``.
    """

    #: the PML dataset class (set by subclasses)
    pml_class: type
    #: files that must exist under ``root`` (relative paths)
    required_files: Sequence[str] = ()
    #: human-readable download instructions
    download_hint: str = ""

    def __init__(
        self,
        root: str,
        split: str = "train",
        transform: Optional[Callable] = None,
        target_transform: Optional[Callable] = None,
        download: bool = False,
        unique_labels: bool = True,
    ) -> None:
        if split not in ("train", "test", "train+test"):
            raise ValueError(f"split must be 'train', 'test' or 'train+test', got {split!r}")
        if root is None:
            raise ValueError(
                f"root: give the directory of {type(self).__name__}. {self.download_hint}"
            )
        self.root = v.check_path("root", root)
        download = v.check_bool("download", download)
        unique_labels = v.check_bool("unique_labels", unique_labels)
        v.check_optional_callable("transform", transform)
        v.check_optional_callable("target_transform", target_transform)
        if download:
            self._download(split)
        self._check_files()
        self.check_annotations()
        inner = self.pml_class(root=self.root, split=split, download=False)
        self.split = split
        self.transform = transform
        self.target_transform = target_transform
        self.paths: List[str] = list(inner.paths)
        self.original_labels: List[int] = [int(x) for x in inner.labels]
        if not self.paths:
            raise FileNotFoundError(
                f"{type(self).__name__}: the annotation files under {self.root!r} list no image of "
                f"split {split!r}. {self.download_hint}"
            )
        self._number_classes(unique_labels)

    def _number_classes(self, unique_labels: bool) -> None:
        """Set ``class_ids``, ``label_offset``, ``labels`` and ``targets`` (see the class doc)."""
        here = set(self.original_labels)
        if self.split == "train":
            train_ids = here
        elif self.split == "test" and not unique_labels:
            train_ids = set()  # numbered from 0: the training classes are not needed
        else:
            train_ids = self._train_class_ids()
        #: PML's class id of each class of this split, in label order (train classes first)
        self.class_ids: List[int] = sorted(here & train_ids) + sorted(here - train_ids)
        #: the first label of this split (labels are label_offset..label_offset+num_classes-1)
        self.label_offset: int = len(train_ids) if self.split == "test" else 0
        index: Dict[int, int] = {c: self.label_offset + i for i, c in enumerate(self.class_ids)}
        self.labels: List[int] = [index[c] for c in self.original_labels]
        self.targets = torch.tensor(self.labels, dtype=torch.int64)

    def _download(self, split: str) -> None:
        try:  # PML downloads only into a missing or empty root
            self.pml_class(root=self.root, split=split, download=True)
        except Exception as err:
            if not self._missing():  # the files arrived: name a malformed line if there is one
                self.check_annotations()
            raise RuntimeError(
                f"Downloading {type(self).__name__} into {self.root!r} failed ({err!r}). "
                + self.download_hint
            ) from err

    def _missing(self) -> List[str]:
        return [f for f in self.required_files if not os.path.exists(os.path.join(self.root, f))]

    def _check_files(self) -> None:
        missing = self._missing()
        if missing:
            raise FileNotFoundError(
                f"{type(self).__name__}: {', '.join(missing)} not found under root="
                f"{self.root!r}. {self.download_hint} (or pass download=True with network)."
            )

    def check_annotations(self) -> None:
        """Raise ``ValueError`` naming the file and line of a malformed annotation file.

        Subclasses parse the files PML's class reads (before PML does, since PML's raw unpacking
        fails without naming them); this base version checks nothing.
        """

    def _train_class_ids(self) -> Set[int]:
        """PML's class ids of the training split (the test labels are numbered after them)."""
        inner = self.pml_class(root=self.root, split="train", download=False)
        return {int(x) for x in inner.labels}

    @property
    def num_classes(self) -> int:
        """Number of classes in this split (labels ``label_offset..label_offset+num_classes-1``)."""
        return len(self.class_ids)

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, idx: int):
        img = read_image(
            self.paths[idx],
            "RGB",
            type(self).__name__,
            "Re-download and re-extract the dataset: " + self.download_hint + ".",
        )
        label = self.labels[idx]
        if self.transform is not None:
            img = self.transform(img)
        if self.target_transform is not None:
            label = self.target_transform(label)
        return img, label

    def __repr__(self) -> str:
        return (
            f"{type(self).__name__}(root={self.root!r}, split={self.split!r}, {len(self)} images, "
            f"{self.num_classes} classes)"
        )
