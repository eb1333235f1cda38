"""GroupLoss with PML's reducers and regularizers (values against hand-reduced sub-losses) and
under torch.compile."""

from __future__ import annotations

import os
import shutil
from typing import Dict

import pytest
import torch
from pytorch_metric_learning import reducers, regularizers

from pml_grouploss.miners import AnchorMiner

from ._pml_setup import (
    _batch, _group_loss,
)


# -- reducers and regularizers ---------------------------------------------------------------
def _sub_losses(emb, labels) -> Dict[str, torch.Tensor]:
    loss_dict = _group_loss(reducer=reducers.DoNothingReducer()).double()(emb, labels)
    assert {k: v["reduction_type"] for k, v in loss_dict.items()} == {
        "group_loss": "element",
        "ce_loss": "element",
    }
    return {k: v["losses"].detach() for k, v in loss_dict.items()}


CLASS_WEIGHTS = torch.tensor([1.0, 2.0, 0.5, 3.0], dtype=torch.float64)
REDUCERS = {
    "MeanReducer": (reducers.MeanReducer, lambda losses, y: losses.mean()),
    "SumReducer": (reducers.SumReducer, lambda losses, y: losses.sum()),
    "AvgNonZeroReducer": (
        reducers.AvgNonZeroReducer, lambda losses, y: losses[losses > 0].mean()),
    "ThresholdReducer": (
        lambda: reducers.ThresholdReducer(low=1.0), lambda losses, y: losses[losses > 1].mean()),
    "ClassWeightedReducer": (
        lambda: reducers.ClassWeightedReducer(CLASS_WEIGHTS),
        lambda losses, y: (losses * CLASS_WEIGHTS[y]).mean(),
    ),
    "PerAnchorReducer": (reducers.PerAnchorReducer, lambda losses, y: losses.mean()),
}


@pytest.mark.parametrize("name", list(REDUCERS))
def test_reducer(name):
    make, reference = REDUCERS[name]
    emb, labels = _batch()
    parts = _sub_losses(emb, labels)
    loss = _group_loss(reducer=make()).double()
    value = loss(emb, labels)
    # an anchor's NLL is -log(1 + 1e-12) < 0: AvgNonZeroReducer averages over the 12 others
    assert int((parts["group_loss"] > 0).sum()) == 16 - 4
    expected = sum(reference(parts[k], labels) for k in ("group_loss", "ce_loss"))
    assert value.item() == pytest.approx(expected.item(), rel=1e-12)
    value.backward()
    assert loss.W.grad.abs().sum() > 0


def test_multiple_reducers_per_sub_loss():
    emb, labels = _batch()
    parts = _sub_losses(emb, labels)
    reducer = reducers.MultipleReducers({"group_loss": reducers.SumReducer()})
    value = _group_loss(reducer=reducer).double()(emb, labels)
    expected = parts["group_loss"].sum() + parts["ce_loss"].mean()
    assert value.item() == pytest.approx(expected.item(), rel=1e-12)


def test_divisor_reducer_is_the_mean():
    emb, labels = _batch()
    parts = _sub_losses(emb, labels)
    value = _group_loss(reducer=reducers.DivisorReducer()).double()(emb, labels)
    expected = parts["group_loss"].mean() + parts["ce_loss"].mean()
    assert value.item() == pytest.approx(expected.item(), rel=1e-12)


def test_weight_and_embedding_regularizers_add_their_values():
    emb, labels = _batch()
    plain = _group_loss().double()(emb, labels)
    loss = _group_loss(
        weight_regularizer=regularizers.LpRegularizer(),
        weight_reg_weight=0.3,
        embedding_regularizer=regularizers.LpRegularizer(power=2),
        embedding_reg_weight=0.7,
    ).double()
    assert loss.sub_loss_names() == [
        "group_loss",
        "ce_loss",
        "weight_reg_loss",
        "embedding_reg_loss",
    ]
    value = loss(emb, labels)
    expected = plain + 0.3 * loss.W.norm(dim=1).mean() + 0.7 * (emb.norm(dim=1) ** 2).mean()
    assert value.item() == pytest.approx(expected.item(), rel=1e-12)


def test_regular_face_regularizer_on_the_classifier():
    emb, labels = _batch()
    plain = _group_loss().double()(emb, labels)
    regularizer = regularizers.RegularFaceRegularizer()
    loss = _group_loss(weight_regularizer=regularizer, weight_reg_weight=2.0).double()
    value = loss(emb, labels)
    assert value.item() == pytest.approx((plain + 2.0 * regularizer(loss.W)).item(), rel=1e-12)
    # the classifier gets the penalty's gradient on top of the loss's
    (W_grad,) = torch.autograd.grad(value, loss.W)
    (W_grad_plain,) = torch.autograd.grad(loss(emb, labels) - 2.0 * regularizer(loss.W), loss.W)
    (W_grad_penalty,) = torch.autograd.grad(regularizer(loss.W), loss.W)
    assert W_grad_penalty.abs().sum() > 0
    torch.testing.assert_close(W_grad, W_grad_plain + 2.0 * W_grad_penalty)


# -- torch.compile ---------------------------------------------------------------------------
@pytest.mark.slow
def test_torch_compile_forward_backward_matches_eager():
    if not hasattr(torch, "compile"):
        pytest.skip("torch.compile needs torch >= 2.0")
    if shutil.which(os.environ.get("CXX", "g++")) is None:
        pytest.skip("torch.compile's CPU backend (inductor) needs a C++ compiler (g++)")
    emb, labels = _batch(dtype=torch.float32)
    eager = _group_loss()
    compiled_loss = _group_loss()
    compiled_loss.load_state_dict(eager.state_dict())
    anchors = AnchorMiner(1)(emb, labels)
    expected = eager(emb, labels, anchors)
    expected.backward()
    emb_grad, emb.grad = emb.grad.clone(), None
    value = torch.compile(compiled_loss)(emb, labels, anchors)
    value.backward()
    assert value.item() == pytest.approx(expected.item(), rel=1e-5)
    torch.testing.assert_close(emb.grad, emb_grad, rtol=1e-4, atol=1e-6)
    torch.testing.assert_close(compiled_loss.W.grad, eager.W.grad, rtol=1e-4, atol=1e-6)
