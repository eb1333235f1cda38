"""Omniglot handwritten characters as a class-disjoint metric-learning benchmark.

The package embeds a real subset (8 alphabets, 242 characters x 20 drawers, MIT license, see
``data/LICENSE`` and ``data/README.md``) so that the benchmark runs offline; the same class reads
the *full* Omniglot from a directory in ``torchvision.datasets.Omniglot``'s layout.
"""

from __future__ import annotations

import os
import re
from typing import Callable, Dict, List, Optional, Sequence, Tuple

import numpy as np
import torch
from PIL import Image
from torch.utils.data import Dataset

from .._validation import check_bool, check_int, check_optional_callable, check_path
from ._files import read_image

DATA_DIR = os.path.join(os.path.dirname(os.path.abspath(__file__)), "data")
EMBEDDED_FILE = os.path.join(DATA_DIR, "omniglot_small_28.npz")

#: Alphabet-disjoint split of the embedded subset (135 training / 107 test characters).
EMBEDDED_TRAIN_ALPHABETS: Tuple[str, ...] = (
    "Balinese",
    "Early_Aramaic",
    "Japanese_(katakana)",
    "Sanskrit",
)
EMBEDDED_TEST_ALPHABETS: Tuple[str, ...] = ("Greek", "Korean", "Latin", "Tagalog")

#: Where the full dataset comes from (the authors' repository; torchvision downloads the same).
DOWNLOAD_URLS: Tuple[str, ...] = (
    "https://github.com/brendenlake/omniglot/raw/master/python/images_background.zip",
    "https://github.com/brendenlake/omniglot/raw/master/python/images_evaluation.zip",
)
_BACKGROUND_DIRS = ("images_background", "images_background_small1", "images_background_small2")
_EVALUATION_DIRS = ("images_evaluation",)
_FILE_PATTERN = re.compile(r"^(\d+)_(\d+)\.png$")


def preprocess(image: Image.Image, image_size: int = 28) -> np.ndarray:
    """Turn one Omniglot PNG (105x105, white background) into the stored form.

    Grayscale, area-averaged (``Image.BOX``) down to ``image_size`` x ``image_size`` and inverted so
    that ink is bright (255) and background is 0, as in MNIST. Returns ``uint8 (image_size,
    image_size)``. The build script of the embedded file and the full-directory loader both use it.
    """
    gray = image.convert("L").resize((image_size, image_size), Image.BOX)
    return 255 - np.asarray(gray, dtype=np.uint8)


def _names(arg: str, names: object) -> List[str]:
    """``names`` (an iterable of ``str``) as a list, else a ``TypeError`` naming ``arg``."""
    listed = list(names) if hasattr(names, "__iter__") else None
    if listed is None or not all(isinstance(n, str) for n in listed):
        raise TypeError(
            f"{arg} must be a sequence of alphabet names (str), got {names!r}; "
            "e.g. ['Greek', 'Latin']"
        )
    return listed


class Omniglot(Dataset):
    """Omniglot characters; labels are characters, the split is by alphabet.

    Args:
        root: ``None`` (default) uses the subset embedded in the package. Otherwise a directory in
            ``torchvision.datasets.Omniglot``'s layout: ``root/omniglot-py/images_background/
            <alphabet>/characterNN/<id>_<drawer>.png`` and ``.../images_evaluation/...``
            (``root`` may also be the ``omniglot-py`` folder itself). The unzipped
            ``images_background_small1``/``small2`` folders are accepted too.
        split: ``"train"``, ``"test"`` or ``"train+test"``. Embedded subset: train = Balinese,
            Early_Aramaic, Japanese_(katakana), Sanskrit (135 characters); test = Greek, Korean,
            Latin, Tagalog (107 characters). Full Omniglot: train = the alphabets of
            ``images_background`` (30 alphabets, 964 characters), test = those of
            ``images_evaluation`` (20 alphabets, 659 characters). Either way alphabet-disjoint.
        transform: applied to the ``PIL.Image`` (mode ``"L"``, ink bright) of ``__getitem__``.
        target_transform: applied to the integer label.
        image_size: side of the stored images (28 for the embedded file; any size for a directory).
        train_alphabets, test_alphabets: override the alphabet split (names as in the folders).
        download: with a ``root``, download the two full archives through torchvision first.
        unique_labels: ``True`` (default): class ids are unique across splits, as in PML's
            datasets. Train labels are ``0..C_train-1`` (what a loss with ``num_classes``
            expects), test labels continue after them (``C_train..C_train+C_test-1``) and
            ``"train+test"`` gives each character the label it has in its own split, so test
            queries evaluated against training references cannot match an unrelated character
            by sharing its number. ``False``: every split is numbered ``0..C-1``.

    Attributes:
        data: ``uint8 (N, image_size, image_size)`` tensor.
        targets: ``int64 (N,)`` labels ``label_offset..label_offset+C-1`` (contiguous, in the
            order of ``classes``).
        labels: the same as a list (the attribute PML's datasets expose).
        classes: ``"alphabet/characterNN"`` per class, sorted, the training characters first for
            ``"train+test"``; the class of label ``y`` is ``classes[y - label_offset]``.
        label_offset: the first label of the split (``C_train`` for ``"test"`` with
            ``unique_labels``, else 0).
        alphabets: alphabet name per sample.
        drawers: drawer number (1..20) per sample.
    """

    def __init__(
        self,
        root: Optional[str] = None,
        split: str = "train",
        transform: Optional[Callable] = None,
        target_transform: Optional[Callable] = None,
        image_size: int = 28,
        train_alphabets: Optional[Sequence[str]] = None,
        test_alphabets: Optional[Sequence[str]] = None,
        download: bool = False,
        unique_labels: bool = True,
    ) -> None:
        if split not in ("train", "test", "train+test"):
            raise ValueError(f"split must be 'train', 'test' or 'train+test', got {split!r}")
        image_size = check_int("image_size", image_size, 1)
        download = check_bool("download", download)
        unique_labels = check_bool("unique_labels", unique_labels)
        check_optional_callable("transform", transform)
        check_optional_callable("target_transform", target_transform)
        root = None if root is None else check_path("root", root)
        self.root = root
        self.split = split
        self.transform = transform
        self.target_transform = target_transform
        if root is None:
            if download:
                raise ValueError("download=True needs a root directory to download into")
            if image_size != 28:
                raise ValueError(
                    "the embedded subset is stored at image_size=28; resize in `transform`, or "
                    "pass root= a torchvision-layout Omniglot directory"
                )
            images, alphabet_of, char_names, drawers, train_default, test_default = (
                self._load_embedded()
            )
        else:
            if download:
                self._download(root)
            images, alphabet_of, char_names, drawers, train_default, test_default = (
                self._load_directory(root, image_size)
            )
        train_set, test_set = self._choose_alphabets(
            split,
            {"train_alphabets": train_alphabets, "test_alphabets": test_alphabets},
            {"train_alphabets": train_default, "test_alphabets": test_default},
            set(alphabet_of),
        )
        wanted = {"train": train_set, "test": test_set, "train+test": train_set | test_set}[split]
        keep = np.array([a in wanted for a in alphabet_of], dtype=bool)
        kept_chars = [c for c, k in zip(char_names, keep) if k]
        train_chars = sorted({c for c, a in zip(char_names, alphabet_of) if a in train_set})
        test_chars = sorted({c for c, a in zip(char_names, alphabet_of) if a in test_set})
        self.classes: List[str] = {
            "train": train_chars,
            "test": test_chars,
            "train+test": train_chars + test_chars,
        }[split]
        self.label_offset: int = len(train_chars) if split == "test" and unique_labels else 0
        index = {c: self.label_offset + i for i, c in enumerate(self.classes)}
        self.data = torch.from_numpy(np.ascontiguousarray(images[keep]))
        self.targets = torch.tensor([index[c] for c in kept_chars], dtype=torch.int64)
        self.labels: List[int] = self.targets.tolist()
        self.alphabets: List[str] = [a for a, k in zip(alphabet_of, keep) if k]
        self.drawers: List[int] = [int(d) for d, k in zip(drawers, keep) if k]

    def _choose_alphabets(
        self,
        split: str,
        given: Dict[str, Optional[Sequence[str]]],
        defaults: Dict[str, Sequence[str]],
        known: set,
    ) -> Tuple[set, set]:
        """The training and test alphabets: ``given`` (``train_alphabets``/``test_alphabets``
        arguments) where not ``None``, else ``defaults``. Raises if a name is unknown, the two
        overlap or ``split`` gets no alphabet (an empty dataset)."""
        chosen = {}
        for arg, names in given.items():
            if isinstance(names, str):
                raise TypeError(
                    f"{arg} must be a sequence of alphabet names, got the str {names!r}; "
                    f"write [{names!r}]"
                )
            names = list(defaults[arg] if names is None else _names(arg, names))
            chosen[arg] = set(names)
            unknown = sorted(chosen[arg] - known)
            if unknown:
                raise ValueError(f"{arg}: unknown alphabets {unknown}; available: {sorted(known)}")
        train_set, test_set = chosen["train_alphabets"], chosen["test_alphabets"]
        overlap = sorted(train_set & test_set)
        if overlap:
            raise ValueError(
                f"train_alphabets and test_alphabets overlap in {overlap}; make them disjoint"
            )
        used = {"train": ["train_alphabets"], "test": ["test_alphabets"]}.get(split, list(chosen))
        if any(chosen[arg] for arg in used):
            return train_set, test_set
        arg = next((a for a in used if given[a] is not None), used[-1])
        if given[arg] is not None:
            raise ValueError(
                f"{arg} is empty, so split {split!r} would have no images; name at least one of "
                f"{sorted(known)}, or pass {arg}=None for the default split"
            )
        folder = "images_background" if arg == "train_alphabets" else "images_evaluation"
        url = DOWNLOAD_URLS[0] if arg == "train_alphabets" else DOWNLOAD_URLS[1]
        raise FileNotFoundError(
            f"Omniglot split {split!r} has no alphabets: no {folder}/<alphabet>/ folder under "
            f"root={self.root!r}. Unzip {url} into {self._find_base(self.root)}, or "
            f"pass {arg}= some of the alphabets found, {sorted(known)}"
        )

    # ------------------------------------------------------------------ loading
    @staticmethod
    def _load_embedded():
        if not os.path.isfile(EMBEDDED_FILE):
            raise FileNotFoundError(
                f"The embedded Omniglot subset is missing ({EMBEDDED_FILE}). Reinstall "
                "pml_grouploss (the file ships as package data), or rebuild it from the authors' "
                "archives images_background_small1.zip and images_background_small2.zip "
                "(https://github.com/brendenlake/omniglot/tree/master/python) with "
                "`python scripts/build_embedded_omniglot.py <small1.zip> <small2.zip>`."
            )
        with np.load(EMBEDDED_FILE) as f:
            alphabet_names = [str(a) for a in f["alphabet_names"]]
            character_names = [str(c) for c in f["character_names"]]
            images = f["images"]
            alphabet_of = [alphabet_names[i] for i in f["alphabet"]]
            char_names = [character_names[i] for i in f["character"]]
            drawers = f["drawer"].astype(np.int64)
        return (
            images,
            alphabet_of,
            char_names,
            drawers,
            EMBEDDED_TRAIN_ALPHABETS,
            EMBEDDED_TEST_ALPHABETS,
        )

    @staticmethod
    def _find_base(root: str) -> str:
        for candidate in (os.path.join(root, "omniglot-py"), root):
            if os.path.isdir(candidate) and any(
                os.path.isdir(os.path.join(candidate, d))
                for d in _BACKGROUND_DIRS + _EVALUATION_DIRS
            ):
                return candidate
        raise FileNotFoundError(
            f"No Omniglot images found under root={root!r}. Download "
            + " and ".join(DOWNLOAD_URLS)
            + f", unzip both into {os.path.join(root, 'omniglot-py')} so that it contains "
            "images_background/<alphabet>/characterNN/*.png and images_evaluation/..., "
            "or pass download=True (needs network), or root=None for the embedded subset."
        )

    @classmethod
    def _load_directory(cls, root: str, image_size: int):
        base = cls._find_base(root)
        hint = "Re-download " + " and ".join(DOWNLOAD_URLS) + f" and re-extract them into {base}."
        records: Dict[Tuple[str, str, int], np.ndarray] = {}
        train_default, test_default = set(), set()
        for folder in sorted(os.listdir(base)):
            if folder in _BACKGROUND_DIRS:
                target = train_default
            elif folder in _EVALUATION_DIRS:
                target = test_default
            else:
                continue
            folder_path = os.path.join(base, folder)
            for alphabet in sorted(os.listdir(folder_path)):
                a_path = os.path.join(folder_path, alphabet)
                if not os.path.isdir(a_path):
                    continue
                target.add(alphabet)
                for character in sorted(os.listdir(a_path)):
                    c_path = os.path.join(a_path, character)
                    if not os.path.isdir(c_path):
                        continue
                    for fname in sorted(os.listdir(c_path)):
                        m = _FILE_PATTERN.match(fname)
                        if m is None:
                            continue
                        key = (alphabet, character, int(m.group(2)))
                        if key in records:  # Greek/Latin duplicated in small1/small2
                            continue
                        image = read_image(os.path.join(c_path, fname), "L", "Omniglot", hint)
                        records[key] = preprocess(image, image_size)
        empty = sorted((train_default | test_default) - {k[0] for k in records})
        if records and empty:
            raise FileNotFoundError(
                f"Omniglot alphabet folders under {base!r} without <id>_<drawer>.png images in "
                f"characterNN/ sub-folders: {empty} (an interrupted extraction?). {hint}"
            )
        if not records:
            raise FileNotFoundError(
                f"Found Omniglot folders under {base!r} but no <id>_<drawer>.png images in "
                "<alphabet>/characterNN/ sub-folders; re-extract the archives "
                + " and ".join(DOWNLOAD_URLS)
            )
        if not train_default and not test_default:  # pragma: no cover - guarded by _find_base
            raise FileNotFoundError(f"no images_background/images_evaluation under {base!r}")
        if not test_default and train_default == set(EMBEDDED_TRAIN_ALPHABETS) | set(
            EMBEDDED_TEST_ALPHABETS
        ):
            # exactly the unzipped small1/small2 archives: use the embedded subset's split
            train_default = set(EMBEDDED_TRAIN_ALPHABETS)
            test_default = set(EMBEDDED_TEST_ALPHABETS)
        keys = sorted(records)
        images = np.stack([records[k] for k in keys])
        return (
            images,
            [k[0] for k in keys],
            [f"{k[0]}/{k[1]}" for k in keys],
            np.array([k[2] for k in keys], dtype=np.int64),
            tuple(sorted(train_default)),
            tuple(sorted(test_default - train_default)),
        )

    @staticmethod
    def _download(root: str) -> None:
        from torchvision.datasets import Omniglot as TVOmniglot

        try:
            for background in (True, False):
                TVOmniglot(root, background=background, download=True)
        except Exception as err:  # URLError offline, HTTP errors, ...
            raise RuntimeError(
                f"Downloading Omniglot into {root!r} failed ({err!r}). Without network, download "
                + " and ".join(DOWNLOAD_URLS)
                + f" elsewhere and unzip both into {os.path.join(root, 'omniglot-py')}."
            ) from err

    # ------------------------------------------------------------------ Dataset API
    @property
    def num_classes(self) -> int:
        """Number of characters (classes) in this split (labels
        ``label_offset..label_offset+num_classes-1``)."""
        return len(self.classes)

    def __len__(self) -> int:
        return int(self.targets.shape[0])

    def __getitem__(self, idx: int):
        img = Image.fromarray(self.data[idx].numpy(), mode="L")
        label = int(self.targets[idx])
        if self.transform is not None:
            img = self.transform(img)
        if self.target_transform is not None:
            label = self.target_transform(label)
        return img, label

    def __repr__(self) -> str:
        source = "embedded subset" if self.root is None else repr(self.root)
        return (
            f"Omniglot({source}, split={self.split!r}, {len(self)} images, "
            f"{self.num_classes} characters, {len(set(self.alphabets))} alphabets)"
        )
