"""Nearest-class batch sampler (Group Loss++ §5.1, re-identification setting)."""
from __future__ import annotations

from typing import Any, Callable, Dict, List, Optional, Sequence, Union

import numpy as np
import torch
from pytorch_metric_learning.samplers import MPerClassSampler

from .._validation import check_bool, check_int
from ..functional.class_centroids import class_centroids, nearest_classes

ArrayLike = Union[torch.Tensor, np.ndarray, Sequence[int]]


def _class_ids(labels: ArrayLike) -> np.ndarray:
    """``labels`` as an ``(N,)`` integer array (integer-valued floats become int64); a named
    error for other shapes, NaN/inf, fractions and non-numbers (the centroids are indexed by
    class id; a NaN class would never be found again and its batch never filled)."""
    if torch.is_tensor(labels):
        labels = labels.detach().cpu().numpy()
    labels = np.asarray(labels)
    if labels.ndim != 1:
        raise ValueError(f"labels must be (N,), one class id per sample, got shape {labels.shape}")
    if labels.size == 0:
        raise ValueError("labels is empty: the sampler needs a labelled dataset")
    if labels.dtype.kind in "iu":
        return labels
    fix = "map them to class ids, e.g. np.unique(labels, return_inverse=True)[1]"
    if labels.dtype.kind != "f":
        raise TypeError(f"labels must be integer class ids, got dtype {labels.dtype}; {fix}")
    if not (np.all(np.isfinite(labels)) and np.all(labels == np.round(labels))):
        raise ValueError(f"labels must be integer class ids, got NaN, inf or fractions; {fix}")
    return labels.astype(np.int64)


def _embedding_matrix(embeddings: ArrayLike, name: str = "embeddings") -> torch.Tensor:
    """``embeddings`` as a finite real ``(N, d)`` CPU float tensor, ``d >= 1`` (a named error
    for other shapes and dtypes: bool/complex/text would be cast silently or fail in torch)."""
    if torch.is_tensor(embeddings):
        emb = embeddings.detach().cpu()
    else:
        array = np.asarray(embeddings)
        if array.dtype.kind not in "iuf":
            raise TypeError(f"{name} must be a real-valued (N, d) array, got dtype {array.dtype}")
        emb = torch.as_tensor(array)
    if emb.dtype == torch.bool or emb.is_complex():
        raise TypeError(f"{name} must be real-valued, got dtype {emb.dtype}")
    if emb.ndim != 2 or emb.shape[1] == 0:
        raise ValueError(f"{name} must have shape (N, d) with d >= 1, got {tuple(emb.shape)}")
    emb = emb if emb.is_floating_point() else emb.float()
    if not bool(torch.isfinite(emb).all()):
        raise ValueError(f"{name} contain NaN or inf: cannot compute class centroids")
    return emb


class NearestClassSampler(MPerClassSampler):
    """Batches of a random seed class plus its nearest classes, ``m`` samples per class.

    Group Loss++ §5.1: "for each mini-batch, we first sample a fixed number of classes with a
    low average distance between each other, and then for each class, we sample a fixed number
    of samples." Each batch holds ``P = batch_size // m`` classes:

    1. a *seed* class, drawn uniformly among the classes not yet used in the current *round*
       (a round ends when every class has appeared in some batch, so every class is visited);
    2. the ``P - 1`` classes whose centroids are nearest to the seed's centroid (Euclidean), or
       ``P - 1`` classes drawn uniformly among the ``num_candidates`` nearest when
       ``num_candidates > P - 1`` (more variety, slightly less hard batches);
    3. ``m`` samples of every chosen class, taken from a per-class shuffled queue, so that every
       sample of a class is used before any is repeated (classes with fewer than ``m`` samples
       repeat some).

    **Centroids** are the class means of the latest embeddings (L2-normalized first when
    ``normalize_embeddings``, as PML's default ``LpDistance`` compares them). Update them with
    :meth:`update_centroids`, with a user ``embedding_fn`` through :meth:`refresh`, or once per
    epoch from a PML trainer: ``end_of_epoch_hook=sampler.end_of_epoch_hook`` (it embeds
    ``trainer.dataset`` with ``trainer.models``; chain your own hook with
    :meth:`chain_end_of_epoch_hook`). The new centroids take effect the next time the sampler
    is iterated, i.e. from the next epoch on.

    **Fallback.** Before any centroids exist (the first epoch), batches are built by uniform
    class sampling: the seed as above and the other ``P - 1`` classes uniformly among the classes
    not yet used in the round (then among the others), like ``MPerClassSampler``.

    **Determinism.** All randomness comes from a NumPy generator seeded with ``(seed, epoch)``;
    ``epoch`` counts the calls to ``__iter__`` (or is set with :meth:`set_epoch`), so two
    samplers with the same seed, labels and centroids yield the same indices, and successive
    epochs differ. In a ``torch.distributed`` run rank ``r > 0`` seeds with ``(seed, epoch,
    r)``: each process draws its own batches (identical batches on every rank would make the
    extra processes add nothing). PML's ``MPerClassSampler`` draws from the global
    ``c_f.NUMPY_RANDOM`` instead; only its argument handling (``labels_to_indices``,
    ``__len__``) is reused here.

    Nearest classes are found by brute force in torch for the one seed per batch (``O(C d)``
    per batch): cheaper than a faiss k-NN graph over all ``C`` centroids (``O(C^2 d)``).

    Args:
        labels: ``(N,)`` integer class ids of the dataset, in dataset order (integer-valued
            floats are accepted).
        m: samples per class in a batch, ``>= 1``.
        batch_size: the DataLoader's batch size, a multiple of ``m``, at most
            ``m * number_of_classes``.
        length_before_new_iter: indices yielded per epoch (rounded down to a multiple of
            ``batch_size``), as in ``MPerClassSampler``.
        seed: seed of the sampler's random generator.
        num_candidates: size of the pool of nearest classes the ``P - 1`` companions are drawn
            from; ``None`` (default) means exactly the ``P - 1`` nearest.
        normalize_embeddings: L2-normalize embeddings before averaging them into centroids.
        embedding_fn: optional callable returning the ``(N, d)`` embeddings of the dataset in
            dataset order (tensor or array), used by :meth:`refresh` and by
            :meth:`end_of_epoch_hook` instead of the trainer's models.
        hook_batch_size: batch size used by :meth:`end_of_epoch_hook` to embed the dataset
            (default: ``batch_size``).
    """

    def __init__(
        self,
        labels: ArrayLike,
        m: int,
        batch_size: int,
        length_before_new_iter: int = 100000,
        seed: int = 0,
        num_candidates: Optional[int] = None,
        normalize_embeddings: bool = True,
        embedding_fn: Optional[Callable[[], ArrayLike]] = None,
        hook_batch_size: Optional[int] = None,
    ) -> None:
        labels = _class_ids(labels)
        m = check_int("m", m, 1)
        batch_size = check_int("batch_size", batch_size, 1)
        length_before_new_iter = check_int("length_before_new_iter", length_before_new_iter, 1)
        seed = check_int("seed", seed, 0)
        num_classes = len(np.unique(labels))
        if batch_size % m != 0:
            raise ValueError(
                f"batch_size must be a multiple of m: got batch_size={batch_size}, m={m}; "
                f"use e.g. batch_size={max(1, batch_size // m) * m}"
            )
        classes_per_batch = batch_size // m
        if classes_per_batch > num_classes:
            raise ValueError(
                f"batch_size must be <= m * number of classes = {m * num_classes} "
                f"(batch_size={batch_size}, m={m}, {num_classes} classes)"
            )
        if length_before_new_iter < batch_size:
            raise ValueError(
                f"length_before_new_iter must be >= batch_size, got {length_before_new_iter} "
                f"< {batch_size}"
            )
        if num_candidates is None:
            num_candidates = classes_per_batch - 1
        num_candidates = check_int("num_candidates", num_candidates, classes_per_batch - 1)
        if num_candidates > num_classes - 1:
            raise ValueError(
                f"num_candidates must be <= number of classes - 1 = {num_classes - 1}, got "
                f"{num_candidates}"
            )
        if embedding_fn is not None and not callable(embedding_fn):
            raise TypeError("embedding_fn must be callable (returning the (N, d) embeddings)")
        if hook_batch_size is not None:
            hook_batch_size = check_int("hook_batch_size", hook_batch_size, 1)
        super().__init__(labels, m, batch_size, length_before_new_iter)
        self.dataset_labels = labels
        self.classes = np.array(sorted(self.labels_to_indices.keys()))
        self.classes_per_batch = classes_per_batch
        self.num_candidates = num_candidates
        self.seed = seed
        self.epoch = 0
        self.normalize_embeddings = check_bool("normalize_embeddings", normalize_embeddings)
        self.embedding_fn = embedding_fn
        self.hook_batch_size = hook_batch_size
        #: ``(C, d)`` float32 CPU centroids, row ``i`` for ``self.classes[i]``; ``None`` before
        #: the first update (uniform fallback).
        self.centroids: Optional[torch.Tensor] = None

    # ------------------------------------------------------------------ centroids
    def update_centroids(self, embeddings: ArrayLike, labels: Optional[ArrayLike] = None) -> None:
        """Recompute the class centroids from embeddings of the dataset.

        Args:
            embeddings: ``(N, d)`` embeddings; without ``labels`` they must be in dataset order
                (row ``i`` is sample ``i``).
            labels: optional ``(N',)`` labels of the rows of ``embeddings`` when they are not the
                whole dataset in order; every class of the sampler must appear.
        """
        emb = _embedding_matrix(embeddings)
        if labels is None:
            if emb.shape[0] != len(self.dataset_labels):
                raise ValueError(
                    "embeddings must have one row per dataset sample "
                    f"({len(self.dataset_labels)}), got {emb.shape[0]}; pass labels= for a subset"
                )
            labels_t = torch.as_tensor(self.dataset_labels)
        else:
            labels_t = torch.as_tensor(_class_ids(labels))
        centroids, classes = class_centroids(
            emb,
            labels_t,
            normalize_embeddings=self.normalize_embeddings,
        )
        classes_np = classes.numpy()
        missing = np.setdiff1d(self.classes, classes_np)
        if missing.size:
            raise ValueError(
                f"embeddings must cover every class of the sampler; missing {missing[:10].tolist()}"
                f"{' ...' if missing.size > 10 else ''}"
            )
        rows = np.searchsorted(classes_np, self.classes)
        self.centroids = centroids[torch.as_tensor(rows)].float().contiguous()

    def reset_centroids(self) -> None:
        """Forget the centroids: back to uniform class sampling."""
        self.centroids = None

    def refresh(self) -> None:
        """Update the centroids from ``embedding_fn()``."""
        if self.embedding_fn is None:
            raise ValueError("refresh() needs embedding_fn= (a callable returning the embeddings)")
        out = self.embedding_fn()
        if isinstance(out, tuple):
            self.update_centroids(*out)
        else:
            self.update_centroids(out)

    def end_of_epoch_hook(self, trainer) -> bool:
        """PML trainer hook: update the centroids from the trainer's models, return ``True``.

        Embeds ``trainer.dataset`` with ``trainer.models["trunk"]`` and
        ``trainer.models["embedder"]`` through PML's ``BaseTester.get_all_embeddings`` (eval
        mode, no gradients, the trainer's ``data_device``, ``dtype`` and
        ``data_and_label_getter``), or calls ``embedding_fn`` when given. The models' train/eval
        modes are restored afterwards.
        """
        if self.embedding_fn is not None:
            self.refresh()
            return True
        from pytorch_metric_learning.testers import BaseTester

        trunk = trainer.models["trunk"]
        embedder = trainer.models.get("embedder", torch.nn.Identity())
        modes = {mod: mod.training for mod in (trunk, embedder)}
        tester = BaseTester(
            normalize_embeddings=False,
            batch_size=self.hook_batch_size or self.batch_size,
            dataloader_num_workers=getattr(trainer, "dataloader_num_workers", 0),
            data_device=trainer.data_device,
            dtype=trainer.dtype,
            data_and_label_getter=trainer.data_and_label_getter,
        )
        try:
            embeddings, labels = tester.get_all_embeddings(trainer.dataset, trunk, embedder)
        finally:
            for mod, mode in modes.items():
                mod.train(mode)
        labels = labels[:, 0] if labels.ndim == 2 else labels
        if not np.array_equal(labels.cpu().numpy(), self.dataset_labels):
            raise ValueError(
                "trainer.dataset's labels differ from the labels the sampler was built with: "
                "build the sampler from the labels of trainer.dataset, in dataset order"
            )
        self.update_centroids(embeddings)
        return True

    def chain_end_of_epoch_hook(self, hook: Optional[Callable] = None) -> Callable:
        """An ``end_of_epoch_hook`` that updates the centroids, then runs ``hook(trainer)``.

        Returns ``hook``'s result (``False`` stops PML's training loop), or ``True`` without one.
        """

        def _hook(trainer):
            self.end_of_epoch_hook(trainer)
            return True if hook is None else hook(trainer)

        return _hook

    # ------------------------------------------------------------------ sampling
    def state_dict(self) -> Dict[str, Any]:
        """``epoch`` (the passes drawn) and the centroids: with ``seed`` and the labels, all
        the next pass depends on (saved by :class:`~pml_grouploss.trainers.ResumableSampler`)."""
        state: Dict[str, Any] = {"epoch": self.epoch}
        if self.centroids is not None:
            state["centroids"] = self.centroids.clone()
        return state

    def load_state_dict(self, state: Dict[str, Any]) -> None:
        """Inverse of :meth:`state_dict`."""
        if not isinstance(state, dict) or "epoch" not in state:
            raise ValueError(
                "state must be a dict with 'epoch' (and optionally 'centroids'), as returned by "
                f"state_dict(); got {type(state).__name__}"
                + (f" with keys {sorted(map(str, state))}" if isinstance(state, dict) else "")
            )
        centroids = state.get("centroids")
        if centroids is not None:
            centroids = _embedding_matrix(centroids, "state['centroids']")
        if centroids is not None and centroids.shape[0] != len(self.classes):
            raise ValueError(
                f"the state holds {centroids.shape[0]} centroids, this sampler has "
                f"{len(self.classes)} classes: it was saved for other labels"
            )
        self.set_epoch(state["epoch"])
        self.centroids = None if centroids is None else centroids.float().contiguous()

    def set_epoch(self, epoch: int) -> None:
        """Seed the next ``__iter__`` with ``(seed, epoch)`` (as ``DistributedSampler``)."""
        self.epoch = check_int("epoch", epoch, 0)

    def _generator_key(self) -> List[int]:
        """``[seed, epoch]``; on rank ``r > 0`` of an initialised ``torch.distributed`` group
        ``[seed, epoch, r]``, so that every process draws its own batches from one ``seed``
        (rank 0 draws those of a one-process run)."""
        dist = torch.distributed
        rank = dist.get_rank() if dist.is_available() and dist.is_initialized() else 0
        return [self.seed, self.epoch] + ([rank] if rank else [])

    def __iter__(self):
        rng = np.random.default_rng(self._generator_key())
        self.epoch += 1
        num_classes = len(self.classes)
        queues: Dict[int, np.ndarray] = {}
        cursors = np.zeros(num_classes, dtype=np.int64)
        members = [self.labels_to_indices[c] for c in self.classes]

        def take(ci: int) -> List[int]:
            out: List[int] = []
            while len(out) < self.m_per_class:
                if ci not in queues or cursors[ci] >= len(queues[ci]):
                    queues[ci] = rng.permutation(members[ci])
                    cursors[ci] = 0
                stop = min(len(queues[ci]), cursors[ci] + self.m_per_class - len(out))
                out.extend(queues[ci][cursors[ci] : stop].tolist())
                cursors[ci] = stop
            return out

        unvisited = np.ones(num_classes, dtype=bool)
        idx_list: List[int] = []
        companions = self.classes_per_batch - 1
        for _ in range(self.list_size // self.batch_size):
            seed_class = int(rng.choice(np.flatnonzero(unvisited)))
            if self.centroids is None:
                chosen = self._uniform_companions(rng, seed_class, unvisited, companions)
            else:
                pool = nearest_classes(self.centroids, seed_class, self.num_candidates).numpy()
                if len(pool) == companions:
                    chosen = pool
                else:
                    chosen = rng.choice(pool, companions, replace=False)
            batch_classes = [seed_class] + [int(c) for c in chosen]
            unvisited[batch_classes] = False
            if not unvisited.any():
                unvisited[:] = True
            for ci in batch_classes:
                idx_list.extend(take(ci))
        return iter(idx_list)

    @staticmethod
    def _uniform_companions(
        rng: np.random.Generator, seed_class: int, unvisited: np.ndarray, count: int
    ) -> np.ndarray:
        fresh = np.flatnonzero(unvisited)
        fresh = fresh[fresh != seed_class]
        if len(fresh) >= count:
            return rng.choice(fresh, count, replace=False)
        others = np.flatnonzero(~unvisited)
        others = others[others != seed_class]
        extra = rng.choice(others, count - len(fresh), replace=False)
        return np.concatenate([rng.permutation(fresh), extra])
