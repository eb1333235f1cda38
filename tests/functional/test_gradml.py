"""GradML math (eq. 10-11 of the GradML paper): values, hand gradients, Table 1, gradcheck."""
import math

import numpy as np
import pytest
import torch

from pml_grouploss.functional.gradml import (
    check_gradml_params,
    gradml_gradient,
    gradml_loss,
    gradml_pair_terms,
    pair_indices,
    safe_pow,
)

# The paper's example: x1, x2 in class A, y1, y2 in class B (2-d so it can be done by hand).
X1, X2, Y1, Y2 = (0.0, 0.0), (1.0, 0.0), (0.0, 2.0), (3.0, 0.0)
LABELS = torch.tensor([0, 0, 1, 1])


def paper_points(shift=(0.0, 0.0), dtype=torch.float64):
    pts = torch.tensor([X1, X2, Y1, Y2], dtype=dtype)
    return pts + torch.tensor(shift, dtype=dtype)


# squared distances, by hand: |x1-x2|^2 = 1, |y1-y2|^2 = 13,
# |x1-y1|^2 = 4, |x1-y2|^2 = 9, |x2-y1|^2 = 5, |x2-y2|^2 = 4  (negatives sum to 22)
@pytest.mark.parametrize("w, expected", [(1.0, 1 + 13 - 22), (0.5, 1 + 13 - 11), (0.0, 14.0)])
def test_eq11_value_k2_by_hand(w, expected):
    got = gradml_loss(paper_points(), LABELS, k=2, w=w).item()
    assert got == pytest.approx(expected, abs=1e-12)


def test_eq11_value_k1_by_hand():
    expected = 1 + math.sqrt(13) - 0.7 * (2 + 3 + math.sqrt(5) + 2)
    got = gradml_loss(paper_points(), LABELS, k=1, w=0.7).item()
    assert got == pytest.approx(expected, abs=1e-12)


def test_eq10_pos_weight_scales_positive_pairs_only():
    got = gradml_loss(paper_points(), LABELS, k=2, w=1.0, pos_weight=3.0).item()
    assert got == pytest.approx(3 * 14 - 22, abs=1e-12)


def test_value_translation_invariant():
    a = gradml_loss(paper_points(), LABELS, k=2.5, w=0.8)
    b = gradml_loss(paper_points(shift=(5.0, -3.0)), LABELS, k=2.5, w=0.8)
    assert torch.allclose(a, b, atol=1e-10)


# dL/dx1 = 2(x1-x2) - 2(x1-y1) - 2(x1-y2) etc., done by hand for w = 1 (k = 2):
HAND_GRAD_W1 = torch.tensor(
    [[4.0, 4.0], [4.0, 4.0], [-4.0, -4.0], [-4.0, -4.0]], dtype=torch.float64
)


def test_closed_form_gradient_by_hand():
    assert torch.equal(gradml_gradient(paper_points(), LABELS, k=2, w=1.0), HAND_GRAD_W1)
    # the general formula of the docstring: dL/dx1 = 2((1 - 2w) x1 - x2 + w (y1 + y2))
    pts = paper_points(shift=(1.0, 1.0))
    x1, x2, y1, y2 = pts
    for w in (0.5, 1.0, 2.0):
        expected = 2 * ((1 - 2 * w) * x1 - x2 + w * (y1 + y2))
        assert torch.allclose(gradml_gradient(pts, LABELS, k=2, w=w)[0], expected, atol=1e-12)


@pytest.mark.parametrize("k", [0.5, 1.0, 2.0, 2.5, 3.0])
@pytest.mark.parametrize("w", [0.5, 1.0])
def test_autograd_equals_closed_form(k, w):
    torch.manual_seed(0)
    x = torch.randn(9, 4, dtype=torch.float64, requires_grad=True)
    labels = torch.tensor([0, 0, 0, 1, 1, 2, 2, 2, 3])
    (g,) = torch.autograd.grad(gradml_loss(x, labels, k=k, w=w, pos_weight=1.3), x)
    assert torch.allclose(g, gradml_gradient(x, labels, k=k, w=w, pos_weight=1.3), atol=1e-10)
    # a loss of pairwise differences: gradients sum to zero
    assert torch.allclose(g.sum(0), torch.zeros(4, dtype=torch.float64), atol=1e-10)


def table1_gradml_row(x1, x2, y1, y2, w):
    """The GradML row of Table 1 of the paper, verbatim."""
    return torch.stack(
        [
            2 * w * (y1 + y2 - x2),
            2 * w * (y1 + y2 - x1),
            2 * w * (x1 + x2 - y2),
            2 * w * (x1 + x2 - y1),
        ]
    )


@pytest.mark.parametrize("w", [0.5, 1.0, 2.0])
def test_table1_row_does_not_follow_from_eq11(w):
    pts = paper_points(shift=(1.0, 1.0)).requires_grad_(True)
    (g,) = torch.autograd.grad(gradml_loss(pts, LABELS, k=2, w=w), pts)
    row = table1_gradml_row(*pts.detach(), w)
    assert not torch.allclose(g, row, atol=1e-3)
    # the row is not even translation invariant (its entries do not sum to zero)
    assert row.sum(0).abs().max() > 1.0
    assert torch.allclose(g.sum(0), torch.zeros(2, dtype=torch.float64), atol=1e-12)


def test_table1_row_coincides_only_at_origin_x1_w1():
    # At x1 = 0 and w = 1 the exact gradient w.r.t. x1, 2(-x1 - x2 + y1 + y2), matches the row's
    # 2(y1 + y2 - x2): a coincidence, which is why the example above is shifted.
    pts = paper_points().requires_grad_(True)
    (g,) = torch.autograd.grad(gradml_loss(pts, LABELS, k=2, w=1.0), pts)
    assert torch.allclose(g[0], table1_gradml_row(*pts.detach(), 1.0)[0])


@pytest.mark.parametrize("k", [0.7, 2.0, 3.0])
def test_gradcheck_float64(k):
    torch.manual_seed(1)
    x = torch.randn(6, 3, dtype=torch.float64, requires_grad=True)
    labels = torch.tensor([0, 0, 1, 1, 2, 2])
    assert torch.autograd.gradcheck(lambda e: gradml_loss(e, labels, k=k, w=0.6), (x,))


def test_gradgradcheck_k2():
    torch.manual_seed(2)
    x = torch.randn(5, 3, dtype=torch.float64, requires_grad=True)
    labels = torch.tensor([0, 0, 1, 1, 1])
    assert torch.autograd.gradgradcheck(lambda e: gradml_loss(e, labels, k=2, w=1.0), (x,))


@pytest.mark.parametrize("k", [0.3, 1.0, 2.0])
def test_coincident_points_finite_gradient(k):
    x = torch.tensor(
        [[1.0, 0.0], [1.0, 0.0], [0.0, 1.0], [0.0, 1.0]], dtype=torch.float64, requires_grad=True
    )
    loss = gradml_loss(x, LABELS, k=k, w=1.0)
    (g,) = torch.autograd.grad(loss, x)
    assert torch.isfinite(loss) and torch.isfinite(g).all()
    assert torch.allclose(g, gradml_gradient(x, LABELS, k=k, w=1.0), atol=1e-12)


def test_safe_pow_values_and_zero_gradient():
    d = torch.tensor([0.0, 0.25, 4.0], dtype=torch.float64, requires_grad=True)
    out = safe_pow(d, 0.5)
    assert torch.allclose(out, torch.tensor([0.0, 0.5, 2.0], dtype=torch.float64))
    (g,) = torch.autograd.grad(out.sum(), d)
    assert torch.allclose(g, torch.tensor([0.0, 1.0, 0.25], dtype=torch.float64))


@pytest.mark.parametrize("exponent, error", [
    (float("nan"), ValueError), (-float("inf"), ValueError), (-1.0, ValueError),
    (0.0, ValueError), (float("inf"), ValueError), ("2", TypeError), (None, TypeError),
    (torch.tensor([1.0, 2.0]), TypeError),
])
def test_bad_exponent_named(exponent, error):
    # nan gave NaN distances, -1 gave 0 at d = 0 (true value inf), str a bare comparison error
    d = torch.tensor([0.0, 0.5, 1.0, 2.0])
    with pytest.raises(error, match="exponent must be a"):
        safe_pow(d, exponent)
    with pytest.raises(error, match="dist_power must be a"):
        gradml_pair_terms(d, d, dist_power=exponent)


def test_numeric_exponents_accepted():
    d = torch.tensor([0.0, 0.5, 4.0])
    assert safe_pow(d, np.float64(2.0)).tolist() == [0.0, 0.25, 16.0]
    assert safe_pow(d, torch.tensor(0.5)).tolist() == [0.0, torch.tensor(0.5).sqrt().item(), 2.0]
    assert safe_pow(d, 1) is d


def test_pair_terms_signs_and_dist_power():
    pos = torch.tensor([1.0, 2.0])
    neg = torch.tensor([3.0])
    p, n = gradml_pair_terms(pos, neg, k=2, w=0.5, pos_weight=2.0)
    assert torch.allclose(p, torch.tensor([2.0, 8.0])) and torch.allclose(n, torch.tensor([-4.5]))
    # distances already squared (LpDistance(power=2)): k still applies to the plain distance
    p2, n2 = gradml_pair_terms(pos**2, neg**2, k=2, w=0.5, pos_weight=2.0, dist_power=2)
    assert torch.allclose(p2, p) and torch.allclose(n2, n)


@pytest.mark.parametrize(
    "labels, expected",
    [
        (torch.tensor([0, 0, 0, 0]), 1 + 4 + 9 + 5 + 4 + 13),  # one class: no negatives
        (torch.tensor([0, 1, 2, 3]), -(1 + 4 + 9 + 5 + 4 + 13)),  # singletons: no positives
    ],
)
def test_degenerate_batches(labels, expected):
    x = paper_points().requires_grad_(True)
    loss = gradml_loss(x, labels, k=2, w=1.0)
    assert loss.item() == pytest.approx(expected)
    (g,) = torch.autograd.grad(loss, x)
    assert torch.isfinite(g).all()


def test_single_sample_is_zero_with_gradient():
    x = torch.randn(1, 3, requires_grad=True)
    loss = gradml_loss(x, torch.tensor([0]))
    assert loss.item() == 0.0
    loss.backward()
    assert torch.equal(x.grad, torch.zeros(1, 3))


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_dtype_follows_input(dtype):
    x = paper_points(dtype=dtype)
    assert gradml_loss(x, LABELS).dtype == dtype
    assert gradml_gradient(x, LABELS).dtype == dtype


@pytest.mark.parametrize(
    "kwargs, name",
    [
        ({"k": 0}, "k"),
        ({"k": -1.0}, "k"),
        ({"k": float("nan")}, "k"),
        ({"k": "2"}, "k"),
        ({"k": True}, "k"),
        ({"w": -0.1}, "w"),
        ({"w": float("inf")}, "w"),
        ({"pos_weight": -1.0}, "pos_weight"),
    ],
)
def test_bad_params_name_the_argument(kwargs, name):
    params = {"k": 2.0, "w": 1.0, "pos_weight": 1.0, **kwargs}
    with pytest.raises((ValueError, TypeError), match=rf"^{name} "):
        check_gradml_params(**params)
    with pytest.raises((ValueError, TypeError), match=rf"^{name} "):
        gradml_loss(paper_points(), LABELS, **params)


@pytest.mark.parametrize(
    "value", [np.float32(2.0), np.int64(2), np.float64(2.0), torch.tensor(2.0)]
)
def test_numpy_and_tensor_scalars_accepted(value):
    # hyperparameter sweeps hand out NumPy scalars (np.linspace, np.arange)
    check_gradml_params(k=value, w=value / 4, pos_weight=value / 2)
    got = gradml_loss(paper_points(), LABELS, k=value, w=value / 4).item()
    assert got == pytest.approx(1 + 13 - 0.5 * 22, abs=1e-6)


def test_numpy_bool_rejected():
    with pytest.raises(TypeError, match="^k "):
        check_gradml_params(k=np.bool_(True), w=1.0)


def test_bad_shapes():
    with pytest.raises(ValueError, match="embeddings"):
        gradml_loss(torch.zeros(4), LABELS)
    with pytest.raises(ValueError, match="labels"):
        gradml_loss(torch.zeros(3, 2), LABELS)


def test_pair_indices_match_pml_pairs():
    from pytorch_metric_learning.utils import loss_and_miner_utils as lmu

    labels = torch.tensor([3, 1, 3, 3, 0, 1])
    ref = torch.tensor([1, 0, 0, 3])

    def as_sets(t):
        return [set(zip(t[0].tolist(), t[1].tolist())), set(zip(t[2].tolist(), t[3].tolist()))]

    ours = as_sets(pair_indices(labels))
    pml = as_sets(lmu.get_all_pairs_indices(labels))
    # unordered: exactly PML's ordered pairs with i < j
    assert ours == [{(i, j) for i, j in s if i < j} for s in pml]
    assert len(ours[0]) == 4 and len(ours[1]) == 11  # C(6,2) = 15
    assert as_sets(pair_indices(labels, ref)) == as_sets(lmu.get_all_pairs_indices(labels, ref))


# ---------------------------------------------------------------- hostile input (issue 8)
@pytest.mark.parametrize("bad", [float("nan"), float("inf")])
@pytest.mark.parametrize("func", [gradml_loss, gradml_gradient])
def test_non_finite_embeddings_rejected(func, bad):
    x = paper_points()
    x[2, 0] = bad
    with pytest.raises(ValueError, match="^embeddings contain NaN or inf"):
        func(x, LABELS)


@pytest.mark.parametrize("func", [gradml_loss, gradml_gradient])
def test_integer_embeddings_rejected(func):
    with pytest.raises(TypeError, match="^embeddings must be a floating-point tensor"):
        func(paper_points().long(), LABELS)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_half_precision_computed_in_float32(dtype):
    # the paper's points are exact in half precision: eq. (11) by hand, 1 + 13 - 22 = -8
    x = paper_points(dtype=dtype).requires_grad_(True)
    loss = gradml_loss(x, LABELS, k=2, w=1.0)
    assert loss.dtype == dtype and loss.item() == -8.0
    (g,) = torch.autograd.grad(loss, x)
    assert torch.equal(g, gradml_gradient(paper_points(), LABELS).to(dtype))
    assert gradml_gradient(x.detach(), LABELS).dtype == dtype


def test_overflow_raises_instead_of_inf():
    with pytest.raises(ValueError, match="not finite in torch.float32"):
        gradml_loss(paper_points(dtype=torch.float32) * 1e20, LABELS)
    with pytest.raises(ValueError, match="not finite in torch.float16"):
        gradml_loss(paper_points(dtype=torch.float16) * 100, LABELS)  # 100^2 * 22 > 65504


@pytest.mark.parametrize("kwargs, name", [({"k": 10.01}, "k"), ({"w": 1e300}, "w")])
def test_params_beyond_range_rejected(kwargs, name):
    with pytest.raises(ValueError, match=rf"^{name} must be a finite number"):
        gradml_loss(paper_points(), LABELS, **{"k": 2.0, "w": 1.0, **kwargs})
