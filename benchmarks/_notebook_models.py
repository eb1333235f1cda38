"""The models of PML's example notebooks that ``notebook_settings_sweep.py`` trains."""
from __future__ import annotations

from typing import List, Sequence

import torch
import torch.nn as nn
import torch.nn.functional as F


class Net(nn.Module):
    """The trunk of PML's MNIST notebooks (from pytorch/examples' mnist/main.py), 128-d output."""

    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(1, 32, 3, 1)
        self.conv2 = nn.Conv2d(32, 64, 3, 1)
        self.dropout1 = nn.Dropout2d(0.25)
        self.dropout2 = nn.Dropout2d(0.5)  # defined but unused, as in the notebooks
        self.fc1 = nn.Linear(9216, 128)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.relu(self.conv1(x))
        x = F.relu(self.conv2(x))
        x = F.max_pool2d(x, 2)
        x = self.dropout1(x)
        return self.fc1(torch.flatten(x, 1))


class MLP(nn.Module):
    """The MetricLossOnly notebook's embedder: ReLU then Linear for each layer pair."""

    def __init__(self, layer_sizes: Sequence[int]) -> None:
        super().__init__()
        layers: List[nn.Module] = []
        for size_in, size_out in zip(layer_sizes[:-1], layer_sizes[1:]):
            layers += [nn.ReLU(inplace=False), nn.Linear(size_in, size_out)]
        self.net = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)
