"""Recall@K next to PML's metrics (Group Loss++ §5.3)."""

from __future__ import annotations

import functools
import numbers
from typing import Sequence

import torch
from pytorch_metric_learning.utils.accuracy_calculator import (
    AccuracyCalculator,
    maybe_get_avg_of_avgs,
    nan_accuracy,
    try_getting_not_lone_labels,
)

from .._validation import check_int


def _check_ks(ks: Sequence[int], name: str) -> tuple:
    """``ks`` (an int or a sequence of ints >= 1, NumPy integers included) sorted, unique."""
    if isinstance(ks, numbers.Integral) and not isinstance(ks, bool):
        ks = (ks,)
    try:
        ks = tuple(ks)
    except TypeError:
        raise TypeError(f"{name} must be a sequence of ints >= 1, got {ks!r}") from None
    if len(ks) == 0:
        raise ValueError(f"{name} must contain at least one K")
    return tuple(sorted({check_int(f"{name}[{i}]", K, minimum=1) for i, K in enumerate(ks)}))


def hits_at_k(
    knn_labels: torch.Tensor, query_labels: torch.Tensor, K: int, label_comparison_fn
) -> torch.Tensor:
    """1.0 for each query with a same-label item among its first ``K`` neighbours.

    Returns ``(nq,)`` float64.

    Args:
        knn_labels: ``(nq, k)`` labels of the neighbours, best first.
        query_labels: ``(nq, 1)``.
    """
    same = label_comparison_fn(query_labels, knn_labels[:, :K])
    return torch.any(same, dim=1).type(torch.float64)


class RecallAtKAccuracyCalculator(AccuracyCalculator):
    """PML ``AccuracyCalculator`` plus ``recall_at_K`` for every K in ``recall_at``.

    Recall@K (GL++ §5.3) is the fraction of queries whose ``K`` nearest neighbours contain at
    least one item of the query's class. With one query it is 1 or 0, so ``recall_at_1`` equals
    PML's ``precision_at_1`` exactly (same neighbours, same lone-query handling, same averaging).
    Recall@K is non-decreasing in K.

    Defaults: K = 1, 2, 4, 8 (CUB, Cars196); use ``recall_at=(1, 10, 100, 1000)`` for SOP and
    ``(1, 10, 20, 30, 40, 50)`` for In-Shop. ``determine_k`` makes the k-NN search cover the
    largest requested K (capped at the reference size); PML's metrics (``NMI``, ``AMI``,
    ``precision_at_1``, ``mean_average_precision_at_r``, ...) see PML's own ``k`` neighbours,
    so each equals PML's ``AccuracyCalculator`` with the same arguments.

    Args:
        recall_at: the K values.
        **kwargs: passed to ``AccuracyCalculator`` (``include``, ``exclude``, ``k``,
            ``knn_func``, ...). Tip: ``k="max_bin_count"`` avoids PML's full ranking (``k=None``).
    """

    def __init__(self, recall_at: Sequence[int] = (1, 2, 4, 8), **kwargs):
        self.recall_at = _check_ks(recall_at, "recall_at")
        # PML discovers metrics by scanning dir(self) in __init__: create them first.
        for K in self.recall_at:
            setattr(self, f"calculate_recall_at_{K}", functools.partial(self._recall_at, K))
        super().__init__(**kwargs)

    def _per_k_metrics(self) -> dict:
        return {f"recall_at_{K}": K for K in self.recall_at}

    def requires_knn(self):
        return super().requires_knn() + list(self._per_k_metrics().keys())

    def _recall_at(self, K, knn_labels, query_labels, not_lone_query_mask, label_counts, **kwargs):
        knn_labels, query_labels = try_getting_not_lone_labels(
            knn_labels, query_labels, not_lone_query_mask
        )
        if knn_labels is None:
            return nan_accuracy(label_counts[0], self.return_per_class)
        hits = hits_at_k(knn_labels, query_labels[:, None], K, self.label_comparison_fn)
        return maybe_get_avg_of_avgs(hits, query_labels, self.avg_of_avgs, self.return_per_class)

    def _needed_k(self) -> int:
        ks = self._per_k_metrics()
        return max([ks[m] for m in self.get_curr_metrics() if m in ks], default=1)

    def _wide_metrics(self) -> set:
        """The metrics computed on the widened search (the rest see PML's ``k``)."""
        return set(self._per_k_metrics())

    def determine_k(self, bin_counts, num_reference_embeddings, ref_includes_query):
        """PML's ``k`` (kept for PML's metrics), widened to the largest requested K."""
        self._pml_k = AccuracyCalculator.determine_k(
            self, bin_counts, num_reference_embeddings, ref_includes_query)
        cap = num_reference_embeddings - int(ref_includes_query)
        return max(1, min(max(self._pml_k, self._needed_k()), cap))

    def _get_accuracy(self, function_dict, **kwargs):
        # PML's k-dependent metrics (mean_average_precision, mean_reciprocal_rank, r_precision
        # at a k below R) see the first k neighbours, as with PML's AccuracyCalculator(k=k)
        k = getattr(self, "_pml_k", None)
        pml_kwargs = kwargs
        if "knn_labels" in kwargs and k is not None and k < kwargs["knn_labels"].shape[1]:
            pml_kwargs = dict(kwargs, knn_labels=kwargs["knn_labels"][:, :k],
                              knn_distances=kwargs["knn_distances"][:, :k])
        wide = self._wide_metrics()
        return {name: function(**(kwargs if name in wide else pml_kwargs))
                for name, function in function_dict.items()}
