"""Class centroids and nearest classes: the math behind the nearest-class sampler (GL++ §5.1).

Group Loss++ §5.1 (re-identification): "for each mini-batch, we first sample a fixed number of
classes with a low average distance between each other, and then for each class, we sample a
fixed number of samples". Classes are compared through the centroids (means) of their
embeddings. Pure torch, no PML imports.

Nearest neighbours are computed by brute force with torch for one query centroid at a time:
the sampler needs the neighbours of one seed class per batch, which is ``O(C d)`` for ``C``
classes, cheaper than building a k-NN graph of all ``C`` centroids (``O(C^2 d)``) with faiss.
"""
from __future__ import annotations

from typing import Optional, Tuple

import torch

from .._validation import check_bool, check_class_ids, check_int
from .beta_normalization import beta_normalize
from .pearson import widen_rows

__all__ = ["class_centroids", "nearest_classes", "mean_pairwise_distance"]


def class_centroids(
    embeddings: torch.Tensor,
    labels: torch.Tensor,
    normalize_embeddings: bool = True,
) -> Tuple[torch.Tensor, torch.Tensor]:
    """Mean embedding of every class present in ``labels``.

    Args:
        embeddings: ``(n, d)`` floating point.
        labels: ``(n,)`` integer labels (any values, not necessarily ``0..C-1``).
        normalize_embeddings: L2-normalize each embedding before averaging (as PML's default
            ``LpDistance`` does before comparing embeddings). A zero embedding then stays zero
            with a zero gradient (``F.normalize`` gives it ``1 / eps``), and so does a
            float16/bfloat16 one whose largest magnitude is subnormal in its dtype (its
            gradient, ~``1 / ||x||``, overflowed float16).

    Returns:
        ``(centroids, classes)``: ``(C, d)`` centroids in the dtype of ``embeddings`` (computed
        in float32 or wider) and ``(C,)`` the sorted unique labels they belong to.
    """
    normalize_embeddings = check_bool("normalize_embeddings", normalize_embeddings)
    if embeddings.ndim != 2:
        raise ValueError(f"embeddings must have shape (n, d), got {tuple(embeddings.shape)}")
    labels = labels.reshape(-1).to(embeddings.device)
    if labels.shape[0] != embeddings.shape[0]:
        raise ValueError(
            f"labels must have one entry per embedding: got {labels.shape[0]} labels for "
            f"{embeddings.shape[0]} embeddings"
        )
    if embeddings.shape[0] == 0:
        raise ValueError("embeddings is empty: centroids need at least one embedding")
    work_dtype = torch.promote_types(embeddings.dtype, torch.float32)
    x = embeddings.to(work_dtype)
    if not torch.isfinite(x).all():
        raise ValueError("embeddings contain nan or inf: cannot compute class centroids")
    if normalize_embeddings:
        # F.normalize's values to the bit, but a zero row (and, for float16/bfloat16
        # embeddings, a row subnormal in their dtype) gets the zero gradient, not 1 / eps
        x = beta_normalize(widen_rows(embeddings, work_dtype), beta=0.0)
    classes, inverse = torch.unique(labels, sorted=True, return_inverse=True)
    sums = torch.zeros(classes.shape[0], x.shape[1], dtype=work_dtype, device=x.device)
    sums.index_add_(0, inverse, x)
    counts = torch.bincount(inverse, minlength=classes.shape[0]).to(work_dtype)
    return (sums / counts.unsqueeze(1)).to(embeddings.dtype), classes


def nearest_classes(
    centroids: torch.Tensor,
    seed: int,
    num_neighbors: int,
    exclude: Optional[torch.Tensor] = None,
) -> torch.Tensor:
    """Indices of the ``num_neighbors`` centroids nearest to ``centroids[seed]`` (Euclidean).

    The seed itself and the indices in ``exclude`` are never returned. Ties are broken by the
    smaller index (stable sort), so the result is deterministic.

    Args:
        centroids: ``(C, d)``.
        seed: int index in ``[0, C)`` of the query centroid.
        num_neighbors: int, ``0 <= num_neighbors <= C - 1 - len(exclude)``.
        exclude: optional ``(E,)`` integer indices in ``[0, C)`` to skip (a tensor or a
            sequence).

    Returns:
        ``(num_neighbors,)`` int64 indices, nearest first.

    Raises:
        TypeError: a non-integer ``seed``, ``num_neighbors`` or ``exclude``.
        ValueError: any of them out of range.
    """
    num_classes = centroids.shape[0]
    seed = check_int("seed", seed)
    num_neighbors = check_int("num_neighbors", num_neighbors)
    if not 0 <= seed < num_classes:
        raise ValueError(f"seed must be in [0, {num_classes}), got {seed}")
    if exclude is not None:
        exclude = _check_exclude(exclude, num_classes)
    dist = torch.linalg.vector_norm(
        centroids.float() - centroids[seed].float().unsqueeze(0), dim=1
    )
    dist[seed] = float("inf")
    banned = 1
    if exclude is not None and exclude.numel() > 0:
        exclude = exclude.to(dist.device)
        dist[exclude] = float("inf")
        seed_t = torch.tensor([seed], device=dist.device)
        banned = int(torch.unique(torch.cat([exclude, seed_t])).numel())
    available = num_classes - banned
    if not 0 <= num_neighbors <= available:
        raise ValueError(
            f"num_neighbors must be in [0, {available}] (classes other than the seed and the "
            f"excluded ones), got {num_neighbors}"
        )
    order = torch.sort(dist, stable=True).indices
    return order[:num_neighbors]


def _check_exclude(exclude, num_classes: int) -> torch.Tensor:
    """``exclude`` as a flat int64 tensor of indices in ``[0, num_classes)`` (one read)."""
    if not torch.is_tensor(exclude):
        try:
            exclude = torch.as_tensor(exclude)
        except (TypeError, ValueError, RuntimeError):
            raise TypeError(
                f"exclude must be a tensor or sequence of integer class indices, got "
                f"{type(exclude).__name__} {exclude!r}"
            ) from None
    if not exclude.numel():
        return exclude.reshape(-1).long()
    exclude = check_class_ids("exclude", exclude).reshape(-1)
    low, high = torch.stack(exclude.aminmax()).tolist()
    if low < 0 or high >= num_classes:
        raise ValueError(
            f"exclude must hold indices in [0, {num_classes}) (rows of centroids), got "
            f"values in [{low}, {high}]"
        )
    return exclude


def mean_pairwise_distance(centroids: torch.Tensor, indices: torch.Tensor) -> torch.Tensor:
    """Average Euclidean distance between the distinct pairs of ``centroids[indices]``.

    The quantity GL++ §5.1 asks to keep low within a batch ("classes with a low average
    distance between each other").

    Args:
        centroids: ``(C, d)``.
        indices: ``(P,)`` int64, ``P >= 2``.

    Returns:
        scalar tensor, computed in and returned as ``promote_types(centroids.dtype, float32)``
        (float64 stays float64; float16/bfloat16 give float32).
    """
    if indices.numel() < 2:
        raise ValueError(f"indices must hold at least 2 classes, got {indices.numel()}")
    c = centroids[indices].to(torch.promote_types(centroids.dtype, torch.float32))
    return torch.pdist(c).mean()
