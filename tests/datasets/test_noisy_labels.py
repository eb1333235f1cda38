"""NoisyLabels: exactly round(rate * N) labels replaced by another class present, uniformly,
reproducibly, the wrapped dataset untouched; PML's MPerClassSampler sees the noisy labels."""
from __future__ import annotations

import pickle

import numpy as np
import pytest
import torch
from pytorch_metric_learning import samplers

from pml_grouploss.datasets import NoisyLabels, Omniglot


class LabelledSet(torch.utils.data.Dataset):
    """``(feature vector, label)`` items; labels ``classes`` x ``per_class`` (class ids not
    contiguous: noise must draw among the classes present, not ``0..C-1``)."""

    def __init__(self, classes=(3, 7, 8, 20), per_class=25):
        self.labels = [c for c in classes for _ in range(per_class)]
        self.features = torch.arange(len(self.labels), dtype=torch.float32).view(-1, 1)
        self.num_classes = len(classes)
        self.split_name = "train"

    def __len__(self):
        return len(self.labels)

    def __getitem__(self, i):
        return self.features[i], self.labels[i]


@pytest.mark.parametrize("rate,expected", [(0.1, 10), (0.2, 20), (0.4, 40), (0.125, 12),
                                           (0.135, 14), (0.999, 100)])
def test_exact_count_never_the_same_class(rate, expected):
    base = LabelledSet()
    noisy = NoisyLabels(base, rate, seed=3)
    clean, labels = np.array(noisy.clean_labels), np.array(noisy.labels)
    assert len(noisy.flipped) == expected  # round(rate * 100); 12.5 rounds to 12 (even)
    assert np.array_equal(np.flatnonzero(labels != clean), noisy.flipped)
    assert set(labels.tolist()) <= {3, 7, 8, 20}
    assert noisy.targets.dtype == torch.int64 and noisy.targets.tolist() == noisy.labels


def test_the_new_class_and_the_samples_are_uniform():
    base = LabelledSet(classes=(0, 1, 2), per_class=4000)
    noisy = NoisyLabels(base, 0.5, seed=0)
    clean, labels = np.array(noisy.clean_labels), np.array(noisy.labels)
    for c in (0, 1, 2):
        flipped_from_c = labels[noisy.flipped][clean[noisy.flipped] == c]
        # each class loses ~half its samples (6000 of 12000 flipped, uniformly)...
        assert abs(len(flipped_from_c) / 4000 - 0.5) < 0.03
        # ... to the two other classes in equal parts
        others = [o for o in (0, 1, 2) if o != c]
        share = np.mean(flipped_from_c == others[0])
        assert abs(share - 0.5) < 0.03, (c, share)


def test_reproducible_and_independent_of_global_rngs():
    base = LabelledSet()
    torch.manual_seed(0)
    np.random.seed(0)
    first = NoisyLabels(base, 0.3, seed=11)
    torch.manual_seed(123)
    np.random.seed(123)
    torch.rand(5), np.random.rand(5)
    second = NoisyLabels(base, 0.3, seed=11)
    assert second.labels == first.labels and np.array_equal(second.flipped, first.flipped)
    other = NoisyLabels(base, 0.3, seed=12)
    assert not np.array_equal(other.flipped, first.flipped)


def test_clean_labels_and_the_wrapped_dataset_untouched():
    base = LabelledSet()
    before = list(base.labels)
    noisy = NoisyLabels(base, 0.4)
    assert base.labels == before and noisy.clean_labels == before
    assert noisy.labels != before
    for i in noisy.flipped[:5].tolist() + [0, 99]:
        x, y = noisy[i]
        assert torch.equal(x, base[i][0]) and y == noisy.labels[i]
        assert base[i][1] == before[i]


def test_rate_zero_is_the_identity():
    base = LabelledSet()
    noisy = NoisyLabels(base, 0.0)
    assert noisy.labels == base.labels and len(noisy.flipped) == 0
    assert [noisy[i][1] for i in range(len(base))] == base.labels


def test_attributes_pass_through_and_pickle():
    noisy = NoisyLabels(LabelledSet(), 0.2)
    assert noisy.num_classes == 4 and noisy.split_name == "train" and len(noisy) == 100
    with pytest.raises(AttributeError):
        noisy.no_such_attribute
    copy = pickle.loads(pickle.dumps(noisy))
    assert copy.labels == noisy.labels and copy.num_classes == 4


def test_with_omniglot_and_pmls_m_per_class_sampler():
    train = Omniglot(split="train")
    noisy = NoisyLabels(train, 0.2, seed=1)
    assert len(noisy.flipped) == round(0.2 * 2700) == 540
    assert noisy.num_classes == 135 and noisy.label_offset == 0
    assert train.labels == noisy.clean_labels  # the Omniglot object is unchanged
    m = 4
    sampler = samplers.MPerClassSampler(noisy.labels, m=m, batch_size=32,
                                        length_before_new_iter=320)
    loader = torch.utils.data.DataLoader(
        noisy, batch_size=32, sampler=sampler, collate_fn=lambda items: items)
    batches = list(loader)
    assert len(batches) == 10
    for batch in batches:
        labels = [y for _, y in batch]
        counts = np.unique(labels, return_counts=True)[1]
        assert (counts == m).all() and len(counts) == 8  # m per *noisy* class
    # the sampler groups by noisy labels: some batch holds a sample of another clean class
    indices = list(iter(sampler))
    noisy_labels, clean = np.array(noisy.labels), np.array(noisy.clean_labels)
    assert (noisy_labels[indices] != clean[indices]).any()


def test_with_the_benchmarks_class_subset():
    from pml_grouploss.benchmark.data import ClassSubset

    subset = ClassSubset(Omniglot(split="train"), classes=range(10, 20), transform=None,
                         split_name="train")
    noisy = NoisyLabels(subset, 0.4, seed=0)
    assert len(noisy.flipped) == 80 and set(noisy.labels) <= set(range(10))
    assert (noisy.num_classes, noisy.split_name) == (10, "train")
    assert noisy.indices == subset.indices and noisy.base is subset.base
    assert noisy.identities == subset.identities
    image, label = noisy[int(noisy.flipped[0])]
    assert label != subset.labels[int(noisy.flipped[0])] and image.size == (28, 28)


@pytest.mark.parametrize("rate,error", [(1.0, ValueError), (-0.1, ValueError),
                                        (float("nan"), ValueError), ("0.1", TypeError),
                                        (True, TypeError)])
def test_bad_noise_rate_names_it(rate, error):
    with pytest.raises(error, match="noise_rate"):
        NoisyLabels(LabelledSet(), rate)


def test_other_bad_inputs():
    with pytest.raises(TypeError, match="labels attribute"):
        NoisyLabels(torch.utils.data.TensorDataset(torch.zeros(3, 1)), 0.1)
    with pytest.raises(ValueError, match="seed"):
        NoisyLabels(LabelledSet(), 0.1, seed=-1)
    with pytest.raises(ValueError, match="at least 2 classes"):
        NoisyLabels(LabelledSet(classes=(5,)), 0.1)
    assert NoisyLabels(LabelledSet(classes=(5,)), 0.0).labels == [5] * 25


def test_uint64_labels_beyond_int64_are_refused_not_wrapped():
    data = LabelledSet(classes=(1, 2), per_class=3)
    data.labels = np.array([2**63 + 5] * 3 + [1] * 3, dtype=np.uint64)  # were wrapped negative
    with pytest.raises(ValueError, match=r"^dataset.labels must fit in int64, got "
                       r"9223372036854775813"):
        NoisyLabels(data, 0.5)
    data.labels = np.array([2**40] * 3 + [1] * 3, dtype=np.uint64)
    noisy = NoisyLabels(data, 0.5)
    assert noisy.clean_labels == [2**40] * 3 + [1] * 3 and set(noisy.labels) <= {1, 2**40}
    assert sum(a != b for a, b in zip(noisy.labels, noisy.clean_labels)) == 3
