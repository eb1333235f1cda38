"""Trunks and embedders for PML's trainers: the small Omniglot CNN and torchvision trunks by name.

PML's recipe is a ``trunk`` (images -> pooled features) and an ``embedder`` (features ->
embedding) passed to its trainers as ``models={"trunk": ..., "embedder": ...}``. The benchmark
builds every method's networks with these functions.
"""

from __future__ import annotations

from typing import Tuple

import torch
from torch import nn

from ._validation import check_bool, check_int

#: torchvision trunks and the size of their pooled features
TORCHVISION_TRUNKS = {"resnet50": 2048, "googlenet": 1024, "densenet121": 1024}
TRUNK_NAMES = ("cnn",) + tuple(TORCHVISION_TRUNKS)


def _check_trunk_name(name: str) -> None:
    if name not in TRUNK_NAMES:
        raise ValueError(f"name: unknown trunk {name!r}; choose one of {', '.join(TRUNK_NAMES)}")


def feature_size(name: str, width: int = 64) -> int:
    """The size of the pooled features of trunk ``name`` (``width`` for the ``cnn`` trunk).

    Raises ``ValueError`` for a name :func:`build_trunk` rejects (not in ``TRUNK_NAMES``) and for
    ``width < 1`` (``TypeError`` if not an int).
    """
    _check_trunk_name(name)
    width = check_int("width", width, minimum=1)
    return TORCHVISION_TRUNKS.get(name, width)


@torch.fx.wrap
def _check_images(x: torch.Tensor, min_size: int, weight: torch.Tensor) -> None:
    """Raise unless ``x`` is ``(B, C, H, W)`` with ``H, W >= min_size`` and the channels,
    dtype and device of the first convolution's ``weight``. ``torch.fx.wrap``: a traced
    :class:`SmallCNN` (backbone surgery) records this call instead of tracing the ``if``, so
    the traced model keeps the check."""
    if not torch.is_tensor(x):
        raise TypeError(f"SmallCNN takes a tensor of images (B, C, H, W), got {type(x).__name__}"
                        "; convert with torch.as_tensor(x) or torchvision.transforms.ToTensor()")
    if x.dim() != 4 or min(x.shape[-2:]) < min_size:
        raise ValueError(
            f"SmallCNN takes images (B, C, H, W) with H, W >= {min_size} (four 2x2 "
            f"pools), got shape {tuple(x.shape)}; resize the images (e.g. "
            f"torchvision.transforms.Resize({min_size}))"
            + ("; for one image add the batch dimension, x.unsqueeze(0)" if x.dim() == 3 else "")
        )
    if x.shape[1] != weight.shape[1]:
        raise ValueError(
            f"SmallCNN was built with in_channels={weight.shape[1]}, got images with "
            f"{x.shape[1]} channels (shape {tuple(x.shape)}); build SmallCNN(in_channels="
            f"{x.shape[1]}) or convert the images"
        )
    if not x.dtype.is_floating_point or (
            x.dtype != weight.dtype and not torch.is_autocast_enabled(x.device.type)):
        raise TypeError(
            f"SmallCNN's parameters are {weight.dtype}, got images of dtype {x.dtype}; convert "
            f"with x.to({weight.dtype}) (uint8 pixels: torchvision.transforms.ToTensor() scales "
            "them to [0, 1]) or the model with model.to(x.dtype)"
        )
    if x.device != weight.device:
        raise ValueError(f"SmallCNN's parameters are on {weight.device}, got images on "
                         f"{x.device}; move them with x.to({str(weight.device)!r})")


class SmallCNN(nn.Module):
    """Four conv blocks (3x3 conv, BatchNorm, 2x2 max-pool, ReLU): 28x28 -> 1x1 x ``width``.

    The classic Omniglot trunk (Vinyals et al. 2016; Snell et al. 2017), whose blocks apply the
    ReLU before the pool. The two commute (the ReLU is monotone, and where a window's maximum is
    <= 0 both orders give 0 and a zero gradient), so pooling first computes the same values and
    gradients bit for bit on a map 4x smaller: one training step 0.88-0.92x (measured). Any input
    of at least 16 x 16 works (the four pools halve it four times): a global average pool after
    the fourth block turns the map into a ``width``-d vector.
    """

    #: the smallest height and width the four 2x2 pools accept
    MIN_SIZE = 16

    def __init__(self, in_channels: int = 1, width: int = 64) -> None:
        super().__init__()
        in_channels = check_int("in_channels", in_channels, minimum=1)
        width = check_int("width", width, minimum=1)
        blocks = []
        c = in_channels
        for _ in range(4):
            blocks += [
                nn.Conv2d(c, width, 3, padding=1, bias=False),
                nn.BatchNorm2d(width),
                nn.MaxPool2d(2),
                nn.ReLU(inplace=True),
            ]
            c = width
        self.features = nn.Sequential(*blocks)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.output_size = width
        # channels-last convolutions are ~25% faster on CPU for these small maps (measured)
        self.to(memory_format=torch.channels_last)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``x``: (B, C, H, W) -> (B, width), ``H, W >= 16``, ``C = in_channels``, the dtype
        and device of the parameters (a clear error otherwise)."""
        _check_images(x, self.MIN_SIZE, self.features[0].weight)
        x = x.contiguous(memory_format=torch.channels_last)
        return self.pool(self.features(x)).flatten(1)


def build_trunk(name: str, in_channels: int, pretrained: bool,
                width: int = 64) -> Tuple[nn.Module, int]:
    """Return ``(trunk, feature_size)``; the trunk maps images to pooled features.

    ``width`` and ``in_channels``: the channels of the ``cnn`` trunk (:class:`SmallCNN`).
    torchvision trunks ignore both: they take 3-channel images (the benchmark's transforms
    repeat a grayscale channel, ``benchmark.data.build_transforms``).
    torchvision trunks get their classifier replaced by ``nn.Identity`` (PML's usual recipe).
    ``pretrained=True`` loads ImageNet weights through torchvision, which needs network access
    (or a filled torch hub cache); failure raises a ``RuntimeError`` that says so.
    ``pretrained`` must be a ``bool`` (``"False"`` would be true).
    """
    pretrained = check_bool("pretrained", pretrained)
    if name == "cnn":
        if pretrained:
            raise ValueError(
                "pretrained: the small CNN has no pretrained weights; use trunk resnet50, "
                "googlenet or densenet121, or pretrained=False"
            )
        trunk = SmallCNN(in_channels=in_channels, width=width)
        return trunk, trunk.output_size
    _check_trunk_name(name)
    import torchvision

    builder = getattr(torchvision.models, name)
    weights = "DEFAULT" if pretrained else None
    kwargs = {"aux_logits": False, "init_weights": not pretrained} if name == "googlenet" else {}
    try:
        model = builder(weights=weights, **kwargs)
    except Exception as err:  # URLError / HTTPError / hash mismatch when offline
        raise RuntimeError(
            f"pretrained: could not get the ImageNet weights of {name} ({err!r}). They are "
            "downloaded by torchvision into the torch hub cache (TORCH_HOME); connect to the "
            "network once, copy the .pth file into $TORCH_HOME/hub/checkpoints/, or run without "
            "pretrained weights."
        ) from err
    if name == "densenet121":
        model.classifier = nn.Identity()
    else:
        model.fc = nn.Identity()
    return model, TORCHVISION_TRUNKS[name]


def build_embedder(feature_size: int, embedding_size: int, kind: str = "linear") -> nn.Module:
    """``linear``: one ``nn.Linear`` (PML's trunk + embedder recipe); ``identity``: the pooled
    features are the embedding (the Group Loss papers' choice; needs ``feature_size ==
    embedding_size``). Both sizes must be ints >= 1."""
    feature_size = check_int("feature_size", feature_size, minimum=1)
    embedding_size = check_int("embedding_size", embedding_size, minimum=1)
    if kind == "linear":
        return nn.Linear(feature_size, embedding_size)
    if kind == "identity":
        if feature_size != embedding_size:
            raise ValueError(
                f"kind identity needs embedding_size equal to the trunk's feature size "
                f"({feature_size}); got {embedding_size}"
            )
        return nn.Identity()
    raise ValueError(f"kind must be 'linear' or 'identity', got {kind!r}")
