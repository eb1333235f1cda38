"""The classes present in a batch, for a prior restricted to them (Group Loss++ §8.3)."""
from __future__ import annotations

from typing import NamedTuple

import torch

from .._validation import check_bool


class BatchClasses(NamedTuple):
    """Result of :func:`batch_classes` for a batch of ``n`` labels.

    Attributes:
        classes: ``(n,)`` int64, the distinct labels in ascending order in the first ``k``
            slots; the remaining ``n - k`` padding slots repeat ``classes[0]``.
        targets: ``(n,)`` int64, the slot of each sample's label (``classes[targets] ==
            labels``).
        valid: ``(n,)`` bool, ``True`` for the ``k`` real slots.
    """

    classes: torch.Tensor
    targets: torch.Tensor
    valid: torch.Tensor


def batch_classes(labels: torch.Tensor, pad: bool = True) -> BatchClasses:
    """The distinct labels of a batch and each sample's slot among them, in ``n`` slots.

    What ``torch.unique(labels, return_inverse=True)`` returns, padded to the batch size
    (``pad=True``): ``torch.unique`` has a data-dependent output size and so reads the device
    (a CUDA synchronisation each step); ``n`` slots always suffice. A loss gathers the
    classifier rows ``W[classes]`` and masks the padding slots' logits to ``-inf``: the
    softmax over the slots is then the softmax over the batch's classes. The padding slots
    repeat a real class so that a sparse gradient touches only the batch's rows.
    ``pad=False`` returns the ``k`` slots of ``torch.unique`` (all valid): fewer columns,
    for tensors where a device read costs nothing (the CPU).

    Args:
        labels: ``(n,)`` integer class ids.
        pad: ``n`` slots without a device read (``True``) or exactly ``k``.

    Returns:
        :class:`BatchClasses`, on ``labels.device``.
    """
    labels = labels.reshape(-1).long()
    if not check_bool("pad", pad):
        classes, targets = torch.unique(labels, sorted=True, return_inverse=True)
        return BatchClasses(classes, targets, torch.ones_like(classes, dtype=torch.bool))
    n = labels.shape[0]
    sorted_labels, order = torch.sort(labels)
    is_new = torch.ones(n, dtype=torch.bool, device=labels.device)
    is_new[1:] = sorted_labels[1:] != sorted_labels[:-1]
    slot_of_sorted = torch.cumsum(is_new, dim=0) - 1
    targets = torch.empty_like(labels).scatter_(0, order, slot_of_sorted)
    # Every sorted label writes its own slot (equal labels write equal values); the padding
    # slots keep the smallest label, a real class of the batch.
    classes = sorted_labels[:1].expand(n).clone()
    classes = classes.scatter(0, slot_of_sorted, sorted_labels)
    num_classes = slot_of_sorted[-1:] + 1 if n else slot_of_sorted[:0]
    valid = torch.arange(n, device=labels.device) < num_classes
    return BatchClasses(classes, targets, valid)
