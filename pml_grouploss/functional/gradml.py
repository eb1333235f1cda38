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

from typing import Optional, Tuple

import torch

from .._validation import MAX_WEIGHT, check_finite, check_floating, check_number

__all__ = [
    "check_gradml_params",
    "safe_pow",
    "gradml_pair_terms",
    "gradml_loss",
    "gradml_gradient",
    "pair_indices",
    "MAX_K",
    "MAX_WEIGHT",
    "compute_dtype",
    "check_loss_finite",
    "derivative_cap",
]

#: Largest accepted ``k``. On normalized embeddings ``d <= 2``, so ``d^k <= 2^10 = 1024``: the
#: terms and their gradients stay far inside float16's range per pair; ``k = 200`` already
#: gives ``2^200``, beyond float32. The paper's appendix finds ``k`` between 2 and 3 best.
MAX_K = 10.0
#: Largest accepted ``w`` and ``pos_weight``: ``100 * 2^10`` per pair stays finite in float32
#: for any batch (``w = 1e300`` would overflow to ``-inf``). Scale the loss itself (or the
#: learning rate) instead of the weights beyond this.


def check_gradml_params(k: float, w: float, pos_weight: float = 1.0) -> None:
    """Raise a ``ValueError``/``TypeError`` naming the argument when a GradML parameter is invalid.

    Args:
        k: exponent of the distance, a finite number in ``(0, MAX_K]`` (eq. 7; ``MAX_K = 10``).
        w: weight of the negative pairs, in ``[0, MAX_WEIGHT]`` (eq. 11; ``w < 0`` would *pull*
            negatives together; ``MAX_WEIGHT = 100``).
        pos_weight: weight ``a_pos`` of the positive pairs, in ``[0, MAX_WEIGHT]`` (eq. 10).
    """
    check_number(
        "k",
        k,
        minimum=0.0,
        strict_minimum=True,
        maximum=MAX_K,
        hint="(eq. 7 of the GradML paper) the paper uses k=2; larger k overflows d^k",
    )
    check_number(
        "w",
        w,
        minimum=0.0,
        maximum=MAX_WEIGHT,
        hint="weight of the negative pairs (eq. 11): a negative w would pull different classes "
        "together, a huge one overflows; the paper uses w=1 (Table 3) or w=0.5 (appendix)",
    )
    check_number(
        "pos_weight",
        pos_weight,
        minimum=0.0,
        maximum=MAX_WEIGHT,
        hint="weight a_pos of the positive pairs (eq. 10); the paper uses 1",
    )


class _CappedPow(torch.autograd.Function):
    """``t ** e`` (``0 < e < 1``, ``t >= 0``) whose derivative is capped at ``cap``.

    The value is exact. The derivative ``e * t^(e-1)`` is infinite at ``t = 0`` and overflows
    for subnormal ``t``; it becomes ``min(e * t^(e-1), cap)`` for ``t > 0`` and 0 at ``t = 0``.
    The backward is written in differentiable ops (double backward works where uncapped).
    """

    @staticmethod
    def forward(ctx, t: torch.Tensor, exponent: float, cap: float) -> torch.Tensor:
        ctx.save_for_backward(t)
        ctx.exponent, ctx.cap = exponent, cap
        positive = t > 0
        safe = torch.where(positive, t, torch.ones_like(t))
        return torch.where(positive, safe**exponent, torch.zeros_like(t))

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        (t,) = ctx.saved_tensors
        e, cap = ctx.exponent, ctx.cap
        # e * t_min^(e-1) == cap: below t_min the derivative is the cap
        t_min = (cap / e) ** (1.0 / (e - 1.0))
        clamped = torch.clamp(t, min=t_min)
        deriv = torch.where(t > 0, e * clamped ** (e - 1.0), torch.zeros_like(t))
        return grad * deriv, None, None


def derivative_cap(dtype: torch.dtype) -> float:
    """Cap of the derivative of ``d^e`` for ``e < 1``: ``finfo(dtype).max ** (1/3)``.

    float32: ~7e12, float64: ~6e102. Through the distance's backward (normalization factor
    ``<= 1e12``), the weights (``<= 100``) and sums over pairs the gradient stays finite.
    """
    return float(torch.finfo(dtype).max) ** (1.0 / 3.0)


def safe_pow(dist: torch.Tensor, exponent: float) -> torch.Tensor:
    """``dist ** exponent`` for non-negative distances, finite in value and gradient.

    ``d ** e`` has derivative ``e * d ** (e - 1)``, which is infinite at ``d = 0`` for ``e < 1``
    and turns into ``inf * 0 = nan`` through the distance's own zero gradient. Coincident
    points (duplicated images, collapsed classes) are common, so zero distances get the
    subgradient 0 instead (the double ``where`` keeps ``nan`` out of the backward pass). For
    ``e < 1`` the derivative at tiny ``d > 0`` (near-duplicates, subnormal squared distances)
    is capped at :func:`derivative_cap` of the dtype instead of overflowing to ``inf``; the
    value itself is exact.

    Args:
        dist: any shape, values ``>= 0``.
        exponent: a finite number ``> 0`` (else a ``ValueError``/``TypeError`` naming it).

    Returns:
        tensor of the shape, dtype and device of ``dist``.
    """
    exponent = check_number("exponent", exponent, minimum=0.0, strict_minimum=True)
    return _safe_pow(dist, exponent)


def _safe_pow(dist: torch.Tensor, exponent: float) -> torch.Tensor:
    """:func:`safe_pow` without the check of ``exponent`` (any real: :func:`gradml_gradient`
    raises distances to ``k - 2``, which may be negative; zero distances give 0)."""
    if exponent == 1:
        return dist
    if 0 < exponent < 1 and dist.dtype.is_floating_point:
        return _CappedPow.apply(dist, float(exponent), derivative_cap(dist.dtype))
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
        dist_power: power already applied to the distances, a finite number ``> 0``.

    Returns:
        ``(P,)`` positive terms ``>= 0`` and ``(Q,)`` negative terms ``<= 0``.
    """
    check_gradml_params(k, w, pos_weight)
    dist_power = check_number("dist_power", dist_power, minimum=0.0, strict_minimum=True,
                              hint="the power already applied to the distances")
    exponent = float(k) / dist_power
    pos_terms = float(pos_weight) * _safe_pow(pos_dist, exponent)
    neg_terms = -float(w) * _safe_pow(neg_dist, exponent)
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
    check_floating("embeddings", embeddings)
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
    check_finite("embeddings", embeddings, hint="GradML needs finite embeddings")
    return labels


def compute_dtype(dtype: torch.dtype) -> torch.dtype:
    """The dtype GradML computes in: ``promote_types(dtype, float32)`` (half precision
    overflows ``d^k`` and has no ``cdist``)."""
    return torch.promote_types(dtype, torch.float32)


def check_loss_finite(loss: torch.Tensor, dtype: torch.dtype) -> None:
    """Raise a ``ValueError`` when the loss overflowed (the embeddings were finite)."""
    if not bool(torch.isfinite(loss)):
        raise ValueError(
            f"the GradML loss is not finite in {dtype} (got {float(loss.detach())}): d^k "
            "overflows for these embeddings; normalize the embeddings (GradMLLoss's default "
            "LpDistance(normalize_embeddings=True)), use float32/float64 embeddings, or a "
            "smaller k, w or pos_weight"
        )


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
    ``O(n^2)`` (one distance matrix), work ``O(n^2 d)``. Computed in float32 or wider
    (:func:`compute_dtype`, autocast disabled) and returned in the embeddings' dtype.

    Args:
        embeddings: ``(n, d)`` floating point, finite.
        labels: ``(n,)`` integer class labels.
        k, w, pos_weight: see :func:`check_gradml_params`.

    Returns:
        scalar tensor (0 for ``n < 2``), differentiable w.r.t. ``embeddings``.

    Raises:
        TypeError: non-floating embeddings.
        ValueError: bad shapes, NaN/inf embeddings, or a loss that overflows (float32 for
            half-precision input, else the input dtype).
    """
    check_gradml_params(k, w, pos_weight)
    labels = _check_batch(embeddings, labels)
    n = embeddings.shape[0]
    if n < 2:
        return embeddings.sum() * 0
    i, j = torch.triu_indices(n, n, offset=1, device=embeddings.device)
    with torch.autocast(device_type=embeddings.device.type, enabled=False):
        x = embeddings.to(compute_dtype(embeddings.dtype))
        # pairwise differences of the pairs only (P x d): avoids cdist's backward, which is not
        # twice differentiable, so that gradcheck/gradgradcheck can run on this reference.
        dist = (x[i] - x[j]).norm(dim=1)
        same = labels[i] == labels[j]
        pos_terms, neg_terms = gradml_pair_terms(dist[same], dist[~same], k, w, pos_weight)
        loss = (pos_terms.sum() + neg_terms.sum()).to(embeddings.dtype)
    check_loss_finite(loss, embeddings.dtype)
    return loss


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
        ``(n, d)`` tensor (no autograd graph), computed in float32 or wider and returned in the
        embeddings' dtype.
    """
    check_gradml_params(k, w, pos_weight)
    labels = _check_batch(embeddings, labels)
    with torch.no_grad(), torch.autocast(device_type=embeddings.device.type, enabled=False):
        x = embeddings.to(compute_dtype(embeddings.dtype))
        diff_norm = torch.cdist(x, x)  # (n, n)
        coeff = torch.where(
            labels.view(-1, 1) == labels.view(1, -1),
            torch.full_like(diff_norm, float(pos_weight)),
            torch.full_like(diff_norm, -float(w)),
        )
        scale = k * coeff * _safe_pow(diff_norm, float(k) - 2.0) if k != 2 else 2.0 * coeff
        scale = torch.where(diff_norm > 0, scale, torch.zeros_like(scale))
        scale.fill_diagonal_(0)
        # sum_j s_ij (x_i - x_j) = x_i * sum_j s_ij - (S x)_i
        return (x * scale.sum(dim=1, keepdim=True) - scale @ x).to(embeddings.dtype)
