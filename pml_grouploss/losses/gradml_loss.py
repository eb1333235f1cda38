"""GradML loss (Vasudeva et al., "GradML: A Gradient-based Loss for Deep Metric Learning").

Eq. (10)-(11) of the paper as a PML ``GenericPairLoss``; the math is in
:mod:`pml_grouploss.functional.gradml`.
"""
from __future__ import annotations

import warnings
from typing import Dict, Optional, Tuple

import torch
from pytorch_metric_learning.distances import LpDistance
from pytorch_metric_learning.losses import GenericPairLoss
from pytorch_metric_learning.reducers import (
    DivisorReducer,
    DoNothingReducer,
    MeanReducer,
    MultipleReducers,
    SumReducer,
    ThresholdReducer,
)
from pytorch_metric_learning.utils import common_functions as c_f
from pytorch_metric_learning.utils import loss_and_miner_utils as lmu

from .._validation import check_floating, check_pair_indices, check_same_width
from ..functional.gradml import (
    check_gradml_params,
    check_loss_finite,
    compute_dtype,
    gradml_pair_terms,
    pair_indices,
)
from ._stacked_sub_losses import StackedSubLossesMixin


class GradMLLoss(StackedSubLossesMixin, GenericPairLoss):
    r"""GradML, the gradient-derived pairwise loss of eq. (10)-(11) of the GradML paper.

    Per pair, positives contribute ``pos_weight * ||x_i - x_j||^k`` and negatives
    ``-w * ||x_i - x_j||^k`` (eq. 10; eq. 11 is ``pos_weight = 1`` and one ``w`` for all
    negatives). The paper's defaults are ``k = 2, w = 1`` (Table 3); its appendix also uses
    ``w = 0.5``, "obtained by equating the sum of the weights of the positives to that of the
    negatives" in its two-classes-two-samples example (2 positive pairs, 4 negative pairs).

    **Normalized embeddings.** The negative term is unbounded below: with free embeddings the
    loss goes to ``-inf`` by pushing classes apart without limit. The default distance is
    therefore ``LpDistance(normalize_embeddings=True, p=2, power=1)`` (distances on the unit
    sphere, ``0 <= d <= 2``), and a ``UserWarning`` is raised when the given distance does not
    normalize. Similarities (``is_inverted=True``, e.g. ``CosineSimilarity``) are rejected:
    eq. (10) is written for distances. ``k`` always applies to the plain distance: with
    ``LpDistance(power=q)`` the terms are ``(d^q)^(k/q)``.

    **Reduction.** The two pair types are two sub-losses (``"pos_loss"`` and ``"neg_loss"``,
    reduction types ``pos_pair``/``neg_pair``), each reduced by its own reducer and then added,
    as PML's ``ContrastiveLoss`` does.

    * Default, ``MeanReducer``: ``pos_weight * mean_pos d^k - w * mean_neg d^k``. The value no
      longer depends on how many pairs of each type a batch holds, so one learning rate fits any
      batch composition; ``w`` then weighs the *average* negative against the *average* positive,
      and ``w = 1`` is the appendix's "equal total weight" balance (for every batch), not the
      ``w = 1`` of Table 3. On the paper's 2x2 example the mean form with ``w`` equals
      ``1/2`` of the sum form with ``w / 2``.
    * Paper form: ``reducer=SumReducer()``. When the loss forms the pairs itself
      (``indices_tuple=None`` and no ``ref_emb``) every *unordered* pair ``{i, j}`` is counted
      once, as in eq. (10)-(11), so the value is exactly eq. (11) on the 2x2 example (PML's
      ``get_all_pairs_indices`` lists both ``(i, j)`` and ``(j, i)``; the reverse copies are
      dropped; this leaves means unchanged). Pairs given by a miner, or formed against
      ``ref_emb`` (e.g. by ``DistributedLossWrapper(efficient=True)``), are used as given. With
      sums the loss scales with the number of pairs (``O(batch^2)`` negatives), so the learning
      rate has to follow the batch size; the paper trains with batch 32 and lr 1e-7.
    * Reducers that weigh a pair by its first index (``PerAnchorReducer``,
      ``ClassWeightedReducer``, any reducer other than ``Mean``/``Sum``/``Threshold``/
      ``DoNothingReducer``) get PML's ordered pairs, both ``(i, j)`` and ``(j, i)``, and so
      PML's value (with unordered pairs the last samples of a batch would anchor no pair).
    * ``ThresholdReducer(low >= 0)``/``AvgNonZeroReducer`` on ``neg_loss`` are rejected: the
      negative terms are ``<= 0`` and a ``losses > low`` filter would silently drop all of
      them. ``DivisorReducer`` is rejected: pair losses carry no ``divisor``.

    **All pairs or a miner.** Without ``indices_tuple`` every pair of the batch is used. On the
    unit sphere all pairs' squared distances sum to ``n^2 - ||sum_i x_i||^2``, so for ``k = 2``
    the negative term is ``n^2 - ||sum_i x_i||^2 - sum_pos d^2``: it sees the batch mean, not
    which classes are close (``k > 2`` even rewards merging classes into antipodal groups). At
    PML's learning rates give it a pair miner, e.g. ``miners.PairMarginMiner()`` (measured in
    ``docs/gradml.md``).

    **Cost.** One ``(n, n_ref)`` distance matrix (PML's distance) plus per-pair vectors: memory
    and work ``O(#pairs)``. Table 2 of the paper lists GradML as ``O(B_S)`` per iteration, which
    only holds per sample pair-count held fixed; over all pairs of a batch it is ``O(B_S^2)``.

    **Gradients.** For ``k = 2`` on the 2x2 example the gradient of eq. (11) is
    ``dL/dx1 = 2((1 - 2w) x1 - x2 + w (y1 + y2))`` (see
    :func:`pml_grouploss.functional.gradml_gradient`). The GradML row of the paper's Table 1,
    ``2w(y1 + y2 - x2)``, does **not** follow from eq. (11) for any ``w`` (it would need both
    ``w = 1/2`` and ``w = 1``); this class implements eq. (11). Where two embeddings coincide
    the per-pair gradient is set to 0 (finite for every ``k > 0``).

    Degenerate batches are finite: one class only (no negatives) gives the positive term alone,
    one sample per class (no positives) gives the negative term alone, a single sample gives 0.
    With a normalizing distance an exactly-zero embedding gets the zero gradient (``F.normalize``
    would give it the meaningless ``1/eps = 1e12``). For ``k < power`` the derivative of
    ``t^(k/power)`` at tiny ``t > 0`` is capped (see :func:`~pml_grouploss.functional.safe_pow`).

    **Precision.** The distances and terms are computed in ``promote_types(dtype, float32)``
    (``dtype``: the embeddings', or the wider of theirs and ``ref_emb``'s) with autocast
    disabled (``cdist`` has no bfloat16 kernel; ``d^k`` overflows float16); the loss is returned
    in the embeddings' dtype, like PML's losses. Integer embeddings raise a ``TypeError``;
    NaN/inf embeddings (or ``ref_emb``) and a loss that overflows its dtype (e.g. unnormalized
    embeddings, or ``|loss| > 65504`` in float16) raise a ``ValueError``; both are found by one
    device read per call. A float16 gradient whose exact value exceeds 65504 rounds to ``inf``
    as every float16 op does (what ``GradScaler`` expects).

    Args:
        k: exponent of the distance, in ``(0, 10]`` (eq. 7-10). Default 2 (Table 3).
        w: weight of every negative pair, in ``[0, 100]`` (eq. 11). Default 1 (Table 3).
        pos_weight: weight ``a_pos`` of every positive pair, in ``[0, 100]`` (eq. 10). Default 1.
        **kwargs: PML's ``distance``, ``reducer``, ``embedding_regularizer``, ... .

    Example::

        from pytorch_metric_learning import miners, reducers
        from pml_grouploss.losses import GradMLLoss

        loss_fn = GradMLLoss()                                  # mean per pair type
        paper_loss = GradMLLoss(reducer=reducers.SumReducer())  # eq. (11) exactly
        loss = loss_fn(embeddings, labels)
        loss = loss_fn(embeddings, labels, miners.PairMarginMiner()(embeddings, labels))
    """

    def __init__(
        self,
        k: float = 2.0,
        w: float = 1.0,
        pos_weight: float = 1.0,
        **kwargs,
    ) -> None:
        check_gradml_params(k, w, pos_weight)
        super().__init__(mat_based_loss=False, **kwargs)
        self.k = float(k)
        self.w = float(w)
        self.pos_weight = float(pos_weight)
        self._inputs_finite: Optional[torch.Tensor] = None  # set by compute_loss, read by forward
        self._check_distance()
        self._check_reducer()
        self.add_to_recordable_attributes(
            list_of_names=["k", "w", "pos_weight"], is_stat=False
        )
        self.add_to_recordable_attributes(
            list_of_names=[
                "num_pos_pairs",
                "num_neg_pairs",
                "mean_pos_distance",
                "mean_neg_distance",
            ],
            is_stat=True,
        )

    # ------------------------------------------------------------------ checks
    def get_default_distance(self) -> LpDistance:
        return LpDistance(normalize_embeddings=True, p=2, power=1)

    def get_default_reducer(self) -> MeanReducer:
        return MeanReducer()

    def _check_distance(self) -> None:
        if getattr(self.distance, "is_inverted", False):
            raise ValueError(
                f"distance must be a distance (is_inverted=False), got "
                f"{type(self.distance).__name__} which is a similarity; GradML (eq. 10) is "
                "written for Euclidean distances: use LpDistance(normalize_embeddings=True)"
            )
        power = getattr(self.distance, "power", 1)
        if not isinstance(power, (int, float)) or isinstance(power, bool) or power <= 0:
            raise ValueError(f"distance.power must be a number > 0, got {power!r}")
        if not getattr(self.distance, "normalize_embeddings", True):
            warnings.warn(
                "GradMLLoss: distance.normalize_embeddings=False. The GradML loss is unbounded "
                "below without normalized embeddings (the -w * ||x_i - x_j||^k term goes to "
                "-inf as classes are pushed apart); keep LpDistance(normalize_embeddings=True) "
                "unless the model bounds the embeddings itself.",
                UserWarning,
                stacklevel=3,
            )

    def _pair_reducers(self) -> Tuple[torch.nn.Module, torch.nn.Module]:
        """The reducers of ``pos_loss`` and ``neg_loss`` (PML's per-sub-loss choice)."""
        reducer = self.reducer
        if not isinstance(reducer, MultipleReducers):
            return reducer, reducer
        table = reducer.reducers
        return tuple(
            table[name] if name in table else reducer.default_reducer
            for name in ("pos_loss", "neg_loss")
        )

    def _check_reducer(self) -> None:
        pos_reducer, neg_reducer = self._pair_reducers()
        for m in (*pos_reducer.modules(), *neg_reducer.modules()):
            if isinstance(m, DivisorReducer):
                raise ValueError(
                    "reducer: DivisorReducer divides by a 'divisor' that only element-wise "
                    "losses provide; GradMLLoss reduces pairs. Use SumReducer() (the paper's "
                    "eq. 11, then divide the loss yourself) or MeanReducer() (default)."
                )
        low = [m.low for m in neg_reducer.modules() if isinstance(m, ThresholdReducer)]
        if any(x is not None and x >= 0 for x in low):
            raise ValueError(
                f"reducer: {type(neg_reducer).__name__} is a ThresholdReducer with low >= 0, "
                "which keeps only losses > low; GradML's negative-pair terms are <= 0 and would "
                "all be dropped. Use MeanReducer() (default) or SumReducer() (the paper's eq. 11)."
            )

    def _unordered_pairs_reduce_alike(self) -> bool:
        """Whether the reducers give the same value on the unordered pairs ``i < j`` as on
        PML's ordered ones, up to the sum's factor 2 (the paper's count). Reducers that weigh a
        pair by its first index (``PerAnchorReducer``, ``ClassWeightedReducer``, unknown ones)
        need both orders, or the samples late in the batch would be no pair's anchor."""
        alike = (MeanReducer, SumReducer, ThresholdReducer, DoNothingReducer)
        return all(isinstance(r, alike) for r in self._pair_reducers())

    # ------------------------------------------------------------------ loss
    def forward(self, embeddings, labels=None, indices_tuple=None, ref_emb=None, ref_labels=None):
        """PML's forward, then one check (one device read) that inputs and loss are finite."""
        self._inputs_finite = None
        loss = super().forward(embeddings, labels, indices_tuple, ref_emb, ref_labels)
        finite = self._inputs_finite
        if torch.is_tensor(loss) and loss.numel() == 1:
            finite = torch.isfinite(loss) if finite is None else finite & torch.isfinite(loss)
        if finite is not None and not bool(finite):
            if self._inputs_finite is not None and not bool(self._inputs_finite):
                raise ValueError(
                    "embeddings (or ref_emb) contain NaN or inf; GradMLLoss needs finite "
                    "embeddings: check the model's outputs (a diverged layer, a 0/0)"
                )
            check_loss_finite(loss, embeddings.dtype)
        return loss

    def _to_compute(self, x: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
        """``x`` in ``compute_dtype(dtype)`` (float32 or wider); exact zero rows detached when
        the distance normalizes.

        ``F.normalize`` maps a zero row to 0 with a derivative ``1 / eps = 1e12``: a meaningless
        direction, and ``inf`` once cast back to float16. A zero row gets the zero gradient
        (the same subgradient convention as coincident points).
        """
        x = x.to(compute_dtype(dtype))
        if getattr(self.distance, "normalize_embeddings", False) and x.requires_grad:
            zero = (x == 0).all(dim=1, keepdim=True)
            x = torch.where(zero, x.detach(), x)
        return x

    def compute_loss(
        self,
        embeddings: torch.Tensor,
        labels: Optional[torch.Tensor],
        indices_tuple,
        ref_emb: torch.Tensor,
        ref_labels: Optional[torch.Tensor],
    ) -> Dict[str, Dict]:
        c_f.labels_or_indices_tuple_required(labels, indices_tuple)
        check_floating("embeddings", embeddings)
        check_floating("ref_emb", ref_emb)
        self_ref = ref_emb is embeddings
        if not self_ref:
            check_same_width("embeddings", embeddings, "ref_emb", ref_emb)
        if indices_tuple is None:
            # Eq. (10) counts each unordered pair {i, j} once (PML's get_all_pairs_indices
            # lists (i, j) and (j, i), through an (#pairs, 2) nonzero): see pair_indices.
            self_pairs = self_ref and ref_labels is labels
            if not self_pairs and ref_labels is None:
                # PML would pair labels with themselves and index ref_emb with them: silently
                # wrong pairs (or an IndexError) when ref_emb is not the batch.
                raise ValueError(
                    "ref_labels is required when ref_emb is given without indices_tuple: pass "
                    "ref_labels=... (the labels of ref_emb) or an indices_tuple of pairs"
                )
            if self_pairs and not self._unordered_pairs_reduce_alike():
                indices_tuple = lmu.get_all_pairs_indices(labels)  # PML's (i, j) and (j, i)
            else:
                indices_tuple = pair_indices(labels, None if self_pairs else ref_labels)
        else:
            if not isinstance(indices_tuple, (tuple, list)) or len(indices_tuple) not in (3, 4):
                raise TypeError(
                    "indices_tuple must be a PML miner's output: pairs (a1, p, a2, n) or "
                    f"triplets (a, p, n), got {type(indices_tuple).__name__} of length "
                    f"{len(indices_tuple) if isinstance(indices_tuple, (tuple, list)) else '-'}"
                )
            indices_tuple = lmu.convert_to_pairs(indices_tuple, labels, ref_labels)
            check_pair_indices(indices_tuple, len(embeddings), len(ref_emb))
        # Computed in float32 or wider, outside autocast (cdist has no bfloat16 kernel, d^k
        # overflows float16); the reducer returns the loss in the embeddings' dtype.
        with torch.autocast(device_type=embeddings.device.type, enabled=False):
            # (embeddings and ref_emb of two dtypes meet in the wider one)
            dtype = torch.promote_types(embeddings.dtype, ref_emb.dtype)
            x = self._to_compute(embeddings, dtype)
            ref = x if self_ref else self._to_compute(ref_emb, dtype)
            finite = torch.isfinite(x).all()
            self._inputs_finite = finite if self_ref else finite & torch.isfinite(ref).all()
            if all(len(t) == 0 for t in indices_tuple):
                return self.zero_losses()
            mat = self.distance(x, ref)
            return self.loss_method(mat, indices_tuple)

    def _compute_loss(
        self,
        pos_pair_dist: torch.Tensor,
        neg_pair_dist: torch.Tensor,
        indices_tuple: Tuple[torch.Tensor, ...],
    ) -> Dict[str, Dict]:
        a1 = indices_tuple[0]
        if not torch.is_tensor(pos_pair_dist):  # GenericPairLoss passes [] for no pairs
            pos_pair_dist = a1.new_empty(0, dtype=torch.float)
        if not torch.is_tensor(neg_pair_dist):
            neg_pair_dist = a1.new_empty(0, dtype=pos_pair_dist.dtype)
        pos_terms, neg_terms = gradml_pair_terms(
            pos_pair_dist,
            neg_pair_dist,
            k=self.k,
            w=self.w,
            pos_weight=self.pos_weight,
            dist_power=float(getattr(self.distance, "power", 1)),
        )
        if self.collect_stats:
            with torch.no_grad():
                power = float(getattr(self.distance, "power", 1))
                self.num_pos_pairs = int(pos_pair_dist.numel())
                self.num_neg_pairs = int(neg_pair_dist.numel())
                self.mean_pos_distance = (
                    float((pos_pair_dist.float() ** (1 / power)).mean())
                    if pos_pair_dist.numel()
                    else 0.0
                )
                self.mean_neg_distance = (
                    float((neg_pair_dist.float() ** (1 / power)).mean())
                    if neg_pair_dist.numel()
                    else 0.0
                )
        return {
            "pos_loss": {
                "losses": pos_terms if pos_terms.numel() else 0,
                "indices": lmu.pos_pairs_from_tuple(indices_tuple),
                "reduction_type": "pos_pair",
            },
            "neg_loss": {
                "losses": neg_terms if neg_terms.numel() else 0,
                "indices": lmu.neg_pairs_from_tuple(indices_tuple),
                "reduction_type": "neg_pair",
            },
        }

    def _sub_loss_names(self):
        return ["pos_loss", "neg_loss"]
