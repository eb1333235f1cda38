"""The embedding side of the Group Loss with its default similarity, as one
``torch.autograd.Function``: the clamped Pearson similarity ``W`` (GL++ eq. 3, §3.4.1) and the
classifier's logits, sharing one pass of row scaling.

Composed from :func:`standardize_rows`, :func:`gram`, :func:`similarity_from_correlation`,
:func:`rms_normalize` and ``F.linear`` the same values take ~45 operations and six autograd
nodes; this takes ~25 and one (issue 10: per-call work dominates the loss at metric-learning
batch sizes). Under ``create_graph=True`` the forward formulas are differentiated with autograd.
"""
from __future__ import annotations

from typing import Optional, Tuple

import torch

from ._closed_form_backward import differentiable_backward
from .pearson import standardize_scaled
from .rms_normalize import rms_scaled, row_power_of_two


def _forward(x, weight, bias, zero_diagonal: bool, normalize: bool):
    """``(W, corr, logits, power, z, 1/||c||, y, sqrt(d)/||x/power||)``: the formulas."""
    power = row_power_of_two(x)
    scaled = x / power
    z, inverse_std = standardize_scaled(scaled)
    corr = z @ z.transpose(0, 1)
    corr.diagonal().fill_(1.0)  # self-similarity exactly 1 (its gradient is 0)
    W = torch.relu(corr)
    if zero_diagonal:  # (on a copy: relu's backward reads its output)
        W = W.clone()
        W.diagonal().fill_(0.0)
    y, inverse_rms = rms_scaled(scaled) if normalize else (x, None)
    logits = torch.nn.functional.linear(y, weight, bias)
    return W, corr, logits, power, z, inverse_std, y, inverse_rms


class _SimilarityAndLogits(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, weight, bias, zero_diagonal, normalize):
        W, corr, logits, power, z, inverse_std, y, inverse_rms = _forward(
            x, weight, bias, zero_diagonal, normalize)
        ctx.set_materialize_grads(False)  # an unused output's gradient stays None, not zeros
        ctx.flags = (zero_diagonal, normalize)
        ctx.save_for_backward(x, weight, bias, corr, power, z, inverse_std, y, inverse_rms)
        ctx.mark_non_differentiable(corr, power)
        return W, corr, logits, power

    @staticmethod
    def backward(ctx, grad_W, _grad_corr, grad_logits, _grad_power):
        x, weight, bias, corr, power, z, inverse_std, y, inverse_rms = ctx.saved_tensors
        if torch.is_grad_enabled():  # create_graph=True: autograd of the formulas
            return differentiable_backward(
                lambda x, w, b: _forward(x, w, b, *ctx.flags)[0:3:2], (x, weight, bias),
                ctx.needs_input_grad[:3], (grad_W, grad_logits)) + (None, None)
        need_x, need_weight, need_bias = ctx.needs_input_grad[:3]
        normalize = ctx.flags[1]
        grad_x = grad_weight = grad_bias = None
        grad_scaled = None  # with respect to x / power
        if grad_logits is not None:
            grad_weight = grad_logits.transpose(0, 1) @ y if need_weight else None
            grad_bias = grad_logits.sum(dim=0) if need_bias and bias is not None else None
            if need_x:
                grad_y = grad_logits @ weight
                if normalize:  # y = sqrt(d) s / ||s||: (g - y (y . g) / d) sqrt(d) / ||s||
                    along = (y * grad_y).sum(dim=1, keepdim=True) / y.shape[1]
                    grad_scaled = torch.addcmul(grad_y, y, along, value=-1).mul_(inverse_rms)
                else:
                    grad_x = grad_y
        if grad_W is not None and need_x:
            grad_corr = grad_W.masked_fill(corr <= 0, 0.0)  # relu; the diagonal is constant
            grad_corr.diagonal().zero_()
            grad_z = (grad_corr + grad_corr.transpose(0, 1)) @ z
            # z = P s / ||P s||: P (g - z (z . g)) / ||P s||, P the centring
            along = (z * grad_z).sum(dim=1, keepdim=True)
            centred = torch.addcmul(grad_z, z, along, value=-1).mul_(inverse_std)
            centred -= centred.mean(dim=1, keepdim=True)
            grad_scaled = centred if grad_scaled is None else grad_scaled.add_(centred)
        if grad_scaled is not None:
            grad_scaled = grad_scaled.div_(power)
            grad_x = grad_scaled if grad_x is None else grad_x.add_(grad_scaled)
        return grad_x, grad_weight, grad_bias, None, None


def pearson_similarity_and_logits(
    x: torch.Tensor,
    weight: torch.Tensor,
    bias: Optional[torch.Tensor],
    *,
    zero_diagonal: bool,
    normalize: bool,
) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """``(W, corr, logits, power)`` for embeddings ``x`` ``(n, d)`` and classifier rows
    ``weight`` ``(k, d)``, ``bias`` ``(k,)``: ``W`` ``(n, n)`` is
    ``similarity_from_correlation(pearson_correlation(x), "clamp", zero_diagonal)``, ``corr``
    ``(n, n)`` the correlations with diagonal 1, ``logits`` ``(n, k)``
    ``linear(rms_normalize(x) if normalize else x, weight, bias)``, ``power`` ``(n, 1)``
    :func:`row_power_of_two` of ``x`` (``corr`` and ``power`` carry no gradient)."""
    return _SimilarityAndLogits.apply(x, weight, bias, zero_diagonal, normalize)
