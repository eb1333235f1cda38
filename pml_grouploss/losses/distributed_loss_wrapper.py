"""Multi-process training for losses that own parameters (GroupLoss's classifier, proxies)."""
from __future__ import annotations

from typing import List

import torch
from pytorch_metric_learning.utils import distributed as pml_dist


class ParametricDistributedLossWrapper(pml_dist.DistributedLossWrapper):
    """PML's ``DistributedLossWrapper`` made correct for losses with parameters.

    PML's wrapper gathers the embeddings of all processes, computes the loss on the whole
    gathered batch on every process and multiplies it by ``world_size`` so that DDP's gradient
    *averaging* gives the model exactly the single-process gradient. A parameter owned by the
    loss (``GroupLoss.W``/``bias``, ``ProxyAnchorLoss.proxies``) is not in the model's DDP:
    every process gives it ``world_size`` times the full-batch gradient, and the replicas drift
    apart (each process concatenates the batch in its own order, so roundings differ).

    This wrapper registers a gradient hook on every parameter of the loss that all-reduces the
    gradient and divides it by ``world_size ** 2``: every replica then receives the same,
    single-process gradient, and the replicas stay identical step after step. Use it exactly
    like PML's wrapper (``efficient=False``: a classification loss needs the full batch)::

        loss_func = ParametricDistributedLossWrapper(GroupLoss(num_classes, 512))
        # model in DDP as usual; loss_func.parameters() in the metric-loss optimizer

    Outside ``torch.distributed`` it returns the wrapped loss unchanged.
    """

    def __init__(self, loss: torch.nn.Module):
        super().__init__(loss, efficient=False)
        self._hooks: List[torch.utils.hooks.RemovableHandle] = []
        for param in self.loss.parameters():
            if param.requires_grad:
                self._hooks.append(param.register_hook(_average_over_processes))


def _average_over_processes(grad: torch.Tensor) -> torch.Tensor:
    if not pml_dist.is_distributed():
        return grad
    world_size = torch.distributed.get_world_size()
    if world_size <= 1:
        return grad
    grad = grad.clone()
    torch.distributed.all_reduce(grad, op=torch.distributed.ReduceOp.SUM)
    return grad / world_size**2
