"""Degenerate embedding rows (zero, or subnormal in float16/bfloat16) get finite, zero
gradients in beta_normalize, class_centroids and group_loss; other rows are unchanged."""
import pytest
import torch
import torch.nn.functional as TF

import pml_grouploss.functional as F

LABELS = torch.tensor([0, 0, 0, 1, 1, 1])


def _half_batch(dtype, small_row=2, scale=2.0 ** -24 * 4):
    # row `small_row` has largest magnitude 2.4e-7: subnormal in float16 (tiny 6.1e-5)
    x = torch.randn(6, 8, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    x[small_row] = x[small_row] / x[small_row].abs().max() * scale
    return x.to(dtype)


def test_beta_normalize_float16_subnormal_row_is_a_zero_row():
    x = _half_batch(torch.float16).requires_grad_()
    y = F.beta_normalize(x, beta=0.5)
    (grad,) = torch.autograd.grad(y, x, torch.ones_like(y))  # was inf in the whole row
    assert torch.isfinite(grad).all()
    assert torch.equal(y[2], (0.5 * x[2].float()).half())  # the L2 part is 0
    assert (grad[2] == 0.5).all()  # beta times the incoming gradient, as a zero row
    keep = [0, 1, 3, 4, 5]
    assert torch.equal(y[keep], F.beta_normalize(x[keep], beta=0.5))


def test_class_centroids_float16_subnormal_row():
    x = _half_batch(torch.float16).requires_grad_()
    c, _ = F.class_centroids(x, LABELS)
    (grad,) = torch.autograd.grad(c.sum(), x)  # was inf
    assert torch.isfinite(grad).all() and (grad[2] == 0).all()
    rows = TF.normalize(x.detach().float()[[0, 1]], dim=1)
    assert torch.equal(c[0], (rows.sum(0) / 3).half())  # the row counts as a zero embedding


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float32])
def test_class_centroids_zero_row_has_zero_gradient(dtype):
    x = torch.randn(6, 8, generator=torch.Generator().manual_seed(0)).to(dtype)
    x[2] = 0
    x.requires_grad_()
    c, _ = F.class_centroids(x, torch.tensor([0, 0, 1, 1, 2, 2]))
    (grad,) = torch.autograd.grad(c, x, torch.ones_like(c))  # was 5e11 (inf in float16)
    assert torch.isfinite(grad).all() and (grad[2] == 0).all()
    assert (c[1] == (TF.normalize(x.detach().float()[3:4], dim=1) / 2).to(dtype)).all()


def test_class_centroids_values_are_f_normalize_bit_for_bit():
    x = torch.randn(40, 16, generator=torch.Generator().manual_seed(1))
    x = x * torch.logspace(-8, 8, 40).unsqueeze(1)
    labels = torch.arange(40) % 7
    c, classes = F.class_centroids(x, labels)
    xn = TF.normalize(x, dim=1)
    expected = torch.zeros(7, 16).index_add_(0, labels, xn) / torch.bincount(labels).unsqueeze(1)
    assert torch.equal(c, expected) and classes.tolist() == list(range(7))


def test_group_loss_float16_subnormal_row_correlates_zero():
    x = _half_batch(torch.float16).requires_grad_()
    logits = torch.randn(6, 3, generator=torch.Generator().manual_seed(2)).half()
    out = F.group_loss(x, logits, LABELS, F.select_anchors(LABELS, 1), temperature=1.0,
                       num_iterations=2)
    (grad,) = torch.autograd.grad(out["loss"], x)  # was inf
    assert torch.isfinite(grad).all() and (grad[2] == 0).all()
    W = out["similarity"]
    assert W[2, 2] == 1 and (W[2, [0, 1, 3, 4, 5]] == 0).all()
