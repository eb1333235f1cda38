"""GroupLoss with many classes: the batch-class prior (GL++ §8.3) and sparse classifier rows."""
import math

import pytest
import torch
from pytorch_metric_learning import regularizers

from pml_grouploss import functional, losses

M, D = 40, 6


def _batch(n=12, seed=0, classes=(3, 17, 29, 8)):
    g = torch.Generator().manual_seed(seed)
    labels = torch.tensor(classes).repeat(n // len(classes))
    labels = labels[torch.randperm(n, generator=g)]
    return torch.randn(n, D, generator=g, dtype=torch.float64), labels


def _by_hand(loss_fn, e, labels, ce_classes):
    """The dense computation restricted by hand: logits of all m classes, the columns of the
    batch's classes (torch.unique) kept, labels remapped to them, the functional loss."""
    x = functional.rms_normalize(e)
    full = x @ loss_fn.W.t() + loss_fn.bias
    present, targets = torch.unique(labels, return_inverse=True)
    W = functional.pearson_similarity(e)
    anchors = functional.select_anchors(labels, loss_fn.num_anchors)
    out = functional.refined_label_loss(
        W, full[:, present], targets, anchors, temperature=loss_fn.temperature,
        num_iterations=loss_fn.num_iterations,
        ce_logits=full if ce_classes == "all" else None,
        ce_labels=labels if ce_classes == "all" else None,
    )
    return out["loss"]


def _pad(loss_fn, padded, monkeypatch):
    """Off the CPU the loss uses n padded class slots (no device read); force that path."""
    monkeypatch.setattr(loss_fn, "_pads_batch_classes", lambda x: padded)
    return loss_fn


@pytest.mark.parametrize("padded", [False, True], ids=["k-slots", "padded"])
@pytest.mark.parametrize("ce_classes", ["batch", "all"])
@pytest.mark.parametrize("T", [0, 1, 3])
def test_batch_prior_equals_the_dense_loss_restricted_by_hand(ce_classes, T, padded,
                                                               monkeypatch):
    torch.manual_seed(0)
    loss_fn = losses.GroupLoss(M, D, temperature=2.0, num_iterations=T,
                               prior_classes="batch", ce_classes=ce_classes).double()
    _pad(loss_fn, padded, monkeypatch)
    e, labels = _batch()
    e.requires_grad_(True)
    params = [e, loss_fn.W, loss_fn.bias]
    got = loss_fn(e, labels)
    got_grads = torch.autograd.grad(got, params)
    expected = _by_hand(loss_fn, e, labels, ce_classes)
    expected_grads = torch.autograd.grad(expected, params)
    torch.testing.assert_close(got, expected, rtol=1e-12, atol=1e-12)
    for a, b in zip(got_grads, expected_grads):
        torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-12)
    # rows of classes absent from the batch get no gradient unless the CE runs over all
    absent = torch.ones(M, dtype=torch.bool)
    absent[labels] = False
    assert (got_grads[1][absent] == 0).all() == (ce_classes == "batch")


def test_batch_prior_is_the_dense_prior_zeroed_and_renormalised():
    """GL++ §8.3: the dense loss on logits whose absent columns are -inf (prior 0 there,
    rows renormalised) is the batch-class loss, with the CE over the batch's classes."""
    loss_fn = losses.GroupLoss(M, D, temperature=3.0, num_iterations=2,
                               prior_classes="batch").double()
    e, labels = _batch(seed=1)
    x = functional.rms_normalize(e)
    logits = x @ loss_fn.W.t() + loss_fn.bias
    absent = torch.ones(M, dtype=torch.bool)
    absent[labels] = False
    dense = functional.group_loss(e, logits.masked_fill(absent, -math.inf), labels,
                                  functional.select_anchors(labels, 2),
                                  temperature=3.0, num_iterations=2)
    assert loss_fn(e, labels).item() == pytest.approx(dense["loss"].item(), rel=1e-12)
    assert (dense["probabilities"][:, absent] == 0).all()


def test_batch_prior_equals_dense_loss_when_the_prior_has_no_mass_outside_the_batch():
    dense = losses.GroupLoss(M, D, temperature=1.0, num_iterations=2).double()
    batch = losses.GroupLoss(M, D, temperature=1.0, num_iterations=2,
                             prior_classes="batch").double()
    e, labels = _batch(seed=2)
    with torch.no_grad():
        absent = torch.ones(M, dtype=torch.bool)
        absent[labels] = False
        dense.bias[absent] = -1e3  # exp(-1e3) = 0 in float64
        batch.load_state_dict(dense.state_dict())
    assert batch(e, labels).item() == pytest.approx(dense(e, labels).item(), rel=1e-12)


def test_batch_prior_without_refinement_is_a_lower_bound_of_the_dense_loss():
    """T = 0: both terms are cross-entropies, over the batch's classes <= over all."""
    dense = losses.GroupLoss(M, D, num_iterations=0).double()
    batch = losses.GroupLoss(M, D, num_iterations=0, prior_classes="batch").double()
    batch.load_state_dict(dense.state_dict())
    for seed in range(5):
        e, labels = _batch(seed=seed)
        assert batch(e, labels).item() < dense(e, labels).item()


@pytest.mark.parametrize("padded", [False, True], ids=["k-slots", "padded"])
def test_batch_prior_gradcheck(padded, monkeypatch):
    loss_fn = losses.GroupLoss(10, 4, temperature=2.0, num_iterations=2, num_anchors=1,
                               prior_classes="batch").double()
    _pad(loss_fn, padded, monkeypatch)
    g = torch.Generator().manual_seed(3)
    e = torch.randn(8, 4, generator=g, dtype=torch.float64, requires_grad=True)
    labels = torch.tensor([7, 2, 7, 5, 2, 5, 7, 2])

    def f(e, W, b):
        return torch.func.functional_call(loss_fn, {"W": W, "bias": b}, (e, labels))

    W = loss_fn.W.detach().clone().requires_grad_(True)
    b = loss_fn.bias.detach().clone().requires_grad_(True)
    assert torch.autograd.gradcheck(f, (e, W, b))


@pytest.mark.parametrize("padded", [False, True], ids=["k-slots", "padded"])
def test_sparse_gradients_equal_the_dense_gradients(padded, monkeypatch):
    dense = losses.GroupLoss(M, D, num_iterations=2, prior_classes="batch").double()
    sparse = _pad(losses.GroupLoss(M, D, num_iterations=2, prior_classes="batch",
                                   sparse_gradients=True).double(), padded, monkeypatch)
    sparse.load_state_dict(dense.state_dict())
    e, labels = _batch(seed=4)
    dense(e, labels).backward()
    sparse(e, labels).backward()
    assert sparse.W.grad.is_sparse and sparse.bias.grad.is_sparse
    assert set(sparse.W.grad.coalesce().indices()[0].tolist()) == set(labels.tolist())
    torch.testing.assert_close(sparse.W.grad.to_dense(), dense.W.grad, rtol=1e-12, atol=0)
    torch.testing.assert_close(sparse.bias.grad.to_dense(), dense.bias.grad, rtol=1e-12, atol=0)


@pytest.mark.parametrize("optimizer", [
    lambda p: torch.optim.SparseAdam(p, lr=1e-2),
    lambda p: torch.optim.SGD(p, lr=1e-1),
], ids=["SparseAdam", "SGD"])
@pytest.mark.parametrize("padded", [False, True], ids=["k-slots", "padded"])
def test_one_optimizer_step_touches_only_the_batch_rows(optimizer, padded, monkeypatch):
    loss_fn = _pad(losses.GroupLoss(M, D, prior_classes="batch", sparse_gradients=True),
                   padded, monkeypatch)
    opt = optimizer(loss_fn.parameters())
    W0, b0 = loss_fn.W.detach().clone(), loss_fn.bias.detach().clone()
    e, labels = _batch(seed=5)
    loss_fn(e.float(), labels).backward()
    opt.step()
    changed = (loss_fn.W.detach() != W0).any(dim=1)
    assert changed.nonzero().reshape(-1).tolist() == sorted(set(labels.tolist()))
    assert ((loss_fn.bias.detach() != b0) == changed).all()


def test_pml_trainer_style_zero_grad_then_sparse_steps():
    """Two steps with PML's order (zero_grad(set_to_none), forward, backward, step)."""
    loss_fn = losses.GroupLoss(M, D, prior_classes="batch", sparse_gradients=True)
    opt = torch.optim.SparseAdam(loss_fn.parameters(), lr=1e-2)
    W0 = loss_fn.W.detach().clone()
    seen = set()
    for seed, classes in [(6, (1, 2, 3)), (7, (2, 30, 31))]:
        loss_fn.zero_grad()
        e, labels = _batch(seed=seed, classes=classes)
        loss_fn(e.float(), labels).backward()
        opt.step()
        seen |= set(classes)
    changed = (loss_fn.W.detach() != W0).any(dim=1)
    assert changed.nonzero().reshape(-1).tolist() == sorted(seen)


@pytest.mark.parametrize("kwargs,match", [
    (dict(sparse_gradients=True), "prior_classes='batch'"),
    (dict(sparse_gradients=True, prior_classes="batch", ce_classes="all"), "ce_classes"),
    (dict(sparse_gradients=True, prior_classes="batch",
          weight_regularizer=regularizers.LpRegularizer()), "weight_regularizer"),
    (dict(prior_classes="present"), "prior_classes"),
    (dict(ce_classes="some"), "ce_classes"),
    (dict(ce_classes="batch"), "ce_classes='batch' needs prior_classes='batch'"),
    (dict(sparse_gradients=1), "sparse_gradients"),
    (dict(validate="yes"), "validate"),
])
def test_bad_class_options(kwargs, match):
    with pytest.raises((ValueError, TypeError), match=match):
        losses.GroupLoss(M, D, **kwargs)


def test_batch_prior_with_miner_anchors_stats_and_out_of_range_labels():
    loss_fn = losses.GroupLoss(M, D, prior_classes="batch", collect_stats=True).double()
    e, labels = _batch(seed=8)
    loss_fn(e, labels, (torch.tensor([0, 1, 1]),))
    assert loss_fn.num_anchors_used == 2
    assert 0 < loss_fn.avg_true_class_prior < 1
    with pytest.raises(ValueError, match="num_classes"):
        loss_fn(e, torch.full_like(labels, M))
