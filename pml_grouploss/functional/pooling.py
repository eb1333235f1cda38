"""Mixed global pooling (Group Loss++ §4.2, eq. 13)."""

from __future__ import annotations

import torch

from .._validation import check_floating, check_number

#: GL++ Table 7: alpha per dataset (CUB 0.5, Cars196 0.6, In-Shop 0.9, SOP 0.6).
DEFAULT_ALPHA = 0.5


def check_alpha(alpha: float) -> float:
    """Validate ``alpha`` (a float in [0, 1]) and return it as a float."""
    return check_number(
        "alpha", alpha, minimum=0.0, maximum=1.0, hint="1 = max pooling, 0 = average pooling"
    )


def mixed_pool2d(features: torch.Tensor, alpha: float = DEFAULT_ALPHA) -> torch.Tensor:
    """``alpha * maxpool(f) + (1 - alpha) * avgpool(f)`` over the spatial dims (GL++ eq. 13).

    Args:
        features: ``(N, C, H, W)`` feature maps, ``H, W >= 1`` (``ValueError`` otherwise).
        alpha: weight of max pooling in [0, 1]. Default 0.5 (GL++ Table 7, CUB).

    Returns:
        ``(N, C, 1, 1)`` (the shape of ``nn.AdaptiveAvgPool2d((1, 1))``), dtype and device of
        the input. ``alpha = 0`` is exactly average pooling and ``alpha = 1`` exactly max pooling.
    """
    alpha = check_alpha(alpha)
    check_floating("features", features)
    if features.dim() != 4:
        raise ValueError(f"features must be (N, C, H, W), got shape {tuple(features.shape)}")
    if features.shape[2] == 0 or features.shape[3] == 0:
        raise ValueError(
            f"features must have a non-empty spatial map (H, W >= 1), got shape "
            f"{tuple(features.shape)}; the input image is too small for the backbone's stride"
        )
    avg = torch.mean(features, dim=(2, 3), keepdim=True)
    if alpha == 0.0:
        return avg
    mx = torch.amax(features, dim=(2, 3), keepdim=True)
    if alpha == 1.0:
        return mx
    return alpha * mx + (1.0 - alpha) * avg
