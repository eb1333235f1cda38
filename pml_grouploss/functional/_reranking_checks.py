"""Argument checks, numpy conversion, exact rescaling and item-set assembly of the
k-reciprocal re-ranking (shared by the dense :mod:`~pml_grouploss.functional.reranking` and the
sparse :mod:`~pml_grouploss.functional.reranking_sparse` paths). The re-ranking is
invariant to the scale of the distances (convention 2 divides every squared distance by a row
maximum, Jaccard distances are scale-free), so distances or embeddings are multiplied by a power
of two that brings their largest magnitude into ``[0.5, 1)``: exact in binary floating point
(no rounding, the squared distances are scaled by a power of four), hence bit-identical results
for inputs that did not overflow before, and finite ones for inputs of magnitude ``1e19`` whose
squares overflowed float32.
"""

from __future__ import annotations

import math
from typing import Optional, Tuple, Union

import numpy as np
import torch

from .._validation import check_int, check_number

ArrayLike = Union[np.ndarray, torch.Tensor]

__all__ = [
    "ArrayLike",
    "check_re_ranking_args",
    "to_numpy",
    "power_of_two_scale",
    "rescale",
    "check_distances",
    "check_embeddings",
    "assemble_set",
]


def check_re_ranking_args(
    k1: object, k2: object, lambda_value: object, query_block: object = 512
) -> Tuple[int, int, float, int]:
    """``(k1, k2, lambda_value, query_block)`` checked (``k1, k2, query_block >= 1`` ints,
    ``lambda_value`` in ``[0, 1]``) and converted; a clear error otherwise."""
    return (
        check_int("k1", k1, minimum=1),
        check_int("k2", k2, minimum=1),
        check_number(
            "lambda_value", lambda_value, minimum=0.0, maximum=1.0,
            hint="it is the weight of the original distance (Zhong eq. 12)",
        ),
        check_int("query_block", query_block, minimum=1),
    )


def to_numpy(x: ArrayLike, name: str) -> np.ndarray:
    """A numpy view of a numpy array or (detached, CPU) torch tensor; bfloat16, which numpy
    lacks, as float32 (exact). Complex input is rejected (the distances are real)."""
    if isinstance(x, torch.Tensor):
        if x.is_complex():
            raise TypeError(f"{name} must be real, got dtype {x.dtype}")
        x = x.detach().cpu()
        return (x.float() if x.dtype == torch.bfloat16 else x).numpy()
    if isinstance(x, np.ndarray):
        if np.iscomplexobj(x):
            raise TypeError(f"{name} must be real, got dtype {x.dtype}")
        return x
    raise TypeError(f"{name} must be a numpy array or a torch tensor, got {type(x).__name__}")


def power_of_two_scale(max_abs: float) -> float:
    """``2**-e`` with ``max_abs = m * 2**e``, ``0.5 <= m < 1``; 1 for 0 or non-finite input.

    Multiplying by it is exact and maps ``max_abs`` into ``[0.5, 1)``.
    """
    max_abs = float(max_abs)
    if not (max_abs > 0.0) or not math.isfinite(max_abs):
        return 1.0
    return math.ldexp(1.0, -math.frexp(max_abs)[1])


def rescale(*arrays: np.ndarray) -> Tuple[np.ndarray, ...]:
    """The arrays times one common power of two (see :func:`power_of_two_scale`)."""
    max_abs = max((float(np.max(np.abs(a))) for a in arrays if a.size), default=0.0)
    scale = power_of_two_scale(max_abs)
    if scale == 1.0:
        return arrays
    return tuple(a * a.dtype.type(scale) for a in arrays)


def check_distances(name: str, d: np.ndarray) -> np.ndarray:
    """``d`` finite and non-negative, as float32 or wider (float16 squares overflow at
    ``256``)."""
    if not np.issubdtype(d.dtype, np.floating) and not np.issubdtype(d.dtype, np.integer):
        raise TypeError(f"{name} must hold real distances, got dtype {d.dtype}")
    if not np.all(np.isfinite(d)):
        raise ValueError(
            f"{name} contain NaN or inf; re-ranking needs finite distances (one NaN spreads "
            "through the row maxima and the Jaccard sums to most outputs)"
        )
    if d.size and d.min() < 0:
        raise ValueError(
            f"{name} must be non-negative (plain Euclidean distances), got a minimum of "
            f"{d.min()}; the re-ranking squares them, so a sign would be lost silently"
        )
    return d.astype(np.promote_types(d.dtype, np.float32), copy=False)


def check_embeddings(query: np.ndarray, reference: np.ndarray, k: Optional[int]) -> None:
    """Shapes, ``k`` and finiteness of the embeddings of the k-NN entry points."""
    if query.ndim != 2 or reference.ndim != 2:
        raise ValueError(
            f"query and reference must be 2-D (n, dim), got {query.shape} and {reference.shape}"
        )
    if query.shape[1] != reference.shape[1]:
        raise ValueError(
            "query and reference must have the same dim, got "
            f"{query.shape[1]} and {reference.shape[1]}"
        )
    if k is not None:
        check_int("k", k, minimum=1)  # None: a full ranking
    if not (np.all(np.isfinite(query)) and np.all(np.isfinite(reference))):
        raise ValueError("query and reference must be finite (found NaN or inf)")


def _query_positions(query: np.ndarray, reference: np.ndarray) -> np.ndarray:
    """Distinct rows of ``reference`` equal to the rows of ``query`` (in order of occurrence)."""
    nq = query.shape[0]
    both = np.concatenate([query, reference]).astype(np.float64, copy=False)
    _, ids = np.unique(both, axis=0, return_inverse=True)
    ids = ids.reshape(-1)
    q_ids, r_ids = ids[:nq], ids[nq:]
    r_order = np.argsort(r_ids, kind="stable")  # reference rows grouped by value, by index
    first = np.searchsorted(r_ids[r_order], q_ids)
    count = np.searchsorted(r_ids[r_order], q_ids, side="right") - first
    q_order = np.argsort(q_ids, kind="stable")
    occurrence = np.empty(nq, dtype=np.int64)  # how many earlier query rows had this value
    sorted_q = q_ids[q_order]
    occurrence[q_order] = np.arange(nq) - np.searchsorted(sorted_q, sorted_q)
    bad = np.flatnonzero(occurrence >= count)
    if bad.size:
        raise ValueError(
            "ref_includes_query=True requires every query row to be a distinct row of "
            f"reference; query row {int(bad[0])} is not (or is repeated more often than in "
            "reference). Pass ref_includes_query=False for a separate query set"
        )
    return r_order[first + occurrence]


def assemble_set(
    query: np.ndarray, reference: np.ndarray, ref_includes_query: bool
) -> Tuple[np.ndarray, int, int, Optional[np.ndarray]]:
    """The item set of the re-ranking graph, the offset of the reference inside it, and the
    order of the reference rows in it.

    Returns:
        ``(X, nq, ref_offset, perm)``. Separate sets: ``X = concat(query, reference)``,
        ``ref_offset = nq``, ``perm = None``. ``ref_includes_query``: ``X`` is the reference
        with the query rows first (``X = reference[perm]``, ``perm = None`` when
        ``query == reference[:nq]`` already), ``ref_offset = 0``; indices into ``X`` map back to
        ``reference`` through ``perm``. A query row that is not a row of ``reference`` raises a
        ``ValueError``.
    """
    nq = query.shape[0]
    if not ref_includes_query:
        return np.concatenate([query, reference], axis=0), nq, nq, None
    if reference.shape[0] < nq:
        raise ValueError(
            "ref_includes_query=True requires query to be rows of reference, but reference "
            f"has only {reference.shape[0]} rows for {nq} queries"
        )
    if np.array_equal(reference[:nq], query):
        return reference, nq, 0, None
    pos = _query_positions(query, reference)
    rest = np.ones(reference.shape[0], dtype=bool)
    rest[pos] = False
    perm = np.concatenate([pos, np.flatnonzero(rest)]).astype(np.int64)
    return reference[perm], nq, 0, perm
