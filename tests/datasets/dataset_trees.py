"""Tiny on-disk dataset trees in the exact layouts the loaders expect (shared by the tests).

Each writer returns the root it populated. Images are small random pictures; what matters is the
directory layout and the annotation files, which follow the real datasets byte-for-byte in format.
"""

from __future__ import annotations

import os
from typing import Dict, List, Tuple

import numpy as np
from PIL import Image


def _save_rgb(path: str, rng: np.random.Generator, size: int = 24, mode: str = "RGB") -> None:
    os.makedirs(os.path.dirname(path), exist_ok=True)
    arr = rng.integers(0, 256, size=(size, size, 3), dtype=np.uint8)
    Image.fromarray(arr).convert(mode).save(path)


def write_omniglot_tree(
    root: str,
    background: Dict[str, int] = None,
    evaluation: Dict[str, int] = None,
    drawers: int = 4,
    seed: int = 0,
) -> str:
    """torchvision layout: root/omniglot-py/images_{background,evaluation}/<alphabet>/characterNN/
    <id>_<drawer>.png (105x105 binary PNG, white background)."""
    background = {"Alpha": 3, "Beta": 2} if background is None else background
    evaluation = {"Gamma": 3} if evaluation is None else evaluation
    rng = np.random.default_rng(seed)
    image_id = 1
    for folder, alphabets in (("images_background", background), ("images_evaluation", evaluation)):
        for alphabet, n_chars in alphabets.items():
            for c in range(1, n_chars + 1):
                d = os.path.join(root, "omniglot-py", folder, alphabet, f"character{c:02d}")
                os.makedirs(d, exist_ok=True)
                for k in range(1, drawers + 1):
                    ink = rng.random((105, 105)) < 0.1
                    img = Image.fromarray(np.where(ink, 0, 255).astype(np.uint8)).convert("1")
                    img.save(os.path.join(d, f"{image_id:04d}_{k:02d}.png"))
                image_id += 1
    return root


def write_cub_tree(root: str, n_classes: int = 200, per_class: int = 2, seed: int = 0) -> str:
    """CUB_200_2011/{images.txt,image_class_labels.txt,images/NNN.Name/x.jpg} (1-based ids)."""
    rng = np.random.default_rng(seed)
    base = os.path.join(root, "CUB_200_2011")
    lines_images, lines_labels = [], []
    img_id = 1
    for c in range(1, n_classes + 1):
        folder = f"{c:03d}.Bird_{c}"
        for j in range(per_class):
            rel = f"{folder}/Bird_{c}_{j:04d}_{img_id}.jpg"
            # one grayscale image per class: the adapter must still return RGB
            _save_rgb(os.path.join(base, "images", rel), rng, mode="L" if j == 0 else "RGB")
            lines_images.append(f"{img_id} {rel}")
            lines_labels.append(f"{img_id} {c}")
            img_id += 1
    with open(os.path.join(base, "images.txt"), "w") as f:
        f.write("\n".join(lines_images) + "\n")
    with open(os.path.join(base, "image_class_labels.txt"), "w") as f:
        f.write("\n".join(lines_labels) + "\n")
    return root


def write_cars_tree(root: str, n_classes: int = 196, per_class: int = 2, seed: int = 0) -> str:
    """Kaggle layout: names.csv, anno_{train,test}.csv (file,x1,y1,x2,y2,class) and
    car_data/car_data/{train,test}/<class name with / replaced by ->/<file>.jpg."""
    rng = np.random.default_rng(seed)
    os.makedirs(root, exist_ok=True)
    names = [f"Make{c} Model/{c} 2012" for c in range(1, n_classes + 1)]
    with open(os.path.join(root, "names.csv"), "w") as f:
        f.write("\n".join(names) + "\n")
    rows: Dict[str, List[str]] = {"train": [], "test": []}
    n = 1
    for c in range(1, n_classes + 1):
        for j in range(per_class):
            split = "train" if j % 2 == 0 else "test"
            fname = f"{n:05d}.jpg"
            folder = names[c - 1].replace("/", "-")
            _save_rgb(os.path.join(root, "car_data", "car_data", split, folder, fname), rng)
            rows[split].append(f"{fname},1,2,20,22,{c}")
            n += 1
    for split in ("train", "test"):
        with open(os.path.join(root, f"anno_{split}.csv"), "w") as f:
            f.write("\n".join(rows[split]) + "\n")
    return root


def write_sop_tree(
    root: str, n_train: int = 6, n_test: int = 5, per_class: int = 2, seed: int = 0
) -> Tuple[str, List[int], List[int]]:
    """Stanford_Online_Products/Ebay_{train,test}.txt (header, then `image_id class_id
    super_class_id path`) and <super>_final/<class>_<i>.JPG. Train classes are 1..n_train, test
    classes follow (as in the real files). Returns (root, train class ids, test class ids)."""
    rng = np.random.default_rng(seed)
    base = os.path.join(root, "Stanford_Online_Products")
    img_id = 1
    ids = {
        "train": list(range(1, n_train + 1)),
        "test": list(range(n_train + 1, n_train + n_test + 1)),
    }
    for split in ("train", "test"):
        lines = ["image_id class_id super_class_id path"]
        for c in ids[split]:
            super_id = 1 + c % 2
            super_name = ["bicycle", "cabinet"][super_id - 1]
            for j in range(per_class):
                rel = f"{super_name}_final/{c}_{j}.JPG"
                _save_rgb(os.path.join(base, rel), rng)
                lines.append(f"{img_id} {c} {super_id} {rel}")
                img_id += 1
        with open(os.path.join(base, f"Ebay_{split}.txt"), "w") as f:
            f.write("\n".join(lines) + "\n")
    return root, ids["train"], ids["test"]


def rewrite_line(path: str, number: int, text: str) -> None:
    """Replace line ``number`` (1-based) of the text file ``path`` by ``text``."""
    with open(path) as f:
        lines = f.read().split("\n")
    lines[number - 1] = text
    with open(path, "w") as f:
        f.write("\n".join(lines))


def drop_last_line(path: str) -> None:
    """Remove the last line of the text file ``path`` (which ends with a newline)."""
    with open(path) as f:
        lines = f.read().rstrip("\n").split("\n")
    with open(path, "w") as f:
        f.write("\n".join(lines[:-1]) + "\n")


def truncate_file(path: str, keep: float = 0.5) -> int:
    """Cut the file ``path`` to the first ``keep`` fraction of its bytes; returns the new size."""
    with open(path, "rb") as f:
        data = f.read()
    size = int(len(data) * keep)
    with open(path, "wb") as f:
        f.write(data[:size])
    return size
