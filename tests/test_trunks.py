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
