import pytest
import torch

from pml_grouploss.functional.pooling import mixed_pool2d


def test_endpoints_are_avg_and_max_pooling():
    x = torch.randn(2, 3, 4, 5)
    assert torch.equal(mixed_pool2d(x, 0.0), torch.nn.AdaptiveAvgPool2d(1)(x))
    assert torch.equal(mixed_pool2d(x, 1.0), torch.nn.AdaptiveMaxPool2d(1)(x))


def test_hand_value_eq13():
    x = torch.tensor([[[[1.0, 2.0], [3.0, 6.0]]]], dtype=torch.float64)  # max 6, mean 3
    assert mixed_pool2d(x, 0.25).item() == pytest.approx(0.25 * 6 + 0.75 * 3)


def test_gradcheck():
    x = torch.randn(2, 2, 3, 3, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda t: mixed_pool2d(t, 0.4), (x,))


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.bfloat16])
def test_dtype(dtype):
    assert mixed_pool2d(torch.randn(1, 2, 3, 3, dtype=dtype), 0.5).dtype == dtype


@pytest.mark.parametrize("alpha", [-0.01, 1.01, float("nan")])
def test_bad_alpha(alpha):
    with pytest.raises(ValueError, match="alpha"):
        mixed_pool2d(torch.randn(1, 1, 2, 2), alpha)


def test_bad_shape():
    with pytest.raises(ValueError, match="features"):
        mixed_pool2d(torch.randn(3, 4), 0.5)


def test_autocast_cpu_follows_the_autocast_dtype():
    conv = torch.nn.Conv2d(3, 4, 3)
    x = torch.randn(2, 3, 6, 6)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        f = conv(x)
        y = mixed_pool2d(f, 0.3)
    assert f.dtype == torch.bfloat16 and y.dtype == torch.bfloat16
    ref = 0.3 * f.float().amax((2, 3), keepdim=True) + 0.7 * f.float().mean((2, 3), keepdim=True)
    torch.testing.assert_close(y.float(), ref, rtol=2e-2, atol=2e-2)


@pytest.mark.parametrize("shape", [(2, 3, 0, 4), (2, 3, 4, 0), (1, 1, 0, 0)])
@pytest.mark.parametrize("alpha", [0.0, 0.5, 1.0])
def test_empty_spatial_map_is_a_clear_error(shape, alpha):
    # torch's amax raised an IndexError ("Expected reduction dim 2 to have non-zero size")
    from pml_grouploss.inference import MixedPooling

    with pytest.raises(ValueError, match=r"^features must have a non-empty spatial map"):
        mixed_pool2d(torch.randn(*shape), alpha)
    with pytest.raises(ValueError, match=r"^features must have a non-empty spatial map"):
        MixedPooling(alpha)(torch.randn(*shape))


def test_empty_batch_is_fine():
    assert mixed_pool2d(torch.randn(0, 3, 2, 2), 0.5).shape == (0, 3, 1, 1)


@pytest.mark.parametrize("alpha", [True, "0.5", None])
def test_non_number_alpha_is_a_type_error(alpha):
    with pytest.raises(TypeError, match="^alpha must be a real number"):
        mixed_pool2d(torch.randn(1, 1, 2, 2), alpha)
