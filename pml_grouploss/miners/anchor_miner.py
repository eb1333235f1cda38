"""Anchor selection for GroupLoss as a PML miner."""

from __future__ import annotations

import sys
from typing import Iterator, Optional, Tuple

import torch
from pytorch_metric_learning.miners import BaseMiner

from .. import _validation as v
from ..functional.anchors import AnchorSelection, select_anchors

_PML_PACKAGE = "pytorch_metric_learning"

NOT_PAIRS_MESSAGE = (
    "AnchorMiner's output is the 1-tuple (anchor_indices,) of "
    "pml_grouploss.losses.GroupLoss, not pairs or triplets, and a pytorch_metric_learning "
    "loss or miner tried to read it as such. Give AnchorMiner to GroupLoss only: in "
    "MultipleLosses pass one miner per loss, e.g. MultipleLosses([GroupLoss(...), "
    "TripletMarginLoss()], miners=[AnchorMiner(), None]), instead of one tuple_miner shared "
    "by all the losses (see docs/losses.md, 'PML features')"
)


class AnchorIndices(tuple):
    """The 1-tuple ``(anchor_indices,)`` returned by :class:`AnchorMiner`.

    A plain ``tuple`` in every respect (``len`` 1, ``[0]`` the ``(a,)`` int64 tensor of
    anchor indices, equality, pickling), except that *iterating* it from inside
    ``pytorch_metric_learning`` raises a ``TypeError`` that says what to do. PML code iterates
    an ``indices_tuple`` only to read it as pairs, triplets or per-sample weights (``a, p, n =
    indices_tuple`` in ``convert_to_pairs``, ``torch.cat(indices_tuple)`` in
    ``convert_to_weights``): without this a PML loss given AnchorMiner's output fails with
    "not enough values to unpack" (``TripletMarginLoss``, ``ContrastiveLoss``) or silently
    trains on the anchors only (``ProxyAnchorLoss`` weights the samples by it). GroupLoss,
    PML's trainers and wrappers, :class:`~pml_grouploss.losses.ParametricDistributedLossWrapper`
    and user code index or iterate it normally.
    """

    __slots__ = ()

    def __new__(cls, anchors: torch.Tensor) -> "AnchorIndices":
        return super().__new__(cls, (anchors,))

    def __getnewargs__(self) -> Tuple[torch.Tensor]:
        return (self[0],)

    def __iter__(self) -> Iterator[torch.Tensor]:
        caller = sys._getframe(1).f_globals.get("__name__", "")
        if caller == _PML_PACKAGE or caller.startswith(_PML_PACKAGE + "."):
            raise TypeError(NOT_PAIRS_MESSAGE)
        return super().__iter__()


class AnchorMiner(BaseMiner):
    """Chooses the anchors of a batch for :class:`~pml_grouploss.losses.GroupLoss`.

    Anchors are samples whose prior is replaced by the one-hot vector of their label before
    the refinement (ECCV'20 §3.2). ``mine`` returns a 1-tuple ``(anchor_indices,)`` (an
    :class:`AnchorIndices`) that a PML trainer passes to the loss as ``indices_tuple``; the
    indices point into ``embeddings``. ``ref_emb``/``ref_labels`` are not used: with
    ``TwoStreamMetricLoss`` (which calls the miner with the second stream as ``ref_emb``) the
    anchors are chosen in the first stream, which comes first in the batch the trainer gives
    the loss. Only GroupLoss reads this output: a PML loss given it raises a ``TypeError``
    saying to pass one miner per loss in ``MultipleLosses``.

    Counters, as PML's miners set ``num_triplets``/``num_pos_pairs``: after every call
    ``num_anchors`` (anchors chosen) and ``num_non_anchors`` (the other samples of the batch)
    hold the last batch's counts; with ``collect_stats=True`` (or PML's global
    ``COLLECT_STATS``) they are also registered as stats, so record-keeper logs them and
    ``reset_stats`` zeroes them.

    Args:
        num_anchors_per_class: anchors per class (ECCV'20 reference: 2 for CUB and SOP,
            3 for Cars196). A class with fewer samples has all of them as anchors.
        selection: ``"first"`` (first samples of each class in batch order, as the authors'
            code) or ``"random"`` (random samples, as the paper describes).
        seed: seed of the generator used by ``"random"`` (``None``: torch's global RNG).
        **kwargs: PML's ``collect_stats`` (and ``distance``, unused).
    """

    def __init__(
        self,
        num_anchors_per_class: int = 2,
        selection: AnchorSelection = "first",
        seed: Optional[int] = None,
        **kwargs,
    ):
        if kwargs.get("collect_stats") is not None:  # None: PML's global COLLECT_STATS
            v.check_bool("collect_stats", kwargs["collect_stats"])
        super().__init__(**kwargs)
        # validate eagerly, with the functional's messages
        select_anchors(torch.zeros(1, dtype=torch.long), num_anchors_per_class, selection)
        self.num_anchors_per_class = num_anchors_per_class
        self.selection = selection
        self.generator = v.seeded_generator("seed", seed)
        self._batch_size = 0
        self.add_to_recordable_attributes(name="num_anchors_per_class", is_stat=False)
        self.add_to_recordable_attributes(
            list_of_names=["num_anchors", "num_non_anchors"], is_stat=True
        )

    def forward(self, embeddings, labels, ref_emb=None, ref_labels=None) -> AnchorIndices:
        """PML's ``BaseMiner.forward`` after checking that ``labels`` are integer class ids
        (as GroupLoss takes them)."""
        v.check_class_ids("labels", labels)
        return super().forward(embeddings, labels, ref_emb, ref_labels)

    def mine(
        self,
        embeddings: torch.Tensor,
        labels: torch.Tensor,
        ref_emb: torch.Tensor,
        ref_labels: torch.Tensor,
    ) -> AnchorIndices:
        """``(anchor_indices,)``: int64 indices into ``embeddings``; ``ref_emb`` is ignored."""
        self._batch_size = int(labels.shape[0])
        return AnchorIndices(
            select_anchors(labels, self.num_anchors_per_class, self.selection, self.generator)
        )

    def output_assertion(self, output: Tuple[torch.Tensor]) -> None:
        """Checks the 1-tuple and sets ``num_anchors`` and ``num_non_anchors``."""
        if not isinstance(output, tuple) or len(output) != 1:
            raise TypeError(
                "AnchorMiner must return a 1-tuple of anchor indices, got "
                f"{len(output) if isinstance(output, tuple) else type(output).__name__}"
            )
        self.num_anchors = len(output[0])
        self.num_non_anchors = self._batch_size - self.num_anchors
