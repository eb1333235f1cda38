"""Gathering rows of a parameter with a sparse gradient (only the rows used get one)."""
from __future__ import annotations

import torch

from .._validation import check_bool


def gather_rows(weight: torch.Tensor, index: torch.Tensor, sparse: bool) -> torch.Tensor:
    """``weight.index_select(0, index)`` (``weight[index]`` for indices in ``[0, m)``) for a
    ``(m, ...)`` ``weight`` and a ``(k,)`` int64 ``index``.

    ``index`` is not checked (a check would read the device each step): every entry must lie
    in ``[0, m)``. Unlike ``weight[index]``, negative indices are not wrapped; an index out of
    range raises torch's ``IndexError`` on the CPU and is a device-side assert on CUDA.

    With ``sparse=True`` the gradient of ``weight`` is a sparse COO tensor holding only the
    rows in ``index`` (duplicates are summed when it is coalesced), as
    ``torch.nn.functional.embedding(..., sparse=True)`` gives; that function only takes 2-D
    weights, this one also 1-D ones (a classifier's bias). Use it with an optimizer that
    accepts sparse gradients (``torch.optim.SparseAdam``, ``torch.optim.SGD`` without
    weight decay): a step then costs O(k) instead of O(m), with ``m`` the number of rows.

    Returns:
        ``(k, ...)``.
    """
    if not check_bool("sparse", sparse):
        return weight.index_select(0, index)
    return _SparseGather.apply(weight, index)


class _SparseGather(torch.autograd.Function):
    @staticmethod
    def forward(ctx, weight, index):
        ctx.save_for_backward(index)
        ctx.weight_shape = weight.shape
        return weight.index_select(0, index)

    @staticmethod
    def backward(ctx, grad):
        (index,) = ctx.saved_tensors
        grad_weight = torch.sparse_coo_tensor(
            index.unsqueeze(0), grad, ctx.weight_shape, dtype=grad.dtype, device=grad.device,
            check_invariants=False,  # in range by construction; checking reads the device
        )
        return grad_weight, None
