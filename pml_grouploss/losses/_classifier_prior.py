"""GroupLoss's classifier side: which classes the prior and the auxiliary CE run over (GL++
§8.3), the classifier's rows, and the similarity computed with the logits."""
from __future__ import annotations

import math
from typing import Literal, NamedTuple, Optional

import torch

from .. import _validation as v
from ..distances import PearsonCorrelation
from ..functional._similarity_and_logits import pearson_similarity_and_logits
from ..functional.batch_classes import batch_classes
from ..functional.pearson import similarity_from_correlation
from ..functional.sparse_rows import gather_rows
from ._classifier_guards import is_compiling

PriorClasses = Literal["all", "batch"]
PRIOR_CLASSES = ("all", "batch")


class Prior(NamedTuple):
    W: torch.Tensor  # (n, n) similarity of the dynamics
    corr: torch.Tensor  # (n, n) raw similarity, for the stats
    logits: torch.Tensor  # (n, k) the prior's logits
    targets: torch.Tensor  # (n,) each sample's column in them
    ce_logits: Optional[torch.Tensor]  # (n, m) for the CE over all classes, else None
    row_power: Optional[torch.Tensor]  # (n, 1) row_power_of_two(x) if the node computed it
    computed_logits: torch.Tensor  # every logit computed (before padding), for the checks


class ClassifierPriorMixin:
    """For :class:`~pml_grouploss.losses.GroupLoss` (``self.W``, ``self.bias``,
    ``self.distance``, ``self.negatives``, ``self.zero_diagonal``, ``self.normalize_embeddings``,
    ``get_batch_logits``, ``_classifier_got_gradient``, ``_check_labels``)."""

    def _init_class_options(self, prior_classes, ce_classes, sparse_gradients, validate):
        v.check_choice("prior_classes", prior_classes, PRIOR_CLASSES)
        ce_classes = prior_classes if ce_classes is None else ce_classes
        v.check_choice("ce_classes", ce_classes, PRIOR_CLASSES)
        if not isinstance(sparse_gradients, bool) or validate not in (None, True, False):
            raise TypeError("sparse_gradients must be a bool and validate None or a bool")
        if (prior_classes, ce_classes) == ("all", "batch"):
            raise ValueError(
                "ce_classes='batch' needs prior_classes='batch' (with the prior over all "
                "classes the logits of every class are computed anyway); use ce_classes='all'"
            )
        if sparse_gradients and (prior_classes, ce_classes) != ("batch", "batch"):
            raise ValueError(
                "sparse_gradients=True needs prior_classes='batch' and ce_classes='batch' "
                "(over all classes every row of W gets a gradient)"
            )
        if sparse_gradients and self.weight_regularizer is not None:
            raise ValueError(
                "sparse_gradients=True cannot be combined with a weight_regularizer: it acts "
                "on all of W and makes the gradient dense"
            )
        self.prior_classes, self.ce_classes = prior_classes, ce_classes
        self.sparse_gradients, self.validate = sparse_gradients, validate

    def _pads_batch_classes(self, x: torch.Tensor) -> bool:
        """``n`` padded slots off the CPU (no device read); exactly the ``k`` classes on it."""
        return x.device.type != "cpu"

    def _prior_logits(self, x, labels, validate: bool) -> Prior:
        """The prior's logits over all ``m`` classes, or over the batch's classes (``-inf`` in
        the padding slots of :func:`~pml_grouploss.functional.batch_classes.batch_classes`,
        targets = slots). With ``validate`` the labels' range is read first when they index
        the classifier's rows (batch classes)."""
        if self.prior_classes == "all":
            W, corr, logits, power = self._similarity_and_logits(x, None)
            return Prior(W, corr, logits, labels, None, power, logits)
        if validate:
            self._check_labels(labels)
        padded = self._pads_batch_classes(x)
        slots = batch_classes(labels, pad=padded)
        if self.ce_classes == "all":
            W, corr, full, power = self._similarity_and_logits(x, None)
            logits = full.gather(1, slots.classes.expand(x.shape[0], -1))
        else:
            W, corr, logits, power = self._similarity_and_logits(x, slots.classes)
            full = None
        computed = logits if full is None else full
        if padded:
            logits = logits.masked_fill(~slots.valid, -math.inf)
        return Prior(W, corr, logits, slots.targets, full, power, computed)

    def _classifier(self, x: torch.Tensor, classes: Optional[torch.Tensor]):
        """``(W, bias)``: all rows, or those of ``classes``, in ``x``'s device and dtype."""
        self.cast_types(x.device)
        W, bias = self.W, self.bias
        if classes is not None:
            W = gather_rows(W, classes, self.sparse_gradients)
            bias = gather_rows(bias, classes, self.sparse_gradients)
        return W.to(x.dtype), bias.to(x.dtype)

    def _watch_classifier(self, logits: torch.Tensor) -> torch.Tensor:
        if logits.requires_grad and self.W.requires_grad and not is_compiling():
            logits.register_hook(self._classifier_got_gradient)
        return logits

    def _default_similarity(self) -> bool:
        """The clamped Pearson correlation: one fused autograd node, entries in ``[0, 1]``."""
        distance = self.distance
        return (type(distance) is PearsonCorrelation and distance.power == 1
                and not distance.collect_stats and self.negatives == "clamp")

    def _similarity_and_logits(self, x: torch.Tensor, classes: Optional[torch.Tensor]):
        """``(W, corr, logits, row power)``: the similarity of the dynamics, the raw similarity
        (stats), the classifier's logits over ``classes`` (``None``: all) and
        :func:`~pml_grouploss.functional.rms_normalize.row_power_of_two` of ``x`` (``None``
        off the fused node). The default similarity
        (Pearson, clamped) runs as one autograd node with a closed-form backward; any other
        ``distance`` or ``negatives="shift"`` is composed from ``self.distance``."""
        if not self._default_similarity():
            corr = self.distance(x)
            W = similarity_from_correlation(corr, self.negatives, self.zero_diagonal)
            return W, corr, self.get_batch_logits(x, classes), None
        W, corr, logits, power = pearson_similarity_and_logits(
            x, *self._classifier(x, classes), zero_diagonal=self.zero_diagonal,
            normalize=self.normalize_embeddings)
        return W, corr, self._watch_classifier(logits), power
