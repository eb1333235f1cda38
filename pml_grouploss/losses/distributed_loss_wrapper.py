"""Multi-process training for losses that own parameters (GroupLoss's classifier, proxies)."""
from __future__ import annotations

from typing import Optional, Tuple

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

    This wrapper instead

    * returns the loss of the whole gathered batch *unscaled* (the single-process value) and
      multiplies only the gradient flowing back into this process's embeddings by
      ``world_size``, so DDP's averaging still gives the model the single-process gradient;
    * registers a gradient hook on every parameter of the loss that all-reduces its gradient
      and divides by ``world_size`` (DDP's own rule for model parameters). Every replica then
      receives the same single-process gradient, bit for bit, and the replicas stay
      identical step after step. Gradients a parameter receives from outside the wrapper
      (e.g. an explicit penalty ``loss_func.loss.W.pow(2).sum()`` computed on every process)
      are averaged the same way, hence also correct.

    The hooks are (re)checked at every call, so a ``copy.deepcopy`` of the wrapper or a
    parameter replaced after construction is covered too. Like DDP, every process must run
    the backward pass through the loss's parameters the same number of times (the hooks are
    collective operations). Use it like PML's wrapper (``efficient=False`` only: a
    classification loss needs the full batch)::

        loss_func = ParametricDistributedLossWrapper(GroupLoss(num_classes, 512))
        # model in DDP as usual; loss_func.parameters() in the metric-loss optimizer

    Outside ``torch.distributed`` it returns the wrapped loss unchanged (with PML's warning).
    """

    def __init__(self, loss: torch.nn.Module):
        super().__init__(loss, efficient=False)
        self._ensure_hooks()

    def _ensure_hooks(self) -> None:
        for param in self.loss.parameters():
            if param.requires_grad and not _has_average_hook(param):
                param.register_hook(_average_over_processes)

    def forward(
        self,
        embeddings: torch.Tensor,
        labels: Optional[torch.Tensor] = None,
        indices_tuple: Optional[Tuple[torch.Tensor, ...]] = None,
        ref_emb: Optional[torch.Tensor] = None,
        ref_labels: Optional[torch.Tensor] = None,
        enqueue_mask: Optional[torch.Tensor] = None,
    ) -> torch.Tensor:
        self._ensure_hooks()
        out = super().forward(embeddings, labels, indices_tuple, ref_emb, ref_labels,
                              enqueue_mask)
        self._ensure_hooks()  # parameters a loss creates lazily in its first forward
        return out

    def forward_regular_loss(self, emb, labels, indices_tuple, ref_emb, ref_labels, world_size):
        if world_size <= 1:
            return self.loss(emb, labels, indices_tuple, ref_emb, ref_labels)
        emb = _ScaleGrad.apply(emb, float(world_size))
        if ref_emb is not None:
            ref_emb = _ScaleGrad.apply(ref_emb, float(world_size))
        all_emb, all_labels, all_ref_emb, all_ref_labels, _ = pml_dist.gather_emb_and_ref(
            emb, labels, ref_emb, ref_labels
        )
        return self.loss(all_emb, all_labels, indices_tuple, all_ref_emb, all_ref_labels)

    def forward_cross_batch(self, emb, labels, indices_tuple, ref_emb, ref_labels, world_size,
                            enqueue_mask):
        if ref_emb is not None or ref_labels is not None:
            raise ValueError("CrossBatchMemory is not compatible with ref_emb and ref_labels")
        if world_size <= 1:
            return self.loss(emb, labels, indices_tuple, enqueue_mask)
        emb = _ScaleGrad.apply(emb, float(world_size))
        all_emb, all_labels, _, _, _ = pml_dist.gather_emb_and_ref(emb, labels)
        enqueue_mask = pml_dist.gather_enqueue_mask(enqueue_mask, emb.device)
        return self.loss(all_emb, all_labels, indices_tuple, enqueue_mask)


class _ScaleGrad(torch.autograd.Function):
    """Identity in the forward pass, gradient times ``scale`` in the backward pass."""

    @staticmethod
    def forward(ctx, x: torch.Tensor, scale: float) -> torch.Tensor:
        ctx.scale = scale
        return x.view_as(x)

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        return grad * ctx.scale, None


def _has_average_hook(param: torch.Tensor) -> bool:
    hooks = getattr(param, "_backward_hooks", None)
    return bool(hooks) and any(h is _average_over_processes for h in hooks.values())


def _average_over_processes(grad: torch.Tensor) -> torch.Tensor:
    if not pml_dist.is_distributed():
        return grad
    world_size = torch.distributed.get_world_size()
    if world_size <= 1:
        return grad
    grad = grad.clone()
    torch.distributed.all_reduce(grad, op=torch.distributed.ReduceOp.SUM)
    return grad / world_size
