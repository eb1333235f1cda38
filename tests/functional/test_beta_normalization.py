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
