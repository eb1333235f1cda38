import pytest
import torch

from pml_grouploss.miners import AnchorMiner


def test_first_anchors_and_stats():
    labels = torch.tensor([2, 0, 2, 1, 0, 2, 1])
    miner = AnchorMiner(num_anchors_per_class=1, collect_stats=True)
    (anchors,) = miner(torch.randn(7, 3), labels)
    assert anchors.tolist() == [0, 1, 3]
    assert miner.num_anchors == 3


def test_random_anchors_seeded():
    labels = torch.arange(4).repeat_interleave(6)
    a = AnchorMiner(2, "random", seed=1)(torch.randn(24, 3), labels)[0]
    b = AnchorMiner(2, "random", seed=1)(torch.randn(24, 3), labels)[0]
    assert a.tolist() == b.tolist()
    assert torch.bincount(labels[a]).tolist() == [2, 2, 2, 2]


def test_bad_arguments():
    with pytest.raises(ValueError, match="num_anchors_per_class"):
        AnchorMiner(-1)
    with pytest.raises(ValueError, match="selection"):
        AnchorMiner(2, "middle")
    with pytest.raises(ValueError, match="ref_emb"):
        AnchorMiner(1)(torch.randn(4, 3), torch.tensor([0, 0, 1, 1]), torch.randn(4, 3),
                       torch.tensor([0, 0, 1, 1]))
