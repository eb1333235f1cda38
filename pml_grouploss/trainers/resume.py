"""Exact resume of a PML trainer: the random-number and sampler state saved next to PML's
checkpoints.

PML's ``HookContainer`` checkpoints models, optimizers, learning-rate schedulers, losses and
miners. That is not enough for a resumed run to continue the uninterrupted one: the batches
(the sampler's NumPy draws and its shuffled label order, where the data loader stood in the
current pass), the augmentation (torch's global generator), random anchors (the ``generator``
of a ``GroupLoss`` or ``AnchorMiner`` with a ``seed``, also inside ``MultipleLosses``)
and anything using Python's ``random`` would restart from other states. :func:`capture_state`
records all of them right after each checkpoint and :class:`ResumableTrainer` puts them back at
the point where the uninterrupted run would continue, so the two are bit-identical (same machine,
same environment). Files are loadable with ``torch.load(..., weights_only=True)``.

Recipe: wrap the sampler (``ResumableSampler(MPerClassSampler(...))``), train with
:class:`ResumableTrainer` (``dataloader_num_workers=0``, required), call :func:`save_state` after
each checkpoint of ``HookContainer`` (e.g. in ``end_of_epoch_hook``), and before resuming from the
checkpoint of epoch ``e`` set ``trainer.resume_state = load_state(model_folder, e)``. The benchmark
(``pml_grouploss.benchmark.runner``) does exactly this.
"""

from __future__ import annotations

import json
import os
import pickle
import random
import warnings
from typing import Any, Dict, Iterator, List, Optional

import numpy as np
import torch
from pytorch_metric_learning import trainers
from pytorch_metric_learning.utils import common_functions as c_f
from torch.utils.data import BatchSampler, Sampler

from .._validation import check_int

STATE_FILE = "resume_state_{epoch}.pth"


class ResumableSampler(Sampler):
    """Wrap a sampler whose ``__iter__`` draws a whole pass at once (PML's ``MPerClassSampler``)
    and remember that pass and how many of its indices the data loader has taken.

    The indices and the random draws are exactly the wrapped sampler's; only the position is
    added. Exact with ``num_workers=0`` (no prefetching), as the benchmark runs. The state also
    holds the order of ``MPerClassSampler``'s shuffled class list (as positions in its first
    order, so labels of any type come back as they were) and the wrapped sampler's own
    ``state_dict()`` when it has one (:class:`~pml_grouploss.samplers.NearestClassSampler`:
    its pass count and centroids).
    """

    def __init__(self, sampler: Sampler) -> None:
        if isinstance(sampler, BatchSampler) or not all(
                callable(getattr(sampler, name, None)) for name in ("__iter__", "__len__")):
            raise TypeError(
                "sampler must be an index sampler with __iter__ and __len__ (e.g. PML's "
                f"MPerClassSampler), got {type(sampler).__name__}; a BatchSampler (e.g. "
                "HierarchicalSampler) yields whole batches: pass it to the trainer unwrapped"
            )
        self.sampler = sampler
        self.indices: List[int] = []
        self.position = 0

    def __len__(self) -> int:
        return len(self.sampler)

    @property
    def exhausted(self) -> bool:
        """The current pass is used up: the next batch starts a new pass (and a new iterator)."""
        return self.position >= len(self.indices)

    def __iter__(self) -> Iterator[int]:
        if self.exhausted:
            self.indices = [int(i) for i in self.sampler]
            self.position = 0
        while self.position < len(self.indices):
            index = self.indices[self.position]
            self.position += 1
            yield index

    def state_dict(self) -> Dict[str, Any]:
        state: Dict[str, Any] = {"indices": torch.tensor(self.indices, dtype=torch.int64),
                                 "position": self.position}
        labels = getattr(self.sampler, "labels", None)
        if isinstance(labels, list):  # MPerClassSampler shuffles this list in place every batch
            first_order = {label: i for i, label in enumerate(self.sampler.labels_to_indices)}
            state["label_order"] = torch.tensor([first_order[x] for x in labels],
                                                dtype=torch.int64)
        generator = getattr(self.sampler, "generator", None)
        if isinstance(generator, torch.Generator):
            state["generator"] = generator.get_state()
        if callable(getattr(self.sampler, "state_dict", None)):
            state["wrapped"] = self.sampler.state_dict()
        return state

    def load_state_dict(self, state: Dict[str, Any]) -> None:
        self._check_kind(state)
        self.indices = [int(i) for i in state["indices"].tolist()]
        self.position = int(state["position"])
        if "label_order" in state:
            first_order = list(self.sampler.labels_to_indices)
            order = state["label_order"].tolist()
            if sorted(order) != list(range(len(first_order))):
                raise ValueError(
                    f"the sampler state orders {len(order)} classes, this sampler has "
                    f"{len(first_order)}: it was saved for a sampler over other labels"
                )
            self.sampler.labels = [first_order[i] for i in order]
        elif "labels" in state:  # states written before label_order: integer labels
            by_value = {int(x): x for x in self.sampler.labels}
            self.sampler.labels = [by_value[int(x)] for x in state["labels"]]
        if "generator" in state:
            self.sampler.generator.set_state(state["generator"])
        if "wrapped" in state:
            self.sampler.load_state_dict(state["wrapped"])

    def _check_kind(self, state: Dict[str, Any]) -> None:
        """Raise before changing anything if ``state`` holds parts this sampler lacks."""
        needs = {"label_order": "labels_to_indices", "labels": "labels",
                 "generator": "generator", "wrapped": "load_state_dict"}
        for key, attribute in needs.items():
            value = getattr(self.sampler, attribute, None)
            if key in state and (value is None or (key == "generator" and not isinstance(
                    value, torch.Generator))):
                raise ValueError(
                    f"the sampler state holds {key!r}, which this ResumableSampler's "
                    f"{type(self.sampler).__name__} has no {attribute} for: the state was saved "
                    "with another sampler; wrap the same sampler as the run that saved it"
                )


def _numpy_state(rng: Any) -> Dict[str, Any]:
    """A NumPy ``RandomState`` (or the ``np.random`` module) or ``Generator`` as plain types."""
    if isinstance(rng, np.random.Generator):
        return {"json": json.dumps(rng.bit_generator.state)}
    name, keys, pos, has_gauss, cached = rng.get_state()
    return {"name": name, "keys": torch.from_numpy(keys.astype(np.int64)), "pos": int(pos),
            "has_gauss": int(has_gauss), "cached_gaussian": float(cached)}


def _set_numpy_state(rng: Any, state: Dict[str, Any]) -> None:
    if "json" in state:
        rng.bit_generator.state = json.loads(state["json"])
        return
    keys = state["keys"].numpy().astype(np.uint32)
    rng.set_state((state["name"], keys, state["pos"], state["has_gauss"], state["cached_gaussian"]))


def capture_state(trainer: trainers.BaseTrainer) -> Dict[str, Any]:
    """Every random-number and sampler state of ``trainer``'s run, as tensors and plain types
    (``dataloader_num_workers`` must be 0 with a :class:`ResumableSampler`)."""
    _check_workers(trainer)
    version, internal, gauss_next = random.getstate()
    python = {"version": version, "internal": torch.tensor(internal, dtype=torch.int64),
              "gauss_next": gauss_next}
    state: Dict[str, Any] = {"torch": torch.get_rng_state(), "numpy": _numpy_state(np.random),
                             "python": python}
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state_all()
    if c_f.NUMPY_RANDOM is not np.random:  # PML's samplers and miners draw from this one
        state["pml_numpy"] = _numpy_state(c_f.NUMPY_RANDOM)
    if isinstance(trainer.sampler, ResumableSampler):
        state["sampler"] = trainer.sampler.state_dict()
    generator = getattr(getattr(trainer, "dataloader", None), "generator", None)
    if generator is not None:
        state["dataloader_generator"] = generator.get_state()
    for key, generator in _generators(trainer).items():
        state[key] = generator.get_state()
    return state


def _generators(trainer: trainers.BaseTrainer) -> Dict[str, torch.Generator]:
    """``{"generator:<name>[.<sub-module>]": generator}``: every ``torch.Generator`` held as
    ``.generator`` by a loss or miner of ``trainer`` or by one of their sub-modules
    (``GroupLoss(seed=...)``, ``AnchorMiner(seed=...)``, also inside ``MultipleLosses`` or a
    distributed wrapper)."""
    found: Dict[str, torch.Generator] = {}
    funcs = {**(getattr(trainer, "mining_funcs", None) or {}), **trainer.loss_funcs}
    for name, func in funcs.items():
        modules = func.named_modules() if isinstance(func, torch.nn.Module) else [("", func)]
        for path, module in modules:
            generator = getattr(module, "generator", None)
            if isinstance(generator, torch.Generator):
                found[f"generator:{name}" + (f".{path}" if path else "")] = generator
    return found


def _check_restorable(trainer: trainers.BaseTrainer, state: Any) -> None:
    """Raise, before anything is restored, if ``state`` does not fit ``trainer``."""
    if not isinstance(state, dict):
        raise ValueError("resume_state must be the dict load_state() returns (or "
                         f"capture_state()); got {type(state).__name__}")
    missing = [key for key in ("torch", "numpy", "python") if key not in state]
    if missing:
        raise ValueError("resume_state must be the dict load_state() returns (or "
                         f"capture_state()); got one without {missing}")
    if "sampler" in state and not isinstance(trainer.sampler, ResumableSampler):
        raise ValueError(
            "resume_state holds a ResumableSampler's state but the trainer's sampler is a "
            f"{type(trainer.sampler).__name__}: wrap it as in the run that saved the state, "
            "sampler=ResumableSampler(...)"
        )
    loader = getattr(trainer, "dataloader", None)
    if "dataloader_generator" in state and not isinstance(getattr(loader, "generator", None),
                                                          torch.Generator):
        raise ValueError(
            "resume_state holds the random generator of the data loader, but the trainer's "
            f"{type(loader).__name__} has none: build it as in the run that saved the state"
        )
    generators = _generators(trainer)
    for key in state:
        if key.startswith("generator:") and key not in generators:
            raise ValueError(
                f"resume_state holds the random generator of {key[len('generator:'):]!r} (a "
                "loss or miner of trainer.loss_funcs / mining_funcs, or one of its "
                "sub-modules), but the trainer's has none: build it as in the run that saved "
                "the state (e.g. GroupLoss(..., seed=...), AnchorMiner(..., seed=...))"
            )


def _check_workers(trainer: Any) -> None:
    """Exact resume needs the main process to load the batches (no prefetching workers)."""
    workers = getattr(trainer, "dataloader_num_workers", 0)
    if workers and (isinstance(trainer, ResumableTrainer)
                    or isinstance(getattr(trainer, "sampler", None), ResumableSampler)):
        raise ValueError(
            f"dataloader_num_workers must be 0 for an exact resume, got {workers} (PML's default "
            "is 2): workers prefetch batches past the saved sampler position and seed their own "
            "generators, so a resumed run would train on other batches; pass "
            "dataloader_num_workers=0"
        )


def restore_state(trainer: trainers.BaseTrainer, state: Dict[str, Any]) -> None:
    """Inverse of :func:`capture_state`; a state that does not fit ``trainer`` (another
    sampler, a loss without its ``seed``) raises a ``ValueError`` before anything changes."""
    _check_restorable(trainer, state)
    if "sampler" in state:
        trainer.sampler._check_kind(state["sampler"])
    torch.set_rng_state(state["torch"])
    _set_numpy_state(np.random, state["numpy"])
    py = state["python"]
    random.setstate((py["version"], tuple(py["internal"].tolist()), py["gauss_next"]))
    if "cuda" in state:
        if not torch.cuda.is_available():  # set_rng_state_all would do nothing, silently
            warnings.warn("resume_state holds CUDA random states (saved on a GPU) but no CUDA "
                          "device is available: this run resumes, but not bit-identically to an "
                          "uninterrupted one on the GPU", stacklevel=2)
        torch.cuda.set_rng_state_all(state["cuda"])
    if "pml_numpy" in state:
        _set_numpy_state(c_f.NUMPY_RANDOM, state["pml_numpy"])
    if "sampler" in state:
        trainer.sampler.load_state_dict(state["sampler"])
    if "dataloader_generator" in state:
        trainer.dataloader.generator.set_state(state["dataloader_generator"])
    for key, generator in _generators(trainer).items():
        if key in state:
            generator.set_state(state[key])


def save_state(trainer: trainers.BaseTrainer, folder: str, epoch: int, previous: int,
               stopped_early: bool = False) -> None:
    """Write the state after the checkpoint of ``epoch`` (``stopped_early``: early stopping ended
    the training there); delete that of epoch ``previous`` (nothing when it is ``epoch``)."""
    epoch, previous = check_int("epoch", epoch, 1), check_int("previous", previous)
    if not os.path.isdir(folder):
        raise FileNotFoundError(f"folder {folder!r} does not exist: give the model folder "
                                "HookContainer saves the checkpoints in (it makes it)")
    state = {**capture_state(trainer), "stopped_early": bool(stopped_early)}
    torch.save(state, os.path.join(folder, STATE_FILE.format(epoch=epoch)))
    old = os.path.join(folder, STATE_FILE.format(epoch=previous))
    if previous != epoch and os.path.exists(old):
        os.remove(old)


def load_state(folder: str, epoch: int) -> Optional[Dict[str, Any]]:
    """The state saved with the checkpoint of ``epoch``; None (and a warning) for checkpoints
    written before states were saved (such a run resumes, but not bit-identically). A missing
    ``folder``, a damaged file or one holding something else is an error naming it."""
    epoch = check_int("epoch", epoch, 1)
    if not os.path.isdir(folder):
        raise FileNotFoundError(f"folder {folder!r} does not exist: give the model folder the "
                                "checkpoints were saved in")
    path = os.path.join(folder, STATE_FILE.format(epoch=epoch))
    if not os.path.isfile(path):
        warnings.warn(
            f"{path} is missing (a checkpoint from an older version, or an interruption while "
            "it was written): this run resumes, but not bit-identically to an uninterrupted one"
        )
        return None
    fix = ("delete it to resume from that checkpoint without it (not bit-identically), or "
           "resume from an earlier checkpoint")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except (OSError, EOFError, RuntimeError, pickle.UnpicklingError) as err:
        raise ValueError(
            f"{path} is damaged ({type(err).__name__}: {str(err)[:100]}); {fix}"
        ) from err
    if not isinstance(state, dict) or not {"torch", "numpy", "python"} <= set(state):
        raise ValueError(f"{path} holds a {type(state).__name__}, not a state save_state() "
                         f"wrote; {fix}")
    return state


class ResumableTrainer(trainers.MetricLossOnly):
    """PML's ``MetricLossOnly`` that restores a :func:`capture_state` when training starts;
    ``dataloader_num_workers`` must be 0 (a ``ValueError`` otherwise; PML's default is 2).

    ``train`` creates a new data-loader iterator, which draws from torch's generator; the
    uninterrupted run either kept iterating its current pass (no draw) or, with the pass used
    up, creates its new iterator at the first batch. Restoring *after* the iterator exists and,
    for a used-up pass, leaving the new iterator to the first batch reproduces both.
    """

    resume_state: Optional[Dict[str, Any]] = None

    def custom_setup(self) -> None:
        super().custom_setup()
        _check_workers(self)

    def initialize_dataloader(self) -> None:
        super().initialize_dataloader()
        if self.resume_state is None:
            return
        restore_state(self, self.resume_state)
        self.resume_state = None
        if isinstance(self.sampler, ResumableSampler) and self.sampler.exhausted:
            self.dataloader_iter = iter(())  # the first batch makes the iterator, as uninterrupted
