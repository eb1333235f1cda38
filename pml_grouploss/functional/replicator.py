"""Replicator dynamics over a similarity matrix (Group Loss++ eq. 4-11)."""
from __future__ import annotations

import math
from typing import List

import torch

from .. import _validation as v
from ._closed_form_backward import differentiable_backward

#: The largest number of replicator steps accepted (each costs O(n^2 m); the papers use 1-3).
MAX_ITERATIONS = 1000


def replicator_step(W: torch.Tensor, X: torch.Tensor) -> torch.Tensor:
    """One step of the multi-population replicator dynamics (GL++ eq. 6-8).

    ``Pi = W X`` (eq. 4-5), ``x_il <- x_il pi_il / sum_m x_im pi_im`` (eq. 6), i.e.
    ``X <- Q^-1 (X ⊙ Pi)`` with ``Q = diag((X ⊙ Pi) 1)`` (eq. 7-8).

    The step is invariant to the scale of ``W``, so ``W`` is first divided by the power of two
    at or below its largest magnitude: dividing by a power of two is exact, so values
    and gradients are bit-identical to the unscaled step whenever that one neither overflows nor
    underflows. A row whose support ``(X ⊙ Pi) 1`` is then below the dtype's rounding level
    (zero when a zeroed diagonal isolates a sample; ~1e-164 when a saturated prior disagrees
    with all its neighbours) carries no information to update on: it is left unchanged.
    Normalising such a row would be 0/0, or would overflow the quotient rule's
    ``num / support**2`` in backward and turn ``inf * 0`` into NaN gradients.

    Args:
        W: ``(n, n)`` similarities, non-negative for the simplex guarantees.
        X: ``(n, m)`` row-stochastic assignment matrix.

    Returns:
        ``(n, m)`` updated assignment matrix.
    """
    W = _scale_by_power_of_two(W)
    numerator = X * (W @ X)
    support = numerator.sum(dim=1, keepdim=True)
    has_support = support > torch.finfo(support.dtype).eps
    safe_support = torch.where(has_support, support, 1.0)
    return torch.where(has_support, numerator / safe_support, X)


def log_replicator_step(W: torch.Tensor, log_X: torch.Tensor) -> torch.Tensor:
    """:func:`replicator_step` on ``log X``: ``log x_il + log pi_il - log sum_m x_im pi_im``.

    The same map (values agree to rounding), computed where it cannot underflow: as ``X(t)``
    concentrates over many steps its losing entries shrink geometrically (below float32's
    1e-38 after ~15 steps), and the quotient rule's gradient with respect to them grows by
    the inverse factor until it overflows to inf and NaN. In log space the losing entries are
    large negative numbers, and every local derivative is a ratio in ``[0, 1]``. ``pi = W X``
    is floored at the dtype's smallest normal number before its log (a zero payoff, e.g. an
    isolated class, sends no gradient). Rows without support are left unchanged, as in
    :func:`replicator_step`.

    Args:
        W: ``(n, n)`` non-negative similarities.
        log_X: ``(n, m)`` log of a row-stochastic matrix (``-inf`` allowed: one-hot rows).

    Returns:
        ``(n, m)`` ``log X(t+1)``.
    """
    return log_replicator_dynamics(W, log_X, 1)


def log_replicator_dynamics(
    W: torch.Tensor, log_X: torch.Tensor, num_iterations: int
) -> torch.Tensor:
    """``log X(T)`` after ``num_iterations`` :func:`log_replicator_step` steps from ``log X(0)``.

    What :class:`~pml_grouploss.losses.GroupLoss` uses: finite values and gradients for any
    ``T`` in float32 (``exp`` of the result equals :func:`replicator_dynamics` to rounding).
    The backward pass is written out (per step: ``g_N = g - X(t+1) sum(g)`` on supported
    rows, ``g_Pi = g_N / Pi``, ``g_W += g_Pi X(t)^T``, ``g <- g_N + (W^T g_Pi) ⊙ X(t)``;
    ``create_graph=True`` differentiates the steps with autograd instead).

    Args:
        W: ``(n, n)``; log_X: ``(n, m)`` ``log X(0)``; num_iterations: ``T >= 0``.

    Returns:
        ``(n, m)``.
    """
    check_dynamics_args(W, log_X, num_iterations)
    if not num_iterations:
        return log_X
    # scaled once: the step is invariant to the scale of W
    return _LogReplicatorDynamics.apply(_scale_by_power_of_two(W), log_X, num_iterations)


def _log_dynamics(W: torch.Tensor, log_X: torch.Tensor, num_iterations: int,
                  supported: bool = False):
    """``log X(T)`` on an already scaled ``W``, and per step ``[X(t), W X(t), no support (None
    if ``supported``), log X(t+1)]`` for the backward pass. ``supported``: the caller
    guarantees that every row has support above ``eps`` (:func:`always_supported`), so the
    guard for rows without support is skipped (the same values: it would select nothing)."""
    tiny = torch.finfo(W.dtype).tiny
    log_eps = math.log(torch.finfo(W.dtype).eps)
    saved = []
    for _ in range(num_iterations):
        X = torch.exp(log_X)
        payoff = W @ X
        log_numerator = log_X + torch.log(torch.clamp(payoff, min=tiny))
        log_support = torch.logsumexp(log_numerator, dim=1, keepdim=True)
        if supported:
            no_support = None
            log_X = log_numerator - log_support
        else:
            no_support = log_support <= log_eps
            # (masked_fill: cheaper than where with a Python scalar; -inf support would be NaN)
            safe_log_support = log_support.masked_fill(no_support, 0.0)
            log_X = torch.where(no_support, log_X, log_numerator - safe_log_support)
        saved += [X, payoff, no_support, log_X]
    return log_X, saved


def always_supported(W: torch.Tensor, num_classes: int, unit_diagonal: bool) -> bool:
    """Host-side: with ``W >= 0`` and ``W_ii = 1`` (``unit_diagonal``) every row of every step
    has support ``sum_l x_il (W X)_il >= sum_l x_il^2 >= 1/m`` for row-stochastic ``X`` over
    ``m = num_classes`` columns, far above ``eps`` when ``m eps < 1/2``."""
    return unit_diagonal and num_classes * torch.finfo(W.dtype).eps < 0.5


class _LogReplicatorDynamics(torch.autograd.Function):
    # Hand-written backward: per-call work dominates GroupLoss at small batches (issue 10).
    @staticmethod
    def forward(ctx, W: torch.Tensor, log_X: torch.Tensor, num_iterations: int) -> torch.Tensor:
        log_XT, saved = _log_dynamics(W, log_X, num_iterations)
        ctx.num_iterations = num_iterations
        ctx.save_for_backward(W, log_X, *saved)
        return log_XT

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        W, log_X0, *saved = ctx.saved_tensors
        if torch.is_grad_enabled():
            return differentiable_backward(
                lambda W, L: _log_dynamics(W, L, ctx.num_iterations)[0], (W, log_X0),
                ctx.needs_input_grad[:2], grad) + (None,)
        grad_W, grad = log_dynamics_backward(W, saved, grad, ctx.needs_input_grad[0])
        return grad_W, grad, None


def log_dynamics_backward(W: torch.Tensor, saved, grad: torch.Tensor, needs_grad_W: bool):
    """``(d/dW, d/d log X(0))`` of :func:`_log_dynamics` on the scaled ``W``, from its ``saved``
    per-step tensors and ``grad`` ``(n, m)`` with respect to ``log X(T)`` (``d/dW`` is ``None``
    unless ``needs_grad_W``). Per step: ``g_N = g - X(t+1) sum(g)`` on supported rows,
    ``g_Pi = g_N / Pi``, ``g_W += g_Pi X(t)^T``, ``g <- g_N + (W^T g_Pi) ⊙ X(t)``."""
    tiny = torch.finfo(W.dtype).tiny
    grad_W = None
    for t in reversed(range(len(saved) // 4)):
        X, payoff, no_support, log_X_next = saved[4 * t: 4 * t + 4]
        # d/dN of N - logsumexp(N) on supported rows: g - softmax(N) sum(g)
        grad_numerator = torch.addcmul(
            grad, torch.exp(log_X_next), grad.sum(dim=1, keepdim=True), value=-1
        )
        if no_support is not None:
            grad_numerator.masked_fill_(no_support, 0.0)
        grad_payoff = (grad_numerator / payoff).masked_fill_(payoff < tiny, 0.0)
        if needs_grad_W:
            grad_W = (grad_payoff @ X.transpose(0, 1) if grad_W is None
                      else grad_W.addmm_(grad_payoff, X.transpose(0, 1)))
        if no_support is not None:
            grad_numerator = torch.where(no_support, grad, grad_numerator)
        grad = grad_numerator.addcmul_(W.transpose(0, 1) @ grad_payoff, X)
    if needs_grad_W and grad_W is None:  # T = 0
        grad_W = torch.zeros_like(W)
    return grad_W, grad


def replicator_dynamics(
    W: torch.Tensor, X: torch.Tensor, num_iterations: int
) -> torch.Tensor:
    """Refine soft labels ``X`` over the similarity ``W`` for ``num_iterations`` steps.

    Implements GL++ eq. 4-8 (ECCV'20 Algorithm 1, "refinement"). Rows that start one-hot
    (anchors) stay one-hot. With ``W >= 0`` every row stays on the probability simplex and
    the consistency :func:`consistency` never decreases (GL++ eq. 9-11, Baum-Eagon).
    Fully differentiable; ``num_iterations = 0`` returns ``X`` unchanged.

    Args:
        W: ``(n, n)`` similarity matrix.
        X: ``(n, m)`` initial assignment ``X(0)``.
        num_iterations: number of steps ``T >= 0``.

    Returns:
        ``(n, m)`` the refined assignment ``X(T)``.
    """
    return replicator_history(W, X, num_iterations)[-1]


def replicator_history(
    W: torch.Tensor, X: torch.Tensor, num_iterations: int
) -> List[torch.Tensor]:
    """``[X(0), X(1), ..., X(T)]`` of :func:`replicator_dynamics` (each ``(n, m)``)."""
    check_dynamics_args(W, X, num_iterations)
    history = [X]
    for _ in range(num_iterations):
        X = replicator_step(W, X)
        history.append(X)
    return history


def _scale_by_power_of_two(W: torch.Tensor) -> torch.Tensor:
    """``W / 2**(e-1)``, the power of two at or below ``max|W|`` (exact; 0 -> W / 0.5)."""
    return W / _power_of_two_at_or_below_max(W)


def _power_of_two_at_or_below_max(W: torch.Tensor) -> torch.Tensor:
    """``2**(e-1)`` ``()`` for ``max|W| = mantissa * 2**e``, mantissa in ``[0.5, 1)``; ``2**e``
    itself would be ``inf`` for float32 values above ``2**127``."""
    _, exponent = torch.frexp(W.detach().abs().amax())
    return torch.ldexp(torch.ones((), dtype=W.dtype, device=W.device), exponent - 1)


def check_dynamics_args(W: torch.Tensor, X: torch.Tensor, num_iterations: int) -> None:
    """Host-side checks (shapes, ``num_iterations``), once per public call, not per step."""
    v.check_int("num_iterations", num_iterations, minimum=0, maximum=MAX_ITERATIONS,
                hint="the papers use 1-3")
    if W.dim() != 2 or W.shape[0] != W.shape[1] or W.shape[0] != X.shape[0]:
        raise ValueError(
            f"W must be (n, n) and X (n, m) with the same n; got W {tuple(W.shape)} "
            f"and X {tuple(X.shape)}"
        )


def consistency(W: torch.Tensor, X: torch.Tensor) -> torch.Tensor:
    """Consistency functional ``F(X) = sum_ij sum_l w_ij x_il x_jl`` (GL++ eq. 9).

    Args:
        W: ``(n, n)``.
        X: ``(n, m)``.

    Returns:
        scalar tensor.
    """
    check_dynamics_args(W, X, 0)
    return (X * (W @ X)).sum()
