"""Class-disjoint subsets of a dataset and validation folds carved from its training classes.

Metric learning evaluates on classes never seen in training; model selection then needs
validation classes disjoint from both (Musgrave et al., "A Metric Learning Reality Check", ECCV
2020). :func:`class_folds` cuts the training classes into folds with a fixed permutation,
:class:`ClassSubset` takes the samples of some classes of a dataset, and :func:`assert_disjoint`
checks that train, validation and test share no class and no image.
"""

from __future__ import annotations

import numbers
from collections import Counter
from typing import Any, Callable, Dict, List, Optional, Sequence

import numpy as np
from torch.utils.data import Dataset

from .._validation import check_bool, check_int, check_optional_callable

#: permutation seed of :func:`class_folds`: fixed, so every method and seed sees the same folds
FOLD_SEED = 12345


class ClassSubset(Dataset):
    """The samples of ``base`` whose label is in ``classes``, labels remapped to ``0..C-1``
    (``num_classes`` of them): a class-disjoint split of a dataset.

    ``base`` needs ``labels`` (one class id per sample) and ``base[i]`` must return
    ``(image, label)``; ``classes`` are integer labels of ``base``, each listed once (else
    ``TypeError``/``ValueError`` naming the offending ids); ``split_name`` names the subset;
    ``transform`` is applied here, once per image with ``cache=True`` (for a deterministic
    transform of small images: the embedded Omniglot's 28x28 tensors are then read without a
    PIL round-trip after the first epoch).
    ``identities`` are globally unique class names (used to assert disjointness).
    """

    def __init__(self, base: Dataset, classes: Sequence[int], transform: Optional[Callable],
                 split_name: str, cache: bool = False) -> None:
        if getattr(base, "labels", None) is None:
            raise TypeError(f"base must have `labels` (one class id per sample), got a "
                            f"{type(base).__name__} without them")
        labels = np.asarray(base.labels)
        size = len(base) if hasattr(base, "__len__") else labels.shape[0]
        if labels.ndim != 1 or labels.shape[0] != size:
            raise ValueError(f"base.labels must hold one class id per sample ({size}), got "
                             f"shape {labels.shape}")
        check_optional_callable("transform", transform)
        cache = check_bool("cache", cache)
        classes = _checked_classes(classes, labels)
        index = {c: i for i, c in enumerate(classes)}
        self.base = base
        self.split_name = split_name
        self.indices: List[int] = [int(i) for i in np.flatnonzero(np.isin(labels, classes))]
        self.labels: List[int] = [index[int(labels[i])] for i in self.indices]
        self.base_classes: List[int] = classes
        self.transform = transform
        self._cache: Optional[Dict[int, Any]] = {} if cache else None
        names = getattr(base, "classes", None)
        tag = f"{type(base).__name__}:{getattr(base, 'split', '')}"
        offset = getattr(base, "label_offset", 0)  # the class of label c is names[c - offset]
        self.identities: List[str] = [
            names[c - offset] if names is not None else f"{tag}:{c}" for c in classes
        ]
        ids = getattr(base, "original_labels", None)
        if names is None and ids is not None:  # PML adapters: ids are global across splits
            orig = {int(labels[i]): int(ids[i]) for i in self.indices}
            self.identities = [f"{type(base).__name__}:{orig[c]}" for c in classes]

    @property
    def num_classes(self) -> int:
        return len(self.base_classes)

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, i: int):
        if self._cache is not None and i in self._cache:
            return self._cache[i], self.labels[i]
        img, _ = self.base[self.indices[i]]
        if self.transform is not None:
            img = self.transform(img)
        if self._cache is not None:
            self._cache[i] = img
        return img, self.labels[i]


def _checked_classes(classes: Sequence[int], labels: np.ndarray) -> List[int]:
    """``classes`` (a sequence, NumPy array or tensor) as sorted ``int`` ids; raise unless each
    is an integer, listed once and the label of some sample (one of ``labels``)."""
    if isinstance(classes, (str, bytes)) or not hasattr(classes, "__iter__"):
        raise TypeError(f"classes must be a sequence of class ids, got {type(classes).__name__}")
    if hasattr(classes, "tolist"):  # NumPy array or tensor: its elements as Python scalars
        classes = classes.tolist()
        if not isinstance(classes, list):  # a 0-d array or tensor: one id, not a sequence
            raise TypeError(f"classes must be a sequence of class ids, got the single id "
                            f"{classes!r}; write [{classes!r}]")
    ids: List[int] = []
    for c in classes:
        if isinstance(c, bool) or not isinstance(c, numbers.Integral):
            raise TypeError(f"classes must hold integer class ids (labels of base), got "
                            f"{type(c).__name__} {c!r}")
        ids.append(int(c))
    if not ids:
        raise ValueError("classes is empty; name at least one label of base")
    repeated = sorted(c for c, n in Counter(ids).items() if n > 1)
    if repeated:
        raise ValueError(f"classes lists {repeated} more than once; give each class id once "
                         f"(e.g. sorted(set(classes)))")
    present = set(np.unique(labels).tolist())
    missing = sorted(set(ids) - present)
    if missing:
        span = f"{min(present)}..{max(present)}" if present else "none"
        raise ValueError(
            f"classes {missing[:10]}{' ...' if len(missing) > 10 else ''} are not labels of base "
            f"(its {len(present)} classes have labels {span}); pick the classes from "
            f"sorted(set(base.labels))")
    return sorted(ids)


def class_folds(num_classes: int, num_folds: int, seed: int = FOLD_SEED) -> List[np.ndarray]:
    """Split ``0..num_classes-1`` into ``num_folds`` disjoint folds of (almost) equal size, by a
    permutation drawn from ``seed``: fold ``k`` validates, the others train."""
    check_int("num_classes", num_classes, 1)
    check_int("seed", seed, 0)
    if check_int("num_folds", num_folds) < 2 or num_folds > num_classes:
        raise ValueError(f"num_folds {num_folds} must be >= 2 (one fold validates) and at most "
                         f"the {num_classes} classes to split (each fold needs a class)")
    perm = np.random.default_rng(seed).permutation(num_classes)
    return [np.sort(f) for f in np.array_split(perm, num_folds)]


def assert_disjoint(train: Any, val: Any, test: Any) -> None:
    """Raise ``AssertionError`` unless the train, validation and test subsets (``ClassSubset``
    or a wrapper with its ``identities``, ``base`` and ``indices``) share no class and no image,
    and test comes from another base dataset (the dataset's own test split)."""
    tr, va, te = (set(s.identities) for s in (train, val, test))
    if tr & va or tr & te or va & te:
        raise AssertionError(f"class overlap: train&val={sorted(tr & va)[:5]}, "
                             f"train&test={sorted(tr & te)[:5]}, val&test={sorted(va & te)[:5]}")
    if train.base is val.base and set(train.indices) & set(val.indices):
        raise AssertionError("train and validation share images")
    if train.base is test.base:
        raise AssertionError("the test split must come from the dataset's own test split")
