"""Choice of anchors: samples whose labels are revealed to the refinement (ECCV'20 §3.2)."""
from __future__ import annotations

from typing import Literal, Optional

import torch

from .. import _validation as v

AnchorSelection = Literal["first", "random"]
ANCHOR_SELECTIONS = ("first", "random")


def select_anchors(
    labels: torch.Tensor,
    num_anchors_per_class: int,
    selection: AnchorSelection = "first",
    generator: Optional[torch.Generator] = None,
) -> torch.Tensor:
    """Indices of the anchors of a batch.

    ``"first"`` takes the first ``k`` occurrences of every class in batch order, as the
    authors' ``get_labeled_and_unlabeled_points`` does (the randomness then comes from the
    sampler's batch order). ``"random"`` takes ``k`` random samples of every class, as the
    ECCV'20 paper describes ("randomly chosen samples"). A class with ``<= k`` samples has
    all of them as anchors; ``k = 0`` gives no anchors.

    Args:
        labels: ``(n,)`` integer class labels.
        num_anchors_per_class: ``k >= 0``.
        selection: ``"first"`` or ``"random"``.
        generator: random generator for ``"random"`` (on the CPU).

    Returns:
        ``(#anchors,)`` int64 indices into the batch, sorted ascending, on ``labels.device``
        (the nonzero entries of :func:`anchor_mask`: a device read on CUDA).
    """
    mask = anchor_mask(labels, num_anchors_per_class, selection, generator)
    return torch.nonzero(mask).reshape(-1)


def anchor_mask(
    labels: torch.Tensor,
    num_anchors_per_class: int,
    selection: AnchorSelection = "first",
    generator: Optional[torch.Generator] = None,
) -> torch.Tensor:
    """``(n,)`` boolean mask of the anchors :func:`select_anchors` chooses (same arguments).

    Computed without reading the device (no data-dependent shapes), so a loss on CUDA can
    use it every step without synchronising.
    """
    v.check_int("num_anchors_per_class", num_anchors_per_class, minimum=0)
    v.check_choice("selection", selection, ANCHOR_SELECTIONS)
    return _anchor_mask(labels, num_anchors_per_class, selection, generator)


def _anchor_mask(
    labels: torch.Tensor,
    k: int,
    selection: AnchorSelection,
    generator: Optional[torch.Generator],
) -> torch.Tensor:
    """:func:`anchor_mask` without the argument checks (for callers that checked them once)."""
    labels = labels.reshape(-1)
    n = labels.shape[0]
    device = labels.device
    if n == 0 or k == 0:
        return torch.zeros(n, dtype=torch.bool, device=device)
    order = None if selection == "first" else torch.randperm(n, generator=generator).to(device)
    permuted_labels = labels if order is None else labels[order]
    # Rank of each sample among the samples of its class, in `order`: its place in a stable
    # sort by label minus the place of its class's first sample there. Six operations on
    # (n,) tensors (the broadcast comparison of all pairs cost twice as much at n = 120, and
    # per-call cost dominates at the batch sizes of metric learning: issue 10).
    sorted_labels, sort_order = torch.sort(permuted_labels, stable=True)
    rank = torch.arange(n, device=device) - torch.searchsorted(sorted_labels, sorted_labels)
    first_k = torch.empty(n, dtype=torch.bool, device=device).scatter_(0, sort_order, rank < k)
    if order is None:
        return first_k
    return torch.empty_like(first_k).scatter_(0, order, first_k)


def anchor_indices(anchors: torch.Tensor, batch_size: int) -> torch.Tensor:
    """Anchor indices ``(a,)`` int64 from integer indices or a boolean mask ``(batch_size,)``.

    Raises a ``TypeError`` for floating-point indices (they would be truncated) and a
    ``ValueError`` for a mask of the wrong length or indices outside the batch.
    """
    mask = as_anchor_mask(anchors, batch_size)
    return torch.nonzero(mask).reshape(-1)


def as_anchor_mask(
    anchors: torch.Tensor, batch_size: int, check_range: bool = True,
    name: str = "indices_tuple[0]",
) -> torch.Tensor:
    """``(batch_size,)`` boolean mask from anchor indices ``(a,)`` or a mask (errors as
    :func:`anchor_indices`, naming the argument ``name``). ``check_range=False`` skips the one
    device read (the range of the indices); an index outside the batch then fails inside
    torch's scatter instead."""
    if not torch.is_tensor(anchors):
        anchors = torch.as_tensor(anchors)
    if anchors.dtype == torch.bool:
        if anchors.reshape(-1).shape[0] != batch_size:
            raise ValueError(
                f"{name} is a boolean mask of {anchors.numel()} entries; a mask "
                f"of anchors needs one entry per sample ({batch_size})"
            )
        return anchors.reshape(-1)
    if anchors.dtype.is_floating_point or anchors.is_complex():
        raise TypeError(
            f"{name} (anchor indices) must be integer indices or a boolean mask, "
            f"got dtype {anchors.dtype}; convert with .long()"
        )
    anchors = anchors.long().reshape(-1)
    if check_range and anchors.numel():
        low, high = torch.stack([anchors.min(), anchors.max()]).tolist()
        if low < 0 or high >= batch_size:
            raise ValueError(
                f"{name} (anchor indices) must index into the batch "
                f"[0, {batch_size}), got values in [{low}, {high}]"
            )
    mask = torch.zeros(batch_size, dtype=torch.bool, device=anchors.device)
    return mask.index_fill(0, anchors, True)
