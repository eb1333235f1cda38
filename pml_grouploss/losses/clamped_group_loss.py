"""The clamped-similarity Group Loss (GL++ §3.4.1) under its own name."""
from __future__ import annotations

from .group_loss import GroupLoss


class ClampedGroupLoss(GroupLoss):
    """:class:`GroupLoss` with negative similarities clamped to 0 (``W = max(W, 0)``, GL++
    §3.4.1, the papers' and the authors' choice). Same arguments except ``negatives``, same
    ``state_dict``: ``GroupLoss(...).load_state_dict(ClampedGroupLoss(...).state_dict())``
    works both ways."""

    def __init__(self, num_classes: int, embedding_size: int, **kwargs):
        _reject_negatives(kwargs, "ClampedGroupLoss")
        super().__init__(num_classes, embedding_size, negatives="clamp", **kwargs)


def _reject_negatives(kwargs: dict, name: str) -> None:
    if "negatives" in kwargs:
        raise TypeError(
            f"{name} fixes negatives; use GroupLoss(negatives=...) to choose it"
        )
