"""KReciprocalReRanker and the re-ranking functions on hostile input (issue 8, items 11-13)."""

import numpy as np
import pytest
import torch
from scipy.spatial.distance import cdist

from pml_grouploss.functional import (
    dense_re_ranking_knn,
    re_ranking,
    re_ranking_one_set,
    sparse_re_ranking_knn,
)
from pml_grouploss.inference import KReciprocalReRanker

K1, K2, LAM = 8, 3, 0.3


def _data(n=60, dim=8, seed=0):
    g = torch.Generator().manual_seed(seed)
    centres = torch.randn(12, dim, generator=g)
    labels = torch.randint(0, 12, (n,), generator=g)
    return centres[labels] + 0.5 * torch.randn(n, dim, generator=g)


# ---------------------------------------------------------------- item 11: scale invariance
@pytest.mark.parametrize("ref_includes_query", [False, True])
@pytest.mark.parametrize("scale", [2.0**63, 2.0**-90])  # ~9e18 (squares > float32), ~8e-28
def test_power_of_two_scale_gives_bit_identical_results(scale, ref_includes_query):
    x = _data()
    q, ref = (x[:10], x) if ref_includes_query else (x[:10], x[10:])
    knn = KReciprocalReRanker(K1, K2, LAM)
    d0, i0 = knn(q, 6, ref, ref_includes_query)
    d1, i1 = knn(q * scale, 6, ref * scale, ref_includes_query)
    assert torch.equal(i1, i0) and torch.equal(d1, d0)  # scaling by 2^e is exact
    dd, di = dense_re_ranking_knn(
        (q * scale).numpy(), 6, (ref * scale).numpy(), ref_includes_query, K1, K2, LAM
    )
    np.testing.assert_array_equal(di, i0.numpy())
    np.testing.assert_array_equal(dd, d0.numpy())


def test_scale_1e19_same_neighbours():
    x = _data()
    knn = KReciprocalReRanker(K1, K2, LAM)
    d0, i0 = knn(x[:10], 6, x[10:])
    d1, i1 = knn(x[:10] * 1e19, 6, x[10:] * 1e19)  # 1e19 * x is rounded in float32: close
    assert torch.isfinite(d1).all()
    assert torch.equal(i1, i0)
    torch.testing.assert_close(d1, d0, rtol=1e-5, atol=1e-6)


def test_float64_beyond_float32_range():
    x = _data().double()
    knn = KReciprocalReRanker(K1, K2, LAM)
    d0, i0 = knn(x[:10], 6, x[10:])
    d1, i1 = knn(x[:10] * 2.0**200, 6, x[10:] * 2.0**200)  # 1.6e60: inf once cast to float32
    assert torch.equal(i1, i0) and torch.equal(d1, d0)


def test_non_finite_embeddings_rejected():
    x = _data()
    x[3, 2] = float("nan")
    with pytest.raises(ValueError, match="finite"):
        KReciprocalReRanker(K1, K2, LAM)(x[:10], 6, x[10:])


# ---------------------------------------------------------------- item 12: query inside reference
def _one_set_truth(ref: np.ndarray, rows: np.ndarray, k: int):
    """The dense one-set re-ranking of the whole reference, rows ``rows``, self excluded."""
    final = re_ranking_one_set(cdist(ref, ref), None, K1, K2, LAM).astype(np.float64)
    final = final[rows]
    final[np.arange(len(rows)), rows] = np.inf
    order = np.argsort(final, axis=1, kind="stable")[:, :k]
    return np.take_along_axis(final, order, axis=1), order


@pytest.mark.parametrize("rows", [np.arange(10, 15), np.array([7, 2, 40, 33])])
def test_query_rows_inside_reference_get_their_own_rankings(rows):
    ref = _data().numpy()
    truth_d, truth_i = _one_set_truth(ref, rows, 5)
    knn = KReciprocalReRanker(K1, K2, LAM)
    d, i = knn(torch.from_numpy(ref[rows]), 5, torch.from_numpy(ref), True)
    np.testing.assert_array_equal(i.numpy(), truth_i)
    np.testing.assert_allclose(d.numpy(), truth_d, rtol=1e-6, atol=1e-6)
    assert all(int(r) not in set(row.tolist()) for r, row in zip(rows, i))  # self excluded
    # the sparse and the dense path agree bit for bit on it
    sd, si = sparse_re_ranking_knn(ref[rows], 5, ref, True, K1, K2, LAM)
    dd, di = dense_re_ranking_knn(ref[rows], 5, ref, True, K1, K2, LAM)
    np.testing.assert_array_equal(si, di)
    np.testing.assert_array_equal(sd, dd)


def test_query_not_in_reference_rejected():
    ref = _data().numpy()
    with pytest.raises(ValueError, match="ref_includes_query=True requires every query row"):
        sparse_re_ranking_knn(ref[10:15] + 1e-3, 5, ref, True, K1, K2, LAM)
    with pytest.raises(ValueError, match="ref_includes_query=True requires every query row"):
        dense_re_ranking_knn(ref[[3, 3]], 5, ref, True, K1, K2, LAM)  # row 3 only once in ref


# ---------------------------------------------------------------- item 13: re_ranking input
def _dists(dtype=np.float64, scale=1.0):
    x = _data().numpy().astype(np.float64)
    q, g = x[:10], x[10:]
    return [(cdist(a, b) * scale).astype(dtype) for a, b in ((q, g), (q, q), (g, g))]


@pytest.mark.parametrize("which, name", [(0, "q_g_dist"), (1, "q_q_dist"), (2, "g_g_dist")])
@pytest.mark.parametrize("bad", [np.nan, np.inf])
def test_re_ranking_rejects_non_finite_distances(which, name, bad):
    args = _dists()
    args[which][1, 1] = bad
    with pytest.raises(ValueError, match=f"^{name} contain NaN or inf"):
        re_ranking(*args, k1=K1, k2=K2, lambda_value=LAM)
    with pytest.raises(ValueError, match="^dist contain NaN or inf"):
        re_ranking_one_set(np.full((4, 4), np.nan))


def test_re_ranking_float16_distances_computed_in_float32():
    args16 = _dists(np.float16, scale=1e3)  # squares ~1e6: beyond float16
    out = re_ranking(*args16, k1=K1, k2=K2, lambda_value=LAM)
    assert np.isfinite(out).all()
    ref = re_ranking(*[a.astype(np.float32) for a in args16], k1=K1, k2=K2, lambda_value=LAM)
    np.testing.assert_array_equal(out, ref)


def test_re_ranking_scale_invariant_beyond_float32():
    base = re_ranking(*_dists(np.float32), k1=K1, k2=K2, lambda_value=LAM)
    big = re_ranking(*_dists(np.float32, 2.0**66), k1=K1, k2=K2, lambda_value=LAM)  # squares 5e39
    np.testing.assert_array_equal(big, base)


@pytest.mark.parametrize("bad, error, message", [
    (torch.randn(4, 5), ValueError, r"embeddings and the stored reference set must be .* "
                                    r"got \(4, 5\) and \(6, 3\)"),
    ([torch.randn(3), torch.randn(3)], TypeError, "got list; stack a list with torch.cat"),
    (torch.randn(3), ValueError, r"embeddings must be \(n, d\)"),
    (torch.ones(2, 3).index_fill(0, torch.tensor([1]), float("nan")), ValueError,
     "embeddings contain NaN or inf"),
    (torch.ones(2, 3, dtype=torch.int64), TypeError, "floating-point"),
])
def test_reference_set_checked_when_stored(bad, error, message):
    ranker = KReciprocalReRanker(k1=2, k2=1)
    ranker.train(torch.randn(6, 3))
    with pytest.raises(error, match=message):
        ranker.add(bad)
    assert ranker.reference.shape == (6, 3)  # unchanged
    ranker.add(np.random.default_rng(0).standard_normal((2, 3)))  # numpy rows are fine
    assert ranker.reference.shape == (8, 3)


def test_ref_includes_query_must_be_a_bool():
    """``bool("False")`` is True: the reranker took a string for the opposite setting."""
    x = torch.randn(30, 4, generator=torch.Generator().manual_seed(0))
    knn = KReciprocalReRanker(k1=K1, k2=K2, lambda_value=LAM)
    with pytest.raises(TypeError, match="ref_includes_query must be True or False, got str"):
        knn(x[:5], 3, x[5:], "False")
    assert torch.equal(knn(x[:5], 3, x[5:], np.False_)[1], knn(x[:5], 3, x[5:], False)[1])
