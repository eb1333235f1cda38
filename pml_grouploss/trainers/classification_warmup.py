"""Classification warm-up before Group Loss (GL++ §5), for PML's trainers."""
from __future__ import annotations

from typing import Any, Callable, Dict, Optional, Union

from pytorch_metric_learning.trainers import BaseTrainer
from pytorch_metric_learning.utils import common_functions as c_f
from pytorch_metric_learning.utils.distributed import DistributedLossWrapper
from pytorch_metric_learning.utils.logging_presets import HookContainer

from .. import _validation as v
from ..losses import GroupLoss

#: The loss attributes the warm-up overrides, and their values during the warm-up (``ce_weight``
#: is the warm-up's own ``ce_weight``).
_OVERRIDDEN = ("nll_weight", "ce_weight", "num_iterations")
#: The loss's own values of ``_OVERRIDDEN`` while a warm-up holds it, kept on the loss: a second
#: ``ClassificationWarmup`` of the same loss (a notebook cell run twice) must not save the first
#: one's warm-up values as the loss's own.
_SAVED = "_classification_warmup_saved"


class ClassificationWarmup:
    """Train a :class:`~pml_grouploss.losses.GroupLoss` as a plain classifier for its first
    ``epochs`` epochs, then as Group Loss (GL++ §5: "We train all networks for the
    classification task for 10 epochs").

    During the warm-up the loss's ``nll_weight`` is 0, its ``num_iterations`` 0 (no
    replicator dynamics are run for a term that is switched off) and its ``ce_weight`` this
    object's ``ce_weight``: the loss value is the cross-entropy of the loss's own classifier
    (``CE(logits, labels)``, over the classes its ``ce_classes`` chooses), and that
    cross-entropy trains the classifier, the embedder and the trunk; the refined-label NLL
    gets no gradient. From epoch ``epochs + 1`` on, the loss's own values of these three
    attributes (as they were when the warm-up began) are restored exactly. The loss object
    is the one in the trainer's ``loss_funcs``: nothing else in the PML script changes, and
    record-keeper logs the loss's ``nll_weight``/``ce_weight``/``num_iterations`` as they
    are (0 during the warm-up).

    The mode is set per epoch by a PML ``end_of_epoch_hook``: pass
    ``end_of_epoch_hook=warmup.end_of_epoch_hook(hook)`` to the trainer, where ``hook`` is
    your own end-of-epoch hook (e.g. ``HookContainer.end_of_epoch_hook(tester, ...)``) or
    ``None``. After each epoch it runs ``hook(trainer)`` and sets the mode of epoch
    ``trainer.epoch + 1``. PML has no start-of-epoch hook, so the first epoch's mode is set
    here, from ``start_epoch``: give it the ``start_epoch`` you pass to
    ``trainer.train(start_epoch=...)`` when resuming (e.g. the value returned by
    ``HookContainer.load_latest_saved_models``). If the trainer runs another epoch than the
    one the mode was set for, the hook raises a ``RuntimeError`` naming ``start_epoch``.

    When training stops inside the warm-up (``num_epochs <= epochs`` or early stopping), the
    loss stays in warm-up mode; :meth:`restore` gives it its own weights back. The loss's own
    values are kept on the loss, so a second ``ClassificationWarmup`` built on a loss that is
    still in warm-up (a notebook cell run twice) restores the same values.

    Args:
        loss: a :class:`~pml_grouploss.losses.GroupLoss` (or subclass): the warm-up trains
            its classifier; a (Parametric)``DistributedLossWrapper`` around one is accepted
            (its ``loss`` is used). A loss without a classifier (e.g. PML's
            ``ProxyAnchorLoss``) raises a ``TypeError``.
        epochs: warm-up epochs, ``>= 0`` (the papers: 10; 0 = no warm-up).
        start_epoch: the first epoch the trainer will run (PML's ``train(start_epoch=...)``,
            1-based), ``>= 1``.
        ce_weight: weight of the cross-entropy during the warm-up, ``> 0`` (default 1.0;
            independent of the loss's own ``ce_weight``, which may be 0).

    Attributes:
        warming_up: whether the loss is in warm-up mode now (recordable, as
            ``epochs`` and ``ce_weight``).
        epoch: the epoch the current mode was set for.
    """

    def __init__(
        self,
        loss: Union[GroupLoss, DistributedLossWrapper],
        epochs: int = 10,
        start_epoch: int = 1,
        ce_weight: float = 1.0,
    ) -> None:
        if isinstance(loss, DistributedLossWrapper):  # e.g. ParametricDistributedLossWrapper
            loss = loss.loss
        if not isinstance(loss, GroupLoss):
            raise TypeError(
                f"loss must be a GroupLoss (or a subclass): the warm-up trains its classifier "
                f"with cross-entropy; got {type(loss).__name__}, which has no classifier "
                "(train a separate classifier for such losses, e.g. with PML's "
                "TrainWithClassifier)"
            )
        self.loss = loss
        self.epochs = v.check_int("epochs", epochs, minimum=0)
        self.ce_weight = v.check_number(
            "ce_weight", ce_weight, minimum=0, strict_minimum=True,
            hint="the warm-up's loss is ce_weight * cross-entropy",
        )
        self.warming_up = False
        c_f.add_to_recordable_attributes(
            self, list_of_names=["epochs", "ce_weight", "warming_up"], is_stat=False
        )
        self.set_epoch(v.check_int("start_epoch", start_epoch, minimum=1))

    def set_epoch(self, epoch: int) -> None:
        """Put the loss in the mode of ``epoch`` (1-based): warm-up if ``epoch <= epochs``,
        else its own weights."""
        self.epoch = v.check_int("epoch", epoch, minimum=1)
        if self.epoch <= self.epochs:
            self._enter()
        else:
            self.restore()

    def restore(self) -> None:
        """Leave the warm-up now: the loss gets back the values of ``nll_weight``,
        ``ce_weight`` and ``num_iterations`` it had when the warm-up began (no-op outside
        the warm-up)."""
        saved: Optional[Dict[str, Any]] = getattr(self.loss, _SAVED, None)
        if saved is not None:
            for name, value in saved.items():
                setattr(self.loss, name, value)
            delattr(self.loss, _SAVED)
        self.warming_up = False

    def end_of_epoch_hook(self, chained_hook: Optional[Callable[[Any], Any]] = None
                          ) -> Callable[[Any], Any]:
        """A PML ``end_of_epoch_hook``: ``hook(trainer)`` runs ``chained_hook(trainer)``, then
        sets the mode of epoch ``trainer.epoch + 1``.

        Returns ``chained_hook``'s result (``False`` stops PML's training loop), or ``True``
        without one.
        """
        _check_chained_hook(chained_hook)

        def _hook(trainer: Any) -> Any:
            if trainer.epoch != self.epoch:
                raise RuntimeError(
                    f"ClassificationWarmup set the loss's mode for epoch {self.epoch}, but the "
                    f"trainer has just run epoch {trainer.epoch}: pass the start_epoch of "
                    "trainer.train(start_epoch=...) as ClassificationWarmup(..., start_epoch=...) "
                    "or call warmup.set_epoch(start_epoch) before training"
                )
            result = True if chained_hook is None else chained_hook(trainer)
            self.set_epoch(trainer.epoch + 1)
            return result

        return _hook

    def _enter(self) -> None:
        if getattr(self.loss, _SAVED, None) is None:
            setattr(self.loss, _SAVED, {name: getattr(self.loss, name) for name in _OVERRIDDEN})
        self.loss.nll_weight = 0.0
        self.loss.num_iterations = 0
        self.loss.ce_weight = self.ce_weight
        self.warming_up = True

    def __repr__(self) -> str:
        return (f"ClassificationWarmup(epochs={self.epochs}, epoch={self.epoch}, "
                f"warming_up={self.warming_up})")


def _check_chained_hook(chained_hook: Any) -> None:
    """``chained_hook`` is a ``hook(trainer)`` or None, not one of the usual slips."""
    if isinstance(chained_hook, BaseTrainer):  # end_of_epoch_hook=warmup.end_of_epoch_hook
        raise TypeError(
            "the trainer called ClassificationWarmup.end_of_epoch_hook itself: pass "
            "end_of_epoch_hook=warmup.end_of_epoch_hook(hook) (called, with your own hook or "
            "None) to the trainer"
        )
    if getattr(chained_hook, "__func__", None) is HookContainer.end_of_epoch_hook:
        raise TypeError(
            "chained_hook is HookContainer.end_of_epoch_hook itself, which makes the hook: pass "
            "hooks.end_of_epoch_hook(tester, dataset_dict, model_folder)"
        )
    if chained_hook is not None and not callable(chained_hook):
        raise TypeError(
            "chained_hook must be a callable hook(trainer) or None, got "
            f"{type(chained_hook).__name__}"
        )
