"""ParametricDistributedLossWrapper under 2 gloo processes whose inputs differ per rank:
integer label dtypes (gathered as int64), embedding dtypes and label lengths (the same
``ValueError`` on every rank, before any gather), and boolean anchor masks (the masked samples,
offset into the gathered batch)."""

import pytest
import torch
from pytorch_metric_learning.losses import ContrastiveLoss

from pml_grouploss.losses import GroupLoss, ParametricDistributedLossWrapper

from .test_distributed_loss_wrapper import DIM_EMB, NUM_CLASSES, SEED, SIZES, _batch, _shard
from .test_distributed_loss_wrapper import init_gloo, run_processes
from .test_distributed_loss_wrapper import value_error_message as _error

def _loss(init_seed: int, **kwargs) -> GroupLoss:
    torch.manual_seed(init_seed)
    return GroupLoss(NUM_CLASSES, DIM_EMB, temperature=2.0, num_anchors=1, **kwargs).double()


def _mask(labels: torch.Tensor) -> torch.Tensor:
    """Anchors of a local batch as a boolean mask: its samples 1, 4, 7, ..."""
    return torch.arange(len(labels)) % 3 == 1


def _cases(rank: int) -> dict:
    init_gloo(rank)
    x, labels = _batch(0)
    es, ls = _shard(x[:, :DIM_EMB], rank), _shard(labels, rank)
    loss_func = ParametricDistributedLossWrapper(_loss(SEED + rank))
    out = {
        "int32_labels": loss_func(es, ls.int() if rank else ls).item(),
        "float32_emb": _error(lambda: loss_func(es.float() if rank else es, ls)),
        "short_labels": _error(lambda: loss_func(es, ls[:-1] if rank else ls)),
        "long_labels": _error(lambda: loss_func(es, torch.cat([ls, ls[:2]]) if rank else ls)),
        "2d_labels": _error(lambda: loss_func(es, ls[:, None] if rank else ls)),
        "short_ref_labels": _error(
            lambda: ParametricDistributedLossWrapper(ContrastiveLoss())(
                es, ls, ref_emb=es.flip(0), ref_labels=ls[: 5 + rank]
            )
        ),
    }
    out["after_errors"] = loss_func(es, ls).item()
    out["mask"] = loss_func(es, ls, (_mask(ls),)).item()
    out["short_mask"] = _error(lambda: loss_func(es, ls, (_mask(ls)[: 5 + rank],)))
    return out


@pytest.fixture(scope="module")
def results():
    return run_processes(_cases)


@pytest.mark.slow
def test_integer_label_dtypes_may_differ_per_rank(results):
    x, labels = _batch(0)
    expected = _loss(SEED)(x[:, :DIM_EMB], labels).item()
    for rank in (0, 1):
        assert results[rank]["int32_labels"] == pytest.approx(expected, rel=1e-12)
        assert results[rank]["after_errors"] == pytest.approx(expected, rel=1e-12)


@pytest.mark.slow
def test_embedding_dtypes_that_differ_raise_on_every_rank(results):
    for rank in (0, 1):
        assert results[rank]["float32_emb"] == (
            "the processes disagree on the embeddings' dtype: "
            "['torch.float64', 'torch.float32'] per rank"
        )


@pytest.mark.slow
def test_labels_that_do_not_fit_the_embeddings_raise_on_every_rank(results):
    n = SIZES[1]
    expected = {
        "short_labels": f"Number of embeddings must equal number of labels: rank 1 passed "
        f"{n - 1} labels for {n} embeddings",
        "long_labels": f"Number of embeddings must equal number of labels: rank 1 passed "
        f"{n + 2} labels for {n} embeddings",
        "2d_labels": "labels must be a 1D tensor of shape (batch_size,): rank 1 passed a 2D "
        "tensor",
        "short_ref_labels": f"Number of ref_emb must equal number of ref_labels: rank 0 passed "
        f"5 ref_labels for {SIZES[0]} ref_emb",
    }
    for rank in (0, 1):
        for key, message in expected.items():
            assert results[rank][key] == message, (rank, key)


@pytest.mark.slow
def test_boolean_anchor_masks_select_the_masked_samples(results):
    x, labels = _batch(0)
    mask = torch.cat([_mask(_shard(labels, r)) for r in (0, 1)])
    expected = _loss(SEED)(x[:, :DIM_EMB], labels, (mask,)).item()
    indices_01 = torch.tensor([0, 1, SIZES[0], SIZES[0] + 1])  # what .long() of the mask gave
    assert expected != pytest.approx(_loss(SEED)(x[:, :DIM_EMB], labels, (indices_01,)).item())
    for rank in (0, 1):
        assert results[rank]["mask"] == pytest.approx(expected, rel=1e-12)
        assert results[rank]["short_mask"] == (
            f"indices_tuple[0] is a boolean mask of 5 entries on rank 0; a mask of anchors needs "
            f"one entry per sample of that process's batch ({SIZES[0]})"
        )

