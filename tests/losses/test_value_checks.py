"""GroupLoss's value checks: the scale-growth warning (a trunk learning rate too large)."""
from __future__ import annotations

import warnings

import pytest
import torch

from pml_grouploss.distances import CosineSimilarity
from pml_grouploss.losses import GroupLoss
from pml_grouploss.losses._value_checks import SCALE_GROWTH_LIMIT


def _scale_warnings(loss, scales, validate_embeddings=None):
    x = torch.randn(20, 8, generator=torch.Generator().manual_seed(0))
    labels = torch.arange(20) % 5
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        values = [loss(x * s, labels) for s in scales]
    return values, [str(w.message) for w in caught if "mean norm grew" in str(w.message)]


def test_warns_once_beyond_the_limit_and_never_below_it():
    assert SCALE_GROWTH_LIMIT == 1000.0
    loss = GroupLoss(num_classes=5, embedding_size=8)
    values, messages = _scale_warnings(loss, [1.0, 999.0, 999.9])
    assert messages == []
    # the loss is scale-invariant: the warning is about the trunk, not the value
    torch.testing.assert_close(values[1], values[0])
    _, messages = _scale_warnings(loss, [1001.0, 5000.0])
    assert len(messages) == 1
    assert "grew 1001-fold" in messages[0]
    assert "learning rates to 1e-3" in messages[0]


def test_growth_is_measured_from_the_first_call_of_each_loss():
    _, messages = _scale_warnings(GroupLoss(num_classes=5, embedding_size=8), [1e3 + 1.0])
    assert messages == []  # the first call sets the reference
    _, messages = _scale_warnings(GroupLoss(num_classes=5, embedding_size=8), [1e-3, 1.01])
    assert len(messages) == 1 and "grew 1010-fold" in messages[0]


def test_no_reads_no_warning_with_validate_false():
    loss = GroupLoss(num_classes=5, embedding_size=8, validate=False)
    _, messages = _scale_warnings(loss, [1.0, 1e6])
    assert messages == []


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float64])
def test_reference_scale_in_every_dtype(dtype):
    loss = GroupLoss(num_classes=5, embedding_size=8)
    x = torch.randn(20, 8, generator=torch.Generator().manual_seed(1))
    labels = torch.arange(20) % 5
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        loss(x.to(dtype), labels)
        loss((x * 2000).to(dtype), labels)
    assert sum("mean norm grew" in str(w.message) for w in caught) == 1


@pytest.mark.parametrize("kwargs", [
    dict(), dict(negatives="shift"), dict(distance=CosineSimilarity()),
    dict(prior_classes="batch"), dict(prior_classes="batch", ce_classes="all"),
], ids=["fused", "shift", "cosine", "batch", "batch-ce-all"])
def test_every_similarity_and_prior_path_names_bad_values(kwargs):
    """One read after the classifier (the fused node's row powers, or computed from the
    embeddings off it); the batch-class prior reads the labels before they index ``W``."""
    x = torch.randn(20, 8, generator=torch.Generator().manual_seed(2))
    labels = torch.arange(20) % 5
    loss = GroupLoss(num_classes=5, embedding_size=8, **kwargs)
    zero_row = x.clone()
    zero_row[3] = 0.0
    assert torch.isfinite(loss(zero_row, labels))  # a zero row is not a tiny one
    tiny, nan = x.clone(), x.clone()
    tiny[3] *= 1e-39
    nan[3, 2] = float("nan")
    for bad, match in [(tiny, "smallest normal"), (nan, "contain NaN or inf"),
                       (x * float("inf"), "contain NaN or inf")]:
        with pytest.raises(ValueError, match=match):
            loss(bad, labels)
    for bad_labels in (labels + 5, labels - 1):
        with pytest.raises(ValueError, match=r"num_classes=5\), got values in \[-?\d+, \d+\]"):
            loss(x, bad_labels)
    loss.temperature = 1e-40  # logits / temperature overflow float32 (it was a NaN loss)
    with pytest.raises(ValueError, match="temperature=1e-40 is too small"):
        loss(x, labels)
    loss.temperature = 1e-30
    assert torch.isfinite(loss(x, labels))
    with torch.no_grad():
        loss.W[1, 0] = float("nan")
    with pytest.raises(ValueError, match="loss.W, loss.bias"):
        loss(x, labels)
