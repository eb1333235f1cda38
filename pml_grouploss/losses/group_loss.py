"""Group Loss (Elezi et al., ECCV 2020; Group Loss++, TPAMI) as a PML loss."""
from __future__ import annotations

import math
from typing import Optional

import torch
from pytorch_metric_learning.losses import BaseMetricLossFunction
from pytorch_metric_learning.losses.mixins import WeightRegularizerMixin
from pytorch_metric_learning.utils import common_functions as c_f

from .. import _validation as v
from ..distances import PearsonCorrelation
from ..functional.anchors import ANCHOR_SELECTIONS, AnchorSelection
from ..functional.group_loss import refined_label_terms
from ..functional.pearson import NEGATIVE_MODES, Negatives
from ..functional.replicator import MAX_ITERATIONS
from ..functional.rms_normalize import rms_normalize
from ._classifier_guards import ClassifierGuardsMixin
from ._classifier_prior import ClassifierPriorMixin, PriorClasses
from ._stacked_sub_losses import StackedSubLossesMixin
from ._unlogged_parameters import hide_parameters_from_record_keeper
from ._value_checks import GroupLossChecksMixin
from .distributed_loss_wrapper import check_distributed_use


class GroupLoss(
    GroupLossChecksMixin, ClassifierPriorMixin, ClassifierGuardsMixin, StackedSubLossesMixin,
    WeightRegularizerMixin, BaseMetricLossFunction,
):
    """The Group Loss: cross-entropy on soft labels refined over the whole batch.

    For a batch of ``n`` embeddings (ECCV'20 Algorithm 1; GL++ §3):

    1. a similarity matrix ``W`` from ``self.distance`` (default
       :class:`~pml_grouploss.distances.PearsonCorrelation`, GL++ eq. 3), negative entries
       clamped (ReLU) or shifted (GL++ §3.4.1), diagonal kept at 1 (authors' code) or zeroed
       (paper);
    2. a prior ``X(0) = softmax((x' W_c^T + b) / temperature)`` from the loss's own affine
       classifier (``self.W``, ``self.bias``: the authors' ``nn.Linear`` on the embedding),
       with the rows of the *anchors* replaced by the one-hot vectors of their labels;
       ``x' = sqrt(d) x / ||x||`` (:func:`~pml_grouploss.functional.rms_normalize`, default)
       or ``x' = x`` (``normalize_embeddings=False``, the authors' code);
    3. ``num_iterations`` replicator-dynamics steps ``X <- Q^-1 (X ⊙ W X)`` (GL++ eq. 4-8);
    4. loss = ``nll_weight * mean_i -log(X(T)_{i,y_i} + 1e-12)`` (sub-loss ``group_loss``)
       ``+ ce_weight * mean_i CE(logits_i, y_i)`` (sub-loss ``ce_loss``, the authors'
       auxiliary cross-entropy on the raw logits).

    With ``normalize_embeddings=False`` this reproduces the authors' code (dvl-tum/group_loss)
    to float64 rounding; see ``tests/fixtures/README.md``. The default normalises the
    classifier's input because cross-entropy on raw embeddings pushes the trunk's output norm
    up: at PML's example learning rates (Adam 1e-2 on the trunk) the authors' form collapses
    the trunk within a few steps (all embeddings equal, P@1 at chance), the normalised one trains
    (``docs/losses.md``, measured). The similarity is scale-free either way.

    **The classifier is a parameter of the loss.** Give it to an optimizer — with PML
    trainers, as ``optimizers["metric_loss_optimizer"]`` (learning rates measured in PML's
    example settings: ``docs/losses.md``). If the classifier receives gradients but stays
    unchanged while optimizers step 3 times, a warning names ``metric_loss_optimizer``; if
    every embedding of a batch is identical (a collapsed trunk) or their mean norm has grown
    1000-fold since the first call (a trunk learning rate too large), a warning says what to
    change. So it does when every sample of a batch is an anchor (``num_anchors`` >= the
    samples per class, e.g. ``MPerClassSampler(m=2)`` with the default 2): nothing is left to
    refine, and the loss is the auxiliary cross-entropy alone (zero with ``ce_weight=0``).

    **Batches** must hold several samples of each of a few classes: use PML's
    ``samplers.MPerClassSampler(labels, m=samples_per_class, batch_size=classes_per_batch *
    samples_per_class)``. The authors' settings (classes per batch × samples per class,
    anchors per class): CUB-200-2011 6×9 with 2, Cars196 5×7 with 3, Stanford Online
    Products 10×6 with 2.

    **Anchors.** ``indices_tuple=None`` chooses ``num_anchors`` anchors per class itself
    (``anchor_selection="first"``: the first samples of each class in batch order, as the
    authors' code; ``"random"``: random samples, as the paper says). A 1-tuple
    ``(anchor_indices,)`` — e.g. from :class:`~pml_grouploss.miners.AnchorMiner` — is used
    as the anchors. Pair or triplet tuples are rejected: Group Loss uses every pair of the
    batch.

    **Many classes** (GL++ §8.3; ``docs/losses.md``, "Many classes"). ``prior_classes=
    "batch"`` runs the prior, the dynamics and the NLL over the ``k <= n`` classes present
    in the batch: the rows ``W[classes]``, ``bias[classes]`` are gathered and the softmax over
    their logits is the dense prior with every other entry set to 0 and the rows
    renormalised, which is what the paper describes. The NLL term equals the dense one
    computed on that renormalised prior exactly; it equals the dense loss itself when the
    prior puts no mass outside the batch's classes (``T = 0``: it is the cross-entropy over
    the batch's classes, never above the dense one). The cost is O(n^2 d) instead of O(n m d),
    whatever ``m``. ``ce_classes`` chooses the auxiliary CE's classes: ``"all"`` (exact, but
    O(n m d) again) or ``"batch"`` (with ``prior_classes="batch"`` only; a sampled softmax
    over the batch's classes: it omits the other classes from the partition function, so it is
    a lower bound of the full CE and never pushes absent classes' logits down; unbiased only in
    the limit where they carry no mass). ``sparse_gradients=True`` makes the gradients of
    ``W`` and ``bias`` sparse COO tensors holding only the batch's rows; optimise them with
    ``torch.optim.SparseAdam`` (or SGD without weight decay), e.g.
    ``optimizers["metric_loss_optimizer"] = torch.optim.SparseAdam(loss.parameters(),
    lr=1e-3)`` in PML trainers.

    **Validation.** Shapes and dtypes are checked on every call. Value checks read the
    device, a CUDA synchronisation. With ``validate=None`` (default) the errors (label and
    anchor range, NaN/inf, subnormal rows, a non-finite classifier, overflowing logits or
    ``logits / temperature``) run on every call for CPU tensors (cheap there) and on calls 1,
    2, 4, 8, ... elsewhere (set-up mistakes show at once, ~20 reads in a million steps; the
    other GPU steps stay asynchronous); the warnings (a collapsed or all-anchor batch, norm
    growth) on calls 1, 2, 4, 8, ... on every device. ``True``: all every call (debugging);
    ``False``: none.

    The loss's parameters are kept out of record-keeper's logs: PML's logging hooks would
    otherwise copy ``W`` to a Python list at every logged step (its statistics are logged).

    Args:
        num_classes: number of training classes ``m`` (width of the prior).
        embedding_size: dimension ``d`` of the embeddings.
        temperature: softmax temperature of the prior (GL++ §5.1 "temperature scaling").
            Default 24, the authors' value for CUB-200-2011 (Cars196 79, SOP 54).
        num_iterations: replicator steps ``T``. Default 1, the value all the authors'
            training configurations use (the paper: "best results with 1-3 steps").
            ``0`` disables the refinement (plain cross-entropy on the classifier); at most
            ``MAX_ITERATIONS`` (1000).
        num_anchors: anchors per class when ``indices_tuple`` is None. Default 2 (authors'
            CUB and SOP setting; Cars196 uses 3).
        anchor_selection: ``"first"`` (default, authors' code) or ``"random"`` (paper).
        negatives: ``"clamp"`` (default, GL++ §3.4.1) or ``"shift"``. (Raw negative
            similarities are not offered: the dynamics then leave the simplex.)
        zero_diagonal: ``False`` (default) keeps ``W_ii = 1`` as the authors' code does;
            ``True`` sets ``W_ii = 0`` as ECCV'20 eq. 1 states.
        nll_weight: weight of the refined-label NLL (authors' ``scaling_loss``, 1.0), in
            ``[0, 100]`` (``_validation.MAX_WEIGHT``).
        normalize_embeddings: classifier input ``sqrt(d) x/||x||`` (default ``True``) or the
            raw embedding (``False``: the authors' code and the fixtures).
        ce_weight: weight of the auxiliary cross-entropy (authors: 1.0), in ``[0, 100]``.
        seed: seed for ``anchor_selection="random"`` (an int of at most 64 bits).
        prior_classes: ``"all"`` (default, the papers' dense prior over ``m`` classes) or
            ``"batch"`` (the batch's classes only, GL++ §8.3).
        ce_classes: classes of the auxiliary CE: ``"all"``, ``"batch"`` (needs
            ``prior_classes="batch"``), or ``None`` (default: as ``prior_classes``).
        sparse_gradients: sparse gradients for ``W``/``bias`` (needs ``prior_classes=
            ce_classes="batch"`` and no ``weight_regularizer``). Default ``False``.
        validate: value checks every call (``True``), never (``False``), or ``None``
            (default: errors every call on CPU, warnings on calls 1, 2, 4, 8, ...; both on
            calls 1, 2, 4, 8, ... on other devices, none there under ``torch.compile``).
        **kwargs: PML's ``reducer`` (applied per sub-loss, as PML does; the sub-losses are
            summed by a ``MultipleReducers`` subclass with PML's value to the bit),
            ``distance`` (any similarity, ``is_inverted=True``),
            ``weight_regularizer``, ``weight_reg_weight``, ``weight_init_func``,
            ``embedding_regularizer``, ``collect_stats``.

    Labels may have any integer dtype. Embeddings must be floating point and finite; a row
    whose largest magnitude is below the dtype's smallest normal number is rejected (the loss
    is scale-invariant but its gradient grows as 1/scale and overflows); logits that overflow
    (raw embeddings with ``normalize_embeddings=False``, or a diverged classifier) and a
    temperature so small that ``logits / temperature`` overflows are rejected too.

    Stats (recorded by record-keeper when ``collect_stats=True``): ``num_anchors_used``,
    ``avg_true_class_prior`` and ``avg_true_class_probability`` (mean prior / refined
    probability of the true class over non-anchor samples), ``refined_accuracy`` (fraction
    of non-anchors whose refined label is right), ``fraction_negative_similarities``
    (off-diagonal entries of the raw similarity below 0: what clamping/shifting acts on).
    """

    def __init__(
        self,
        num_classes: int,
        embedding_size: int,
        temperature: float = 24.0,
        num_iterations: int = 1,
        num_anchors: int = 2,
        anchor_selection: AnchorSelection = "first",
        negatives: Negatives = "clamp",
        zero_diagonal: bool = False,
        nll_weight: float = 1.0,
        ce_weight: float = 1.0,
        normalize_embeddings: bool = True,
        seed: Optional[int] = None,
        prior_classes: PriorClasses = "all",
        ce_classes: Optional[PriorClasses] = None,
        sparse_gradients: bool = False,
        validate: Optional[bool] = None,
        **kwargs,
    ):
        super().__init__(**kwargs)
        hide_parameters_from_record_keeper(self)
        num_classes = v.check_int("num_classes", num_classes, minimum=1)
        embedding_size = v.check_int("embedding_size", embedding_size, minimum=1)
        temperature = v.check_number(
            "temperature", temperature, minimum=0, strict_minimum=True,
            hint="the papers use 24-79",
        )
        num_iterations = v.check_int("num_iterations", num_iterations, minimum=0,
                                     maximum=MAX_ITERATIONS, hint="the papers use 1-3")
        num_anchors = v.check_int("num_anchors", num_anchors, minimum=0)
        v.check_choice("anchor_selection", anchor_selection, ANCHOR_SELECTIONS)
        if negatives == "none":
            raise ValueError(
                "negatives='none' was removed: with negative similarities the replicator "
                "dynamics leave the probability simplex and the loss becomes NaN; use "
                "'clamp' (default) or 'shift'"
            )
        v.check_choice("negatives", negatives, NEGATIVE_MODES)
        nll_weight = v.check_number("nll_weight", nll_weight, minimum=0, maximum=v.MAX_WEIGHT)
        ce_weight = v.check_number("ce_weight", ce_weight, minimum=0, maximum=v.MAX_WEIGHT)
        if not isinstance(normalize_embeddings, bool) or not isinstance(zero_diagonal, bool):
            raise TypeError("normalize_embeddings and zero_diagonal must be bools")
        if not self.distance.is_inverted:
            raise ValueError(
                f"GroupLoss needs a similarity (is_inverted=True) as distance, got "
                f"{type(self.distance).__name__}; use PearsonCorrelation (default) or "
                "CosineSimilarity"
            )
        self.num_classes = num_classes
        self.embedding_size = embedding_size
        self.temperature = float(temperature)
        self.num_iterations = num_iterations
        self.num_anchors = num_anchors
        self.anchor_selection = anchor_selection
        self.negatives = negatives
        self.zero_diagonal = zero_diagonal
        self.nll_weight = float(nll_weight)
        self.ce_weight = float(ce_weight)
        self.normalize_embeddings = normalize_embeddings
        self._init_class_options(prior_classes, ce_classes, sparse_gradients, validate)
        self._init_guards()
        self.generator = v.seeded_generator("seed", seed)
        self.W = torch.nn.Parameter(torch.empty(num_classes, embedding_size))
        self.bias = torch.nn.Parameter(torch.empty(num_classes))
        self.weight_init_func(self.W)
        bound = 1.0 / math.sqrt(embedding_size)
        torch.nn.init.uniform_(self.bias, -bound, bound)
        self.add_to_recordable_attributes(
            list_of_names=[
                "num_classes",
                "embedding_size",
                "temperature",
                "num_iterations",
                "nll_weight",
                "ce_weight",
            ],
            is_stat=False,
        )
        self.add_to_recordable_attributes(
            list_of_names=[
                "num_anchors_used",
                "avg_true_class_prior",
                "avg_true_class_probability",
                "refined_accuracy",
                "fraction_negative_similarities",
            ],
            is_stat=True,
        )

    # -- PML hooks -------------------------------------------------------------------------
    def get_default_distance(self):
        return PearsonCorrelation()

    def get_default_weight_init_func(self):
        # torch.nn.Linear's initialisation, as the authors' classifier.
        return c_f.TorchInitWrapper(torch.nn.init.kaiming_uniform_, a=math.sqrt(5))

    def _sub_loss_names(self):
        return ["group_loss", "ce_loss"]

    def cast_types(self, device: torch.device) -> None:
        # Only the device moves: PML's usual cast would permanently turn the parameters
        # into fp16/bf16 under autocast or half-precision embeddings.
        if self.W.device != device:
            self.W.data = self.W.data.to(device)
            self.bias.data = self.bias.data.to(device)

    def get_logits(self, embeddings: torch.Tensor) -> torch.Tensor:
        """Classifier outputs ``(n, num_classes)`` for embeddings ``(n, embedding_size)``."""
        return self.get_batch_logits(embeddings, None)

    def get_batch_logits(
        self, embeddings: torch.Tensor, classes: Optional[torch.Tensor]
    ) -> torch.Tensor:
        """Classifier outputs ``(n, k)`` of the classes ``classes`` ``(k,)`` (``None``: all
        ``m``); the rows of ``W`` and ``bias`` are gathered first, with sparse gradients if
        ``sparse_gradients``."""
        if self.normalize_embeddings:
            embeddings = rms_normalize(embeddings)
        logits = torch.nn.functional.linear(embeddings, *self._classifier(embeddings, classes))
        return self._watch_classifier(logits)

    def compute_loss(self, embeddings, labels, indices_tuple, ref_emb, ref_labels):
        c_f.labels_required(labels)
        check_distributed_use(self)
        self._reject_ref_emb(embeddings, labels, ref_emb, ref_labels)
        validate, diagnose = self._validating(embeddings)
        labels = self._check_inputs(embeddings, labels)
        if embeddings.shape[0] == 0:
            return self.zero_losses()
        anchors = self._anchor_mask(labels, indices_tuple, validate)
        # The dynamics run in float32 or wider, outside autocast (half precision
        # underflows after a few multiplicative steps).
        dtype = torch.promote_types(embeddings.dtype, torch.float32)
        with torch.autocast(device_type=embeddings.device.type, enabled=False):
            x = embeddings.to(dtype)
            prior = self._prior_logits(x, labels, validate)
            if validate:  # (the batch-class prior has read the labels' range already)
                self._check_values(embeddings, x, prior.row_power, prior.computed_logits,
                                   labels if self.prior_classes == "all" else None)
            if diagnose:
                self._check_batch(x, anchors)
            ce = prior.ce_logits
            terms = refined_label_terms(
                prior.W,
                prior.logits,
                prior.targets,
                anchors,
                temperature=self.temperature,
                num_iterations=self.num_iterations,
                ce_logits=ce,
                ce_labels=None if ce is None else labels,
                unit_diagonal=self._default_similarity() and not self.zero_diagonal,
            )
        self._warn_if_classifier_frozen()
        if self.collect_stats:
            self._set_stats(prior.corr, terms, prior.targets, anchors)
        indices = c_f.torch_arange_from_size(embeddings)
        loss_dict = {
            "group_loss": {
                "losses": _weighted(self.nll_weight, terms.nll),
                "indices": indices,
                "reduction_type": "element",
                "divisor": embeddings.shape[0],  # for PML's DivisorReducer: the mean
            },
            "ce_loss": {
                "losses": _weighted(self.ce_weight, terms.ce),
                "indices": indices,
                "reduction_type": "element",
                "divisor": embeddings.shape[0],
            },
        }
        self.add_weight_regularization_to_loss_dict(loss_dict, self.W)
        return loss_dict

    def _set_stats(self, corr, terms, labels, anchors) -> None:
        """Host values (device reads), only with ``collect_stats``; ``labels`` are the
        columns of the prior, ``anchors`` a mask."""
        with torch.no_grad():
            n = labels.shape[0]
            free = ~anchors
            X, X0 = terms.log_probabilities.exp(), terms.log_prior.exp()
            self.num_anchors_used = int(anchors.sum())
            if free.any():
                y = labels[free].view(-1, 1)
                self.avg_true_class_prior = float(X0[free].gather(1, y).mean())
                self.avg_true_class_probability = float(X[free].gather(1, y).mean())
                self.refined_accuracy = float((X[free].argmax(1) == labels[free]).float().mean())
            off_diagonal = ~torch.eye(n, dtype=torch.bool, device=corr.device)
            if n > 1:
                self.fraction_negative_similarities = float((corr[off_diagonal] < 0).float().mean())


def _weighted(weight: float, losses: torch.Tensor) -> torch.Tensor:
    """``weight * losses``; the default weight 1 costs no operation (forward or backward)."""
    return losses if weight == 1 else weight * losses
