"""The fused embedding side of GroupLoss (clamped Pearson similarity + classifier logits, one
autograd node): equal to the public composition it replaces, closed-form backward against
autograd of its forward formula, gradcheck/gradgradcheck in float64, degenerate rows."""
import pytest
import torch

from pml_grouploss.functional import pearson_correlation, rms_normalize, similarity_from_correlation
from pml_grouploss.functional._similarity_and_logits import _forward, pearson_similarity_and_logits
from pml_grouploss.functional.rms_normalize import row_power_of_two


def _batch(dtype=torch.float64, seed=0):
    """(8, 6) rows: random, constant, zero, at 1e30 and at 1e-30; a (5, 6) classifier."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(8, 6, generator=g, dtype=torch.float64)
    x[3], x[4] = 2.5, 0.0
    x[5] *= 1e30
    x[6] *= 1e-30
    w = torch.randn(5, 6, generator=g, dtype=torch.float64) / 3
    b = torch.randn(5, generator=g, dtype=torch.float64) / 3
    return x.to(dtype), w.to(dtype), b.to(dtype)


@pytest.mark.parametrize("zero_diagonal", [False, True])
@pytest.mark.parametrize("normalize", [True, False])
def test_values_are_the_public_composition(zero_diagonal, normalize):
    x, w, b = _batch()
    if not normalize:
        x = x[:5]  # raw embeddings at 1e30 would overflow the logits (GroupLoss rejects them)
    W, corr, logits, power = pearson_similarity_and_logits(
        x, w, b, zero_diagonal=zero_diagonal, normalize=normalize)
    # each row's largest magnitude in [power, 2 power); the zero row's power is 0.5
    assert torch.equal(power, row_power_of_two(x)) and not power.requires_grad
    assert power[4].item() == 0.5
    if normalize:  # the rows at 1e30 and 1e-30
        assert power[5].item() == 2.0 ** 99 and power[6].item() == 2.0 ** -100
    expected_corr = pearson_correlation(x)
    expected_corr.diagonal().fill_(1.0)
    torch.testing.assert_close(corr, expected_corr, rtol=0, atol=1e-15)
    torch.testing.assert_close(
        W, similarity_from_correlation(pearson_correlation(x), "clamp", zero_diagonal),
        rtol=0, atol=1e-15)
    features = rms_normalize(x) if normalize else x
    torch.testing.assert_close(logits, torch.nn.functional.linear(features, w, b),
                               rtol=1e-15, atol=1e-15)
    assert (W >= 0).all() and (W <= 1 + 1e-15).all()


@pytest.mark.parametrize("zero_diagonal", [False, True])
@pytest.mark.parametrize("normalize", [True, False])
@pytest.mark.parametrize("used", ["both", "W", "logits"])
def test_backward_matches_autograd_of_the_formula(zero_diagonal, normalize, used):
    x, w, b = _batch()
    if not normalize:
        x = x[:5]
    gen = torch.Generator().manual_seed(1)
    gW = torch.randn(x.shape[0], x.shape[0], generator=gen, dtype=torch.float64)
    gL = torch.randn(x.shape[0], 5, generator=gen, dtype=torch.float64)

    def objective(W, logits):
        return (W * gW).sum() * (used != "logits") + (logits * gL).sum() * (used != "W")

    leaves = [t.clone().requires_grad_() for t in (x, w, b)]
    W, _, logits, _ = pearson_similarity_and_logits(*leaves, zero_diagonal=zero_diagonal,
                                                    normalize=normalize)
    ours = torch.autograd.grad(objective(W, logits), leaves, allow_unused=True)
    ref_leaves = [t.clone().requires_grad_() for t in (x, w, b)]
    W, _, logits, *_ = _forward(*ref_leaves, zero_diagonal, normalize)
    theirs = torch.autograd.grad(objective(W, logits), ref_leaves, allow_unused=True)
    for a, e in zip(ours, theirs):
        if e is None or (used == "W" and a is None):
            assert a is None or not a.abs().any()
            continue
        # relative to each row's own scale: rows at 1e30 / 1e-30 have gradients ~1e-30 / 1e30
        scale = e.abs().amax(dim=-1, keepdim=True).clamp_min(1e-300)
        torch.testing.assert_close(a / scale, e / scale, rtol=0, atol=1e-12)
    if used == "W":  # constant and zero rows: no gradient through the similarity
        assert torch.equal(ours[0][[3, 4]], torch.zeros(2, 6, dtype=torch.float64))


def test_gradcheck_and_gradgradcheck_float64():
    x, w, b = _batch()
    x = x[[0, 1, 2, 7]].clone()
    x[2] *= 1e-3
    leaves = [t.clone().requires_grad_() for t in (x, w, b)]

    def f(x, w, b):
        W, _, logits, _ = pearson_similarity_and_logits(x, w, b, zero_diagonal=False,
                                                        normalize=True)
        return W, logits

    assert torch.autograd.gradcheck(f, leaves)
    assert torch.autograd.gradgradcheck(f, leaves)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
def test_low_precision_is_finite_and_close_to_float64(dtype):
    x, w, b = _batch()
    x = x[:5]  # float16 cannot hold the rows at 1e30
    outs = {}
    for dt in (torch.float64, dtype):
        leaves = [t.to(dt).clone().requires_grad_() for t in (x, w, b)]
        W, _, logits, _ = pearson_similarity_and_logits(*leaves, zero_diagonal=False,
                                                        normalize=True)
        (W.sum() + logits.sum()).backward()
        outs[dt] = [W, logits] + [t.grad for t in leaves]
    tol = {torch.float32: 1e-5, torch.float16: 3e-2, torch.bfloat16: 2e-1}[dtype]
    for low, high in zip(outs[dtype], outs[torch.float64]):
        assert low.dtype == dtype and torch.isfinite(low).all()
        torch.testing.assert_close(low.double(), high.detach(), rtol=tol, atol=tol)
