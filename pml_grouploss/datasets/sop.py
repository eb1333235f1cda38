"""Stanford Online Products through PML's ``datasets.StanfordOnlineProducts``."""

import os

from pytorch_metric_learning import datasets as pml_datasets

from ._files import read_fields
from ._pml_adapter import PMLDatasetAdapter

#: the first line of ``Ebay_train.txt`` and ``Ebay_test.txt``
HEADER = ("image_id", "class_id", "super_class_id", "path")


class StanfordOnlineProducts(PMLDatasetAdapter):
    """Stanford Online Products (Oh Song et al. 2016): 11,318 training / 11,316 test products.

    ``root`` must contain ``Stanford_Online_Products/Ebay_train.txt``, ``Ebay_test.txt`` (header
    ``image_id class_id super_class_id path``) and the image folders they list. Labels are
    ``0..C_train-1`` for train and continue after them for test (``0..C_test-1`` with
    ``unique_labels=False``); ``original_labels`` keeps the ``class_id``.
    """

    pml_class = pml_datasets.StanfordOnlineProducts
    required_files = (
        "Stanford_Online_Products/Ebay_train.txt",
        "Stanford_Online_Products/Ebay_test.txt",
    )
    download_hint = (
        "Download Stanford_Online_Products.zip (https://cvgl.stanford.edu/projects/lifted_struct/) "
        "and unzip it into root so that root/Stanford_Online_Products/Ebay_train.txt exists"
    )

    def check_annotations(self) -> None:
        """Line 1 of ``Ebay_{train,test}.txt`` is the header (PML skips line 1 unread), every
        other line ``<image_id> <class_id> <super_class_id> <path>``, and no ``class_id`` is in
        both files (the real splits are class-disjoint; a shared class would get one label in
        ``"train"`` and another in ``"test"``)."""
        paths, class_ids = [], []
        for split in ("train", "test"):
            path = os.path.join(self.root, "Stanford_Online_Products", f"Ebay_{split}.txt")
            rows = read_fields(
                path,
                4,
                "'<image_id> <class_id> <super_class_id> <path>' (4 space-separated fields)",
                int_fields=(0, 1, 2),
                header=HEADER,
            )
            paths.append(path)
            class_ids.append([int(row[1]) for row in rows])
        common = set(class_ids[0]) & set(class_ids[1])
        if common:
            shared = sorted(common)
            line = 2 + next(i for i, c in enumerate(class_ids[1]) if c in common)  # 1: header
            listed = ", ".join(str(c) for c in shared[:10]) + (", ..." if len(shared) > 10 else "")
            raise ValueError(
                f"{paths[0]} and {paths[1]} share class_id(s) {listed} (first in line {line} of "
                f"Ebay_test.txt); the splits must be class-disjoint, each product in one file. "
                f"{self.download_hint}"
            )
