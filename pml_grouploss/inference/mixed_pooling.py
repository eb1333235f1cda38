"""Mixed global pooling as an ``nn.Module`` (Group Loss++ §4.2, eq. 13)."""

from __future__ import annotations

import torch

from ..functional.pooling import DEFAULT_ALPHA, check_alpha, mixed_pool2d


class MixedPooling(torch.nn.Module):
    """``alpha * maxpool(f) + (1 - alpha) * avgpool(f)`` over H, W (GL++ eq. 13).

    Drop-in for ``nn.AdaptiveAvgPool2d((1, 1))``: ``(N, C, H, W) -> (N, C, 1, 1)``. It has no
    parameters or buffers (``alpha`` is a plain attribute), so installing it never changes a
    model's ``state_dict`` keys. See :func:`install_mixed_pooling`.

    Args:
        alpha: weight of max pooling in [0, 1]; GL++ Table 7: 0.5 (CUB, default), 0.6 (Cars196,
            SOP), 0.9 (In-Shop).
    """

    def __init__(self, alpha: float = DEFAULT_ALPHA):
        super().__init__()
        self.alpha = check_alpha(alpha)

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        return mixed_pool2d(features, self.alpha)

    def extra_repr(self) -> str:
        return f"alpha={self.alpha}"
