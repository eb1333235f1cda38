"""Multi-process training for losses that own parameters (GroupLoss's classifier, proxies)."""

from __future__ import annotations

import contextvars
import sys
import warnings
import weakref
from typing import List, Optional, Sequence, Tuple

import torch
from pytorch_metric_learning.losses import CrossBatchMemory
from pytorch_metric_learning.utils import common_functions as c_f
from pytorch_metric_learning.utils import distributed as pml_dist

from . import _distributed_gather as g

WRAPPER_NAME = "pml_grouploss.losses.ParametricDistributedLossWrapper"

# True while a ParametricDistributedLossWrapper computes its loss (read by check_distributed_use)
_INSIDE_WRAPPER: contextvars.ContextVar[bool] = contextvars.ContextVar(
    "pml_grouploss_inside_parametric_wrapper", default=False
)
_WARNED_LOCAL: set = set()


class ParametricDistributedLossWrapper(pml_dist.DistributedLossWrapper):
    """PML's ``DistributedLossWrapper`` made correct for losses with parameters.

    PML's wrapper gathers the embeddings of all processes, each process putting *its own*
    embeddings first, and returns ``world_size`` times the loss of that batch. A loss with
    parameters (``GroupLoss.W``/``bias``, ``ProxyAnchorLoss.proxies``) is not in the model's
    DDP: each process starts from its own random initialisation, gives it ``world_size`` times
    its gradient, and — since every process sees the batch in a different order (GroupLoss
    picks the first samples of each class as anchors) — computes a different loss. This
    wrapper instead, on every call with ``world_size > 1``:

    * **makes the loss's parameters and buffers identical**: broadcast from rank 0 at
      construction when the process group is initialised, else at the first call, and again
      whenever a parameter or buffer was replaced, deep-copied, or moved to another device or
      dtype (tracked by identity, storage, device, dtype and shape; every process takes part
      in the decision, so it never deadlocks);
    * **gathers the batch in rank order**, so every process computes the loss on the same
      concatenated batch — the batch a single process would see — and returns the same,
      unscaled value (the single-process loss). ``indices_tuple`` (e.g. the anchors of
      :class:`~pml_grouploss.miners.AnchorMiner`, or a boolean anchor mask of this process's
      batch, which becomes the indices of its ``True`` entries) must index *this process's*
      batch; the wrapper offsets it into the gathered batch. ``ref_emb``/``ref_labels`` are
      gathered the same way (passed as the embeddings/labels themselves, they stay so: PML
      then excludes self-pairs). Batches may differ in size between ranks; integer labels are
      gathered as int64 (their dtypes may differ between ranks);
    * **chooses random anchors once for all ranks**: for a loss that selects random anchors
      itself (``anchor_selection="random"``, e.g. GroupLoss) called without
      ``indices_tuple``, every rank draws ``s = torch.randint(0, 2**62, (1,),
      generator=loss.generator)`` (torch's global CPU generator when the loss has none) and
      rank 0's ``s`` travels in the per-call description the ranks exchange anyway; the loss
      gets ``indices_tuple=(anchor_mask(all_labels, loss.num_anchors, "random",
      torch.Generator().manual_seed(s)),)``. The value is the single-process loss of the
      concatenated batch with those anchors (random anchors of the same law as one
      process's, but not the draw ``GroupLoss(seed=...)`` makes in one process);
    * multiplies only the gradient flowing back into this process's embeddings by
      ``world_size``, so DDP's gradient averaging gives the model the single-process gradient;
    * all-reduces the gradient of every loss parameter and divides by ``world_size`` (DDP's
      rule), so a penalty on the loss's parameters computed outside the wrapper is averaged
      too and the replicas stay identical step after step.

    Like DDP, every process must call the wrapper and run the backward pass through the loss's
    parameters the same number of times (these are collective operations). Inputs that do not
    fit together — labels (or ``ref_labels``) whose length or shape does not match the
    embeddings (``ref_emb``) on some rank, embedding or label dtypes, sizes or optional
    arguments that differ between ranks, a boolean mask of the wrong length or indices outside
    the local batch — raise the same ``ValueError`` on every rank before any other collective
    (the group stays usable). Use::

        loss_func = ParametricDistributedLossWrapper(GroupLoss(num_classes, 512))
        # model in DDP as usual; loss_func.parameters() in the metric-loss optimizer

    ``efficient=True`` is not supported (a classification loss needs the whole batch as
    embeddings, not as ``ref_emb``). Outside ``torch.distributed`` (or with one process) it
    returns the wrapped loss unchanged (with PML's warning when not distributed). A parameter
    that a loss creates inside its first call is synchronised at the second call.

    Args:
        loss: a PML ``BaseMetricLossFunction`` or ``CrossBatchMemory`` (PML's ``TypeError``
            otherwise).
        efficient: must be ``False`` (``True`` raises a ``ValueError``); accepted so that the
            wrapper is a drop-in replacement for PML's.
    """

    def __init__(self, loss: torch.nn.Module, efficient: bool = False):
        if efficient:
            raise ValueError(
                "ParametricDistributedLossWrapper supports only efficient=False: a loss with "
                "parameters (a classifier, proxies) must see the whole gathered batch"
            )
        super().__init__(loss, efficient=False)
        self._sync_signature: Optional[list] = None
        self._ensure_hooks()
        if pml_dist.is_distributed() and torch.distributed.get_world_size() > 1:
            self._broadcast_state(self._state_tensors())

    # -- state synchronisation -------------------------------------------------------------
    def _state_tensors(self) -> List[torch.Tensor]:
        return [*self.loss.parameters(), *self.loss.buffers()]

    def _state_is_synced(self, tensors: Sequence[torch.Tensor]) -> bool:
        signature = self._sync_signature
        return (
            signature is not None
            and len(signature) == len(tensors)
            and all(
                ref() is t and key == _storage_key(t) for (ref, key), t in zip(signature, tensors)
            )
        )

    def _broadcast_state(self, tensors: Sequence[torch.Tensor]) -> None:
        with torch.no_grad():
            for t in tensors:
                buf = t.detach().to(g.comm_device(t.device)).contiguous()
                torch.distributed.broadcast(buf, src=0)
                if buf.data_ptr() != t.data_ptr():
                    t.copy_(buf)
        self._sync_signature = [(weakref.ref(t), _storage_key(t)) for t in tensors]

    def _ensure_hooks(self) -> None:
        for param in self.loss.parameters():
            if param.requires_grad and not _has_average_hook(param):
                param.register_hook(_average_over_processes)

    def __getstate__(self) -> dict:
        # weak references do not pickle; a copy re-synchronises at its first call
        state = self.__dict__.copy()
        state["_sync_signature"] = None
        return state

    # -- forward ---------------------------------------------------------------------------
    def forward(
        self,
        embeddings: torch.Tensor,
        labels: Optional[torch.Tensor] = None,
        indices_tuple: Optional[Tuple[torch.Tensor, ...]] = None,
        ref_emb: Optional[torch.Tensor] = None,
        ref_labels: Optional[torch.Tensor] = None,
        enqueue_mask: Optional[torch.Tensor] = None,
    ) -> torch.Tensor:
        """The loss of the batches of all processes concatenated in rank order."""
        if not pml_dist.is_distributed() or torch.distributed.get_world_size() <= 1:
            return super().forward(
                embeddings, labels, indices_tuple, ref_emb, ref_labels, enqueue_mask
            )
        token = _INSIDE_WRAPPER.set(True)
        try:
            out = self._gathered_loss(
                embeddings, labels, indices_tuple, ref_emb, ref_labels, enqueue_mask
            )
        finally:
            _INSIDE_WRAPPER.reset(token)
        self._ensure_hooks()  # parameters a loss creates lazily in its first call
        return out

    def _gathered_loss(self, emb, labels, indices_tuple, ref_emb, ref_labels, enqueue_mask):
        cross_batch = isinstance(self.loss, CrossBatchMemory)
        if cross_batch and (ref_emb is not None or ref_labels is not None):
            raise ValueError("CrossBatchMemory is not compatible with ref_emb and ref_labels")
        self._ensure_hooks()
        state = self._state_tensors()
        indices_tuple = g.local_indices(indices_tuple, emb.shape[0])
        meta = g.local_meta(emb, labels, indices_tuple, ref_emb, ref_labels, enqueue_mask, state)
        meta[g.RESYNC] = int(not self._state_is_synced(state))
        if indices_tuple is None and not cross_batch:
            meta[g.SEED] = g.draw_anchor_seed(self.loss)
        metas = g.gather_metas(meta)  # raises the same error on every rank
        if bool(metas[:, g.RESYNC].any()):
            self._broadcast_state(state)
        sizes = metas[:, g.N].tolist()
        all_emb = torch.cat(g.all_gather_parts(g.ScaleGrad.apply(emb, float(len(sizes))), sizes))
        all_labels = None
        if labels is not None:
            local_labels = g.as_gathered_labels(labels, emb.device)
            all_labels = torch.cat(g.all_gather_parts(local_labels, sizes))
        indices = g.gather_indices(indices_tuple, metas)
        if cross_batch:
            mask = enqueue_mask
            if mask is not None:
                mask = c_f.to_device(mask, device=emb.device).to(torch.uint8)
                mask = torch.cat(g.all_gather_parts(mask, sizes)).bool()
            return self.loss(all_emb, all_labels, indices, mask)
        seed = int(metas[0, g.SEED])
        if seed >= 0 and all_labels is not None:  # rank 0's seed: the same anchors everywhere
            indices = (g.random_anchors(self.loss, all_labels, seed),)
        all_ref_emb, all_ref_labels = g.gather_ref(
            ref_emb, ref_labels, emb, labels, all_emb, all_labels, metas
        )
        return self.loss(all_emb, all_labels, indices, all_ref_emb, all_ref_labels)


def check_distributed_use(loss: torch.nn.Module) -> None:
    """Called by a loss with parameters at the start of its ``compute_loss``.

    With ``torch.distributed`` initialised and ``world_size > 1``, a call that does not come
    through :class:`ParametricDistributedLossWrapper`

    * from PML's ``DistributedLossWrapper`` **raises** a ``ValueError`` naming
      ``pml_grouploss.losses.ParametricDistributedLossWrapper``. This is always a mistake:
      ``efficient=True`` passes the gathered batch as ``ref_emb``, which a classification loss
      cannot use, and ``efficient=False`` silently gives the loss's parameters ``world_size``
      times their gradient while every process keeps its own initialisation and batch order;
    * from anywhere else (the loss of this process's batch only) **warns once**. That can be
      intended — the loss inside the DDP-wrapped module (DDP then averages its gradient), a
      validation loss on one rank, parameters averaged by hand — so it is not an error; but
      without such care the replicas of the loss's parameters drift apart. Nothing is said
      under ``torch.no_grad()`` or when no parameter requires a gradient.

    A single process (``torch.distributed`` not initialised, or ``world_size == 1``) is never
    affected; the check costs one function call there.
    """
    if _INSIDE_WRAPPER.get() or not pml_dist.is_distributed():
        return
    world_size = torch.distributed.get_world_size()
    if world_size <= 1:
        return
    name = type(loss).__name__
    if _called_by_pml_wrapper():
        raise ValueError(
            f"{name} has its own parameters and cannot be wrapped in pytorch_metric_learning's "
            "DistributedLossWrapper (efficient=True passes the gathered batch as ref_emb, which "
            f"{name} does not support; efficient=False gives its parameters world_size times "
            "their gradient and lets the replicas drift apart). Use "
            f"{WRAPPER_NAME}(loss) instead: the same call, correct gradients and identical "
            "parameters on every process"
        )
    if name in _WARNED_LOCAL or not torch.is_grad_enabled():
        return
    if any(p.requires_grad for p in loss.parameters()):
        _WARNED_LOCAL.add(name)
        warnings.warn(
            f"{name} is computed on this process's batch only (torch.distributed world_size="
            f"{world_size}, no {WRAPPER_NAME}): its parameters get this process's gradient and "
            "their replicas drift apart unless the loss is inside the DDP module or you "
            f"average them yourself. Wrap it in {WRAPPER_NAME}(loss) to train on the gathered "
            "batch with identical parameters on every process. (Shown once.)",
            UserWarning,
            stacklevel=3,
        )


def _storage_key(t: torch.Tensor) -> tuple:
    return t.data_ptr(), t.device, t.dtype, tuple(t.shape)


def _called_by_pml_wrapper(max_depth: int = 24) -> bool:
    """Whether a PML ``DistributedLossWrapper`` method is on the call stack."""
    frame = sys._getframe(2)
    for _ in range(max_depth):
        if frame is None:
            return False
        if isinstance(frame.f_locals.get("self"), pml_dist.DistributedLossWrapper):
            return True
        frame = frame.f_back
    return False


def _has_average_hook(param: torch.Tensor) -> bool:
    hooks = getattr(param, "_backward_hooks", None)
    return bool(hooks) and any(h is _average_over_processes for h in hooks.values())


def _average_over_processes(grad: torch.Tensor) -> torch.Tensor:
    if not pml_dist.is_distributed():
        return grad
    world_size = torch.distributed.get_world_size()
    if world_size <= 1:
        return grad
    if grad.is_sparse:
        return _average_sparse(grad, world_size)
    comm = g.comm_device(grad.device)
    summed = grad.detach().to(comm, copy=True).contiguous()
    torch.distributed.all_reduce(summed, op=torch.distributed.ReduceOp.SUM)
    return (summed / world_size).to(grad.device)


def _average_sparse(grad: torch.Tensor, world_size: int) -> torch.Tensor:
    """The mean over processes of a sparse COO gradient (``GroupLoss(sparse_gradients=True)``):
    every rank's rows are gathered and summed where they coincide. (A dense all-reduce would
    send all of ``W``: 2 GB at 1,000,000 x 512.)"""
    local = grad.detach().coalesce()
    comm = g.comm_device(grad.device)
    count = torch.tensor([local.indices().shape[1]], device=comm)
    counts = [torch.empty_like(count) for _ in range(world_size)]
    torch.distributed.all_gather(counts, count)
    sizes = torch.cat(counts).tolist()  # the collective has synchronised already
    indices = g.all_gather_parts(local.indices().t().contiguous(), sizes)
    values = g.all_gather_parts(local.values(), sizes)
    total = torch.sparse_coo_tensor(torch.cat(indices).t(), torch.cat(values), grad.shape)
    return total.coalesce() / world_size
