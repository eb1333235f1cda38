"""GroupLoss on hostile input (issue 8 items 1-5, 9) and its guards (frozen classifier,
collapsed batch): each test failed on the code before the fix."""
import warnings

import numpy as np
import pytest
import torch
from pytorch_metric_learning import distances as pml_distances

from pml_grouploss import functional, losses


def _grads(loss_fn, e, labels, indices_tuple=None):
    e = e.detach().clone().requires_grad_(True)
    loss = loss_fn(e, labels, indices_tuple)
    loss.backward()
    return loss, e.grad


@pytest.mark.parametrize("seed", range(6))
def test_many_replicator_steps_have_finite_gradients_in_float32(seed):
    """Item 1: T=50 on 200x32, 25 classes gave NaN gradients in float32 (6 of the first 20
    seeds); the dynamics now run on log X."""
    g = torch.Generator().manual_seed(seed)
    e, labels = torch.randn(200, 32, generator=g), torch.randint(0, 25, (200,), generator=g)
    torch.manual_seed(seed)
    loss_fn = losses.GroupLoss(25, 32, num_iterations=50)
    loss, grad = _grads(loss_fn, e, labels)
    assert torch.isfinite(loss) and torch.isfinite(grad).all()
    assert torch.isfinite(loss_fn.W.grad).all() and grad.abs().sum() > 0


def test_cosine_zero_diagonal_large_and_zero_rows_finite():
    """Item 1, second case: CosineSimilarity, zero_diagonal, T=8 on a 4x1 batch."""
    e = torch.tensor([[1e30], [0.0], [-3e29], [0.0]])
    loss_fn = losses.GroupLoss(2, 1, num_iterations=8, zero_diagonal=True,
                               distance=pml_distances.CosineSimilarity())
    loss, grad = _grads(loss_fn, e, torch.tensor([0, 1, 0, 1]))
    assert torch.isfinite(loss) and torch.isfinite(grad).all()


def test_log_dynamics_equal_the_x_space_formula_in_float64():
    g = torch.Generator().manual_seed(1)
    W = functional.pearson_similarity(torch.randn(10, 6, generator=g, dtype=torch.float64))
    X = torch.softmax(torch.randn(10, 4, generator=g, dtype=torch.float64), 1)
    log_XT = functional.log_replicator_dynamics(W, X.log(), 7)
    np.testing.assert_allclose(log_XT.exp().numpy(),
                               functional.replicator_dynamics(W, X, 7).numpy(), rtol=1e-12)


def test_negatives_none_is_rejected_with_the_reason():
    """Item 2: 'none' gave NaN losses on 2 of 3 random batches."""
    with pytest.raises(ValueError, match="simplex"):
        losses.GroupLoss(3, 8, negatives="none")


@pytest.mark.parametrize("dtype", [torch.int32, torch.int16, torch.int8, torch.uint8])
def test_any_integer_label_dtype(dtype):
    """Item 3: int32/16/8/uint8 labels crashed inside torch.one_hot."""
    e = torch.randn(8, 5, generator=torch.Generator().manual_seed(0))
    labels = torch.tensor([0, 0, 1, 1, 2, 2, 0, 1])
    torch.manual_seed(0)
    loss_fn = losses.GroupLoss(3, 5)
    expected = loss_fn(e, labels).item()
    assert loss_fn(e, labels.to(dtype)).item() == expected


@pytest.mark.parametrize("dtype", [torch.int64, torch.int32, torch.bool])
def test_integer_embeddings_are_a_type_error(dtype):
    """Item 4: integer embeddings were truncated silently (loss 3 instead of 3.44)."""
    with pytest.raises(TypeError, match=r"embeddings must be a floating-point"):
        losses.GroupLoss(3, 2)(torch.ones(4, 2, dtype=dtype), torch.tensor([0, 1, 2, 0]))


def test_boolean_anchor_mask_is_a_mask_and_float_indices_are_rejected():
    """Item 5: a boolean mask was cast to indices 1,0,1,0; float indices were truncated."""
    e = torch.randn(4, 3, generator=torch.Generator().manual_seed(0))
    labels = torch.tensor([0, 1, 0, 1])
    loss_fn = losses.GroupLoss(2, 3, collect_stats=True)
    masked = loss_fn(e, labels, (torch.tensor([True, False, True, False]),))
    assert loss_fn.num_anchors_used == 2
    assert masked.item() == loss_fn(e, labels, (torch.tensor([0, 2]),)).item()
    with pytest.raises(TypeError, match="boolean mask"):
        loss_fn(e, labels, (torch.tensor([0.0, 2.0]),))
    with pytest.raises(ValueError, match="one entry per sample"):
        loss_fn(e, labels, (torch.tensor([True, False]),))


@pytest.mark.parametrize("scale", [1e38, 1e30, 1e-30])
def test_extreme_scales_give_finite_loss_and_gradients(scale):
    """Item 9: x1e38 gave an inf loss (logits overflow)."""
    unit = torch.randn(12, 64, generator=torch.Generator().manual_seed(0)).clamp(-3, 3)
    labels = torch.arange(3).repeat(4)
    torch.manual_seed(0)
    loss_fn = losses.GroupLoss(3, 64)
    loss, grad = _grads(loss_fn, unit * scale, labels)
    assert torch.isfinite(loss) and torch.isfinite(grad).all()
    reference, _ = _grads(loss_fn, unit, labels)
    # scale-invariant: the classifier sees sqrt(d) x/||x||, the similarity is a correlation
    assert loss.item() == pytest.approx(reference.item(), rel=1e-5)


def test_subnormal_embeddings_and_overflowing_logits_are_value_errors():
    """Item 9: x1e-40 gave inf gradients; raw logits of 1e38 embeddings overflow."""
    e = torch.randn(6, 64, generator=torch.Generator().manual_seed(0)).clamp(-3, 3)
    labels = torch.tensor([0, 1, 2, 0, 1, 2])
    with pytest.raises(ValueError, match="smallest normal"):
        losses.GroupLoss(3, 64)(e * 1e-40, labels)
    raw = losses.GroupLoss(3, 64, normalize_embeddings=False)
    with torch.no_grad():
        raw.W.fill_(1.0)
    with pytest.raises(ValueError, match="normalize_embeddings=True"):
        raw(e.abs() * 1e38, labels)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.bfloat16])
def test_finite_logits_whose_cross_entropy_overflows_are_value_errors(dtype):
    """Raw embeddings at half the dtype's largest value gave an inf loss (the logits were
    finite, the CE up to twice their magnitude is not)."""
    labels = torch.tensor([0, 0, 0, 1, 1, 1])
    for seed in range(3):
        unit = torch.randn(6, 8, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)
        e = (unit / unit.abs().max() * torch.finfo(dtype).max * 0.5).to(dtype)
        torch.manual_seed(0)
        with pytest.raises(ValueError, match="too large for normalize_embeddings=False"):
            losses.GroupLoss(5, 8, normalize_embeddings=False)(e, labels)


def test_the_logit_bound_scales_with_ce_weight_and_keeps_the_loss_finite_below_it():
    """The check refuses logits above max / (4 max(1, ce_weight)): the loss just below it is
    finite at ce_weight 1 and 100, in float16 (the loss's dtype) too."""
    labels = torch.tensor([0, 0, 0, 1, 1, 1])
    for dtype, ce_weight in ((torch.float32, 1.0), (torch.float32, 100.0), (torch.float16, 1.0)):
        limit = torch.finfo(dtype).max / (4 * ce_weight)
        torch.manual_seed(0)
        loss_fn = losses.GroupLoss(2, 4, ce_weight=ce_weight)
        with torch.no_grad():
            loss_fn.W.copy_(torch.tensor([[1.0, 0, 0, 0], [-1.0, 0, 0, 0]]))
            loss_fn.bias.zero_()
        sign = torch.tensor([1.0, 1.0, -1.0, 1.0, -1.0, -1.0]).view(-1, 1)
        e = (sign * torch.tensor([[1.0, 0, 0, 0]]) + 1e-2 * torch.randn(6, 4)).to(dtype)
        # logits = sqrt(4) x/||x|| . W: magnitude ~2 times the scale of W
        with torch.no_grad():
            loss_fn.W.mul_(0.45 * limit)
        loss, grad = _grads(loss_fn, e.requires_grad_(), labels)
        assert loss.dtype == dtype and torch.isfinite(loss) and torch.isfinite(grad).all()
        with torch.no_grad():
            loss_fn.W.mul_(1.2)  # logits ~1.08 x the bound
        with pytest.raises(ValueError, match="grown too large"):
            loss_fn(e, labels)


def test_overflow_of_a_normalised_classifier_input_blames_the_classifier():
    loss_fn = losses.GroupLoss(3, 4)
    with torch.no_grad():
        loss_fn.W.fill_(1e38)  # finite: a diverged optimizer
    noise = torch.randn(9, 4, generator=torch.Generator().manual_seed(0))
    e = torch.tensor([[1.0, 1.0, 1.0, 2.0]]).repeat(9, 1) + 0.1 * noise  # logits ~3.8e38
    with pytest.raises(ValueError, match="grown too large.*metric_loss_optimizer") as error:
        loss_fn(e, torch.arange(3).repeat(3))
    assert "normalize_embeddings" not in str(error.value)


def test_frozen_classifier_warns_once_naming_the_optimizer():
    """Issue 11: training without metric_loss_optimizer left W unchanged silently."""
    loss_fn = losses.GroupLoss(3, 4)
    trunk = torch.nn.Linear(4, 4)
    opt = torch.optim.SGD(trunk.parameters(), lr=0.1)  # the classifier is forgotten
    e, labels = torch.randn(6, 4), torch.tensor([0, 1, 2, 0, 1, 2])
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        for _ in range(6):
            opt.zero_grad()
            loss_fn(trunk(e), labels).backward()
            opt.step()
    messages = [str(w.message) for w in caught if "metric_loss_optimizer" in str(w.message)]
    assert len(messages) == 1


def test_optimized_classifier_does_not_warn():
    loss_fn = losses.GroupLoss(3, 4)
    opt = torch.optim.SGD(loss_fn.parameters(), lr=0.1)
    # 3 samples per class: with 2 (= num_anchors) every sample is an anchor, which warns
    e, labels = torch.randn(9, 4), torch.tensor([0, 1, 2] * 3)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        for _ in range(6):
            opt.zero_grad(set_to_none=False)
            loss_fn(e, labels).backward()
            opt.step()


def _accumulate(loss_fn, optimizers, cycles: int = 3, micro_batches: int = 4):
    """``cycles`` optimizer steps over ``micro_batches`` accumulated backward passes each;
    the frozen-classifier warnings raised."""
    trunk = optimizers[0].param_groups[0]["params"][0]
    labels = torch.tensor([0, 1, 2] * 3)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        for _ in range(cycles):
            for _ in range(micro_batches):
                e = torch.randn(9, 4) @ trunk
                (loss_fn(e, labels) / micro_batches).backward()
            for opt in optimizers:
                opt.step()
                opt.zero_grad()
    return [str(w.message) for w in caught if "metric_loss_optimizer" in str(w.message)]


def test_gradient_accumulation_does_not_warn_and_a_forgotten_optimizer_still_does():
    """Accumulating 4 micro-batches per step warned at the 4th call that the classifier had
    no optimizer (its calls were counted, not optimizer steps)."""
    torch.manual_seed(0)
    loss_fn, trunk = losses.GroupLoss(3, 4), torch.nn.Parameter(torch.eye(4))
    stepped = [torch.optim.SGD([trunk], lr=0.1), torch.optim.Adam(loss_fn.parameters())]
    assert _accumulate(loss_fn, stepped) == []
    forgotten = losses.GroupLoss(3, 4)
    warned = _accumulate(forgotten, [torch.optim.SGD([trunk], lr=0.1)], cycles=4)
    assert len(warned) == 1 and "while optimizers stepped 3 times" in warned[0]


def test_collapsed_batch_warns_once():
    loss_fn = losses.GroupLoss(3, 4)
    labels = torch.tensor([0, 1, 2] * 3)
    with pytest.warns(UserWarning, match="collapsed"):
        loss_fn(torch.ones(9, 4), labels)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        loss_fn(torch.ones(9, 4), labels)


def test_collapse_is_reported_on_the_next_scheduled_call():
    """The diagnostic warnings read the device on calls 1, 2, 4, 8, ... (validate=None): a
    trunk that collapses at call 5 is reported at call 8, not before."""
    loss_fn = losses.GroupLoss(3, 4)
    labels = torch.tensor([0, 1, 2] * 3)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        for call in range(1, 9):
            e = torch.ones(9, 4) if call >= 5 else torch.randn(9, 4)
            loss_fn(e, labels)
            collapsed = [w for w in caught if "collapsed" in str(w.message)]
            assert len(collapsed) == (call == 8), call
            caught.clear()


def test_diverged_classifier_is_named():
    """NaN in the loss's own parameters (a metric_loss_optimizer that diverged) made a NaN
    loss, later reported as overflowing logits; the error now names the classifier."""
    loss_fn = losses.GroupLoss(3, 4)
    with torch.no_grad():
        loss_fn.W[1, 2] = float("nan")
    with pytest.raises(ValueError,
                       match=r"loss\.W, loss\.bias\) contain NaN.*metric_loss_optimizer"):
        loss_fn(torch.randn(9, 4), torch.tensor([0, 1, 2] * 3))


@pytest.mark.parametrize("ce_weight", [1.0, 0.0])
def test_all_anchor_batch_warns_once_that_nothing_is_refined(ce_weight):
    """2 samples per class with num_anchors=2 (MPerClassSampler(m=2)): every row of X(0) is
    one-hot, the NLL is -log(1 + 1e-12) for every sample, and the loss is the CE alone."""
    torch.manual_seed(0)
    e, labels = torch.randn(6, 4), torch.tensor([0, 1, 2] * 2)
    loss_fn = losses.GroupLoss(3, 4, ce_weight=ce_weight)
    with pytest.warns(UserWarning, match="every sample of the batch is an anchor") as caught:
        loss = loss_fn(e, labels)
    assert "m > num_anchors" in str(caught[0].message)
    ce = torch.nn.functional.cross_entropy(loss_fn.get_logits(e), labels)
    assert torch.allclose(loss, ce_weight * ce, atol=1e-6)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        loss_fn(e, labels)  # once per loss
        losses.GroupLoss(3, 4, num_anchors=1)(e, labels)  # one free sample per class
        losses.GroupLoss(3, 4)(e[:1], labels[:1])  # a single sample is no batch to refine


def test_float16_subnormal_rows_are_rejected_by_the_float16_limit():
    """The fuzz's float16 batch of magnitude 5e-6 (subnormal in float16) gave inf gradients."""
    e = torch.tensor([[2.0862e-06, 2.6822e-06, 5.4836e-06]], dtype=torch.float16)
    with pytest.raises(ValueError, match="6.1e-05"):
        losses.GroupLoss(2, 3)(e, torch.tensor([0]))
