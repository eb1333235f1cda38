"""The label side of the Group Loss as one ``torch.autograd.Function``: the prior ``log X(0)``,
the log-space replicator dynamics, the refined-label NLL and the auxiliary cross-entropy.

Autograd of these steps runs ~40 small operations; the closed-form backward below runs ~15
(issue 10: per-call work dominates the loss at metric-learning batch sizes). Under
``create_graph=True`` the forward formulas are differentiated with autograd instead.
"""
from __future__ import annotations

import math
from typing import NamedTuple, Optional, Tuple

import torch

from ._closed_form_backward import differentiable_backward
from .replicator import (
    _log_dynamics, _power_of_two_at_or_below_max, always_supported, log_dynamics_backward)

#: Added to the refined probabilities before the log, as the authors' training loop does.
LOG_EPSILON = 1e-12


def log_prior(
    logits: torch.Tensor,
    labels: torch.Tensor,
    anchors: torch.Tensor,
    temperature: float,
) -> torch.Tensor:
    """:func:`~pml_grouploss.functional.log_initial_assignment` without its argument checks
    (``(n, m)``; for callers that checked them)."""
    log_prior = torch.log_softmax(logits / temperature, dim=1)
    if anchors.dtype == torch.bool:
        is_anchor = anchors.view(-1, 1)
    elif anchors.numel() == 0:
        return log_prior
    else:
        is_anchor = torch.zeros(logits.shape[0], 1, dtype=torch.bool, device=logits.device)
        is_anchor[anchors] = True
    labels = labels.long().view(-1, 1)
    log_one_hot = torch.full_like(log_prior, -math.inf).scatter(1, labels, 0.0)
    return torch.where(is_anchor, log_one_hot, log_prior)


class _Forward(NamedTuple):
    nll: torch.Tensor  # (n,)
    ce: torch.Tensor  # (n,), zeros without the cross-entropy
    log_X0: torch.Tensor  # (n, m)
    log_XT: torch.Tensor  # (n, m)
    power: Optional[torch.Tensor]  # () the power of two W was divided by
    log_true: torch.Tensor  # (n, 1) log X(T) of the labels
    log_ce: Optional[torch.Tensor]  # (n, m) log_softmax(logits), with the cross-entropy
    steps: list  # the dynamics' saved tensors


def _forward(W, logits, labels, anchors, temperature, num_iterations, with_ce,
             unit_diagonal) -> _Forward:
    """The forward formulas; ``labels`` ``(n, 1)`` int64, ``anchors`` ``(n, 1)`` bool."""
    # The dynamics are invariant to the scale of W: divided by the power of two at or below its
    # largest entry (exact), which is 1 when that entry is known to lie in [1, 2).
    power = None if unit_diagonal else _power_of_two_at_or_below_max(W)
    log_X0 = log_prior(logits, labels, anchors, temperature)
    log_XT, steps = _log_dynamics(W if power is None else W / power, log_X0, num_iterations,
                                  always_supported(W, logits.shape[1], unit_diagonal))
    log_true = log_XT.gather(1, labels)
    nll = -torch.logaddexp(log_true, log_true.new_full((), math.log(LOG_EPSILON)))
    log_ce = torch.log_softmax(logits, dim=1) if with_ce else None
    ce = -log_ce.gather(1, labels) if with_ce else torch.zeros_like(nll)
    return _Forward(nll.squeeze(1), ce.squeeze(1), log_X0, log_XT, power, log_true, log_ce, steps)


class _RefinedLabels(torch.autograd.Function):
    @staticmethod
    def forward(ctx, W, logits, labels, anchors, temperature, num_iterations, with_ce,
                unit_diagonal):
        out = _forward(W, logits, labels, anchors, temperature, num_iterations, with_ce,
                       unit_diagonal)
        ctx.args = (temperature, num_iterations, with_ce, unit_diagonal)
        ctx.set_materialize_grads(False)  # an unused output's gradient stays None, not zeros
        ctx.save_for_backward(W, logits, labels, anchors, out.power, out.log_X0, out.log_true,
                              out.nll, out.log_ce, *out.steps)
        ctx.mark_non_differentiable(out.log_X0, out.log_XT)
        if not with_ce:
            ctx.mark_non_differentiable(out.ce)
        return out.nll, out.ce, out.log_X0, out.log_XT

    @staticmethod
    def backward(ctx, g_nll, g_ce, _g_log_X0, _g_log_XT):
        W, logits, labels, anchors, power, log_X0, log_true, nll, log_ce, *steps = (
            ctx.saved_tensors)
        temperature, num_iterations, with_ce, _ = ctx.args
        if torch.is_grad_enabled():  # create_graph=True: autograd of the formulas
            return differentiable_backward(
                lambda W, L: _forward(W, L, labels, anchors, *ctx.args)[:2], (W, logits),
                ctx.needs_input_grad[:2], (g_nll, g_ce if with_ce else None)) + (None,) * 6
        grad = torch.zeros_like(log_X0)
        if g_nll is not None:  # d/d log_true of -logaddexp(log_true, log eps)
            grad.scatter_(1, labels, g_nll.view(-1, 1) * -torch.exp(log_true + nll.view(-1, 1)))
        grad_W, grad = log_dynamics_backward(W if power is None else W / power, steps, grad,
                                             ctx.needs_input_grad[0])
        grad.masked_fill_(anchors, 0.0)  # the anchors' rows of X(0) are constants
        X0 = steps[0] if steps else torch.exp(log_X0)  # softmax(logits / T) off the anchors
        grad_logits = torch.addcmul(grad, X0, grad.sum(dim=1, keepdim=True), value=-1)
        grad_logits.div_(temperature)
        if with_ce and g_ce is not None:  # d/dlogits of -log_softmax(logits)[y]
            g_ce = g_ce.view(-1, 1)
            grad_logits.addcmul_(torch.exp(log_ce), g_ce).scatter_add_(1, labels, -g_ce)
        if grad_W is not None and power is not None:
            grad_W.div_(power)
        return grad_W, grad_logits, None, None, None, None, None, None


def refined_labels(
    W: torch.Tensor,
    logits: torch.Tensor,
    labels: torch.Tensor,
    anchors: torch.Tensor,
    temperature: float,
    num_iterations: int,
    with_ce: bool,
    unit_diagonal: bool = False,
) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """``(nll, ce, log X(0), log X(T))`` (``(n,)``, ``(n,)``, ``(n, m)``, ``(n, m)``) for ``W``
    ``(n, n)``, ``logits`` ``(n, m)``, ``labels`` ``(n,)`` int64 and ``anchors`` an ``(n,)``
    bool mask: ``nll_i = -log(X(T)_{i,y_i} + 1e-12)``, ``ce_i = CE(logits_i, y_i)`` (zeros
    unless ``with_ce``); the last two carry no gradient. ``unit_diagonal``: the caller
    guarantees ``W >= 0``, ``W_ii = 1`` and ``max W < 2`` (the clamped correlation with its
    diagonal kept): the power-of-two rescaling is then the identity and every row has support
    (:func:`~pml_grouploss.functional.replicator.always_supported`), so both are skipped."""
    return _RefinedLabels.apply(W, logits, labels.view(-1, 1), anchors.view(-1, 1),
                                temperature, num_iterations, with_ce, unit_diagonal)
