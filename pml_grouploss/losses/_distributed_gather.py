"""The per-call exchange of :class:`~pml_grouploss.losses.ParametricDistributedLossWrapper`:
this process's batch description ("meta", one small all_gather per call), the checks every
process runs on the gathered metas (so every process raises the same error before any other
collective), and the gathers of the batch in rank order."""

from __future__ import annotations

import math
import zlib
from typing import List, Optional, Sequence

import torch

from ..functional.anchors import anchor_mask

MAX_INDEX_TENSORS = 4  # pairs (a1, p, a2, n) are the longest PML indices_tuple
# Fields of the meta. -1 means "not given" for the sizes, dtypes and the seed.
(
    N, ROW, LABELS, N_REF, MASK, RESYNC, NUM_STATE, STATE_NUMEL, K, BAD,
    DTYPE, REF_DTYPE, LABEL_DTYPE, N_LABELS, LABELS_NDIM, N_REF_LABELS, REF_LABELS_NDIM,
    N_MASK, SEED, EMB_NDIM, LENS,
) = range(21)
META_SIZE = LENS + MAX_INDEX_TENSORS
BAD_RANGE = 1  # BAD: an index outside the batch; BAD_MASK + i: indices_tuple[i] is a
BAD_MASK = 2  # boolean mask whose length is not the batch size (its length in LENS + i);
BAD_FLOAT = BAD_MASK + MAX_INDEX_TENSORS  # BAD_FLOAT + i: indices_tuple[i] is not integer
_SEED_BOUND = 2**62
# dtype codes: the same on every process (a hash of the name would not be: PYTHONHASHSEED)
_DTYPES = (
    torch.float32, torch.float64, torch.float16, torch.bfloat16, torch.int64, torch.int32,
    torch.int16, torch.int8, torch.uint8, torch.bool, torch.complex64, torch.complex128,
)


class ScaleGrad(torch.autograd.Function):
    """Identity in the forward pass, gradient times ``scale`` in the backward pass."""

    @staticmethod
    def forward(ctx, x: torch.Tensor, scale: float) -> torch.Tensor:
        ctx.scale = scale
        return x.view_as(x)

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        return grad * ctx.scale, None


def comm_device(device: torch.device) -> torch.device:
    """Where a tensor on ``device`` is communicated: its GPU for NCCL, else the CPU (gloo)."""
    backend = str(torch.distributed.get_backend())
    if "nccl" in backend and device.type == "cuda":
        return device
    if backend == "nccl":
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device("cpu")


def all_gather_parts(x: torch.Tensor, sizes: Sequence[int]) -> List[torch.Tensor]:
    """``x`` of every process (``sizes[r]`` rows on rank ``r``), in rank order.

    This process's entry is ``x`` itself (gradients flow into it); the others are copies.
    Rows are padded to the largest size for the collective and trimmed afterwards. The
    processes must agree on the dtype and the row size of ``x`` (checked by the metas).
    """
    n_max = max(sizes)
    if n_max == 0:  # the same decision on every rank: sizes come from the exchanged metas
        return [x if r == torch.distributed.get_rank() else x[:0] for r in range(len(sizes))]
    comm = comm_device(x.device)
    send = x.detach().to(comm)
    if send.shape[0] < n_max:
        pad = send.new_zeros((n_max - send.shape[0], *send.shape[1:]))
        send = torch.cat([send, pad])
    recv = [torch.empty_like(send) for _ in sizes]
    torch.distributed.all_gather(recv, send.contiguous())
    parts = [r[:n].to(x.device) for r, n in zip(recv, sizes)]
    parts[torch.distributed.get_rank()] = x
    return parts


def gather_metas(meta: torch.Tensor) -> torch.Tensor:
    """``(world_size, META_SIZE)`` metas of every process, on the CPU, checked."""
    world_size = torch.distributed.get_world_size()
    metas = torch.cat(all_gather_parts(meta.view(1, -1), [1] * world_size)).cpu()
    check_metas(metas)
    return metas


def as_gathered_labels(labels: Optional[torch.Tensor], device) -> Optional[torch.Tensor]:
    """``labels`` on ``device``, integer labels as int64: the processes may pass different
    integer dtypes (the gathered batch is what ``torch.cat`` of them would give)."""
    if labels is None:
        return None
    labels = torch.as_tensor(labels, device=device)
    return labels.long() if _integer(labels.dtype) else labels


def local_indices(indices_tuple, batch_size: int):
    """``indices_tuple`` with every boolean mask of ``batch_size`` entries replaced by the
    indices of its ``True`` entries (the gather offsets indices; a mask cannot be offset).
    A mask of another length is kept: :func:`local_meta` reports it, and every process
    raises."""
    if indices_tuple is None or len(indices_tuple) == 0:
        return indices_tuple
    out = []
    for idx in indices_tuple:
        t = idx if torch.is_tensor(idx) else torch.as_tensor(idx)
        if t.dtype == torch.bool and t.numel() == batch_size:
            idx = torch.nonzero(t.reshape(-1)).reshape(-1)
        out.append(idx)
    return tuple(out)


def draw_anchor_seed(loss: torch.nn.Module) -> int:
    """A seed for the anchors of the gathered batch when ``loss`` chooses random anchors
    itself (``anchor_selection="random"``, e.g. GroupLoss), else -1. Drawn from the loss's
    ``generator`` if it has one, else from torch's global (CPU) generator; every process
    draws (their generators advance alike) and rank 0's seed is used."""
    if getattr(loss, "anchor_selection", None) != "random" or not hasattr(loss, "num_anchors"):
        return -1
    generator = getattr(loss, "generator", None)
    return int(torch.randint(0, _SEED_BOUND, (1,), generator=generator))


def random_anchors(loss: torch.nn.Module, labels: torch.Tensor, seed: int) -> torch.Tensor:
    """The ``(n,)`` boolean anchor mask of the gathered batch for ``seed`` (rank 0's): what
    ``loss`` itself would choose with a generator seeded with ``seed``."""
    generator = torch.Generator().manual_seed(seed)
    return anchor_mask(labels, loss.num_anchors, "random", generator)


def local_meta(
    emb, labels, indices_tuple, ref_emb, ref_labels, enqueue_mask, state
) -> torch.Tensor:
    """This process's batch description: sizes, dtypes and shapes, which inputs are given,
    index validity (``indices_tuple`` after :func:`local_indices`)."""
    meta = [-1] * META_SIZE
    meta[N] = emb.shape[0]
    meta[ROW] = math.prod(emb.shape[1:])
    meta[EMB_NDIM] = emb.dim()
    # which of labels / ref_labels are given, and whether ref_emb/ref_labels *are* emb/labels
    meta[LABELS] = (
        int(labels is not None)
        + 2 * int(ref_labels is not None)
        + 4 * int(ref_emb is emb)
        + 8 * int(ref_labels is not None and ref_labels is labels)
    )
    meta[N_REF] = -1 if ref_emb is None else ref_emb.shape[0]
    meta[MASK] = int(enqueue_mask is not None)
    meta[RESYNC] = 0
    meta[NUM_STATE] = len(state)
    meta[STATE_NUMEL] = sum(t.numel() for t in state)
    meta[DTYPE] = _dtype_code(emb.dtype)
    if ref_emb is not None and ref_emb is not emb:
        meta[REF_DTYPE] = _dtype_code(ref_emb.dtype)
    if labels is not None:
        labels = torch.as_tensor(labels)
        meta[LABEL_DTYPE] = _dtype_code(torch.int64 if _integer(labels.dtype) else labels.dtype)
        meta[N_LABELS], meta[LABELS_NDIM] = _rows_and_ndim(labels)
    if ref_emb is not None and ref_labels is not None:  # PML ignores ref_labels otherwise
        meta[N_REF_LABELS], meta[REF_LABELS_NDIM] = _rows_and_ndim(torch.as_tensor(ref_labels))
    if enqueue_mask is not None:
        meta[N_MASK] = torch.as_tensor(enqueue_mask).numel()
    meta[K] = -1 if indices_tuple is None else len(indices_tuple)
    meta[BAD] = 0
    for i, idx in enumerate((indices_tuple or ())[:MAX_INDEX_TENSORS]):
        idx = torch.as_tensor(idx).reshape(-1)
        meta[LENS + i] = idx.numel()
        if idx.dtype.is_floating_point or idx.dtype.is_complex:  # .long() would truncate
            meta[BAD] = meta[BAD] or BAD_FLOAT + i
        elif idx.dtype == torch.bool:  # not the batch's length (see local_indices)
            meta[BAD] = meta[BAD] or BAD_MASK + i
        elif idx.numel() and (int(idx.min()) < 0 or int(idx.max()) >= emb.shape[0]):
            meta[BAD] = meta[BAD] or BAD_RANGE
    return torch.tensor(meta, dtype=torch.long, device=emb.device)


def check_metas(metas: torch.Tensor) -> None:
    """The same error on every process when the processes' inputs do not fit together."""
    _check_shapes(metas)
    agree = {
        ROW: "embedding sizes",
        EMB_NDIM: "the embeddings' number of dimensions",
        DTYPE: "the embeddings' dtype",
        LABELS: "labels/ref_labels given or not (or ref_emb is embeddings)",
        LABEL_DTYPE: "the labels' dtype (integer labels are gathered as int64)",
        N_REF: "ref_emb given or not",
        REF_DTYPE: "ref_emb's dtype",
        MASK: "enqueue_mask given or not",
        NUM_STATE: "number of loss parameters and buffers",
        STATE_NUMEL: "sizes of the loss parameters and buffers",
        K: "indices_tuple length (None or not)",
    }
    for field, what in agree.items():
        column = metas[:, field]
        if field == N_REF:
            column = column >= 0
        if not bool((column == column[0]).all()):
            values = column.tolist()
            if field in (DTYPE, LABEL_DTYPE, REF_DTYPE):
                values = [_dtype_name(c) for c in values]
            raise ValueError(f"the processes disagree on {what}: {values} per rank")
    if int(metas[0, K]) > MAX_INDEX_TENSORS:
        raise ValueError(
            f"indices_tuple has {int(metas[0, K])} tensors; at most {MAX_INDEX_TENSORS}"
        )
    _check_indices(metas)


def _check_shapes(metas: torch.Tensor) -> None:
    """PML's ``check_shapes`` errors, raised on every process (with the rank at fault)."""
    checks = (
        (N_LABELS, LABELS_NDIM, N, "labels", "embeddings"),
        (N_REF_LABELS, REF_LABELS_NDIM, N_REF, "ref_labels", "ref_emb"),
    )
    for rows, ndim, n, name, of in checks:
        for rank, meta in enumerate(metas.tolist()):
            if meta[ndim] < 0:  # not given
                continue
            if meta[rows] != meta[n]:
                raise ValueError(
                    f"Number of {of} must equal number of {name}: rank {rank} passed "
                    f"{_rows_text(meta[rows])} {name} for {meta[n]} {of}"
                )
            if meta[ndim] != 1:
                raise ValueError(
                    f"{name} must be a 1D tensor of shape (batch_size,): rank {rank} passed a "
                    f"{meta[ndim]}D tensor"
                )
    for rank, meta in enumerate(metas.tolist()):
        if meta[N_MASK] >= 0 and meta[N_MASK] != meta[N]:
            raise ValueError(
                f"enqueue_mask must have one entry per embedding: rank {rank} passed "
                f"{meta[N_MASK]} entries for {meta[N]} embeddings"
            )


def _check_indices(metas: torch.Tensor) -> None:
    bad = metas[:, BAD]
    for rank, code in enumerate(bad.tolist()):
        if code >= BAD_FLOAT:
            raise TypeError(
                f"indices_tuple[{code - BAD_FLOAT}] on rank {rank} holds floating-point (or "
                "complex) values; anchor indices must be integer indices or a boolean mask: "
                "convert with .long()"
            )
        if code >= BAD_MASK:
            i = code - BAD_MASK
            raise ValueError(
                f"indices_tuple[{i}] is a boolean mask of {int(metas[rank, LENS + i])} entries "
                f"on rank {rank}; a mask of anchors needs one entry per sample of that "
                f"process's batch ({int(metas[rank, N])})"
            )
    if bool(bad.any()):
        raise ValueError(
            "indices_tuple must index this process's batch (the wrapper offsets it into the "
            f"gathered batch); rank(s) {bad.nonzero().flatten().tolist()} passed "
            "indices outside [0, batch_size). Use a miner on the local batch, not PML's "
            "DistributedMinerWrapper (its indices refer to its own gathered order)"
        )


def gather_indices(indices_tuple, metas: torch.Tensor):
    """Every process's ``indices_tuple``, offset into the rank-ordered gathered batch."""
    if indices_tuple is None or len(indices_tuple) == 0:
        return indices_tuple
    offsets = [0, *torch.cumsum(metas[:, N], 0).tolist()[:-1]]
    gathered = []
    for i, idx in enumerate(indices_tuple):
        device = idx.device if torch.is_tensor(idx) else metas.device
        idx = torch.as_tensor(idx, device=device).reshape(-1).long()
        parts = all_gather_parts(idx, metas[:, LENS + i].tolist())
        gathered.append(torch.cat([p + off for p, off in zip(parts, offsets)]))
    return tuple(gathered)


def gather_ref(ref_emb, ref_labels, emb, labels, all_emb, all_labels, metas: torch.Tensor):
    """``ref_emb``/``ref_labels`` of every process in rank order. When the caller passed the
    embeddings/labels themselves, the gathered embeddings/labels themselves: PML excludes
    self-pairs only when ``ref_labels is labels``."""
    if ref_emb is None:
        return None, None  # PML then uses the embeddings and labels
    sizes = metas[:, N_REF].tolist()
    if ref_emb is emb:
        all_ref_emb = all_emb
    else:
        scaled = ScaleGrad.apply(ref_emb, float(metas.shape[0]))
        all_ref_emb = torch.cat(all_gather_parts(scaled, sizes))
    if ref_labels is None or ref_labels is labels:
        return all_ref_emb, None if ref_labels is None else all_labels
    ref_labels = as_gathered_labels(ref_labels, ref_emb.device)
    return all_ref_emb, torch.cat(all_gather_parts(ref_labels, sizes))


def _integer(dtype: torch.dtype) -> bool:
    return not (dtype.is_floating_point or dtype.is_complex or dtype == torch.bool)


def _rows_and_ndim(t: torch.Tensor):
    return (t.shape[0] if t.ndim else -2), t.ndim


def _rows_text(rows: int) -> str:
    return "0-dimensional" if rows == -2 else str(rows)


def _dtype_code(dtype: torch.dtype) -> int:
    if dtype in _DTYPES:
        return _DTYPES.index(dtype)
    return len(_DTYPES) + zlib.crc32(str(dtype).encode())


def _dtype_name(code: int) -> str:
    if code < 0:
        return "none"
    return str(_DTYPES[code]) if code < len(_DTYPES) else f"dtype code {code}"
