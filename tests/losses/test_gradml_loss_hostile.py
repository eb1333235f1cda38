"""GradMLLoss on hostile input (issue 8, items 6-8): non-finite and integer embeddings,
half precision and autocast, hyper-parameters at the edge of their range."""
import pytest
import torch
import torch.nn.functional as F
from pytorch_metric_learning import distances as pml_distances
from pytorch_metric_learning import miners as pml_miners
from pytorch_metric_learning import reducers
from pytorch_metric_learning.utils import loss_and_miner_utils as lmu

from pml_grouploss import losses
from pml_grouploss.functional.gradml import safe_pow

MAX_K, MAX_WEIGHT = 10.0, 100.0  # the documented bounds of k and w (functional.gradml)

LABELS8 = torch.tensor([0, 0, 1, 1, 2, 2, 3, 3])


def unnormalized(**kwargs):
    with pytest.warns(UserWarning, match="unbounded below"):
        return losses.GradMLLoss(
            distance=pml_distances.LpDistance(normalize_embeddings=False, **kwargs.pop("d", {})),
            **kwargs,
        )


# ---------------------------------------------------------------- item 6: NaN / inf
@pytest.mark.parametrize("bad", [float("nan"), float("inf"), -float("inf")])
def test_non_finite_embeddings_rejected(bad):
    x = torch.randn(8, 4)
    x[3, 1] = bad
    with pytest.raises(ValueError, match="NaN or inf"):
        losses.GradMLLoss()(x.requires_grad_(True), LABELS8)


def test_non_finite_row_outside_the_mined_pairs_rejected():
    x = torch.randn(8, 4)
    x[7] = float("nan")
    pairs = tuple(torch.tensor([i]) for i in (0, 1, 0, 2))  # row 7 is in no pair
    with pytest.raises(ValueError, match="NaN or inf"):
        losses.GradMLLoss()(x, LABELS8, pairs)


def test_non_finite_ref_emb_rejected():
    ref = torch.randn(5, 4)
    ref[0, 0] = float("nan")
    with pytest.raises(ValueError, match="NaN or inf"):
        losses.GradMLLoss()(torch.randn(4, 4), LABELS8[:4], ref_emb=ref, ref_labels=LABELS8[:5])


# ---------------------------------------------------------------- item 8: integer embeddings
def test_integer_embeddings_type_error():
    with pytest.raises(TypeError, match="^embeddings must be a floating-point tensor"):
        losses.GradMLLoss()(torch.randint(0, 5, (8, 4)), LABELS8)
    ref = torch.randint(0, 5, (8, 4))
    with pytest.raises(TypeError, match="^ref_emb must be a floating-point tensor"):
        losses.GradMLLoss()(torch.randn(8, 4), LABELS8, ref_emb=ref, ref_labels=LABELS8)


def test_ref_emb_of_another_embedding_size_named():
    with pytest.raises(ValueError, match=r"embeddings and ref_emb .* got \(8, 4\) and \(5, 3\)"):
        losses.GradMLLoss()(torch.randn(8, 4), LABELS8, ref_emb=torch.randn(5, 3),
                            ref_labels=LABELS8[:5])


@pytest.mark.parametrize("ref_dtype", [torch.float64, torch.float16, torch.bfloat16])
def test_ref_emb_of_another_dtype_meets_the_embeddings_in_the_wider_one(ref_dtype):
    """A float64 ref_emb with float32 embeddings failed inside torch.cdist: both are now
    computed in float64 (float16/bfloat16 ones in float32), the loss returned in float32."""
    g = torch.Generator().manual_seed(0)
    x = torch.randn(6, 8, generator=g, requires_grad=True)
    ref, ref_labels = torch.randn(3, 8, generator=g).to(ref_dtype), torch.tensor([0, 1, 1])
    labels = torch.arange(6) // 3
    loss = losses.GradMLLoss()(x, labels, ref_emb=ref, ref_labels=ref_labels)
    (grad,) = torch.autograd.grad(loss, x)
    wide = torch.promote_types(torch.float32, ref_dtype)
    x_wide = x.detach().to(wide).requires_grad_(True)
    expected = losses.GradMLLoss()(x_wide, labels, ref_emb=ref.to(wide), ref_labels=ref_labels)
    (expected_grad,) = torch.autograd.grad(expected, x_wide)
    assert loss.dtype == grad.dtype == torch.float32
    assert loss.item() == pytest.approx(expected.item(), rel=1e-6)  # float32 rounding
    torch.testing.assert_close(grad, expected_grad.float())


# ---------------------------------------------------------------- item 7: half precision
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
@pytest.mark.parametrize("reducer", [None, reducers.SumReducer()])
def test_half_precision_equals_float32_on_the_same_values(dtype, reducer):
    torch.manual_seed(3)
    x = torch.randn(12, 5).to(dtype)
    labels = torch.arange(12) % 3
    xh = x.clone().requires_grad_(True)
    loss = losses.GradMLLoss(reducer=reducer)(xh, labels)
    loss.backward()
    x32 = x.float().requires_grad_(True)
    ref = losses.GradMLLoss(reducer=reducer)(x32, labels)
    ref.backward()
    assert loss.dtype == dtype and xh.grad.dtype == dtype
    # computed in float32 on the same values: the gradient is the float32 one, rounded once
    assert torch.equal(xh.grad, x32.grad.to(dtype))
    assert loss.float().item() == pytest.approx(ref.item(), rel=1e-2, abs=1e-2)


def test_float16_zero_row_gives_finite_gradients():
    bad = 0
    for seed in range(100):
        torch.manual_seed(seed)
        x = torch.randn(8, 4).half()
        x[0] = 0
        x.requires_grad_(True)
        loss = losses.GradMLLoss()(x, LABELS8)
        loss.backward()
        bad += int(not (torch.isfinite(loss) and torch.isfinite(x.grad).all()))
        assert torch.equal(x.grad[0], torch.zeros(4, dtype=torch.float16))
    assert bad == 0


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_cpu_autocast_with_float32_embeddings_is_the_float32_loss(dtype):
    torch.manual_seed(4)
    x = torch.randn(10, 6, requires_grad=True)
    labels = torch.arange(10) % 4
    ref = losses.GradMLLoss(k=3)(x, labels)
    with torch.autocast("cpu", dtype=dtype):
        loss = losses.GradMLLoss(k=3)(x, labels)
    assert loss.dtype == torch.float32 and loss.item() == ref.item()


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_cpu_autocast_half_embeddings_with_a_zero_row(dtype):
    torch.manual_seed(5)
    x = torch.randn(8, 6, requires_grad=True)
    lin = torch.nn.Linear(6, 6)
    with torch.autocast("cpu", dtype=dtype):
        e = lin(x)
        e = e * (torch.arange(8) != 2).to(e.dtype)[:, None]  # row 2 is exactly zero
        loss = losses.GradMLLoss(k=0.5)(e, LABELS8)
    loss.backward()
    assert e.dtype == dtype and loss.dtype == dtype
    assert torch.isfinite(loss) and torch.isfinite(x.grad).all()


# ---------------------------------------------------------------- item 8: hyper-parameters
@pytest.mark.parametrize(
    "kwargs, name",
    [
        ({"k": 200}, "k"),
        ({"k": 10.5}, "k"),
        ({"w": 1e300}, "w"),
        ({"w": 101}, "w"),
        ({"pos_weight": 1e3}, "pos_weight"),
    ],
)
def test_hyper_parameters_beyond_the_range_rejected(kwargs, name):
    with pytest.raises(ValueError, match=rf"^{name} must be a finite number .*<= (10|100)\b"):
        losses.GradMLLoss(**kwargs)


def test_largest_k_and_w_are_exact_in_float32():
    # antipodal points: d = 2, one negative pair, 100 * 2^10 = 102400 exactly
    x = torch.tensor([[1.0, 0.0], [-1.0, 0.0]], requires_grad=True)
    loss = losses.GradMLLoss(k=MAX_K, w=MAX_WEIGHT, reducer=reducers.SumReducer())(
        x, torch.tensor([0, 1])
    )
    assert loss.item() == -102400.0
    loss.backward()
    assert torch.isfinite(x.grad).all()


def test_float16_loss_overflow_raises_instead_of_inf():
    x = torch.tensor([[1.0, 0.0], [-1.0, 0.0]], dtype=torch.float16)
    loss_fn = losses.GradMLLoss(k=MAX_K, w=MAX_WEIGHT, reducer=reducers.SumReducer())
    with pytest.raises(ValueError, match="not finite in torch.float16"):
        loss_fn(x, torch.tensor([0, 1]))  # -102400 is beyond float16's 65504


def test_unnormalized_overflow_raises():
    x = torch.randn(6, 3) * 1e20  # squared distances 1e40: beyond float32
    with pytest.raises(ValueError, match="not finite in torch.float32.*normalize"):
        unnormalized()(x, torch.arange(6) % 2)


def test_small_k_on_subnormal_squared_distance_has_finite_gradient():
    # |x0 - x1| = 3e-23: squared it is float32's smallest subnormal; (d^2)^(k/2) with k = 0.01
    # had the derivative 0.005 * t^-0.995 = inf, and inf * 0 = nan on the second coordinate
    x = torch.tensor([[0.0, 0.0], [3e-23, 0.0], [1.0, 1.0], [2.0, 1.0]], requires_grad=True)
    loss = unnormalized(k=0.01, d={"power": 2})(x, torch.tensor([0, 0, 1, 1]))
    loss.backward()
    assert torch.isfinite(loss) and torch.isfinite(x.grad).all()


def test_safe_pow_derivative_is_capped_not_infinite():
    t = torch.tensor([0.0, 1.4e-45, 1e-8, 0.25], requires_grad=True)
    out = safe_pow(t, 0.005)
    (g,) = torch.autograd.grad(out.sum(), t)
    cap = float(torch.finfo(torch.float32).max) ** (1 / 3)
    assert out[0].item() == 0.0 and out[3].item() == pytest.approx(0.25**0.005)
    assert g[0].item() == 0.0 and g[1].item() == pytest.approx(cap, rel=1e-5)
    # uncapped where representable: 0.005 * t^-0.995
    assert g[2].item() == pytest.approx(0.005 * 1e-8**-0.995, rel=1e-5)
    assert g[3].item() == pytest.approx(0.005 * 0.25**-0.995, rel=1e-5)


def test_small_k_near_duplicates_pair_miner_finite():
    torch.manual_seed(6)
    x = torch.randn(20, 4, dtype=torch.float64)
    x[1] = x[0] + 1e-300
    x[5] = x[4]
    x.requires_grad_(True)
    labels = torch.arange(20) % 5
    pairs = pml_miners.PairMarginMiner(pos_margin=0, neg_margin=10)(x, labels)
    loss = losses.GradMLLoss(k=0.01, distance=pml_distances.LpDistance(power=2))(x, labels, pairs)
    loss.backward()
    assert torch.isfinite(loss) and torch.isfinite(x.grad).all()


@pytest.mark.parametrize(
    "pairs, match",
    [
        ((torch.tensor([0, 6]), torch.tensor([1, 2]), torch.tensor([0]), torch.tensor([3])),
         r"\[0, 6\) \(the rows of embeddings\), got values in \[0, 6\]"),
        ((torch.tensor([0]), torch.tensor([1]), torch.tensor([0]), torch.tensor([-1])),
         r"\[0, 6\) \(the rows of ref_emb\), got values in \[-1, -1\]"),
        ((torch.tensor([0, 1]), torch.tensor([1]), torch.tensor([0]), torch.tensor([3])),
         "len\\(a1\\) == len\\(p\\)"),
        ((torch.tensor([0.0]), torch.tensor([1]), torch.tensor([0]), torch.tensor([3])),
         "anchors of positive pairs must be a 1-D integer tensor"),
        ((torch.tensor([0]), torch.tensor([1])), "pairs \\(a1, p, a2, n\\) or triplets"),
    ],
)
def test_malformed_indices_tuple_named(pairs, match):
    x = torch.randn(6, 3)
    with pytest.raises((ValueError, TypeError), match=match):
        losses.GradMLLoss()(x, torch.tensor([0, 0, 1, 1, 2, 2]), pairs)


def test_indices_into_ref_emb_checked_against_its_rows():
    x, ref = torch.randn(2, 3), torch.randn(5, 3)
    pairs = (torch.tensor([0]), torch.tensor([4]), torch.tensor([1]), torch.tensor([3]))
    ok = losses.GradMLLoss()(x, None, pairs, ref_emb=ref)
    assert torch.isfinite(ok)
    with pytest.raises(ValueError, match=r"\[0, 2\) \(the rows of embeddings\)"):
        losses.GradMLLoss()(x, None, (pairs[1],) + pairs[1:], ref_emb=ref)


def _batch_of_4x4():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(16, 5, generator=g, dtype=torch.float64)
    return x, torch.arange(4).repeat_interleave(4)


@pytest.mark.parametrize(
    "make_reducer",
    [
        reducers.PerAnchorReducer,
        lambda: reducers.PerAnchorReducer(reducers.SumReducer()),
        lambda: reducers.ClassWeightedReducer(torch.tensor([0.0, 0.0, 0.0, 1.0])),
        lambda: reducers.MultipleReducers({"neg_loss": reducers.PerAnchorReducer()}),
    ],
)
def test_anchor_weighting_reducers_get_pmls_ordered_pairs(make_reducer):
    # PML's value: the same loss on PML's own all-pairs tuple, (i, j) and (j, i). On unordered
    # pairs i < j class 3 (the last 4 samples) anchored no negative pair: ClassWeightedReducer
    # with weight 1 on class 3 only gave +0.42 instead of -0.149.
    x, labels = _batch_of_4x4()
    value = losses.GradMLLoss(reducer=make_reducer())(x, labels)
    pml = losses.GradMLLoss(reducer=make_reducer())(x, labels, lmu.get_all_pairs_indices(labels))
    assert value.item() == pytest.approx(pml.item(), rel=1e-12)


def test_class_weighted_reducer_hand_value():
    x, labels = _batch_of_4x4()
    weights = torch.tensor([0.0, 0.0, 0.0, 1.0], dtype=torch.float64)
    value = losses.GradMLLoss(reducer=reducers.ClassWeightedReducer(weights))(x, labels)
    d2 = torch.cdist(F.normalize(x), F.normalize(x)) ** 2
    same = labels[:, None] == labels[None, :]
    off = ~torch.eye(16, dtype=torch.bool)
    anchor_w = weights[labels][:, None].expand(16, 16)
    pos = (d2 * anchor_w)[same & off].mean()  # mean over all ordered positive pairs
    neg = (d2 * anchor_w)[~same].mean()
    assert value.item() == pytest.approx((pos - neg).item(), rel=1e-12)
    assert value.item() < 0  # class 3's negatives outweigh its positives


@pytest.mark.parametrize(
    "reducer", [reducers.ThresholdReducer(high=0.5), reducers.ThresholdReducer(low=-10.0)]
)
def test_threshold_reducers_keeping_negatives_allowed(reducer):
    x, labels = _batch_of_4x4()
    parts = losses.GradMLLoss(reducer=reducers.DoNothingReducer())(x, labels)
    pos, neg = parts["pos_loss"]["losses"], parts["neg_loss"]["losses"]
    low = -float("inf") if reducer.low is None else reducer.low
    high = float("inf") if reducer.high is None else reducer.high
    keep = lambda t: t[(t > low) & (t < high)].mean()  # noqa: E731
    value = losses.GradMLLoss(reducer=reducer)(x, labels)
    assert value.item() == pytest.approx((keep(pos) + keep(neg)).item(), rel=1e-12)


def test_divisor_reducer_rejected_with_the_fix():
    with pytest.raises(ValueError, match="DivisorReducer.*SumReducer"):
        losses.GradMLLoss(reducer=reducers.DivisorReducer())
    with pytest.raises(ValueError, match="DivisorReducer"):
        reducer = reducers.MultipleReducers({"pos_loss": reducers.DivisorReducer()})
        losses.GradMLLoss(reducer=reducer)


@pytest.mark.parametrize("wrapper", ["CrossBatchMemory", "SelfSupervisedLoss"])
def test_pml_wrappers_with_allow_lists_refuse_gradml(wrapper):
    from pytorch_metric_learning import losses as pml_losses

    args = (16,) if wrapper == "CrossBatchMemory" else ()
    with pytest.raises(Exception, match=f"{wrapper} not supported for GradMLLoss"):
        getattr(pml_losses, wrapper)(losses.GradMLLoss(), *args)
