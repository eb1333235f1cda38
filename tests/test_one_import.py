"""One import: pml_grouploss's modules are supersets of PML's modules of the same names."""
import importlib

import numpy as np
import pytest
import torch

MODULES = ["losses", "miners", "distances", "samplers", "reducers", "regularizers", "trainers",
           "testers"]


@pytest.mark.parametrize("name", MODULES)
def test_every_pml_name_resolves_to_pmls_object(name):
    pml = importlib.import_module(f"pytorch_metric_learning.{name}")
    ours = importlib.import_module(f"pml_grouploss.{name}")
    public = [n for n in dir(pml) if not n.startswith("_")]
    assert len(public) > 3
    missing = [n for n in public if getattr(ours, n, None) is not getattr(pml, n)]
    assert missing == []


def test_a_pml_script_with_one_import_changed():
    """The README's promise: only the import line differs from a PML script."""
    from pml_grouploss import distances, losses, miners, reducers

    torch.manual_seed(0)
    e, labels = torch.randn(12, 8), torch.arange(3).repeat(4)
    miner = miners.MultiSimilarityMiner(epsilon=0.1)
    triplet = losses.TripletMarginLoss(distance=distances.CosineSimilarity(),
                                       reducer=reducers.ThresholdReducer(low=0))
    assert torch.isfinite(triplet(e, labels, miner(e, labels)))
    group = losses.GroupLoss(3, 8)
    assert torch.isfinite(group(e, labels))


@pytest.mark.parametrize("cls,negatives", [("ClampedGroupLoss", "clamp"),
                                           ("ShiftedGroupLoss", "shift")])
def test_named_variants_equal_the_option_and_share_state(cls, negatives):
    from pml_grouploss import losses

    torch.manual_seed(0)
    named = getattr(losses, cls)(3, 8, num_iterations=2)
    option = losses.GroupLoss(3, 8, num_iterations=2, negatives=negatives)
    option.load_state_dict(named.state_dict())
    assert isinstance(named, losses.GroupLoss) and named.negatives == negatives
    e, labels = torch.randn(12, 8), torch.arange(3).repeat(4)
    assert named(e, labels).item() == option(e, labels).item()
    with pytest.raises(TypeError, match="fixes negatives"):
        getattr(losses, cls)(3, 8, negatives="clamp")


def test_shift_and_clamp_differ_on_negative_correlations():
    from pml_grouploss import losses

    e = torch.tensor([[1.0, -1.0, 2.0], [-1.0, 1.0, -2.0], [1.0, 2.0, 0.0], [0.5, -0.2, 1.0]])
    labels = torch.tensor([0, 1, 0, 1])
    torch.manual_seed(0)
    clamped = losses.ClampedGroupLoss(2, 3, num_anchors=1)
    shifted = losses.ShiftedGroupLoss(2, 3, num_anchors=1)
    shifted.load_state_dict(clamped.state_dict())
    assert not np.isclose(clamped(e, labels).item(), shifted(e, labels).item())
