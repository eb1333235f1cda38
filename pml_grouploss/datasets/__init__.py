"""Datasets for class-disjoint metric learning.

- :class:`Omniglot` — the embedded Omniglot subset (default, offline) or full Omniglot from a
  torchvision-layout directory, alphabet-disjoint split.
- :class:`CUB`, :class:`Cars196`, :class:`StanfordOnlineProducts` — PML's dataset classes with
  contiguous labels, RGB images and errors that name the missing, damaged or malformed file.
- :class:`NoisyLabels` — any of them (or any dataset with ``labels``) with symmetric label
  noise on a fixed fraction of its samples, for training splits.
- :class:`ClassSubset`, :func:`class_folds`, :func:`assert_disjoint` — class-disjoint subsets
  and validation folds carved from the training classes.

Class ids are unique across splits by default, as in PML: train ``0..C_train-1``, test
``C_train..C_train+C_test-1`` (``unique_labels=False``: each split ``0..C-1``).
"""

from .cars196 import Cars196
from .class_subset import ClassSubset, assert_disjoint, class_folds
from .cub import CUB
from .noisy_labels import NoisyLabels
from .omniglot import (
    EMBEDDED_TEST_ALPHABETS,
    EMBEDDED_TRAIN_ALPHABETS,
    Omniglot,
)
from .sop import StanfordOnlineProducts

__all__ = [
    "Omniglot",
    "CUB",
    "Cars196",
    "StanfordOnlineProducts",
    "NoisyLabels",
    "ClassSubset",
    "class_folds",
    "assert_disjoint",
    "EMBEDDED_TRAIN_ALPHABETS",
    "EMBEDDED_TEST_ALPHABETS",
]
