"""PearsonCorrelation: numpy's row correlations, a PML similarity; with power=p the signed power
sign(c)|c|^p (same rankings, W = relu(c)^p inside GroupLoss, finite gradients, power=1 bit for
bit the plain correlation)."""
import numpy as np
import pytest
import torch
from pytorch_metric_learning.losses import ContrastiveLoss
from pytorch_metric_learning.utils.accuracy_calculator import AccuracyCalculator
from pytorch_metric_learning.utils.inference import CustomKNN

from pml_grouploss.distances import PearsonCorrelation
from pml_grouploss.functional import replicator_dynamics, standardize_rows
from pml_grouploss.functional.group_loss import refined_label_loss
from pml_grouploss.losses import GroupLoss


def test_matrix_is_corrcoef_and_inverted():
    x = torch.randn(5, 7, dtype=torch.float64)
    y = torch.randn(4, 7, dtype=torch.float64)
    d = PearsonCorrelation()
    assert d.is_inverted
    full = np.corrcoef(np.concatenate([x.numpy(), y.numpy()]))
    np.testing.assert_allclose(d(x).numpy(), full[:5, :5], atol=1e-13)
    np.testing.assert_allclose(d(x, y).numpy(), full[:5, 5:], atol=1e-13)
    pair = d.pairwise_distance(d.normalize(x[:4]), d.normalize(y))
    np.testing.assert_allclose(pair.numpy(), np.diag(full[:4, 5:]), atol=1e-13)
    assert d.smallest_dist(torch.tensor([0.1, 0.9])) == 0.9


def test_knn_with_pearson_ignores_offsets():
    # Items equal to a reference up to scale and offset must be its nearest neighbours.
    ref = torch.randn(10, 16)
    query = ref * 3.0 + 7.0
    knn = CustomKNN(PearsonCorrelation())
    distances, indices = knn(query, 1, ref, False)
    assert indices[:, 0].tolist() == list(range(10))
    calc = AccuracyCalculator(include=("precision_at_1",), knn_func=knn)
    acc = calc.get_accuracy(query, torch.arange(10), ref, torch.arange(10), False)
    assert acc["precision_at_1"] == 1.0


def test_usable_by_pml_losses():
    e = torch.randn(8, 6, requires_grad=True)
    labels = torch.tensor([0, 0, 1, 1, 2, 2, 3, 3])
    loss = ContrastiveLoss(pos_margin=1, neg_margin=0, distance=PearsonCorrelation())(e, labels)
    loss.backward()
    assert torch.isfinite(loss) and torch.isfinite(e.grad).all() and loss > 0


@pytest.mark.parametrize(
    "kwargs", [dict(normalize_embeddings=False), dict(p=1), dict(is_inverted=False)])
def test_rejects_options_that_change_its_meaning(kwargs):
    with pytest.raises(ValueError, match=list(kwargs)[0]):
        PearsonCorrelation(**kwargs)


def test_nan_row_is_not_hidden_from_knn_or_losses():
    e = torch.randn(8, 6)
    e[2, 0] = float("nan")
    labels = torch.tensor([0, 0, 1, 1, 2, 2, 3, 3])
    mat = PearsonCorrelation()(e)
    assert torch.isnan(mat[2]).all() and torch.isnan(mat[:, 2]).all()
    assert torch.isfinite(mat[[0, 1, 3]][:, [0, 1, 3]]).all()
    # a PML loss sees the NaN (it used to train on a silent correlation of 0); MeanReducer, as
    # PML's default AvgNonZeroReducer drops NaN terms itself (NaN > 0 is False)
    from pytorch_metric_learning.reducers import MeanReducer

    loss_fn = ContrastiveLoss(
        pos_margin=1, neg_margin=0, distance=PearsonCorrelation(), reducer=MeanReducer()
    )
    loss = loss_fn(e, labels)
    assert torch.isnan(loss)
    distances, _ = CustomKNN(PearsonCorrelation())(e[2:3], 3, e, False)
    assert torch.isnan(distances).all()


# -- power ----------------------------------------------------------------------------------
def _x(n=10, d=7, seed=0):
    return torch.randn(n, d, dtype=torch.float64, generator=torch.Generator().manual_seed(seed))


@pytest.mark.parametrize("power", [1.5, 2.0, 3.0, 4.5])
def test_matrix_is_the_signed_power_of_corrcoef(power):
    x, y = _x(6), _x(4, seed=1)
    full = np.corrcoef(np.concatenate([x.numpy(), y.numpy()]))
    signed = np.sign(full) * np.abs(full) ** power
    d = PearsonCorrelation(power=power)
    assert d.power == power  # recorded by record-keeper as PML's power
    np.testing.assert_allclose(d(x).numpy(), signed[:6, :6], rtol=0, atol=1e-13)
    np.testing.assert_allclose(d(x, y).numpy(), signed[:6, 6:], rtol=0, atol=1e-13)
    assert (d(x).numpy()[full[:6, :6] < 0] < 0).all()  # the sign is kept
    pair = d.pairwise_distance(d.normalize(x[:4]), d.normalize(y))
    np.testing.assert_allclose(pair.numpy(), np.diag(signed[:4, 6:]), rtol=0, atol=1e-13)


def test_power_one_is_bit_identical_to_the_plain_correlation():
    x, y = _x(), _x(5, seed=1)
    q, r = standardize_rows(x), standardize_rows(y)
    assert torch.equal(PearsonCorrelation(power=1.0)(x), q @ q.T)
    assert torch.equal(PearsonCorrelation(power=1)(x, y), q @ r.T)
    assert torch.equal(PearsonCorrelation()(x), PearsonCorrelation(power=1.0)(x))
    labels = torch.arange(5).repeat(2)
    torch.manual_seed(3)
    default = GroupLoss(5, 7, num_iterations=2).double()
    explicit = GroupLoss(5, 7, num_iterations=2, distance=PearsonCorrelation(power=1.0)).double()
    explicit.load_state_dict(default.state_dict())
    e1, e2 = x.clone().requires_grad_(True), x.clone().requires_grad_(True)
    l1, l2 = default(e1, labels), explicit(e2, labels)
    l1.backward()
    l2.backward()
    assert torch.equal(l1, l2) and torch.equal(e1.grad, e2.grad)


def test_rankings_are_those_of_the_plain_correlation():
    query, ref = _x(12, 16, seed=2).float(), _x(30, 16, seed=3).float()
    _, plain = CustomKNN(PearsonCorrelation())(query, 5, ref, False)
    _, sharp = CustomKNN(PearsonCorrelation(power=3.0))(query, 5, ref, False)
    assert torch.equal(plain, sharp)


@pytest.mark.parametrize("power", [2.0, 3.0])
def test_grouploss_uses_w_relu_c_to_the_power(power):
    """The loss value equals the refinement on W = relu(corrcoef)^p, diagonal 1 (by hand)."""
    x = _x(12, 8, seed=4)
    labels = torch.arange(4).repeat(3)
    anchors = torch.tensor([0, 1, 2, 3])
    torch.manual_seed(0)
    loss = GroupLoss(4, 8, temperature=2.0, num_iterations=3,
                     distance=PearsonCorrelation(power=power)).double()
    value = loss(x, labels, (anchors,))
    c = np.corrcoef(x.numpy())
    W = np.maximum(c, 0) ** power
    np.fill_diagonal(W, 1.0)
    hand = refined_label_loss(torch.from_numpy(W), loss.get_logits(x), labels, anchors,
                              temperature=2.0, num_iterations=3)["loss"]
    assert value.item() == pytest.approx(hand.item(), rel=1e-12)
    torch.manual_seed(0)
    plain = GroupLoss(4, 8, temperature=2.0, num_iterations=3).double()
    assert abs(plain(x, labels, (anchors,)).item() - value.item()) > 1e-3  # the power acts


def test_a_temperature_on_w_would_not_change_the_dynamics():
    """Why a power: the replicator dynamics are invariant to scaling W."""
    W = torch.relu(PearsonCorrelation()(_x(9, 6, seed=5)))
    X = torch.softmax(_x(9, 4, seed=6), dim=1)
    torch.testing.assert_close(replicator_dynamics(W / 7.0, X, 3), replicator_dynamics(W, X, 3),
                               rtol=1e-14, atol=0)
    assert not torch.allclose(replicator_dynamics(W**3, X, 3), replicator_dynamics(W, X, 3))


@pytest.mark.parametrize("power", [1.0, 1.5, 2.0, 3.0])
def test_gradcheck(power):
    d = PearsonCorrelation(power=power)
    x, y = _x(5, 6, seed=7).requires_grad_(True), _x(4, 6, seed=8).requires_grad_(True)
    assert torch.autograd.gradcheck(lambda a, b: d(a, b), (x, y))
    assert torch.autograd.gradgradcheck(lambda a: d(a), (x,))


@pytest.mark.parametrize("power", [1.5, 2.0])
def test_gradcheck_through_grouploss(power):
    torch.manual_seed(0)
    loss = GroupLoss(3, 6, temperature=2.0, num_iterations=2,
                     distance=PearsonCorrelation(power=power)).double()
    labels = torch.arange(3).repeat(3)
    x = _x(9, 6, seed=9).requires_grad_(True)
    assert torch.autograd.gradcheck(lambda e: loss(e, labels), (x,))


@pytest.mark.parametrize("power", [1.5, 2.0, 3.0])
def test_gradient_is_finite_at_zero_correlation(power):
    # rows 0 and 1 are uncorrelated exactly; row 2 is constant (correlation 0 with everything)
    x = torch.tensor([[1.0, -1.0, 0.0, 0.0], [0.0, 0.0, 1.0, -1.0], [2.0, 2.0, 2.0, 2.0]],
                     dtype=torch.float64, requires_grad=True)
    mat = PearsonCorrelation(power=power)(x)
    assert mat[0, 1] == 0 and (mat[2] == 0).all()
    (grad,) = torch.autograd.grad(mat.sum(), x)
    assert torch.isfinite(grad).all()
    # d/dc sign(c)|c|^p = p|c|^(p-1) = 0 at c = 0: only the diagonal terms remain (their
    # gradient is 0 for a correlation of a row with itself)
    torch.testing.assert_close(grad, torch.zeros_like(grad), rtol=0, atol=1e-14)


@pytest.mark.parametrize("power,error", [(0.5, ValueError), (0.0, ValueError), (-2, ValueError),
                                         (float("inf"), ValueError), (float("nan"), ValueError),
                                         ("2", TypeError), (True, TypeError)])
def test_bad_power_names_it(power, error):
    with pytest.raises(error, match="power"):
        PearsonCorrelation(power=power)


@pytest.mark.parametrize("power", [1.0, 2.0])
def test_bad_embeddings_are_named(power):
    dist = PearsonCorrelation(power=power)
    with pytest.raises(ValueError, match=r"query_emb and ref_emb .* got \(5, 4\) and \(3, 6\)"):
        dist(torch.randn(5, 4), torch.randn(3, 6))
    with pytest.raises(TypeError, match="query_emb must be a floating-point tensor"):
        dist(torch.ones(3, 4, dtype=torch.long))
    with pytest.raises(TypeError, match="ref_emb must be a floating-point tensor"):
        dist(torch.randn(3, 4), torch.ones(3, 4, dtype=torch.long))


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_half_precision_rows_with_an_offset_keep_their_correlation(dtype):
    # pooled-feature-like rows (offset 10, spread 0.5): in their own precision a rounding-level
    # floor called every row constant and the bfloat16 matrix was all zeros
    g = torch.Generator().manual_seed(0)
    x = (10 + 0.5 * torch.randn(4, 512, generator=g)).to(dtype)
    exact = torch.from_numpy(np.corrcoef(x.double().numpy()))
    for mat in (PearsonCorrelation()(x), PearsonCorrelation()(x, x[:3])[:, :3].contiguous()):
        assert mat.dtype == dtype
        step = 2 ** -8 if dtype == torch.bfloat16 else 2 ** -11  # half a unit at 1
        assert torch.allclose(mat.double(), exact[:, :mat.shape[1]], atol=step, rtol=0)
        assert mat.abs().max() <= 1  # the diagonal is 1, not 1.0078
    z = standardize_rows(x)
    assert z.dtype == dtype and torch.allclose(
        z.double().norm(dim=1), torch.ones(4, dtype=torch.float64), atol=0.01)


def test_pairwise_distance_is_the_correlation_of_raw_rows():
    # PML's MatchFinder.is_match passes raw embeddings, InferenceModel L2-normalised ones
    from pytorch_metric_learning.utils.inference import MatchFinder

    g = torch.Generator().manual_seed(1)
    x = 3 + torch.randn(6, 32, generator=g)
    y = torch.randn(6, 32, generator=g)
    y[:3] = x[:3] * 2 + 0.1 * y[:3]  # pairs 0-2 correlate ~1, pairs 3-5 ~0
    diagonal = PearsonCorrelation()(x, y).diagonal()
    for a, b in ((x, y), (torch.nn.functional.normalize(x), torch.nn.functional.normalize(y))):
        assert torch.allclose(PearsonCorrelation().pairwise_distance(a, b), diagonal, atol=1e-6)
    assert torch.allclose(PearsonCorrelation(power=2).pairwise_distance(x, y),
                          PearsonCorrelation(power=2)(x, y).diagonal(), atol=1e-6)
    matches = MatchFinder(PearsonCorrelation(), threshold=0.9).is_match(x, y)
    assert matches.tolist() == [True] * 3 + [False] * 3


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.float16, torch.bfloat16])
def test_subnormal_embedding_gives_finite_loss_and_gradient(dtype):
    # PML's ContrastiveLoss over PearsonCorrelation: a subnormal row made the gradient NaN
    # (float16: inf) for every embedding that shares a pair with it
    from pytorch_metric_learning.losses import ContrastiveLoss

    g = torch.Generator().manual_seed(1)
    x = torch.randn(6, 8, generator=g, dtype=torch.float64)
    x[0] *= torch.finfo(dtype).tiny * 0.01
    x = x.to(dtype)
    assert x[0].abs().max() > 0
    x.requires_grad_(True)
    loss = ContrastiveLoss(distance=PearsonCorrelation())(x, torch.tensor([0, 0, 1, 1, 2, 2]))
    loss.backward()
    assert torch.isfinite(loss) and torch.isfinite(x.grad).all()
    assert (PearsonCorrelation()(x.detach())[0] == 0).all()


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_pairwise_distance_of_half_rows_is_computed_in_float32(dtype):
    # MatchFinder.is_match on half-precision embeddings: standardised in their own precision
    # the rows with an offset gave |c| up to 1.0078 and a rounding-level floor
    g = torch.Generator().manual_seed(0)
    x = (10 + 0.5 * torch.randn(4, 512, generator=g)).to(dtype)
    y = x.clone()
    y[2:] = (10 + 0.5 * torch.randn(2, 512, generator=g)).to(dtype)
    value = PearsonCorrelation().pairwise_distance(x, y)
    exact = torch.tensor(
        [np.corrcoef(a, b)[0, 1] for a, b in zip(x.double().numpy(), y.double().numpy())])
    assert value.dtype == dtype
    step = 2 ** -8 if dtype == torch.bfloat16 else 2 ** -11  # half a unit at 1
    assert torch.allclose(value.double(), exact, atol=step, rtol=0)
    assert value[:2].tolist() == [1.0, 1.0]
    assert torch.allclose(value, PearsonCorrelation()(x, y).diagonal(), atol=step, rtol=0)


def test_pairwise_distance_of_other_shapes_names_forward():
    x = torch.randn(3, 6)
    for y in (torch.randn(4, 6), torch.randn(3, 4)):
        with pytest.raises(ValueError, match="one shape.*forward"):
            PearsonCorrelation().pairwise_distance(x, y)
    with pytest.raises(TypeError, match="ref_emb must be a floating-point"):
        PearsonCorrelation().pairwise_distance(x, x.long())


@pytest.mark.parametrize(
    "query_dtype, ref_dtype, out",
    [
        (torch.float64, torch.float32, torch.float64),
        (torch.float32, torch.float64, torch.float64),
        (torch.float32, torch.float16, torch.float32),
        (torch.float16, torch.float32, torch.float32),
        (torch.bfloat16, torch.float16, torch.float32),
    ],
)
def test_mixed_dtypes_are_correlated_in_their_promotion(query_dtype, ref_dtype, out):
    # e.g. CustomKNN(PearsonCorrelation()) with a float64 query and a float32 reference: the
    # matmul of two dtypes failed inside torch
    g = torch.Generator().manual_seed(2)
    x = torch.randn(5, 8, generator=g, dtype=torch.float64)
    q, r = x.to(query_dtype), x[:4].to(ref_dtype)
    mat = PearsonCorrelation()(q, r)
    assert mat.dtype == out
    expected = PearsonCorrelation()(q.to(torch.float64), r.to(torch.float64))
    assert torch.allclose(mat.double(), expected, atol=1e-6 if out != torch.float16 else 2e-3)
    power = PearsonCorrelation(power=3)(q, r)
    assert torch.allclose(power.double(), torch.sign(expected) * expected.abs() ** 3, atol=1e-5)


@pytest.mark.parametrize("power", [2.0, 3.0, 1e6, 2.0 ** 40, 1e308])
def test_power_of_correlations_rounded_above_one_stays_in_range(power):
    # rounding leaves raw correlations at 1.0000001; 1.0000001 ** 2**40 was +inf
    x = torch.randn(6, 8, generator=torch.Generator().manual_seed(0), requires_grad=True)
    raw = PearsonCorrelation()(x).detach()
    assert raw.max() > 1  # the case this guards
    D = PearsonCorrelation(power=power)(x)
    assert torch.isfinite(D).all() and D.abs().max() <= 1
    inside = raw.abs() <= 1  # bit for bit the signed power of the raw correlation
    assert torch.equal(D.detach()[inside], (torch.sign(raw) * raw.abs().pow(power))[inside])
    assert (D.detach()[~inside] == torch.sign(raw[~inside])).all()
    if power < 1e12:  # the derivative p |c|^(p-1) itself overflows float32 beyond
        (grad,) = torch.autograd.grad(D.sum(), x)
        assert torch.isfinite(grad).all()
