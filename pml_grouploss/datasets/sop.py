"""Stanford Online Products through PML's ``datasets.StanfordOnlineProducts``."""

from pytorch_metric_learning import datasets as pml_datasets

from ._pml_adapter import PMLDatasetAdapter


class StanfordOnlineProducts(PMLDatasetAdapter):
    """Stanford Online Products (Oh Song et al. 2016): 11,318 training / 11,316 test products.

    ``root`` must contain ``Stanford_Online_Products/Ebay_train.txt``, ``Ebay_test.txt`` (header
    ``image_id class_id super_class_id path``) and the image folders they list. Labels are
    remapped to ``0..C-1`` within each split (``original_labels`` keeps the ``class_id``).
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
