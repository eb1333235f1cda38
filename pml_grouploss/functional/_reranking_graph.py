"""Steps 1-3 of the sparse k-reciprocal re-ranking: candidates, k-reciprocal sets, ``V``.

numpy/scipy/faiss on CPU (the re-ranking is a post-processing of stored embeddings, not part
of any autograd graph). Every function returns its result; nothing here builds an ``N x N``
array. Conventions (numbers) are those of :mod:`pml_grouploss.functional.reranking`.
"""

from __future__ import annotations

from typing import Tuple

import numpy as np
import scipy.sparse as sp

from .reranking import around_half

CANDIDATE_MARGIN = 8  # extra exact-checked neighbours beyond what a ranking needs


def require_faiss():
    """The ``faiss`` module, or an error naming the install command."""
    try:
        import faiss  # noqa: F401
    except ModuleNotFoundError as e:  # pragma: no cover - faiss is a test dependency
        raise ModuleNotFoundError(
            "sparse re-ranking needs faiss: pip install faiss-cpu "
            "(or pml_grouploss[with-hooks-cpu])"
        ) from e
    return faiss


def pair_sqdist(x64: np.ndarray, rows: np.ndarray, cols: np.ndarray) -> np.ndarray:
    """Exact float64 squared Euclidean distance of the pairs ``(rows[t], cols[t])``. ``(T,)``."""
    out = np.empty(rows.shape[0], dtype=np.float64)
    block = max(1024, (1 << 20) // max(1, x64.shape[1]))
    for s in range(0, rows.shape[0], block):
        e = min(s + block, rows.shape[0])
        diff = x64[rows[s:e]] - x64[cols[s:e]]
        out[s:e] = np.einsum("ij,ij->i", diff, diff)
    return out


def faiss_search(index, queries32: np.ndarray, m: int, block: int = 8192):
    """``index.search`` in blocks of queries (bounded temporary memory)."""
    ds, ids = [], []
    for s in range(0, queries32.shape[0], block):
        d, i = index.search(queries32[s : s + block], m)
        ds.append(d)
        ids.append(i)
    return np.concatenate(ds), np.concatenate(ids)


def row_maxima(x64: np.ndarray, x32: np.ndarray, faiss, top: int = 4) -> np.ndarray:
    """Convention 2's normaliser ``max_j |x_i - x_j|^2`` for every item, float32. ``(N,)``.

    A blocked faiss inner-product pass finds the ``top`` farthest candidates
    (``|x_i - y|^2 = |x_i|^2 + (|y|^2 - 2 x_i.y)``, a max-inner-product search with
    ``[-2 x_i, 1] . [y, |y|^2]``); their distances are then recomputed exactly in float64.
    A maximum of 0 (all items identical) is replaced by 1 (left unscaled).
    """
    n, dim = x32.shape
    sqn = np.einsum("ij,ij->i", x64, x64)
    base = np.hstack([x32, sqn.astype(np.float32)[:, None]])
    qry = np.hstack([-2.0 * x32, np.ones((n, 1), dtype=np.float32)])
    index = faiss.IndexFlatIP(dim + 1)
    index.add(np.ascontiguousarray(base, dtype=np.float32))
    t = min(top, n)
    _, ids = faiss_search(index, np.ascontiguousarray(qry, dtype=np.float32), t)
    exact = pair_sqdist(x64, np.repeat(np.arange(n), t), ids.reshape(-1)).reshape(n, t)
    row_max = exact.max(axis=1).astype(np.float32)
    return np.where(row_max > 0, row_max, np.float32(1.0)).astype(np.float32)


def exact_sorted_candidates(
    x64: np.ndarray, row_ids: np.ndarray, cand: np.ndarray, row_max32: np.ndarray
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
    sq = pair_sqdist(x64, np.repeat(row_ids, m), safe.reshape(-1)).reshape(b, m)
    d = sq.astype(np.float32) / row_max32[row_ids][:, None]
    d = np.where(valid, d, np.float32(np.inf))
    big = np.iinfo(np.int64).max
    order = np.lexsort((np.where(valid, safe, big), d), axis=1)
    return np.take_along_axis(safe, order, 1), np.take_along_axis(d, order, 1)


def _reciprocal_sets(top: np.ndarray, k: int, block_elems: int = 1 << 22) -> sp.csr_matrix:
    """Convention 4, ``R(i, k)`` for every item as a binary ``(N, N)`` CSR (int32 ones).

    Args:
        top: ``(N, >= k+1)`` initial ranks.
    """
    n = top.shape[0]
    fwd = top[:, : k + 1]
    mask = np.empty(fwd.shape, dtype=bool)
    step = max(1, block_elems // max(1, fwd.shape[1] ** 2))
    for s in range(0, n, step):
        e = min(s + step, n)
        back = fwd[fwd[s:e]]  # (b, k+1, k+1)
        mask[s:e] = np.any(back == np.arange(s, e)[:, None, None], axis=2)
    rows = np.repeat(np.arange(n), fwd.shape[1])[mask.reshape(-1)]
    ones = np.ones(rows.shape[0], dtype=np.int32)
    return sp.csr_matrix((ones, (rows, fwd[mask])), shape=(n, n))


def expanded_sets(top: np.ndarray, k1: int) -> sp.csr_matrix:
    """Conventions 4-5 for every item: the expanded k-reciprocal sets ``S`` as a binary CSR.

    ``R(c, h)`` (``h = around_half(k1)``) is added to ``S_i = R(i, k1)`` for
    ``c in R(i, k1)`` when ``|R(c, h) ∩ R(i, k1)| > 2/3 |R(c, h)|``. The intersection sizes
    of all the ``(i, c)`` pairs are one sparse product ``R1 @ Rh^T`` (C speed,
    ``O(N k1 h)``), so are the unions (``ok @ Rh``).

    Returns:
        ``(N, N)`` CSR, canonical (every row's support sorted ascending), int32 ones.
    """
    n = top.shape[0]
    r1 = _reciprocal_sets(top, k1)
    rh = _reciprocal_sets(top, around_half(k1))
    inter = (r1 @ rh.T.tocsr()).tocsr()
    pair_i = np.repeat(np.arange(n), np.diff(r1.indptr))
    pair_c = r1.indices
    common = np.asarray(inter[pair_i, pair_c]).reshape(-1)
    sizes_h = np.diff(rh.indptr)
    ok = common > 2.0 / 3 * sizes_h[pair_c]
    ok_matrix = sp.csr_matrix(
        (np.ones(int(ok.sum()), dtype=np.int32), (pair_i[ok], pair_c[ok])), shape=(n, n)
    )
    support = (r1 + ok_matrix @ rh).tocsr()
    support.sort_indices()
    support.data = np.ones_like(support.data)
    return support


def kreciprocal_weights(
    support: sp.csr_matrix, x64: np.ndarray, row_max: np.ndarray
) -> sp.csr_matrix:
    """Convention 6 (Zhong eq. 7): ``V[i, S_i] = exp(-d[i, S_i]) / sum(exp(-d[i, S_i]))``.

    float32 ``exp`` and numpy's own ``np.sum`` of each row's contiguous weights (its pairwise
    summation order), as the reference, so ``V`` is bit-identical to the dense path's.
    """
    n = support.shape[0]
    lens = np.diff(support.indptr)
    rows = np.repeat(np.arange(n, dtype=np.int64), lens)
    d = pair_sqdist(x64, rows, support.indices.astype(np.int64)).astype(np.float32)
    w = np.exp(-(d / row_max[rows]))
    row_sum = np.array(
        [np.sum(w[a:b]) for a, b in zip(support.indptr[:-1], support.indptr[1:])],
        dtype=np.float32,
    )
    w = w / np.repeat(row_sum, lens)
    return sp.csr_matrix((w, support.indices, support.indptr), shape=(n, n))


def query_expansion(V: sp.csr_matrix, top: np.ndarray, k2: int) -> sp.csr_matrix:
    """Convention 7 (Zhong eq. 11): ``V[i] = mean(V[top[i, :k2]])`` when ``k2 != 1``.

    As the reference's ``np.mean(V[initial_rank[i, :k2]], axis=0)``: rows added one by one in
    rank order in float32 (sparse + sparse adds in the data dtype), then divided by the count.
    Returns a canonical CSR (sorted indices).
    """
    if k2 != 1:
        kq = min(k2, top.shape[1])
        acc = V[top[:, 0]]
        for t in range(1, kq):
            acc = acc + V[top[:, t]]
        acc.sort_indices()
        acc.data = (acc.data.astype(np.float64) / kq).astype(np.float32)
        V = acc
    V.sort_indices()
    return V
