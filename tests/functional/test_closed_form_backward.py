"""The hand-written backward passes (issue 10: per-call cost) against autograd of the same
forward formulas, gradcheck/gradgradcheck in float64, and the degenerate rows they guard."""
import pytest
import torch

from pml_grouploss.functional import (
    initial_assignment,
    log_replicator_dynamics,
    pearson_similarity,
    replicator_dynamics,
    rms_normalize,
    select_anchors,
    standardize_rows,
)
from pml_grouploss.functional.pearson import _standardize, gram
from pml_grouploss.functional.replicator import _log_dynamics, _scale_by_power_of_two
from pml_grouploss.functional.rms_normalize import _rms_normalize


def _rows(dtype=torch.float64, seed=0):
    """(7, 5): random rows, a constant row, a zero row, a row at 1e30 and one at 1e-30."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(7, 5, generator=g, dtype=torch.float64)
    x[3] = 2.5
    x[4] = 0.0
    x[5] *= 1e30
    x[6] *= 1e-30
    return x.to(dtype)


def _autograd_grad(forward, x, g):
    x = x.detach().requires_grad_()
    (grad,) = torch.autograd.grad(forward(x), x, g)
    return grad


def _closed_form_grad(f, x, g):
    x = x.detach().requires_grad_()
    f(x).backward(g)
    return x.grad


ROW_MAPS = [
    (standardize_rows, lambda x: _standardize(x)[0]),
    (rms_normalize, lambda x: _rms_normalize(x)[0]),
    (gram, lambda z: z @ z.T),
]


@pytest.mark.parametrize("f,reference", ROW_MAPS, ids=["standardize", "rms", "gram"])
def test_row_maps_match_autograd_of_their_forward(f, reference):
    x = _rows()
    g = torch.randn(reference(x).shape, dtype=torch.float64,
                    generator=torch.Generator().manual_seed(1))
    ours, theirs = _closed_form_grad(f, x, g), _autograd_grad(reference, x, g)
    # relative to each row's own scale: rows 5 and 6 have gradients ~1e-30 and ~1e30
    scale = theirs.abs().amax(dim=1, keepdim=True).clamp_min(1e-300)
    torch.testing.assert_close(ours / scale, theirs / scale, rtol=0, atol=1e-12)
    assert torch.equal(f(x), reference(x))  # the forward values are the formula's, bit for bit
    zero_grad_rows = {standardize_rows: [3, 4], rms_normalize: [4], gram: []}[f]  # constant, zero
    assert torch.equal(ours[zero_grad_rows], torch.zeros(len(zero_grad_rows), 5).double())


@pytest.mark.parametrize("f", [standardize_rows, rms_normalize, gram],
                         ids=["standardize", "rms", "gram"])
def test_row_maps_gradcheck_and_gradgradcheck_float64(f):
    x = _rows()[[0, 1, 2, 5]].clone()  # gradcheck's steps need nonzero rows
    x[2] *= 1e-3
    if f is gram:  # a bilinear map: its finite differences need O(1) entries
        x[3] /= 1e30
    x.requires_grad_()
    assert torch.autograd.gradcheck(f, (x,))
    assert torch.autograd.gradgradcheck(f, (x,))


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
@pytest.mark.parametrize("f", [standardize_rows, rms_normalize], ids=["standardize", "rms"])
def test_row_maps_low_precision_close_to_float64(f, dtype):
    x = _rows()[:5]
    g = torch.randn(5, 5, dtype=torch.float64, generator=torch.Generator().manual_seed(2))
    ours = _closed_form_grad(f, x.to(dtype), g.to(dtype))
    assert ours.dtype == dtype and torch.isfinite(ours).all()
    tol = {torch.float32: 1e-5, torch.float16: 2e-2, torch.bfloat16: 1e-1}[dtype]
    torch.testing.assert_close(ours.double(), _autograd_grad(f, x, g), rtol=tol, atol=tol)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("f", [standardize_rows, rms_normalize], ids=["standardize", "rms"])
def test_row_maps_treat_subnormal_rows_as_zero_rows(f, dtype):
    # the gradient scale 1/||x_i|| overflowed at subnormal rows: 0 * inf = NaN in the backward
    x = torch.randn(3, 64, dtype=dtype)
    x[1] *= torch.finfo(dtype).tiny * 0.01 / x[1].abs().max()
    x.requires_grad_(True)
    y = f(x)
    (grad,) = torch.autograd.grad((y * torch.randn_like(y)).sum(), x)
    assert torch.isfinite(grad).all() and (grad[1] == 0).all() and (y[1] == 0).all()
    assert (grad[0] != 0).any()  # normal rows unaffected
    torch.testing.assert_close(y[0], f(x[:1].detach())[0], rtol=0, atol=0)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.bfloat16])
def test_rows_just_above_the_smallest_normal_are_zero_rows(dtype):
    # largest magnitude 2x the smallest normal: finite outputs, but the gradient scale
    # ~1/(2 tiny) overflowed once multiplied by the incoming gradient (inf; NaN with "shift")
    g = torch.Generator().manual_seed(0)
    x = torch.randn(6, 8, generator=g, dtype=torch.float64)
    x[2] = x[2] / x[2].abs().max() * torch.finfo(dtype).tiny * 2
    x = x.to(dtype)
    for f in (standardize_rows, rms_normalize, lambda e: pearson_similarity(e, "shift")):
        e = x.clone().requires_grad_(True)
        y = f(e)
        (grad,) = torch.autograd.grad(y.sum(), e)
        assert torch.isfinite(grad).all(), f
        assert (grad[2] == 0).all()
    for f in (standardize_rows, rms_normalize):
        y = f(x)
        assert (y[2] == 0).all()
        keep = [0, 1, 3, 4, 5]  # the other rows: bit for bit what they are alone
        assert torch.equal(y[keep], f(x[keep]))


def test_gram_under_autocast_returns_gradient_in_input_dtype():
    z = torch.randn(6, 4, requires_grad=True)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        C = gram(z)
    assert C.dtype == torch.bfloat16
    C.float().sum().backward()
    assert z.grad.dtype == torch.float32
    torch.testing.assert_close(z.grad, 2 * z.detach().sum(0).expand(6, 4), rtol=2e-2, atol=2e-2)


def _dynamics_batch(zero_diagonal, seed=0, n=9, m=4):
    g = torch.Generator().manual_seed(seed)
    e = torch.randn(n, 5, generator=g, dtype=torch.float64)
    labels = torch.tensor([0, 0, 0, 1, 1, 1, 2, 2, 3])[:n]
    W = pearson_similarity(e, zero_diagonal=zero_diagonal)
    log_X0 = torch.log(initial_assignment(2 * torch.randn(n, m, generator=g, dtype=torch.float64),
                                          labels, select_anchors(labels, 1), temperature=1.0))
    return W, log_X0


@pytest.mark.parametrize("zero_diagonal", [False, True])
@pytest.mark.parametrize("T", [1, 2, 3])
def test_dynamics_match_autograd_and_the_x_space_formula(T, zero_diagonal):
    W, log_X0 = _dynamics_batch(zero_diagonal)
    W[4, :] = W[:, 4] = 0.0  # an isolated sample: no support with a zeroed diagonal
    g = torch.randn(log_X0.shape, dtype=torch.float64, generator=torch.Generator().manual_seed(3))
    g[torch.isinf(log_X0)] = 0.0  # an upstream loss sends nothing through log 0
    leaves = [t.detach().requires_grad_() for t in (W, log_X0)]
    log_replicator_dynamics(*leaves, T).backward(g)
    ours = [t.grad for t in leaves]
    W_, L_ = (t.detach().requires_grad_() for t in (W, log_X0))
    ref = torch.autograd.grad(_log_dynamics(_scale_by_power_of_two(W_), L_, T)[0], (W_, L_), g)
    for a, b in zip(ours, ref):
        torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-12)
    # the independent X-space formula: d/dW and d/dX(0) of <g / X(T), X(T)> agree
    W_, X_ = W.detach().requires_grad_(), torch.exp(log_X0).detach().requires_grad_()
    XT = replicator_dynamics(W_, X_, T)
    free = ~torch.isinf(log_X0)
    (gW, gX) = torch.autograd.grad((torch.log(XT[free]) * g[free]).sum(), (W_, X_))
    torch.testing.assert_close(ours[0], gW, rtol=1e-8, atol=1e-10)
    torch.testing.assert_close((ours[1] / torch.exp(log_X0))[free], gX[free], rtol=1e-8, atol=1e-8)


@pytest.mark.parametrize("zero_diagonal", [False, True])
def test_dynamics_gradcheck_and_gradgradcheck_float64(zero_diagonal):
    W, log_X0 = _dynamics_batch(zero_diagonal, n=6, m=3)
    log_X0 = torch.log_softmax(log_X0.clamp_min(-30), dim=1)  # gradcheck steps need finite entries
    W, log_X0 = W.requires_grad_(), log_X0.requires_grad_()
    # symmetric, positive, max|W| away from a power of two: finite differences must not cross
    # the support threshold or the power of two the dynamics divide W by (where the formula's
    # derivative jumps; autograd of the forward formula fails there too)
    f = lambda W, L: log_replicator_dynamics((W + W.T) / 4 + 0.01, L, 3)  # noqa: E731
    assert torch.autograd.gradcheck(f, (W, log_X0))
    assert torch.autograd.gradgradcheck(f, (W, log_X0))


def test_dynamics_without_grad_for_W():
    W, log_X0 = _dynamics_batch(False)
    L = log_X0.clone().requires_grad_()
    (log_replicator_dynamics(W, L, 2)[:, 0] * torch.arange(9.0)).sum().backward()
    L_ = log_X0.clone().requires_grad_()
    (ref,) = torch.autograd.grad(
        (_log_dynamics(_scale_by_power_of_two(W), L_, 2)[0][:, 0] * torch.arange(9.0)).sum(), L_)
    torch.testing.assert_close(L.grad, ref, rtol=1e-10, atol=1e-12)
