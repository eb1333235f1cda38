"""GroupLossPlusPlusTester inside GlobalEmbeddingSpaceTester + HookContainer + record-keeper."""

import glob
import os
import re
import sqlite3

import numpy as np
import pytest
import torch
from pytorch_metric_learning import losses, trainers
from pytorch_metric_learning.testers import GlobalEmbeddingSpaceTester
from pytorch_metric_learning.utils import logging_presets

from pml_grouploss.evaluation import RecallAtKAccuracyCalculator
from pml_grouploss.inference import GroupLossPlusPlusTester, KReciprocalReRanker

CPU = torch.device("cpu")


class _Images(torch.utils.data.Dataset):
    def __init__(self, n=96, classes=8, seed=0):
        g = torch.Generator().manual_seed(seed)
        protos = torch.randn(classes, 3, 8, 8, generator=g)
        self.labels = torch.arange(n) % classes
        self.x = protos[self.labels] + 0.5 * torch.randn(n, 3, 8, 8, generator=g)

    def __len__(self):
        return len(self.labels)

    def __getitem__(self, i):
        return self.x[i], self.labels[i]


def _trunk():
    torch.manual_seed(0)
    return torch.nn.Sequential(
        torch.nn.Conv2d(3, 8, 3, padding=1),
        torch.nn.ReLU(),
        torch.nn.AdaptiveAvgPool2d(1),
        torch.nn.Flatten(),
    )


def _tester(**kw):
    return GroupLossPlusPlusTester(
        dataloader_num_workers=0,
        data_device=CPU,
        batch_size=32,
        accuracy_calculator=RecallAtKAccuracyCalculator(
            include=("precision_at_1", "recall_at_1", "recall_at_2", "mean_average_precision_at_r"),
            k="max_bin_count",
            device=CPU,
            knn_func=KReciprocalReRanker(k1=6, k2=3),
        ),
        **kw,
    )


def test_flip_and_beta_inside_tester():
    ds = _Images()
    trunk = _trunk()
    t = _tester(flip=True, beta=0.05)
    emb, _ = t.get_all_embeddings(ds, trunk)
    raw = trunk(ds.x)
    flipped = trunk(torch.flip(ds.x, dims=(-1,)))
    avg = (raw + flipped) / 2
    expected = torch.nn.functional.normalize(avg) + 0.05 * avg
    torch.testing.assert_close(emb, expected, rtol=1e-5, atol=1e-6)
    # flip=False, beta=None is PML's tester
    plain = GlobalEmbeddingSpaceTester(dataloader_num_workers=0, data_device=CPU)
    e1, _ = _tester(flip=False).get_all_embeddings(ds, trunk)
    e2, _ = plain.get_all_embeddings(ds, trunk)
    torch.testing.assert_close(e1, e2)


def test_description_is_record_keeper_safe():
    t = _tester(flip=True, beta=0.0005)
    name = t.description_suffixes("accuracies")
    assert re.fullmatch(r"[A-Za-z0-9_]+", name), name
    assert "flip" in name and "beta0p0005" in name
    # normalize_embeddings is not used with beta: one configuration, one name
    assert name.startswith("accuracies_flip_beta0p0005_GroupLossPlusPlusTester_level_0"), name
    assert name == _tester(flip=True, beta=0.0005, normalize_embeddings=False
                           ).description_suffixes("accuracies")
    assert "_normalized_" in _tester(flip=False).description_suffixes("accuracies")  # PML's
    assert t.normalize_embeddings  # restored


def test_flip_on_vectors_names_flip_false():
    t = _tester(flip=True)
    with pytest.raises(ValueError,
                       match=r"shape \(4, 7\); use GroupLossPlusPlusTester\(flip=False"):
        t.get_embeddings_for_eval(torch.nn.Identity(), torch.nn.Identity(), torch.randn(4, 7))


@pytest.mark.parametrize("flip", ["False", 0, None])
def test_flip_must_be_a_bool(flip):
    with pytest.raises(TypeError, match="flip must be True or False"):
        GroupLossPlusPlusTester(flip=flip)


def test_bad_beta_raises():
    with pytest.raises(ValueError, match="beta"):
        GroupLossPlusPlusTester(beta=-1.0)


def _hook_container(tmp_path, primary_metric, validation_split_name):
    """record-keeper (CSV under csv/, tensorboard, sqlite db.db) and PML's HookContainer."""
    rk, _, _ = logging_presets.get_record_keeper(
        str(tmp_path / "csv"),
        str(tmp_path / "tb"),
        global_db_path=str(tmp_path / "db.db"),
        experiment_name="exp",
    )
    return logging_presets.get_hook_container(
        rk, primary_metric=primary_metric, validation_split_name=validation_split_name
    )


def test_runs_with_hook_container_and_record_keeper(tmp_path):
    ds = _Images()
    trunk = _trunk()
    hooks = _hook_container(tmp_path, "recall_at_1", "val")
    tester = _tester(flip=True, beta=0.004, end_of_testing_hook=hooks.end_of_testing_hook)
    end_of_epoch = hooks.end_of_epoch_hook(
        tester, {"val": ds}, str(tmp_path / "models"), test_interval=1
    )
    trainer = trainers.MetricLossOnly(
        models={"trunk": trunk},
        optimizers={"trunk_optimizer": torch.optim.SGD(trunk.parameters(), lr=0.01)},
        batch_size=32,
        loss_funcs={"metric_loss": losses.TripletMarginLoss()},
        dataset=ds,
        data_device=CPU,
        dataloader_num_workers=0,
        end_of_iteration_hook=hooks.end_of_iteration_hook,
        end_of_epoch_hook=end_of_epoch,
    )
    trainer.train(num_epochs=2)
    acc = tester.all_accuracies["val"]
    assert acc["recall_at_1_level0"] == acc["precision_at_1_level0"]
    assert acc["recall_at_2_level0"] >= acc["recall_at_1_level0"]
    history = hooks.get_accuracy_history(tester, "val", return_all_metrics=True)
    assert list(history["epoch"]) == [1, 2]
    assert len(history["recall_at_1_level0"]) == 2
    csvs = glob.glob(os.path.join(str(tmp_path / "csv"), "*flip_beta0p004*"))
    assert csvs, os.listdir(str(tmp_path / "csv"))
    with sqlite3.connect(str(tmp_path / "db.db")) as con:
        tables = [r[0] for r in con.execute("select name from sqlite_master where type='table'")]
    assert any("flip_beta0p004" in t for t in tables), tables


def test_reid_query_gallery_inside_tester_with_record_keeper(tmp_path):
    """ReIDAccuracyCalculator + re-ranking on separate query/gallery splits, via HookContainer."""
    from pml_grouploss.evaluation import ReIDAccuracyCalculator
    from pml_grouploss.functional.reranking import dense_re_ranking_knn

    query, gallery = _Images(n=24, seed=1), _Images(n=96, seed=2)
    trunk = _trunk()
    hooks = _hook_container(tmp_path, "cmc_rank_1", "query")
    knn = KReciprocalReRanker(k1=6, k2=3, lambda_value=0.5)
    tester = GroupLossPlusPlusTester(
        flip=True,
        beta=0.01,
        dataloader_num_workers=0,
        data_device=CPU,
        accuracy_calculator=ReIDAccuracyCalculator(
            cmc_ranks=(1, 5),
            include=("cmc_rank_1", "cmc_rank_5", "reid_mAP"),
            knn_func=knn,
            device=CPU,
        ),
        end_of_testing_hook=hooks.end_of_testing_hook,
    )
    datasets = {"query": query, "gallery": gallery}
    # (PML's already-evaluated check does not accept (query, [references]) tuples: skip it)
    hooks.run_tester_separately(
        tester,
        datasets,
        1,
        trunk,
        None,
        splits_to_eval=[("query", ["gallery"])],
        skip_eval_if_already_done=False,
    )
    acc = tester.all_accuracies["query"]
    # by hand: flip + beta embeddings, dense re-ranking with query+gallery in the graph
    q = tester.get_all_embeddings(query, trunk)[0].numpy()
    g = tester.get_all_embeddings(gallery, trunk)[0].numpy()
    _, idx = dense_re_ranking_knn(q, None, g, False, 6, 3, 0.5)
    match = gallery.labels.numpy()[idx] == query.labels.numpy()[:, None]
    assert acc["cmc_rank_1_level0"] == pytest.approx(match[:, 0].mean())
    assert acc["cmc_rank_5_level0"] == pytest.approx(match[:, :5].any(1).mean())
    ap = [np.mean([(j + 1) / (h + 1) for j, h in enumerate(np.flatnonzero(m))]) for m in match]
    assert acc["reid_mAP_level0"] == pytest.approx(np.mean(ap))
    assert 0 < acc["reid_mAP_level0"] < 1 and acc["cmc_rank_1_level0"] < 1
    rk = hooks.record_keeper
    rk.save_records()
    with sqlite3.connect(str(tmp_path / "db.db")) as con:
        tables = [r[0] for r in con.execute("select name from sqlite_master where type='table'")]
    name = hooks.record_group_name(tester, "query")
    assert re.fullmatch(r"[A-Za-z0-9_]+", name), name
    full = rk.hash_map.get(name, name)  # record-keeper shortens long names by hashing
    assert "flip_beta0p01" in full and full.endswith("QUERY_vs_GALLERY"), full
    assert any(t.endswith("GALLERY") for t in tables), tables
