import copy
import urllib.error

import pytest
import torch
import torch.nn.functional as F
import torchvision

from pml_grouploss.inference import MixedPooling, install_leaky_relu, install_mixed_pooling
from pml_grouploss.trunks import SmallCNN, build_embedder, build_trunk, feature_size


def test_small_cnn_shapes():
    net = SmallCNN(in_channels=1, width=64)
    assert net(torch.zeros(5, 1, 28, 28)).shape == (5, 64)
    assert SmallCNN(in_channels=3, width=32)(torch.zeros(2, 3, 40, 40)).shape == (2, 32)
    # 4 blocks of conv(no bias) + BN: 64*9 + 3*64*64*9 conv weights, 4*2*64 BN affine
    assert sum(p.numel() for p in net.parameters()) == 64 * 9 + 3 * 64 * 64 * 9 + 4 * 2 * 64


def test_small_cnn_pools_before_relu_bit_for_bit_like_the_classic_block_order():
    # the classic block is conv, BN, ReLU, pool; SmallCNN pools first (4x less ReLU work): the
    # same outputs and the same gradients, bit for bit, over a few Adam steps at a large lr
    torch.manual_seed(0)
    net = SmallCNN(in_channels=1, width=8)
    blocks = list(net.features)
    for i in range(0, len(blocks), 4):
        assert isinstance(blocks[i + 2], torch.nn.MaxPool2d)
        assert isinstance(blocks[i + 3], torch.nn.ReLU)
        blocks[i + 2], blocks[i + 3] = blocks[i + 3], blocks[i + 2]
    classic = copy.deepcopy(net)
    classic.features = torch.nn.Sequential(*[copy.deepcopy(b) for b in blocks])
    x = torch.randn(16, 1, 28, 28)
    x[:4] = 0  # constant images: windows whose maximum is <= 0 after BN
    optimizers = [torch.optim.Adam(m.parameters(), lr=0.1) for m in (net, classic)]
    for _ in range(4):
        outputs = []
        for model, opt in zip((net, classic), optimizers):
            opt.zero_grad()
            out = model(x)
            out.square().sum().backward()
            outputs.append(out)
            opt.step()
        assert torch.equal(outputs[0], outputs[1])
        for p, q in zip(net.parameters(), classic.parameters()):
            assert torch.equal(p.grad, q.grad) and torch.equal(p, q)


def test_build_trunk_width():
    trunk, size = build_trunk("cnn", 1, pretrained=False, width=24)
    assert size == 24 and trunk(torch.zeros(2, 1, 28, 28)).shape == (2, 24)


def test_torchvision_trunk_without_weights_and_offline_error(monkeypatch):
    trunk, size = build_trunk("resnet50", 3, pretrained=False)
    assert size == 2048 and isinstance(trunk.fc, torch.nn.Identity)

    def offline(**kwargs):
        raise urllib.error.URLError("no network")

    monkeypatch.setattr(torchvision.models, "densenet121", offline)
    with pytest.raises(RuntimeError, match="^pretrained: could not get the ImageNet weights"):
        build_trunk("densenet121", 3, pretrained=True)
    with pytest.raises(ValueError, match="no pretrained weights"):
        build_trunk("cnn", 1, pretrained=True)
    with pytest.raises(ValueError, match="unknown trunk"):
        build_trunk("vgg", 3, pretrained=False)


def test_embedders():
    assert isinstance(build_embedder(64, 32, "linear"), torch.nn.Linear)
    assert isinstance(build_embedder(64, 64, "identity"), torch.nn.Identity)
    with pytest.raises(ValueError, match="needs embedding_size equal"):
        build_embedder(64, 32, "identity")


def test_small_cnn_names_images_below_16_pixels_and_bad_sizes():
    net = SmallCNN().eval()
    assert net(torch.randn(2, 1, 16, 16)).shape == (2, 64)
    with pytest.raises(ValueError, match=r"H, W >= 16 .* got shape \(2, 1, 15, 28\)"):
        net(torch.randn(2, 1, 15, 28))
    with pytest.raises(ValueError, match="width must be an int >= 1"):
        SmallCNN(width=0)
    with pytest.raises(ValueError, match="in_channels must be an int >= 1"):
        build_trunk("cnn", 0, pretrained=False)


def test_feature_size_names_unknown_trunks_and_bad_widths():
    assert feature_size("cnn", 24) == 24 and feature_size("cnn") == 64
    assert feature_size("resnet50") == 2048 and feature_size("densenet121", 8) == 1024
    for name in ("resnet18", "ResNet50", "vit_b_16"):
        with pytest.raises(ValueError, match=f"^name: unknown trunk '{name}'; choose one of cnn, "
                                             "resnet50, googlenet, densenet121$"):
            feature_size(name)
    with pytest.raises(ValueError, match="^width must be an int >= 1, got 0"):
        feature_size("cnn", 0)
    with pytest.raises(TypeError, match="^width must be an int, got float 8.0"):
        feature_size("cnn", 8.0)


@pytest.mark.parametrize("args, error, message", [
    ((64, 0), ValueError, "embedding_size must be an int >= 1, got 0"),
    ((64, -8), ValueError, "embedding_size must be an int >= 1, got -8"),
    ((0, 8), ValueError, "feature_size must be an int >= 1, got 0"),
    ((64, 8.0), TypeError, "embedding_size must be an int, got float 8.0"),
    ((64, True), TypeError, "embedding_size must be an int, got bool True"),
    ((True, 64, "identity"), TypeError, "feature_size must be an int, got bool True"),
])
def test_build_embedder_checks_its_sizes(args, error, message):
    with pytest.raises(error, match=f"^{message}"):
        build_embedder(*args)


def test_backbone_surgery_on_small_cnn():
    # leaky ReLU replaces the last block's ReLU, mixed pooling the final AdaptiveAvgPool2d; the
    # traced trunk keeps the input check
    torch.manual_seed(0)
    net = build_trunk("cnn", 1, pretrained=False, width=8)[0].double()
    x = torch.randn(3, 1, 64, 64, dtype=torch.float64)  # a 4 x 4 final map
    with torch.no_grad():
        for m in net.modules():  # BN statistics of x, then the last BN shifted: about half of
            if isinstance(m, torch.nn.BatchNorm2d):  # the last pool's outputs are negative
                m.momentum = 1.0
        net(x)
        net.eval().features[-3].running_mean += net.features[-3].running_var.sqrt()
        z = net.features[:-1](x)  # enters the final ReLU
        out = net(x)
        leaky = install_leaky_relu(net, 0.3)
        mixed = install_mixed_pooling(net, 0.25)
        got_leaky, got_mixed = leaky(x), mixed(x)
    assert 0.2 < (z < 0).float().mean() < 0.8
    torch.testing.assert_close(got_leaky, F.leaky_relu(z, 0.3).mean((2, 3)), rtol=0, atol=1e-12)
    a = F.relu(z)
    torch.testing.assert_close(got_mixed, 0.25 * a.amax((2, 3)) + 0.75 * a.mean((2, 3)),
                               rtol=0, atol=1e-12)
    assert (got_leaky - out).abs().max() > 1e-2 and (got_mixed - out).abs().max() > 1e-2
    assert leaky.replaced_activations == 1
    assert type(mixed) is SmallCNN and isinstance(mixed.pool, MixedPooling)
    for model in (net, leaky, mixed):
        with pytest.raises(ValueError, match=r"H, W >= 16 .* got shape \(3, 4096\)"):
            model(x.view(3, -1))
        with pytest.raises(ValueError, match=r"H, W >= 16 .* got shape \(3, 1, 8, 8\)"):
            model(x[..., :8, :8])


def test_small_cnn_names_channels_dtype_device_and_non_tensors():
    # were torch's "expected scalar type Byte but found Float", "... to have 1 channels" and
    # "'list' object has no attribute 'dim'"
    net = SmallCNN(in_channels=1, width=8)
    with pytest.raises(ValueError, match=r"^SmallCNN was built with in_channels=1, got images with "
                                         r"3 channels .*SmallCNN\(in_channels=3\)"):
        net(torch.zeros(2, 3, 28, 28))
    for dtype in (torch.uint8, torch.float64):
        with pytest.raises(TypeError, match=f"parameters are torch.float32, got images of dtype "
                                            f"{dtype}; convert with x.to\\(torch.float32\\)"):
            net(torch.zeros(2, 1, 28, 28, dtype=dtype))
    with pytest.raises(ValueError, match=r"parameters are on cpu, got images on meta; move them "
                                         r"with x.to\('cpu'\)"):
        net(torch.zeros(2, 1, 28, 28, device="meta"))
    with pytest.raises(TypeError, match="^SmallCNN takes a tensor of images .* got list"):
        net([[0.0]])
    with pytest.raises(ValueError, match=r"got shape \(1, 28, 28\).*x.unsqueeze\(0\)"):
        net(torch.zeros(1, 28, 28))
    # the output follows the model's dtype, and autocast still casts float32 images
    assert net.double()(torch.zeros(2, 1, 16, 16, dtype=torch.float64)).dtype == torch.float64
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert net.float()(torch.zeros(2, 1, 16, 16)).dtype == torch.bfloat16


@pytest.mark.parametrize("pretrained", ["False", None, 0])
def test_build_trunk_pretrained_must_be_a_bool(pretrained):
    # "False" was true: a ValueError about the small CNN's weights, or a download for resnet50
    with pytest.raises(TypeError, match=f"^pretrained must be True or False, got "
                                        f"{type(pretrained).__name__}"):
        build_trunk("resnet50", 3, pretrained=pretrained)
