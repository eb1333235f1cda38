"""ParametricDistributedLossWrapper under 2 gloo processes whose inputs differ per rank:
integer label dtypes (gathered as int64), embedding dtypes and label lengths (the same
``ValueError`` on every rank, before any gather), boolean anchor masks (the masked samples,
offset into the gathered batch) and ``GroupLoss(anchor_selection="random")`` on ranks seeded
differently (the same anchors, hence the same loss, on every rank)."""

import pytest
import torch
from pytorch_metric_learning.losses import ContrastiveLoss, CrossBatchMemory

from pml_grouploss.functional.anchors import anchor_mask
from pml_grouploss.losses import GroupLoss, ParametricDistributedLossWrapper

from .test_distributed_loss_wrapper import DIM_EMB, NUM_CLASSES, SEED, SIZES, _batch, _shard
from .test_distributed_loss_wrapper import init_gloo, run_processes
from .test_distributed_loss_wrapper import error_message as _error

GLOBAL_SEED = 100  # rank r seeds torch's global generator with GLOBAL_SEED + r


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
        "3d_emb": _error(lambda: loss_func(es[:, :, None] if rank else es, ls)),
        "short_labels": _error(lambda: loss_func(es, ls[:-1] if rank else ls)),
        "long_labels": _error(lambda: loss_func(es, torch.cat([ls, ls[:2]]) if rank else ls)),
        "2d_labels": _error(lambda: loss_func(es, ls[:, None] if rank else ls)),
        "short_ref_labels": _error(
            lambda: ParametricDistributedLossWrapper(ContrastiveLoss())(
                es, ls, ref_emb=es.flip(0), ref_labels=ls[: 5 + rank]
            )
        ),
        "short_enqueue_mask": _error(
            lambda: ParametricDistributedLossWrapper(
                CrossBatchMemory(ContrastiveLoss(), DIM_EMB, memory_size=32)
            )(es, ls, enqueue_mask=torch.ones(len(ls) - rank, dtype=torch.bool))
        ),
    }
    out["after_errors"] = loss_func(es, ls).item()
    out["mask"] = loss_func(es, ls, (_mask(ls),)).item()
    out["short_mask"] = _error(lambda: loss_func(es, ls, (_mask(ls)[: 5 + rank],)))
    anchors = torch.tensor([1, 4])
    out["float_indices"] = _error(
        lambda: loss_func(es, ls, (anchors.double() if rank else anchors,)), TypeError)
    # random anchors: each rank its own global RNG (as examples/distributed_grouploss.py),
    # then each rank its own GroupLoss seed
    random_func = ParametricDistributedLossWrapper(_loss(SEED + rank, anchor_selection="random"))
    torch.manual_seed(GLOBAL_SEED + rank)
    out["random"] = [random_func(es, ls).item() for _ in range(2)]
    seeded = _loss(SEED + rank, anchor_selection="random", seed=SEED + rank)
    out["random_seeded"] = ParametricDistributedLossWrapper(seeded)(es, ls).item()
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
def test_embedding_dtypes_and_dimensions_that_differ_raise_on_every_rank(results):
    """(n, 6) and (n, 6, 1) embeddings agreed on their row size: one rank's loss raised, the
    other would wait at the next collective."""
    for rank in (0, 1):
        assert results[rank]["float32_emb"] == (
            "the processes disagree on the embeddings' dtype: "
            "['torch.float64', 'torch.float32'] per rank"
        )
        assert results[rank]["3d_emb"] == (
            "the processes disagree on the embeddings' number of dimensions: [2, 3] per rank")


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
        "short_enqueue_mask": f"enqueue_mask must have one entry per embedding: rank 1 passed "
        f"{n - 1} entries for {n} embeddings",
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


@pytest.mark.slow
def test_floating_point_anchor_indices_raise_on_every_rank(results):
    """Float indices were truncated by .long() (one process raises a TypeError)."""
    for rank in (0, 1):
        assert results[rank]["float_indices"] == (
            "indices_tuple[0] on rank 1 holds floating-point (or complex) values; anchor "
            "indices must be integer indices or a boolean mask: convert with .long()")


def _random_anchor_losses(global_seed: int, generator, calls: int) -> list:
    """The single-process losses the wrapper promises for ``anchor_selection="random"``: per
    call rank 0 draws ``s`` from ``generator`` (None: torch's global generator, seeded with
    ``global_seed`` after building the loss) and the anchors of the concatenated batch are
    ``anchor_mask(..., torch.Generator().manual_seed(s))``."""
    x, labels = _batch(0)
    loss = _loss(SEED, anchor_selection="random")
    torch.manual_seed(global_seed)
    values = []
    for _ in range(calls):
        s = int(torch.randint(0, 2**62, (1,), generator=generator))
        anchors = anchor_mask(labels, 1, "random", torch.Generator().manual_seed(s))
        values.append(loss(x[:, :DIM_EMB], labels, (anchors,)).item())
    return values


@pytest.mark.slow
def test_random_anchors_are_the_same_on_every_rank(results):
    expected = _random_anchor_losses(GLOBAL_SEED, None, 2)
    rank_1_draw = _random_anchor_losses(GLOBAL_SEED + 1, None, 2)
    assert rank_1_draw != pytest.approx(expected, rel=1e-6)
    seeded = _random_anchor_losses(0, torch.Generator().manual_seed(SEED), 1)[0]
    for rank in (0, 1):
        assert results[rank]["random"] == pytest.approx(expected, rel=1e-12)
        assert results[rank]["random_seeded"] == pytest.approx(seeded, rel=1e-12)
