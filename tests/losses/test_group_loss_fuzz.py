"""Fuzzed batches: GroupLoss gives a finite loss and finite gradients (its parameters
included), or -- for invalid input only -- its own ValueError/TypeError.

CI runs a derandomized profile; the long run (issue 8: >= 2,000 examples)::

    PML_GROUPLOSS_FUZZ_EXAMPLES=2000 .venv/bin/python -m pytest tests/losses/test_group_loss_fuzz.py
"""
import os
import warnings

import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from pytorch_metric_learning import distances as pml_distances

from pml_grouploss.losses import GroupLoss

EXAMPLES = int(os.environ.get("PML_GROUPLOSS_FUZZ_EXAMPLES", "250"))
DTYPES = [torch.float32, torch.float64, torch.float16, torch.bfloat16]


@st.composite
def batches(draw):
    n = draw(st.integers(1, 64))
    d = draw(st.integers(1, 16))
    m = draw(st.integers(1, 8))
    seed = draw(st.integers(0, 2**31 - 1))
    g = torch.Generator().manual_seed(seed)
    labels = torch.randint(0, m, (n,), generator=g)
    kind = draw(st.sampled_from(["normal", "constant_rows", "duplicates", "zeros", "sparse"]))
    scale = 10.0 ** draw(st.integers(-30, 30))
    e = torch.randn(n, d, generator=g, dtype=torch.float64) * scale
    if kind == "constant_rows":
        rows = torch.rand(n, generator=g) < 0.5
        e[rows] = e[rows, :1]
    elif kind == "duplicates":
        e = e[torch.randint(0, n, (n,), generator=g)]
    elif kind == "zeros":
        e = torch.zeros(n, d, dtype=torch.float64)
    elif kind == "sparse":
        e = e * (torch.rand(n, d, generator=g) < 0.2)
    options = dict(
        num_iterations=draw(st.integers(0, 50)),
        num_anchors=draw(st.integers(0, 4)),
        anchor_selection=draw(st.sampled_from(["first", "random"])),
        negatives=draw(st.sampled_from(["clamp", "shift"])),
        zero_diagonal=draw(st.booleans()),
        temperature=10.0 ** draw(st.integers(-6, 6)),
        nll_weight=draw(st.sampled_from([0.0, 0.5, 1.0, 10.0])),
        ce_weight=draw(st.sampled_from([0.0, 1.0, 10.0])),
        normalize_embeddings=draw(st.booleans()),
        seed=seed,
    )
    # the classes the prior and the CE run over (GL++ §8.3), with sparse classifier gradients
    prior, ce, sparse = draw(st.sampled_from([("all", "all", False), ("batch", "all", False),
                                              ("batch", "batch", False), ("batch", "batch", True)]))
    options.update(prior_classes=prior, ce_classes=ce, sparse_gradients=sparse)
    if draw(st.booleans()):
        options["distance"] = pml_distances.CosineSimilarity()
    dtype = draw(st.sampled_from(DTYPES))
    autocast = draw(st.sampled_from([None, torch.bfloat16, torch.float16]))
    return e.to(dtype), labels, m, options, seed, autocast


def _own_error(error: Exception) -> bool:
    """A ValueError/TypeError raised by pml_grouploss itself, for input that is invalid."""
    tb = error.__traceback__
    while tb.tb_next is not None:
        tb = tb.tb_next
    return "pml_grouploss" in tb.tb_frame.f_code.co_filename


@settings(
    max_examples=EXAMPLES,
    derandomize=EXAMPLES <= 250,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
@given(batches())
def test_fuzzed_batches_are_finite(batch):
    e, labels, m, options, seed, autocast = batch
    torch.manual_seed(seed)  # the classifier's initialisation: replayable by hypothesis
    loss_fn = GroupLoss(m, e.shape[1], **options)
    e = e.clone().requires_grad_(True)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # collapse warnings on constant batches
            with torch.autocast("cpu", dtype=autocast or torch.bfloat16, enabled=bool(autocast)):
                loss = loss_fn(e, labels)
    except (ValueError, TypeError) as error:
        # invalid input only: inf after the cast to a half type, subnormal-scale rows, or raw
        # logits that overflow
        assert _own_error(error), error
        invalid = (not torch.isfinite(e).all()) or "smallest normal" in str(error) or (
            "logits overflow" in str(error) and not options["normalize_embeddings"]
        )
        assert invalid, (error, options)
        return
    assert torch.isfinite(loss), (loss, options)
    loss.backward()
    for grad in (loss_fn.W.grad, loss_fn.bias.grad):
        assert torch.isfinite(grad.to_dense() if grad.is_sparse else grad).all(), options
    if e.dtype == torch.float16 and not torch.isfinite(e.grad).all():
        # As for every float16 op (and what GradScaler relies on): a gradient beyond float16's
        # range is inf. Allowed only where the exact gradient really is out of range.
        exact = _float64_gradient(e.detach(), labels, m, options, seed)
        out_of_range = exact.abs() > torch.finfo(torch.float16).max
        assert out_of_range.any() and torch.isfinite(e.grad[~out_of_range]).all(), options
        return
    assert torch.isfinite(e.grad).all(), options


def _float64_gradient(e, labels, m, options, seed):
    torch.manual_seed(seed)
    loss_fn = GroupLoss(m, e.shape[1], **options)
    e = e.double().requires_grad_(True)
    loss_fn(e, labels).backward()
    return e.grad
