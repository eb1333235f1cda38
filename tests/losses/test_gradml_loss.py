"""GradMLLoss as a PML loss: eq. (11) through PML's forward, gradients, reducers, miners,
ref_emb, degenerate batches, memory, and MetricLossOnly."""
import warnings

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from pytorch_metric_learning import distances as pml_distances
from pytorch_metric_learning import miners as pml_miners
from pytorch_metric_learning import reducers, trainers
from pytorch_metric_learning.samplers import MPerClassSampler
from pytorch_metric_learning.utils import loss_and_miner_utils as lmu
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_leaves

from pml_grouploss import losses
from pml_grouploss.functional.gradml import gradml_gradient, gradml_loss

from ..conftest import cuda_or_skip

# the paper's two-classes-two-samples example: x1, x2 (class A), y1, y2 (class B)
PTS = torch.tensor([[0.0, 0.0], [1.0, 0.0], [0.0, 2.0], [3.0, 0.0]], dtype=torch.float64)
LABELS = torch.tensor([0, 0, 1, 1])
# eq. (11) by hand, k = 2: positives 1 + 13, negatives 4 + 9 + 5 + 4 = 22
EQ11 = {1.0: 14.0 - 22.0, 0.5: 14.0 - 11.0}


def unnormalized(**kwargs):
    with pytest.warns(UserWarning, match="unbounded below"):
        return losses.GradMLLoss(
            distance=pml_distances.LpDistance(normalize_embeddings=False), **kwargs
        )


# ---------------------------------------------------------------- eq. (11), paper form
@pytest.mark.parametrize("w", [1.0, 0.5])
def test_sum_reducer_equals_eq11_exactly(w):
    loss_fn = unnormalized(w=w, reducer=reducers.SumReducer())
    x = PTS.clone().requires_grad_(True)
    loss = loss_fn(x, LABELS)
    assert loss.item() == pytest.approx(EQ11[w], abs=1e-12)
    (g,) = torch.autograd.grad(loss, x)
    # closed form by hand, 2((1 - 2w) x1 - x2 + w (y1 + y2)) and its three siblings
    x1, x2, y1, y2 = PTS
    hand = torch.stack(
        [
            2 * ((1 - 2 * w) * x1 - x2 + w * (y1 + y2)),
            2 * ((1 - 2 * w) * x2 - x1 + w * (y1 + y2)),
            2 * ((1 - 2 * w) * y1 - y2 + w * (x1 + x2)),
            2 * ((1 - 2 * w) * y2 - y1 + w * (x1 + x2)),
        ]
    )
    assert torch.allclose(g, hand, atol=1e-12)


def test_sum_over_ordered_pairs_from_a_miner_doubles_eq11():
    loss_fn = unnormalized(reducer=reducers.SumReducer())
    ordered = lmu.get_all_pairs_indices(LABELS)
    assert loss_fn(PTS, LABELS, ordered).item() == pytest.approx(2 * EQ11[1.0])


@pytest.mark.parametrize("k", [0.5, 1.0, 2.0, 3.0])
def test_autograd_equals_closed_form_random_batch(k):
    x = torch.randn(12, 5, dtype=torch.float64, requires_grad=True)
    labels = torch.tensor([0, 0, 0, 1, 1, 1, 2, 2, 3, 3, 3, 3])
    loss_fn = unnormalized(k=k, w=0.7, pos_weight=1.5, reducer=reducers.SumReducer())
    loss = loss_fn(x, labels)
    assert loss.item() == pytest.approx(gradml_loss(x, labels, k=k, w=0.7, pos_weight=1.5).item())
    (g,) = torch.autograd.grad(loss, x)
    assert torch.allclose(g, gradml_gradient(x, labels, k=k, w=0.7, pos_weight=1.5), atol=1e-9)


# ---------------------------------------------------------------- default: normalized, mean
def test_default_is_normalized_mean_per_pair_type():
    loss_fn = losses.GradMLLoss()
    assert isinstance(loss_fn.distance, pml_distances.LpDistance)
    assert loss_fn.distance.normalize_embeddings and loss_fn.distance.p == 2
    assert (loss_fn.k, loss_fn.w, loss_fn.pos_weight) == (2.0, 1.0, 1.0)
    x = torch.randn(10, 4, dtype=torch.float64)
    labels = torch.tensor([0, 0, 0, 1, 1, 2, 2, 2, 2, 3])
    u = F.normalize(x, dim=1)
    d2 = torch.cdist(u, u) ** 2
    same = labels[:, None] == labels[None, :]
    off = ~torch.eye(10, dtype=torch.bool)
    expected = d2[same & off].mean() - d2[~same].mean()
    assert loss_fn(x, labels).item() == pytest.approx(expected.item(), abs=1e-12)


def test_mean_and_sum_forms_relation_on_paper_example():
    # mean form with w equals half the sum form with w / 2 (2 positive, 4 negative pairs)
    mean_loss = unnormalized(w=1.0)(PTS, LABELS)
    assert mean_loss.item() == pytest.approx(EQ11[0.5] / 2)


def test_normalized_gradient_is_projected_closed_form():
    x = torch.randn(8, 3, dtype=torch.float64, requires_grad=True)
    labels = torch.tensor([0, 0, 1, 1, 1, 2, 2, 0])
    loss = losses.GradMLLoss(reducer=reducers.SumReducer())(x, labels)
    (g,) = torch.autograd.grad(loss, x)
    xd = x.detach()
    u = F.normalize(xd, dim=1)
    gu = gradml_gradient(u, labels)
    # chain rule through u = x / |x|: (I - u u^T) g_u / |x|
    expected = (gu - u * (u * gu).sum(1, keepdim=True)) / xd.norm(dim=1, keepdim=True)
    assert torch.allclose(g, expected, atol=1e-10)


def test_bounded_when_normalized_unbounded_otherwise():
    labels = torch.tensor([0, 0, 1, 1])
    x = torch.tensor([[1.0, 0.0], [1.0, 0.1], [-1.0, 0.0], [-1.0, 0.1]], dtype=torch.float64)
    normed, free = losses.GradMLLoss(), unnormalized()
    # the same configuration scaled up: normalized loss unchanged, free loss -> -inf
    assert normed(100 * x, labels).item() == pytest.approx(normed(x, labels).item())
    assert free(100 * x, labels) < 1000 * free(x, labels) < 0
    assert normed(x, labels).item() >= 0 - 4.0  # d <= 2 on the sphere: >= -w * 4


@pytest.mark.parametrize("k", [2.0, 1.5])
@pytest.mark.parametrize("reducer", [None, reducers.SumReducer()])
def test_gradcheck_float64(k, reducer):
    x = torch.randn(7, 3, dtype=torch.float64, requires_grad=True)
    labels = torch.tensor([0, 0, 1, 1, 1, 2, 2])
    loss_fn = losses.GradMLLoss(k=k, w=0.5, reducer=reducer)
    assert torch.autograd.gradcheck(lambda e: loss_fn(e, labels), (x,))


def test_gradcheck_with_ref_emb():
    x = torch.randn(5, 3, dtype=torch.float64, requires_grad=True)
    r = torch.randn(6, 3, dtype=torch.float64, requires_grad=True)
    loss_fn = losses.GradMLLoss()
    labels, ref_labels = torch.tensor([0, 0, 1, 2, 2]), torch.tensor([0, 1, 1, 2, 3, 3])
    assert torch.autograd.gradcheck(
        lambda a, b: loss_fn(a, labels, ref_emb=b, ref_labels=ref_labels), (x, r)
    )


# ---------------------------------------------------------------- PML integration
def test_ref_emb_uses_every_cross_pair():
    x, r = torch.randn(4, 3, dtype=torch.float64), torch.randn(5, 3, dtype=torch.float64)
    labels, ref_labels = torch.tensor([0, 1, 1, 2]), torch.tensor([1, 0, 2, 2, 3])
    loss_fn = losses.GradMLLoss(w=0.5, reducer=reducers.SumReducer())
    loss = loss_fn(x, labels, ref_emb=r, ref_labels=ref_labels)
    d2 = torch.cdist(F.normalize(x, dim=1), F.normalize(r, dim=1)) ** 2
    same = labels[:, None] == ref_labels[None, :]
    assert loss.item() == pytest.approx((d2[same].sum() - 0.5 * d2[~same].sum()).item())


def test_ref_emb_without_ref_labels_raises():
    x, r = torch.randn(4, 3), torch.randn(6, 3)
    labels = torch.tensor([0, 0, 1, 1])
    with pytest.raises(ValueError, match="^ref_labels is required"):
        losses.GradMLLoss()(x, labels, ref_emb=r)
    # with explicit pairs into ref_emb no ref_labels are needed
    pairs = (torch.tensor([0]), torch.tensor([5]), torch.tensor([1]), torch.tensor([2]))
    u, ur = F.normalize(x, dim=1), F.normalize(r, dim=1)
    expected = (u[0] - ur[5]).norm() ** 2 - (u[1] - ur[2]).norm() ** 2
    got = losses.GradMLLoss()(x, labels, pairs, ref_emb=r)
    assert got.item() == pytest.approx(expected.item(), abs=1e-6)


def test_pair_miner_pairs_are_used_as_given():
    x = torch.randn(16, 4, dtype=torch.float64)
    labels = torch.arange(16) % 4
    miner = pml_miners.PairMarginMiner(pos_margin=0.2, neg_margin=0.8)
    pairs = miner(x, labels)
    assert len(pairs[0]) > 0 and len(pairs[2]) > 0
    a1, p, a2, n = pairs
    u = F.normalize(x, dim=1)
    pos = ((u[a1] - u[p]).norm(dim=1) ** 2).mean()
    neg = ((u[a2] - u[n]).norm(dim=1) ** 2).mean()
    expected = pos - 0.3 * neg
    got = losses.GradMLLoss(w=0.3)(x, labels, pairs)
    assert got.item() == pytest.approx(expected.item())


def test_triplet_miner_output_is_accepted():
    x = torch.randn(12, 4)
    labels = torch.arange(12) % 3
    trip = pml_miners.TripletMarginMiner(margin=0.5)(x, labels)
    assert torch.isfinite(losses.GradMLLoss()(x, labels, trip))


def test_indices_tuple_without_labels():
    x = torch.randn(6, 3)
    pairs = lmu.get_all_pairs_indices(torch.tensor([0, 0, 1, 1, 2, 2]))
    loss = losses.GradMLLoss()(x, indices_tuple=pairs)
    assert torch.isfinite(loss)


def test_collect_stats_are_python_numbers():
    loss_fn = losses.GradMLLoss(collect_stats=True)
    loss_fn(PTS, LABELS)
    assert (loss_fn.num_pos_pairs, loss_fn.num_neg_pairs) == (2, 4)
    u = F.normalize(PTS[1:], dim=1)  # x1 = 0 normalizes to 0
    assert isinstance(loss_fn.mean_pos_distance, float)
    expected = ((u[0]).norm() + (u[1] - u[2]).norm()).item() / 2
    assert loss_fn.mean_pos_distance == pytest.approx(expected)


def test_embedding_regularizer_and_do_nothing_reducer():
    from pytorch_metric_learning.regularizers import LpRegularizer

    loss_fn = losses.GradMLLoss(embedding_regularizer=LpRegularizer())
    assert torch.isfinite(loss_fn(torch.randn(8, 3), torch.arange(8) % 2))
    out = losses.GradMLLoss(reducer=reducers.DoNothingReducer())(PTS, LABELS)
    assert out["pos_loss"]["losses"].shape == (2,) and out["neg_loss"]["losses"].shape == (4,)
    assert (out["neg_loss"]["losses"] <= 0).all()


# ---------------------------------------------------------------- degenerate batches
@pytest.mark.parametrize(
    "labels",
    [torch.zeros(6, dtype=torch.long), torch.arange(6), torch.tensor([0])],
    ids=["one_class", "singletons", "one_sample"],
)
@pytest.mark.parametrize("reducer", [None, reducers.SumReducer()])
def test_degenerate_batches_are_finite(labels, reducer):
    x = torch.randn(len(labels), 4, requires_grad=True)
    loss = losses.GradMLLoss(reducer=reducer)(x, labels)
    loss.backward()
    assert torch.isfinite(loss) and torch.isfinite(x.grad).all()
    if len(labels) == 6:
        u = F.normalize(x.detach(), dim=1)
        d2 = torch.pdist(u) ** 2
        expected = d2.mean() if reducer is None else d2.sum()
        sign = 1.0 if labels[0] == labels[1] else -1.0  # one class: positives only
        assert loss.item() == pytest.approx(sign * expected.item(), rel=1e-5)


@pytest.mark.parametrize("k", [0.3, 1.0, 2.0])
def test_coincident_embeddings_finite_gradient(k):
    x = torch.tensor([[1.0, 0.0], [1.0, 0.0], [0.0, 1.0], [0.0, 2.0]], requires_grad=True)
    loss = losses.GradMLLoss(k=k)(x, LABELS)
    loss.backward()
    assert torch.isfinite(loss) and torch.isfinite(x.grad).all()


def test_empty_mined_pairs_give_zero():
    x = torch.randn(4, 3, requires_grad=True)
    empty = torch.empty(0, dtype=torch.long)
    loss = losses.GradMLLoss()(x, LABELS, (empty, empty, empty, empty))
    loss.backward()
    assert loss.item() == 0.0 and torch.equal(x.grad, torch.zeros(4, 3))


# ---------------------------------------------------------------- arguments
@pytest.mark.parametrize(
    "kwargs, name",
    [
        ({"k": 0}, "k"),
        ({"k": -2}, "k"),
        ({"k": None}, "k"),
        ({"w": -1}, "w"),
        ({"pos_weight": -0.5}, "pos_weight"),
    ],
)
def test_bad_arguments_name_the_argument(kwargs, name):
    with pytest.raises((ValueError, TypeError), match=rf"^{name} "):
        losses.GradMLLoss(**kwargs)


def test_numpy_scalar_hyperparameters_accepted():
    w = np.linspace(0.5, 1, 2)[0]
    loss_fn = losses.GradMLLoss(k=np.float32(2), w=w, pos_weight=np.int64(1))
    assert (loss_fn.k, loss_fn.w, loss_fn.pos_weight) == (2.0, 0.5, 1.0)
    assert isinstance(loss_fn.k, float)


def test_similarity_rejected():
    with pytest.raises(ValueError, match="distance"):
        losses.GradMLLoss(distance=pml_distances.CosineSimilarity())


@pytest.mark.parametrize(
    "reducer",
    [
        reducers.AvgNonZeroReducer(),
        reducers.ThresholdReducer(low=0),
        reducers.MultipleReducers({"neg_loss": reducers.AvgNonZeroReducer()}),
        reducers.MultipleReducers({}, default_reducer=reducers.AvgNonZeroReducer()),
    ],
)
def test_threshold_reducers_on_negatives_rejected(reducer):
    with pytest.raises(ValueError, match="reducer"):
        losses.GradMLLoss(reducer=reducer)


def test_threshold_reducer_on_positives_allowed():
    reducer = reducers.MultipleReducers({"pos_loss": reducers.AvgNonZeroReducer()})
    loss_fn = losses.GradMLLoss(reducer=reducer)
    assert torch.isfinite(loss_fn(PTS, LABELS))


def test_no_warning_by_default():
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        losses.GradMLLoss()
        losses.GradMLLoss(distance=pml_distances.LpDistance(power=2))


def test_distance_power_keeps_k_on_plain_distance():
    x = torch.randn(9, 3, dtype=torch.float64)
    labels = torch.arange(9) % 3
    a = losses.GradMLLoss(k=3)(x, labels)
    b = losses.GradMLLoss(k=3, distance=pml_distances.LpDistance(power=2))(x, labels)
    assert a.item() == pytest.approx(b.item())


# ---------------------------------------------------------------- dtypes
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_dtype_follows_embeddings(dtype):
    loss = losses.GradMLLoss()(torch.randn(8, 4, dtype=dtype), torch.arange(8) % 3)
    assert loss.dtype == dtype


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_cpu_autocast(dtype):
    x = torch.randn(16, 8, requires_grad=True)
    lin = torch.nn.Linear(8, 8)
    with torch.autocast("cpu", dtype=dtype):
        loss = losses.GradMLLoss()(lin(x), torch.arange(16) % 4)
    loss.backward()
    assert torch.isfinite(loss) and torch.isfinite(x.grad).all()
    ref = losses.GradMLLoss()(lin(x).float(), torch.arange(16) % 4)
    assert loss.float().item() == pytest.approx(ref.item(), abs=0.05)


@pytest.mark.parametrize("autocast", [False, True])
def test_cuda(autocast):
    device = cuda_or_skip()
    x = torch.randn(16, 8, device=device, requires_grad=True)
    labels = (torch.arange(16) % 4).to(device)
    with torch.autocast("cuda", dtype=torch.float16, enabled=autocast):
        loss = losses.GradMLLoss()(x @ torch.eye(8, device=device), labels)
    loss.backward()
    assert loss.device.type == "cuda" and torch.isfinite(loss) and torch.isfinite(x.grad).all()
    ref = losses.GradMLLoss()(x.detach().cpu(), labels.cpu())
    assert loss.float().item() == pytest.approx(ref.item(), abs=0.02 if autocast else 1e-5)


# ---------------------------------------------------------------- memory / complexity
class _LargestTensor(TorchDispatchMode):
    """Records the largest tensor any aten op produces (forward and backward)."""

    def __init__(self):
        super().__init__()
        self.largest, self.op = 0, None

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        for t in tree_leaves(out):
            if torch.is_tensor(t) and t.numel() > self.largest:
                self.largest, self.op = t.numel(), str(func)
        return out


@pytest.mark.parametrize("reducer", [None, reducers.SumReducer()])
def test_batch_512_builds_nothing_larger_than_the_pair_matrix(reducer):
    n, d = 512, 64
    x = torch.randn(n, d, requires_grad=True)
    labels = torch.arange(n) % 64
    loss_fn = losses.GradMLLoss(reducer=reducer)
    with _LargestTensor() as probe:
        loss = loss_fn(x, labels)
        loss.backward()
    assert torch.isfinite(loss) and torch.isfinite(x.grad).all()
    assert probe.largest <= n * n, (probe.largest, probe.op)
    assert probe.largest >= n * (n - 1) // 2  # the probe does see the pair-sized tensors


# ---------------------------------------------------------------- MetricLossOnly trainer
class _Blobs(torch.utils.data.Dataset):
    def __init__(self, n_classes=8, per_class=12, dim=10, seed=0):
        g = torch.Generator().manual_seed(seed)
        centers = torch.randn(n_classes, dim, generator=g) * 2
        self.labels = torch.arange(n_classes).repeat_interleave(per_class)
        self.x = centers[self.labels] + torch.randn(len(self.labels), dim, generator=g) * 1.5

    def __len__(self):
        return len(self.labels)

    def __getitem__(self, i):
        return self.x[i], self.labels[i]


def test_trains_inside_metric_loss_only():
    torch.manual_seed(0)
    data = _Blobs()
    trunk = torch.nn.Sequential(torch.nn.Linear(10, 32), torch.nn.ReLU(), torch.nn.Linear(32, 16))
    seen = []
    trainer = trainers.MetricLossOnly(
        models={"trunk": trunk},
        optimizers={"trunk_optimizer": torch.optim.Adam(trunk.parameters(), lr=1e-2)},
        batch_size=32,
        loss_funcs={"metric_loss": losses.GradMLLoss()},
        dataset=data,
        sampler=MPerClassSampler(data.labels, m=4, batch_size=32, length_before_new_iter=len(data)),
        dataloader_num_workers=0,
        end_of_iteration_hook=lambda t: seen.append(t.losses["metric_loss"].item()),
    )
    trainer.train(num_epochs=15)
    assert len(seen) == 45 and np.isfinite(seen).all()
    # mean-form loss: mean_pos d^2 - mean_neg d^2, between -4 and 4 on the sphere
    assert np.mean(seen[-9:]) < np.mean(seen[:3]) - 0.3
