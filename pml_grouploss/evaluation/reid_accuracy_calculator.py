"""Re-identification metrics: CMC rank-k and mAP over separate query/gallery sets (GL++ §5.3)."""

from __future__ import annotations

import functools
from typing import Sequence

from pytorch_metric_learning.utils.accuracy_calculator import (
    mean_average_precision,
    maybe_get_avg_of_avgs,
    nan_accuracy,
    try_getting_not_lone_labels,
)

from .recall_at_k import RecallAtKAccuracyCalculator, _check_ks, hits_at_k


class ReIDAccuracyCalculator(RecallAtKAccuracyCalculator):
    """``cmc_rank_k`` and ``reid_mAP`` for the re-identification protocol (GL++ §5.3, Table 5).

    Use it with a query split and a *separate* gallery split
    (``tester.test(..., splits_to_eval=[("query", ["gallery"])])`` or
    ``get_accuracy(query, q_labels, gallery, g_labels, ref_includes_query=False)``).

    - ``cmc_rank_k``: fraction of queries whose top-k gallery items contain the identity.
    - ``reid_mAP``: mean over queries of the average precision over the *whole* gallery ranking
      (every gallery item of the identity counts); the k-NN search is therefore a full ranking
      when ``reid_mAP`` is computed (PML's metrics still see PML's ``k`` neighbours).

    Queries whose identity is absent from the gallery are skipped (PML's lone-query rule).
    Camera-based junk filtering (Market-1501: same identity and same camera) is not applied.

    Args:
        cmc_ranks: the ranks k (default 1, 5, 10).
        recall_at: Recall@K values (inherited; default 1, 2, 4, 8).
        **kwargs: passed to ``AccuracyCalculator``.
    """

    def __init__(self, cmc_ranks: Sequence[int] = (1, 5, 10), **kwargs):
        self.cmc_ranks = _check_ks(cmc_ranks, "cmc_ranks")
        for k in self.cmc_ranks:
            setattr(self, f"calculate_cmc_rank_{k}", functools.partial(self._cmc, k))
        super().__init__(**kwargs)

    def _per_k_metrics(self) -> dict:
        out = super()._per_k_metrics()
        out.update({f"cmc_rank_{k}": k for k in self.cmc_ranks})
        return out

    def requires_knn(self):
        return super().requires_knn() + ["reid_mAP"]

    def _cmc(self, k, knn_labels, query_labels, not_lone_query_mask, label_counts, **kwargs):
        knn_labels, query_labels = try_getting_not_lone_labels(
            knn_labels, query_labels, not_lone_query_mask
        )
        if knn_labels is None:
            return nan_accuracy(label_counts[0], self.return_per_class)
        hits = hits_at_k(knn_labels, query_labels[:, None], k, self.label_comparison_fn)
        return maybe_get_avg_of_avgs(hits, query_labels, self.avg_of_avgs, self.return_per_class)

    def calculate_reid_mAP(
        self,
        knn_labels,
        query_labels,
        not_lone_query_mask,
        ref_includes_query,
        label_counts,
        **kwargs,
    ):
        knn_labels, query_labels = try_getting_not_lone_labels(
            knn_labels, query_labels, not_lone_query_mask
        )
        if knn_labels is None:
            return nan_accuracy(label_counts[0], self.return_per_class)
        return mean_average_precision(
            knn_labels,
            query_labels[:, None],
            ref_includes_query,
            label_counts,
            self.avg_of_avgs,
            self.return_per_class,
            self.label_comparison_fn,
        )

    def _wide_metrics(self) -> set:
        return super()._wide_metrics() | {"reid_mAP"}

    def determine_k(self, bin_counts, num_reference_embeddings, ref_includes_query):
        k = super().determine_k(bin_counts, num_reference_embeddings, ref_includes_query)
        if "reid_mAP" in self.get_curr_metrics():
            return num_reference_embeddings - int(ref_includes_query)
        return k
