"""NearestClassSampler (GL++ §5.1): batch composition, coverage, determinism, nearness, trainer."""
import numpy as np
import pytest
import torch
from pytorch_metric_learning import trainers

from pml_grouploss.functional.class_centroids import class_centroids, mean_pairwise_distance
from pml_grouploss.losses import GradMLLoss
from pml_grouploss.samplers import NearestClassSampler

# uneven classes, one smaller than m
LABELS = np.concatenate([np.full(n, c) for c, n in enumerate([7, 5, 9, 3, 6, 8, 5, 4, 10, 6])])


def batches(sampler, labels=LABELS):
    idx = np.array(list(sampler))
    assert len(idx) == len(sampler)
    return idx.reshape(-1, sampler.batch_size), labels[idx].reshape(-1, sampler.batch_size)


def clustered(num_groups=6, per_group=5, per_class=6, dim=8, seed=0):
    """Classes in well separated groups: a class's nearest classes are in its group."""
    g = np.random.RandomState(seed)
    groups = g.randn(num_groups, dim) * 10
    centers = np.repeat(groups, per_group, axis=0) + g.randn(num_groups * per_group, dim)
    labels = np.repeat(np.arange(num_groups * per_group), per_class)
    emb = centers[labels] + 0.1 * g.randn(len(labels), dim)
    return emb, labels, np.repeat(np.arange(num_groups), per_group)


def check_composition(lab, m):
    for row in lab:
        classes, counts = np.unique(row, return_counts=True)
        assert len(classes) == len(row) // m
        assert (counts == m).all()
        # samples of a class are contiguous, m at a time
        assert (row.reshape(-1, m) == row.reshape(-1, m)[:, :1]).all()


@pytest.mark.parametrize("with_centroids", [False, True])
def test_batch_composition(with_centroids):
    s = NearestClassSampler(LABELS, m=4, batch_size=12, length_before_new_iter=300, seed=3)
    if with_centroids:
        s.update_centroids(torch.randn(len(LABELS), 5))
    assert len(s) == 300 - 300 % 12 and s.classes_per_batch == 3
    idx, lab = batches(s)
    check_composition(lab, 4)
    # indices are valid and labelled as the sampler says
    assert idx.min() >= 0 and idx.max() < len(LABELS)


@pytest.mark.parametrize("with_centroids", [False, True])
def test_every_sample_and_class_eventually_seen(with_centroids):
    s = NearestClassSampler(LABELS, m=3, batch_size=9, length_before_new_iter=9 * 30, seed=0)
    if with_centroids:
        emb, _, _ = clustered(num_groups=2, per_group=5, per_class=1)
        s.update_centroids(emb, labels=np.arange(10))
    idx, lab = batches(s)
    assert set(idx.ravel().tolist()) == set(range(len(LABELS)))
    # every class appears within the first round (<= number of classes batches)
    assert set(lab[:10].ravel().tolist()) == set(range(10))


def test_samples_of_a_class_not_repeated_before_exhausted():
    s = NearestClassSampler(LABELS, m=2, batch_size=4, length_before_new_iter=400, seed=5)
    idx, lab = batches(s)
    flat = idx.ravel()
    for c in range(10):
        members = np.flatnonzero(LABELS == c)
        seq = flat[LABELS[flat] == c]
        first = seq[: len(members) - len(members) % 2]  # whole visits before the first reshuffle
        assert len(set(first.tolist())) == len(first)


def test_deterministic_under_seed():
    def run(seed, epochs=2, centroids=None):
        s = NearestClassSampler(LABELS, m=2, batch_size=6, length_before_new_iter=120, seed=seed)
        if centroids is not None:
            s.update_centroids(centroids)
        return [list(s) for _ in range(epochs)]

    emb = torch.randn(len(LABELS), 4)
    a, b = run(7), run(7)
    assert a == b
    assert a[0] != a[1]  # successive epochs differ
    assert run(8) != a
    assert run(7, centroids=emb) == run(7, centroids=emb)
    s = NearestClassSampler(LABELS, m=2, batch_size=6, length_before_new_iter=120, seed=7)
    s.set_epoch(1)
    assert list(s) == a[1]


def test_each_distributed_rank_draws_its_own_batches(monkeypatch):
    # with the default seed on every process, all ranks drew the same batches
    def indices(rank):
        if rank is not None:
            monkeypatch.setattr(torch.distributed, "is_initialized", lambda: True)
            monkeypatch.setattr(torch.distributed, "get_rank", lambda group=None: rank)
        s = NearestClassSampler(LABELS, m=2, batch_size=6, length_before_new_iter=60, seed=3)
        first = list(s)
        monkeypatch.undo()
        return first

    single, rank0, rank1, rank2 = indices(None), indices(0), indices(1), indices(2)
    assert rank0 == single  # rank 0 is the one-process run
    assert rank1 != single and rank2 != single and rank1 != rank2
    assert rank1 == indices(1)  # still determined by (seed, epoch, rank)
    s = NearestClassSampler(LABELS, m=2, batch_size=6, length_before_new_iter=60, seed=3)
    assert s._generator_key() == [3, 0]


def test_independent_of_global_random_state():
    s = NearestClassSampler(LABELS, m=2, batch_size=6, length_before_new_iter=60, seed=1)
    np.random.seed(0)
    torch.manual_seed(0)
    first = list(s)
    s.set_epoch(0)
    np.random.seed(123)
    torch.manual_seed(123)
    assert list(s) == first


def test_chosen_classes_are_the_nearest():
    # 1-d centroids at known positions: the batch is the seed plus its 2 nearest classes
    pos = np.array([0.0, 10.0, 1.0, 3.0, 2.5, 20.0, 11.0, 30.0])
    labels = np.repeat(np.arange(8), 2)
    s = NearestClassSampler(
        labels, m=2, batch_size=6, length_before_new_iter=600, seed=0, normalize_embeddings=False
    )
    s.update_centroids(pos[labels][:, None])
    _, lab = batches(s, labels)
    # by hand from the positions above (distances to the seed)
    expected = {
        0: {2, 4}, 1: {6, 3}, 2: {4, 0}, 3: {4, 2}, 4: {3, 2}, 5: {6, 1}, 6: {1, 3}, 7: {5, 6}
    }
    for row in lab:
        seed, others = row[0], set(row[::2][1:].tolist())
        assert others == expected[seed], (row, seed)


def test_nearest_batches_are_closer_than_uniform_ones_on_clustered_data():
    emb, labels, group = clustered()
    s = NearestClassSampler(labels, m=2, batch_size=10, length_before_new_iter=2000, seed=0)
    _, uniform = batches(s, labels)
    s.update_centroids(emb)
    _, nearest = batches(s, labels)
    cent, _ = class_centroids(torch.tensor(emb), torch.tensor(labels))

    def mean_dist(lab):
        return np.mean(
            [mean_pairwise_distance(cent, torch.tensor(np.unique(r))).item() for r in lab]
        )

    # all 5 classes of a nearest batch come from the seed's group; uniform ones rarely do
    same_group = [len(set(group[np.unique(r)])) == 1 for r in nearest]
    assert np.mean(same_group) == 1.0
    assert np.mean([len(set(group[np.unique(r)])) == 1 for r in uniform]) < 0.1
    assert mean_dist(nearest) < 0.5 * mean_dist(uniform)


def test_num_candidates_draws_from_the_nearest_pool():
    emb, labels, group = clustered(num_groups=3, per_group=8)
    s = NearestClassSampler(
        labels, m=2, batch_size=8, length_before_new_iter=800, seed=0, num_candidates=7
    )
    s.update_centroids(emb)
    _, lab = batches(s, labels)
    assert all(len(set(group[np.unique(r)])) == 1 for r in lab)  # pool = own group
    distinct = {tuple(sorted(np.unique(r))) for r in lab}
    s_exact = NearestClassSampler(labels, m=2, batch_size=8, length_before_new_iter=800, seed=0)
    s_exact.update_centroids(emb)
    exact = {tuple(sorted(np.unique(r))) for r in batches(s_exact, labels)[1]}
    assert len(distinct) > len(exact)  # more variety than the fixed nearest sets


def test_dataloader_batches_align():
    data = torch.utils.data.TensorDataset(torch.arange(len(LABELS)), torch.tensor(LABELS))
    s = NearestClassSampler(LABELS, m=3, batch_size=9, length_before_new_iter=90)
    loader = torch.utils.data.DataLoader(data, batch_size=9, sampler=s, drop_last=True)
    for _, y in loader:
        check_composition(y.numpy()[None], 3)


def test_reset_and_fallback():
    s = NearestClassSampler(LABELS, m=2, batch_size=4, length_before_new_iter=40)
    assert s.centroids is None
    s.update_centroids(np.random.randn(len(LABELS), 3))
    assert s.centroids.shape == (10, 3) and s.centroids.dtype == torch.float32
    s.reset_centroids()
    assert s.centroids is None


def test_update_centroids_values_and_subset_labels():
    emb = np.random.randn(len(LABELS), 3)
    s = NearestClassSampler(LABELS, m=2, batch_size=4, normalize_embeddings=False)
    s.update_centroids(emb)
    for c in range(10):
        np.testing.assert_allclose(s.centroids[c].numpy(), emb[LABELS == c].mean(0), rtol=1e-5)
    # a subset with its labels (every class present), labels not 0..C-1 handled by sorting
    s2 = NearestClassSampler(LABELS * 10 + 5, m=2, batch_size=4, normalize_embeddings=False)
    sub = np.arange(0, len(LABELS), 2)
    sub = np.union1d(sub, [np.flatnonzero(LABELS == c)[0] for c in range(10)])
    s2.update_centroids(emb[sub], labels=LABELS[sub] * 10 + 5)
    expected = emb[sub][LABELS[sub] == 3].mean(0)
    np.testing.assert_allclose(s2.centroids[3].numpy(), expected, rtol=1e-5)


def test_embedding_fn_refresh():
    emb = torch.randn(len(LABELS), 4)
    s = NearestClassSampler(LABELS, m=2, batch_size=4, embedding_fn=lambda: emb)
    s.refresh()
    expected, _ = class_centroids(emb, torch.tensor(LABELS))
    assert torch.allclose(s.centroids, expected)
    assert s.end_of_epoch_hook(trainer=None) is True  # uses embedding_fn, no trainer needed


@pytest.mark.parametrize(
    "kwargs, name",
    [
        ({"m": 0}, "m"),
        ({"m": 2.5}, "m"),
        ({"m": True}, "m"),
        ({"batch_size": "6"}, "batch_size"),
        ({"batch_size": 7}, "batch_size"),
        ({"batch_size": 2 * 11}, "batch_size"),
        ({"length_before_new_iter": 4}, "length_before_new_iter"),
        ({"num_candidates": 1}, "num_candidates"),
        ({"num_candidates": 10}, "num_candidates"),
        ({"seed": -1}, "seed"),
        ({"embedding_fn": 3}, "embedding_fn"),
    ],
)
def test_bad_arguments_name_the_argument(kwargs, name):
    args = {"m": 2, "batch_size": 6, **kwargs}
    with pytest.raises((ValueError, TypeError), match=rf"^{name} "):
        NearestClassSampler(LABELS, **args)


@pytest.mark.parametrize("labels,error,match", [
    (np.array([0.0, np.nan, np.nan, 1.0, 1.0, 0.0]), ValueError, "NaN, inf or fractions"),
    (np.array([0.5, 0.5, 1.5, 1.5]), ValueError, "NaN, inf or fractions"),
    (np.zeros((4, 2), dtype=np.int64), ValueError, r"labels must be \(N,\).*\(4, 2\)"),
    (np.array(["cat", "cat", "dog", "dog"]), TypeError, "integer class ids, got dtype <U3"),
])
def test_labels_that_are_not_class_ids_are_named(labels, error, match):
    # NaN labels hung the first pass (a NaN class is never found again); (N, 2) labels were
    # flattened into indices beyond the dataset; strings failed at the first centroid update
    with pytest.raises(error, match=f"^{match}" if match.startswith("labels") else match):
        NearestClassSampler(labels, m=2, batch_size=4)


def test_integer_valued_float_labels_sample_as_integers():
    as_float = NearestClassSampler(LABELS.astype(np.float32), m=2, batch_size=6, seed=4)
    as_int = NearestClassSampler(LABELS, m=2, batch_size=6, seed=4)
    assert list(as_float) == list(as_int)


def test_bad_embeddings():
    s = NearestClassSampler(LABELS, m=2, batch_size=6)
    with pytest.raises(ValueError, match="embeddings"):
        s.update_centroids(np.zeros((5, 3)))
    with pytest.raises(ValueError, match="embeddings"):
        s.update_centroids(np.zeros(len(LABELS)))
    with pytest.raises(ValueError, match="embeddings must cover every class"):
        s.update_centroids(np.zeros((3, 2)), labels=[0, 1, 2])
    with pytest.raises(ValueError, match="embedding_fn"):
        s.refresh()
    with pytest.raises(ValueError, match="labels"):
        NearestClassSampler([], m=1, batch_size=1)


# ---------------------------------------------------------------- MetricLossOnly
class _Blobs(torch.utils.data.Dataset):
    def __init__(self):
        emb, labels, _ = clustered(num_groups=3, per_group=4, per_class=8, dim=10, seed=1)
        self.x = torch.tensor(emb, dtype=torch.float32)
        self.labels = torch.tensor(labels)

    def __len__(self):
        return len(self.labels)

    def __getitem__(self, i):
        return self.x[i], self.labels[i]


def _trainer(data, sampler, hook, seen):
    torch.manual_seed(0)
    trunk = torch.nn.Sequential(torch.nn.Linear(10, 32), torch.nn.ReLU(), torch.nn.Linear(32, 8))
    return trainers.MetricLossOnly(
        models={"trunk": trunk},
        optimizers={"trunk_optimizer": torch.optim.Adam(trunk.parameters(), lr=1e-2)},
        batch_size=sampler.batch_size,
        loss_funcs={"metric_loss": GradMLLoss()},
        dataset=data,
        sampler=sampler,
        dataloader_num_workers=0,
        data_device=torch.device("cpu"),
        end_of_iteration_hook=lambda t: seen.append(
            (t.epoch, t.losses["metric_loss"].item(), sampler.centroids is not None)
        ),
        end_of_epoch_hook=hook,
    )


def test_runs_inside_metric_loss_only_with_the_hook():
    data = _Blobs()
    sampler = NearestClassSampler(
        data.labels, m=4, batch_size=16, length_before_new_iter=len(data), seed=0
    )
    seen = []
    trainer = _trainer(data, sampler, sampler.end_of_epoch_hook, seen)
    trainer.train(num_epochs=4)
    assert len(seen) == 4 * (len(data) // 16)
    assert np.isfinite([s[1] for s in seen]).all()
    # epoch 1 is the uniform fallback; the hook's centroids drive epochs 2-4
    assert [s[2] for s in seen if s[0] == 1] == [False] * 6
    assert all(s[2] for s in seen if s[0] > 1)
    # the centroids are those of the final model's (normalized) embeddings
    trunk = trainer.models["trunk"]
    trunk.eval()
    with torch.no_grad():
        expected, _ = class_centroids(trunk(data.x), data.labels)
    assert torch.allclose(sampler.centroids, expected, atol=1e-5)


def test_hook_restores_modes_and_chain_stops_training():
    data = _Blobs()
    sampler = NearestClassSampler(data.labels, m=4, batch_size=16, length_before_new_iter=len(data))
    seen, calls = [], []

    def stop_after_two(trainer):
        calls.append(trainer.models["trunk"].training)
        return trainer.epoch < 2

    trainer = _trainer(data, sampler, sampler.chain_end_of_epoch_hook(stop_after_two), seen)
    trainer.train(num_epochs=5)
    assert {s[0] for s in seen} == {1, 2}  # the chained hook's False stopped training
    assert calls == [True, True]  # modes restored after embedding the dataset
    assert sampler.centroids is not None


def test_normalize_embeddings_must_be_a_bool():
    # bool("False") is True: the string silently L2-normalized the embeddings
    with pytest.raises(TypeError, match="^normalize_embeddings must be True or False, got str"):
        NearestClassSampler(LABELS, m=2, batch_size=6, normalize_embeddings="False")
    assert NearestClassSampler(LABELS, m=2, batch_size=6, normalize_embeddings=False)\
        .normalize_embeddings is False


@pytest.mark.parametrize("embeddings,labels,error,match", [
    (torch.ones(len(LABELS), 3, dtype=torch.complex64), None, TypeError,
     "^embeddings must be real-valued, got dtype torch.complex64"),  # imaginary part dropped
    (torch.ones(len(LABELS), 3, dtype=torch.bool), None, TypeError,
     "^embeddings must be real-valued, got dtype torch.bool"),
    (np.full((len(LABELS), 3), "x"), None, TypeError, "^embeddings must be a real-valued"),
    (np.zeros((len(LABELS), 0)), None, ValueError, r"^embeddings must have shape \(N, d\) with d"),
    (np.ones((len(LABELS), 3)), LABELS + 0.5, ValueError, "^labels must be integer class ids"),
    (np.ones((len(LABELS), 3)), LABELS.astype(str), TypeError, "^labels must be integer"),
])
def test_update_centroids_names_bad_embeddings_and_labels(embeddings, labels, error, match):
    # complex/bool/zero-width embeddings gave centroids silently (all distances equal for d=0);
    # fractional labels said "missing [0, 1, ...]"; text labels failed inside torch.as_tensor
    s = NearestClassSampler(LABELS, m=2, batch_size=6)
    with pytest.raises(error, match=match):
        s.update_centroids(embeddings, labels=labels)
    assert s.centroids is None


def test_load_state_dict_names_a_bad_state():
    s = NearestClassSampler(LABELS, m=2, batch_size=6)
    with pytest.raises(ValueError, match=r"^state must be a dict with 'epoch'.*"
                       r"keys \['centroids'\]"):
        s.load_state_dict({"centroids": torch.zeros(10, 3)})  # was KeyError: 'epoch'
    with pytest.raises(ValueError, match=r"^state\['centroids'\] contain NaN"):
        s.load_state_dict({"epoch": 1, "centroids": torch.full((10, 3), float("nan"))})
    assert s.epoch == 0 and s.centroids is None
    s.load_state_dict({"epoch": 3, "centroids": np.ones((10, 2))})  # was AttributeError
    assert s.epoch == 3 and s.centroids.dtype == torch.float32
    assert s.centroids.tolist() == [[1.0, 1.0]] * 10
