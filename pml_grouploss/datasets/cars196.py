"""Stanford Cars196 through PML's ``datasets.Cars196``."""

from pytorch_metric_learning import datasets as pml_datasets

from ._pml_adapter import PMLDatasetAdapter


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
