"""ParametricDistributedLossWrapper's less common inputs under 2 gloo processes: ``ref_emb``
gathered in rank order, an empty ``indices_tuple`` on every rank, and inputs the ranks disagree
on, which raise the same ``ValueError`` on every rank (no hang) and leave the group usable."""

import pytest
import torch
from pytorch_metric_learning.losses import ContrastiveLoss

from pml_grouploss.losses import GroupLoss, ParametricDistributedLossWrapper

from .test_distributed_loss_wrapper import DIM_EMB, NUM_CLASSES, SEED, _batch, _shard
from .test_distributed_loss_wrapper import init_gloo, run_processes
from .test_distributed_loss_wrapper import error_message as _error

NO_ANCHORS = (torch.empty(0, dtype=torch.long),)


def _loss(seed: int) -> GroupLoss:
    torch.manual_seed(seed)
    return GroupLoss(NUM_CLASSES, DIM_EMB, temperature=2.0, num_anchors=1).double()


def _ref(e: torch.Tensor) -> torch.Tensor:
    return 0.5 * e.flip(1) + 0.1


def _cases(rank: int) -> dict:
    init_gloo(rank)
    x, labels = _batch(0)
    es, ls = _shard(x[:, :DIM_EMB], rank), _shard(labels, rank)
    loss_func = ParametricDistributedLossWrapper(_loss(SEED + rank))
    contrastive = ParametricDistributedLossWrapper(ContrastiveLoss())
    out = {
        "no_anchors": loss_func(es, ls, NO_ANCHORS).item(),
        "ref_emb": contrastive(es, ls, ref_emb=_ref(es), ref_labels=ls).item(),
        "ref_labels_copy": contrastive(es, ls, ref_emb=_ref(es), ref_labels=ls.clone()).item(),
        "disagree": _error(lambda: loss_func(es, ls, NO_ANCHORS if rank == 0 else None)),
        "bad_indices": _error(lambda: loss_func(es, ls, (torch.tensor([rank * 50]),))),
    }
    out["after_errors"] = loss_func(es, ls).item()
    return out


@pytest.fixture(scope="module")
def results():
    return run_processes(_cases)


@pytest.mark.slow
def test_empty_anchors_and_ref_emb_match_single_process(results):
    x, labels = _batch(0)
    e = x[:, :DIM_EMB]
    no_anchors = _loss(SEED)(e, labels, NO_ANCHORS).item()
    assert no_anchors != pytest.approx(_loss(SEED)(e, labels).item(), rel=1e-6)
    # PML excludes the pairs (i, i) only when ref_labels *is* labels: both cases kept
    ref_emb = ContrastiveLoss()(e, labels, ref_emb=_ref(e), ref_labels=labels).item()
    copy = ContrastiveLoss()(e, labels, ref_emb=_ref(e), ref_labels=labels.clone()).item()
    assert copy != pytest.approx(ref_emb, rel=1e-6)
    for rank in (0, 1):
        assert results[rank]["no_anchors"] == pytest.approx(no_anchors, rel=1e-12)
        assert results[rank]["ref_emb"] == pytest.approx(ref_emb, rel=1e-12)
        assert results[rank]["ref_labels_copy"] == pytest.approx(copy, rel=1e-12)


@pytest.mark.slow
def test_inputs_the_ranks_disagree_on_raise_on_every_rank(results):
    x, labels = _batch(0)
    for rank in (0, 1):
        out = results[rank]
        assert "disagree on indices_tuple" in out["disagree"], out["disagree"]
        assert "rank(s) [1] passed indices outside" in out["bad_indices"], out["bad_indices"]
        expected = _loss(SEED)(x[:, :DIM_EMB], labels).item()
        assert out["after_errors"] == pytest.approx(expected, rel=1e-12)
