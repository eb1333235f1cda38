"""GroupLoss inside PML's trainers, testers and logging presets (record-keeper)."""
import logging
import os
import sqlite3

import pandas as pd
import pytest
import torch
from pytorch_metric_learning import samplers, testers, trainers
from pytorch_metric_learning.utils import logging_presets
from pytorch_metric_learning.utils.accuracy_calculator import AccuracyCalculator

from pml_grouploss import losses, miners

NUM_CLASSES, PER_CLASS, DIM_IN, DIM_EMB = 6, 20, 16, 8


class ClusterDataset(torch.utils.data.Dataset):
    def __init__(self, seed, num_classes=NUM_CLASSES):
        g = torch.Generator().manual_seed(seed)
        centres = 2 * torch.randn(num_classes, DIM_IN, generator=torch.Generator().manual_seed(7))
        self.labels = torch.arange(num_classes).repeat_interleave(PER_CLASS)
        self.x = centres[self.labels] + torch.randn(len(self.labels), DIM_IN, generator=g)

    def __len__(self):
        return len(self.labels)

    def __getitem__(self, i):
        return self.x[i], self.labels[i]


def _models(seed=0):
    torch.manual_seed(seed)
    trunk = torch.nn.Sequential(torch.nn.Linear(DIM_IN, 32), torch.nn.ReLU())
    embedder = torch.nn.Linear(32, DIM_EMB)
    return trunk, embedder


def _trainer(dataset, trunk, embedder, loss_fn, end_of_iteration_hook=None,
             end_of_epoch_hook=None, iterations=10, lr=1e-2):
    optimizers = {
        "trunk_optimizer": torch.optim.Adam(trunk.parameters(), lr=lr),
        "embedder_optimizer": torch.optim.Adam(embedder.parameters(), lr=lr),
        "metric_loss_optimizer": torch.optim.Adam(loss_fn.parameters(), lr=1e-1),
    }
    sampler = samplers.MPerClassSampler(dataset.labels, m=4, batch_size=12,
                                        length_before_new_iter=12 * iterations)
    return trainers.MetricLossOnly(
        models={"trunk": trunk, "embedder": embedder},
        optimizers=optimizers,
        batch_size=12,
        loss_funcs={"metric_loss": loss_fn},
        mining_funcs={"tuple_miner": miners.AnchorMiner(num_anchors_per_class=1)},
        dataset=dataset,
        sampler=sampler,
        dataloader_num_workers=0,
        end_of_iteration_hook=end_of_iteration_hook,
        end_of_epoch_hook=end_of_epoch_hook,
    )


def _eval_loss(loss_fn, trunk, embedder, dataset):
    with torch.no_grad():
        return loss_fn(embedder(trunk(dataset.x)), dataset.labels).item()


@pytest.mark.parametrize("variant", [dict(), dict(negatives="shift"), dict(zero_diagonal=True)],
                         ids=["clamp", "shift", "zero_diagonal"])
def test_metric_loss_only_trains_loss_and_classifier(variant):
    dataset = ClusterDataset(0)
    trunk, embedder = _models()
    loss_fn = losses.GroupLoss(NUM_CLASSES, DIM_EMB, temperature=2.0, num_anchors=1, **variant)
    W0 = loss_fn.W.detach().clone()
    before = _eval_loss(loss_fn, trunk, embedder, dataset)
    _trainer(dataset, trunk, embedder, loss_fn, iterations=15).train(num_epochs=3)
    after = _eval_loss(loss_fn, trunk, embedder, dataset)
    assert after < 0.5 * before
    assert not torch.equal(W0, loss_fn.W.detach())


def test_train_with_classifier_as_metric_loss():
    dataset = ClusterDataset(0)
    trunk, embedder = _models()
    classifier = torch.nn.Linear(DIM_EMB, NUM_CLASSES)
    loss_fn = losses.GroupLoss(NUM_CLASSES, DIM_EMB, temperature=2.0)
    params = [*trunk.parameters(), *embedder.parameters()]
    before = _eval_loss(loss_fn, trunk, embedder, dataset)
    trainer = trainers.TrainWithClassifier(
        models={"trunk": trunk, "embedder": embedder, "classifier": classifier},
        optimizers={
            "trunk_optimizer": torch.optim.Adam(params, lr=1e-2),
            "classifier_optimizer": torch.optim.Adam(classifier.parameters(), lr=1e-2),
            "metric_loss_optimizer": torch.optim.Adam(loss_fn.parameters(), lr=1e-1),
        },
        batch_size=12,
        loss_funcs={"metric_loss": loss_fn,
                    "classifier_loss": torch.nn.CrossEntropyLoss()},
        loss_weights={"metric_loss": 1, "classifier_loss": 0.5},
        dataset=dataset,
        sampler=samplers.MPerClassSampler(dataset.labels, m=4, batch_size=12,
                                          length_before_new_iter=120),
        dataloader_num_workers=0,
    )
    trainer.train(num_epochs=2)
    assert set(trainer.losses) >= {"metric_loss", "classifier_loss"}
    assert _eval_loss(loss_fn, trunk, embedder, dataset) < before


def test_hook_container_logs_stats_and_resumes_classifier_exactly(tmp_path):
    dataset, val = ClusterDataset(0), ClusterDataset(1)
    folders = {k: str(tmp_path / k) for k in ("logs", "tensorboard", "models")}

    def run(num_epochs, is_new_experiment):
        trunk, embedder = _models()
        loss_fn = losses.GroupLoss(NUM_CLASSES, DIM_EMB, temperature=2.0, collect_stats=True)
        record_keeper, _, _ = logging_presets.get_record_keeper(
            folders["logs"], folders["tensorboard"], is_new_experiment=is_new_experiment
        )
        hooks = logging_presets.get_hook_container(record_keeper, log_freq=1,
                                                   primary_metric="precision_at_1")
        tester = testers.GlobalEmbeddingSpaceTester(
            end_of_testing_hook=hooks.end_of_testing_hook,
            dataloader_num_workers=0,
            accuracy_calculator=AccuracyCalculator(
                include=("precision_at_1", "mean_average_precision_at_r"), k="max_bin_count"
            ),
        )
        end_of_epoch = hooks.end_of_epoch_hook(tester, {"val": val}, folders["models"])
        trainer = _trainer(dataset, trunk, embedder, loss_fn, hooks.end_of_iteration_hook,
                           end_of_epoch, iterations=5)
        start = hooks.load_latest_saved_models(trainer, folders["models"], torch.device("cpu"))
        trainer.train(start_epoch=start, num_epochs=num_epochs)
        return trainer, loss_fn, start

    trainer, loss_fn, start = run(2, True)
    assert start == 1
    frame = pd.read_csv(os.path.join(folders["logs"], "metric_loss_GroupLoss.csv"))
    assert len(frame) == 10  # log_freq=1, 2 epochs x 5 iterations
    # AnchorMiner(1 per class) on batches of 3 classes x 4: its anchors are the ones used
    assert (frame["num_anchors_used"] == 3).all()
    assert "avg_true_class_probability" in frame.columns
    assert frame["avg_true_class_probability"].between(0, 1).all()
    con = sqlite3.connect(os.path.join(folders["logs"], "logs.db"))
    tables = {r[0] for r in con.execute("SELECT name FROM sqlite_master WHERE type='table'")}
    assert "metric_loss_GroupLoss" in tables, tables
    (count,) = con.execute(
        "SELECT COUNT(avg_true_class_probability) FROM metric_loss_GroupLoss").fetchone()
    assert count == 10
    con.close()
    saved_W = loss_fn.W.detach().clone()
    saved_b = loss_fn.bias.detach().clone()

    logging.disable(logging.INFO)
    resumed_trainer, resumed_loss, start = run(0, False)  # load only, train no epoch
    logging.disable(logging.NOTSET)
    assert start == 3
    assert torch.equal(resumed_loss.W.detach(), saved_W)
    assert torch.equal(resumed_loss.bias.detach(), saved_b)


def test_global_embedding_space_tester_runs_on_group_loss_model():
    dataset = ClusterDataset(0)
    trunk, embedder = _models()
    loss_fn = losses.GroupLoss(NUM_CLASSES, DIM_EMB, temperature=2.0, num_anchors=1)
    _trainer(dataset, trunk, embedder, loss_fn, iterations=20).train(num_epochs=3)
    tester = testers.GlobalEmbeddingSpaceTester(
        dataloader_num_workers=0,
        accuracy_calculator=AccuracyCalculator(include=("precision_at_1", "NMI"), k=5),
    )
    acc = tester.test({"val": ClusterDataset(3)}, 1, trunk, embedder)
    assert acc["val"]["precision_at_1_level0"] > 0.9
    assert acc["val"]["NMI_level0"] > 0.7
