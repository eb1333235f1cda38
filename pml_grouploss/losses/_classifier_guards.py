"""Warnings for a loss that owns a classifier: a forgotten optimizer, a collapsed batch."""
from __future__ import annotations

import warnings
import weakref
from typing import Optional

import torch
from torch.optim.optimizer import register_optimizer_step_post_hook

# The losses whose classifier is watched by the one optimizer-step hook below (weak: a loss
# that is garbage collected leaves the set).
_WATCHED: "weakref.WeakSet" = weakref.WeakSet()
_HOOKED = False


def _after_optimizer_step(optimizer: torch.optim.Optimizer, args, kwargs) -> None:
    """torch's global post-step hook: for each watched loss, an optimizer step that updated its
    classifier resets its count, any other step counts one (host-side: parameter identities)."""
    if not _WATCHED:
        return
    stepped = {id(p) for group in optimizer.param_groups for p in group["params"]}
    for loss in list(_WATCHED):
        loss._other_steps = 0 if id(loss.W) in stepped else getattr(loss, "_other_steps", 0) + 1


class ClassifierGuardsMixin:
    """For a loss with a classifier parameter ``self.W``: call ``_init_guards()`` in
    ``__init__``, register ``_classifier_got_gradient`` as a hook on the logits, call
    ``_warn_if_classifier_frozen()`` once per forward. Host-side only (no device reads)."""

    def _init_guards(self) -> None:
        global _HOOKED
        self._other_steps = 0  # optimizer steps that left W alone since it last changed
        self._last_version: Optional[int] = None
        self._got_gradient = False
        self._warned = set()
        if not _HOOKED:
            register_optimizer_step_post_hook(_after_optimizer_step)
            _HOOKED = True

    def _classifier_got_gradient(self, grad: torch.Tensor) -> None:
        self._got_gradient = True

    def _warn_if_classifier_frozen(self) -> None:
        """Warn once when ``W`` gets gradients (a backward pass reached the logits: host-side,
        no device read) but 3 optimizer steps left it unchanged (steps of optimizers without
        it, counted by torch's post-step hook; none while gradients accumulate between steps,
        none without an optimizer)."""
        if not (self.W.requires_grad and torch.is_grad_enabled()) or is_compiling():
            return
        _WATCHED.add(self)
        if self.W._version != self._last_version:  # changed: stepped, or set by hand
            self._last_version, self._other_steps = self.W._version, 0
        if self._got_gradient and self._other_steps >= 3:
            self._warn_once(
                "frozen",
                f"{type(self).__name__}: its classifier (loss.W, loss.bias) receives gradients "
                "but has not changed while optimizers stepped 3 times: give "
                "loss.parameters() to an optimizer (PML trainers: "
                'optimizers["metric_loss_optimizer"]; DeepAdversarialMetricLearning steps no '
                'loss optimizer: add them to optimizers["embedder_optimizer"])',
            )

    def _warn_once(self, key: str, message: str) -> None:
        if key not in self._warned:
            self._warned.add(key)
            warnings.warn(message, UserWarning, stacklevel=4)


def is_compiling() -> bool:
    compiler = getattr(torch, "compiler", None)
    return bool(compiler is not None and compiler.is_compiling())
