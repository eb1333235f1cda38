"""Tiny in-memory data, models and PML trainer runs shared by the integration tests."""
from __future__ import annotations

import math
from typing import Dict, List

import torch
from pytorch_metric_learning import samplers

from pml_grouploss.losses import GroupLoss

NUM_CLASSES, PER_CLASS, DIM_IN, DIM_HIDDEN, DIM_EMB = 4, 8, 6, 8, 5
M, BATCH, ITERATIONS = 4, 16, 2  # batches of 4 classes x 4 samples, 2 iterations


def _inputs(seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    labels = torch.arange(NUM_CLASSES).repeat_interleave(PER_CLASS)
    centres = 2 * torch.randn(NUM_CLASSES, DIM_IN, generator=g)
    return centres[labels] + torch.randn(len(labels), DIM_IN, generator=g), labels


def _dataset(two_stream: bool = False) -> torch.utils.data.TensorDataset:
    """``(x, label)`` items, or ``(anchor, posneg, label)`` for TwoStreamMetricLoss."""
    x, labels = _inputs()
    if two_stream:
        posneg = x + 0.1 * torch.randn(x.shape, generator=torch.Generator().manual_seed(1))
        return torch.utils.data.TensorDataset(x, posneg, labels)
    return torch.utils.data.TensorDataset(x, labels)


def _sampler(dataset, iterations: int) -> samplers.MPerClassSampler:
    labels = dataset.tensors[-1]
    return samplers.MPerClassSampler(
        labels, m=M, batch_size=BATCH, length_before_new_iter=BATCH * iterations
    )


def _models(**extra) -> Dict[str, torch.nn.Module]:
    torch.manual_seed(0)
    models = {
        "trunk": torch.nn.Sequential(torch.nn.Linear(DIM_IN, DIM_HIDDEN), torch.nn.ReLU()),
        "embedder": torch.nn.Linear(DIM_HIDDEN, DIM_EMB),
    }
    models.update(extra)
    return models


def _optimizers(modules: Dict[str, torch.nn.Module]) -> Dict[str, torch.optim.Optimizer]:
    return {f"{k}_optimizer": torch.optim.SGD(m.parameters(), lr=0.1) for k, m in modules.items()}


def _group_loss(embedding_size: int = DIM_EMB, seed: int = 5, **kwargs) -> GroupLoss:
    torch.manual_seed(seed)  # the classifier's initialisation
    return GroupLoss(NUM_CLASSES, embedding_size, temperature=2.0, num_anchors=1, **kwargs)


def _params(*modules: torch.nn.Module) -> List[torch.Tensor]:
    return [p.detach().clone() for m in modules for p in m.parameters()]


def _all_changed(before: List[torch.Tensor], *modules: torch.nn.Module) -> bool:
    after = _params(*modules)
    assert len(after) == len(before) > 0
    return all(not torch.equal(b, a) for b, a in zip(before, after))


def _run(
    trainer_class, models, loss_funcs, optimizers, dataset, iterations: int = ITERATIONS, **kwargs
) -> List[dict]:
    """Trains one epoch of ``iterations`` batches; the per-iteration losses (floats)."""
    history: List[dict] = []

    def hook(trainer):
        history.append({k: float(torch.as_tensor(v).detach()) for k, v in trainer.losses.items()})

    trainer = trainer_class(
        models=models,
        optimizers=optimizers,
        batch_size=BATCH,
        loss_funcs=loss_funcs,
        dataset=dataset,
        sampler=_sampler(dataset, iterations),
        dataloader_num_workers=0,
        data_device=torch.device("cpu"),
        end_of_iteration_hook=hook,
        **kwargs,
    )
    trainer.train(num_epochs=1)
    assert len(history) == iterations
    return history


def _finite_positive(history: List[dict], *names: str) -> bool:
    return all(math.isfinite(h[n]) and h[n] > 0 for h in history for n in names)


def _batch(n_per_class: int = 4, dtype=torch.float64):
    g = torch.Generator().manual_seed(3)
    labels = torch.arange(NUM_CLASSES).repeat_interleave(n_per_class)
    emb = torch.randn(len(labels), DIM_EMB, generator=g, dtype=dtype).requires_grad_(True)
    return emb, labels
