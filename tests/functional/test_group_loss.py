"""group_loss / refined_label_loss against the authors' reference fixtures and the papers."""
import os

import numpy as np
import pytest
import torch

from pml_grouploss.functional import (
    group_loss,
    initial_assignment,
    pearson_similarity,
    refined_label_terms,
    select_anchors,
)

from ..conftest import fixture_paths

GTG = fixture_paths("gtg_n*.npz")
VARIANTS = fixture_paths("gtg_variants_*.npz")


def _run(z, dtype, **kwargs):
    e = torch.tensor(z["embeddings"], dtype=dtype, requires_grad=True)
    logits = torch.tensor(z["logits"], dtype=dtype, requires_grad=True)
    labels = torch.tensor(z["labels"])
    anchors = select_anchors(labels, int(z["num_labeled_per_class"]))
    out = group_loss(
        e,
        logits,
        labels,
        anchors,
        temperature=float(z["temperature"]),
        num_iterations=int(z["max_iter"]),
        nll_weight=float(z["scaling_loss"]),
        **kwargs,
    )
    grad_e, grad_logits = torch.autograd.grad(out["loss"], [e, logits])
    return out, anchors, grad_e, grad_logits


def _close(actual, expected, rtol, atol):
    np.testing.assert_allclose(actual.detach().cpu().numpy(), expected, rtol=rtol, atol=atol)


def _close_rel_to_max(actual, expected, rel):
    scale = np.abs(expected).max()
    np.testing.assert_allclose(actual.detach().cpu().numpy(), expected, rtol=0, atol=rel * scale)


@pytest.mark.parametrize("path", GTG, ids=os.path.basename)
def test_float64_reproduces_reference(path):
    z = np.load(path)
    out, anchors, grad_e, grad_logits = _run(z, torch.float64)
    np.testing.assert_array_equal(anchors.numpy(), z["anchor_idx"])
    tol = dict(rtol=1e-9, atol=1e-12)
    _close(out["similarity"], z["W"], **tol)
    _close(out["prior"], z["X0"], **tol)
    _close(out["probabilities"], z["X_T"], **tol)
    _close(out["loss"], z["loss_total"], **tol)
    _close(out["group_loss"], z["loss_nll"], **tol)
    _close(out["ce_loss"], z["loss_ce"], **tol)
    _close(grad_e, z["grad_embeddings"], **tol)
    _close(grad_logits, z["grad_logits"], **tol)


@pytest.mark.parametrize("path", GTG, ids=os.path.basename)
def test_nll_gradient_wrt_logits_alone(path):
    z = np.load(path)
    e = torch.tensor(z["embeddings"])
    logits = torch.tensor(z["logits"], requires_grad=True)
    labels = torch.tensor(z["labels"])
    out = group_loss(
        e, logits, labels, select_anchors(labels, int(z["num_labeled_per_class"])),
        temperature=float(z["temperature"]), num_iterations=int(z["max_iter"]),
    )
    (g,) = torch.autograd.grad(out["group_loss"], [logits])
    _close(g, z["grad_logits_nll"], rtol=1e-9, atol=1e-12)


@pytest.mark.parametrize("path", GTG, ids=os.path.basename)
def test_float32_reproduces_reference_float32_run(path):
    z = np.load(path)
    out, _, grad_e, grad_logits = _run(z, torch.float32)
    assert out["loss"].dtype == torch.float32
    _close(out["similarity"], z["f32_W"], rtol=0, atol=2e-6)
    _close(out["prior"], z["f32_X0"], rtol=0, atol=2e-6)
    _close(out["probabilities"], z["f32_X_T"], rtol=0, atol=2e-6)
    _close(out["loss"], z["f32_loss_total"], rtol=0, atol=2e-6)
    _close(out["group_loss"], z["f32_loss_nll"], rtol=0, atol=2e-6)
    _close(out["ce_loss"], z["f32_loss_ce"], rtol=0, atol=2e-6)
    _close_rel_to_max(grad_e, z["f32_grad_embeddings"], 2e-6)
    _close_rel_to_max(grad_logits, z["f32_grad_logits"], 2e-6)


@pytest.mark.parametrize("path", GTG, ids=os.path.basename)
def test_history_matches_reference(path):
    from pml_grouploss.functional import pearson_similarity, replicator_history

    z = np.load(path)
    W = pearson_similarity(torch.tensor(z["embeddings"]))
    history = replicator_history(W, torch.tensor(z["X0"]), int(z["max_iter"]))
    assert len(history) == z["X_history"].shape[0]
    for t, X in enumerate(history):
        _close(X, z["X_history"][t], rtol=1e-9, atol=1e-12)


@pytest.mark.parametrize("path", VARIANTS, ids=os.path.basename)
@pytest.mark.parametrize(
    "variant,kwargs",
    [("zerodiag", dict(zero_diagonal=True)), ("shift", dict(negatives="shift"))],
)
def test_paper_variants_reproduce_fixtures(path, variant, kwargs):
    z = np.load(path)
    out, _, grad_e, grad_logits = _run(z, torch.float64, **kwargs)
    tol = dict(rtol=1e-9, atol=1e-12)
    _close(out["similarity"], z[f"{variant}_W"], **tol)
    _close(out["prior"], z[f"{variant}_X0"], **tol)
    _close(out["probabilities"], z[f"{variant}_X_T"], **tol)
    _close(out["loss"], z[f"{variant}_loss_total"], **tol)
    _close(out["group_loss"], z[f"{variant}_loss_nll"], **tol)
    _close(out["ce_loss"], z[f"{variant}_loss_ce"], **tol)
    _close(grad_e, z[f"{variant}_grad_embeddings"], **tol)
    _close(grad_logits, z[f"{variant}_grad_logits"], **tol)


def test_hand_derived_two_samples():
    # Two samples of class 0 and 1 in a 2-class problem, one refinement step.
    # x0 = (1, 2, 3) and x1 = (3, 2, 1): centred (-1, 0, 1) and (1, 0, -1), corr = -1,
    # so W = I after clamping and the refinement leaves the prior unchanged.
    e = torch.tensor([[1.0, 2.0, 3.0], [3.0, 2.0, 1.0]], dtype=torch.float64)
    logits = torch.tensor([[2.0, 0.0], [0.0, 1.0]], dtype=torch.float64)
    labels = torch.tensor([0, 1])
    out = group_loss(e, logits, labels, torch.empty(0, dtype=torch.long),
                     temperature=2.0, num_iterations=1)
    p0 = 1 / (1 + np.exp(-1.0))  # softmax((1, 0))[0]
    p1 = 1 / (1 + np.exp(-0.5))  # softmax((0, 0.5))[1]
    # X1 = X0 * (W X0) / row-sum with W = I: x_il^2 / sum_l x_il^2
    r0 = p0**2 / (p0**2 + (1 - p0) ** 2)
    r1 = p1**2 / (p1**2 + (1 - p1) ** 2)
    expected_nll = -(np.log(r0 + 1e-12) + np.log(r1 + 1e-12)) / 2
    ce = -(np.log(1 / (1 + np.exp(-2.0))) + np.log(1 / (1 + np.exp(-1.0)))) / 2
    assert out["group_loss"].item() == pytest.approx(expected_nll, rel=1e-12)
    assert out["ce_loss"].item() == pytest.approx(ce, rel=1e-12)
    assert out["loss"].item() == pytest.approx(expected_nll + ce, rel=1e-12)
    # shift: W = corr + 1 = [[2, 0], [0, 2]] -> same refinement (scale-free)
    shifted = group_loss(e, logits, labels, torch.empty(0, dtype=torch.long),
                         temperature=2.0, num_iterations=1, negatives="shift")
    np.testing.assert_allclose(shifted["similarity"].numpy(), [[2.0, 0.0], [0.0, 2.0]],
                               atol=1e-15)
    assert shifted["group_loss"].item() == pytest.approx(expected_nll, rel=1e-12)


def test_weights_and_plain_cross_entropy():
    z = np.load(GTG[1])
    e = torch.tensor(z["embeddings"])
    logits = torch.tensor(z["logits"])
    labels = torch.tensor(z["labels"])
    a = select_anchors(labels, 2)
    base = group_loss(e, logits, labels, a, temperature=24.0, num_iterations=3)
    weighted = group_loss(e, logits, labels, a, temperature=24.0, num_iterations=3,
                          nll_weight=0.5, ce_weight=0.0)
    assert weighted["loss"].item() == pytest.approx(0.5 * base["group_loss"].item(), rel=1e-12)
    ce_only = group_loss(e, logits, labels, a, temperature=24.0, num_iterations=3,
                         nll_weight=0.0)
    expected = torch.nn.functional.cross_entropy(logits, labels).item()
    assert ce_only["loss"].item() == pytest.approx(expected, rel=1e-12)


def test_refined_label_terms_are_the_losses_per_sample_in_log_space():
    """GroupLoss's path (no means, no exponentials) against the fixture-tested dict."""
    z = np.load(GTG[0])
    e, logits = torch.tensor(z["embeddings"]), torch.tensor(z["logits"])
    labels = torch.tensor(z["labels"])
    a = select_anchors(labels, 2)
    out = group_loss(e, logits, labels, a, temperature=24.0, num_iterations=3)
    terms = refined_label_terms(pearson_similarity(e), logits, labels, a, temperature=24.0,
                                num_iterations=3)
    assert torch.equal(terms.nll, out["group_loss_per_sample"])
    assert torch.equal(terms.ce, out["ce_loss_per_sample"])
    assert torch.equal(torch.exp(terms.log_probabilities), out["probabilities"])
    assert torch.equal(torch.exp(terms.log_prior), out["prior"])


def test_zero_iterations_is_prior():
    z = np.load(GTG[0])
    logits = torch.tensor(z["logits"])
    labels = torch.tensor(z["labels"])
    a = select_anchors(labels, 1)
    out = group_loss(torch.tensor(z["embeddings"]), logits, labels, a,
                     temperature=1.0, num_iterations=0)
    assert torch.equal(out["probabilities"], initial_assignment(logits, labels, a, 1.0))


def test_gradcheck_float64():
    torch.manual_seed(1)
    e = torch.randn(9, 5, dtype=torch.float64, requires_grad=True)
    logits = torch.randn(9, 4, dtype=torch.float64, requires_grad=True)
    labels = torch.tensor([0, 0, 0, 1, 1, 1, 2, 2, 3])
    anchors = select_anchors(labels, 1)
    for kwargs in (dict(), dict(negatives="shift"), dict(zero_diagonal=True)):
        def f(emb, lg):
            return group_loss(emb, lg, labels, anchors, temperature=2.0,
                              num_iterations=3, **kwargs)["loss"]

        assert torch.autograd.gradcheck(f, (e, logits))
        assert torch.autograd.gradgradcheck(f, (e, logits))


def test_half_precision_computes_in_float32():
    z = np.load(GTG[1])
    e = torch.tensor(z["embeddings"], dtype=torch.bfloat16)
    logits = torch.tensor(z["logits"], dtype=torch.bfloat16)
    labels = torch.tensor(z["labels"])
    out = group_loss(e, logits, labels, select_anchors(labels, 2), temperature=24.0,
                     num_iterations=3)
    assert out["loss"].dtype == torch.float32
    # bfloat16 inputs carry ~3 significant digits; the loss stays close to the reference.
    assert out["loss"].item() == pytest.approx(float(z["loss_total"]), abs=0.05)
