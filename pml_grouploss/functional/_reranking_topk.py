"""Steps 4-5 of the sparse k-reciprocal re-ranking: Jaccard sums and the exact top-``k``.

For one block of queries: the Jaccard sums through an inverted index (step 4, float32 in the
reference's order), then the exact top-``k`` of the final distances (step 5) from the items that
share a ``V`` column with the query plus the nearest others (their Jaccard distance is 1, so
their final distance is monotone in the original one). numpy/scipy/faiss on CPU; every function
returns its result. Conventions (numbers) are those of :mod:`pml_grouploss.functional.reranking`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Iterator, Optional, Tuple

import numpy as np
import scipy.sparse as sp

from ._reranking_graph import CANDIDATE_MARGIN, exact_sorted_candidates, faiss_search, pair_sqdist

JACCARD_ACC_ELEMS = 1 << 25  # float32 Jaccard accumulator of a query block: <= 128 MiB
TRIPLE_CHUNK = 1 << 18  # (query, column, item) terms generated at once: stays in cache
OVERLAP_CHUNK = 1 << 20  # overlapping pairs ranked at once (bounds step 5's temporaries)


@dataclass(frozen=True)
class RankContext:
    """What the top-``k`` selection of every query block reads (built once per call).

    Attributes:
        x64: ``(N, dim)`` rescaled float64 items of the graph; ``x32`` its float32 copy.
        row_max: ``(N,)`` float32 normalisers of convention 2.
        gallery: faiss index over the output items ``x32[off:]``.
        off: index of the first output item in the graph (``nq`` for separate sets, else 0).
        kk: neighbours to return per query.
        ref_includes_query: drop each query's own entry.
        lam: ``lambda_value``.
        first_mm: original-distance neighbours examined in the first round.
        cand_all: ``(N, M)`` faiss candidates of step 1, re-used when they cover a round.
    """

    x64: np.ndarray
    x32: np.ndarray
    row_max: np.ndarray
    gallery: Any
    off: int
    kk: int
    ref_includes_query: bool
    lam: float
    first_mm: int
    cand_all: Optional[np.ndarray]

    @property
    def n(self) -> int:
        return self.x64.shape[0]


@dataclass(frozen=True)
class Overlaps:
    """Pairs (query of the block, item) that share a ``V`` column, with their Jaccard
    distance ``1 - s / (2 - s)`` (float32); ``rows`` are block-local query indices."""

    rows: np.ndarray
    cols: np.ndarray
    jac: np.ndarray


def _chunks(lens: np.ndarray, budget: int) -> Iterator[Tuple[int, int]]:
    """Consecutive ``[lo, hi)`` ranges of entries whose ``lens`` sum to at most ``budget``."""
    cum = np.cumsum(lens)
    lo, done = 0, 0
    while lo < lens.shape[0]:
        hi = max(lo + 1, int(np.searchsorted(cum, done + budget, side="right")))
        yield lo, hi
        done = int(cum[hi - 1])
        lo = hi


def _triples(
    a_keys: np.ndarray, a_vals: np.ndarray, starts: np.ndarray, lens: np.ndarray, Vc: sp.csc_matrix
) -> Tuple[np.ndarray, np.ndarray]:
    """Accumulator keys and ``min`` terms of the entries ``(row, column)`` of a query chunk:
    entry ``t`` meets the ``lens[t]`` items of its column (CSC slice at ``starts[t]``).
    Index arithmetic in the dtype of ``starts`` (int32 when it fits: half the memory traffic)."""
    it = starts.dtype
    seg = np.cumsum(lens, dtype=it) - lens
    step = np.ones(int(lens.sum()), dtype=it)
    step[seg] = starts - np.concatenate((np.zeros(1, it), starts[:-1] + lens[:-1] - 1))
    pos = np.cumsum(step, dtype=it)  # the concatenated ranges [starts[t], starts[t] + lens[t])
    keys = np.repeat(a_keys, lens) + Vc.indices[pos]
    return keys, np.minimum(np.repeat(a_vals, lens), Vc.data[pos])


def _column_terms(acc: np.ndarray, Vc: sp.csc_matrix, s: int, e: int, cols: np.ndarray) -> None:
    """Add the Jaccard terms of the queries ``s..e-1`` to ``acc``, one ``V`` column at a time
    (ascending): ``acc[q, j] += min(V_qc, V_jc)`` as an outer product per column. No index
    gathers, one numpy call per column: the fast order when columns hold many items."""
    n = Vc.shape[0]
    for c in cols:
        lo, hi = Vc.indptr[c], Vc.indptr[c + 1]
        items, vals = Vc.indices[lo:hi], Vc.data[lo:hi]
        a, b = np.searchsorted(items, (s, e))
        keys = ((items[a:b] - s) * n)[:, None] + items[None, :]
        np.add.at(acc, keys.reshape(-1), np.minimum(vals[a:b, None], vals[None, :]).reshape(-1))


def _entry_terms(acc: np.ndarray, sub: sp.csr_matrix, Vc: sp.csc_matrix, it) -> None:
    """Add the Jaccard terms of the block rows ``sub`` to ``acc`` in the reference's order
    (query row, then ``V`` column ascending, then item), in chunks of ``TRIPLE_CHUNK`` terms:
    the fast order when columns hold few items."""
    n = Vc.shape[0]
    a_keys = np.repeat(np.arange(sub.shape[0], dtype=it) * it(n), np.diff(sub.indptr))
    lens = np.diff(Vc.indptr)[sub.indices].astype(it)  # >= 1: the row itself
    starts = Vc.indptr[sub.indices].astype(it)
    for lo, hi in _chunks(lens, TRIPLE_CHUNK):
        keys, vals = _triples(a_keys[lo:hi], sub.data[lo:hi], starts[lo:hi], lens[lo:hi], Vc)
        np.add.at(acc, keys, vals)


def block_overlaps(
    V: sp.csr_matrix, Vc: sp.csc_matrix, s: int, e: int, off: int, drop_self: bool
) -> Overlaps:
    """Step 4 (Zhong eq. 10) for the queries ``s..e-1``: ``s_ij = sum_c min(V_ic, V_jc)``.

    As the reference's ``temp_min``: for every pair the terms are added one by one in float32
    in ascending ``V``-column order (``np.add.at`` is sequential), so the sums are
    bit-identical to the dense path's. Accumulated in a ``(e - s) x N`` float32 array, column
    by column when the block's columns hold many items (>= 2048 terms per column, e.g.
    k1=50, k2=20), else entry by entry. Every term is positive, so a non-zero sum is exactly
    an overlapping pair.
    """
    n = V.shape[0]
    sub = V[s:e]
    it = np.int32 if max(Vc.nnz, (e - s) * n) < 2**31 - 1 else np.int64
    acc = np.zeros((e - s) * n, dtype=np.float32)
    cols = np.unique(sub.indices)
    terms = int(np.diff(Vc.indptr)[sub.indices].sum())
    if terms >= 2048 * cols.shape[0]:
        _column_terms(acc, Vc, s, e, cols)
    else:
        _entry_terms(acc, sub, Vc, it)
    ukeys = np.flatnonzero(acc)  # int64
    rows, cols = ukeys // n, ukeys % n
    keep = cols >= off
    if drop_self:
        keep &= cols != rows + s
    s32 = acc[ukeys[keep]]
    jac = np.float32(1) - s32 / (np.float32(2) - s32)
    return Overlaps(rows[keep], cols[keep], jac)


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


@dataclass(frozen=True)
class _Prefix:
    """The first original-distance neighbours of a round's queries."""

    rows: np.ndarray  # round slot of each entry
    cols: np.ndarray  # item id
    d: np.ndarray  # float32 normalised original distance
    bound: np.ndarray  # (nb,) every item outside the prefix has d >= bound
    covers_all: bool


def _prefix(ctx: RankContext, qids: np.ndarray, mm: int, n_overlaps: np.ndarray) -> _Prefix:
    """The ``mm`` nearest output items of each query by the original distance, exact-sorted.

    With ``lam == 0`` the final distance is the Jaccard distance alone: every non-overlapping
    item ties at 1 and the smallest indices win, so the prefix is the first indices.
    """
    nb, n, off = qids.shape[0], ctx.n, ctx.off
    covers_all = mm >= n - off
    if ctx.lam == 0.0:
        width = int(min(n - off, ctx.kk + 1 + n_overlaps.max(initial=0)))
        ids = np.broadcast_to(np.arange(off, off + width, dtype=np.int64), (nb, width))
        d = np.zeros((nb, width), dtype=np.float32)
        bound, covers_all = np.full(nb, np.inf), True
    else:
        reliable = mm if covers_all else mm - CANDIDATE_MARGIN
        if ctx.cand_all is not None and mm <= ctx.cand_all.shape[1]:
            cand = ctx.cand_all[qids, :mm]  # step 1's candidates cover this round
        else:
            _, cand = faiss_search(ctx.gallery, ctx.x32[qids], mm)
        cand = np.where(cand >= 0, cand + off, -1)
        ids, d = exact_sorted_candidates(ctx.x64, qids, cand, ctx.row_max)
        bound = np.full(nb, np.inf) if covers_all else d[:, reliable].astype(np.float64)
        ids, d = ids[:, :reliable], d[:, :reliable]
    rows = np.repeat(np.arange(nb), ids.shape[1])
    cols, dd = ids.reshape(-1).astype(np.int64), d.reshape(-1)
    ok = np.isfinite(dd)
    if ctx.ref_includes_query:
        ok &= cols != qids[rows]
    return _Prefix(rows[ok], cols[ok], dd[ok], bound, covers_all)


def _final(ctx: RankContext, qids: np.ndarray, rows, cols, jac) -> np.ndarray:
    """Convention 9 in float32: ``jac * (1 - lam) + d * lam`` with the exact ``d``."""
    one_minus, lam32 = np.float32(1 - ctx.lam), np.float32(ctx.lam)
    if ctx.lam == 0.0:
        return jac * one_minus
    d = pair_sqdist(ctx.x64, qids[rows], cols).astype(np.float32) / ctx.row_max[qids[rows]]
    return jac * one_minus + d * lam32


def _candidates(ctx: RankContext, qids: np.ndarray, p: _Prefix, o: Overlaps):
    """Entries ``(row, item, final)`` that can reach a round's top-``kk``: the non-overlapping
    prefix items (Jaccard distance 1) and the overlapping items not ruled out by a bound."""
    nb, n = qids.shape[0], ctx.n
    one_minus, lam32 = np.float32(1 - ctx.lam), np.float32(ctx.lam)
    p_keys, o_keys = p.rows * n + p.cols, o.rows * n + o.cols
    p_is_ov, o_in_p = np.isin(p_keys, o_keys), np.isin(o_keys, p_keys)
    n_r, n_c = p.rows[~p_is_ov], p.cols[~p_is_ov]
    n_f = one_minus + p.d[~p_is_ov] * lam32
    # an upper bound T on each row's kk-th final distance from the items with known distance
    known_f = _final(ctx, qids, o.rows[o_in_p], o.cols[o_in_p], o.jac[o_in_p])
    known_r = np.concatenate([n_r, o.rows[o_in_p]])
    T = _rows_kth(known_r, np.concatenate([n_f, known_f]).astype(np.float64), nb, ctx.kk)
    # overlapping items outside the prefix have d >= bound: prune them by a lower bound
    lb_d = np.where(o_in_p, 0.0, p.bound[o.rows]).astype(np.float32)
    lb = o.jac * one_minus + (lb_d * lam32 if ctx.lam != 0.0 else np.float32(0))
    need = o_in_p | (lb.astype(np.float64) <= T[o.rows])
    c_f = _final(ctx, qids, o.rows[need], o.cols[need], o.jac[need])
    return (
        np.concatenate([n_r, o.rows[need]]),
        np.concatenate([n_c, o.cols[need]]),
        np.concatenate([n_f, c_f]).astype(np.float32),
    )


def _round(ctx: RankContext, ov: Overlaps, s: int, rows_loc: np.ndarray, mm: int):
    """One round of step 5 for the block queries ``s + rows_loc``.

    Returns:
        ``(done, slot, rank, item, final)``: the mask of the rows whose top-``kk`` is proven
        complete, and their entries (round slot, rank, graph item id, float32 final).
    """
    nb, kk = rows_loc.shape[0], ctx.kk
    slot = np.full(int(rows_loc.max()) + 1, -1, dtype=np.int64)
    slot[rows_loc] = np.arange(nb)
    sel = slot[ov.rows] >= 0 if ov.rows.shape[0] else np.zeros(0, bool)
    o = Overlaps(slot[ov.rows[sel]], ov.cols[sel], ov.jac[sel])
    qids = s + rows_loc
    p = _prefix(ctx, qids, mm, np.bincount(o.rows, minlength=nb))
    ent_r, ent_c, ent_f = _candidates(ctx, qids, p, o)
    order = np.lexsort((ent_c, ent_f, ent_r))  # by row, final distance, then index
    ent_r, ent_c, ent_f = ent_r[order], ent_c[order], ent_f[order]
    rank = np.arange(ent_r.shape[0]) - np.searchsorted(ent_r, np.arange(nb))[ent_r]
    kth = np.full(nb, np.inf, dtype=np.float32)
    kth[ent_r[rank == kk - 1]] = ent_f[rank == kk - 1]
    # unseen non-overlapping items have final >= (1 - lam) + lam * bound
    unseen_lb = np.full(nb, np.inf, dtype=np.float32)
    fin = np.isfinite(p.bound)
    unseen_lb[fin] = np.float32(1 - ctx.lam) + p.bound[fin].astype(np.float32) * np.float32(ctx.lam)
    counts = np.bincount(ent_r, minlength=nb)
    done = (counts >= kk) & ((kth < unseen_lb) | p.covers_all)
    take = done[ent_r] & (rank < kk)
    return done, ent_r[take], rank[take], ent_c[take], ent_f[take]


def rank_block(ctx: RankContext, ov: Overlaps, s: int, nb: int) -> Tuple[np.ndarray, np.ndarray]:
    """Exact top-``kk`` of the block queries ``s..s+nb-1``: ``(nb, kk)`` float32 final
    distances ascending and int64 indices of the output items (ties by the smaller index).

    Ranked in runs of consecutive queries holding at most ``OVERLAP_CHUNK`` overlapping pairs
    (bounded temporaries when nearly every pair overlaps, e.g. k1=50, k2=20 at N=10k).
    """
    out_d = np.empty((nb, ctx.kk), dtype=np.float32)
    out_i = np.empty((nb, ctx.kk), dtype=np.int64)
    bounds = np.searchsorted(ov.rows, np.arange(nb + 1))  # rows are sorted (flatnonzero order)
    for lo, hi in _chunks(np.maximum(np.diff(bounds), 1), OVERLAP_CHUNK):
        a, b = bounds[lo], bounds[hi]
        part = Overlaps(ov.rows[a:b] - lo, ov.cols[a:b], ov.jac[a:b])
        out_d[lo:hi], out_i[lo:hi] = _rank_run(ctx, part, s + lo, hi - lo)
    return out_d, out_i


def _rank_run(ctx: RankContext, ov: Overlaps, s: int, nb: int) -> Tuple[np.ndarray, np.ndarray]:
    """:func:`rank_block` for one run of queries. Queries whose top-``kk`` is not proven
    complete are searched again with 4x more original-distance neighbours."""
    out_d = np.empty((nb, ctx.kk), dtype=np.float32)
    out_i = np.empty((nb, ctx.kk), dtype=np.int64)
    pending, mm = np.arange(nb), ctx.first_mm
    while pending.shape[0]:
        done, slot, rank, item, final = _round(ctx, ov, s, pending, mm)
        out_i[pending[slot], rank] = item - ctx.off
        out_d[pending[slot], rank] = final
        pending = pending[~done]
        mm = min(ctx.n - ctx.off, 4 * mm)
    return out_d, out_i
