"""GroupLoss as a PML loss: reference parity through PML's forward, inputs, dtypes, stats."""
import os

import numpy as np
import pytest
import torch
from pytorch_metric_learning import distances as pml_distances
from pytorch_metric_learning import miners as pml_miners
from pytorch_metric_learning import reducers, regularizers

from pml_grouploss import distances, functional, losses, miners

from ..conftest import cuda_or_skip, fixture_paths

GTG = fixture_paths("gtg_n*.npz")


def _use_logits(loss_fn, logits, monkeypatch):
    """The fixture's logits in place of the classifier's; the similarity as in training."""
    similarity_and_logits = loss_fn._similarity_and_logits

    def patched(x, classes):
        W, corr, _, row_power = similarity_and_logits(x, classes)
        return W, corr, logits, row_power

    monkeypatch.setattr(loss_fn, "_similarity_and_logits", patched)


def _loss_for(z, **kwargs):
    return losses.GroupLoss(
        int(z["num_classes"]),
        z["embeddings"].shape[1],
        temperature=float(z["temperature"]),
        num_iterations=int(z["max_iter"]),
        num_anchors=int(z["num_labeled_per_class"]),
        **kwargs,
    )


@pytest.mark.parametrize("path", GTG, ids=os.path.basename)
def test_pml_forward_reproduces_reference(path, monkeypatch):
    """The whole PML path (forward, distance, anchors, reducers) on the fixture logits."""
    z = np.load(path)
    loss_fn = _loss_for(z)
    e = torch.tensor(z["embeddings"], requires_grad=True)
    logits = torch.tensor(z["logits"], requires_grad=True)
    _use_logits(loss_fn, logits, monkeypatch)
    loss = loss_fn(e, torch.tensor(z["labels"]))
    grad_e, grad_logits = torch.autograd.grad(loss, [e, logits])
    tol = dict(rtol=1e-9, atol=1e-12)
    np.testing.assert_allclose(loss.item(), z["loss_total"], **tol)
    np.testing.assert_allclose(grad_e.numpy(), z["grad_embeddings"], **tol)
    np.testing.assert_allclose(grad_logits.numpy(), z["grad_logits"], **tol)


@pytest.mark.parametrize("normalize", [False, True])
def test_classifier_is_affine_and_matches_functional(normalize):
    """normalize_embeddings=False: the authors' nn.Linear on x; True: on sqrt(d) x / ||x||."""
    torch.manual_seed(0)
    loss_fn = losses.GroupLoss(6, 10, temperature=3.0, num_iterations=2, num_anchors=1,
                               normalize_embeddings=normalize)
    e = 7.0 * torch.randn(12, 10)
    labels = torch.arange(6).repeat(2)
    x = e / e.norm(dim=1, keepdim=True) * np.sqrt(10) if normalize else e
    logits = x @ loss_fn.W.t() + loss_fn.bias
    expected = functional.group_loss(e, logits, labels, functional.select_anchors(labels, 1),
                                     temperature=3.0, num_iterations=2)["loss"]
    assert loss_fn(e, labels).item() == pytest.approx(expected.item(), rel=1e-6)
    # nn.Linear's initialisation bounds
    assert loss_fn.W.abs().max() <= 1 / np.sqrt(10) and loss_fn.bias.abs().max() <= 1 / np.sqrt(10)


def test_gradients_reach_classifier_and_weights():
    # one anchor per class: the other sample of each class sends gradient to the prior
    loss_fn = losses.GroupLoss(4, 5, num_anchors=1, nll_weight=0.5, ce_weight=0.0,
                               normalize_embeddings=False)
    e = torch.randn(8, 5, requires_grad=True)
    labels = torch.tensor([0, 0, 1, 1, 2, 2, 3, 3])
    loss = loss_fn(e, labels)
    loss.backward()
    assert loss_fn.W.grad is not None and loss_fn.W.grad.abs().sum() > 0
    assert loss_fn.bias.grad.abs().sum() > 0
    ce_only = losses.GroupLoss(4, 5, nll_weight=0.0, normalize_embeddings=False)
    ce_only.load_state_dict(loss_fn.state_dict())
    logits = e @ loss_fn.W.t() + loss_fn.bias
    expected = torch.nn.functional.cross_entropy(logits, labels)
    assert ce_only(e, labels).item() == pytest.approx(expected.item(), rel=1e-6)


def test_anchor_1_tuple_is_used_and_miner_output_accepted():
    z = np.load(GTG[1])
    loss_fn = _loss_for(z, collect_stats=True)
    e = torch.tensor(z["embeddings"], dtype=torch.float32)
    labels = torch.tensor(z["labels"])
    mined = miners.AnchorMiner(num_anchors_per_class=2)(e, labels)
    assert len(mined) == 1 and mined[0].tolist() == z["anchor_idx"].tolist()
    same = loss_fn(e, labels, mined)
    assert same.item() == pytest.approx(loss_fn(e, labels).item(), rel=1e-6)
    none = loss_fn(e, labels, (torch.tensor([], dtype=torch.long),))
    assert loss_fn.num_anchors_used == 0
    assert none.item() != pytest.approx(same.item())


@pytest.mark.parametrize("miner", [pml_miners.TripletMarginMiner(), pml_miners.PairMarginMiner()])
def test_pair_and_triplet_tuples_are_rejected(miner):
    loss_fn = losses.GroupLoss(3, 4)
    e = torch.randn(9, 4)
    labels = torch.arange(3).repeat(3)
    with pytest.raises(ValueError, match="AnchorMiner"):
        loss_fn(e, labels, miner(e, labels))


def test_stats_only_with_collect_stats():
    z = np.load(GTG[1])
    e = torch.tensor(z["embeddings"])
    labels = torch.tensor(z["labels"])
    quiet = _loss_for(z, collect_stats=False).double()
    quiet(e, labels)
    assert not hasattr(quiet, "avg_true_class_probability")
    loud = _loss_for(z, collect_stats=True).double()
    loud(e, labels)
    assert loud.num_anchors_used == 10
    corr = np.corrcoef(z["embeddings"])
    off = ~np.eye(len(corr), dtype=bool)
    assert loud.fraction_negative_similarities == pytest.approx((corr[off] < 0).mean())
    assert 0 < loud.avg_true_class_probability < 1 and 0 <= loud.refined_accuracy <= 1
    for name in ("num_anchors_used", "avg_true_class_prior", "avg_true_class_probability",
                 "refined_accuracy", "fraction_negative_similarities"):
        assert name in loud._record_these_stats and isinstance(getattr(loud, name), (int, float))


@pytest.mark.parametrize(
    "kwargs,match",
    [
        (dict(temperature=0.0), "temperature"),
        (dict(temperature=-1.0), "temperature"),
        (dict(num_iterations=-1), "num_iterations"),
        (dict(num_anchors=-2), "num_anchors"),
        (dict(negatives="abs"), "negatives"),
        (dict(anchor_selection="last"), "anchor_selection"),
        (dict(ce_weight=-1.0), "ce_weight"),
        (dict(nll_weight=float("nan")), "nll_weight"),
        (dict(nll_weight=1e308), "nll_weight must be a finite number >= 0 and <= 100"),
        (dict(ce_weight=100.5), "ce_weight must be a finite number >= 0 and <= 100"),
        (dict(num_iterations=2**40), "num_iterations must be an int <= 1000.*papers use 1-3"),
        (dict(seed=1.5), "seed must be an int, got float"),
        (dict(seed=True), "seed must be an int, got bool"),
        (dict(seed=torch.tensor(3)), "seed must be an int, got Tensor"),
        (dict(seed=2**70), "seed must fit in 64 bits"),
        (dict(distance=pml_distances.LpDistance()), "similarity"),
        (dict(num_classes=0), "num_classes"),
    ],
)
def test_bad_constructor_arguments(kwargs, match):
    args = dict(num_classes=3, embedding_size=4)
    args.update(kwargs)
    with pytest.raises((ValueError, TypeError), match=match):
        losses.GroupLoss(**args)


@pytest.mark.parametrize(
    "embeddings,labels,err,match",
    [
        (torch.randn(4, 5), torch.tensor([0, 1, 2, 3]), ValueError, "num_classes"),
        (torch.randn(4, 5), torch.tensor([0, -1, 2, 1]), ValueError, "num_classes"),
        (torch.randn(4, 6), torch.tensor([0, 1, 2, 1]), ValueError, "embedding_size"),
        (torch.randn(4, 5), torch.tensor([0.0, 1.0, 2.0, 1.0]), TypeError, "labels"),
        (torch.tensor([[float("nan")] * 5] * 4), torch.tensor([0, 1, 2, 1]), ValueError,
         "NaN"),
        (torch.randn(4, 5), None, ValueError, "labels"),
    ],
)
def test_bad_inputs(embeddings, labels, err, match):
    with pytest.raises(err, match=match):
        losses.GroupLoss(3, 5)(embeddings, labels)


def test_ref_emb_rejected():
    with pytest.raises(ValueError, match="ref_emb"):
        losses.GroupLoss(2, 3)(torch.randn(4, 3), torch.tensor([0, 1, 0, 1]),
                               ref_emb=torch.randn(4, 3), ref_labels=torch.tensor([0, 1, 0, 1]))


def _degenerate_batches():
    g = torch.Generator().manual_seed(0)
    r = lambda *s: torch.randn(*s, generator=g)  # noqa: E731
    base = r(1, 6)
    yield "one class", r(6, 6), torch.zeros(6, dtype=torch.long), {}
    yield "one sample", r(1, 6), torch.tensor([2]), {}
    yield "fewer samples than anchors", r(5, 6), torch.tensor([0, 0, 0, 1, 2]), dict(num_anchors=3)
    yield "every sample an anchor", r(6, 6), torch.tensor([0, 0, 1, 1, 2, 2]), dict(num_anchors=2)
    yield "duplicated embeddings", base.repeat(6, 1), torch.tensor([0, 1, 2, 0, 1, 2]), {}
    yield "zero variance", torch.full((6, 6), 0.3), torch.tensor([0, 1, 2, 0, 1, 2]), {}
    yield "all zeros", torch.zeros(6, 6), torch.tensor([0, 1, 2, 0, 1, 2]), {}
    v = torch.tensor([1.0, -1.0, 2.0, -2.0, 0.5, -0.5])
    yield "all-negative similarities", torch.stack([v, -v]), torch.tensor([0, 1]), {}
    isolated = torch.cat([r(4, 6), torch.stack([v, -v])])
    yield ("zeroed diagonal, isolated sample", isolated, torch.tensor([0, 0, 1, 1, 2, 2]),
           dict(zero_diagonal=True, num_anchors=0))
    yield "shift, one class", r(4, 6), torch.zeros(4, dtype=torch.long), dict(negatives="shift")
    yield "empty batch", r(0, 6), torch.zeros(0, dtype=torch.long), {}


@pytest.mark.parametrize("name,e,labels,kwargs", list(_degenerate_batches()),
                         ids=[b[0] for b in _degenerate_batches()])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_degenerate_batches_are_finite(name, e, labels, kwargs, dtype):
    loss_fn = losses.GroupLoss(3, 6, num_iterations=3, collect_stats=True, **kwargs).to(dtype)
    e = e.detach().to(dtype).clone().requires_grad_(True)
    loss = loss_fn(e, labels)
    assert torch.isfinite(loss)
    loss.backward()
    assert e.grad is not None and torch.isfinite(e.grad).all()
    if len(labels):
        assert torch.isfinite(loss_fn.W.grad).all() and torch.isfinite(loss_fn.bias.grad).all()


def test_autocast_bfloat16_keeps_parameter_dtype():
    loss_fn = losses.GroupLoss(3, 8)
    model = torch.nn.Linear(5, 8)
    x = torch.randn(9, 5)
    labels = torch.arange(3).repeat(3)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        emb = model(x)
        assert emb.dtype == torch.bfloat16
        loss = loss_fn(emb, labels)
    assert loss_fn.W.dtype == torch.float32 and loss_fn.bias.dtype == torch.float32
    # PML's reducers return the loss in the embeddings' dtype; the dynamics ran in float32.
    assert loss.dtype == torch.bfloat16 and torch.isfinite(loss)
    loss.backward()
    assert torch.isfinite(model.weight.grad).all() and loss_fn.W.grad.dtype == torch.float32


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_half_precision_embeddings(dtype):
    loss_fn = losses.GroupLoss(3, 8)
    e = torch.randn(9, 8).to(dtype).requires_grad_(True)
    loss = loss_fn(e, torch.arange(3).repeat(3))
    assert loss_fn.W.dtype == torch.float32
    loss.backward()
    assert e.grad.dtype == dtype and torch.isfinite(e.grad.float()).all()


def test_pml_reducers_and_regularizers():
    e = torch.randn(8, 5)
    labels = torch.tensor([0, 0, 1, 1, 2, 2, 3, 3])
    torch.manual_seed(3)
    mean = losses.GroupLoss(4, 5)
    torch.manual_seed(3)
    summed = losses.GroupLoss(4, 5, reducer=reducers.SumReducer())
    assert summed(e, labels).item() == pytest.approx(8 * mean(e, labels).item(), rel=1e-5)
    torch.manual_seed(3)
    reg = losses.GroupLoss(4, 5, weight_regularizer=regularizers.LpRegularizer(),
                           weight_reg_weight=0.1)
    expected = mean(e, labels).item() + 0.1 * mean.W.norm(dim=1).mean().item()
    assert reg(e, labels).item() == pytest.approx(expected, rel=1e-5)
    assert "weight_reg_loss" in reg.sub_loss_names()


def test_cosine_similarity_as_distance():
    e = torch.randn(6, 4, dtype=torch.float64)
    labels = torch.tensor([0, 0, 1, 1, 2, 2])
    loss_fn = losses.GroupLoss(3, 4, distance=pml_distances.CosineSimilarity()).double()
    logits = functional.rms_normalize(e) @ loss_fn.W.t() + loss_fn.bias
    W = functional.similarity_from_correlation(torch.nn.functional.normalize(e) @
                                               torch.nn.functional.normalize(e).t())
    expected = functional.refined_label_loss(W, logits, labels,
                                             functional.select_anchors(labels, 2),
                                             temperature=24.0, num_iterations=1)["loss"]
    assert loss_fn(e, labels).item() == pytest.approx(expected.item(), rel=1e-12)


def test_random_anchor_selection_is_seeded():
    e = torch.randn(12, 4)
    labels = torch.arange(3).repeat(4)
    a = losses.GroupLoss(3, 4, anchor_selection="random", seed=5)
    b = losses.GroupLoss(3, 4, anchor_selection="random", seed=5)
    b.load_state_dict(a.state_dict())
    assert a(e, labels).item() == b(e, labels).item()


def test_cuda():
    device = cuda_or_skip()
    loss_fn = losses.GroupLoss(3, 8)
    e = torch.randn(9, 8, device=device, requires_grad=True)
    loss = loss_fn(e, torch.arange(3).repeat(3).to(device))
    loss.backward()
    assert loss_fn.W.device.type == "cuda" and torch.isfinite(e.grad).all()


@pytest.mark.parametrize("path", fixture_paths("gtg_variants_*.npz"), ids=os.path.basename)
@pytest.mark.parametrize(
    "variant,kwargs",
    [("zerodiag", dict(zero_diagonal=True)), ("shift", dict(negatives="shift"))],
)
def test_paper_variants_through_pml_forward(path, variant, kwargs, monkeypatch):
    """GroupLoss(negatives="shift") and GroupLoss(zero_diagonal=True) are the paper's variants."""
    z = np.load(path)
    loss_fn = _loss_for(z, **kwargs)
    e = torch.tensor(z["embeddings"], requires_grad=True)
    logits = torch.tensor(z["logits"], requires_grad=True)
    _use_logits(loss_fn, logits, monkeypatch)
    loss = loss_fn(e, torch.tensor(z["labels"]))
    grad_e, grad_logits = torch.autograd.grad(loss, [e, logits])
    tol = dict(rtol=1e-9, atol=1e-12)
    np.testing.assert_allclose(loss.item(), z[f"{variant}_loss_total"], **tol)
    np.testing.assert_allclose(grad_e.numpy(), z[f"{variant}_grad_embeddings"], **tol)
    np.testing.assert_allclose(grad_logits.numpy(), z[f"{variant}_grad_logits"], **tol)


class _ComposedPearson(distances.PearsonCorrelation):
    """The same similarity through PML's distance path (not the fused autograd node)."""


@pytest.mark.parametrize("kwargs", [
    dict(), dict(num_iterations=3), dict(zero_diagonal=True), dict(normalize_embeddings=False),
    dict(prior_classes="batch"), dict(prior_classes="batch", ce_classes="all"),
    dict(ce_weight=0.0), dict(num_iterations=0),
])
def test_fused_default_similarity_equals_the_composed_path(kwargs):
    """The default PearsonCorrelation + clamp runs as one autograd node with a closed-form
    backward; any other distance is composed from PML's distance. Both give the same loss and
    gradients (float64)."""
    torch.manual_seed(0)
    fused = losses.GroupLoss(9, 12, **kwargs).double()
    composed = losses.GroupLoss(9, 12, distance=_ComposedPearson(), **kwargs).double()
    composed.load_state_dict(fused.state_dict())
    e = 3 * torch.randn(24, 12, dtype=torch.float64)
    e[5] = 1.5  # a constant embedding
    labels = torch.arange(24) % 6
    results = []
    for loss_fn in (fused, composed):
        x = e.clone().requires_grad_()
        loss = loss_fn(x, labels)
        results.append([loss] + list(torch.autograd.grad(loss, [x, loss_fn.W, loss_fn.bias])))
    for a, b in zip(*results):
        torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-14)
