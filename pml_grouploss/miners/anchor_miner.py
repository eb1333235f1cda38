"""Anchor selection for GroupLoss as a PML miner."""
from __future__ import annotations

from typing import Optional, Tuple

import torch
from pytorch_metric_learning.miners import BaseMiner

from ..functional.anchors import AnchorSelection, select_anchors


class AnchorMiner(BaseMiner):
    """Chooses the anchors of a batch for :class:`~pml_grouploss.losses.GroupLoss`.

    Anchors are samples whose prior is replaced by the one-hot vector of their label before
    the refinement (ECCV'20 §3.2). ``mine`` returns a 1-tuple ``(anchor_indices,)`` that a
    PML trainer passes to the loss as ``indices_tuple``.

    Args:
        num_anchors_per_class: anchors per class (ECCV'20 reference: 2 for CUB and SOP,
            3 for Cars196). A class with fewer samples has all of them as anchors.
        selection: ``"first"`` (first samples of each class in batch order, as the authors'
            code) or ``"random"`` (random samples, as the paper describes).
        seed: seed of the generator used by ``"random"`` (``None``: torch's global RNG).
    """

    def __init__(
        self,
        num_anchors_per_class: int = 2,
        selection: AnchorSelection = "first",
        seed: Optional[int] = None,
        **kwargs,
    ):
        super().__init__(**kwargs)
        # validate eagerly, with the functional's messages
        select_anchors(torch.zeros(1, dtype=torch.long), num_anchors_per_class, selection)
        self.num_anchors_per_class = num_anchors_per_class
        self.selection = selection
        self.generator = None
        if seed is not None:
            self.generator = torch.Generator()
            self.generator.manual_seed(seed)
        self.add_to_recordable_attributes(name="num_anchors_per_class", is_stat=False)
        self.add_to_recordable_attributes(name="num_anchors", is_stat=True)

    def mine(
        self,
        embeddings: torch.Tensor,
        labels: torch.Tensor,
        ref_emb: torch.Tensor,
        ref_labels: torch.Tensor,
    ) -> Tuple[torch.Tensor]:
        if ref_emb is not embeddings:
            raise ValueError(
                "AnchorMiner chooses anchors inside one batch; ref_emb is not supported"
            )
        return (
            select_anchors(
                labels, self.num_anchors_per_class, self.selection, self.generator
            ),
        )

    def output_assertion(self, output: Tuple[torch.Tensor]) -> None:
        if len(output) != 1:
            raise TypeError(
                f"AnchorMiner must return a 1-tuple of anchor indices, got {len(output)}"
            )
        if self.collect_stats:
            self.num_anchors = len(output[0])
