"""Scale-free classifier input: each embedding rescaled to unit root-mean-square."""
from __future__ import annotations

from typing import Tuple

import torch

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
    gradient. The backward pass is the closed form ``sqrt(d) (g - y (y . g) / d) / ||x||``
    (``create_graph=True`` differentiates the forward formula with autograd instead).

    Args:
        x: ``(n, d)`` embeddings, floating point.

    Returns:
        ``(n, d)``, same dtype and device.
    """
    return _RmsNormalize.apply(x)


def _rms_normalize(x: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
    """``(y, sqrt(d) / ||x||)`` of :func:`rms_normalize` (0 for zero rows)."""
    _, exponent = torch.frexp(x.detach().abs().amax(dim=1, keepdim=True))
    # max|x| = mantissa * 2**e with mantissa in [0.5, 1): divide by 2**(e-1), which is finite
    # even at float32's largest values (2**e would be 2**128 = inf); zero rows: e = 0.
    power = torch.ldexp(torch.ones_like(exponent, dtype=x.dtype), exponent - 1)
    x = x / power
    norm = torch.linalg.vector_norm(x, dim=1, keepdim=True)
    # 0 for zero rows, whose denominator is 1 so that autograd of this formula has no 0 * inf
    # (n x 1 operations; ``norm * power`` would overflow at ~1e38)
    zero = norm == 0
    inverse = (x.shape[1] ** 0.5 / norm.masked_fill(zero, 1.0)).masked_fill(zero, 0.0)
    return x * inverse, inverse / power


def _rms_normalize_backward(y: torch.Tensor, factor: torch.Tensor, grad: torch.Tensor):
    along = (y * grad).sum(dim=1, keepdim=True) / y.shape[1]
    return torch.addcmul(grad, y, along, value=-1).mul_(factor)


# Hand-written backward: per-call work dominates GroupLoss at small batches (issue 10).
_RmsNormalize = row_map_function(_rms_normalize, _rms_normalize_backward, "_RmsNormalize")
