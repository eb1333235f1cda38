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


def test_running_twice(backbone):
    # mixed pooling twice = once with the second alpha; leaky ReLU twice names the fix
    name, model, x, z, out = backbone
    twice = install_mixed_pooling(install_mixed_pooling(model, 0.3), 0.9)
    assert [m.alpha for m in twice.modules() if isinstance(m, MixedPooling)] == [0.9]
    leaky = install_leaky_relu(model, 0.75)
    with pytest.raises(ValueError, match=r"already a LeakyReLU .*negative_slope=0\.75\); to "
                                         r"change the slope set model\.final_activation"):
        install_leaky_relu(leaky, 0.2)
    leaky.final_activation.negative_slope = 0.2  # the fix the message gives
    with torch.no_grad():
        assert torch.equal(twice(x), install_mixed_pooling(model, 0.9)(x))
        assert torch.equal(leaky(x), install_leaky_relu(model, 0.2)(x))


class _SENet(torch.nn.Module):
    """A squeeze-excitation gate (a global average pooling whose output scales the feature map),
    then the final activation and ``final`` pooling; ``shared``: one pooling module for both."""

    def __init__(self, final="mean", shared=False):
        super().__init__()
        self.conv1, self.relu1 = torch.nn.Conv2d(3, 8, 3), torch.nn.ReLU()
        self.pool, self.se_fc = torch.nn.AdaptiveAvgPool2d(1), torch.nn.Conv2d(8, 8, 1)
        self.se_pool = self.pool if shared else torch.nn.AdaptiveAvgPool2d(1)
        self.conv2, self.relu2 = torch.nn.Conv2d(8, 16, 3), torch.nn.ReLU()
        self.final, self.shared, self.fc = final, shared, torch.nn.Linear(16, 4)

    def pre_activation(self, x):
        x = self.relu1(self.conv1(x))
        gate = self.pool(x) if self.shared else self.se_pool(x)
        return self.conv2(x * torch.sigmoid(self.se_fc(gate)))

    def forward(self, x):
        x = self.relu2(self.pre_activation(x))
        if self.final == "mean":
            return x.mean((2, 3))
        if self.final == "max":
            return F.adaptive_max_pool2d(x, 1).flatten(1)  # not a recognized global pooling
        p = self.pool(x)
        return self.fc(torch.nn.functional.dropout(p.view(p.size(0), -1), 0.5, self.training))


def test_squeeze_excitation_gate_is_never_taken_for_the_final_pooling():
    torch.manual_seed(0)
    x = torch.randn(2, 3, 12, 12, dtype=torch.float64)
    gate_only = _SENet("max").double().eval()
    for install in (install_mixed_pooling, install_leaky_relu):
        with pytest.raises(ValueError, match=r"unsupported backbone: none of its global poolings "
                                             r"is the backbone's final pooling .*module 'se_pool'"
                                             r" \(AdaptiveAvgPool2d\): its output goes into "
                                             r"module 'se_fc' \(Conv2d\)"):
            install(gate_only)
    # the same AdaptiveAvgPool2d module as gate and final pooling (x.view(x.size(0), -1), dropout
    # and Linear after it): only the final call changes
    shared = _SENet("pool", shared=True).double().eval()
    with torch.no_grad():
        z = shared.pre_activation(x)
        a = F.relu(z)
        mixed = install_mixed_pooling(shared, 0.3)(x)
        leaky = install_leaky_relu(shared, 0.2)(x)
        _close(mixed, shared.fc(0.3 * a.amax(dim=(2, 3)) + 0.7 * a.mean(dim=(2, 3))))
        _close(leaky, shared.fc(F.leaky_relu(z, 0.2).mean(dim=(2, 3))))
        assert (mixed - shared(x)).abs().max() > 1e-3


@pytest.mark.parametrize("keepdim", [False, True])
def test_a_final_pooling_written_as_a_mean_over_h_w_is_found(keepdim):
    # timm-style heads pool with x.mean((2, 3)); before, the surgery refused such a model (and
    # found only the squeeze-excitation gate's pooling)
    torch.manual_seed(0)
    x = torch.randn(2, 3, 12, 12, dtype=torch.float64)
    model = _SENet("mean").double().eval()
    with torch.no_grad():
        z = model.pre_activation(x)
        a = F.relu(z)
        _close(install_mixed_pooling(model, 0.3)(x),
               0.3 * a.amax(dim=(2, 3)) + 0.7 * a.mean(dim=(2, 3)))
        assert torch.equal(install_mixed_pooling(model, 0.0)(x), model(x))  # avg: the same op
        _close(install_leaky_relu(model, 0.2)(x), F.leaky_relu(z, 0.2).mean(dim=(2, 3)))

    class FunctionalMean(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.conv = torch.nn.Conv2d(3, 5, 3)

        def forward(self, x):
            return torch.mean(F.relu(self.conv(x)), dim=[-1, -2], keepdim=keepdim)

    model = FunctionalMean().double().eval()
    with torch.no_grad():
        a = F.relu(model.conv(x))
        mixed = install_mixed_pooling(model, 1.0)(x)
        assert mixed.shape == model(x).shape
        assert torch.equal(mixed, a.amax(dim=(2, 3), keepdim=keepdim))


def test_a_mean_over_other_dimensions_is_not_a_global_pooling():
    class ChannelMean(torch.nn.Module):
        def forward(self, x):
            return F.relu(x).mean((1, 2))

    with pytest.raises(ValueError, match="no global pooling"):
        install_mixed_pooling(ChannelMean())


class _MLPHead(torch.nn.Module):
    """conv -> ReLU -> global pool -> flatten -> Linear-BN-ReLU-Linear head -> F.normalize."""

    def __init__(self):
        super().__init__()
        self.conv = torch.nn.Conv2d(3, 6, 3)
        self.relu = torch.nn.ReLU()
        self.pool = torch.nn.AdaptiveAvgPool2d(1)
        self.head = torch.nn.Sequential(torch.nn.Linear(6, 8), torch.nn.BatchNorm1d(8),
                                        torch.nn.ReLU(), torch.nn.Linear(8, 4))

    def forward(self, x):
        return F.normalize(self.head(torch.flatten(self.pool(self.relu(self.conv(x))), 1)))


def test_a_head_of_one_input_layers_after_the_final_pooling_is_accepted():
    torch.manual_seed(0)
    model = _MLPHead().double().eval()
    x = torch.randn(3, 3, 9, 9, dtype=torch.float64)
    with torch.no_grad():
        z = model.conv(x)
        a = F.relu(z)
        _close(install_mixed_pooling(model, 0.4)(x),
               F.normalize(model.head(0.4 * a.amax(dim=(2, 3)) + 0.6 * a.mean(dim=(2, 3)))))
        _close(install_leaky_relu(model, 0.5)(x),
               F.normalize(model.head(F.leaky_relu(z, 0.5).mean(dim=(2, 3)))))


def test_submodule_train_eval_flags_are_kept():
    # a ResNet-18 in train mode with frozen BatchNorm: every BN stays in eval mode, so a forward
    # in train mode neither uses batch statistics nor updates the running ones
    torch.manual_seed(0)
    model = torchvision.models.resnet18(weights=None, num_classes=4).double().train()
    for m in model.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            m.eval()
    flags = {name: m.training for name, m in model.named_modules()}
    x = torch.randn(2, 3, 32, 32, dtype=torch.float64)
    for new in (install_leaky_relu(model, 0.0), install_mixed_pooling(model, 0.0),
                install_mixed_pooling(install_leaky_relu(model, 0.0), 0.0)):
        got = {name: m.training for name, m in new.named_modules() if name in flags}
        assert got == flags and new.training
        assert all(m.training for m in new.modules() if isinstance(m, (MixedPooling,
                                                                        torch.nn.LeakyReLU)))
        running = new.bn1.running_mean.clone()
        with torch.no_grad():
            assert torch.equal(new(x), model(x))
        assert torch.equal(new.bn1.running_mean, running)
    # the graph-rewrite path of install_mixed_pooling (pooling module shared with a gate)
    shared = _SENet("pool", shared=True).train()
    shared.se_fc.eval()
    new = install_mixed_pooling(shared)
    assert type(new) is not _SENet and not new.se_fc.training
    assert new.training and new.conv1.training
