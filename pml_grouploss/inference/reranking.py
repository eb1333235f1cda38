"""k-reciprocal re-ranking for PML (Zhong et al. 2017; Group Loss++ §4.4).

:class:`KReciprocalReRanker`: a ``knn_func`` for ``AccuracyCalculator`` and ``InferenceModel``
built on the sparse exact path (no ``N x N`` matrix). The dense reference function on distance
matrices is :func:`pml_grouploss.functional.re_ranking`.
"""

from __future__ import annotations

from typing import Optional, Tuple

import numpy as np
import torch

from .._validation import check_bool, check_finite, check_rows, check_same_width
from ..functional._reranking_checks import rescale
from ..functional.reranking_sparse import ReRankingParams, sparse_knn_checked

__all__ = ["KReciprocalReRanker"]


def _numpy(x) -> np.ndarray:
    if isinstance(x, torch.Tensor):
        x = x.detach().cpu()
        return x.to(torch.promote_types(x.dtype, torch.float32)).numpy()  # bfloat16: no numpy
    return np.asarray(x)


def _as_float32(query, reference) -> Tuple[np.ndarray, np.ndarray]:
    """Query and reference as float32 numpy arrays, rescaled by one common power of two first
    (exact; the ranking is scale invariant) so that float64 input of any magnitude fits."""
    q, r = _numpy(query), _numpy(reference)
    if np.issubdtype(q.dtype, np.floating) and np.issubdtype(r.dtype, np.floating):
        if np.all(np.isfinite(q)) and np.all(np.isfinite(r)):  # else the k-NN raises
            q, r = rescale(q, r)
    return q.astype(np.float32, copy=False), r.astype(np.float32, copy=False)


class KReciprocalReRanker:
    """``knn_func`` returning the top-``k`` of the k-reciprocal re-ranked distances.

    ``knn_func(query, k, reference, ref_includes_query) -> (distances, indices)`` as PML's
    ``FaissKNN``: ``(nq, k)`` float32 distances ascending and int64 indices into ``reference``,
    on the device of ``query``. The ranking is that of the dense reference function
    (:func:`pml_grouploss.functional.re_ranking`, Zhong eq. 12) on plain Euclidean distances,
    computed exactly without any ``N x N`` matrix
    (:func:`~pml_grouploss.functional.reranking_sparse.sparse_re_ranking_knn`).

    Semantics of the re-ranking graph:

    - ``ref_includes_query=False`` (separate query and gallery sets, the re-identification
      protocol, and ``InferenceModel``): the graph holds query and reference items, exactly as
      ``re_ranking(cdist(q, g), cdist(q, q), cdist(g, g))``; neighbours come from ``reference``.
    - ``ref_includes_query=True`` (the query rows are rows of ``reference``, usually
      ``query == reference[:nq]``: the deep-metric-learning protocol used by
      ``AccuracyCalculator`` when query and reference are one set): the graph holds every item
      ONCE and each query's own index is excluded from its neighbours (``k`` excludes the self
      match, like ``FaissKNN``). Query rows elsewhere in ``reference`` (e.g.
      ``reference[10:15]``) are found by exact row equality; a query row that is not a row of
      ``reference`` raises a ``ValueError``. Passing the same set twice to the dense function
      would instead duplicate every item.

    The ranking is invariant to the scale of the embeddings, and so is the computation:
    embeddings are multiplied by a power of two (exact) before the float32 search, so
    magnitudes such as ``1e19`` (squares beyond float32) or ``1e-25`` give the same neighbours.
    NaN/inf embeddings raise a ``ValueError``.

    Re-ranking is transductive: the ranking of a query depends on the whole set, so calling it
    on a subset gives different neighbours than on the full set.

    Args:
        k1: k-reciprocal neighbourhood size (default 20, Zhong et al.; GL++ Table 7: 50 for
            CUB/Cars196/SOP, 4 for In-Shop).
        k2: local query expansion size (default 6; Table 7: 20, or 2 for In-Shop).
        lambda_value: weight of the original distance in [0, 1] (default 0.3; Table 7: 0.85
            CUB, 0.9 Cars196, 0.94 SOP, 0.7 In-Shop).
        query_block: queries per Jaccard block (memory/speed trade-off).

    For ``InferenceModel``: ``train(embeddings)`` / ``add(embeddings)`` store the reference set
    and ``knn_func(query, k)`` searches it; ``save``/``load`` persist it with ``torch.save``.
    """

    def __init__(
        self, k1: int = 20, k2: int = 6, lambda_value: float = 0.3, query_block: int = 512
    ):
        p = ReRankingParams.checked(k1, k2, lambda_value, query_block)  # once, here
        self.k1, self.k2, self.lambda_value, self.query_block = (
            p.k1, p.k2, p.lambda_value, p.query_block
        )
        self.reference: Optional[torch.Tensor] = None

    def __call__(
        self,
        query: torch.Tensor,
        k: Optional[int],
        reference: Optional[torch.Tensor] = None,
        ref_includes_query: bool = False,
    ) -> Tuple[torch.Tensor, torch.Tensor]:
        if reference is None:
            if self.reference is None:
                raise ValueError(
                    "no reference set: pass reference=..., "
                    "or call train(embeddings) / add(...) first"
                )
            reference = self.reference
        device = query.device if isinstance(query, torch.Tensor) else torch.device("cpu")
        q, r = _as_float32(query, reference)
        params = ReRankingParams(self.k1, self.k2, self.lambda_value, self.query_block)
        ref_includes_query = check_bool("ref_includes_query", ref_includes_query)
        d, i = sparse_knn_checked(q, k, r, ref_includes_query, params)
        return torch.from_numpy(d).to(device), torch.from_numpy(i).to(device)

    # InferenceModel interface -----------------------------------------------------------
    def train(self, embeddings: torch.Tensor) -> None:
        self.reference = None
        self.add(embeddings)

    def add(self, embeddings: torch.Tensor) -> None:
        """Append ``embeddings`` ``(n, d)`` (a tensor or NumPy array) to the reference set;
        named errors for another ``d``, non-floating or non-finite values, here rather than at
        the next query."""
        if not isinstance(embeddings, (torch.Tensor, np.ndarray)):
            raise TypeError(
                f"embeddings must be a torch.Tensor or numpy array (n, d), got "
                f"{type(embeddings).__name__}; stack a list with torch.cat"
            )
        e = torch.as_tensor(embeddings).detach().cpu()
        check_rows("embeddings", e)
        check_finite("embeddings", e, "the reference set needs finite embeddings")
        if self.reference is not None:
            check_same_width("embeddings", e, "the stored reference set", self.reference)
        e = e.to(torch.promote_types(e.dtype, torch.float32))  # float64 kept: no overflow
        self.reference = e if self.reference is None else torch.cat([self.reference, e])

    def reset(self) -> None:
        self.reference = None

    def save(self, filename: str) -> None:
        torch.save({"reference": self.reference}, filename)

    def load(self, filename: str) -> None:
        self.reference = torch.load(filename)["reference"]

    def __repr__(self) -> str:
        return f"KReciprocalReRanker(k1={self.k1}, k2={self.k2}, lambda_value={self.lambda_value})"
