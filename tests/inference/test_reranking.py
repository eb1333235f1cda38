"""KReciprocalReRanker as PML knn_func (AccuracyCalculator, InferenceModel)."""

import numpy as np
import pytest
import torch
from pytorch_metric_learning.utils.accuracy_calculator import AccuracyCalculator
from pytorch_metric_learning.utils.inference import InferenceModel

import pml_grouploss.inference as inference
from pml_grouploss.functional import dense_re_ranking_knn
from pml_grouploss.functional import re_ranking as functional_re_ranking
from pml_grouploss.inference import KReciprocalReRanker

CPU = torch.device("cpu")


def _data(n=240, dim=16, classes=30, seed=0):
    g = torch.Generator().manual_seed(seed)
    centres = torch.randn(classes, dim, generator=g)
    labels = torch.randint(0, classes, (n,), generator=g)
    return centres[labels] + 0.8 * torch.randn(n, dim, generator=g), labels


def test_re_ranking_has_one_public_place():
    assert "re_ranking" not in inference.__all__
    with pytest.warns(DeprecationWarning, match="pml_grouploss.functional.re_ranking"):
        assert inference.re_ranking is functional_re_ranking


@pytest.mark.parametrize("ref_includes_query", [True, False])
def test_knn_func_contract_and_dense_ranking(ref_includes_query):
    x, _ = _data()
    q = x[:60]
    ref = x if ref_includes_query else x[60:]
    knn = KReciprocalReRanker(k1=20, k2=6, lambda_value=0.3)
    d, i = knn(q, 12, ref, ref_includes_query)
    assert d.shape == i.shape == (60, 12) and i.dtype == torch.int64 and d.dtype == torch.float32
    assert torch.all(d[:, 1:] >= d[:, :-1])
    dd, di = dense_re_ranking_knn(q.numpy(), 12, ref.numpy(), ref_includes_query, 20, 6, 0.3)
    np.testing.assert_array_equal(i.numpy(), di)
    np.testing.assert_allclose(d.numpy(), dd, atol=2e-6)


def test_inside_accuracy_calculator_matches_dense_knn():
    x, y = _data()

    def dense_knn(query, k, reference, ref_includes_query):
        d, i = dense_re_ranking_knn(
            query.numpy(), k, reference.numpy(), ref_includes_query, 20, 6, 0.3
        )
        return torch.from_numpy(d), torch.from_numpy(i)

    inc = ("precision_at_1", "mean_average_precision_at_r")
    a = AccuracyCalculator(
        include=inc, k="max_bin_count", device=CPU, knn_func=KReciprocalReRanker()
    )
    b = AccuracyCalculator(include=inc, k="max_bin_count", device=CPU, knn_func=dense_knn)
    plain = AccuracyCalculator(include=inc, k="max_bin_count", device=CPU)
    ra, rb, rp = a.get_accuracy(x, y), b.get_accuracy(x, y), plain.get_accuracy(x, y)
    assert ra == rb
    # re-ranking helps on clustered data (MAP@R)
    assert ra["mean_average_precision_at_r"] > rp["mean_average_precision_at_r"]


def test_inference_model_train_then_query(tmp_path):
    x, _ = _data()
    knn = KReciprocalReRanker()
    im = InferenceModel(
        torch.nn.Identity(), knn_func=knn, normalize_embeddings=False, data_device=CPU
    )
    im.train_knn(x[40:])
    d, i = im.get_nearest_neighbors(x[:40], k=5)
    dd, di = dense_re_ranking_knn(x[:40].numpy(), 5, x[40:].numpy(), False, 20, 6, 0.3)
    np.testing.assert_array_equal(i.numpy(), di)
    knn.save(str(tmp_path / "ref.pt"))
    other = KReciprocalReRanker()
    other.load(str(tmp_path / "ref.pt"))
    assert torch.equal(other(x[:40], 5)[1], i)


def test_no_reference_raises():
    with pytest.raises(ValueError, match="reference"):
        KReciprocalReRanker()(torch.randn(3, 4), 2)


@pytest.mark.parametrize(
    "kw,match",
    [
        (dict(k1=0), "k1"),
        (dict(k2=0), "k2"),
        (dict(lambda_value=1.2), "lambda_value"),
        (dict(lambda_value=-0.01), "lambda_value"),
        (dict(query_block=0), "query_block"),
    ],
)
def test_bad_arguments(kw, match):
    with pytest.raises((ValueError, TypeError), match=match):
        KReciprocalReRanker(**kw)


def test_hyper_parameters_checked_once_at_construction(monkeypatch):
    """The knn_func is called once per evaluation: its k1/k2/lambda checks run in __init__,
    not again per call (the per-call embeddings and k are still checked)."""
    import pml_grouploss.functional._reranking_checks as checks
    import pml_grouploss.functional.reranking_sparse as sparse

    rr = KReciprocalReRanker(k1=6, k2=3, lambda_value=0.5)

    def fail(*a, **kw):
        raise AssertionError("hyper-parameters re-checked per call")

    monkeypatch.setattr(sparse, "check_re_ranking_args", fail)
    monkeypatch.setattr(checks, "check_re_ranking_args", fail)
    x, _ = _data(n=60)
    d, i = rr(x, 5, x, True)
    assert d.shape == (60, 5) and not bool((i == torch.arange(60)[:, None]).any())
    with pytest.raises(ValueError, match="^k must be an int >= 1"):
        rr(x, 0, x, True)
