"""Group Loss (Elezi et al., ECCV 2020; Group Loss++, TPAMI) as a PML loss."""
from __future__ import annotations

import math
from typing import Optional

import torch
from pytorch_metric_learning.losses import BaseMetricLossFunction
from pytorch_metric_learning.losses.mixins import WeightRegularizerMixin
from pytorch_metric_learning.utils import common_functions as c_f

from ..distances import PearsonCorrelation
from ..functional.anchors import ANCHOR_SELECTIONS, AnchorSelection, select_anchors
from ..functional.group_loss import refined_label_loss
from ..functional.pearson import NEGATIVE_MODES, Negatives, similarity_from_correlation


class GroupLoss(WeightRegularizerMixin, BaseMetricLossFunction):
    """The Group Loss: cross-entropy on soft labels refined over the whole batch.

    For a batch of ``n`` embeddings (ECCV'20 Algorithm 1; GL++ §3):

    1. a similarity matrix ``W`` from ``self.distance`` (default
       :class:`~pml_grouploss.distances.PearsonCorrelation`, GL++ eq. 3), negative entries
       clamped (ReLU) or shifted (GL++ §3.4.1), diagonal kept at 1 (authors' code) or zeroed
       (paper);
    2. a prior ``X(0) = softmax((x W_c^T + b) / temperature)`` from the loss's own affine
       classifier (``self.W``, ``self.bias``: the authors' ``nn.Linear`` on the embedding),
       with the rows of the *anchors* replaced by the one-hot vectors of their labels;
    3. ``num_iterations`` replicator-dynamics steps ``X <- Q^-1 (X ⊙ W X)`` (GL++ eq. 4-8);
    4. loss = ``nll_weight * mean_i -log(X(T)_{i,y_i} + 1e-12)`` (sub-loss ``group_loss``)
       ``+ ce_weight * mean_i CE(logits_i, y_i)`` (sub-loss ``ce_loss``, the authors'
       auxiliary cross-entropy on the raw logits).

    With the defaults this reproduces the authors' code (dvl-tum/group_loss) to float64
    rounding; see ``tests/fixtures/README.md``.

    **The classifier is a parameter of the loss.** Give it to an optimizer — with PML
    trainers, as ``optimizers["metric_loss_optimizer"]`` — ideally with its own, larger
    learning rate (on the embedded Omniglot benchmark about 1e-1 for the classifier vs 1e-3
    for the trunk; see ``docs/benchmark.md``), as PML's docs advise for proxy losses.

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

    Args:
        num_classes: number of training classes ``m`` (width of the prior).
        embedding_size: dimension ``d`` of the embeddings.
        temperature: softmax temperature of the prior (GL++ §5.1 "temperature scaling").
            Default 24, the authors' value for CUB-200-2011 (Cars196 79, SOP 54).
        num_iterations: replicator steps ``T``. Default 1, the value all the authors'
            training configurations use (the paper: "best results with 1-3 steps").
            ``0`` disables the refinement (plain cross-entropy on the classifier).
        num_anchors: anchors per class when ``indices_tuple`` is None. Default 2 (authors'
            CUB and SOP setting; Cars196 uses 3).
        anchor_selection: ``"first"`` (default, authors' code) or ``"random"`` (paper).
        negatives: ``"clamp"`` (default, GL++ §3.4.1), ``"shift"`` or ``"none"``.
        zero_diagonal: ``False`` (default) keeps ``W_ii = 1`` as the authors' code does;
            ``True`` sets ``W_ii = 0`` as ECCV'20 eq. 1 states.
        nll_weight: weight of the refined-label NLL (authors' ``scaling_loss``, 1.0).
        ce_weight: weight of the auxiliary cross-entropy (authors: 1.0; 0 allowed).
        seed: seed for ``anchor_selection="random"``.
        **kwargs: PML's ``reducer``, ``distance`` (any similarity, ``is_inverted=True``),
            ``weight_regularizer``, ``weight_reg_weight``, ``weight_init_func``,
            ``embedding_regularizer``, ``collect_stats``.

    Stats (recorded by record-keeper when ``collect_stats=True``): ``num_anchors``,
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
        seed: Optional[int] = None,
        **kwargs,
    ):
        super().__init__(**kwargs)
        _check_positive_int("num_classes", num_classes)
        _check_positive_int("embedding_size", embedding_size)
        if not isinstance(temperature, (int, float)) or not temperature > 0:
            raise ValueError(
                f"temperature must be a number > 0 (the papers use 24-79), got {temperature!r}"
            )
        if isinstance(num_iterations, bool) or not isinstance(num_iterations, int):
            raise TypeError(f"num_iterations must be an int, got {num_iterations!r}")
        if num_iterations < 0:
            raise ValueError(
                f"num_iterations must be >= 0 (0 = no refinement), got {num_iterations}"
            )
        if isinstance(num_anchors, bool) or not isinstance(num_anchors, int) or num_anchors < 0:
            raise ValueError(f"num_anchors must be an int >= 0, got {num_anchors!r}")
        if anchor_selection not in ANCHOR_SELECTIONS:
            raise ValueError(
                f"anchor_selection must be one of {ANCHOR_SELECTIONS}, got {anchor_selection!r}"
            )
        if negatives not in NEGATIVE_MODES:
            raise ValueError(f"negatives must be one of {NEGATIVE_MODES}, got {negatives!r}")
        for name, value in (("nll_weight", nll_weight), ("ce_weight", ce_weight)):
            if not isinstance(value, (int, float)) or not math.isfinite(value) or value < 0:
                raise ValueError(f"{name} must be a finite number >= 0, got {value!r}")
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
        self.generator = None
        if seed is not None:
            self.generator = torch.Generator()
            self.generator.manual_seed(seed)
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
        self.cast_types(embeddings.device)
        return torch.nn.functional.linear(
            embeddings, self.W.to(embeddings.dtype), self.bias.to(embeddings.dtype)
        )

    def compute_loss(self, embeddings, labels, indices_tuple, ref_emb, ref_labels):
        c_f.labels_required(labels)
        c_f.ref_not_supported(embeddings, labels, ref_emb, ref_labels)
        self._check_inputs(embeddings, labels)
        if embeddings.shape[0] == 0:
            return self.zero_losses()
        anchors = self._anchors(labels, indices_tuple)
        # The dynamics run in float32 or wider, outside autocast (half precision
        # underflows after a few multiplicative steps).
        dtype = torch.promote_types(embeddings.dtype, torch.float32)
        with torch.autocast(device_type=embeddings.device.type, enabled=False):
            x = embeddings.to(dtype)
            logits = self.get_logits(x)
            corr = self.distance(x)
            W = similarity_from_correlation(corr, self.negatives, self.zero_diagonal)
            out = refined_label_loss(
                W,
                logits,
                labels,
                anchors,
                temperature=self.temperature,
                num_iterations=self.num_iterations,
            )
        if self.collect_stats:
            self._set_stats(corr, out, labels, anchors)
        indices = c_f.torch_arange_from_size(embeddings)
        loss_dict = {
            "group_loss": {
                "losses": self.nll_weight * out["group_loss_per_sample"],
                "indices": indices,
                "reduction_type": "element",
            },
            "ce_loss": {
                "losses": self.ce_weight * out["ce_loss_per_sample"],
                "indices": indices,
                "reduction_type": "element",
            },
        }
        self.add_weight_regularization_to_loss_dict(loss_dict, self.W)
        return loss_dict

    # -- helpers ---------------------------------------------------------------------------
    def _check_inputs(self, embeddings: torch.Tensor, labels: torch.Tensor) -> None:
        if embeddings.dim() != 2 or embeddings.shape[1] != self.embedding_size:
            raise ValueError(
                f"embeddings must have shape (batch_size, {self.embedding_size}) "
                f"(embedding_size given to GroupLoss), got {tuple(embeddings.shape)}"
            )
        if labels.dtype.is_floating_point or labels.dtype == torch.bool or labels.is_complex():
            raise TypeError(
                f"labels must be an integer tensor of class ids, got dtype {labels.dtype}; "
                "convert with labels.long()"
            )
        if labels.numel() and (labels.min() < 0 or labels.max() >= self.num_classes):
            raise ValueError(
                f"labels must lie in [0, num_classes={self.num_classes}), got values in "
                f"[{int(labels.min())}, {int(labels.max())}]; remap the training labels to "
                "0..num_classes-1 or raise num_classes"
            )
        if not torch.isfinite(embeddings).all():
            raise ValueError(
                "embeddings contain NaN or inf; check the model's output (learning rate, "
                "input normalisation) before the loss"
            )

    def _anchors(self, labels: torch.Tensor, indices_tuple) -> torch.Tensor:
        if indices_tuple is None:
            return select_anchors(
                labels, self.num_anchors, self.anchor_selection, self.generator
            )
        if not isinstance(indices_tuple, (tuple, list)) or len(indices_tuple) != 1:
            kind = {3: "triplets", 4: "pairs"}.get(
                len(indices_tuple) if isinstance(indices_tuple, (tuple, list)) else -1,
                "an unsupported indices_tuple",
            )
            raise ValueError(
                f"GroupLoss received {kind}; it uses every pair of the batch and takes only "
                "anchors: pass indices_tuple=None (anchors chosen from num_anchors) or the "
                "1-tuple of pml_grouploss.miners.AnchorMiner instead of a pair/triplet miner"
            )
        anchors = c_f.to_device(indices_tuple[0], labels).long().reshape(-1)
        if anchors.numel() and (anchors.min() < 0 or anchors.max() >= labels.shape[0]):
            raise ValueError(
                "indices_tuple[0] (anchor indices) must index into the batch "
                f"[0, {labels.shape[0]}), got values in [{int(anchors.min())}, "
                f"{int(anchors.max())}]"
            )
        return anchors

    def _set_stats(self, corr, out, labels, anchors) -> None:
        with torch.no_grad():
            n = labels.shape[0]
            free = torch.ones(n, dtype=torch.bool, device=labels.device)
            free[anchors] = False
            X, X0 = out["probabilities"], out["prior"]
            self.num_anchors_used = int(anchors.numel())
            if free.any():
                y = labels[free].view(-1, 1)
                self.avg_true_class_prior = float(X0[free].gather(1, y).mean())
                self.avg_true_class_probability = float(X[free].gather(1, y).mean())
                self.refined_accuracy = float((X[free].argmax(1) == labels[free]).float().mean())
            off_diagonal = ~torch.eye(n, dtype=torch.bool, device=corr.device)
            if n > 1:
                self.fraction_negative_similarities = float((corr[off_diagonal] < 0).float().mean())


def _check_positive_int(name: str, value) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"{name} must be a positive int, got {value!r}")
