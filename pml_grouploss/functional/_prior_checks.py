"""Argument checks of the public label-side functions (:func:`~pml_grouploss.functional.
initial_assignment`, :func:`~pml_grouploss.functional.refined_label_loss`,
:func:`~pml_grouploss.functional.group_loss`). :class:`~pml_grouploss.losses.GroupLoss`
checks its inputs itself and calls the unchecked forms on its hot path."""
from __future__ import annotations

from typing import Optional, Tuple

import torch

from .. import _validation as v
from .anchors import as_anchor_mask


def check_class_range(name: str, labels: torch.Tensor, num_classes: int, columns: str) -> None:
    """``labels`` ``(n,)`` int64 lie in ``[0, num_classes)`` (one device read)."""
    if labels.numel():
        low, high = torch.stack(labels.aminmax()).tolist()
        if low < 0 or high >= num_classes:
            raise ValueError(
                f"{name} must lie in [0, {num_classes}) (the columns of {columns}), got values "
                f"in [{low}, {high}]"
            )


def check_prior_args(
    logits: torch.Tensor, labels: torch.Tensor, anchors: torch.Tensor, temperature: float
) -> Tuple[torch.Tensor, torch.Tensor]:
    """``(labels as int64 (n,), anchors as a bool mask (n,))`` after checking ``logits``
    ``(n, m)`` floating point, one integer label in ``[0, m)`` per row, anchor indices or a
    mask of the batch, ``temperature > 0``; a named ``TypeError``/``ValueError`` otherwise."""
    v.check_floating("logits", logits)
    if logits.dim() != 2 or logits.shape[0] == 0 or logits.shape[1] == 0:
        raise ValueError(f"logits must be (n, m) with n, m >= 1, got {tuple(logits.shape)}")
    n, m = logits.shape
    labels = v.check_class_ids("labels", labels)
    if tuple(labels.shape) != (n,):
        raise ValueError(f"labels must be ({n},), one per row of logits, got "
                         f"{tuple(labels.shape)}")
    mask = as_anchor_mask(anchors, n, name="anchors")
    v.check_number("temperature", temperature, minimum=0, strict_minimum=True,
                   hint="the papers use 24-79")
    check_class_range("labels", labels, m, "logits")
    return labels, mask


def check_loss_args(
    W: torch.Tensor,
    ce_logits: Optional[torch.Tensor],
    ce_labels: Optional[torch.Tensor],
    labels: torch.Tensor,
    ce_weight: float,
    nll_weight: float,
) -> Optional[torch.Tensor]:
    """The other arguments of ``refined_label_loss`` (``W`` floating point, the weights
    in ``[0, MAX_WEIGHT]``, the CE's logits ``(n, m')`` and labels in ``[0, m')``); returns the
    CE's labels as int64 (``None`` when they are ``labels``)."""
    v.check_floating("W", W)
    v.check_number("ce_weight", ce_weight, minimum=0, maximum=v.MAX_WEIGHT)
    v.check_number("nll_weight", nll_weight, minimum=0, maximum=v.MAX_WEIGHT)
    if ce_logits is None:
        if ce_labels is not None:
            raise ValueError("ce_labels needs ce_logits (the CE over other classes)")
        return None
    v.check_floating("ce_logits", ce_logits)
    n = labels.shape[0]
    if ce_logits.dim() != 2 or ce_logits.shape[0] != n or ce_logits.shape[1] == 0:
        raise ValueError(f"ce_logits must be ({n}, m') with m' >= 1, got "
                         f"{tuple(ce_logits.shape)}")
    if ce_labels is None:
        ce_labels = labels
    ce_labels = v.check_class_ids("ce_labels", ce_labels)
    if tuple(ce_labels.shape) != (n,):
        raise ValueError(f"ce_labels must be ({n},), got {tuple(ce_labels.shape)}")
    check_class_range("ce_labels", ce_labels, ce_logits.shape[1], "ce_logits")
    return ce_labels
