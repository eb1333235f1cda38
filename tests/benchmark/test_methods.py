"""Methods by name: every one builds and takes a batch before any training, or the config
names it (PML losses that cannot train on labels, parameters the run would ignore)."""

import pytest
import torch

from pml_grouploss.benchmark.config import BenchmarkConfig
from pml_grouploss.benchmark.methods import build_method, check_trains, get_method
from pml_grouploss.benchmark.validation import ConfigValueError


@pytest.mark.parametrize(
    "changes, field, message",
    [
        ({"methods": ("BaseMetricLossFunction",)}, "run.methods",
         "BaseMetricLossFunction cannot be trained on a labelled batch (NotImplementedError"),
        ({"methods": ("VICRegLoss",)}, "run.methods",
         "VICRegLoss cannot be trained on a labelled batch (ValueError: labels are ref_labels"),
        ({"methods": ("ManifoldLoss",)}, "run.methods",
         "missing 1 required positional argument: 'l'; give it as an override, e.g. --set "
         "ManifoldLoss.PARAM=VALUE"),
        ({"overrides": {"triplet": {"type_of_triplets": "hardest"}}}, "run.overrides",
         "triplet: type_of_triplets must be one of ('all', 'hard', 'semihard', 'easy'), got "
         "'hardest'"),
        ({"overrides": {"grouploss": {"loss_lr": None}}}, "run.overrides",
         "grouploss.loss_lr must be a real number, got NoneType None"),
        ({"overrides": {"triplet": {"loss_lr": 0.1}}}, "run.overrides",
         "triplet.loss_lr: triplet's loss has no parameters of its own"),
        ({"methods": ("ArcFaceLoss",), "overrides": {"ArcFaceLoss": {"num_classes": 5}}},
         "run.overrides", "ArcFaceLoss.num_classes is set by the benchmark"),
    ],
)
def test_a_method_that_cannot_train_is_named_by_the_config(changes, field, message):
    with pytest.raises((ConfigValueError, TypeError)) as info:
        BenchmarkConfig().replace(**changes)
    assert info.value.field == field and message in str(info.value)


@pytest.mark.parametrize("name", ["CosFaceLoss", "SubCenterArcFaceLoss"])
def test_pml_losses_that_pass_num_classes_to_their_base_get_it(name):
    """Their ``__init__(*args, margin, scale, **kwargs)`` hides ``num_classes``: it is found up
    the MRO, so they get the training classes and their own optimizer."""
    built = build_method(get_method(name), 7, 16)
    assert built.loss.W.shape[-1] >= 7 and built.loss_lr == 1e-2
    assert BenchmarkConfig().replace(methods=(name,)).run.methods == (name,)


def test_every_default_method_takes_a_batch_and_keeps_the_random_state():
    state = torch.get_rng_state()
    cfg = BenchmarkConfig()
    assert torch.equal(torch.get_rng_state(), state)  # validating builds no visible draw
    for name in cfg.run.methods:
        check_trains(build_method(get_method(name), 3, 8), 3, 4, 8)
