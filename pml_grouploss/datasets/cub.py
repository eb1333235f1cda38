"""CUB-200-2011 through PML's ``datasets.CUB``."""

import os

from pytorch_metric_learning import datasets as pml_datasets

from ._files import read_fields
from ._pml_adapter import PMLDatasetAdapter

#: CUB-200-2011's class ids are 1..NUM_CLASSES (PML's splits drop an image of any other id)
NUM_CLASSES = 200


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

    def check_annotations(self) -> None:
        """``images.txt`` lines are ``<image_id> <path>``, ``image_class_labels.txt`` lines
        ``<image_id> <class_id>`` with ``<class_id>`` in ``1..200``, and line *k* of both files
        describes the same image (PML pairs them line by line and silently drops a pair whose ids
        differ, and an image whose class id is in neither split)."""
        base = os.path.join(self.root, "CUB_200_2011")
        images_txt = os.path.join(base, "images.txt")
        labels_txt = os.path.join(base, "image_class_labels.txt")
        images = read_fields(images_txt, 2, "'<image_id> <relative image path>'", int_fields=(0,))
        labels = read_fields(labels_txt, 2, "'<image_id> <class_id>'", int_fields=(0, 1))
        if len(images) != len(labels):
            raise ValueError(
                f"{images_txt} has {len(images)} lines but {labels_txt} has {len(labels)}; both "
                f"list every image once, in the same order. {self.download_hint}"
            )
        for number, (image, label) in enumerate(zip(images, labels), start=1):
            if int(image[0]) != int(label[0]):
                raise ValueError(
                    f"line {number}: image id {image[0]} in {images_txt} but {label[0]} in "
                    f"{labels_txt}; both files list every image once, in the same order"
                )
            if not 1 <= int(label[1]) <= NUM_CLASSES:
                raise ValueError(
                    f"{labels_txt}, line {number}: class id {label[1]} is not a CUB-200-2011 class "
                    f"(expected 1..{NUM_CLASSES}; PML would silently drop the image). "
                    f"{self.download_hint}"
                )
