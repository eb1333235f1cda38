"""k-reciprocal re-ranking (Zhong et al., CVPR 2017; Group Loss++ §4.4).

This module is the *dense reference convention* (:func:`re_ranking`,
:func:`re_ranking_one_set`, :func:`dense_re_ranking_knn`): an independent numpy
re-implementation of the authors' python code (``re_ranking_ranklist.re_ranking``). It holds
several ``N x N`` float32 matrices (``N = nq + ng``) and reproduces the authors' output,
including its quirks (listed below). numpy/scipy on CPU: a post-processing of stored distances,
outside any autograd graph. The exact top-``k`` of the same final distances without any
``N x N`` matrix is :func:`~pml_grouploss.functional.reranking_sparse.sparse_re_ranking_knn`.

Reference conventions (all reproduced by both paths; the sparse path also repeats the float32
operation order):

1. inputs are plain Euclidean distances; they are *squared* in the input dtype, then cast to
   float32;
2. ``d[i, j] = D2[j, i] / max_r D2[r, i]``: the squared matrix is divided by its column maxima
   and transposed (for symmetric input: every row divided by its maximum);
3. ``initial_rank`` is the ascending order of each row of ``d`` (ties by index here; the
   reference's numpy quicksort breaks ties arbitrarily);
4. ``R(i, k) = {j in top_{k+1}(i) : i in top_{k+1}(j)}`` (the item itself included);
5. expansion: ``R(c, h)`` for ``c in R(i, k1)``, ``h = int(np.around(k1 / 2))`` (round half to
   even), is added when ``|R(c, h) ∩ R(i, k1)| > 2/3 |R(c, h)|`` (strict);
6. ``V[i, S] = exp(-d[i, S]) / sum(exp(-d[i, S]))`` over the expanded set ``S`` (Zhong eq. 7);
7. local query expansion (Zhong eq. 11) when ``k2 != 1``:
   ``V[i] = mean(V[initial_rank[i, :k2]])``;
8. Jaccard distance of the query rows: ``s_ij = sum_k min(V_ik, V_jk)``,
   ``jaccard = 1 - s / (2 - s)`` (Zhong eq. 10 with ``sum max = 2 - sum min`` because every V row
   sums to 1);
9. ``final = (1 - lambda) * jaccard + lambda * d`` (Zhong eq. 12).

Degenerate input: a row whose maximum distance is 0 (all items identical) is left unscaled
instead of dividing 0 by 0 (the reference would produce NaN there). NaN/inf distances or
embeddings raise a ``ValueError``; float16 distances are promoted to float32 before squaring, and
every input is first multiplied by an exact power of two (``_reranking_checks``), so the squares
cannot overflow (the result is unchanged: convention 2 is scale invariant).
"""

from __future__ import annotations

from typing import Dict, Optional, Tuple

import numpy as np
import scipy.sparse as sp
import torch

from .._validation import check_bool, check_int
from ._reranking_checks import (
    ArrayLike,
    assemble_set,
    check_distances,
    check_embeddings,
    check_re_ranking_args,
    rescale,
    to_numpy,
)

__all__ = ["around_half", "dense_re_ranking_knn", "re_ranking", "re_ranking_one_set"]


def around_half(k1: int) -> int:
    """``int(np.around(k1 / 2))``: round half to even, as the reference (7 -> 4, 5 -> 2)."""
    return int(np.around(k1 / 2.0))


def _normalise_rows(sq_dist32: np.ndarray) -> np.ndarray:
    """Convention 2: divide by the column maxima, then transpose. ``(N, N)`` float32."""
    col_max = np.max(sq_dist32, axis=0)
    col_max = np.where(col_max > 0, col_max, np.float32(1.0)).astype(np.float32)
    return np.ascontiguousarray(np.transpose(sq_dist32 / col_max))


def _k_reciprocal(initial_rank: np.ndarray, i: int, k: int) -> np.ndarray:
    """Convention 4: ``R(i, k)`` in the order of ``initial_rank[i]``."""
    forward = initial_rank[i, : k + 1]
    backward = initial_rank[forward, : k + 1]
    return forward[np.any(backward == i, axis=1)]


def _dense_weights(dist: np.ndarray, initial_rank: np.ndarray, k1: int) -> np.ndarray:
    """Conventions 4-6: ``V`` (Zhong eq. 7) over the expanded k-reciprocal sets. ``(N, N)``."""
    n = dist.shape[0]
    h = around_half(k1)
    V = np.zeros((n, n), dtype=np.float32)
    for i in range(n):
        r_i = _k_reciprocal(initial_rank, i, k1)
        expansion = [r_i]
        for c in r_i:
            r_c = _k_reciprocal(initial_rank, int(c), h)
            if len(np.intersect1d(r_c, r_i)) > 2.0 / 3 * len(r_c):
                expansion.append(r_c)
        support = np.unique(np.concatenate(expansion))
        weight = np.exp(-dist[i, support])
        V[i, support] = weight / np.sum(weight)
    return V


def _dense_jaccard(V: np.ndarray, num_query: int) -> np.ndarray:
    """Convention 8 (Zhong eq. 10) for the first ``num_query`` rows. ``(num_query, N)``.

    Inverted index (column -> rows with a non-zero), accumulated column by column in ascending
    order in float32, as the reference does.
    """
    n = V.shape[0]
    csc = sp.csc_matrix(V)
    jaccard = np.zeros((num_query, n), dtype=np.float32)
    for i in range(num_query):
        temp_min = np.zeros(n, dtype=np.float32)
        for col in np.flatnonzero(V[i]):
            rows = csc.indices[csc.indptr[col] : csc.indptr[col + 1]]
            vals = csc.data[csc.indptr[col] : csc.indptr[col + 1]]
            temp_min[rows] = temp_min[rows] + np.minimum(V[i, col], vals)
        jaccard[i] = 1 - temp_min / (2.0 - temp_min)
    return jaccard


def _dense_core(
    sq_dist32: np.ndarray,
    num_query: int,
    k1: int,
    k2: int,
    lambda_value: float,
    return_intermediates: bool,
) -> Tuple[np.ndarray, Optional[Dict[str, np.ndarray]]]:
    """Steps 2-9 on an assembled squared-distance matrix.

    Args:
        sq_dist32: ``(N, N)`` float32 squared distances; the first ``num_query`` rows are queries.

    Returns:
        ``final`` of shape ``(num_query, N)`` float32, and the intermediates if asked.
    """
    dist = _normalise_rows(sq_dist32)
    initial_rank = np.argsort(dist, axis=1, kind="stable").astype(np.int32)
    V = _dense_weights(dist, initial_rank, k1)
    V_kreciprocal = V.copy() if return_intermediates else None
    if k2 != 1:  # convention 7 (Zhong eq. 11)
        V_qe = np.zeros_like(V)
        for i in range(V.shape[0]):
            V_qe[i, :] = np.mean(V[initial_rank[i, :k2], :], axis=0)
        V = V_qe
    jaccard = _dense_jaccard(V, num_query)
    final = jaccard * (1 - lambda_value) + dist[:num_query] * lambda_value
    if not return_intermediates:
        return final, None
    inter = {
        "original_dist_norm": dist,
        "initial_rank": initial_rank,
        "V_kreciprocal": V_kreciprocal,
        "V_qe": V,
        "jaccard_dist": jaccard,
    }
    return final, inter


def re_ranking(
    q_g_dist: ArrayLike,
    q_q_dist: ArrayLike,
    g_g_dist: ArrayLike,
    k1: int = 20,
    k2: int = 6,
    lambda_value: float = 0.3,
    *,
    return_intermediates: bool = False,
):
    """k-reciprocal re-ranking of query-gallery distances (Zhong et al. 2017 eq. 12; GL++ §4.4).

    Dense reference convention: reproduces the authors' python ``re_ranking_ranklist.re_ranking``
    (see the module docstring for the exact conventions). Query-query neighbours take part in
    the k-reciprocal sets, the query expansion and the Jaccard term.

    Defaults are the authors' (k1=20, k2=6, lambda=0.3). GL++ Table 7 uses k1=50, k2=20 and
    lambda=0.85 (CUB) / 0.9 (Cars196) / 0.94 (SOP), and k1=4, k2=2, lambda=0.7 (In-Shop).

    Memory: several ``(nq+ng)^2`` float32 matrices. For large sets use
    :func:`~pml_grouploss.functional.reranking_sparse.sparse_re_ranking_knn` (same ranking,
    no ``N x N`` matrix).

    Args:
        q_g_dist: ``(nq, ng)`` plain (not squared) Euclidean distances.
        q_q_dist: ``(nq, nq)``.
        g_g_dist: ``(ng, ng)``.
        k1: size of the k-reciprocal neighbourhood, >= 1.
        k2: size of the local query expansion, >= 1 (1 = none).
        lambda_value: weight of the original distance, in [0, 1].
        return_intermediates: also return a dict with ``original_dist_norm`` ``(N, N)``,
            ``initial_rank`` ``(N, N)`` int32, ``V_kreciprocal`` and ``V_qe`` ``(N, N)``,
            ``jaccard_dist`` ``(nq, N)``.

    Returns:
        ``(nq, ng)`` float32 final distances: a numpy array for numpy input, a torch tensor (on
        the device of ``q_g_dist``) for torch input. With ``return_intermediates`` a tuple
        ``(final, intermediates)``.
    """
    k1, k2, lambda_value, _ = check_re_ranking_args(k1, k2, lambda_value)
    return_intermediates = check_bool("return_intermediates", return_intermediates)
    as_torch = isinstance(q_g_dist, torch.Tensor)
    device = q_g_dist.device if as_torch else None
    qg = check_distances("q_g_dist", to_numpy(q_g_dist, "q_g_dist"))
    qq = check_distances("q_q_dist", to_numpy(q_q_dist, "q_q_dist"))
    gg = check_distances("g_g_dist", to_numpy(g_g_dist, "g_g_dist"))
    if qg.ndim != 2:
        raise ValueError(f"q_g_dist must be 2-D (nq, ng), got shape {qg.shape}")
    nq, ng = qg.shape
    if qq.shape != (nq, nq):
        raise ValueError(f"q_q_dist must have shape ({nq}, {nq}) to match q_g_dist, got {qq.shape}")
    if gg.shape != (ng, ng):
        raise ValueError(f"g_g_dist must have shape ({ng}, {ng}) to match q_g_dist, got {gg.shape}")
    if nq == 0 or ng == 0:
        raise ValueError(f"need at least one query and one gallery item, got nq={nq}, ng={ng}")
    qg, qq, gg = rescale(qg, qq, gg)  # exact (a power of two): no overflow of the squares
    original = np.concatenate(
        [np.concatenate([qq, qg], axis=1), np.concatenate([qg.T, gg], axis=1)], axis=0
    )
    sq32 = np.power(original, 2).astype(np.float32)
    final, inter = _dense_core(sq32, nq, k1, k2, lambda_value, return_intermediates)
    final = final[:, nq:]
    if as_torch:
        final = torch.from_numpy(np.ascontiguousarray(final)).to(device)
    return (final, inter) if return_intermediates else final


def re_ranking_one_set(
    dist: ArrayLike,
    num_query: Optional[int] = None,
    k1: int = 20,
    k2: int = 6,
    lambda_value: float = 0.3,
    *,
    squared: bool = False,
) -> np.ndarray:
    """Dense reference re-ranking of ONE set of ``N`` items against itself.

    The deep-metric-learning protocol (query set == gallery set): every item appears once
    (calling :func:`re_ranking` with the same set as query and gallery would put every item in
    the graph twice). Rows ``0..num_query-1`` are the queries.

    Args:
        dist: ``(N, N)`` Euclidean distances (``squared=False``) or squared Euclidean distances.
        num_query: number of query rows (default ``N``).
        squared: ``dist`` already holds squared distances.

    Returns:
        ``(num_query, N)`` float32 numpy array of final distances; column ``i`` of row ``i`` is the
        item itself (final distance 0 unless duplicates exist).
    """
    k1, k2, lambda_value, _ = check_re_ranking_args(k1, k2, lambda_value)
    squared = check_bool("squared", squared)
    (d,) = rescale(check_distances("dist", to_numpy(dist, "dist")))
    if d.ndim != 2 or d.shape[0] != d.shape[1]:
        raise ValueError(f"dist must be a square (N, N) matrix, got shape {d.shape}")
    n = d.shape[0]
    num_query = n if num_query is None else check_int("num_query", num_query, minimum=1)
    if not (1 <= num_query <= n):
        raise ValueError(f"num_query must be in [1, {n}], got {num_query}")
    sq32 = (d if squared else np.power(d, 2)).astype(np.float32)
    final, _ = _dense_core(sq32, num_query, k1, k2, lambda_value, False)
    return final


def dense_re_ranking_knn(
    query: ArrayLike,
    k: Optional[int],
    reference: Optional[ArrayLike] = None,
    ref_includes_query: bool = False,
    k1: int = 20,
    k2: int = 6,
    lambda_value: float = 0.3,
) -> Tuple[np.ndarray, np.ndarray]:
    """Top-``k`` of the dense reference re-ranking, from embeddings (the reference path).

    Same semantics as
    :func:`~pml_grouploss.functional.reranking_sparse.sparse_re_ranking_knn` (which see);
    materialises ``N x N``.
    Squared Euclidean distances are computed exactly in float64 (scipy ``cdist``).

    Returns:
        ``(distances, indices)``, each ``(nq, k')`` with ``k' = min(k, available)`` (``(nq, 0)``
        when nothing is available, e.g. for an empty query/reference): float32 final
        distances ascending, int64 indices into ``reference``. Ties are broken by the smaller
        index.
    """
    from scipy.spatial.distance import cdist

    k1, k2, lambda_value, _ = check_re_ranking_args(k1, k2, lambda_value)
    ref_includes_query = check_bool("ref_includes_query", ref_includes_query)
    q = to_numpy(query, "query")
    r = q if reference is None else to_numpy(reference, "reference")
    if reference is None:
        ref_includes_query = True
    check_embeddings(q, r, k)
    x, nq, off, perm = assemble_set(q, r, ref_includes_query)
    n_out = x.shape[0] - off - (1 if ref_includes_query else 0)
    kk = n_out if k is None else min(int(k), n_out)
    if kk <= 0:  # nothing to rank (e.g. an empty set), as the sparse path
        return np.zeros((nq, 0), np.float32), np.zeros((nq, 0), np.int64)
    (x64,) = rescale(x.astype(np.float64))
    sq = cdist(x64, x64, "sqeuclidean").astype(np.float32)
    final, _ = _dense_core(sq, nq, k1, k2, lambda_value, False)
    final = final[:, off:]
    if ref_includes_query:
        final = final.astype(np.float64)
        final[np.arange(nq), np.arange(nq)] = np.inf  # self excluded
    order = np.argsort(final, axis=1, kind="stable")[:, :kk]
    dists = np.take_along_axis(final, order, axis=1).astype(np.float32)
    return dists, (order if perm is None else perm[order]).astype(np.int64)
