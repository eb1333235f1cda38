"""Warnings for a loss that owns a classifier: a forgotten optimizer, a collapsed batch."""
from __future__ import annotations

import warnings
from typing import Optional

import torch


class ClassifierGuardsMixin:
    """For a loss with a classifier parameter ``self.W``: call ``_init_guards()`` in
    ``__init__``, register ``_classifier_got_gradient`` as a hook on the logits, call
    ``_warn_if_classifier_frozen()`` once per forward. Host-side only (no device reads)."""

    def _init_guards(self) -> None:
        self._unchanged_steps = 0
        self._last_version: Optional[int] = None
        self._got_gradient = False
        self._warned = set()

    def _classifier_got_gradient(self, grad: torch.Tensor) -> None:
        self._got_gradient = True

    def _warn_if_classifier_frozen(self) -> None:
        """Warn once when ``W`` got gradients (a backward pass reached the logits since the
        last call: host-side, no device read) but no optimizer changed it for 3 calls."""
        if not (self.W.requires_grad and torch.is_grad_enabled()) or is_compiling():
            return
        version = self.W._version
        got_gradient, self._got_gradient = self._got_gradient, False
        if got_gradient and version == self._last_version:
            self._unchanged_steps += 1
        else:
            self._unchanged_steps = 0
        self._last_version = version
        if self._unchanged_steps >= 3:
            self._warn_once(
                "frozen",
                f"{type(self).__name__}: its classifier (loss.W, loss.bias) receives gradients "
                "but has not "
                "changed for 3 steps: give loss.parameters() to an optimizer (PML trainers: "
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
