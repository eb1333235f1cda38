import copy
import urllib.error

import pytest
import torch
import torchvision

from pml_grouploss.trunks import SmallCNN, build_embedder, build_trunk


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
