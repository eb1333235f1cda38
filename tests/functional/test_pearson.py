import numpy as np
import pytest
import torch

from pml_grouploss.functional import (
    pearson_correlation,
    pearson_similarity,
    similarity_from_correlation,
    standardize_rows,
)


def test_matches_numpy_corrcoef():
    x = torch.randn(7, 11, dtype=torch.float64)
    np.testing.assert_allclose(pearson_correlation(x).numpy(), np.corrcoef(x.numpy()),
                               rtol=1e-12, atol=1e-14)


def test_invariant_to_per_row_scale_and_shift():
    x = torch.randn(6, 9, dtype=torch.float64)
    scale = torch.rand(6, 1, dtype=torch.float64) * 3 + 0.5
    shift = torch.randn(6, 1, dtype=torch.float64) * 5
    np.testing.assert_allclose(pearson_similarity(x).numpy(),
                               pearson_similarity(x * scale + shift).numpy(), atol=1e-13)


def test_not_centred_across_batch():
    # Centring across the batch (columns) would change this value; the reference centres rows.
    x = torch.tensor([[1.0, 2.0, 4.0], [2.0, 1.0, 0.0]], dtype=torch.float64)
    expected = np.corrcoef(x.numpy())[0, 1]
    assert pearson_correlation(x)[0, 1].item() == pytest.approx(expected, rel=1e-14)


def test_clamp_shift_and_diagonal():
    corr = torch.tensor([[1.0, -0.4, 0.3], [-0.4, 1.0, -0.1], [0.3, -0.1, 1.0]])
    clamp = similarity_from_correlation(corr, "clamp")
    np.testing.assert_allclose(clamp.numpy(), [[1, 0, 0.3], [0, 1, 0], [0.3, 0, 1]])
    shift = similarity_from_correlation(corr, "shift")
    np.testing.assert_allclose(shift.numpy(), (corr + 0.4).numpy(), atol=1e-7)
    zeroed = similarity_from_correlation(corr, "shift", zero_diagonal=True)
    np.testing.assert_allclose(zeroed.numpy(), (corr + 0.4 - 1.4 * torch.eye(3)).numpy(),
                               atol=1e-7)
    with pytest.raises(ValueError, match="negatives"):  # raw negatives leave the simplex
        similarity_from_correlation(corr, "none")
    positive = torch.tensor([[1.0, 0.2], [0.2, 1.0]])
    assert torch.equal(similarity_from_correlation(positive, "shift"), positive)


def test_zero_variance_rows_are_finite():
    x = torch.tensor([[0.1, 0.1, 0.1, 0.1], [1.0, 2.0, 3.0, 4.0], [5.0, 5.0, 5.0, 5.0]],
                     dtype=torch.float64, requires_grad=True)
    W = pearson_similarity(x)
    assert torch.isfinite(W).all()
    assert W[0].tolist() == [1.0, 0.0, 0.0] and W[2].tolist() == [0.0, 0.0, 1.0]
    W.sum().backward()
    assert torch.isfinite(x.grad).all()
    assert standardize_rows(x)[0].abs().max() == 0


def test_bad_arguments():
    with pytest.raises(ValueError, match="negatives"):
        pearson_similarity(torch.randn(3, 4), negatives="relu")
    with pytest.raises(ValueError, match="2-D"):
        pearson_similarity(torch.randn(3))


@pytest.mark.parametrize("scale", [1e-30, 1e30])
def test_extreme_magnitudes_in_float32(scale):
    # squares of 1e±30 over/underflow float32; correlation is scale-free and must not care
    x = torch.randn(6, 5)
    np.testing.assert_allclose(pearson_similarity(x * scale).numpy(),
                               pearson_similarity(x).numpy(), atol=1e-6)


# ---------------------------------------------------------------- hostile input (issue 8)
@pytest.mark.parametrize("bad", [float("nan"), float("inf"), -float("inf")])
def test_non_finite_row_propagates_nan_never_zero(bad):
    from pml_grouploss.functional.pearson import pearson_correlation

    torch.manual_seed(0)
    x = torch.randn(5, 6, dtype=torch.float64)
    x[3] = 2.0  # a finite constant row: correlation 0 (documented), still
    clean = pearson_correlation(x)
    x[1, 4] = bad
    corr = pearson_correlation(x)
    assert torch.isnan(corr[1]).all() and torch.isnan(corr[:, 1]).all()  # itself included
    keep = torch.tensor([0, 2, 3, 4])
    assert torch.equal(corr[keep][:, keep], clean[keep][:, keep])
    assert torch.equal(corr[3, keep], torch.zeros(4, dtype=torch.float64))


def test_correlation_of_half_rows_computed_in_float32():
    g = torch.Generator().manual_seed(0)
    x = 8 + torch.randn(5, 512, generator=g)
    for dtype in (torch.float16, torch.bfloat16):
        half = x.to(dtype)
        c = pearson_correlation(half)
        assert c.dtype == dtype
        assert torch.equal(c, pearson_correlation(half.float()).to(dtype))
        with torch.autocast("cpu", dtype=torch.bfloat16):
            assert torch.equal(pearson_correlation(half), c)
    with torch.autocast("cpu", dtype=torch.bfloat16):  # float32 in, float32 out; float64 kept
        assert torch.equal(pearson_correlation(x), pearson_correlation(x.clone()))
        assert pearson_correlation(x).dtype == torch.float32
        assert torch.equal(pearson_correlation(x.double()), pearson_correlation(x.double().clone()))
    with torch.autocast("cpu", dtype=torch.bfloat16):
        under = pearson_correlation(x.double())
    assert under.dtype == torch.float64 and torch.equal(under, pearson_correlation(x.double()))


def test_reference_of_another_dtype_named():
    with pytest.raises(TypeError, match="query and reference must have one dtype"):
        pearson_correlation(torch.randn(3, 4), torch.randn(2, 4, dtype=torch.float64))


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.float16, torch.bfloat16])
def test_subnormal_rows_are_zero_rows_with_finite_gradient(dtype):
    # Correlation is scale-free but its gradient grows as 1/scale: at a subnormal row the
    # scale factor overflowed and the backward gave 0 * inf = NaN (inf in float16).
    g = torch.Generator().manual_seed(0)
    x = torch.randn(5, 16, generator=g, dtype=torch.float64)
    tiny = torch.finfo(dtype).tiny
    x[2] = x[2] / x[2].abs().max() * tiny * 0.5  # largest magnitude subnormal in dtype
    x = x.to(dtype)
    assert 0 < x[2].abs().max() < tiny
    clean = pearson_correlation(torch.cat([x[:2], x[3:]]).double())
    for f in (pearson_correlation, lambda e: pearson_similarity(e), standardize_rows):
        e = x.clone().requires_grad_(True)
        out = f(e)
        (grad,) = torch.autograd.grad((out.float() * torch.linspace(-1, 1, out.numel())
                                       .view_as(out)).sum(), e)
        assert torch.isfinite(grad).all(), f
        assert (grad[2] == 0).all()
    corr = pearson_correlation(x)
    assert (corr[2] == 0).all() and (corr[:, 2] == 0).all()  # as a constant row
    keep = [0, 1, 3, 4]
    atol = {torch.float16: 1e-3, torch.bfloat16: 1e-2}.get(dtype, 1e-6)
    torch.testing.assert_close(corr[keep][:, keep].double(), clean, rtol=0, atol=atol)


@pytest.mark.parametrize("negatives", ["clamp", "shift"])
def test_empty_batch_gives_empty_similarity(negatives):
    # "shift" took torch's min() of an empty matrix: a RuntimeError
    W = pearson_similarity(torch.zeros(0, 8), negatives, zero_diagonal=True)
    assert W.shape == (0, 0) and W.dtype == torch.float32
    assert similarity_from_correlation(torch.zeros(0, 0), negatives).shape == (0, 0)
