"""CUB-200-2011 through PML's ``datasets.CUB``."""

from pytorch_metric_learning import datasets as pml_datasets

from ._pml_adapter import PMLDatasetAdapter


class CUB(PMLDatasetAdapter):
    """CUB-200-2011 birds (Wah et al. 2011): 200 classes, train = classes 1-100, test = 101-200.

    ``root`` must contain ``CUB_200_2011/images.txt``, ``CUB_200_2011/image_class_labels.txt`` and
    ``CUB_200_2011/images/<class folder>/<file>.jpg`` (the unpacked ``CUB_200_2011.tgz``). Labels
    are ``0..99`` for train and ``100..199`` for test (``0..99`` with ``unique_labels=False``);
    ``original_labels`` keeps PML's 1-based class ids.
    """

    pml_class = pml_datasets.CUB
    required_files = ("CUB_200_2011/images.txt", "CUB_200_2011/image_class_labels.txt")
    download_hint = (
        "Download CUB_200_2011.tgz from https://data.caltech.edu/records/65de6-vp158 and unpack it "
        "into root so that root/CUB_200_2011/images.txt exists"
    )
