import re

import numpy as np
import pytest
import torch
from PIL import Image

from pml_grouploss.datasets import CUB, Cars196, StanfordOnlineProducts

from dataset_trees import write_cars_tree, write_cub_tree, write_sop_tree


def test_cub_adapter(tmp_path):
    write_cub_tree(str(tmp_path), n_classes=200, per_class=2)
    train = CUB(str(tmp_path), split="train")
    test = CUB(str(tmp_path), split="test", transform=lambda im: torch.tensor(np.asarray(im)))
    assert len(train) == 200 and train.num_classes == 100
    assert train.original_labels[:4] == [1, 1, 2, 2] and train.labels[:4] == [0, 0, 1, 1]
    assert set(test.original_labels) == set(range(101, 201))
    assert sorted(set(test.labels)) == list(range(100, 200)) and test.num_classes == 100
    assert test.label_offset == 100 and test.labels[:4] == [100, 100, 101, 101]
    img, label = train[0]  # stored grayscale, returned RGB
    assert isinstance(img, Image.Image) and img.mode == "RGB" and label == 0
    x, y = test[3]
    assert x.shape == (24, 24, 3) and y == 101
    both = CUB(str(tmp_path), split="train+test")
    assert len(both) == 400 and both.labels[::2] == list(range(200))


def test_cars_adapter(tmp_path):
    write_cars_tree(str(tmp_path), n_classes=196, per_class=2)
    train = Cars196(str(tmp_path), split="train")
    test = Cars196(str(tmp_path), split="test")
    assert train.num_classes == 98 and len(train) == 196  # both annotation files pooled
    assert set(train.original_labels) == set(range(1, 99))
    assert set(test.original_labels) == set(range(99, 197)) and test.num_classes == 98
    assert sorted(set(test.labels)) == list(range(98, 196)) and test.class_ids[0] == 99
    img, _ = test[0]
    assert img.mode == "RGB" and img.size == (24, 24)


def test_sop_adapter(tmp_path):
    _, train_ids, test_ids = write_sop_tree(str(tmp_path), n_train=6, n_test=5, per_class=3)
    train = StanfordOnlineProducts(str(tmp_path), split="train")
    test = StanfordOnlineProducts(str(tmp_path), split="test")
    assert len(train) == 18 and train.num_classes == 6
    assert sorted(set(train.original_labels)) == train_ids
    assert sorted(set(test.original_labels)) == test_ids and test.labels[:4] == [6, 6, 6, 7]
    assert test.num_classes == 5 and test.label_offset == 6
    assert test[4][0].mode == "RGB"


@pytest.mark.parametrize(
    "cls,needle",
    [(CUB, "CUB_200_2011.tgz"), (Cars196, "names.csv"), (StanfordOnlineProducts, "Ebay_train.txt")],
)
def test_missing_files_say_what_to_download(tmp_path, cls, needle):
    with pytest.raises(FileNotFoundError, match=needle):
        cls(str(tmp_path))
    with pytest.raises(ValueError, match="split"):
        cls(str(tmp_path), split="val")
    with pytest.raises(ValueError, match="root"):
        cls(None)


@pytest.mark.parametrize(
    "kwargs,error,message",
    [
        ({"unique_labels": "False"}, TypeError, "unique_labels must be True or False, got str"),
        ({"download": "False"}, TypeError, "download must be True or False, got str 'False'"),
        ({"transform": "resize"}, TypeError, "transform must be callable or None, got str"),
        ({"target_transform": 1}, TypeError, "target_transform must be callable or None, got int"),
    ],
)
def test_flags_and_transforms_are_checked_before_loading(tmp_path, monkeypatch, kwargs, error,
                                                          message):
    # "False" is truthy: it numbered the test split after the training classes or started a
    # download; a non-callable transform failed only at the first image
    write_cub_tree(str(tmp_path), n_classes=200, per_class=1)
    monkeypatch.setattr(CUB, "_download", lambda self, split: pytest.fail("download attempted"))
    with pytest.raises(error, match="^" + re.escape(message)):
        CUB(str(tmp_path), split="test", **kwargs)
    assert CUB(str(tmp_path), split="test", unique_labels=False).label_offset == 0


def test_root_of_the_wrong_type_is_named(tmp_path):
    write_sop_tree(str(tmp_path))
    with pytest.raises(TypeError, match=r"^root must be a directory path \(str or pathlib.Path\), "
                       r"got int 3"):
        StanfordOnlineProducts(3)  # was "expected str, bytes or os.PathLike object, not int"
    assert StanfordOnlineProducts(tmp_path).root == str(tmp_path)
