"""The protocol: no test-class sample reaches training or model selection; test touched once."""

import json
import os
from collections import Counter

import numpy as np
import pytest

from pml_grouploss.benchmark import runner
from pml_grouploss.benchmark.config import BenchmarkConfig
from pml_grouploss.benchmark.data import ClassSubset, assert_disjoint, build_splits, class_folds
from pml_grouploss.benchmark.suite import run_benchmark
from pml_grouploss.datasets import Omniglot


def test_class_folds_partition_training_classes():
    folds = class_folds(135, 5)
    assert [len(f) for f in folds] == [27] * 5
    assert sorted(np.concatenate(folds).tolist()) == list(range(135))
    assert all(not set(a) & set(b) for i, a in enumerate(folds) for b in folds[i + 1 :])
    assert [f.tolist() for f in class_folds(135, 5)] == [f.tolist() for f in folds]  # fixed seed
    with pytest.raises(ValueError, match="num_folds"):
        class_folds(10, 1)


@pytest.mark.parametrize("fold", [0, 3])
def test_embedded_splits_are_class_disjoint(fold):
    s = build_splits("omniglot-small", None, fold, 5)
    tr, va, te = set(s.train.identities), set(s.val.identities), set(s.test.identities)
    assert len(tr) == 108 and len(va) == 27 and len(te) == 107
    assert not (tr & va or tr & te or va & te)
    assert te == set(Omniglot(split="test").classes)
    assert tr | va == set(Omniglot(split="train").classes)
    assert len(s.train) == 2160 and len(s.val) == 540 and len(s.test) == 2140
    assert s.train.labels[0] == 0 and max(s.train.labels) == 107  # contiguous for num_classes
    x, y = s.test[0]
    assert tuple(x.shape) == (1, 28, 28) and y == 0
    # assert_disjoint really checks
    s.val.identities = s.val.identities[:-1] + [s.test.identities[0]]
    with pytest.raises(AssertionError, match="val&test"):
        assert_disjoint(s.train, s.val, s.test)


@pytest.mark.slow
def test_no_test_sample_reaches_training_or_selection(tmp_path, monkeypatch):
    log, phase = [], ["idle"]
    original = ClassSubset.__getitem__

    def spy(self, i):
        log.append((self.split_name, phase[0], self.identities[self.labels[i]], i))
        return original(self, i)

    monkeypatch.setattr(ClassSubset, "__getitem__", spy)
    cfg = BenchmarkConfig().replace(
        epochs=2,
        eval_every=1,
        max_classes=12,
        seeds=(0, 1),
        methods=("grouploss", "triplet"),
        classes_per_batch=4,
        samples_per_class=4,
        num_folds=3,
        workers=1,  # the spy and on_phase observe this process
    )
    per_seed = run_benchmark(cfg, str(tmp_path), figures=True, log=lambda *_: None,
                             on_phase=lambda p: phase.__setitem__(0, p))
    test_classes = set(Omniglot(split="test").classes)
    train_phase = [e for e in log if e[1] == "train"]
    assert train_phase and all(e[2] not in test_classes for e in train_phase)
    assert {e[0] for e in train_phase} == {"train", "val"}
    # the test split is read only by the final evaluation (and the retrieval figure afterwards)
    test_reads = [e for e in log if e[0] == "test"]
    assert {e[1] for e in test_reads} == {"final_test", "figures"}
    final_reads = Counter(e[3] for e in test_reads if e[1] == "final_test")
    n_test = 12 * 20
    assert len(final_reads) == n_test and set(final_reads.values()) == {4}  # 2 methods x 2 seeds
    # training batches only ever contain training-fold classes; validation only the fold
    for seed in (0, 1):
        s = build_splits("omniglot-small", None, seed % 3, 3, max_classes=12)
        assert not set(s.val.identities) & set(s.train.identities)
    # model selection = best validation epoch, recorded per run
    for _, row in per_seed.iterrows():
        hist = runner.read_history(
            os.path.join(tmp_path, "runs", row.method, f"seed{row.seed}", "history.jsonl")
        )
        val = hist[hist.split == "val"].sort_values("epoch")
        assert row.best_epoch == int(val.loc[val.precision_at_1.idxmax(), "epoch"])
        assert row.num_test_classes == 12 and row.num_train_classes == 8
    assert set(per_seed.method) == {"grouploss", "triplet"}
    for name in (
        "per_seed.csv",
        "summary.csv",
        "results.md",
        "figures/convergence.png",
        "figures/train_vs_test.png",
        "figures/retrieval_grid.png",
    ):
        assert os.path.isfile(tmp_path / name), name
    logs = os.listdir(tmp_path / "runs/grouploss/seed0/logs")
    assert "logs.db" in logs and any("TEST" in f for f in logs) and any("VAL" in f for f in logs)
    assert any(f.startswith("metric_loss_GroupLoss") for f in logs)


@pytest.mark.slow
def test_resume_after_interrupt_keeps_finished_seeds(tmp_path, monkeypatch):
    from pytorch_metric_learning import trainers

    cfg = BenchmarkConfig().replace(
        epochs=3,
        eval_every=1,
        max_classes=10,
        seeds=(0,),
        methods=("grouploss", "proxyanchor"),
        classes_per_batch=4,
        samples_per_class=4,
        workers=1,  # the interruption is monkeypatched into this process
        num_folds=5,
        save_embeddings=False,
    )
    starts = []
    real_train = trainers.MetricLossOnly.train

    def train(self, start_epoch=1, num_epochs=1):
        starts.append((type(self.loss_funcs["metric_loss"]).__name__, start_epoch))
        return real_train(self, start_epoch, num_epochs)

    real_fab = trainers.MetricLossOnly.forward_and_backward

    def interrupting(self):
        if type(self.loss_funcs["metric_loss"]).__name__ == "ProxyAnchorLoss" and self.epoch == 3:
            raise KeyboardInterrupt
        return real_fab(self)

    monkeypatch.setattr(trainers.MetricLossOnly, "train", train)
    monkeypatch.setattr(trainers.MetricLossOnly, "forward_and_backward", interrupting)
    with pytest.raises(KeyboardInterrupt):
        run_benchmark(cfg, str(tmp_path), figures=False, log=lambda *_: None)
    done = tmp_path / "runs/grouploss/seed0/final.json"
    assert done.is_file() and not (tmp_path / "runs/proxyanchor/seed0/final.json").exists()
    first = json.loads(done.read_text())
    mtime = os.path.getmtime(done)
    monkeypatch.setattr(trainers.MetricLossOnly, "forward_and_backward", real_fab)
    per_seed = run_benchmark(cfg, str(tmp_path), figures=False, log=lambda *_: None)
    # grouploss was not retrained; proxyanchor resumed at epoch 3 from its epoch-2 checkpoint
    assert starts == [("GroupLoss", 1), ("ProxyAnchorLoss", 1), ("ProxyAnchorLoss", 3)]
    assert os.path.getmtime(done) == mtime
    assert (
        per_seed[per_seed.method == "grouploss"].iloc[0].precision_at_1 == first["precision_at_1"]
    )
    hist = runner.read_history(tmp_path / "runs/proxyanchor/seed0/history.jsonl")
    assert sorted(hist[hist.split == "val"].epoch.tolist()) == [1, 2, 3]
    # a different protocol in the same directory is refused
    with pytest.raises(ValueError, match="different settings.*epochs"):
        run_benchmark(
            cfg.replace(epochs=4),
            str(tmp_path),
            figures=False,
            log=lambda *_: None,
        )


@pytest.mark.slow
def test_ablate_tune_and_inference_read_test_images_only_in_their_final_evaluation(
    tmp_path, monkeypatch
):
    """The protocol of every subcommand (run: the test above): ``ablate --test`` and
    ``inference`` read test images only in their final evaluation, after the checkpoint (best
    validation epoch) or the inference parameters were chosen on the validation fold; ``tune``
    never reads one."""
    from pml_grouploss.benchmark.ablations import run_ablation
    from pml_grouploss.benchmark.inference_ablation import run_inference_ablation
    from pml_grouploss.benchmark.tuning import run_tuning

    log, phase = [], ["idle"]
    original = ClassSubset.__getitem__

    def spy(self, i):
        log.append((self.split_name, phase[0]))
        return original(self, i)

    monkeypatch.setattr(ClassSubset, "__getitem__", spy)
    observe = dict(log=lambda *_: None, on_phase=lambda p: phase.__setitem__(0, p))
    cfg = BenchmarkConfig().replace(epochs=2, eval_every=1, max_classes=10, seeds=(0,),
                                    methods=("grouploss",), classes_per_batch=4,
                                    samples_per_class=4, workers=1)
    per_seed = run_ablation("negatives", cfg, str(tmp_path / "ablate"), final_test=True,
                            figures=False, **observe)
    reads = [(s, p) for s, p in log if s == "test"]
    assert reads and set(reads) == {("test", "final_test")}
    assert {p for s, p in log if s != "test"} == {"train"}  # training and model selection
    for _, row in per_seed.iterrows():
        hist = runner.read_history(tmp_path / "ablate" / "runs" / row.method / "seed0" /
                                   "history.jsonl")
        val = hist[hist.split == "val"].sort_values("epoch")
        assert row.best_epoch == int(val.loc[val.precision_at_1.idxmax(), "epoch"])
    log.clear()
    run_tuning(cfg, str(tmp_path / "tune"), budget=1, **observe)
    assert log and not [e for e in log if e[0] == "test"]
    log.clear()
    table = run_inference_ablation(str(tmp_path / "ablate"), method="clamp", **observe)
    first_test = next(i for i, e in enumerate(log) if e[0] == "test")
    assert {e for e in log[:first_test]} == {("val", "validation")}  # every choice first
    assert {e for e in log[first_test:]} == {("test", "final_test")}
    # the baseline row is the selected checkpoint: the ablation's own test number
    clamp = per_seed[per_seed.method == "clamp"].iloc[0]
    assert table.precision_at_1.iloc[0] == pytest.approx(clamp.precision_at_1)


@pytest.mark.slow
def test_no_test_reads_no_test_image(tmp_path, monkeypatch):
    """``run --no-test`` (``final_test=False``): not one test image is read, the tables hold the
    validation metrics and only the convergence figure is drawn."""
    splits_read = []
    original = ClassSubset.__getitem__

    def spy(self, i):
        splits_read.append(self.split_name)
        return original(self, i)

    monkeypatch.setattr(ClassSubset, "__getitem__", spy)
    cfg = BenchmarkConfig().replace(epochs=1, eval_every=1, max_classes=10, seeds=(0,),
                                    methods=("triplet",), classes_per_batch=4,
                                    samples_per_class=4, final_test=False, workers=1)
    per_seed = run_benchmark(cfg, str(tmp_path), log=lambda *_: None)
    assert splits_read and "test" not in splits_read
    assert "precision_at_1" not in per_seed.columns and per_seed.val_precision_at_1.notna().all()
    assert "val R@1" in (tmp_path / "results.md").read_text()
    assert sorted(os.listdir(tmp_path / "figures")) == ["convergence.png"]
