import numpy as np
import pytest
import torch
import torch.nn.functional as F

from pml_grouploss.functional.beta_normalization import beta_normalize


def test_beta_zero_is_l2_normalization():
    x = torch.randn(6, 5) * 30
    assert torch.equal(beta_normalize(x, 0.0), F.normalize(x))


def test_hand_value():
    x = torch.tensor([[3.0, 4.0]], dtype=torch.float64)
    # x/5 + 0.1 x = [0.6 + 0.3, 0.8 + 0.4]
    torch.testing.assert_close(
        beta_normalize(x, 0.1), torch.tensor([[0.9, 1.2]], dtype=torch.float64)
    )


def test_large_beta_keeps_length_information():
    x = torch.tensor([[1.0, 0.0], [10.0, 0.0]])
    assert torch.equal(F.normalize(x)[0], F.normalize(x)[1])
    y = beta_normalize(x, 0.5)
    assert y[1, 0] > y[0, 0]


def test_zero_row_finite_and_gradcheck():
    x = torch.zeros(2, 3, dtype=torch.float64, requires_grad=True)
    y = beta_normalize(x, 0.01)
    y.sum().backward()
    assert torch.all(torch.isfinite(y)) and torch.all(torch.isfinite(x.grad))
    z = torch.randn(4, 3, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda t: beta_normalize(t, 0.004), (z,))


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.bfloat16])
def test_dtype_follows_input(dtype):
    assert beta_normalize(torch.randn(3, 4, dtype=dtype), 0.004).dtype == dtype


def test_autocast_cpu():
    lin = torch.nn.Linear(4, 4)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        y = beta_normalize(lin(torch.randn(3, 4)), 0.004)
    assert torch.all(torch.isfinite(y))


@pytest.mark.parametrize("beta", [-0.1, float("nan"), float("inf")])
def test_bad_beta(beta):
    with pytest.raises(ValueError, match="beta"):
        beta_normalize(torch.randn(2, 2), beta)


# ---------------------------------------------------------------- hostile input (issue 8)
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float32, torch.float64])
def test_zero_row_stays_zero_in_every_dtype(dtype):
    from pml_grouploss.inference import BetaNormalization

    torch.manual_seed(0)
    x = torch.randn(3, 4).to(dtype)
    x[1] = 0
    for y in (beta_normalize(x, 0.004), BetaNormalization(0.004)(x)):
        assert y.dtype == dtype
        assert torch.equal(y[1], torch.zeros(4, dtype=dtype))
        # the other rows: the float32 (or wider) result rounded once to the dtype
        wide = x.to(torch.promote_types(dtype, torch.float32))
        assert torch.equal(y, (F.normalize(wide) + 0.004 * wide).to(dtype))


@pytest.mark.parametrize("dtype", [torch.float16, torch.float32])
def test_zero_row_gradient_is_beta(dtype):
    x = torch.randn(3, 4).to(dtype)
    x[0] = 0
    x.requires_grad_(True)
    beta_normalize(x, 0.25).sum().backward()
    assert torch.isfinite(x.grad).all()
    # the L2 part contributes 0 at a zero row (F.normalize's derivative there is 1/eps = 1e12)
    assert torch.equal(x.grad[0], torch.full((4,), 0.25, dtype=dtype))


def test_integer_embeddings_rejected():
    with pytest.raises(TypeError, match="^embeddings must be a floating-point tensor"):
        beta_normalize(torch.ones(2, 3, dtype=torch.long))


@pytest.mark.parametrize("beta", [True, "0.004", None])
def test_non_number_beta_is_a_type_error(beta):
    with pytest.raises(TypeError, match="^beta must be a real number"):
        beta_normalize(torch.randn(2, 2), beta)


def test_numpy_beta_accepted():
    x = torch.randn(3, 4)
    assert torch.equal(beta_normalize(x, np.float64(0.004)), beta_normalize(x, 0.004))


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
def test_rows_whose_squares_overflow_are_still_unit(dtype):
    # float32 rows of magnitude 1e20: ||x||^2 = inf and F.normalize returns zeros
    big = 1e4 if dtype == torch.float16 else 1e20
    x = torch.tensor([[3.0, 4.0], [-1.0, 0.5]]).mul(big).to(dtype)
    out = beta_normalize(x, beta=0.0)
    expected = F.normalize(torch.tensor([[3.0, 4.0], [-1.0, 0.5]]).double(), dim=1)
    assert torch.allclose(out.double(), expected, rtol=1e-2 if dtype != torch.float32 else 1e-6)
    assert torch.allclose(beta_normalize(x.t(), beta=0.0, dim=0).double(), expected.t(),
                          rtol=1e-2 if dtype != torch.float32 else 1e-6)


def test_tiny_rows_keep_the_eps_floor_of_f_normalize():
    x = torch.tensor([[1e-20, 0.0], [3.0, 4.0]], dtype=torch.float64)
    assert torch.equal(beta_normalize(x, beta=0.0), F.normalize(x, dim=1))
    x = torch.randn(64, 33, dtype=torch.float32) * torch.logspace(-10, 10, 64).view(-1, 1)
    assert torch.equal(beta_normalize(x, beta=0.0), F.normalize(x, dim=1))  # to the bit


@pytest.mark.parametrize("dim, error, message", [
    (1.9, TypeError, "dim must be an int, got float 1.9"),
    (2, ValueError, r"dim=2 is not a dimension of embeddings of shape \(3, 4\)"),
    (-3, ValueError, "dim=-3 is not a dimension"),
])
def test_bad_dim_named(dim, error, message):
    from pml_grouploss.inference import BetaNormalization

    with pytest.raises(error, match=message):
        beta_normalize(torch.randn(3, 4), dim=dim)
    with pytest.raises(error, match=message):
        BetaNormalization(dim=dim)(torch.randn(3, 4))
