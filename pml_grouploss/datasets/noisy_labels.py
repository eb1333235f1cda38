"""Symmetric label noise on a training dataset (the robustness setting of the Group Loss papers)."""
from __future__ import annotations

from typing import Any, List, Tuple

import numpy as np
import torch
from torch.utils.data import Dataset

from .. import _validation as v


class NoisyLabels(Dataset):
    """``dataset`` with symmetric label noise: a fixed fraction of its labels replaced.

    Exactly ``round(noise_rate * N)`` of the ``N`` samples (Python's ``round``: halves to
    even), chosen uniformly without replacement, get a label drawn uniformly from the *other*
    classes present in ``dataset.labels`` (never their own). The draw uses a NumPy generator
    seeded with ``seed`` only: the same ``(dataset labels, noise_rate, seed)`` give the same
    noisy labels whatever torch's or NumPy's global random state.

    ``dataset`` is any dataset with a ``labels`` attribute in dataset order (PML's datasets,
    :class:`~pml_grouploss.datasets.Omniglot`, the benchmark's class subsets) whose items are
    ``(image, label)``. Its labels are not modified. Apply the noise to the training split only:
    validation and test labels must stay clean.

    ``labels`` and ``targets`` are the noisy labels (what ``samplers.MPerClassSampler`` and
    a loss see); every other attribute (``num_classes``, ``transform``, ``indices``,
    ``split_name``, ...) is the wrapped dataset's.

    Args:
        dataset: the dataset to wrap; ``len(dataset.labels) == len(dataset)``.
        noise_rate: fraction of samples whose label is replaced, in ``[0, 1)``.
        seed: seed of the noise, an int ``>= 0``.

    Attributes:
        labels: ``List[int]`` noisy labels, in dataset order.
        targets: the same as an ``int64`` tensor.
        clean_labels: ``List[int]`` the wrapped dataset's labels.
        flipped: ``int64`` array of the (sorted) indices whose label was replaced.
        dataset, noise_rate, seed: the arguments.
    """

    def __init__(self, dataset: Dataset, noise_rate: float, seed: int = 0) -> None:
        if not hasattr(dataset, "labels"):
            raise TypeError(
                f"dataset must have a labels attribute (its labels in dataset order, as PML's "
                f"datasets have); got {type(dataset).__name__} without one"
            )
        noise_rate = v.check_number("noise_rate", noise_rate, minimum=0, maximum=1)
        if noise_rate == 1:
            raise ValueError(
                "noise_rate must be in [0, 1), got 1: with every label replaced no sample keeps "
                "its class"
            )
        seed = v.check_int("seed", seed, minimum=0)
        clean = _as_label_array(dataset.labels)
        if len(clean) != len(dataset):
            raise ValueError(
                f"dataset.labels has {len(clean)} entries but the dataset {len(dataset)} items"
            )
        self.dataset = dataset
        self.noise_rate = noise_rate
        self.seed = seed
        noisy, flipped = symmetric_noise(clean, noise_rate, seed)
        self.clean_labels: List[int] = clean.tolist()
        self.labels: List[int] = noisy.tolist()
        self.targets = torch.as_tensor(noisy, dtype=torch.int64)
        self.flipped: np.ndarray = flipped

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, index: int) -> Tuple[Any, int]:
        item = self.dataset[index]
        if not isinstance(item, (tuple, list)) or len(item) != 2:
            raise TypeError(
                f"NoisyLabels needs a dataset whose items are (image, label) pairs; "
                f"{type(self.dataset).__name__}[{index}] is {type(item).__name__}"
            )
        return item[0], self.labels[index]

    def __getattr__(self, name: str) -> Any:
        # only called for names not found on self: delegate to the wrapped dataset (but never
        # before ``dataset`` is set, e.g. while unpickling, and not for dunder look-ups)
        if name.startswith("__") or "dataset" not in self.__dict__:
            raise AttributeError(name)
        return getattr(self.__dict__["dataset"], name)

    def __repr__(self) -> str:
        return (f"NoisyLabels({type(self.dataset).__name__}, noise_rate={self.noise_rate}, "
                f"seed={self.seed}: {len(self.flipped)} of {len(self)} labels replaced)")


def symmetric_noise(
    labels: np.ndarray, noise_rate: float, seed: int
) -> Tuple[np.ndarray, np.ndarray]:
    """``(noisy labels, flipped indices)``: ``round(noise_rate * N)`` labels, at indices
    chosen uniformly, replaced by a class drawn uniformly among the other classes of
    ``labels``.

    Args:
        labels: ``(N,)`` integer labels.
        noise_rate: in ``[0, 1)``.
        seed: seed of ``numpy.random.default_rng``.

    Returns:
        ``(N,)`` labels (a copy) and the sorted ``int64`` indices that changed.
    """
    labels = np.asarray(labels, dtype=np.int64)
    count = int(round(noise_rate * len(labels)))
    classes = np.unique(labels)
    if count and len(classes) < 2:
        raise ValueError(
            f"label noise needs at least 2 classes to draw another class from; the dataset's "
            f"labels hold {len(classes)}"
        )
    rng = np.random.default_rng(seed)
    flipped = np.sort(rng.choice(len(labels), size=count, replace=False)).astype(np.int64)
    position = np.searchsorted(classes, labels[flipped])
    # an offset in 1..C-1 from the own class, modulo C: uniform over the other C-1 classes
    offset = rng.integers(1, len(classes), size=count) if count else np.zeros(0, np.int64)
    noisy = labels.copy()
    noisy[flipped] = classes[(position + offset) % len(classes)]
    return noisy, flipped


def _as_label_array(labels: Any) -> np.ndarray:
    if torch.is_tensor(labels):
        labels = labels.detach().cpu().numpy()
    array = np.asarray(labels).reshape(-1)
    if array.size and not np.issubdtype(array.dtype, np.integer):
        raise TypeError(f"dataset.labels must be integer class ids, got dtype {array.dtype}")
    if array.size and array.dtype == np.uint64 and array.max() > np.iinfo(np.int64).max:
        raise ValueError(  # astype(int64) would wrap them to negative ids
            f"dataset.labels must fit in int64, got {array.max()}; map them to class ids, e.g. "
            "np.unique(labels, return_inverse=True)[1]")
    return array.astype(np.int64)
