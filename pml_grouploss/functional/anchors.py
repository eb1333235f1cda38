"""Choice of anchors: samples whose labels are revealed to the refinement (ECCV'20 §3.2)."""
from __future__ import annotations

from typing import Literal, Optional

import torch

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
        ``(#anchors,)`` int64 indices into the batch, sorted ascending, on ``labels.device``.
    """
    if isinstance(num_anchors_per_class, bool) or not isinstance(num_anchors_per_class, int):
        raise TypeError(
            "num_anchors_per_class must be an int, got "
            f"{type(num_anchors_per_class).__name__}"
        )
    if num_anchors_per_class < 0:
        raise ValueError(
            f"num_anchors_per_class must be >= 0, got {num_anchors_per_class}"
        )
    if selection not in ANCHOR_SELECTIONS:
        raise ValueError(
            f"selection must be one of {ANCHOR_SELECTIONS}, got {selection!r}"
        )
    labels = labels.reshape(-1)
    n = labels.shape[0]
    device = labels.device
    if n == 0 or num_anchors_per_class == 0:
        return torch.empty(0, dtype=torch.long, device=device)
    if selection == "first":
        order = torch.arange(n, device=device)
    else:
        order = torch.randperm(n, generator=generator).to(device)
    # Rank of each sample among the samples of its class, in `order`: a stable sort by
    # label keeps `order` within each class.
    permuted_labels = labels[order]
    by_label = torch.sort(permuted_labels, stable=True).indices
    sorted_labels = permuted_labels[by_label]
    positions = torch.arange(n, device=device)
    is_start = torch.ones(n, dtype=torch.bool, device=device)
    is_start[1:] = sorted_labels[1:] != sorted_labels[:-1]
    start_of_run = torch.cummax(torch.where(is_start, positions, 0), dim=0).values
    rank = positions - start_of_run
    chosen = order[by_label[rank < num_anchors_per_class]]
    return torch.sort(chosen).values


def anchor_indices(anchors: torch.Tensor, batch_size: int) -> torch.Tensor:
    """Anchor indices ``(a,)`` int64 from integer indices or a boolean mask ``(batch_size,)``.

    Raises a ``TypeError`` for floating-point indices (they would be truncated) and a
    ``ValueError`` for a mask of the wrong length or indices outside the batch.
    """
    if not torch.is_tensor(anchors):
        anchors = torch.as_tensor(anchors)
    if anchors.dtype == torch.bool:
        if anchors.reshape(-1).shape[0] != batch_size:
            raise ValueError(
                f"indices_tuple[0] is a boolean mask of {anchors.numel()} entries; a mask "
                f"of anchors needs one entry per sample ({batch_size})"
            )
        return torch.nonzero(anchors.reshape(-1)).reshape(-1)
    if anchors.dtype.is_floating_point or anchors.is_complex():
        raise TypeError(
            f"indices_tuple[0] (anchor indices) must be integer indices or a boolean mask, "
            f"got dtype {anchors.dtype}; convert with .long()"
        )
    anchors = anchors.long().reshape(-1)
    if anchors.numel() and (anchors.min() < 0 or anchors.max() >= batch_size):
        raise ValueError(
            "indices_tuple[0] (anchor indices) must index into the batch "
            f"[0, {batch_size}), got values in [{int(anchors.min())}, {int(anchors.max())}]"
        )
    return anchors
