"""GroupLoss's input checks: host-side ones always, value ones (device reads) when validating."""
from __future__ import annotations

import math
from typing import Optional, Tuple

import torch
from pytorch_metric_learning.utils import common_functions as c_f

from .. import _validation as v
from ..functional.anchors import _anchor_mask, as_anchor_mask
from ..functional.rms_normalize import row_power_of_two
from ._classifier_guards import is_compiling

# See ``_watch_scale``.
SCALE_GROWTH_LIMIT = 1000.0


class GroupLossChecksMixin:
    """Checks for :class:`~pml_grouploss.losses.GroupLoss` (``self.num_classes``,
    ``self.embedding_size``, ``self.validate``, the anchor settings, ``_warn_once``).

    Shapes and dtypes are known on the host and are checked on every call. Checks of tensor
    *values* need a device read, a synchronisation on CUDA. :meth:`_validating` says which run:
    the errors (label and anchor range, NaN/inf, subnormal rows, non-finite logits) with
    ``validate=None`` on every call on CPU tensors, where a read costs microseconds, and on
    calls 1, 2, 4, 8, ... on other devices; the diagnostic warnings (collapsed batch, a batch
    of anchors only, norm growth) on calls 1, 2, 4, 8, ... on every device. ``True``: both
    every call; ``False``: neither.
    """

    validate: Optional[bool]
    _calls: int = 0

    def _validating(self, embeddings: torch.Tensor) -> Tuple[bool, bool]:
        """``(errors, warnings)``: which value checks run in this forward (called once per
        forward). With ``validate=None`` the warnings run on the 1st, 2nd, 4th, 8th, ... eager
        call (20 in a million steps: set-up mistakes show at once, a collapse or a slow drift
        by twice the step it began at), and so do the errors off the CPU (no per-step
        synchronisation); none of either off the CPU inside ``torch.compile`` (a changing
        counter would be a guard: a recompile per step)."""
        if self.validate is not None:
            return self.validate, self.validate
        on_cpu = embeddings.device.type == "cpu"
        if is_compiling():
            return on_cpu, False
        self._calls += 1
        scheduled = self._calls & (self._calls - 1) == 0
        return on_cpu or scheduled, scheduled

    def _reject_ref_emb(self, embeddings, labels, ref_emb, ref_labels) -> None:
        if ref_emb is not embeddings or ref_labels is not labels:
            raise ValueError(
                "GroupLoss refines the labels of one batch over its own similarities and does "
                "not take ref_emb/ref_labels (PML's DistributedLossWrapper(efficient=True) "
                "passes them): for several processes "
                "use pml_grouploss.losses.ParametricDistributedLossWrapper; otherwise call "
                "loss(embeddings, labels) on one batch (see docs/losses.md, 'PML features')"
            )

    def _check_inputs(self, embeddings: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """``labels`` as int64 after the host-side checks of shapes and dtypes (no read)."""
        v.check_floating("embeddings", embeddings)
        if embeddings.dim() != 2 or embeddings.shape[1] != self.embedding_size:
            raise ValueError(
                f"embeddings must have shape (batch_size, {self.embedding_size}) "
                f"(embedding_size given to GroupLoss), got {tuple(embeddings.shape)}"
            )
        return v.check_class_ids("labels", labels)

    def _check_label_range(self, low: float, high: float) -> None:
        if low < 0 or high >= self.num_classes:
            raise ValueError(
                f"labels must lie in [0, num_classes={self.num_classes}), got values in "
                f"[{int(low)}, {int(high)}]; remap the training labels to 0..num_classes-1 or "
                "raise num_classes"
            )

    def _check_labels(self, labels: torch.Tensor) -> None:
        """One read: the label range (before ``labels`` index the classifier's rows)."""
        if labels.numel():
            self._check_label_range(*torch.stack(labels.aminmax()).tolist())

    def _check_values(self, embeddings: torch.Tensor, x: torch.Tensor,
                      row_power: Optional[torch.Tensor], logits: torch.Tensor,
                      labels: Optional[torch.Tensor]) -> None:
        """One read after the classifier: the range of ``labels`` (``None``: checked before),
        NaN/inf (the logits' range is finite only if the embeddings, ``x`` (``embeddings`` in
        the computing dtype) and the classifier are), rows too small for ``embeddings``' dtype
        (``row_power``: :func:`row_power_of_two` of ``x`` or ``None``), overflow of the logits,
        of the prior's ``logits / temperature`` or of the weighted cross-entropy (at most
        ``2 max|logits| + log m`` per sample) in ``embeddings``' dtype."""
        with torch.no_grad():
            if row_power is None:
                row_power = row_power_of_two(x)
            # float64 holds every label and every power of two exactly
            parts = [*torch.aminmax(logits.detach()), row_power.amin()]
            if labels is not None:
                parts += labels.aminmax()
            lowest, highest, smallest, *label_range = torch.stack(parts).tolist()
        if label_range:
            self._check_label_range(*label_range)
        largest = max(-lowest, highest)
        if not math.isfinite(largest):
            self._name_overflow(x)
        if largest / self.temperature > torch.finfo(logits.dtype).max:
            raise ValueError(
                f"temperature={self.temperature:g} is too small for logits of magnitude "
                f"{largest:.3g}: the prior's logits / temperature overflow {logits.dtype}; use a "
                "larger temperature (the papers use 24-79)"
            )
        if largest > torch.finfo(embeddings.dtype).max / (4 * max(1.0, self.ce_weight)):
            self._name_overflow(x)
        tiny = torch.finfo(embeddings.dtype).tiny
        if smallest < tiny:  # power <= a row's largest magnitude < 2 power; zero rows: 0.5
            raise ValueError(
                f"embeddings have rows of magnitude below {tiny:.1e} (the smallest normal "
                f"{embeddings.dtype}): GroupLoss is scale-invariant but its gradient grows as "
                "1/scale and overflows; check the model's output or compute in float64"
            )

    def _name_overflow(self, x: torch.Tensor) -> None:
        """Raise for logits that are non-finite or would overflow the loss: reads only on this
        error path."""
        if not bool(torch.isfinite(x).all()):
            raise ValueError(
                "embeddings contain NaN or inf; check the model's output (learning rate, "
                "input normalisation) before the loss"
            )
        if not all(bool(torch.isfinite(p).all()) for p in (self.W, self.bias)):
            raise ValueError(
                "the classifier's parameters (loss.W, loss.bias) contain NaN or inf: its "
                'optimizer (PML trainers: optimizers["metric_loss_optimizer"]) diverged; '
                "lower its learning rate"
            )
        if not self.normalize_embeddings:
            raise ValueError(
                "the classifier's logits overflow (embeddings too large for "
                "normalize_embeddings=False); use normalize_embeddings=True"
            )
        raise ValueError(
            "the classifier's logits overflow although its input is normalised: its "
            "parameters (loss.W, loss.bias) have grown too large; lower the learning rate of "
            'its optimizer (PML trainers: optimizers["metric_loss_optimizer"])'
        )

    def _check_batch(self, x: torch.Tensor, anchors: torch.Tensor) -> None:
        """One read, for the diagnostic warnings: a collapsed batch (every embedding equal), a
        batch of anchors only (``anchors``: ``(n,)`` boolean mask), norm growth."""
        with torch.no_grad():
            lowest, highest = torch.aminmax(x, dim=0)
            top, spread, all_anchors, scale = torch.stack([
                torch.maximum(highest.amax(), -lowest.amin()), (highest - lowest).amax(),
                anchors.all(), torch.linalg.vector_norm(x, dim=1).mean(),
            ]).tolist()
        if x.shape[0] > 1 and spread <= 1e-6 * top:
            self._warn_once(
                "collapse",
                "GroupLoss: every embedding in the batch is identical (the trunk has "
                "collapsed); lower the trunk's learning rate (see docs/losses.md) and keep "
                "normalize_embeddings=True",
            )
        if x.shape[0] > 1 and all_anchors:
            self._warn_once(
                "all anchors",
                "GroupLoss: every sample of the batch is an anchor (num_anchors per class >= "
                "the samples per class), so the refinement has no sample to relabel and the "
                "loss is the auxiliary cross-entropy alone (zero with ce_weight=0); sample more "
                "per class (MPerClassSampler m > num_anchors) or lower num_anchors",
            )
        self._watch_scale(scale)

    def _watch_scale(self, scale: float) -> None:
        """Warn once when the mean embedding norm exceeds ``SCALE_GROWTH_LIMIT`` times its
        value at the first checked call. The loss sees only directions, so such growth comes
        from the optimizer's step size on the trunk (measured in docs/losses.md: Adam 1e-2 on
        ``Net`` + ``MLP`` with batches of 32 grew it ~22,000-fold and did not train; 1e-3 grew
        it ~60-fold and trained)."""
        first = getattr(self, "_first_scale", None)
        if first is None or first <= 0:
            self._first_scale = scale
        elif scale > SCALE_GROWTH_LIMIT * first:
            self._warn_once(
                "scale",
                f"GroupLoss: the embeddings' mean norm grew {scale / first:.0f}-fold since "
                "the first batch. The loss sees only their directions, so this growth comes "
                "from the optimizer's steps on the trunk: its learning rate is large for this "
                "model (Adam 1e-2 on a trunk + MLP embedder with batches of 32 did not train, "
                "1e-3 did: docs/losses.md). Lower the trunk's and embedder's learning rates "
                "to 1e-3",
            )

    def _anchor_mask(self, labels: torch.Tensor, indices_tuple, validate: bool) -> torch.Tensor:
        """``(n,)`` boolean mask of the anchors (no device read unless ``validate``)."""
        if indices_tuple is None:
            return _anchor_mask(labels, self.num_anchors, self.anchor_selection, self.generator)
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
        anchors = indices_tuple[0]
        if torch.is_tensor(anchors):
            anchors = c_f.to_device(anchors, labels)
        else:
            anchors = torch.as_tensor(anchors, device=labels.device)
        return as_anchor_mask(anchors, labels.shape[0], check_range=validate)
