import pytest
import torch

from pml_grouploss.functional import select_anchors


def test_first_k_per_class_in_batch_order():
    labels = torch.tensor([3, 1, 3, 3, 1, 0, 1, 3])
    assert select_anchors(labels, 2).tolist() == [0, 1, 2, 4, 5]
    assert select_anchors(labels, 1).tolist() == [0, 1, 5]
    assert select_anchors(labels, 0).tolist() == []
    assert select_anchors(labels, 10).tolist() == list(range(8))


def test_random_selection_is_k_per_class_and_seeded():
    labels = torch.arange(6).repeat_interleave(5)
    g1 = torch.Generator().manual_seed(3)
    g2 = torch.Generator().manual_seed(3)
    a = select_anchors(labels, 2, "random", g1)
    assert a.tolist() == select_anchors(labels, 2, "random", g2).tolist()
    assert torch.bincount(labels[a], minlength=6).tolist() == [2] * 6
    draws = {tuple(select_anchors(labels, 2, "random").tolist()) for _ in range(5)}
    assert len(draws) > 1


@pytest.mark.parametrize("k,err", [(-1, ValueError), (1.0, TypeError), (True, TypeError)])
def test_bad_k(k, err):
    with pytest.raises(err, match="num_anchors_per_class"):
        select_anchors(torch.tensor([0, 1]), k)


def test_bad_selection():
    with pytest.raises(ValueError, match="selection"):
        select_anchors(torch.tensor([0, 1]), 1, "last")
