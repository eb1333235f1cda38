"""Scale-free classifier input: each embedding rescaled to unit root-mean-square."""
from __future__ import annotations

import torch


def rms_normalize(x: torch.Tensor) -> torch.Tensor:
    """``sqrt(d) * x_i / ||x_i||`` for each row (L2 normalisation to norm ``sqrt(d)``).

    Every feature then has unit mean square, the scale of the unit-variance input that
    ``nn.Linear``'s initialisation assumes, so the logits of a freshly initialised classifier
    are O(1) whatever the trunk's output scale. The gradient is orthogonal to ``x_i``: a loss
    on these logits cannot push the trunk's output norm up (what makes cross-entropy on raw
    embeddings blow up the trunk at PML's example learning rates).

    Rows are first divided by the power of two at or below their largest magnitude (exact),
    so norms neither overflow at ~1e38 nor underflow; an all-zero row stays zero with a finite
    gradient.

    Args:
        x: ``(n, d)`` embeddings, floating point.

    Returns:
        ``(n, d)``, same dtype and device.
    """
    _, exponent = torch.frexp(x.detach().abs().amax(dim=1, keepdim=True))
    # max|x| = mantissa * 2**e with mantissa in [0.5, 1): divide by 2**(e-1), which is finite
    # even at float32's largest values (2**e would be 2**128 = inf); zero rows: e = 0.
    x = x / torch.ldexp(torch.ones_like(exponent, dtype=x.dtype), exponent - 1)
    norm = torch.linalg.vector_norm(x, dim=1, keepdim=True)
    nonzero = norm > 0
    safe_norm = torch.where(nonzero, norm, 1.0)
    return torch.where(nonzero, x * (x.shape[1] ** 0.5) / safe_norm, 0.0)
