"""k-reciprocal re-ranking (Zhong et al., CVPR 2017; Group Loss++ §4.4).

Two implementations of the same algorithm:

- :func:`re_ranking` / :func:`re_ranking_one_set`: the *dense reference convention*, an
  independent numpy re-implementation of the authors' python code
  (``re_ranking_ranklist.re_ranking``). It holds several ``N x N`` float32 matrices
  (``N = nq + ng``) and reproduces the authors' output, including its quirks (listed below).
- :func:`sparse_re_ranking_knn`: the exact top-``k`` of the same final distances computed from
  embeddings without any ``N x N`` matrix: faiss candidate k-NN, sparse k-reciprocal sets,
  sparse Jaccard through an inverted index, and a faiss pass for the row maxima.

Reference conventions (all reproduced by both paths; the sparse path also repeats the float32
operation order, see :func:`sparse_re_ranking_knn`):

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

from typing import Any, Dict, Optional, Tuple, Union

import numpy as np
import scipy.sparse as sp
import torch

from ._reranking_checks import assemble_set, check_distances, check_embeddings, rescale

ArrayLike = Union[np.ndarray, torch.Tensor]

_CANDIDATE_MARGIN = 8  # extra exact-checked neighbours beyond what a ranking needs
_JACCARD_ACC_ELEMS = 1 << 25  # float32 Jaccard accumulator of a query block: <= 128 MiB


# ----------------------------------------------------------------------------------------
# argument checks
# ----------------------------------------------------------------------------------------
def check_re_ranking_args(k1: Any, k2: Any, lambda_value: Any) -> None:
    """Raise a clear error for invalid re-ranking hyper-parameters."""
    for name, value in (("k1", k1), ("k2", k2)):
        if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
            raise TypeError(f"{name} must be an int >= 1, got {value!r} ({type(value).__name__})")
        if value < 1:
            raise ValueError(f"{name} must be >= 1, got {value}; use e.g. k1=20, k2=6")
    if isinstance(lambda_value, bool) or not isinstance(
        lambda_value, (int, float, np.floating, np.integer)
    ):
        raise TypeError(f"lambda_value must be a float in [0, 1], got {lambda_value!r}")
    if not (0.0 <= float(lambda_value) <= 1.0):
        raise ValueError(
            f"lambda_value must be in [0, 1] (weight of the original distance), got {lambda_value}"
        )


def _around_half(k1: int) -> int:
    """``int(np.around(k1 / 2))``: round half to even, as the reference (7 -> 4, 5 -> 2)."""
    return int(np.around(k1 / 2.0))


def _to_numpy(x: ArrayLike, name: str) -> np.ndarray:
    if isinstance(x, torch.Tensor):
        return x.detach().cpu().numpy()
    if isinstance(x, np.ndarray):
        return x
    raise TypeError(f"{name} must be a numpy array or a torch tensor, got {type(x).__name__}")


# ----------------------------------------------------------------------------------------
# dense reference convention
# ----------------------------------------------------------------------------------------
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
    n = sq_dist32.shape[0]
    dist = _normalise_rows(sq_dist32)
    initial_rank = np.argsort(dist, axis=1, kind="stable").astype(np.int32)
    h = _around_half(k1)

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
    V_kreciprocal = V.copy() if return_intermediates else None

    if k2 != 1:
        V_qe = np.zeros_like(V)
        for i in range(n):
            V_qe[i, :] = np.mean(V[initial_rank[i, :k2], :], axis=0)
        V = V_qe

    # Inverted index (column -> rows with a non-zero), accumulated column by column in
    # ascending order in float32, as the reference does.
    csc = sp.csc_matrix(V)
    jaccard = np.zeros((num_query, n), dtype=np.float32)
    for i in range(num_query):
        temp_min = np.zeros(n, dtype=np.float32)
        for col in np.flatnonzero(V[i]):
            rows = csc.indices[csc.indptr[col] : csc.indptr[col + 1]]
            vals = csc.data[csc.indptr[col] : csc.indptr[col + 1]]
            temp_min[rows] = temp_min[rows] + np.minimum(V[i, col], vals)
        jaccard[i] = 1 - temp_min / (2.0 - temp_min)

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
    :func:`sparse_re_ranking_knn` (same ranking, no ``N x N`` matrix).

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
    check_re_ranking_args(k1, k2, lambda_value)
    as_torch = isinstance(q_g_dist, torch.Tensor)
    device = q_g_dist.device if as_torch else None
    qg = check_distances("q_g_dist", _to_numpy(q_g_dist, "q_g_dist"))
    qq = check_distances("q_q_dist", _to_numpy(q_q_dist, "q_q_dist"))
    gg = check_distances("g_g_dist", _to_numpy(g_g_dist, "g_g_dist"))
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
    final, inter = _dense_core(
        sq32, nq, int(k1), int(k2), float(lambda_value), return_intermediates
    )
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
    check_re_ranking_args(k1, k2, lambda_value)
    (d,) = rescale(check_distances("dist", _to_numpy(dist, "dist")))
    if d.ndim != 2 or d.shape[0] != d.shape[1]:
        raise ValueError(f"dist must be a square (N, N) matrix, got shape {d.shape}")
    n = d.shape[0]
    num_query = n if num_query is None else int(num_query)
    if not (1 <= num_query <= n):
        raise ValueError(f"num_query must be in [1, {n}], got {num_query}")
    sq32 = (d if squared else np.power(d, 2)).astype(np.float32)
    final, _ = _dense_core(sq32, num_query, int(k1), int(k2), float(lambda_value), False)
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

    Same semantics as :func:`sparse_re_ranking_knn` (which see); materialises ``N x N``.
    Squared Euclidean distances are computed exactly in float64 (scipy ``cdist``).

    Returns:
        ``(distances, indices)``, each ``(nq, k)``: float32 final distances ascending, int64
        indices into ``reference``. Ties are broken by the smaller index.
    """
    from scipy.spatial.distance import cdist

    check_re_ranking_args(k1, k2, lambda_value)
    q = _to_numpy(query, "query")
    r = q if reference is None else _to_numpy(reference, "reference")
    if reference is None:
        ref_includes_query = True
    check_embeddings(q, r, k)
    x, nq, off, perm = assemble_set(q, r, ref_includes_query)
    (x64,) = rescale(x.astype(np.float64))
    sq = cdist(x64, x64, "sqeuclidean").astype(np.float32)
    final, _ = _dense_core(sq, nq, int(k1), int(k2), float(lambda_value), False)
    final = final[:, off:]
    if ref_includes_query:
        final = final.astype(np.float64)
        final[np.arange(nq), np.arange(nq)] = np.inf  # self excluded
    n_out = final.shape[1] - (1 if ref_includes_query else 0)
    kk = n_out if k is None else min(int(k), n_out)
    order = np.argsort(final, axis=1, kind="stable")[:, :kk]
    dists = np.take_along_axis(final, order, axis=1).astype(np.float32)
    return dists, (order if perm is None else perm[order]).astype(np.int64)


# ----------------------------------------------------------------------------------------
# sparse exact path
# ----------------------------------------------------------------------------------------
def _require_faiss():
    try:
        import faiss  # noqa: F401
    except ModuleNotFoundError as e:  # pragma: no cover - faiss is a test dependency
        raise ModuleNotFoundError(
            "sparse re-ranking needs faiss: pip install faiss-cpu "
            "(or pml_grouploss[with-hooks-cpu])"
        ) from e
    return faiss


def _pair_sqdist(x64: np.ndarray, rows: np.ndarray, cols: np.ndarray) -> np.ndarray:
    """Exact float64 squared Euclidean distance of the pairs ``(rows[t], cols[t])``. ``(T,)``."""
    out = np.empty(rows.shape[0], dtype=np.float64)
    block = max(1024, (1 << 20) // max(1, x64.shape[1]))
    for s in range(0, rows.shape[0], block):
        e = min(s + block, rows.shape[0])
        diff = x64[rows[s:e]] - x64[cols[s:e]]
        out[s:e] = np.einsum("ij,ij->i", diff, diff)
    return out


def _faiss_search(index, queries32: np.ndarray, m: int, block: int = 8192):
    ds, ids = [], []
    for s in range(0, queries32.shape[0], block):
        d, i = index.search(queries32[s : s + block], m)
        ds.append(d)
        ids.append(i)
    return np.concatenate(ds), np.concatenate(ids)


def _row_maxima(x64: np.ndarray, x32: np.ndarray, faiss, top: int = 4) -> np.ndarray:
    """Exact ``max_j |x_i - x_j|^2`` for every item, as float32. ``(N,)``.

    A blocked faiss inner-product pass finds the ``top`` farthest candidates
    (``|x_i - y|^2 = |x_i|^2 + (|y|^2 - 2 x_i.y)``, a max-inner-product search with
    ``[-2 x_i, 1] . [y, |y|^2]``); their distances are then recomputed exactly in float64.
    """
    n, dim = x32.shape
    sqn = np.einsum("ij,ij->i", x64, x64)
    base = np.hstack([x32, sqn.astype(np.float32)[:, None]])
    qry = np.hstack([-2.0 * x32, np.ones((n, 1), dtype=np.float32)])
    index = faiss.IndexFlatIP(dim + 1)
    index.add(np.ascontiguousarray(base, dtype=np.float32))
    t = min(top, n)
    _, ids = _faiss_search(index, np.ascontiguousarray(qry, dtype=np.float32), t)
    rows = np.repeat(np.arange(n), t)
    cand = ids.reshape(-1)
    exact = _pair_sqdist(x64, rows, cand).reshape(n, t)
    return exact.max(axis=1).astype(np.float32)


def _exact_sorted_candidates(
    x64: np.ndarray,
    row_ids: np.ndarray,
    cand: np.ndarray,
    row_max32: np.ndarray,
) -> Tuple[np.ndarray, np.ndarray]:
    """Re-sort faiss candidates by the exact normalised distance, ties by index.

    Args:
        row_ids: ``(B,)`` items; cand: ``(B, M)`` candidate item ids (``-1`` = none).

    Returns:
        ``(ids, d)`` both ``(B, M)``: sorted candidates and their float32 ``d`` (inf for none).
    """
    b, m = cand.shape
    valid = cand >= 0
    safe = np.where(valid, cand, 0)
    sq = _pair_sqdist(x64, np.repeat(row_ids, m), safe.reshape(-1)).reshape(b, m)
    d = sq.astype(np.float32) / row_max32[row_ids][:, None]
    d = np.where(valid, d, np.float32(np.inf))
    big = np.iinfo(np.int64).max
    order = np.lexsort((np.where(valid, safe, big), d), axis=1)
    return np.take_along_axis(safe, order, 1), np.take_along_axis(d, order, 1)


def _reciprocal_mask(top: np.ndarray, k: int, block_elems: int = 1 << 22) -> np.ndarray:
    """``mask[i, m]``: ``top[i, m]`` is a k-reciprocal neighbour of ``i`` (convention 4).

    Args:
        top: ``(N, >= k+1)`` initial ranks.

    Returns:
        ``(N, k+1)`` bool.
    """
    n = top.shape[0]
    fwd = top[:, : k + 1]
    out = np.empty(fwd.shape, dtype=bool)
    step = max(1, block_elems // max(1, fwd.shape[1] ** 2))
    for s in range(0, n, step):
        e = min(s + step, n)
        back = fwd[fwd[s:e]]  # (b, k+1, k+1)
        out[s:e] = np.any(back == np.arange(s, e)[:, None, None], axis=2)
    return out


def _expanded_sets(top: np.ndarray, k1: int, block_elems: int = 1 << 22) -> sp.csr_matrix:
    """Conventions 4-5 for every item: the expanded k-reciprocal sets as a boolean CSR."""
    n = top.shape[0]
    h = _around_half(k1)
    f1 = top[:, : k1 + 1]
    m1 = _reciprocal_mask(top, k1)
    fh = top[:, : h + 1]
    mh = _reciprocal_mask(top, h)
    sizes_h = mh.sum(axis=1)
    a = f1.shape[1]
    bsz = fh.shape[1]
    indptr = [0]
    indices = []
    total = 0
    step = max(1, block_elems // max(1, a * bsz * a))
    for s in range(0, n, step):
        e = min(s + step, n)
        ri = np.where(m1[s:e], f1[s:e], -1)  # (b, a) R(i, k1), -1 padded
        cand = f1[s:e]  # (b, a) candidates c
        rc = np.where(mh[cand], fh[cand], -2)  # (b, a, bsz) R(c, h), -2 padded
        inter = np.any(rc[..., None] == ri[:, None, None, :], axis=3).sum(axis=2)  # (b, a)
        ok = m1[s:e] & (inter > 2.0 / 3 * sizes_h[cand])
        members = np.concatenate(
            [ri, np.where(ok[..., None], rc, -1).reshape(e - s, a * bsz)], axis=1
        )
        members = np.where(members < 0, -1, members)
        members.sort(axis=1)
        keep = members >= 0
        keep[:, 1:] &= members[:, 1:] != members[:, :-1]
        counts = keep.sum(axis=1)
        indices.append(members[keep])
        total_counts = np.cumsum(counts) + total
        indptr.extend(total_counts.tolist())
        total = int(total_counts[-1]) if len(total_counts) else total
    indices = np.concatenate(indices).astype(np.int64)
    indptr = np.asarray(indptr, dtype=np.int64)
    return sp.csr_matrix((np.ones(indices.shape[0], dtype=bool), indices, indptr), shape=(n, n))


def _rows_kth(rows: np.ndarray, vals: np.ndarray, nrows: int, kth: int) -> np.ndarray:
    """``kth``-smallest (1-based) of ``vals`` per row id in ``[0, nrows)``; inf if fewer."""
    out = np.full(nrows, np.inf, dtype=np.float64)
    order = np.lexsort((vals, rows))
    r, v = rows[order], vals[order]
    first = np.searchsorted(r, np.arange(nrows))
    rank = np.arange(r.shape[0]) - first[r]
    hit = rank == kth - 1
    out[r[hit]] = v[hit]
    return out


def _rank_rows(
    rows_loc,
    s,
    mm,
    kk,
    n,
    off,
    ref_includes_query,
    lam,
    one_minus,
    lam32,
    x64,
    x32,
    row_max,
    gallery,
    ov_rows,
    ov_cols,
    jac,
    out_d,
    out_i,
    reuse=None,
) -> np.ndarray:
    """Exact top-``kk`` for the block queries ``s + rows_loc`` (step 5 of the sparse path).

    Candidates: every overlapping item (shares a V column; its final distance is computed
    exactly unless a lower bound already rules it out) and the non-overlapping items inside the
    first ``mm`` neighbours by the original distance (their Jaccard distance is 1). Returns a
    mask of the rows whose top-``kk`` is proven complete; the others need a larger ``mm``.
    """
    nb = rows_loc.shape[0]
    slot = np.full(int(rows_loc.max()) + 1, -1, dtype=np.int64)
    slot[rows_loc] = np.arange(nb)
    sel_ov = slot[ov_rows] >= 0 if ov_rows.shape[0] else np.zeros(0, bool)
    o_r = slot[ov_rows[sel_ov]]  # row slot in [0, nb)
    o_c = ov_cols[sel_ov]
    o_j = jac[sel_ov]
    qids = s + rows_loc
    covers_all = mm >= n - off
    reliable = mm if covers_all else mm - _CANDIDATE_MARGIN
    if lam == 0.0:
        # final = Jaccard: non-overlapping items all tie at 1.0, the smallest indices win
        n_ov = np.bincount(o_r, minlength=nb)
        width = int(min(n - off, kk + 1 + n_ov.max(initial=0)))
        ids = np.broadcast_to(np.arange(off, off + width, dtype=np.int64), (nb, width))
        d = np.zeros((nb, width), dtype=np.float32)
        bound = np.full(nb, np.inf)
        reliable = width
        covers_all = True
    else:
        if reuse is not None:
            cand = reuse[qids, :mm]
        else:
            _, cand = _faiss_search(gallery, x32[qids], mm)
        cand = np.where(cand >= 0, cand + off, -1)
        ids, d = _exact_sorted_candidates(x64, qids, cand, row_max)
        bound = d[:, reliable].astype(np.float64) if not covers_all else np.full(nb, np.inf)
        ids, d = ids[:, :reliable], d[:, :reliable]
    p_r = np.repeat(np.arange(nb), ids.shape[1])
    p_c = ids.reshape(-1).astype(np.int64)
    p_d = d.reshape(-1)
    ok = np.isfinite(p_d)
    if ref_includes_query:
        ok &= p_c != qids[p_r]
    p_r, p_c, p_d = p_r[ok], p_c[ok], p_d[ok]
    p_keys = p_r * n + p_c
    o_keys = o_r * n + o_c
    p_is_ov = np.isin(p_keys, o_keys)
    o_in_p = np.isin(o_keys, p_keys)
    # non-overlapping prefix items: Jaccard distance 1
    n_r, n_c = p_r[~p_is_ov], p_c[~p_is_ov]
    n_f = one_minus + p_d[~p_is_ov] * lam32
    # an upper bound T on each row's kk-th final distance from the items with known distance
    known_r = np.concatenate([n_r, o_r[o_in_p]])
    if lam == 0.0:
        known_f = np.concatenate([n_f, o_j[o_in_p] * one_minus])
    else:
        dk = _pair_sqdist(x64, qids[o_r[o_in_p]], o_c[o_in_p]).astype(np.float32)
        dk = dk / row_max[qids[o_r[o_in_p]]]
        known_f = np.concatenate([n_f, o_j[o_in_p] * one_minus + dk * lam32])
    T = _rows_kth(known_r, known_f.astype(np.float64), nb, kk)
    # overlapping items outside the prefix have d >= bound: prune by a lower bound
    lb_d = np.where(o_in_p, 0.0, bound[o_r]).astype(np.float32)
    lb = o_j * one_minus + (lb_d * lam32 if lam != 0.0 else np.float32(0))
    need = o_in_p | (lb.astype(np.float64) <= T[o_r])
    c_r, c_c, c_j = o_r[need], o_c[need], o_j[need]
    if lam == 0.0:
        c_f = c_j * one_minus
    else:
        dc = _pair_sqdist(x64, qids[c_r], c_c).astype(np.float32) / row_max[qids[c_r]]
        c_f = c_j * one_minus + dc * lam32
    ent_r = np.concatenate([n_r, c_r])
    ent_c = np.concatenate([n_c, c_c])
    ent_f = np.concatenate([n_f, c_f]).astype(np.float32)
    order = np.lexsort((ent_c, ent_f, ent_r))
    ent_r, ent_c, ent_f = ent_r[order], ent_c[order], ent_f[order]
    first = np.searchsorted(ent_r, np.arange(nb))
    rank = np.arange(ent_r.shape[0]) - first[ent_r]
    counts = np.bincount(ent_r, minlength=nb)
    take = rank < kk
    kth = np.full(nb, np.inf, dtype=np.float32)
    last = rank == kk - 1
    kth[ent_r[last]] = ent_f[last]
    # unseen non-overlapping items have final >= one_minus + lam * bound
    fin = np.isfinite(bound)
    unseen_lb = np.full(nb, np.inf, dtype=np.float32)
    unseen_lb[fin] = one_minus + bound[fin].astype(np.float32) * lam32
    done = (counts >= kk) & ((kth < unseen_lb) | covers_all)
    mask = done[ent_r] & take
    out_i[qids[ent_r[mask]], rank[mask]] = ent_c[mask] - off
    out_d[qids[ent_r[mask]], rank[mask]] = ent_f[mask]
    return done


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
    """Exact top-``k`` of the k-reciprocal re-ranked distances without any ``N x N`` matrix.

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
    2. k-reciprocal sets and their expansion from the candidate lists only (conventions 4-5);
    3. ``V`` (eq. 7) and the local query expansion (eq. 11) as scipy CSR matrices;
    4. Jaccard sums through an inverted index (CSC of ``V``), for blocks of queries;
    5. every item that shares no ``V`` column with the query has Jaccard distance 1, so its final
       distance is monotone in the original one: only the ``k`` nearest such items (one more
       faiss search) can enter the top-``k``; all other candidates are ranked exactly.

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
    value with probability ~1e-9). Ties are broken by the smaller index, as in
    :func:`dense_re_ranking_knn`.

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
    faiss = _require_faiss()
    check_re_ranking_args(k1, k2, lambda_value)
    k1, k2, lam = int(k1), int(k2), float(lambda_value)
    q = _to_numpy(query, "query")
    r = q if reference is None else _to_numpy(reference, "reference")
    if reference is None:
        ref_includes_query = True
    check_embeddings(q, r, k)
    x, nq, off, perm = assemble_set(q, r, ref_includes_query)
    n, dim = x.shape
    (x64,) = rescale(np.ascontiguousarray(x, dtype=np.float64))  # exact; no float32 overflow
    x32 = np.ascontiguousarray(x64, dtype=np.float32)
    n_out = n - off - (1 if ref_includes_query else 0)
    kk = n_out if k is None else min(int(k), n_out)
    if kk <= 0:
        return np.zeros((nq, 0), np.float32), np.zeros((nq, 0), np.int64)

    # 1. row maxima and exact candidate lists
    row_max = _row_maxima(x64, x32, faiss)
    row_max = np.where(row_max > 0, row_max, np.float32(1.0)).astype(np.float32)
    index_all = faiss.IndexFlatL2(dim)
    index_all.add(x32)
    need = min(n, max(k1 + 1, k2))
    first_mm = min(n - off, kk + 1 + 2 * _CANDIDATE_MARGIN)
    m = min(n, max(need + _CANDIDATE_MARGIN, first_mm if ref_includes_query else 0))
    _, cand_all = _faiss_search(index_all, x32, m)
    top, _ = _exact_sorted_candidates(x64, np.arange(n), cand_all, row_max)
    top = top[:, :need]

    # 2. expanded k-reciprocal sets; 3. V and query expansion, in float32 with the reference's
    # operation order so that V, the Jaccard sums and the final distances are bit-identical
    # to the dense path (hence the same ranking, not only up to ~1e-7).
    S = _expanded_sets(top, k1)  # canonical CSR: every row's support sorted ascending
    S_row = np.repeat(np.arange(n, dtype=np.int64), np.diff(S.indptr))
    d_s = _pair_sqdist(x64, S_row, S.indices.astype(np.int64)).astype(np.float32)
    d_s = d_s / row_max[S_row]
    w = np.exp(-d_s)  # float32, as the reference's np.exp(-original_dist[i, support])
    # np.sum of each row's contiguous float32 weights: numpy's own (pairwise) summation order
    row_sum = np.array(
        [np.sum(w[a:b]) for a, b in zip(S.indptr[:-1], S.indptr[1:])], dtype=np.float32
    )
    w = w / np.repeat(row_sum, np.diff(S.indptr))
    V = sp.csr_matrix((w, S.indices, S.indptr), shape=(n, n))
    del S, S_row, d_s, w
    if k2 != 1:
        # np.mean(V[initial_rank[i, :k2]], axis=0): rows added one by one in rank order, in
        # float32, then divided by the count (sparse + sparse adds in the data dtype)
        kq = min(k2, top.shape[1])
        acc = V[top[:, 0]]
        for t in range(1, kq):
            acc = acc + V[top[:, t]]
        acc.sort_indices()
        acc.data = (acc.data.astype(np.float64) / kq).astype(np.float32)
        V = acc
        del acc
    V.sort_indices()
    Vc = V.tocsc()
    Vc.sort_indices()

    out_d = np.empty((nq, kk), dtype=np.float32)
    out_i = np.empty((nq, kk), dtype=np.int64)
    one_minus = np.float32(1 - lam)
    lam32 = np.float32(lam)

    if ref_includes_query:
        gallery = index_all
    else:
        gallery = faiss.IndexFlatL2(dim)
        gallery.add(x32[off:])

    # float32 Jaccard accumulator of one block of queries (block x N, never N x N)
    qb = max(1, min(query_block, _JACCARD_ACC_ELEMS // n))
    acc_s = np.zeros(qb * n, dtype=np.float32)
    acc_hit = np.zeros(qb * n, dtype=bool)

    for s in range(0, nq, qb):
        e = min(s + qb, nq)
        # 4. Jaccard sums of the block via the inverted index. Entries are generated in the
        # reference's order (query row, then V column ascending, then item) and accumulated
        # one by one in float32 (np.add.at is sequential), as the reference's temp_min.
        sub = V[s:e]
        a_rows = np.repeat(np.arange(e - s, dtype=np.int64), np.diff(sub.indptr))
        a_cols = sub.indices
        a_vals = sub.data
        lens = np.diff(Vc.indptr)[a_cols]
        starts = Vc.indptr[a_cols]
        tot = int(lens.sum())
        pos = np.repeat(starts - np.concatenate([[0], np.cumsum(lens)[:-1]]), lens) + np.arange(tot)
        keys = np.repeat(a_rows * n, lens) + Vc.indices[pos]
        pv = np.minimum(np.repeat(a_vals, lens), Vc.data[pos])
        del pos
        np.add.at(acc_s, keys, pv)
        acc_hit[keys] = True
        del keys, pv
        ukeys = np.flatnonzero(acc_hit[: (e - s) * n])
        s32 = acc_s[ukeys]
        acc_s[ukeys] = 0
        acc_hit[ukeys] = False
        ov_rows = ukeys // n
        ov_cols = ukeys - ov_rows * n
        del ukeys
        # restrict to output columns, drop self
        keep = ov_cols >= off
        if ref_includes_query:
            keep &= ov_cols != (ov_rows + s)
        ov_rows, ov_cols, s32 = ov_rows[keep], ov_cols[keep], s32[keep]
        del keep

        jac = np.float32(1) - s32 / (np.float32(2) - s32)
        pending = np.arange(e - s)
        mm = first_mm
        while pending.shape[0]:
            # the first round re-uses the faiss candidates of step 1 when they cover it
            reuse = cand_all if (ref_includes_query and mm <= cand_all.shape[1]) else None
            done = _rank_rows(
                pending,
                s,
                mm,
                kk,
                n,
                off,
                ref_includes_query,
                lam,
                one_minus,
                lam32,
                x64,
                x32,
                row_max,
                gallery,
                ov_rows,
                ov_cols,
                jac,
                out_d,
                out_i,
                reuse,
            )
            pending = pending[~done]
            mm = min(n - off, 4 * mm)
    return out_d, (out_i if perm is None else perm[out_i])
