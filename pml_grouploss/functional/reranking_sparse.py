"""Exact top-``k`` of the k-reciprocal re-ranking without any ``N x N`` matrix (GL++ §4.4).

The sparse path behind :class:`~pml_grouploss.inference.KReciprocalReRanker`: the same
ranking, and the same float32 distances, as the dense reference convention of
:mod:`pml_grouploss.functional.reranking` (whose docstring lists the conventions), from
embeddings. numpy/scipy/faiss on CPU. Steps 1-3 live in ``_reranking_graph``, steps 4-5 in
``_reranking_topk``, the argument checks in ``_reranking_checks``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional, Tuple

import numpy as np

from .._validation import check_bool
from ._reranking_checks import (
    ArrayLike,
    assemble_set,
    check_embeddings,
    check_re_ranking_args,
    rescale,
    to_numpy,
)
from ._reranking_graph import (
    CANDIDATE_MARGIN,
    exact_sorted_candidates,
    expanded_sets,
    faiss_search,
    kreciprocal_weights,
    query_expansion,
    require_faiss,
    row_maxima,
)
from ._reranking_topk import JACCARD_ACC_ELEMS, RankContext, block_overlaps, rank_block

__all__ = ["ReRankingParams", "sparse_re_ranking_knn"]


@dataclass(frozen=True)
class ReRankingParams:
    """Checked re-ranking hyper-parameters (see :func:`re_ranking`): ``k1, k2 >= 1``,
    ``lambda_value`` in ``[0, 1]``, ``query_block >= 1``."""

    k1: int = 20
    k2: int = 6
    lambda_value: float = 0.3
    query_block: int = 512

    @classmethod
    def checked(cls, k1, k2, lambda_value, query_block=512) -> "ReRankingParams":
        return cls(*check_re_ranking_args(k1, k2, lambda_value, query_block))


def sparse_re_ranking_knn(
    query: ArrayLike,
    k: Optional[int],
    reference: Optional[ArrayLike] = None,
    ref_includes_query: bool = False,
    k1: int = 20,
    k2: int = 6,
    lambda_value: float = 0.3,
    query_block: int = 512,
) -> Tuple[np.ndarray, np.ndarray]:
    """Exact top-``k`` of the k-reciprocal re-ranked distances (Zhong eq. 12), no ``N x N``.

    Semantics (the re-ranking graph):

    - ``ref_includes_query=False`` (re-identification protocol): the graph holds
      ``concat(query, reference)``, exactly like :func:`re_ranking` with
      ``q_g = cdist(query, reference)``; neighbours are returned from ``reference`` only.
    - ``ref_includes_query=True`` (deep-metric-learning protocol, ``query ==
      reference[:nq]``): the graph holds ``reference`` once (no duplicated items) and each
      query's own entry (its index) is excluded from its results; other items with identical
      embeddings are kept. Equals :func:`re_ranking_one_set` with ``num_query=nq``. Query rows
      elsewhere in ``reference`` are located by exact row equality (the graph then lists them
      first; a row that is not in ``reference`` is a ``ValueError``).

    Embeddings are multiplied by a power of two first (exact; the ranking is scale invariant),
    so any finite magnitude works; NaN/inf raise a ``ValueError``.

    Algorithm (``N`` items, ``dim`` features):

    1. faiss ``IndexFlatL2`` candidates (``max(k1+1, k2)`` plus a margin), re-sorted by the exact
       float64 squared distance (ties by index), normalised by the exact row maxima found with
       one blocked faiss max-inner-product pass;
    2. k-reciprocal sets and their expansion from the candidate lists only (conventions 4-5),
       the intersections and unions as sparse products;
    3. ``V`` (eq. 7) and the local query expansion (eq. 11) as scipy CSR matrices;
    4. Jaccard sums through an inverted index (CSC of ``V``), for blocks of queries, generated
       in cache-sized chunks;
    5. every item that shares no ``V`` column with the query has Jaccard distance 1, so its final
       distance is monotone in the original one: only the nearest such items can enter the
       top-``k``; the overlapping items are ranked exactly after a lower-bound pruning.

    Memory is ``O(N (k1 h + nnz(V)))`` plus a float32 Jaccard accumulator of
    ``query_block x N`` (capped at ``2**25`` elements, 128 MiB, by shrinking the block), time
    ``O(N^2 dim)`` for the two faiss passes plus ``O(N nnz(V_row) nnz(V_col))``.

    Same numbers as the dense path, not only the same formulas: ``V`` (float32 ``exp``, numpy's
    ``np.sum`` per row), the query expansion (float32 rows added in rank order, then divided by
    ``k2``) and the Jaccard sums (float32, accumulated one by one in ascending ``V``-column order,
    as the reference's ``temp_min``) repeat the reference's operations in the reference's order,
    so the float32 final distances equal those of :func:`dense_re_ranking_knn` bit for bit and
    the rankings are identical (the only approximation left is the float64 rounding of the
    squared Euclidean distances, einsum here vs scipy ``cdist`` there, which changes a float32
    value with probability ~1e-9). Ties are broken by the smaller index.

    Args:
        query: ``(nq, dim)`` embeddings.
        k: neighbours to return (excluding the query itself when ``ref_includes_query``), or
            ``None`` for a full ranking.
        reference: ``(nr, dim)``; ``None`` means ``query`` (and ``ref_includes_query=True``).
        ref_includes_query: see above.
        k1, k2, lambda_value: re-ranking parameters (see :func:`re_ranking`).
        query_block: queries per Jaccard block (memory/speed trade-off; lowered to
            ``2**25 // N`` when larger, to bound the float32 accumulator).

    Returns:
        ``(distances, indices)`` numpy arrays ``(nq, k')`` with ``k' = min(k, available)``:
        float32 final distances ascending and int64 indices into ``reference``.
    """
    params = ReRankingParams.checked(k1, k2, lambda_value, query_block)
    ref_includes_query = check_bool("ref_includes_query", ref_includes_query)
    return sparse_knn_checked(query, k, reference, ref_includes_query, params)


def sparse_knn_checked(
    query: ArrayLike,
    k: Optional[int],
    reference: Optional[ArrayLike],
    ref_includes_query: bool,
    params: ReRankingParams,
) -> Tuple[np.ndarray, np.ndarray]:
    """:func:`sparse_re_ranking_knn` with already-checked ``params`` (the per-call inputs,
    embeddings and ``k``, are still checked)."""
    q = to_numpy(query, "query")
    r = q if reference is None else to_numpy(reference, "reference")
    ref_includes_query = True if reference is None else bool(ref_includes_query)
    check_embeddings(q, r, k)
    x, nq, off, perm = assemble_set(q, r, ref_includes_query)
    n = x.shape[0]
    n_out = n - off - (1 if ref_includes_query else 0)
    kk = n_out if k is None else min(int(k), n_out)
    if kk <= 0:
        return np.zeros((nq, 0), np.float32), np.zeros((nq, 0), np.int64)
    (x64,) = rescale(np.ascontiguousarray(x, dtype=np.float64))  # exact; no float32 overflow
    ctx, top = _graph_context(x64, nq, off, kk, ref_includes_query, params)
    V = query_expansion(
        kreciprocal_weights(expanded_sets(top, params.k1), x64, ctx.row_max), top, params.k2
    )
    Vc = V.tocsc()
    Vc.sort_indices()
    qb = max(1, min(params.query_block, JACCARD_ACC_ELEMS // n))
    out_d = np.empty((nq, kk), dtype=np.float32)
    out_i = np.empty((nq, kk), dtype=np.int64)
    for s in range(0, nq, qb):
        e = min(s + qb, nq)
        ov = block_overlaps(V, Vc, s, e, off, ref_includes_query)
        out_d[s:e], out_i[s:e] = rank_block(ctx, ov, s, e - s)
    return out_d, (out_i if perm is None else perm[out_i])


def _graph_context(
    x64: np.ndarray, nq: int, off: int, kk: int, ref_includes_query: bool, p: ReRankingParams
) -> Tuple[RankContext, np.ndarray]:
    """Step 1: row maxima, the exact-sorted candidate lists ``top`` ``(N, max(k1+1, k2))`` and
    the context of step 5 (faiss indexes, the candidates to re-use)."""
    faiss = require_faiss()
    n, dim = x64.shape
    x32 = np.ascontiguousarray(x64, dtype=np.float32)
    row_max = row_maxima(x64, x32, faiss)
    index_all = faiss.IndexFlatL2(dim)
    index_all.add(x32)
    need = min(n, max(p.k1 + 1, p.k2))
    first_mm = min(n - off, kk + 1 + 2 * CANDIDATE_MARGIN)
    m = min(n, max(need + CANDIDATE_MARGIN, first_mm if ref_includes_query else 0))
    _, cand_all = faiss_search(index_all, x32, m)
    top, _ = exact_sorted_candidates(x64, np.arange(n), cand_all, row_max)
    if ref_includes_query:
        gallery = index_all
    else:
        gallery = faiss.IndexFlatL2(dim)
        gallery.add(x32[off:])
    ctx = RankContext(
        x64=x64,
        x32=x32,
        row_max=row_max,
        gallery=gallery,
        off=off,
        kk=kk,
        ref_includes_query=ref_includes_query,
        lam=p.lambda_value,
        first_mm=first_mm,
        cand_all=cand_all if ref_includes_query else None,
    )
    return ctx, top[:, :need]
