"""Invariants of the replicator dynamics from Group Loss++ §3.3 (eq. 6-11)."""
import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from pml_grouploss.functional import (
    consistency,
    initial_assignment,
    pearson_similarity,
    replicator_dynamics,
    replicator_history,
    replicator_step,
    select_anchors,
)


def _batch(seed, n, d, m, anchors_per_class, negatives="clamp", zero_diagonal=False):
    g = torch.Generator().manual_seed(seed)
    labels = torch.randint(0, m, (n,), generator=g)
    e = torch.randn(n, d, generator=g, dtype=torch.float64)
    logits = 3 * torch.randn(n, m, generator=g, dtype=torch.float64)
    W = pearson_similarity(e, negatives=negatives, zero_diagonal=zero_diagonal)
    anchors = select_anchors(labels, anchors_per_class)
    X0 = initial_assignment(logits, labels, anchors, temperature=1.0)
    return W, X0, labels, anchors


batches = st.tuples(
    st.integers(0, 10_000),          # seed
    st.integers(1, 24),              # n
    st.integers(1, 12),              # d
    st.integers(1, 8),               # m
    st.integers(0, 3),               # anchors per class
    st.sampled_from(["clamp", "shift"]),
    st.booleans(),                   # zero diagonal
)


@settings(max_examples=60, deadline=None)
@given(batches)
def test_rows_stay_on_simplex_and_anchors_one_hot(params):
    seed, n, d, m, k, negatives, zero_diagonal = params
    W, X0, labels, anchors = _batch(seed, n, d, m, k, negatives, zero_diagonal)
    for X in replicator_history(W, X0, 6):
        assert torch.isfinite(X).all()
        assert (X >= 0).all()
        np.testing.assert_allclose(X.sum(1).numpy(), 1.0, atol=1e-12)
        one_hot = torch.nn.functional.one_hot(labels[anchors], m).double()
        assert torch.equal(X[anchors], one_hot)


@settings(max_examples=60, deadline=None)
@given(batches)
def test_consistency_never_decreases(params):
    # GL++ eq. 10: F(X(t+1)) >= F(X(t)) when W >= 0 (Baum-Eagon), and eq. 11: also at
    # every convex combination (1 - eta) X(t) + eta X(t+1).
    seed, n, d, m, k, negatives, zero_diagonal = params
    W, X0, _, _ = _batch(seed, n, d, m, k, negatives, zero_diagonal)
    assert (W >= 0).all()
    history = replicator_history(W, X0, 6)
    for X_t, X_next in zip(history, history[1:]):
        f_t = consistency(W, X_t).item()
        assert consistency(W, X_next).item() >= f_t - 1e-12 * max(1.0, abs(f_t))
        for eta in (0.1, 0.25, 0.5, 0.75, 0.9):
            mixed = (1 - eta) * X_t + eta * X_next
            assert consistency(W, mixed).item() >= f_t - 1e-12 * max(1.0, abs(f_t))


def test_consistency_hand_value():
    W = torch.tensor([[1.0, 0.5], [0.5, 1.0]], dtype=torch.float64)
    X = torch.tensor([[0.2, 0.8], [0.6, 0.4]], dtype=torch.float64)
    # sum_ij w_ij <x_i, x_j>: <x0,x0>=0.68, <x1,x1>=0.52, <x0,x1>=0.44
    assert consistency(W, X).item() == pytest.approx(0.68 + 0.52 + 2 * 0.5 * 0.44)


def test_step_hand_value():
    W = torch.tensor([[1.0, 0.5], [0.5, 1.0]], dtype=torch.float64)
    X = torch.tensor([[0.2, 0.8], [0.6, 0.4]], dtype=torch.float64)
    Pi = np.array([[0.2 + 0.3, 0.8 + 0.2], [0.1 + 0.6, 0.4 + 0.4]])  # eq. 5
    num = X.numpy() * Pi
    expected = num / num.sum(1, keepdims=True)  # eq. 6
    np.testing.assert_allclose(replicator_step(W, X).numpy(), expected, rtol=1e-15)


def test_zero_support_row_is_left_unchanged():
    # zeroed diagonal + an isolated sample: its support row (W X)_i is 0 -> 0/0 in eq. 6.
    W = torch.tensor([[0.0, 0.0, 0.0], [0.0, 0.0, 0.7], [0.0, 0.7, 0.0]],
                     dtype=torch.float64, requires_grad=True)
    X = torch.tensor([[0.3, 0.7], [0.5, 0.5], [0.9, 0.1]], dtype=torch.float64,
                     requires_grad=True)
    out = replicator_dynamics(W, X, 3)
    assert torch.equal(out[0], X[0])
    out.sum().backward()
    assert torch.isfinite(W.grad).all() and torch.isfinite(X.grad).all()


def test_support_below_rounding_level_gives_finite_gradients():
    # The CI fuzz case: zeroed diagonal, a saturated prior (temperature 0.05). Row 0 is one-hot
    # on class 0 and its only neighbours give class 0 a support of ~1e-164: the quotient rule's
    # num / support**2 underflowed to inf in backward and inf * 0 made every gradient NaN.
    W = torch.tensor([[0.0, 0.4777, 0.8302], [0.4777, 0.0, 0.8863], [0.8302, 0.8863, 0.0]],
                     dtype=torch.float64, requires_grad=True)
    logits = torch.tensor([[0.0, -2000.0, -2000.0], [-2000.0, -2000.0, 0.0],
                           [-375.0, -2000.0, 0.0]], dtype=torch.float64, requires_grad=True)
    X0 = torch.softmax(logits, dim=1)
    assert 0 < X0[2, 0] < 1e-160
    XT = replicator_dynamics(W, X0, 3)
    assert torch.equal(XT[0], X0[0])  # no information above rounding level: unchanged
    torch.testing.assert_close(XT.sum(1), torch.ones(3, dtype=torch.float64))
    loss = -torch.log(XT + 1e-12).gather(1, torch.tensor([[2], [2], [1]])).mean()
    loss.backward()
    assert torch.isfinite(W.grad).all() and torch.isfinite(logits.grad).all()


def test_step_is_invariant_to_the_scale_of_W():
    g = torch.Generator().manual_seed(0)
    W = torch.rand(6, 6, generator=g, dtype=torch.float64)
    W = (W + W.T) / 2
    X = torch.softmax(torch.randn(6, 4, generator=g, dtype=torch.float64), 1)
    for c in (1e-200, 1e-3, 7.0, 1e200):
        torch.testing.assert_close(replicator_step(c * W, X), replicator_step(W, X),
                                   rtol=1e-14, atol=0)


def test_step_is_bit_identical_to_the_unscaled_formula():
    # Scaling W by a power of two is exact: the overflow guard changes no bit of eq. 6.
    g = torch.Generator().manual_seed(1)
    for dtype in (torch.float32, torch.float64):
        W = torch.rand(9, 9, generator=g, dtype=dtype) * 3.7
        X = torch.softmax(torch.randn(9, 5, generator=g, dtype=dtype), 1)
        numerator = X * (W @ X)
        assert torch.equal(replicator_step(W, X), numerator / numerator.sum(1, keepdim=True))


def test_zero_iterations_returns_input():
    W = torch.eye(3)
    X = torch.full((3, 2), 0.5)
    assert replicator_dynamics(W, X, 0) is X


@pytest.mark.parametrize("bad", [-1, 1.5, True])
def test_bad_num_iterations(bad):
    with pytest.raises((ValueError, TypeError), match="num_iterations"):
        replicator_dynamics(torch.eye(2), torch.full((2, 2), 0.5), bad)


def test_shape_mismatch():
    with pytest.raises(ValueError, match="W must be"):
        replicator_dynamics(torch.eye(3), torch.full((2, 2), 0.5), 1)
