"""GroupLoss inside PML's MultipleLosses, with one miner per loss (docs/losses.md, "PML
features"): the weighted sum of the losses, or an error that names the fix."""

from __future__ import annotations


import pytest
import torch
from pytorch_metric_learning import losses as pml_losses
from pytorch_metric_learning import miners as pml_miners
from pytorch_metric_learning import trainers

from pml_grouploss.miners import AnchorMiner
from pml_grouploss.miners.anchor_miner import NOT_PAIRS_MESSAGE

from ._pml_setup import (
    _all_changed, _batch, _dataset, _finite_positive, _group_loss, _models, _optimizers,
    _params, _run,
)


def test_multiple_losses_without_miners():
    emb, labels = _batch()
    group, triplet = _group_loss().double(), pml_losses.TripletMarginLoss()
    combined = pml_losses.MultipleLosses([group, triplet], weights=[1.0, 0.5])
    value = combined(emb, labels)
    assert value.item() == pytest.approx(
        group(emb, labels).item() + 0.5 * triplet(emb, labels).item(), rel=1e-12
    )
    value.backward()
    assert group.W.grad.abs().sum() > 0 and torch.isfinite(emb.grad).all()


def test_multiple_losses_one_miner_per_loss():
    emb, labels = _batch()
    group, triplet = _group_loss().double(), pml_losses.TripletMarginLoss()
    anchor_miner, triplet_miner = AnchorMiner(2), pml_miners.TripletMarginMiner(margin=0.5)
    combined = pml_losses.MultipleLosses(
        {"group": group, "triplet": triplet},
        miners={"group": anchor_miner, "triplet": triplet_miner},
    )
    value = combined(emb, labels)
    anchors = AnchorMiner(2)(emb, labels)
    expected = group(emb, labels, anchors) + triplet(emb, labels, triplet_miner(emb, labels))
    assert value.item() == pytest.approx(expected.item(), rel=1e-12)
    assert group(emb, labels, anchors).item() != pytest.approx(group(emb, labels).item())
    assert (anchor_miner.num_anchors, anchor_miner.num_non_anchors) == (8, 8)


def test_multiple_losses_shared_anchor_miner_says_one_miner_per_loss():
    emb, labels = _batch()
    combined = pml_losses.MultipleLosses([_group_loss().double(), pml_losses.TripletMarginLoss()])
    with pytest.raises(TypeError) as info:
        combined(emb, labels, AnchorMiner(1)(emb, labels))
    assert str(info.value) == NOT_PAIRS_MESSAGE


def test_trainer_tuple_miner_shared_by_multiple_losses_says_one_miner_per_loss():
    models = _models()
    combined = pml_losses.MultipleLosses([_group_loss(), pml_losses.ContrastiveLoss()])
    with pytest.raises(TypeError) as info:
        _run(
            trainers.MetricLossOnly,
            models,
            {"metric_loss": combined},
            _optimizers({**models, "metric_loss": combined}),
            _dataset(),
            mining_funcs={"tuple_miner": AnchorMiner(1)},
        )
    assert str(info.value) == NOT_PAIRS_MESSAGE


def test_trainer_with_multiple_losses_one_miner_per_loss():
    models, loss = _models(), _group_loss()
    combined = pml_losses.MultipleLosses(
        [loss, pml_losses.ContrastiveLoss()], miners=[AnchorMiner(1), None]
    )
    before = _params(*models.values(), loss)
    history = _run(
        trainers.MetricLossOnly,
        models,
        {"metric_loss": combined},
        _optimizers({**models, "metric_loss": combined}),
        _dataset(),
    )
    assert _finite_positive(history, "metric_loss")
    assert _all_changed(before, *models.values(), loss)
