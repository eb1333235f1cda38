"""``datasets.class_subset``: class-disjoint subsets and the validation folds of the benchmark."""

import re

import numpy as np
import pytest
import torch

from pml_grouploss.datasets import ClassSubset, Omniglot, assert_disjoint, class_folds


class Toy:
    """Six samples of classes 3, 3, 5, 7, 7, 7 (``classes`` names them)."""

    labels = [3, 3, 5, 7, 7, 7]
    classes = {3: "c", 5: "e", 7: "g"}

    def __getitem__(self, i):
        return float(i), self.labels[i]


def test_class_folds_partition_is_fixed_and_checked():
    folds = class_folds(10, 3)
    assert [f.tolist() for f in folds] == [f.tolist() for f in class_folds(10, 3)]
    assert sorted(np.concatenate(folds).tolist()) == list(range(10))
    assert sorted(len(f) for f in folds) == [3, 3, 4]
    assert [f.tolist() for f in class_folds(10, 3, seed=1)] != [f.tolist() for f in folds]
    for bad in (1, 11):
        with pytest.raises(ValueError, match=f"num_folds {bad} must be >= 2 .* at most the 10"):
            class_folds(10, bad)
    with pytest.raises(TypeError, match="num_folds must be an int"):
        class_folds(10, 2.0)


def test_class_subset_remaps_labels_and_caches_the_transform():
    calls = []

    def transform(x):
        calls.append(x)
        return 10 * x

    base = Toy()
    base.classes = ["c", "e", "g", "h", "i", "j", "k", "l"]  # the class of label c: classes[c]
    sub = ClassSubset(base, [7, 3], transform, "train", cache=True)
    assert (sub.indices, sub.labels, sub.num_classes, len(sub)) == ([0, 1, 3, 4, 5],
                                                                     [0, 0, 1, 1, 1], 2, 5)
    assert sub.identities == ["h", "l"] and sub.split_name == "train"
    assert sub[2] == (30.0, 1) and sub[2] == (30.0, 1) and calls == [3.0]  # transformed once
    uncached = ClassSubset(base, [5], transform, "val")
    assert uncached[0] == (20.0, 0) and uncached[0] == (20.0, 0) and calls == [3.0, 2.0, 2.0]


def test_assert_disjoint_on_the_embedded_omniglot():
    train_base, test_base = Omniglot(split="train"), Omniglot(split="test")
    val_classes = class_folds(135, 5)[0]
    train = ClassSubset(train_base, np.setdiff1d(np.arange(135), val_classes), None, "train")
    val = ClassSubset(train_base, val_classes, None, "val")
    test = ClassSubset(test_base, sorted(set(test_base.labels)), None, "test")
    assert_disjoint(train, val, test)
    assert (train.num_classes, val.num_classes, test.num_classes) == (108, 27, 107)
    with pytest.raises(AssertionError, match="class overlap"):
        assert_disjoint(train, train, test)
    fewer = ClassSubset(train_base, train.base_classes[:-1], None, "train")
    with pytest.raises(AssertionError, match="own test split"):  # disjoint, but the same base
        assert_disjoint(fewer, val, ClassSubset(train_base, train.base_classes[-1:], None, "t"))


@pytest.mark.parametrize(
    "classes,error,message",
    [
        ([100, 101], ValueError, "classes [100, 101] are not labels of base (its 107 classes have "
         "labels 135..241); pick the classes from sorted(set(base.labels))"),  # wrapped before
        ([135, 0, 1, 2], ValueError, "classes [0, 1, 2] are not labels of base"),  # IndexError
        ([135, 135, 136], ValueError, "classes lists [135] more than once; give each class id "
         "once"),
        ([135, 1.7], TypeError, "classes must hold integer class ids (labels of base), got float "
         "1.7"),
        (np.array([135.0]), TypeError, "got float 135.0"),
        ([True], TypeError, "got bool True"),
        ([], ValueError, "classes is empty; name at least one label of base"),
        (135, TypeError, "classes must be a sequence of class ids, got int"),
    ],
)
def test_class_subset_refuses_absent_duplicated_or_non_integer_classes(classes, error, message):
    test = Omniglot(split="test")  # labels 135..241
    with pytest.raises(error, match=re.escape(message)):
        ClassSubset(test, classes, None, "test")


def test_class_subset_accepts_integer_arrays_and_tensors_as_before():
    base = Toy()
    for classes in ([7, 3], np.array([3, 7]), torch.tensor([7, 3]), (np.int64(3), 7)):
        sub = ClassSubset(base, classes, None, "train")
        assert (sub.base_classes, sub.indices, sub.labels) == ([3, 7], [0, 1, 3, 4, 5],
                                                               [0, 0, 1, 1, 1])
    with pytest.raises(ValueError, match=re.escape("classes [4] are not labels of base (its 3 "
                                                   "classes have labels 3..7)")):
        ClassSubset(base, [3, 4], None, "train")
    with pytest.raises(TypeError, match="base must have `labels`"):
        ClassSubset(object(), [3], None, "train")


def test_class_subset_checks_base_labels_cache_transform_and_single_ids():
    class Short(Toy):
        def __len__(self):
            return 4  # labels list 6 samples: indices 4, 5 would fail in base[i] at training

    with pytest.raises(ValueError, match=re.escape("base.labels must hold one class id per "
                                                   "sample (4), got shape (6,)")):
        ClassSubset(Short(), [7], None, "train")
    flat = Toy()
    flat.labels = [[3, 3], [5, 7]]  # was "only 0-dimensional arrays can be converted"
    with pytest.raises(ValueError, match=re.escape("got shape (2, 2)")):
        ClassSubset(flat, [3], None, "train")
    with pytest.raises(TypeError, match="^cache must be True or False, got str 'False'"):
        ClassSubset(Toy(), [3], None, "train", cache="False")  # "False" cached every image
    with pytest.raises(TypeError, match="^transform must be callable or None, got str"):
        ClassSubset(Toy(), [3], "to_tensor", "train")  # failed at the first item only
    with pytest.raises(TypeError, match=re.escape("got the single id 7; write [7]")):
        ClassSubset(Toy(), torch.tensor(7), None, "train")  # was "'int' object is not iterable"
    assert ClassSubset(Toy(), [3], None, "train", cache=True)._cache == {}


@pytest.mark.parametrize("seed,error,message", [
    ("1", TypeError, "seed must be an int, got str '1'"),  # were NumPy's SeedSequence errors
    (1.5, TypeError, "seed must be an int, got float 1.5"),
    (None, TypeError, "seed must be an int, got NoneType None"),  # folds differed at every call
    (-1, ValueError, "seed must be an int >= 0, got -1"),
])
def test_class_folds_seed_is_checked(seed, error, message):
    with pytest.raises(error, match="^" + re.escape(message)):
        class_folds(10, 2, seed=seed)
