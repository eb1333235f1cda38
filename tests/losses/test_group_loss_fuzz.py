"""Fuzzed batches: GroupLoss gives a finite loss and finite gradients, whatever the batch."""
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from pml_grouploss.losses import GroupLoss


@st.composite
def batches(draw):
    n = draw(st.integers(1, 16))
    d = draw(st.integers(1, 8))
    m = draw(st.integers(1, 6))
    seed = draw(st.integers(0, 2**31 - 1))
    g = torch.Generator().manual_seed(seed)
    labels = torch.randint(0, m, (n,), generator=g)
    kind = draw(st.sampled_from(["normal", "constant_rows", "duplicates", "zeros", "sparse"]))
    scale = 10.0 ** draw(st.integers(-30, 30))
    e = torch.randn(n, d, generator=g) * scale
    if kind == "constant_rows":
        rows = torch.rand(n, generator=g) < 0.5
        e[rows] = e[rows, :1]
    elif kind == "duplicates":
        e = e[torch.randint(0, n, (n,), generator=g)]
    elif kind == "zeros":
        e = torch.zeros(n, d)
    elif kind == "sparse":
        e = e * (torch.rand(n, d, generator=g) < 0.2)
    options = dict(
        num_iterations=draw(st.integers(0, 5)),
        num_anchors=draw(st.integers(0, 3)),
        negatives=draw(st.sampled_from(["clamp", "shift"])),
        zero_diagonal=draw(st.booleans()),
        temperature=draw(st.sampled_from([0.05, 1.0, 24.0, 1000.0])),
    )
    dtype = draw(st.sampled_from([torch.float32, torch.float64]))
    return e.to(dtype), labels, m, options, seed


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(batches())
def test_fuzzed_batches_are_finite(batch):
    e, labels, m, options, seed = batch
    torch.manual_seed(seed)  # the classifier's initialisation: replayable by hypothesis
    loss_fn = GroupLoss(m, e.shape[1], **options).to(e.dtype)
    e = e.clone().requires_grad_(True)
    loss = loss_fn(e, labels)
    assert torch.isfinite(loss), (loss, options)
    loss.backward()
    assert torch.isfinite(e.grad).all(), options
    assert torch.isfinite(loss_fn.W.grad).all() and torch.isfinite(loss_fn.bias.grad).all()
