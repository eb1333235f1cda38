"""Class ids are unique across splits: test-vs-train evaluation cannot match unrelated classes."""

import logging
import math

import numpy as np
import pytest
import torch
from pytorch_metric_learning import testers
from pytorch_metric_learning.utils.accuracy_calculator import AccuracyCalculator
from pytorch_metric_learning.utils.inference import FaissKNN

from pml_grouploss.datasets import CUB, Cars196, Omniglot, StanfordOnlineProducts

from dataset_trees import write_cars_tree, write_cub_tree, write_sop_tree


def _pixels(im) -> torch.Tensor:
    return torch.from_numpy(np.asarray(im, dtype=np.float32).ravel() / 255.0)


def _test_vs_train(unique_labels: bool) -> dict:
    """P@1 and MAP@R of the embedded test characters (queries) against the training characters
    (references), embedding = raw pixels: the pattern of PML's ``splits_to_eval``."""
    train = Omniglot(split="train", transform=_pixels, unique_labels=unique_labels)
    test = Omniglot(split="test", transform=_pixels, unique_labels=unique_labels)
    tester = testers.GlobalEmbeddingSpaceTester(
        accuracy_calculator=AccuracyCalculator(
            include=("precision_at_1", "mean_average_precision_at_r"), k=5
        ),
        dataloader_num_workers=0,
        batch_size=512,
    )
    acc = tester.test(
        {"train": train, "test": test},
        1,
        torch.nn.Identity(),
        splits_to_eval=[("test", ["train"])],
    )
    return acc["test"]


def test_omniglot_test_labels_follow_train_labels():
    train, test = Omniglot(split="train"), Omniglot(split="test")
    assert sorted(set(train.labels)) == list(range(135)) and train.num_classes == 135
    assert sorted(set(test.labels)) == list(range(135, 242)) and test.num_classes == 107
    assert not set(train.labels) & set(test.labels)
    # the opt-out numbers the test split from 0 again
    legacy = Omniglot(split="test", unique_labels=False)
    assert legacy.label_offset == 0 and sorted(set(legacy.labels)) == list(range(107))
    assert legacy.classes == test.classes


def test_test_queries_never_match_training_references_by_label(caplog):
    # the nearest training image of a test query has, by construction, another label
    train, test = Omniglot(split="train"), Omniglot(split="test")
    knn = FaissKNN(reset_before=True, reset_after=True)
    _, idx = knn(test.data.flatten(1).float(), 1, train.data.flatten(1).float())
    nearest = train.targets[idx[:, 0].cpu()]
    assert idx.shape == (2140, 1) and int((nearest == test.targets).sum()) == 0
    # PML's tester therefore finds no query label among the references and says so (NaN, warning)
    with caplog.at_level(logging.WARNING):
        acc = _test_vs_train(unique_labels=True)
    assert math.isnan(acc["precision_at_1_level0"])
    assert math.isnan(acc["mean_average_precision_at_r_level0"])
    assert "None of the query labels are in the reference set" in caplog.text


def test_per_split_numbering_is_what_silently_matched_unrelated_classes():
    # unique_labels=False (each split 0..C-1) reproduces the bug of issue 11: a number, not NaN
    acc = _test_vs_train(unique_labels=False)
    assert acc["precision_at_1_level0"] == pytest.approx(19 / 2140)  # 19 "hits", all spurious
    assert 0.0 < acc["mean_average_precision_at_r_level0"] < 0.01


@pytest.mark.parametrize(
    "cls,writer,n_train,n_test",
    [(CUB, write_cub_tree, 100, 100), (Cars196, write_cars_tree, 98, 98)],
)
def test_pml_adapters_keep_ids_unique_across_splits(tmp_path, cls, writer, n_train, n_test):
    writer(str(tmp_path))
    train, test = cls(str(tmp_path), split="train"), cls(str(tmp_path), split="test")
    both = cls(str(tmp_path), split="train+test")
    assert sorted(set(train.labels)) == list(range(n_train)) and train.num_classes == n_train
    assert sorted(set(test.labels)) == list(range(n_train, n_train + n_test))
    assert test.num_classes == n_test and test.label_offset == n_train
    # every image keeps its label in the pooled split
    label_of = dict(zip(both.paths, both.labels))
    assert [label_of[p] for p in test.paths] == test.labels
    assert [label_of[p] for p in train.paths] == train.labels
    legacy = cls(str(tmp_path), split="test", unique_labels=False)
    assert sorted(set(legacy.labels)) == list(range(n_test)) and legacy.num_classes == n_test


def test_sop_test_ids_follow_the_training_classes_present(tmp_path):
    write_sop_tree(str(tmp_path), n_train=6, n_test=5, per_class=2)
    train = StanfordOnlineProducts(str(tmp_path), split="train")
    test = StanfordOnlineProducts(str(tmp_path), split="test")
    assert train.labels == [0, 0, 1, 1, 2, 2, 3, 3, 4, 4, 5, 5]
    assert test.labels == [6, 6, 7, 7, 8, 8, 9, 9, 10, 10]
    assert test.class_ids == [7, 8, 9, 10, 11]
