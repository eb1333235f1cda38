"""Exact resume: a run interrupted (Ctrl-C) and resumed is bit-identical to an uninterrupted one."""

import glob
import json
import os

import numpy as np
import pytest
import torch

from pml_grouploss.benchmark import runner
from pml_grouploss.benchmark.config import BenchmarkConfig
from pml_grouploss.benchmark.methods import get_method
from pml_grouploss.benchmark.suite import run_benchmark


@pytest.fixture
def one_thread():
    """One torch thread for the test (the machine is shared), restored afterwards."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


#: 4 training classes x 20 images = 80 = 10 batches of 8 per sampler pass; 5 iterations per
#: epoch, so the checkpoint of epoch 1 is in the middle of a pass and that of epoch 2 at its end.
#: Augmentation (torch RNG), MPerClassSampler (NumPy RNG, its shuffled label order), random
#: GroupLoss anchors (the loss's own generator), Adam state and a StepLR schedule all matter.
TINY = BenchmarkConfig().replace(
    epochs=3,
    eval_every=1,
    iterations_per_epoch=5,
    max_classes=6,
    num_folds=3,
    classes_per_batch=2,
    samples_per_class=4,
    image_size=16,
    augment="affine",
    lr_decay_epoch=2,
    seeds=(0,),
    methods=("grouploss",),
    overrides={"grouploss": {"anchor_selection": "random", "seed": 7}},
    workers=1,  # interruptions are monkeypatched into this process
)


def _tensors(obj, prefix=""):
    """Every tensor and number of a (nested) state dict, by path."""
    if torch.is_tensor(obj):
        return {prefix: obj}
    if isinstance(obj, dict):
        out = {}
        for k, v in obj.items():
            out.update(_tensors(v, f"{prefix}/{k}"))
        return out
    if isinstance(obj, (list, tuple)):
        out = {}
        for i, v in enumerate(obj):
            out.update(_tensors(v, f"{prefix}/{i}"))
        return out
    return {prefix: obj}


def _checkpoints(run_dir):
    """{file name: {path: value}} of every PML checkpoint (models, optimizers, schedulers, loss)."""
    out = {}
    for path in sorted(glob.glob(os.path.join(run_dir, "models", "*.pth"))):
        name = os.path.basename(path)
        if name.startswith("resume_state"):
            continue
        out[name] = _tensors(torch.load(path, map_location="cpu", weights_only=True))
    return out


def _outcome(out_dir):
    run_dir = os.path.join(out_dir, "runs", "grouploss", "seed0")
    with open(os.path.join(run_dir, "final.json")) as f:
        final = json.load(f)
    final.pop("seconds_per_epoch")
    hist = runner.read_history(os.path.join(run_dir, "history.jsonl"))
    hist = hist[hist.split != "time"].sort_values(["epoch", "split"]).reset_index(drop=True)
    emb = np.load(os.path.join(run_dir, "test_embeddings.npz"))["embeddings"]
    return final, hist, emb, _checkpoints(run_dir)


def _assert_bit_identical(a, b):
    final_a, hist_a, emb_a, ckpt_a = a
    final_b, hist_b, emb_b, ckpt_b = b
    assert final_a == final_b  # every test metric, best epoch, validation and train metric
    assert hist_a.equals(hist_b)  # every validation and train metric of every epoch
    assert emb_a.tobytes() == emb_b.tobytes()
    assert sorted(ckpt_a) == sorted(ckpt_b)
    for name in ckpt_a:
        assert sorted(ckpt_a[name]) == sorted(ckpt_b[name]), name
        for key, va in ckpt_a[name].items():
            vb = ckpt_b[name][key]
            if torch.is_tensor(va):
                assert va.dtype == vb.dtype and torch.equal(va, vb), (name, key)
            else:
                assert va == vb, (name, key)


@pytest.mark.slow
def test_interrupted_and_resumed_run_is_bit_identical(tmp_path, monkeypatch, one_thread):
    from pytorch_metric_learning import trainers

    quiet = dict(figures=False, log=lambda *_: None)
    run_benchmark(TINY, str(tmp_path / "straight"), **quiet)
    straight = _outcome(tmp_path / "straight")
    assert straight[0]["num_train_classes"] == 4 and len(straight[1]) == 6  # 3 epochs x val/train
    assert sum(k.startswith("metric_loss_optimizer") for k in straight[3]) == 2  # latest + best

    real_fab = trainers.MetricLossOnly.forward_and_backward
    calls = {"n": 0, "stop_at": None}

    def interrupting(self):
        calls["n"] += 1
        if (self.epoch, self.iteration) == calls["stop_at"]:
            raise KeyboardInterrupt
        return real_fab(self)

    monkeypatch.setattr(trainers.MetricLossOnly, "forward_and_backward", interrupting)
    resumed = str(tmp_path / "resumed")
    # Ctrl-C in epoch 2 (resumes from epoch 1: mid-pass), then at the start of epoch 3 (from
    # epoch 2: the sampler's pass used up), then to the end
    for stop_at in ((2, 3), (3, 0), None):
        calls["stop_at"] = stop_at
        if stop_at is None:
            run_benchmark(TINY, resumed, **quiet)
        else:
            with pytest.raises(KeyboardInterrupt):
                run_benchmark(TINY, resumed, **quiet)
    # run 1: epoch 1 and 4 calls of epoch 2; run 2 (from checkpoint 1): epoch 2 and 1 call of
    # epoch 3; run 3 (from checkpoint 2): epoch 3
    assert calls["n"] == (5 + 4) + (5 + 1) + 5
    _assert_bit_identical(_outcome(resumed), straight)


@pytest.mark.slow
def test_run_stopped_early_is_not_trained_again_on_resume(tmp_path, monkeypatch, one_thread):
    """--patience stopped training after epoch 1, Ctrl-C came during the final test: the rerun
    only tests (as the uninterrupted run did), it does not train epochs 2 and 3."""
    from pytorch_metric_learning import trainers
    from pytorch_metric_learning.utils import logging_presets

    monkeypatch.setattr(
        logging_presets.HookContainer, "patience_remaining", lambda self, epoch, *a: epoch < 1
    )
    starts = []
    real_train = trainers.MetricLossOnly.train

    def train(self, start_epoch=1, num_epochs=1):
        starts.append(start_epoch)
        return real_train(self, start_epoch, num_epochs)

    real_test = runner.EmbeddingKeepingTester.test

    def test(self, *args, **kwargs):
        if phase[0] == "final_test" and not starts[1:]:
            starts.append("interrupted")
            raise KeyboardInterrupt
        return real_test(self, *args, **kwargs)

    monkeypatch.setattr(trainers.MetricLossOnly, "train", train)
    monkeypatch.setattr(runner.EmbeddingKeepingTester, "test", test)
    cfg = TINY.replace(patience=0, save_embeddings=False)
    phase = ["idle"]
    with pytest.raises(KeyboardInterrupt):
        run_benchmark(cfg, str(tmp_path), figures=False, log=lambda *_: None,
                      on_phase=lambda p: phase.__setitem__(0, p))
    per_seed = run_benchmark(cfg, str(tmp_path), figures=False, log=lambda *_: None)
    assert starts == [1, "interrupted"]  # trained once, from epoch 1; never resumed training
    hist = runner.read_history(tmp_path / "runs/grouploss/seed0/history.jsonl")
    assert sorted(hist[hist.split == "val"].epoch) == [1]
    assert per_seed.iloc[0].best_epoch == 1 and 0 < per_seed.iloc[0].precision_at_1 <= 1


def test_a_damaged_final_json_names_the_file_and_the_fix(tmp_path):
    """A final.json cut short (the process killed while writing it) is named, not a bare
    'Expecting value: line 1 column 1'; final.json is now written whole or not at all."""
    run_dir = tmp_path / "runs" / "grouploss" / "seed0"
    run_dir.mkdir(parents=True)
    (run_dir / "final.json").write_text('{"method": "groupl')
    with pytest.raises(ValueError) as info:
        runner.run_one(TINY, get_method("grouploss"), 0, None, str(run_dir))
    message = str(info.value)
    assert f"'{run_dir / 'final.json'}' is damaged: not valid JSON" in message
    assert "delete it: rerunning then resumes that seed from its last checkpoint" in message
