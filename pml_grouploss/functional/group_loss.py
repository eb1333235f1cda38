"""The Group Loss (ECCV'20 Algorithm 1; Group Loss++ §3) as a pure tensor function."""
from __future__ import annotations

from typing import Dict, NamedTuple, Optional

import torch
import torch.nn.functional as F

from .pearson import Negatives, pearson_similarity, widen_rows
from .. import _validation as v
from ._prior_checks import check_loss_args, check_prior_args
from ._refined_labels import LOG_EPSILON, log_prior, refined_labels  # noqa: F401
from .replicator import check_dynamics_args


def initial_assignment(
    logits: torch.Tensor,
    labels: torch.Tensor,
    anchors: torch.Tensor,
    temperature: float,
) -> torch.Tensor:
    """The prior ``X(0)`` (GL++ §3.2 "image-label assignment matrix").

    ``softmax(logits / temperature)`` for every sample (temperature scaling, GL++ §5.1),
    with the rows of the anchors replaced by one-hot vectors of their labels.

    Args:
        logits: ``(n, m)`` classifier outputs.
        labels: ``(n,)`` integer labels in ``[0, m)``.
        anchors: ``(a,)`` int64 indices of the anchors, or an ``(n,)`` boolean mask.
        temperature: softmax temperature ``> 0``.

    Returns:
        ``(n, m)`` row-stochastic matrix.
    """
    return torch.exp(log_initial_assignment(logits, labels, anchors, temperature))


def log_initial_assignment(
    logits: torch.Tensor,
    labels: torch.Tensor,
    anchors: torch.Tensor,
    temperature: float,
) -> torch.Tensor:
    """``log X(0)``: the log of :func:`initial_assignment` (anchors' rows ``0`` / ``-inf``),
    computed as ``log_softmax`` (no underflow). Arguments as :func:`initial_assignment`;
    shapes, dtypes, the label and anchor ranges (one device read) and ``temperature`` are
    checked.

    Returns:
        ``(n, m)``.
    """
    labels, anchors = check_prior_args(logits, labels, anchors, temperature)
    return log_prior(logits, labels, anchors, temperature)


class RefinedLabelTerms(NamedTuple):
    """Per-sample terms of :func:`refined_label_terms`: ``nll`` and ``ce`` ``(n,)``,
    ``log_prior`` ``log X(0)`` and ``log_probabilities`` ``log X(T)`` ``(n, m)``."""

    nll: torch.Tensor
    ce: torch.Tensor
    log_prior: torch.Tensor
    log_probabilities: torch.Tensor


def refined_label_terms(
    W: torch.Tensor,
    logits: torch.Tensor,
    labels: torch.Tensor,
    anchors: torch.Tensor,
    *,
    temperature: float,
    num_iterations: int,
    ce_logits: Optional[torch.Tensor] = None,
    ce_labels: Optional[torch.Tensor] = None,
    unit_diagonal: bool = False,
) -> RefinedLabelTerms:
    """The per-sample losses of :func:`refined_label_loss`, and ``log X(0)``, ``log X(T)``,
    without the means and the exponentials (what :class:`~pml_grouploss.losses.GroupLoss`
    needs: PML's reducers average, and ``X`` is read only for stats). One autograd node with a
    closed-form backward for the prior, the dynamics, the NLL and (on ``logits``) the CE.
    ``unit_diagonal=True`` promises ``W >= 0``, ``W_ii = 1`` and ``max W < 2`` (a clamped
    correlation with its diagonal kept): the power-of-two rescaling of ``W`` and the guard for
    rows without support are then no-ops and are skipped. The arguments are not checked
    (GroupLoss checks its inputs once per call); :func:`refined_label_loss` checks them."""
    labels = labels.long()
    if anchors.dtype != torch.bool:
        anchors = torch.zeros(labels.shape[0], dtype=torch.bool, device=labels.device).index_fill(
            0, anchors.long().reshape(-1), True)
    check_dynamics_args(W, logits, num_iterations)
    nll, ce, log_X0, log_XT = refined_labels(
        W, logits, labels, anchors, temperature, num_iterations, with_ce=ce_logits is None,
        unit_diagonal=unit_diagonal)
    if ce_logits is not None:
        ce = F.cross_entropy(ce_logits, labels if ce_labels is None else ce_labels.long(),
                             reduction="none")
    return RefinedLabelTerms(nll, ce, log_X0, log_XT)


def refined_label_loss(
    W: torch.Tensor,
    logits: torch.Tensor,
    labels: torch.Tensor,
    anchors: torch.Tensor,
    *,
    temperature: float,
    num_iterations: int,
    ce_weight: float = 1.0,
    nll_weight: float = 1.0,
    ce_logits: Optional[torch.Tensor] = None,
    ce_labels: Optional[torch.Tensor] = None,
) -> Dict[str, torch.Tensor]:
    """Group Loss of a batch given its similarity matrix (steps 2-4 of :func:`group_loss`).

    The dynamics run on ``log X`` (:func:`~pml_grouploss.functional.log_replicator_dynamics`)
    so that values and gradients stay finite for any number of steps; ``-log(X(T) + 1e-12)``
    is ``-logaddexp(log X(T), log 1e-12)``. Equal to the X-space formulas to rounding.

    ``logits`` may hold ``-inf`` columns: those classes get prior 0 and the other entries
    are renormalised, which is GL++ §8.3's prior restricted to the classes of the batch
    (columns that are ``-inf`` for every sample stay 0 under the dynamics).

    Args:
        W: ``(n, n)`` similarity matrix (e.g. :func:`pearson_similarity`).
        logits: ``(n, m)``; labels ``(n,)``; anchors ``(a,)`` indices or ``(n,)`` boolean
            mask: see :func:`group_loss`.
        ce_logits, ce_labels: ``(n, m')`` and ``(n,)`` for the auxiliary cross-entropy when it
            runs over other classes than the prior (default: ``logits``, ``labels``).

    Returns:
        the dict described in :func:`group_loss` (``similarity`` is ``W``). A loss that is not
        finite (non-finite inputs, or logits whose cross-entropy overflows the dtype) raises a
        ``ValueError`` instead (one device read).
    """
    labels, anchors = check_prior_args(logits, labels, anchors, temperature)
    ce_labels = check_loss_args(W, ce_logits, ce_labels, labels, ce_weight, nll_weight)
    terms = refined_label_terms(
        W, logits, labels, anchors, temperature=temperature, num_iterations=num_iterations,
        ce_logits=ce_logits, ce_labels=ce_labels,
    )
    group, ce_mean = terms.nll.mean(), terms.ce.mean()
    loss = nll_weight * group + ce_weight * ce_mean
    if not bool(torch.isfinite(loss)):  # one read
        raise ValueError(
            f"the loss is {float(loss)} in {loss.dtype}: logits, ce_logits and W must be finite "
            "(a label's logit -inf gives an infinite cross-entropy) and the logits small enough "
            "for the cross-entropy (up to 2 max|logits| + log m per sample, times ce_weight) "
            "to fit the dtype; scale the logits down or compute in float64"
        )
    return {
        "loss": loss,
        "group_loss": group,
        "ce_loss": ce_mean,
        "group_loss_per_sample": terms.nll,
        "ce_loss_per_sample": terms.ce,
        "probabilities": torch.exp(terms.log_probabilities),
        "prior": torch.exp(terms.log_prior),
        "similarity": W,
    }


def group_loss(
    embeddings: torch.Tensor,
    logits: torch.Tensor,
    labels: torch.Tensor,
    anchors: torch.Tensor,
    *,
    temperature: float,
    num_iterations: int,
    negatives: Negatives = "clamp",
    zero_diagonal: bool = False,
    ce_weight: float = 1.0,
    nll_weight: float = 1.0,
) -> Dict[str, torch.Tensor]:
    """Group Loss of a batch, exactly as the authors' training loop computes it.

    1. ``W = pearson_similarity(embeddings)`` (GL++ eq. 3, clamp/shift §3.4.1);
    2. ``X(0)`` = temperature-scaled softmax of ``logits``, anchors one-hot;
    3. ``X(T)`` = ``num_iterations`` replicator steps (GL++ eq. 4-8);
    4. ``group_loss = mean_i -log(X(T)[i, y_i] + 1e-12)`` over all ``n`` samples (anchors
       included: they contribute ~0), ``ce_loss = mean_i CE(logits_i, y_i)`` on the raw
       logits (the authors' auxiliary term), ``loss = nll_weight * group_loss +
       ce_weight * ce_loss``.

    Computation happens in the dtype of ``embeddings``/``logits`` promoted to at least
    float32, so half-precision inputs do not underflow in the dynamics; embeddings whose
    largest magnitude is subnormal in their own dtype then correlate 0 with every sample,
    with a zero gradient (it grows as 1/scale and overflowed once cast back), as in
    :func:`pearson_correlation`.

    Args:
        embeddings: ``(n, d)``.
        logits: ``(n, m)``.
        labels: ``(n,)`` integer class ids in ``[0, m)`` (any integer dtype).
        anchors: ``(a,)`` integer indices into the batch, or an ``(n,)`` boolean mask.
        temperature: softmax temperature ``> 0``.
        num_iterations: replicator steps ``T >= 0`` (``T = 0``: no refinement).
        negatives: ``"clamp"`` | ``"shift"``, see :func:`pearson_similarity`.
        zero_diagonal: ``W_ii = 0`` (papers) instead of 1 (authors' code).
        ce_weight: weight of the auxiliary cross-entropy (0 allowed).
        nll_weight: weight of the refined-label NLL (0 gives plain cross-entropy).

    Returns:
        A dict with scalar ``loss``, ``group_loss``, ``ce_loss``; per-sample
        ``group_loss_per_sample`` and ``ce_loss_per_sample`` ``(n,)``; ``probabilities``
        ``X(T)`` and ``prior`` ``X(0)`` ``(n, m)``; ``similarity`` ``W`` ``(n, n)``.
    """
    v.check_floating("embeddings", embeddings)
    v.check_floating("logits", logits)
    zero_diagonal = v.check_bool("zero_diagonal", zero_diagonal)
    if embeddings.dim() != 2 or logits.dim() != 2 or embeddings.shape[0] != logits.shape[0]:
        raise ValueError(
            "embeddings (n, d) and logits (n, m) must have one row per sample, got "
            f"{tuple(embeddings.shape)} and {tuple(logits.shape)}"
        )
    dtype = torch.promote_types(
        torch.promote_types(embeddings.dtype, logits.dtype), torch.float32
    )
    W = pearson_similarity(
        widen_rows(embeddings, dtype), negatives=negatives, zero_diagonal=zero_diagonal
    )
    return refined_label_loss(
        W,
        logits.to(dtype),
        labels,
        anchors,
        temperature=temperature,
        num_iterations=num_iterations,
        ce_weight=ce_weight,
        nll_weight=nll_weight,
    )
