import numpy as np
import pytest
import torch
from pytorch_metric_learning.losses import ContrastiveLoss
from pytorch_metric_learning.utils.accuracy_calculator import AccuracyCalculator
from pytorch_metric_learning.utils.inference import CustomKNN

from pml_grouploss.distances import PearsonCorrelation


def test_matrix_is_corrcoef_and_inverted():
    x = torch.randn(5, 7, dtype=torch.float64)
    y = torch.randn(4, 7, dtype=torch.float64)
    d = PearsonCorrelation()
    assert d.is_inverted
    full = np.corrcoef(np.concatenate([x.numpy(), y.numpy()]))
    np.testing.assert_allclose(d(x).numpy(), full[:5, :5], atol=1e-13)
    np.testing.assert_allclose(d(x, y).numpy(), full[:5, 5:], atol=1e-13)
    pair = d.pairwise_distance(d.normalize(x[:4]), d.normalize(y))
    np.testing.assert_allclose(pair.numpy(), np.diag(full[:4, 5:]), atol=1e-13)
    assert d.smallest_dist(torch.tensor([0.1, 0.9])) == 0.9


def test_knn_with_pearson_ignores_offsets():
    # Items equal to a reference up to scale and offset must be its nearest neighbours.
    ref = torch.randn(10, 16)
    query = ref * 3.0 + 7.0
    knn = CustomKNN(PearsonCorrelation())
    distances, indices = knn(query, 1, ref, False)
    assert indices[:, 0].tolist() == list(range(10))
    calc = AccuracyCalculator(include=("precision_at_1",), knn_func=knn)
    acc = calc.get_accuracy(query, torch.arange(10), ref, torch.arange(10), False)
    assert acc["precision_at_1"] == 1.0


def test_usable_by_pml_losses():
    e = torch.randn(8, 6, requires_grad=True)
    labels = torch.tensor([0, 0, 1, 1, 2, 2, 3, 3])
    loss = ContrastiveLoss(pos_margin=1, neg_margin=0, distance=PearsonCorrelation())(e, labels)
    loss.backward()
    assert torch.isfinite(loss) and torch.isfinite(e.grad).all() and loss > 0


@pytest.mark.parametrize("kwargs", [dict(normalize_embeddings=False), dict(p=1), dict(power=2)])
def test_rejects_options_that_change_its_meaning(kwargs):
    with pytest.raises(ValueError, match=list(kwargs)[0]):
        PearsonCorrelation(**kwargs)


def test_nan_row_is_not_hidden_from_knn_or_losses():
    e = torch.randn(8, 6)
    e[2, 0] = float("nan")
    labels = torch.tensor([0, 0, 1, 1, 2, 2, 3, 3])
    mat = PearsonCorrelation()(e)
    assert torch.isnan(mat[2]).all() and torch.isnan(mat[:, 2]).all()
    assert torch.isfinite(mat[[0, 1, 3]][:, [0, 1, 3]]).all()
    # a PML loss sees the NaN (it used to train on a silent correlation of 0); MeanReducer, as
    # PML's default AvgNonZeroReducer drops NaN terms itself (NaN > 0 is False)
    from pytorch_metric_learning.reducers import MeanReducer

    loss_fn = ContrastiveLoss(
        pos_margin=1, neg_margin=0, distance=PearsonCorrelation(), reducer=MeanReducer()
    )
    loss = loss_fn(e, labels)
    assert torch.isnan(loss)
    distances, _ = CustomKNN(PearsonCorrelation())(e[2:3], 3, e, False)
    assert torch.isnan(distances).all()
