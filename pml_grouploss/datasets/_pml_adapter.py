"""Shared shape of the adapters over PML's image-folder datasets (CUB, Cars196, SOP)."""

from __future__ import annotations

import os
from typing import Callable, List, Optional, Sequence

import torch
from PIL import Image
from torch.utils.data import Dataset


class PMLDatasetAdapter(Dataset):
    """Wrap a ``pytorch_metric_learning.datasets`` class for class-disjoint benchmarks.

    PML's classes read the files and split the classes (first half train, second half test); this
    wrapper adds what a metric-learning training loop needs on top of them: a clear
    ``FileNotFoundError`` naming what to download and where, RGB images (some CUB/Cars images are
    grayscale or CMYK, which breaks 3-channel transforms), and labels remapped to ``0..C-1`` within
    the split (what a loss with ``num_classes`` such as GroupLoss or ProxyAnchorLoss expects), with
    the original class ids kept in ``original_labels``.
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
    ) -> None:
        if split not in ("train", "test", "train+test"):
            raise ValueError(f"split must be 'train', 'test' or 'train+test', got {split!r}")
        if root is None:
            raise ValueError(
                f"root: give the directory of {type(self).__name__}. {self.download_hint}"
            )
        self.root = os.fspath(root)
        if download:
            try:
                inner = self.pml_class(root=self.root, split=split, download=True)
            except Exception as err:
                raise RuntimeError(
                    f"Downloading {type(self).__name__} into {self.root!r} failed ({err!r}). "
                    + self.download_hint
                ) from err
        else:
            missing = [
                f for f in self.required_files if not os.path.exists(os.path.join(self.root, f))
            ]
            if missing:
                raise FileNotFoundError(
                    f"{type(self).__name__}: {', '.join(missing)} not found under root="
                    f"{self.root!r}. {self.download_hint} (or pass download=True with network)."
                )
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
        self.class_ids: List[int] = sorted(set(self.original_labels))
        index = {c: i for i, c in enumerate(self.class_ids)}
        self.labels: List[int] = [index[c] for c in self.original_labels]
        self.targets = torch.tensor(self.labels, dtype=torch.int64)

    @property
    def num_classes(self) -> int:
        """Number of classes in this split (labels are ``0..num_classes-1``)."""
        return len(self.class_ids)

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, idx: int):
        with Image.open(self.paths[idx]) as im:
            img = im.convert("RGB")
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
