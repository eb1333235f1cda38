"""k-reciprocal re-ranking: fixture parity of the dense path, sparse == dense rankings."""

import os
import tracemalloc

import numpy as np
import pytest
import torch

from pml_grouploss.functional import (
    dense_re_ranking_knn,
    re_ranking,
    re_ranking_one_set,
    sparse_re_ranking_knn,
)
from pml_grouploss.functional.reranking import around_half
from tests.conftest import fixture_paths

RR = fixture_paths("rr_*.npz")


def _run(z, as_torch=False):
    args = [z["q_g_dist"], z["q_q_dist"], z["g_g_dist"]]
    if as_torch:
        args = [torch.from_numpy(a) for a in args]
    return re_ranking(
        *args,
        k1=int(z["k1"]),
        k2=int(z["k2"]),
        lambda_value=float(z["lambda_value"]),
        return_intermediates=True,
    )


@pytest.mark.parametrize("path", RR, ids=os.path.basename)
def test_fixture_parity(path):
    z = np.load(path)
    final, it = _run(z)
    assert final.dtype == np.float32 and final.shape == z["final_dist"].shape
    np.testing.assert_allclose(final, z["final_dist"], rtol=0, atol=2e-6)
    np.testing.assert_array_equal(it["original_dist_norm"], z["original_dist_norm"])
    top = z["initial_rank_top"]
    np.testing.assert_array_equal(it["initial_rank"][:, : top.shape[1]], top)
    for key in ("V_kreciprocal", "V_qe"):
        np.testing.assert_array_equal(it[key] != 0, z[key] != 0)
        np.testing.assert_allclose(it[key], z[key], rtol=0, atol=2e-6)
    np.testing.assert_allclose(it["jaccard_dist"], z["jaccard_dist"], rtol=0, atol=2e-6)


@pytest.mark.parametrize("path", RR[:2], ids=os.path.basename)
def test_torch_input_gives_torch_output(path):
    z = np.load(path)
    final, _ = _run(z, as_torch=True)
    assert isinstance(final, torch.Tensor) and final.dtype == torch.float32
    np.testing.assert_allclose(final.numpy(), z["final_dist"], rtol=0, atol=2e-6)


def test_half_k1_rounds_half_to_even():
    assert [around_half(k) for k in (5, 7, 9, 11, 15, 20, 1, 2, 3)] == [2, 4, 4, 6, 8, 10, 0, 1, 2]


def test_one_set_layout_equals_three_matrix_call():
    z = np.load(RR[0])
    nq = z["q_q_dist"].shape[0]
    full = np.block([[z["q_q_dist"], z["q_g_dist"]], [z["q_g_dist"].T, z["g_g_dist"]]])
    one = re_ranking_one_set(full, nq, int(z["k1"]), int(z["k2"]), float(z["lambda_value"]))
    np.testing.assert_array_equal(one[:, nq:], z["final_dist"])


def _clustered(n, dim, rng, spread=0.6):
    centres = rng.normal(size=(max(2, n // 8), dim))
    return centres[rng.integers(0, len(centres), n)] + spread * rng.normal(size=(n, dim))


def _assert_same_ranking(dd, di, sd, si):
    """Sparse == dense: same indices and bit-identical float32 distances (no tie tolerance)."""
    assert di.shape == si.shape and si.dtype == np.int64 and sd.dtype == np.float32
    np.testing.assert_array_equal(si, di)
    np.testing.assert_array_equal(sd, dd)


@pytest.mark.parametrize(
    "n,nq,riq,lam,k,k1,k2",
    [
        (300, 300, True, 0.3, 10, 20, 6),
        (300, 60, False, 0.3, 10, 20, 6),
        (500, 120, True, 0.3, 25, 50, 20),
        (400, 100, False, 0.85, 20, 50, 20),
        (400, 100, True, 0.0, 15, 10, 1),
        (400, 100, False, 1.0, 15, 7, 4),
        (200, 40, False, 0.5, None, 20, 6),
        (150, 150, True, 0.9, None, 5, 3),
        (60, 10, False, 0.3, 5, 60, 70),
    ],
)
def test_sparse_rankings_equal_dense(n, nq, riq, lam, k, k1, k2):
    rng = np.random.default_rng(n + nq + k1)
    x = _clustered(n, 16, rng)
    q = x[:nq]
    ref = x if riq else x[nq:]
    dd, di = dense_re_ranking_knn(q, k, ref, riq, k1, k2, lam)
    sd, si = sparse_re_ranking_knn(q, k, ref, riq, k1, k2, lam, query_block=37)
    _assert_same_ranking(dd, di, sd, si)
    if riq:  # self excluded
        assert not np.any(si == np.arange(nq)[:, None])
    else:
        assert si.max() < ref.shape[0]


@pytest.mark.parametrize("path", RR, ids=os.path.basename)
def test_dense_knn_matches_fixture_ranking(path):
    z = np.load(path)
    dd, di = dense_re_ranking_knn(
        z["q_feat"], 10, z["g_feat"], False, int(z["k1"]), int(z["k2"]), float(z["lambda_value"])
    )
    np.testing.assert_array_equal(di, np.argsort(z["final_dist"], axis=1, kind="stable")[:, :10])
    sd, si = sparse_re_ranking_knn(
        z["q_feat"], 10, z["g_feat"], False, int(z["k1"]), int(z["k2"]), float(z["lambda_value"])
    )
    np.testing.assert_array_equal(si, di)
    np.testing.assert_array_equal(sd, dd)
    np.testing.assert_allclose(sd, np.sort(z["final_dist"], axis=1)[:, :10], rtol=0, atol=2e-6)


def test_query_equal_reference_is_one_set_not_two():
    """ref_includes_query treats the set once; the dense call with the set twice differs."""
    rng = np.random.default_rng(5)
    x = _clustered(120, 8, rng)
    from scipy.spatial.distance import cdist

    d = cdist(x, x)
    one = re_ranking_one_set(d, None, 20, 6, 0.3)
    sd, si = sparse_re_ranking_knn(x, 119, x, True, 20, 6, 0.3)
    expect = one.astype(np.float64)
    np.fill_diagonal(expect, np.inf)
    np.testing.assert_array_equal(si, np.argsort(expect, axis=1, kind="stable")[:, :119])
    twice = re_ranking(d, d, d, 20, 6, 0.3)  # every item duplicated
    assert np.abs(np.sort(twice, 1)[:, 1:11] - np.sort(one, 1)[:, 1:11]).max() > 1e-3


def test_sparse_never_allocates_n_by_n():
    rng = np.random.default_rng(0)
    n = 5000  # one float32 N x N matrix would be 95 MiB
    x = _clustered(n, 32, rng).astype(np.float32)
    tracemalloc.start()
    sparse_re_ranking_knn(x, 10, x, True, query_block=256)
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    assert peak < n * n * 4 / 2, f"peak {peak / 2**20:.1f} MiB"


def test_degenerate_identical_points_are_finite():
    x = np.ones((30, 4))
    sd, si = sparse_re_ranking_knn(x, 5, x, True)
    assert np.all(np.isfinite(sd))
    dd, di = dense_re_ranking_knn(x, 5, x, True)
    assert np.all(np.isfinite(dd))
    np.testing.assert_array_equal(sd, dd)
    np.testing.assert_array_equal(si, di)
    fin = re_ranking(np.zeros((3, 5)), np.zeros((3, 3)), np.zeros((5, 5)))
    assert np.all(np.isfinite(fin))


def test_float32_and_torch_embeddings():
    rng = np.random.default_rng(2)
    x = _clustered(200, 8, rng)
    d64 = sparse_re_ranking_knn(x, 5, x, True)
    d32 = sparse_re_ranking_knn(torch.from_numpy(x.astype(np.float32)), 5, None)
    np.testing.assert_allclose(d32[0], d64[0], atol=1e-5)


@pytest.mark.parametrize(
    "kw,err",
    [
        (dict(k1=0), ValueError),
        (dict(k2=0), ValueError),
        (dict(k1=2.5), TypeError),
        (dict(lambda_value=-0.1), ValueError),
        (dict(lambda_value=1.5), ValueError),
    ],
)
def test_bad_arguments(kw, err):
    z = np.load(RR[0])
    with pytest.raises(err, match=list(kw)[0]):
        re_ranking(z["q_g_dist"], z["q_q_dist"], z["g_g_dist"], **kw)
    with pytest.raises(err, match=list(kw)[0]):
        sparse_re_ranking_knn(
            z["q_feat"], 3, z["g_feat"], False, **{**dict(k1=20, k2=6, lambda_value=0.3), **kw}
        )


def test_bad_shapes():
    with pytest.raises(ValueError, match="q_q_dist"):
        re_ranking(np.zeros((3, 5)), np.zeros((2, 2)), np.zeros((5, 5)))
    with pytest.raises(ValueError, match="dim"):
        sparse_re_ranking_knn(np.zeros((3, 4)), 2, np.zeros((5, 3)))
    with pytest.raises(ValueError, match="k must"):
        sparse_re_ranking_knn(np.zeros((3, 4)), 0, np.zeros((5, 4)))


@pytest.mark.parametrize("lam,riq", [(0.85, True), (0.94, False), (0.0, True)])
def test_table7_setting_uses_column_order_and_equals_dense(monkeypatch, lam, riq):
    """k1=50, k2=20 (GL++ Table 7) fills V's columns: the Jaccard terms go column by column
    (outer products), and the result is still bit-identical to the dense reference."""
    import pml_grouploss.functional._reranking_topk as topk

    calls = {"column": 0, "entry": 0}
    for name in ("column", "entry"):
        original = getattr(topk, f"_{name}_terms")

        def counted(*a, _f=original, _n=name):
            calls[_n] += 1
            return _f(*a)

        monkeypatch.setattr(topk, f"_{name}_terms", counted)
    rng = np.random.default_rng(7)
    x = _clustered(400, 16, rng)
    q, ref = (x, x) if riq else (x[:80], x[80:])
    dd, di = dense_re_ranking_knn(q, 10, ref, riq, 50, 20, lam)
    sd, si = sparse_re_ranking_knn(q, 10, ref, riq, 50, 20, lam, query_block=150)
    _assert_same_ranking(dd, di, sd, si)
    assert calls["column"] >= 1 and calls["entry"] == 0
    # the default setting's sparse V goes entry by entry, with the same result as dense
    calls.update(column=0, entry=0)
    dd, di = dense_re_ranking_knn(q, 10, ref, riq, 20, 6, 0.3)
    sd, si = sparse_re_ranking_knn(q, 10, ref, riq, 20, 6, 0.3, query_block=150)
    _assert_same_ranking(dd, di, sd, si)
    assert calls["entry"] >= 1 and calls["column"] == 0


def test_term_chunks_cover_every_entry_within_budget():
    from pml_grouploss.functional._reranking_topk import _chunks

    lens = np.array([3, 5, 1, 9, 2, 2, 30, 1])
    ranges = list(_chunks(lens, 10))
    assert ranges[0][0] == 0 and ranges[-1][1] == len(lens)
    assert all(a[1] == b[0] for a, b in zip(ranges, ranges[1:]))
    for lo, hi in ranges:  # within budget, or one entry that alone exceeds it
        assert lens[lo:hi].sum() <= 10 or hi - lo == 1
    assert ranges == [(0, 3), (3, 4), (4, 6), (6, 7), (7, 8)]


@pytest.mark.parametrize(
    "kw,err,match",
    [
        (dict(k1=True), TypeError, "^k1 must be an int"),
        (dict(k2=np.float32(3)), TypeError, "^k2 must be an int"),
        (dict(lambda_value="0.3"), TypeError, "^lambda_value must be a real number"),
        (dict(lambda_value=float("nan")), ValueError, "^lambda_value must be a finite number"),
        (dict(query_block=0), ValueError, "^query_block must be an int >= 1"),
    ],
)
def test_bad_arguments_name_the_argument(kw, err, match):
    x = np.random.default_rng(0).normal(size=(20, 4))
    with pytest.raises(err, match=match):
        sparse_re_ranking_knn(x, 3, x, True, **kw)


def test_numpy_integer_hyper_parameters_accepted():
    x = np.random.default_rng(0).normal(size=(30, 4))
    a = sparse_re_ranking_knn(x, 3, x, True, np.int64(6), np.int32(3), np.float32(0.5))
    b = sparse_re_ranking_knn(x, 3, x, True, 6, 3, float(np.float32(0.5)))
    np.testing.assert_array_equal(a[1], b[1])


@pytest.mark.parametrize("riq", [True, False])
def test_ranking_in_runs_of_queries_equals_dense(monkeypatch, riq):
    """Step 5 ranks runs of queries with a bounded number of overlapping pairs; tiny runs
    (down to one query) give the same bits as one run and as the dense path."""
    import pml_grouploss.functional._reranking_topk as topk

    rng = np.random.default_rng(3)
    x = _clustered(300, 16, rng)
    q, ref = (x, x) if riq else (x[:70], x[70:])
    dd, di = dense_re_ranking_knn(q, 12, ref, riq, 20, 6, 0.5)
    monkeypatch.setattr(topk, "OVERLAP_CHUNK", 150)
    sd, si = sparse_re_ranking_knn(q, 12, ref, riq, 20, 6, 0.5, query_block=64)
    _assert_same_ranking(dd, di, sd, si)


def test_bfloat16_tensors_rank_as_their_float32_values():
    # numpy has no bfloat16: the tensors are read as float32, which holds them exactly
    rng = np.random.default_rng(3)
    q = torch.from_numpy(_clustered(12, 4, rng)).bfloat16()
    g = torch.from_numpy(_clustered(20, 4, rng)).bfloat16()
    qf, gf = q.float(), g.float()
    for fn in (sparse_re_ranking_knn, dense_re_ranking_knn):
        got, want = fn(q, 5, g, k1=4, k2=2), fn(qf, 5, gf, k1=4, k2=2)
        np.testing.assert_array_equal(np.asarray(got[1]), np.asarray(want[1]))
        np.testing.assert_array_equal(np.asarray(got[0]), np.asarray(want[0]))
    dists = [torch.cdist(a, b) for a, b in ((qf, gf), (qf, qf), (gf, gf))]
    got = re_ranking(*[d.bfloat16() for d in dists], k1=4, k2=2)
    want = re_ranking(*[d.bfloat16().float() for d in dists], k1=4, k2=2)
    assert torch.equal(got, want)
    gg = dists[2].bfloat16()
    np.testing.assert_array_equal(re_ranking_one_set(gg, k1=4, k2=2),
                                  re_ranking_one_set(gg.float(), k1=4, k2=2))


def test_negative_or_complex_input_is_rejected():
    d = np.ones((3, 5))
    with pytest.raises(ValueError, match="q_g_dist must be non-negative"):
        re_ranking(-d, np.zeros((3, 3)), np.zeros((5, 5)))
    with pytest.raises(TypeError, match="dist must be real"):
        re_ranking_one_set(np.zeros((4, 4), dtype=complex))
    with pytest.raises(TypeError, match="query must be real"):
        sparse_re_ranking_knn(torch.zeros(4, 3, dtype=torch.complex64), 2)


@pytest.mark.parametrize("nq, nr, riq, width", [
    (0, 0, True, 0), (0, 0, False, 0), (0, 5, False, 3), (3, 0, False, 0), (1, 1, True, 0)])
def test_dense_knn_of_empty_sets_is_empty_like_sparse(nq, nr, riq, width):
    # dense_re_ranking_knn failed inside numpy ("zero-size array to reduction operation")
    e = np.random.default_rng(0).standard_normal((max(nq, nr), 4)).astype(np.float32)
    q, r = e[:nq], e[:nr]
    for knn in (dense_re_ranking_knn, sparse_re_ranking_knn):
        d, i = knn(q, 3, r, riq, k1=3, k2=2)
        assert d.shape == i.shape == (nq, width), knn
        assert d.dtype == np.float32 and i.dtype == np.int64
