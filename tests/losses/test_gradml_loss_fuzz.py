"""Fuzzed batches: GradMLLoss gives a finite loss and finite gradients, or the package's own
ValueError/TypeError for invalid input, whatever the batch, dtype and hyper-parameters.

CI runs the derandomized profile (``_CI_EXAMPLES`` examples). The long run (documented in
docs/gradml.md)::

    PML_GROUPLOSS_FUZZ_EXAMPLES=2000 .venv/bin/python -m pytest \\
        tests/losses/test_gradml_loss_fuzz.py --hypothesis-show-statistics

Half precision: the loss is computed in float32 on the same values, so the gradient w.r.t. the
float16/bfloat16 tensor the loss receives must equal the float32 gradient rounded once to the
dtype. The only non-finite entries allowed are those whose exact (float32) value lies beyond the
dtype's range (float16: ``|g| >= 65520``, e.g. ``1/|x|`` of a row of norm 1e-6): IEEE rounding
gives ``inf`` there, as for every float16 op (and an autocast matmul upstream turns ``inf * 0``
into NaN in the leaf's gradient). Such examples are counted by the ``event`` statistics.
"""
import os

import pytest
import torch
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st
from pytorch_metric_learning.distances import LpDistance
from pytorch_metric_learning.reducers import MeanReducer, SumReducer

from pml_grouploss.losses import GradMLLoss

_CI_EXAMPLES = 250
_LONG_EXAMPLES = int(os.environ.get("PML_GROUPLOSS_FUZZ_EXAMPLES", "0") or 0)
_HEALTH = [HealthCheck.too_slow, HealthCheck.data_too_large]
settings.register_profile(
    "pml_grouploss_gradml_ci",
    derandomize=True,
    max_examples=_CI_EXAMPLES,
    deadline=None,
    suppress_health_check=_HEALTH,
)
settings.register_profile(
    "pml_grouploss_gradml_long",
    max_examples=max(_LONG_EXAMPLES, 1),
    deadline=None,
    suppress_health_check=_HEALTH,
)
# Applied as a decorator only (never load_profile): the profile of the other tests is untouched.
FUZZ = settings.get_profile(
    "pml_grouploss_gradml_long" if _LONG_EXAMPLES else "pml_grouploss_gradml_ci"
)

DTYPES = [torch.float32, torch.float64, torch.float16, torch.bfloat16]
MODES = ["direct", "autocast_bf16", "autocast_fp16"]
KINDS = ["normal", "duplicates", "zero_rows", "all_zero", "constant_rows", "sparse", "mixed_scale"]


def _embeddings(g: torch.Generator, n: int, d: int, kind: str, scale: float) -> torch.Tensor:
    """``(n, d)`` float64 embeddings of the given kind, times ``scale`` (still float64)."""
    e = torch.randn(n, d, generator=g, dtype=torch.float64)
    rows = torch.rand(n, generator=g) < 0.5
    if kind == "duplicates":
        e = e[torch.randint(0, max(1, n // 3), (n,), generator=g)]
    elif kind == "zero_rows":
        e[rows] = 0
    elif kind == "all_zero":
        e.zero_()
    elif kind == "constant_rows":
        e[rows] = e[rows, :1]
    elif kind == "sparse":
        e = e * (torch.rand(n, d, generator=g) < 0.2)
    elif kind == "mixed_scale":
        e = e * 10.0 ** torch.randint(-12, 13, (n, 1), generator=g).double()
    return e * scale


@st.composite
def cases(draw):
    n = draw(st.integers(1, 64))
    d = draw(st.integers(1, 8))
    m = draw(st.integers(1, 6))
    g = torch.Generator().manual_seed(draw(st.integers(0, 2**31 - 1)))
    kind = draw(st.sampled_from(KINDS))
    e64 = _embeddings(g, n, d, kind, 10.0 ** draw(st.integers(-30, 30)))
    labels = torch.randint(0, m, (n,), generator=g)
    params = dict(
        k=draw(st.floats(0.01, 10.0)),
        w=draw(st.floats(0.0, 100.0)),
        pos_weight=draw(st.floats(0.0, 100.0)),
        power=draw(st.sampled_from([1, 2])),
        reducer=draw(st.sampled_from(["mean", "sum"])),
    )
    dtype = draw(st.sampled_from(DTYPES))
    mode = draw(st.sampled_from(MODES))
    through_matmul = draw(st.booleans())  # under autocast: embeddings made by an autocast op
    return e64, labels, params, dtype, mode, through_matmul


def _loss_fn(params: dict, **override) -> GradMLLoss:
    p = {**params, **override}
    reducer = MeanReducer() if p["reducer"] == "mean" else SumReducer()
    return GradMLLoss(
        k=p["k"],
        w=p["w"],
        pos_weight=p["pos_weight"],
        distance=LpDistance(power=p["power"]),
        reducer=reducer,
    )


def _autocast(mode: str):
    if mode == "direct":
        return torch.autocast("cpu", enabled=False)
    return torch.autocast("cpu", dtype=torch.bfloat16 if mode == "autocast_bf16" else torch.float16)


def _embed(leaf: torch.Tensor, mode: str, through_matmul: bool) -> torch.Tensor:
    """What the loss receives: ``leaf``, or ``leaf @ I`` made by an autocast op."""
    with _autocast(mode):
        if mode != "direct" and through_matmul and leaf.dtype == torch.float32:
            return torch.mm(leaf, torch.eye(leaf.shape[1]))  # autocast casts to the fast dtype
        return leaf


def _forward(params: dict, e: torch.Tensor, labels: torch.Tensor, mode: str) -> torch.Tensor:
    with _autocast(mode):
        return _loss_fn(params)(e, labels)


def _overflows(value: float, dtype: torch.dtype) -> bool:
    return bool(torch.isinf(torch.tensor(value, dtype=torch.float64).to(dtype)))


@FUZZ
@given(cases())
def test_fuzzed_gradml_is_finite_or_raises_its_own_error(case):
    e64, labels, params, dtype, mode, through_matmul = case
    leaf = e64.to(dtype).requires_grad_(True)
    used = _embed(leaf, mode, through_matmul)
    if not torch.isfinite(used).all():
        # invalid input (1e30 does not fit float16, or an autocast matmul overflowed)
        event("invalid: non-finite embeddings")
        with pytest.raises(ValueError, match="NaN or inf"):
            _forward(params, used, labels, mode)
        return
    # the float32 (or float64) reference on the very same values, sub-loss by sub-loss
    ref_x = used.detach().to(torch.promote_types(used.dtype, torch.float32)).requires_grad_(True)
    ref = _loss_fn(params)(ref_x, labels)
    pos = _loss_fn(params, w=0.0)(ref_x.detach(), labels).item()
    neg = _loss_fn(params, pos_weight=0.0)(ref_x.detach(), labels).item()
    assert torch.isfinite(ref), (ref, params)
    if _overflows(pos, used.dtype) or _overflows(neg, used.dtype):
        event(f"invalid: loss beyond {used.dtype}")
        with pytest.raises(ValueError, match=f"not finite in {used.dtype}"):
            _forward(params, used, labels, mode)
        return
    loss = _forward(params, used, labels, mode)
    assert loss.dtype == used.dtype, (loss.dtype, used.dtype)
    assert torch.isfinite(loss), (loss, params)
    if used is not leaf:
        used.retain_grad()
    loss.backward()
    (ref_grad,) = torch.autograd.grad(ref, ref_x)
    assert torch.isfinite(ref_grad).all(), params
    # the gradient w.r.t. what the loss received: computed in float32 on the same values, it
    # is the reference's, rounded once to the dtype (inf only where that exact value overflows)
    assert torch.equal(used.grad, ref_grad.to(used.dtype)), params
    assert not torch.isnan(used.grad).any(), params
    if torch.isfinite(used.grad).all():
        assert torch.isfinite(leaf.grad).all(), params
        event("valid: finite loss and gradients")
    else:
        # float16 cannot hold the exact gradient: inf, as any float16 op (GradScaler's signal);
        # an autocast matmul upstream then turns inf * 0 into NaN in the leaf's gradient
        assert _overflows(ref_grad.abs().max().item(), used.dtype), params
        event(f"gradient beyond {used.dtype}: rounded to inf")
