import pytest
import torch

from pml_grouploss.functional.batch_classes import batch_classes
from pml_grouploss.functional.sparse_rows import gather_rows


@pytest.mark.parametrize("labels", [[5, 2, 5, 9, 2], [7], [3, 3, 3], [0, 1, 2, 3], []])
def test_padded_slots_are_unique_with_inverse(labels):
    labels = torch.tensor(labels, dtype=torch.long)
    present, inverse = torch.unique(labels, sorted=True, return_inverse=True)
    k = len(present)
    padded = batch_classes(labels)
    assert padded.classes.shape == padded.targets.shape == padded.valid.shape == labels.shape
    assert padded.valid.tolist() == [True] * k + [False] * (len(labels) - k)
    assert torch.equal(padded.classes[:k], present) and torch.equal(padded.targets, inverse)
    assert set(padded.classes.tolist()) == set(labels.tolist())  # padding repeats a real class
    exact = batch_classes(labels, pad=False)
    assert torch.equal(exact.classes, present) and torch.equal(exact.targets, inverse)
    assert exact.valid.all()


def test_gather_rows_sparse_gradient_sums_duplicates():
    W = torch.randn(6, 3, dtype=torch.float64, requires_grad=True)
    b = torch.randn(6, dtype=torch.float64, requires_grad=True)
    index = torch.tensor([4, 1, 4])
    weights = torch.tensor([[1.0], [2.0], [3.0]], dtype=torch.float64)
    ((gather_rows(W, index, True) * weights).sum() + gather_rows(b, index, True).sum()).backward()
    assert W.grad.is_sparse and b.grad.is_sparse
    expected = torch.zeros(6, 3, dtype=torch.float64)
    expected[4], expected[1] = 4.0, 2.0
    assert torch.equal(W.grad.to_dense(), expected)
    assert b.grad.to_dense().tolist() == [0, 1, 0, 0, 2, 0]
    assert torch.equal(gather_rows(W, index, False), W[index])
