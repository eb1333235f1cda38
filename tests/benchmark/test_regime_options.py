"""The protocol options of issue 13's regimes: label noise on training labels only, the
classification warm-up, learning-rate drop on a plateau with early stopping, hard batches, and
the cached deterministic transforms (no result may change)."""

import numpy as np
import pytest
import torch

from pml_grouploss.benchmark import runner
from pml_grouploss.benchmark.config import BenchmarkConfig
from pml_grouploss.benchmark.data import ClassSubset, build_splits
from pml_grouploss.benchmark.methods import get_method
from pml_grouploss.datasets import NoisyLabels
from pml_grouploss.losses import GroupLoss

TINY = dict(max_classes=30, classes_per_batch=4, samples_per_class=4, iterations_per_epoch=2,
            eval_every=1, threads=1)


def test_label_noise_reaches_only_the_training_labels():
    clean = build_splits("omniglot-small", None, 1, 5)
    noisy = build_splits("omniglot-small", None, 1, 5, label_noise=0.4)
    assert isinstance(noisy.train, NoisyLabels) and isinstance(clean.train, ClassSubset)
    changed = np.flatnonzero(np.asarray(noisy.train.labels) != np.asarray(clean.train.labels))
    assert len(changed) == round(0.4 * len(clean.train)) == 864
    assert noisy.train.clean_labels == clean.train.labels
    for name in ("train_eval", "val", "test"):  # evaluation labels untouched
        assert getattr(noisy, name).labels == getattr(clean, name).labels
    again = build_splits("omniglot-small", None, 1, 5, label_noise=0.4)
    assert again.train.labels == noisy.train.labels  # seeded by the fold
    other = build_splits("omniglot-small", None, 2, 5, label_noise=0.4)
    assert other.train.flipped.tolist() != noisy.train.flipped.tolist()


def test_train_eval_holds_as_many_training_classes_as_the_validation_fold():
    s = build_splits("omniglot-small", None, 0, 5)
    assert s.train_eval.num_classes == s.val.num_classes == 27
    assert set(s.train_eval.identities) < set(s.train.identities)
    again = build_splits("omniglot-small", None, 0, 5)
    assert again.train_eval.identities == s.train_eval.identities
    wide = build_splits("omniglot-small", None, 0, 5, train_eval_classes=200)
    assert wide.train_eval.num_classes == 108  # at most every training class


def test_cached_transform_returns_the_uncached_tensors():
    cached = build_splits("omniglot-small", None, 0, 5).val
    plain = ClassSubset(cached.base, cached.base_classes, cached.transform, "val")
    for i in (0, 7, 7, 539):
        x, y = cached[i]
        assert torch.equal(x, plain[i][0]) and y == plain[i][1]
    assert len(cached._cache) == 3


def _run(tmp_path, name, method="grouploss", ready=lambda: None, **changes):
    """``ready()`` is called after the config is made (its validation gives every method one
    batch) and before the training."""
    cfg = BenchmarkConfig().replace(**{**TINY, **changes})
    splits = build_splits("omniglot-small", None, 0, 5, max_classes=30,
                          label_noise=cfg.data.label_noise)
    ready()
    return runner.run_one(cfg, get_method(method), 0, splits, str(tmp_path / name),
                          final_test=False)


@pytest.mark.slow
def test_warmup_trains_the_classifier_with_cross_entropy_for_its_epochs(tmp_path, monkeypatch):
    seen = []
    original = GroupLoss.compute_loss

    def spy(self, *args, **kwargs):
        seen.append((self.nll_weight, self.num_iterations, self.ce_weight))
        return original(self, *args, **kwargs)

    monkeypatch.setattr(GroupLoss, "compute_loss", spy)
    _run(tmp_path, "warm", ready=seen.clear, epochs=3, warmup_epochs=2)
    assert seen == [(0.0, 0, 1.0)] * 4 + [(1.0, 1, 1.0)] * 2  # 2 iterations per epoch
    _run(tmp_path, "triplet", method="triplet", ready=seen.clear, epochs=2,
         warmup_epochs=1)  # no classifier
    assert seen == []


@pytest.mark.slow
def test_plateau_drop_and_early_stop_keep_the_best_validation_epoch(tmp_path, monkeypatch):
    lrs = []
    original = runner._Run.end_of_epoch

    def spy(self, trainer):
        result = original(self, trainer)
        lrs.append(trainer.optimizers["trunk_optimizer"].param_groups[0]["lr"])
        return result

    monkeypatch.setattr(runner._Run, "end_of_epoch", spy)
    row = _run(tmp_path, "plateau", method="triplet", epochs=30, lr=1e-6, patience=3,
               lr_plateau_patience=2)
    hist = runner.read_history(str(tmp_path / "plateau" / "history.jsonl"))
    val = hist[hist.split == "val"].set_index("epoch").precision_at_1
    assert row["best_epoch"] == int(val.idxmax()) and val.index.max() < 30  # stopped early
    assert val.index.max() - row["best_epoch"] == 4  # PML: stop once 3 epochs are exceeded
    ratios = np.array(lrs[1:]) / np.array(lrs[:-1])
    assert set(np.round(ratios, 9)) <= {1.0, 0.1} and (ratios < 1).any()
    d = int(np.flatnonzero(ratios < 1)[0]) + 2  # the epoch whose evaluation cut the lr
    assert val[d] <= val.loc[:d - 1].max() and val[d - 1] <= val.loc[:d - 2].max()


@pytest.mark.slow
def test_nearest_class_sampler_gets_new_centroids_after_every_epoch(tmp_path, monkeypatch):
    from pml_grouploss.samplers import NearestClassSampler

    sizes = []
    original = NearestClassSampler.update_centroids

    def spy(self, embeddings, labels=None):
        sizes.append(tuple(embeddings.shape))
        return original(self, embeddings, labels)

    monkeypatch.setattr(NearestClassSampler, "update_centroids", spy)
    _run(tmp_path, "hard", sampler="nearest_class", epochs=3)
    assert sizes == [(24 * 20, 64)] * 3  # 24 training classes of 20 images, every epoch
