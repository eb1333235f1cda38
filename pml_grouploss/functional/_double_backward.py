"""The ``create_graph=True`` path of the hand-written backward passes.

:func:`standardize_rows`, :func:`gram`, :func:`rms_normalize` and
:func:`log_replicator_dynamics` are ``torch.autograd.Function`` s whose backward is a closed form
(a few tensor passes instead of autograd's dozens: issue 10's per-call cost). A closed form
computed from saved intermediates is not itself differentiable with respect to the inputs, so
when autograd asks for a differentiable backward (``create_graph=True``: gradient penalties,
meta-learning), the forward formula is re-run with autograd and differentiated instead.
"""
from __future__ import annotations

from typing import Callable, Sequence, Tuple

import torch


def differentiable_backward(
    forward: Callable[..., torch.Tensor],
    inputs: Sequence[torch.Tensor],
    needs_input_grad: Sequence[bool],
    grad: torch.Tensor,
) -> Tuple[torch.Tensor, ...]:
    """``d forward(*inputs) / d inputs`` contracted with ``grad``, as a differentiable graph;
    ``None`` for inputs without ``needs_input_grad``."""
    wanted = [x for x, need in zip(inputs, needs_input_grad) if need]
    with torch.enable_grad():
        out = forward(*inputs)
        grads = iter(torch.autograd.grad(out, wanted, grad, create_graph=True, allow_unused=True))
    return tuple(next(grads) if need else None for need in needs_input_grad)
