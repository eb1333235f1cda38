"""Scale-free classifier input: each embedding rescaled to unit root-mean-square."""
from __future__ import annotations

from typing import Tuple

import torch

from .._validation import check_rows
from ._closed_form_backward import row_map_function


def rms_normalize(x: torch.Tensor) -> torch.Tensor:
    """``sqrt(d) * x_i / ||x_i||`` for each row (L2 normalisation to norm ``sqrt(d)``).

    Every feature then has unit mean square, the scale of the unit-variance input that
    ``nn.Linear``'s initialisation assumes, so the logits of a freshly initialised classifier
    are O(1) whatever the trunk's output scale. The gradient is orthogonal to ``x_i``: a loss
    on these logits cannot push the trunk's output norm up (what makes cross-entropy on raw
    embeddings blow up the trunk at PML's example learning rates).

    Rows are first divided by the power of two at or below their largest magnitude (exact),
    so norms neither overflow at ~1e38 nor underflow; an all-zero row stays zero with a finite
    gradient. A row too small for a finite gradient (it grows as ``1/||x_i||``: largest
    magnitude subnormal in ``x``'s dtype, or within ~``1/eps`` of it, see
    :func:`zero_overflowing_rows`) becomes a zero row too. The backward pass is the closed
    form ``sqrt(d) (g - y (y . g) / d) / ||x||``
    (``create_graph=True`` differentiates the forward formula with autograd instead).

    Args:
        x: ``(n, d)`` embeddings, floating point.

    Returns:
        ``(n, d)``, same dtype and device.
    """
    check_rows("x", x)
    return _RmsNormalize.apply(x)


def row_power_of_two(x: torch.Tensor) -> torch.Tensor:
    """``(n, 1)``: for each row of ``x`` ``(n, d)`` the power of two ``2**(e-1)`` at or below its
    largest magnitude (``max|x_i| = mantissa * 2**e``, mantissa in ``[0.5, 1)``; zero rows: 0.5).

    Dividing by it is exact and brings the row's largest magnitude into ``[1, 2)``, where
    squares and norms neither overflow (at ~1e38) nor underflow; ``2**(e-1)`` is finite even at
    float32's largest values (``2**e`` would be ``2**128 = inf``)."""
    # (abs().amax(): torch's vector_norm with ord=inf is ~13x slower on CPU)
    _, exponent = torch.frexp(x.detach().abs().amax(dim=1, keepdim=True))
    return torch.ldexp(torch.ones_like(exponent, dtype=x.dtype), exponent - 1)


def rms_scaled(xs: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
    """``(y, sqrt(d) / ||xs||)`` for rows already divided by :func:`row_power_of_two` (0 for
    zero rows, whose denominator is 1 so that autograd of this formula has no 0 * inf)."""
    norm = torch.linalg.vector_norm(xs, dim=1, keepdim=True)
    zero = norm == 0
    inverse = (xs.shape[1] ** 0.5 / norm.masked_fill(zero, 1.0)).masked_fill(zero, 0.0)
    return xs * inverse, inverse


def zero_overflowing_rows(
    y: torch.Tensor, factor: torch.Tensor, power: torch.Tensor
) -> Tuple[torch.Tensor, torch.Tensor]:
    """``(y, factor)`` of a scale-free row map (``factor`` ``(n, 1)``: its gradient's scale, 1
    over the row's size; ``power``: :func:`row_power_of_two` of the input) with the rows too
    small for a finite gradient set to zero rows (``y`` and ``factor`` 0), as constant rows
    are: no ``0 * inf`` in the backward. NaN rows stay NaN.

    Too small: largest magnitude subnormal, or ``factor`` above ``max * eps / (2 (1 +
    sqrt(d)))`` (``finfo`` of the dtype). The closed-form backwards multiply ``factor`` by at
    most ``2 (1 + sqrt(d))`` times the largest incoming gradient entry, so every other row's
    gradient stays finite for incoming gradients up to ``1 / eps`` (``2**23`` in float32: a
    Gram matrix's and a loss's sums over the batch). Only rows within a factor ``~1 / eps`` of
    the smallest normal are affected (float32: largest magnitude below ~1e-31)."""
    finfo = torch.finfo(power.dtype)
    largest_factor = finfo.max * finfo.eps / (2.0 * (1.0 + y.shape[1] ** 0.5))
    degenerate = (power < finfo.tiny).logical_or_(factor > largest_factor)
    return y.masked_fill(degenerate, 0.0), factor.masked_fill(degenerate, 0.0)


def _rms_normalize(x: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
    """``(y, sqrt(d) / ||x||)`` of :func:`rms_normalize` (0 for zero rows)."""
    power = row_power_of_two(x)
    y, inverse = rms_scaled(x / power)
    return zero_overflowing_rows(y, inverse / power, power)


def _rms_normalize_backward(y: torch.Tensor, factor: torch.Tensor, grad: torch.Tensor):
    along = (y * grad).sum(dim=1, keepdim=True) / y.shape[1]
    return torch.addcmul(grad, y, along, value=-1).mul_(factor)


# Hand-written backward: per-call work dominates GroupLoss at small batches (issue 10).
_RmsNormalize = row_map_function(_rms_normalize, _rms_normalize_backward, "_RmsNormalize")
