"""GradML: the gradient-derived pairwise loss (Vasudeva et al., NeurIPS'21 workshop, eq. 10-11).

Eq. (10) of the paper, written for a whole batch instead of its two-classes-two-samples
example, is a weighted sum over *unordered* pairs ``{i, j}``::

    L = a_pos * sum_{y_i == y_j} ||x_i - x_j||^k  -  w * sum_{y_i != y_j} ||x_i - x_j||^k    (10)

with ``k > 0``. The paper sets ``a_pos = 1`` and all negative weights to ``w`` (eq. 11) and uses
``k = 2, w = 1`` (Table 3); its appendix also uses ``w = 0.5``, "obtained by equating the sum of
the weights of the positives to that of the negatives" (two positive pairs and four negative
pairs in the two-class example).

Closed-form gradient (derived by hand from eq. 10; :func:`gradml_gradient`)::

    dL/dx_i = k * sum_{j != i} c_ij * ||x_i - x_j||^(k-2) * (x_i - x_j),
    c_ij = a_pos if y_i == y_j else -w.

For the paper's example with ``k = 2`` this gives
``dL/dx1 = 2 * ((1 - 2w) x1 - x2 + w (y1 + y2))`` (and symmetrically for ``x2, y1, y2``).

**Table 1 of the paper does not follow from eq. (11).** Its GradML row lists
``dL/dx1 = 2w(y1 + y2 - x2)``. Matching coefficients with the exact gradient needs
``1 - 2w = 0`` (the ``x1`` term) *and* ``-1 = -w`` (the ``x2`` term): no ``w`` satisfies both
(at ``w = 0.5`` the exact gradient is ``y1 + y2 - 2 x2``, the row gives ``y1 + y2 - x2``; at
``w = 1`` it is ``2(y1 + y2 - x1 - x2)``, the row gives ``2(y1 + y2 - x2)``). The same holds for
the other three entries of the row. This module implements eq. (10)/(11), not Table 1;
``tests/functional/test_gradml.py`` checks both statements numerically.

This module is pure torch (no PML imports). :class:`pml_grouploss.losses.GradMLLoss` is the
PML adapter.
"""
from __future__ import annotations

import math
import numbers
from typing import Optional, Tuple

import torch

__all__ = [
    "check_gradml_params",
    "safe_pow",
    "gradml_pair_terms",
    "gradml_loss",
    "gradml_gradient",
    "pair_indices",
]


def _is_real_number(x: object) -> bool:
    if isinstance(x, bool):
        return False
    if isinstance(x, numbers.Real):  # int, float and NumPy scalars (e.g. from np.linspace)
        return True
    if torch.is_tensor(x) and x.numel() == 1:
        return not x.dtype.is_complex and x.dtype != torch.bool
    return False


def check_gradml_params(k: float, w: float, pos_weight: float = 1.0) -> None:
    """Raise a ``ValueError``/``TypeError`` naming the argument when a GradML parameter is invalid.

    Args:
        k: exponent of the distance, must be a finite number ``> 0`` (eq. 7).
        w: weight of the negative pairs, finite and ``>= 0`` (eq. 11; ``w < 0`` would *pull*
            negatives together).
        pos_weight: weight ``a_pos`` of the positive pairs, finite and ``>= 0`` (eq. 10).
    """
    for name, value in (("k", k), ("w", w), ("pos_weight", pos_weight)):
        if not _is_real_number(value):
            raise TypeError(f"{name} must be a real number, got {type(value).__name__}")
        if not math.isfinite(float(value)):
            raise ValueError(f"{name} must be finite, got {float(value)}")
    if float(k) <= 0:
        raise ValueError(
            f"k must be > 0 (eq. 7 of the GradML paper), got {float(k)}; the paper uses k=2"
        )
    if float(w) < 0:
        raise ValueError(
            f"w must be >= 0 (weight of the negative pairs, eq. 11), got {float(w)}; "
            "a negative w would pull different classes together. The paper uses w=1 (Table 3) "
            "or w=0.5 (appendix)"
        )
    if float(pos_weight) < 0:
        raise ValueError(
            f"pos_weight must be >= 0 (weight a_pos of the positive pairs, eq. 10), got "
            f"{float(pos_weight)}; the paper uses 1"
        )


def safe_pow(dist: torch.Tensor, exponent: float) -> torch.Tensor:
    """``dist ** exponent`` for non-negative distances, with a zero gradient where ``dist == 0``.

    ``d ** e`` has derivative ``e * d ** (e - 1)``, which is infinite at ``d = 0`` for ``e < 1``
    and turns into ``inf * 0 = nan`` through the distance's own zero gradient. Coincident
    points (duplicated images, collapsed classes) are common, so zero distances get the
    subgradient 0 instead (the double ``where`` keeps ``nan`` out of the backward pass).

    Args:
        dist: any shape, values ``>= 0``.
        exponent: ``> 0``.

    Returns:
        tensor of the shape, dtype and device of ``dist``.
    """
    if exponent == 1:
        return dist
    positive = dist > 0
    safe = torch.where(positive, dist, torch.ones_like(dist))
    return torch.where(positive, safe**exponent, torch.zeros_like(dist))


def gradml_pair_terms(
    pos_dist: torch.Tensor,
    neg_dist: torch.Tensor,
    k: float = 2.0,
    w: float = 1.0,
    pos_weight: float = 1.0,
    dist_power: float = 1.0,
) -> Tuple[torch.Tensor, torch.Tensor]:
    """Per-pair terms of eq. (10): ``a_pos * d^k`` for positives and ``-w * d^k`` for negatives.

    Summing both outputs gives eq. (10) over the given pairs. The distances may already be
    raised to a power (PML's ``LpDistance(power=...)``): ``dist_power`` undoes it so that ``k``
    always applies to the plain Euclidean distance, ``d^k = (d^power)^(k / power)``.

    Args:
        pos_dist: ``(P,)`` distances (to the power ``dist_power``) of positive pairs.
        neg_dist: ``(Q,)`` distances (to the power ``dist_power``) of negative pairs.
        k, w, pos_weight: see :func:`check_gradml_params`.
        dist_power: power already applied to the distances, ``> 0``.

    Returns:
        ``(P,)`` positive terms ``>= 0`` and ``(Q,)`` negative terms ``<= 0``.
    """
    check_gradml_params(k, w, pos_weight)
    if not _is_real_number(dist_power) or float(dist_power) <= 0:
        raise ValueError(f"dist_power must be a number > 0, got {dist_power!r}")
    exponent = float(k) / float(dist_power)
    pos_terms = float(pos_weight) * safe_pow(pos_dist, exponent)
    neg_terms = -float(w) * safe_pow(neg_dist, exponent)
    return pos_terms, neg_terms


def pair_indices(
    labels: torch.Tensor,
    ref_labels: Optional[torch.Tensor] = None,
) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """All positive and negative pairs, as PML's ``(a1, p, a2, n)`` tuple, in ``O(#pairs)`` memory.

    Without ``ref_labels`` the pairs are the *unordered* pairs ``i < j`` of the batch (each
    pair of eq. 10 once). With ``ref_labels`` they are all ``(i, j)`` with ``i`` in the batch
    and ``j`` in the reference set. PML's ``get_all_pairs_indices`` gives the same pairs (both
    orders in the first case) but goes through ``nonzero`` on an ``(n, n)`` mask, which
    returns an ``(#pairs, 2)`` tensor, twice the size of the pair matrix; here the largest
    tensor is the ``(2, n(n-1)/2)`` upper-triangle index (or ``n * m`` flat indices).

    Args:
        labels: ``(n,)`` integer labels.
        ref_labels: optional ``(m,)`` integer labels of the reference set.

    Returns:
        ``(a1, p, a2, n)`` int64 index tensors on ``labels.device``, in row-major order.
    """
    labels = labels.reshape(-1)
    device = labels.device
    if ref_labels is None:
        n = labels.shape[0]
        i, j = torch.triu_indices(n, n, offset=1, device=device)
        same = labels[i] == labels[j]
        return i[same], j[same], i[~same], j[~same]
    ref_labels = ref_labels.reshape(-1).to(device)
    m = ref_labels.shape[0]
    flat = torch.arange(labels.shape[0] * m, device=device)
    same = (labels.view(-1, 1) == ref_labels.view(1, -1)).flatten()
    pos, neg = flat[same], flat[~same]
    return pos // m, pos % m, neg // m, neg % m


def _check_batch(embeddings: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    if embeddings.ndim != 2:
        raise ValueError(
            f"embeddings must have shape (n, d), got {tuple(embeddings.shape)}"
        )
    labels = labels.reshape(-1).to(embeddings.device)
    if labels.shape[0] != embeddings.shape[0]:
        raise ValueError(
            f"labels must have one entry per embedding: got {labels.shape[0]} labels for "
            f"{embeddings.shape[0]} embeddings"
        )
    return labels


def gradml_loss(
    embeddings: torch.Tensor,
    labels: torch.Tensor,
    k: float = 2.0,
    w: float = 1.0,
    pos_weight: float = 1.0,
) -> torch.Tensor:
    """Eq. (10)/(11) summed over all unordered pairs ``{i, j}``, ``i < j``, of a batch.

    This is the paper's exact form (no means, no normalization of the embeddings): on the
    example ``x1, x2`` (class A), ``y1, y2`` (class B) it is eq. (11) term by term. Memory is
    ``O(n^2)`` (one distance matrix), work ``O(n^2 d)``.

    Args:
        embeddings: ``(n, d)`` floating point.
        labels: ``(n,)`` integer class labels.
        k, w, pos_weight: see :func:`check_gradml_params`.

    Returns:
        scalar tensor (0 for ``n < 2``), differentiable w.r.t. ``embeddings``.
    """
    check_gradml_params(k, w, pos_weight)
    labels = _check_batch(embeddings, labels)
    n = embeddings.shape[0]
    if n < 2:
        return embeddings.sum() * 0
    i, j = torch.triu_indices(n, n, offset=1, device=embeddings.device)
    # pairwise differences of the pairs only (P x d): avoids cdist's backward, which is not
    # twice differentiable, so that gradcheck/gradgradcheck can run on this reference.
    dist = (embeddings[i] - embeddings[j]).norm(dim=1)
    same = labels[i] == labels[j]
    pos_terms, neg_terms = gradml_pair_terms(dist[same], dist[~same], k, w, pos_weight)
    return pos_terms.sum() + neg_terms.sum()


def gradml_gradient(
    embeddings: torch.Tensor,
    labels: torch.Tensor,
    k: float = 2.0,
    w: float = 1.0,
    pos_weight: float = 1.0,
) -> torch.Tensor:
    """Closed-form gradient of :func:`gradml_loss` w.r.t. the embeddings (derived by hand).

    ``dL/dx_i = k * sum_{j != i} c_ij ||x_i - x_j||^(k-2) (x_i - x_j)`` with
    ``c_ij = pos_weight`` for same-class pairs and ``-w`` otherwise; terms with
    ``x_i == x_j`` are 0 (the subgradient :func:`safe_pow` uses). For ``k = 2`` this is
    ``2 * sum_j c_ij (x_i - x_j)``, e.g. ``2((1 - 2w) x1 - x2 + w(y1 + y2))`` for ``x1`` in the
    paper's example.

    Args:
        embeddings: ``(n, d)``; labels: ``(n,)``; k, w, pos_weight as in :func:`gradml_loss`.

    Returns:
        ``(n, d)`` tensor (no autograd graph).
    """
    check_gradml_params(k, w, pos_weight)
    labels = _check_batch(embeddings, labels)
    with torch.no_grad():
        x = embeddings
        diff_norm = torch.cdist(x, x)  # (n, n)
        coeff = torch.where(
            labels.view(-1, 1) == labels.view(1, -1),
            torch.full_like(diff_norm, float(pos_weight)),
            torch.full_like(diff_norm, -float(w)),
        )
        scale = k * coeff * safe_pow(diff_norm, float(k) - 2.0) if k != 2 else 2.0 * coeff
        scale = torch.where(diff_norm > 0, scale, torch.zeros_like(scale))
        scale.fill_diagonal_(0)
        # sum_j s_ij (x_i - x_j) = x_i * sum_j s_ij - (S x)_i
        return x * scale.sum(dim=1, keepdim=True) - scale @ x
