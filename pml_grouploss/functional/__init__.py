"""The math behind pml_grouploss: no PML imports, typed, shapes documented. Pure torch tensor
functions, except k-reciprocal re-ranking (``re_ranking``, ``re_ranking_one_set``,
``dense_re_ranking_knn``, ``sparse_re_ranking_knn``): numpy/scipy/faiss on CPU."""
from .anchors import select_anchors
from .batch_classes import BatchClasses, batch_classes
from .beta_normalization import beta_normalize
from .class_centroids import class_centroids, mean_pairwise_distance, nearest_classes
from .gradml import (
    check_gradml_params,
    gradml_gradient,
    gradml_loss,
    gradml_pair_terms,
    pair_indices,
    safe_pow,
)
from .group_loss import (
    LOG_EPSILON,
    group_loss,
    initial_assignment,
    log_initial_assignment,
    RefinedLabelTerms,
    refined_label_loss,
    refined_label_terms,
)
from .rms_normalize import rms_normalize
from .sparse_rows import gather_rows
from .reranking import dense_re_ranking_knn, re_ranking, re_ranking_one_set
from .reranking_sparse import sparse_re_ranking_knn
from .pearson import (
    gram,
    pearson_correlation,
    pearson_similarity,
    similarity_from_correlation,
    standardize_rows,
)
from .pooling import mixed_pool2d
from .replicator import (
    consistency,
    log_replicator_dynamics,
    log_replicator_step,
    replicator_dynamics,
    replicator_history,
    replicator_step,
)

__all__ = [
    "BatchClasses",
    "LOG_EPSILON",
    "batch_classes",
    "gather_rows",
    "gram",
    "beta_normalize",
    "dense_re_ranking_knn",
    "mixed_pool2d",
    "re_ranking",
    "re_ranking_one_set",
    "sparse_re_ranking_knn",
    "check_gradml_params",
    "class_centroids",
    "gradml_gradient",
    "gradml_loss",
    "gradml_pair_terms",
    "mean_pairwise_distance",
    "nearest_classes",
    "pair_indices",
    "safe_pow",
    "consistency",
    "group_loss",
    "initial_assignment",
    "log_initial_assignment",
    "log_replicator_dynamics",
    "log_replicator_step",
    "pearson_correlation",
    "pearson_similarity",
    "RefinedLabelTerms",
    "refined_label_loss",
    "refined_label_terms",
    "replicator_dynamics",
    "replicator_history",
    "replicator_step",
    "rms_normalize",
    "select_anchors",
    "similarity_from_correlation",
    "standardize_rows",
]
