"""The fused label side of GroupLoss (prior, log-space dynamics, refined-label NLL and CE, one
autograd node): equal to the public functions it replaces, closed-form backward against
autograd of its forward formula, gradcheck/gradgradcheck in float64, degenerate rows."""
import math

import pytest
import torch
import torch.nn.functional as F

from pml_grouploss.functional import (
    LOG_EPSILON,
    log_initial_assignment,
    log_replicator_dynamics,
    pearson_similarity,
)
from pml_grouploss.functional._refined_labels import _forward, refined_labels

LABELS = torch.tensor([0, 0, 0, 1, 1, 1, 2, 2, 3])
ANCHORS = torch.tensor([1, 0, 0, 1, 0, 0, 1, 0, 1], dtype=torch.bool)


def _batch(zero_diagonal=False, seed=0, m=5):
    g = torch.Generator().manual_seed(seed)
    W = pearson_similarity(torch.randn(9, 6, generator=g, dtype=torch.float64),
                           zero_diagonal=zero_diagonal)
    W[4, :] = W[:, 4] = 0.0  # an isolated sample: no support with a zeroed diagonal
    return W, 3 * torch.randn(9, m, generator=g, dtype=torch.float64)


@pytest.mark.parametrize("T", [0, 1, 3])
@pytest.mark.parametrize("zero_diagonal", [False, True])
def test_values_are_the_public_functions(T, zero_diagonal):
    W, logits = _batch(zero_diagonal)
    nll, ce, log_X0, log_XT = refined_labels(W, logits, LABELS, ANCHORS, 2.0, T, True)
    expected_X0 = log_initial_assignment(logits, LABELS, ANCHORS, 2.0)
    expected_XT = log_replicator_dynamics(W, expected_X0, T)
    assert torch.equal(log_X0, expected_X0) and torch.equal(log_XT, expected_XT)
    log_true = expected_XT.gather(1, LABELS.view(-1, 1)).squeeze(1)
    assert torch.equal(nll, -torch.logaddexp(log_true, torch.tensor(math.log(LOG_EPSILON),
                                                                    dtype=torch.float64)))
    assert torch.equal(ce, F.cross_entropy(logits, LABELS, reduction="none"))
    torch.testing.assert_close(nll[ANCHORS], torch.full((4,), -math.log1p(LOG_EPSILON),
                                                        dtype=torch.float64), rtol=0, atol=1e-20)


@pytest.mark.parametrize("T", [0, 1, 3])
@pytest.mark.parametrize("with_ce", [True, False])
@pytest.mark.parametrize("zero_diagonal", [False, True])
def test_backward_matches_autograd_of_the_formula(T, with_ce, zero_diagonal):
    W, logits = _batch(zero_diagonal)
    W = 5.0 * W  # off [0, 2): the scaling's gradient path is exercised
    gen = torch.Generator().manual_seed(1)
    g_nll, g_ce = (torch.randn(9, generator=gen, dtype=torch.float64) for _ in range(2))
    leaves = [t.clone().requires_grad_() for t in (W, logits)]
    nll, ce, _, _ = refined_labels(*leaves, LABELS, ANCHORS, 2.0, T, with_ce)
    objective = (nll * g_nll).sum() + ((ce * g_ce).sum() if with_ce else 0)
    ours = torch.autograd.grad(objective, leaves)
    ref_leaves = [t.clone().requires_grad_() for t in (W, logits)]
    out = _forward(*ref_leaves, LABELS.view(-1, 1), ANCHORS.view(-1, 1), 2.0, T, with_ce, False)
    objective = (out.nll * g_nll).sum() + ((out.ce * g_ce).sum() if with_ce else 0)
    theirs = torch.autograd.grad(objective, ref_leaves, allow_unused=True)
    for a, e in zip(ours, theirs):
        e = torch.zeros_like(a) if e is None else e  # T = 0: W is not used
        torch.testing.assert_close(a, e, rtol=1e-10, atol=1e-12)
    if not with_ce:  # the anchors' logits get no gradient from the NLL
        assert not ours[1][ANCHORS].any()


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("T", [1, 3])
def test_unit_diagonal_skips_only_no_ops(T, dtype):
    """``unit_diagonal=True`` (W >= 0, W_ii = 1, max W < 2) skips the rescaling and the
    no-support guard: values and gradients are bit-identical to the guarded computation."""
    W, logits = _batch()
    W[4, 4] = 1.0  # the isolated sample keeps its self-similarity, as the promise says
    W, logits = W.to(dtype), logits.to(dtype)
    g = torch.Generator().manual_seed(3)
    g_nll, g_ce = (torch.randn(9, generator=g, dtype=dtype) for _ in range(2))
    results = []
    for unit_diagonal in (False, True):
        leaves = [t.clone().requires_grad_() for t in (W, logits)]
        out = refined_labels(*leaves, LABELS, ANCHORS, 2.0, T, True, unit_diagonal=unit_diagonal)
        grads = torch.autograd.grad((out[0] * g_nll).sum() + (out[1] * g_ce).sum(), leaves)
        results.append([t.detach() for t in out] + list(grads))
    assert all(torch.equal(a, b) for a, b in zip(*results))


def test_gradcheck_and_gradgradcheck_float64():
    W, logits = _batch(m=4)
    W = ((W + W.T) / 4 + 0.01)[:6, :6]  # positive, away from the support threshold
    leaves = [W.clone().requires_grad_(), logits[:6].clone().requires_grad_()]

    def f(W, logits):
        nll, ce, _, _ = refined_labels(W, logits, LABELS[:6], ANCHORS[:6], 2.0, 2, True)
        return nll, ce

    assert torch.autograd.gradcheck(f, leaves)
    assert torch.autograd.gradgradcheck(f, leaves)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_saturated_prior_against_every_neighbour_is_finite(dtype):
    """A prior of ~1 on a wrong class whose neighbours all back the true one: the refined
    probability of the true class is ~1e-40 (below float32's normal range)."""
    W = torch.ones(9, 9, dtype=dtype)
    logits = torch.zeros(9, 5, dtype=dtype)
    logits[1, 4] = 2000.0
    leaves = [W.requires_grad_(), logits.requires_grad_()]
    nll, ce, _, _ = refined_labels(*leaves, LABELS, ANCHORS, 1.0, 3, True)
    (nll.sum() + ce.sum()).backward()
    assert torch.isfinite(nll).all() and torch.isfinite(ce).all()
    assert nll[1].item() == pytest.approx(-math.log(LOG_EPSILON), rel=1e-3)
    assert all(torch.isfinite(t.grad).all() for t in leaves)
