"""Datasets for class-disjoint metric learning.

- :class:`Omniglot` — the embedded Omniglot subset (default, offline) or full Omniglot from a
  torchvision-layout directory, alphabet-disjoint split.
- :class:`CUB`, :class:`Cars196`, :class:`StanfordOnlineProducts` — PML's dataset classes with
  labels ``0..C-1`` per split, RGB images and clear errors for missing files.
"""

from .cars196 import Cars196
from .cub import CUB
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
    "EMBEDDED_TRAIN_ALPHABETS",
    "EMBEDDED_TEST_ALPHABETS",
]
