"""The shifted-similarity Group Loss (GL++ §3.4.1) under its own name."""
from __future__ import annotations

from .clamped_group_loss import _reject_negatives
from .group_loss import GroupLoss


class ShiftedGroupLoss(GroupLoss):
    """:class:`GroupLoss` with every similarity shifted up by the most negative one
    (``W - min(0, min W)``, the alternative GL++ §3.4.1 compares: CUB R@1 51 vs 65.5 with
    clamping). Same arguments except ``negatives``, same ``state_dict`` as ``GroupLoss``."""

    def __init__(self, num_classes: int, embedding_size: int, **kwargs):
        _reject_negatives(kwargs, "ShiftedGroupLoss")
        super().__init__(num_classes, embedding_size, negatives="shift", **kwargs)
