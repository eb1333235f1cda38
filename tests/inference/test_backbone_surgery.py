"""Mixed pooling and final leaky-ReLU surgery, proven on each torchvision backbone.

For every backbone (random weights, float64, eval mode) we compute independently, with hooks on
the ORIGINAL model, the tensor ``z`` that enters the final activation, and the head that
follows the global pooling. Then:

- original(x) == head(avgpool(relu(z)))                 (the decomposition is right)
- leaky(x)    == head(avgpool(leaky_relu(z, slope)))    (only the final activation changed)
- leaky with slope 0 == original, bit for bit             (nothing else in the graph changed)
- mixed(x)    == head(alpha * max(relu z) + (1 - alpha) * mean(relu z))
- state_dict keys and values unchanged; the input model is untouched.
"""

import warnings

import pytest
import torch
import torch.nn.functional as F
import torchvision

from pml_grouploss.inference import MixedPooling, install_leaky_relu, install_mixed_pooling


def _init(model):
    # random weights with a signal that survives the depth (torchvision's GoogLeNet init decays
    # activations to ~1e-11 at the last block, which would make every comparison trivially pass)
    g = torch.Generator().manual_seed(0)
    for m in model.modules():
        if isinstance(m, (torch.nn.Conv2d, torch.nn.Linear)):
            fan_in = m.weight[0].numel()
            with torch.no_grad():
                m.weight.copy_(torch.randn(m.weight.shape, generator=g) * (2.0 / fan_in) ** 0.5)
        if isinstance(m, torch.nn.BatchNorm2d):
            with torch.no_grad():
                m.running_mean.copy_(0.1 * torch.randn(m.running_mean.shape, generator=g))
                m.bias.copy_(0.2 * torch.randn(m.bias.shape, generator=g))
    return model.double().eval()


def _hook_outputs(modules):
    store = {}

    def make(i):
        def hook(mod, inp, out):
            store[i] = out.clone()  # the following ReLU is in place

        return hook

    handles = [m.register_forward_hook(make(i)) for i, m in enumerate(modules)]
    return store, handles


def _pre_activation(name, model, x):
    """The tensor entering the final activation, from the original model."""
    if name.startswith("resnet"):
        calls = []
        relu = model.layer4[-1].relu  # shared by the block: the LAST call is the final one
        h = relu.register_forward_pre_hook(lambda m, inp: calls.append(inp[0].clone()))
        model(x)
        h.remove()
        return calls[-1]
    if name == "densenet":
        return model.features(x)
    if name == "googlenet":
        b = model.inception5b
        mods = [b.branch1.bn, b.branch2[1].bn, b.branch3[1].bn, b.branch4[1].bn]
    else:  # inception v3: Mixed_7c concatenates 6 BasicConv2d outputs
        c = model.Mixed_7c
        mods = [
            c.branch1x1.bn,
            c.branch3x3_2a.bn,
            c.branch3x3_2b.bn,
            c.branch3x3dbl_3a.bn,
            c.branch3x3dbl_3b.bn,
            c.branch_pool.bn,
        ]
    store, handles = _hook_outputs(mods)
    model(x)
    for h in handles:
        h.remove()
    return torch.cat([store[i] for i in range(len(mods))], dim=1)


def _head(name, model, pooled):
    flat = torch.flatten(pooled, 1)
    return model.classifier(flat) if name == "densenet" else model.fc(flat)


BACKBONES = {
    "resnet18": (lambda: torchvision.models.resnet18(weights=None, num_classes=10), 64),
    "resnet50": (lambda: torchvision.models.resnet50(weights=None, num_classes=10), 64),
    "densenet": (lambda: torchvision.models.densenet121(weights=None, num_classes=10), 64),
    "googlenet": (
        lambda: torchvision.models.googlenet(weights=None, num_classes=10, init_weights=False),
        64,
    ),
    "inception": (
        lambda: torchvision.models.inception_v3(weights=None, num_classes=10, init_weights=False),
        139,
    ),
}


@pytest.fixture(scope="module", params=list(BACKBONES))
def backbone(request):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ctor, size = BACKBONES[request.param]
        torch.manual_seed(0)
        model = _init(ctor())
    x = torch.randn(
        2, 3, size, size, dtype=torch.float64, generator=torch.Generator().manual_seed(1)
    )
    with torch.no_grad():
        z = _pre_activation(request.param, model, x)
        out = model(x)
    return request.param, model, x, z, out


def _close(a, b):
    scale = b.abs().max().clamp_min(1e-300)
    torch.testing.assert_close(a / scale, b / scale, rtol=0, atol=1e-10)


def test_decomposition_reproduces_original(backbone):
    name, model, x, z, out = backbone
    assert (z < 0).float().mean() > 0.05  # the final activation really clips something
    with torch.no_grad():
        _close(_head(name, model, F.adaptive_avg_pool2d(F.relu(z), 1)), out)


@pytest.mark.parametrize("slope", [0.2, 1.0])
def test_leaky_relu_changes_only_the_final_activation(backbone, slope):
    name, model, x, z, out = backbone
    before = {k: v.clone() for k, v in model.state_dict().items()}
    new = install_leaky_relu(model, slope)
    with torch.no_grad():
        got = new(x)
        expected = _head(name, model, F.adaptive_avg_pool2d(F.leaky_relu(z, slope), 1))
    _close(got, expected)
    assert (got - out).abs().max() > 1e-6 * out.abs().max()
    expected_count = {"googlenet": 4, "inception": 6}.get(name, 1)
    assert new.replaced_activations == expected_count
    # parameters and buffers: same keys, same values; input model untouched
    assert set(new.state_dict()) == set(before)
    for k, v in new.state_dict().items():
        assert torch.equal(v, before[k]), k
    with torch.no_grad():
        assert torch.equal(model(x), out)
    new.load_state_dict(model.state_dict(), strict=True)
    model.load_state_dict(new.state_dict(), strict=True)


def test_leaky_slope_zero_is_bitwise_identical(backbone):
    name, model, x, z, out = backbone
    with torch.no_grad():
        assert torch.equal(install_leaky_relu(model, 0.0)(x), out)


def test_mixed_pooling(backbone):
    name, model, x, z, out = backbone
    new = install_mixed_pooling(model, 0.3)
    a = F.relu(z)
    with torch.no_grad():
        got = new(x)
        expected = _head(
            name,
            model,
            0.3 * a.amax(dim=(2, 3), keepdim=True) + 0.7 * a.mean(dim=(2, 3), keepdim=True),
        )
        assert torch.equal(install_mixed_pooling(model, 0.0)(x), out)
    _close(got, expected)
    assert (got - out).abs().max() > 1e-6 * out.abs().max()
    assert list(new.state_dict()) == list(model.state_dict())
    assert any(isinstance(m, MixedPooling) for m in new.modules())
    if name != "densenet":  # pooling is a module there: the class is kept
        assert type(new) is type(model)


def test_mixed_then_leaky_composes(backbone):
    name, model, x, z, out = backbone
    both = install_leaky_relu(install_mixed_pooling(model, 0.5), 0.1)
    other = install_mixed_pooling(install_leaky_relu(model, 0.1), 0.5)
    a = F.leaky_relu(z, 0.1)
    with torch.no_grad():
        expected = _head(
            name,
            model,
            0.5 * a.amax(dim=(2, 3), keepdim=True) + 0.5 * a.mean(dim=(2, 3), keepdim=True),
        )
        _close(both(x), expected)
        _close(other(x), expected)


def test_unsupported_backbones_raise():
    no_pool = torch.nn.Sequential(
        torch.nn.Conv2d(3, 4, 3), torch.nn.Flatten(), torch.nn.LazyLinear(2)
    )
    with pytest.raises(ValueError, match="no global pooling"):
        install_mixed_pooling(no_pool)
    with pytest.raises(ValueError, match="no global pooling"):
        install_leaky_relu(no_pool)
    not_relu = torch.nn.Sequential(
        torch.nn.Conv2d(3, 4, 3), torch.nn.Tanh(), torch.nn.AdaptiveAvgPool2d(1)
    )
    with pytest.raises(ValueError, match="not from a ReLU"):
        install_leaky_relu(not_relu)
    with pytest.raises(TypeError, match="nn.Module"):
        install_leaky_relu(lambda x: x)

    class Untraceable(torch.nn.Module):
        def forward(self, x):
            if x.sum() > 0:  # data-dependent control flow
                return x
            return -x

    with pytest.raises(TypeError, match="unsupported backbone"):
        install_mixed_pooling(Untraceable())


def test_bad_arguments_raise():
    m = torch.nn.Sequential(
        torch.nn.Conv2d(3, 4, 3), torch.nn.ReLU(), torch.nn.AdaptiveAvgPool2d(1)
    )
    with pytest.raises(ValueError, match="negative_slope"):
        install_leaky_relu(m, -0.1)
    with pytest.raises(ValueError, match="alpha"):
        install_mixed_pooling(m, 1.5)
    with pytest.raises(ValueError, match="alpha"):
        install_mixed_pooling(m, -0.5)
    with pytest.raises(ValueError, match="alpha"):
        MixedPooling(2.0)


def test_non_number_negative_slope_is_a_type_error():
    m = torch.nn.Sequential(
        torch.nn.Conv2d(3, 4, 3), torch.nn.ReLU(), torch.nn.AdaptiveAvgPool2d(1)
    )
    with pytest.raises(TypeError, match="^negative_slope must be a real number"):
        install_leaky_relu(m, True)
    with pytest.raises(ValueError, match="^negative_slope must be a finite number >= 0"):
        install_leaky_relu(m, float("inf"))
