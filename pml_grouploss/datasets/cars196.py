"""Stanford Cars196 through PML's ``datasets.Cars196``."""

import os

from pytorch_metric_learning import datasets as pml_datasets

from ._files import read_fields, read_lines
from ._pml_adapter import PMLDatasetAdapter

#: Cars196's class ids are 1..NUM_CLASSES (PML's splits drop an image of any other id)
NUM_CLASSES = 196


class Cars196(PMLDatasetAdapter):
    """Cars196 (Krause et al. 2013): 196 classes, train = classes 1-98, test = 99-196.

    ``root`` must be in the layout of the Kaggle archive PML downloads
    (``jutrera/stanford-car-dataset-by-classes-folder``): ``names.csv``, ``anno_train.csv``,
    ``anno_test.csv`` and ``car_data/car_data/{train,test}/<class name>/<file>.jpg``. Both
    annotation files are pooled before the class split, as PML does. Labels are ``0..97`` for
    train and ``98..195`` for test (``0..97`` with ``unique_labels=False``).
    """

    pml_class = pml_datasets.Cars196
    required_files = ("names.csv", "anno_train.csv", "anno_test.csv", "car_data/car_data")
    download_hint = (
        "Download https://www.kaggle.com/datasets/jutrera/stanford-car-dataset-by-classes-folder "
        "and unzip it into root so that root/names.csv and root/car_data/car_data/train exist"
    )

    def check_annotations(self) -> None:
        """``anno_{train,test}.csv`` lines are ``<file>,<x1>,<y1>,<x2>,<y2>,<class>`` with a
        1-based ``<class>`` indexing the lines of ``names.csv`` (PML looks the folder name up
        there; class 0 would silently pick the last name) and at most 196 (PML's splits silently
        drop an image of a higher class)."""
        num_names = len(read_lines(os.path.join(self.root, "names.csv"), "'<class name>'"))
        last = min(num_names, NUM_CLASSES)
        expected = "'<file>,<x1>,<y1>,<x2>,<y2>,<class>' (6 comma-separated fields)"
        for split in ("train", "test"):
            path = os.path.join(self.root, f"anno_{split}.csv")
            rows = read_fields(path, 6, expected, sep=",", int_fields=(5,))
            for number, row in enumerate(rows, start=1):
                if not 1 <= int(row[5]) <= last:
                    what = (
                        "is not a line of names.csv"
                        if not 1 <= int(row[5]) <= num_names
                        else "is not a Cars196 class (PML would silently drop the image)"
                    )
                    raise ValueError(
                        f"{path}, line {number}: class {row[5]} {what} (expected 1..{last}). "
                        f"{self.download_hint}"
                    )
