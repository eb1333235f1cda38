"""Class centroids / nearest classes (GL++ §5.1 sampler math)."""
import numpy as np
import pytest
import torch

from pml_grouploss.functional import gather_rows
from pml_grouploss.functional.class_centroids import (
    class_centroids,
    mean_pairwise_distance,
    nearest_classes,
)


def test_centroids_by_hand_unnormalized():
    x = torch.tensor([[0.0, 0.0], [2.0, 0.0], [1.0, 3.0], [5.0, 5.0], [7.0, 1.0]])
    labels = torch.tensor([7, 7, 7, 2, 2])
    c, classes = class_centroids(x, labels, normalize_embeddings=False)
    assert classes.tolist() == [2, 7]
    assert torch.allclose(c, torch.tensor([[6.0, 3.0], [1.0, 1.0]]))


def test_centroids_normalized_by_hand():
    x = torch.tensor([[3.0, 0.0], [0.0, 5.0], [-2.0, 0.0]])
    c, classes = class_centroids(x, torch.tensor([0, 0, 1]))
    assert torch.allclose(c, torch.tensor([[0.5, 0.5], [-1.0, 0.0]]))
    assert classes.tolist() == [0, 1]


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.bfloat16])
def test_centroid_dtype_follows_input(dtype):
    x = torch.randn(10, 3).to(dtype)
    c, _ = class_centroids(x, torch.arange(10) % 3)
    assert c.dtype == dtype and c.shape == (3, 3)


def test_centroid_errors():
    with pytest.raises(ValueError, match="embeddings"):
        class_centroids(torch.zeros(3), torch.zeros(3))
    with pytest.raises(ValueError, match="labels"):
        class_centroids(torch.zeros(3, 2), torch.zeros(2))
    with pytest.raises(ValueError, match="nan"):
        class_centroids(torch.tensor([[float("nan"), 0.0]]), torch.zeros(1))


def test_nearest_classes_on_a_line():
    c = torch.tensor([[0.0], [10.0], [1.0], [3.0], [2.5]])
    assert nearest_classes(c, 0, 3).tolist() == [2, 4, 3]
    assert nearest_classes(c, 3, 2).tolist() == [4, 2]
    assert nearest_classes(c, 0, 2, exclude=torch.tensor([2])).tolist() == [4, 3]
    assert nearest_classes(c, 0, 0).tolist() == []


def test_nearest_classes_ties_by_index():
    c = torch.tensor([[0.0], [1.0], [-1.0], [1.0]])
    assert nearest_classes(c, 0, 3).tolist() == [1, 2, 3]


def test_nearest_classes_errors():
    c = torch.zeros(4, 2)
    with pytest.raises(ValueError, match="seed"):
        nearest_classes(c, 4, 1)
    with pytest.raises(ValueError, match="num_neighbors"):
        nearest_classes(c, 0, 4)
    with pytest.raises(ValueError, match="num_neighbors"):
        nearest_classes(c, 0, 3, exclude=torch.tensor([1]))


def test_mean_pairwise_distance_by_hand():
    c = torch.tensor([[0.0, 0.0], [3.0, 4.0], [0.0, 4.0]])
    # pairs: 5, 4, 3
    assert mean_pairwise_distance(c, torch.tensor([0, 1, 2])).item() == pytest.approx(4.0)
    with pytest.raises(ValueError, match="indices"):
        mean_pairwise_distance(c, torch.tensor([0]))


@pytest.mark.parametrize("kwargs, error, name", [
    (dict(seed=1.5, num_neighbors=2), TypeError, "seed must be an int"),
    (dict(seed=np.float64(2.0), num_neighbors=2), TypeError, "seed must be an int"),
    (dict(seed=torch.tensor(2.0), num_neighbors=2), TypeError, "seed must be an int"),
    (dict(seed=0, num_neighbors=1.5), TypeError, "num_neighbors must be an int"),
    (dict(seed=0, num_neighbors=torch.tensor([1, 2])), TypeError, "num_neighbors must be an int"),
    (dict(seed=0, num_neighbors=2, exclude=torch.tensor([9])), ValueError,
     r"exclude must hold indices in \[0, 6\)"),
    (dict(seed=0, num_neighbors=2, exclude=[-1]), ValueError, "exclude must hold indices"),
    (dict(seed=0, num_neighbors=2, exclude=[1.5]), TypeError, "exclude must be an integer"),
    (dict(seed=0, num_neighbors=2, exclude="a"), TypeError, "exclude must be a tensor or"),
])
def test_nearest_classes_bad_arguments_named(kwargs, error, name):
    # they failed inside torch's indexing (IndexError naming no argument)
    c = torch.randn(6, 4, generator=torch.Generator().manual_seed(0))
    with pytest.raises(error, match=name):
        nearest_classes(c, **kwargs)


def test_nearest_classes_numpy_ints_and_sequences_accepted():
    c = torch.tensor([[0.0], [10.0], [1.0], [3.0], [2.5]])
    assert nearest_classes(c, np.int64(0), np.int32(2), exclude=[2]).tolist() == [4, 3]
    assert nearest_classes(c, 0, 2, exclude=[]).tolist() == [2, 4]


def test_gather_rows_is_index_select():
    # documented: indices in [0, m), not wrapped; out of range is torch's IndexError
    w = torch.arange(8.0).view(4, 2)
    for sparse in (False, True):
        assert gather_rows(w, torch.tensor([3, 0, 3]), sparse).tolist() == [[6, 7], [0, 1], [6, 7]]
        for bad in (4, -1):
            with pytest.raises(IndexError):
                gather_rows(w, torch.tensor([bad]), sparse)


def test_mean_pairwise_distance_keeps_float64():
    # it computed and returned float32 (.float()): 0.6666666865 and a failing gradcheck
    c = torch.tensor([[0.0, 0.0], [1e-9, 0.0], [1.0 + 1e-12, 0.0]], dtype=torch.float64)
    out = mean_pairwise_distance(c, torch.tensor([0, 1, 2]))
    assert out.dtype == torch.float64
    assert out.item() == torch.pdist(c).mean().item() == pytest.approx(2 / 3, abs=1e-11)
    x = torch.randn(4, 5, dtype=torch.float64, generator=torch.Generator().manual_seed(1),
                    requires_grad=True)
    assert torch.autograd.gradcheck(
        lambda z: mean_pairwise_distance(z, torch.tensor([0, 1, 2])), (x,))
    assert mean_pairwise_distance(c.half(), torch.tensor([0, 2])).dtype == torch.float32
