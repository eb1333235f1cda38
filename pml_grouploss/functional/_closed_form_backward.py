"""Hand-written backward passes, and their ``create_graph=True`` path.

:func:`standardize_rows`, :func:`gram`, :func:`rms_normalize`,
:func:`log_replicator_dynamics` and GroupLoss's two fused nodes (``_similarity_and_logits``,
``_refined_labels``) are ``torch.autograd.Function`` s whose backward is a closed form
(a few tensor passes instead of autograd's dozens: issue 10's per-call cost). A closed form
computed from saved intermediates is not itself differentiable with respect to the inputs, so
when autograd asks for a differentiable backward (``create_graph=True``: gradient penalties,
meta-learning), the forward formula is re-run with autograd and differentiated instead.
"""
from __future__ import annotations

from typing import Callable, Optional, Sequence, Tuple, Type, Union

import torch


def differentiable_backward(
    forward: Callable[..., Union[torch.Tensor, Sequence[torch.Tensor]]],
    inputs: Sequence[torch.Tensor],
    needs_input_grad: Sequence[bool],
    grad: Union[torch.Tensor, Sequence[Optional[torch.Tensor]]],
) -> Tuple[Optional[torch.Tensor], ...]:
    """``d forward(*inputs) / d inputs`` contracted with ``grad``, as a differentiable graph;
    ``None`` for inputs without ``needs_input_grad``. ``forward`` may return several tensors,
    then ``grad`` holds one gradient per output (``None``: that output is not used)."""
    wanted = [x for x, need in zip(inputs, needs_input_grad) if need]
    with torch.enable_grad():
        out = forward(*inputs)
        if torch.is_tensor(out):
            out, grad = (out,), (grad,)
        used = [(o, g) for o, g in zip(out, grad) if g is not None]
        grads = iter(torch.autograd.grad([o for o, _ in used], wanted, [g for _, g in used],
                                         create_graph=True, allow_unused=True))
    return tuple(next(grads) if need else None for need in needs_input_grad)


RowMapFormula = Callable[[torch.Tensor], Tuple[torch.Tensor, torch.Tensor]]
ClosedForm = Callable[[torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor]


def row_map_function(
    formula: RowMapFormula, closed_form: ClosedForm, name: str
) -> Type[torch.autograd.Function]:
    """A ``torch.autograd.Function`` for a row-wise map ``y = formula(x)[0]`` whose backward
    is ``closed_form(y, factor, grad)`` (``factor``: ``formula(x)[1]``, per-row ``(n, 1)``),
    or autograd of ``formula`` under ``create_graph=True``."""

    class RowMap(torch.autograd.Function):
        @staticmethod
        def forward(ctx, x: torch.Tensor) -> torch.Tensor:
            y, factor = formula(x)
            ctx.save_for_backward(x, y, factor)
            return y

        @staticmethod
        def backward(ctx, grad: torch.Tensor) -> torch.Tensor:
            x, y, factor = ctx.saved_tensors
            if torch.is_grad_enabled():
                return differentiable_backward(
                    lambda x: formula(x)[0], (x,), ctx.needs_input_grad, grad)[0]
            return closed_form(y, factor, grad)

    RowMap.__name__ = RowMap.__qualname__ = name
    return RowMap
