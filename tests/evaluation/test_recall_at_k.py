import numpy as np
import pytest
import torch
from pytorch_metric_learning.utils.accuracy_calculator import AccuracyCalculator

from pml_grouploss.evaluation import RecallAtKAccuracyCalculator

CPU = torch.device("cpu")


def _data(n=300, dim=8, classes=40, seed=0, noise=1.0):
    g = torch.Generator().manual_seed(seed)
    c = torch.randn(classes, dim, generator=g)
    y = torch.randint(0, classes, (n,), generator=g)
    return c[y] + noise * torch.randn(n, dim, generator=g), y


def test_hand_computed():
    # 1-d points; labels chosen so neighbours are known by hand
    x = torch.tensor([[0.0], [1.0], [2.2], [3.6], [10.0], [10.5]])
    y = torch.tensor([0, 1, 0, 1, 2, 2])
    calc = RecallAtKAccuracyCalculator(
        recall_at=(1, 2, 3), include=("recall_at_1", "recall_at_2", "recall_at_3"), k=3, device=CPU
    )
    r = calc.get_accuracy(x, y)
    # neighbours (self excluded): 0:[1,2,3] 1:[0,2,3] 2:[1,3,0] 3:[2,1,0] 4:[5,..] 5:[4,..]
    # R@1: only 4 and 5 hit -> 2/6; R@2: 0 (via 2), 3 (via 1), 4, 5 -> 4/6;
    # R@3: 1 (via 3) and 2 (via 0) join -> 6/6
    assert r["recall_at_1"] == pytest.approx(2 / 6)
    assert r["recall_at_2"] == pytest.approx(4 / 6)
    assert r["recall_at_3"] == pytest.approx(6 / 6)


@pytest.mark.parametrize("avg_of_avgs", [False, True])
@pytest.mark.parametrize("noise", [0.5, 1.5])
def test_recall_at_1_equals_precision_at_1_and_monotone(avg_of_avgs, noise):
    x, y = _data(noise=noise)
    calc = RecallAtKAccuracyCalculator(
        recall_at=(1, 2, 4, 8, 16),
        k="max_bin_count",
        device=CPU,
        avg_of_avgs=avg_of_avgs,
        exclude=("NMI", "AMI"),
    )
    r = calc.get_accuracy(x, y)
    assert r["recall_at_1"] == r["precision_at_1"]
    vals = [r[f"recall_at_{k}"] for k in (1, 2, 4, 8, 16)]
    assert all(a <= b for a, b in zip(vals, vals[1:]))
    assert vals[0] < vals[-1]
    pml = AccuracyCalculator(
        include=("precision_at_1",), k="max_bin_count", device=CPU, avg_of_avgs=avg_of_avgs
    )
    assert pml.get_accuracy(x, y)["precision_at_1"] == r["recall_at_1"]


def test_matches_brute_force_with_separate_reference():
    x, y = _data(n=200)
    q, qy, ref, ry = x[:50], y[:50], x[50:], y[50:]
    calc = RecallAtKAccuracyCalculator(
        recall_at=(1, 5), include=("recall_at_1", "recall_at_5"), k=2, device=CPU
    )
    r = calc.get_accuracy(q, qy, ref, ry, ref_includes_query=False)
    d = torch.cdist(q, ref)
    order = torch.argsort(d, dim=1)
    has = torch.isin(qy, ry)
    for K in (1, 5):
        hit = (ry[order[:, :K]] == qy[:, None]).any(1)[has].double().mean().item()
        assert r[f"recall_at_{K}"] == pytest.approx(hit)


def test_sop_ks_and_k_covers_largest():
    x, y = _data(n=400)
    calc = RecallAtKAccuracyCalculator(
        recall_at=(1, 10, 100),
        include=("recall_at_1", "recall_at_10", "recall_at_100"),
        k=5,
        device=CPU,
    )
    seen = {}

    def knn(query, k, reference, ref_includes_query):
        seen["k"] = k
        from pytorch_metric_learning.utils.inference import FaissKNN

        return FaissKNN()(query, k, reference, ref_includes_query)

    calc.knn_func = knn
    r = calc.get_accuracy(x, y)
    assert seen["k"] == 100 and r["recall_at_100"] >= r["recall_at_10"] >= r["recall_at_1"]


@pytest.mark.parametrize("bad", [(0,), (1, -2), (1.5,), ()])
def test_bad_k(bad):
    with pytest.raises((ValueError, TypeError), match="recall_at"):
        RecallAtKAccuracyCalculator(recall_at=bad)


def test_numpy_integer_ks_are_ints():
    calc = RecallAtKAccuracyCalculator(recall_at=np.array([4, 1, 2, 1]))
    assert calc.recall_at == (1, 2, 4) and all(type(k) is int for k in calc.recall_at)
    assert RecallAtKAccuracyCalculator(recall_at=np.int64(5)).recall_at == (5,)
    with pytest.raises(ValueError, match=r"recall_at\[1\] must be an int >= 1, got 0"):
        RecallAtKAccuracyCalculator(recall_at=[np.int64(2), np.int64(0)])


# ---------------------------------------------------------------- lone queries (issue 8)
def test_one_sample_per_class_is_nan_with_a_warning_like_precision_at_1(caplog):
    # documented in docs/evaluation.md: PML's lone-query rule, kept so R@1 == precision_at_1
    x = torch.tensor([[0.0], [1.0], [2.5], [10.0]])
    calc = RecallAtKAccuracyCalculator(
        recall_at=(1, 2),
        include=("recall_at_1", "recall_at_2", "precision_at_1"),
        k=2,
        device=CPU,
    )
    with caplog.at_level("WARNING"):
        r = calc.get_accuracy(x, torch.arange(4))
    assert all(v != v for v in r.values()), r  # NaN, all three
    assert "None of the query labels are in the reference set" in caplog.text


def test_lone_queries_are_skipped_not_counted_as_misses():
    # classes 1 and 3 are singletons: only queries 0 and 2 (class 0) count.
    # 0 -> [1 (d 1), 2 (d 2.5)], 2 -> [1 (d 1.5), 0 (d 2.5)]: R@1 = 0/2, R@2 = 2/2
    x = torch.tensor([[0.0], [1.0], [2.5], [10.0]])
    calc = RecallAtKAccuracyCalculator(
        recall_at=(1, 2), include=("recall_at_1", "recall_at_2"), k=2, device=CPU
    )
    r = calc.get_accuracy(x, torch.tensor([0, 1, 0, 3]))
    assert r == {"recall_at_1": 0.0, "recall_at_2": 1.0}


@pytest.mark.parametrize("k", [2, 5, "max_bin_count"])
def test_pml_metrics_keep_pml_k_when_the_search_is_widened(k):
    # recall_at_8 widens the k-NN search; PML's k-dependent metrics must not see it
    from pytorch_metric_learning.utils.accuracy_calculator import AccuracyCalculator

    from pml_grouploss.evaluation import ReIDAccuracyCalculator

    g = torch.Generator().manual_seed(0)
    x, y = torch.randn(40, 8, generator=g), torch.randint(0, 5, (40,), generator=g)
    pml = ("mean_average_precision", "mean_reciprocal_rank", "r_precision",
           "mean_average_precision_at_r", "precision_at_1")
    expected = AccuracyCalculator(include=pml, k=k).get_accuracy(x, y)
    assert expected["mean_average_precision"] != AccuracyCalculator(
        include=pml, k=39).get_accuracy(x, y)["mean_average_precision"]  # k matters here
    for calc in (RecallAtKAccuracyCalculator(include=pml + ("recall_at_8",), k=k),
                 ReIDAccuracyCalculator(include=pml + ("reid_mAP", "cmc_rank_10"), k=k)):
        got = calc.get_accuracy(x, y)
        assert {m: got[m] for m in pml} == pytest.approx(expected, rel=1e-6), type(calc)
    got = RecallAtKAccuracyCalculator(include=("recall_at_8",), k=2).get_accuracy(x, y)
    assert got["recall_at_8"] == pytest.approx(RecallAtKAccuracyCalculator(
        include=("recall_at_8",), k=None).get_accuracy(x, y)["recall_at_8"])
