import glob
import os

import numpy as np
import pytest
import torch

FIXTURES = os.path.join(os.path.dirname(__file__), "fixtures")


def fixture_paths(pattern):
    paths = sorted(glob.glob(os.path.join(FIXTURES, pattern)))
    assert paths, f"no fixture matches {pattern} in {FIXTURES}"
    return paths


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)
    np.random.seed(0)


def cuda_or_skip():
    if not torch.cuda.is_available():
        pytest.skip("no CUDA device on this machine")
    return torch.device("cuda")
