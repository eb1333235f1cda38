"""Results directories: config and environment are recorded next to the numbers."""

import json

import pytest
import torch

from pml_grouploss.benchmark.config import BenchmarkConfig
from pml_grouploss.benchmark.suite import prepare_output


def test_prepare_output_records_config_and_environment(tmp_path):
    cfg = BenchmarkConfig().replace(seeds=(0,), epochs=2)
    prepare_output(cfg, str(tmp_path))
    assert BenchmarkConfig.from_dict(json.loads((tmp_path / "config.json").read_text())) == cfg
    env = json.loads((tmp_path / "environment.json").read_text())
    assert env["packages"]["torch"].split("+")[0] == torch.__version__.split("+")[0]
    assert env["packages"]["pytorch-metric-learning"].startswith("2.")
    assert env["torch_threads"] == torch.get_num_threads()
    assert env["cpu_capability"] == torch.backends.cpu.get_cpu_capability()
    assert env["cpu_model"] is None or len(env["cpu_model"]) > 2
    assert env["workers"] == 2 and env["torch_threads_per_worker"] == 1
    commit = env["git_commit"]
    assert commit is None or len(commit.split("+")[0]) == 40


def test_threads_option_sets_torch_threads(tmp_path):
    before = torch.get_num_threads()
    target = 1 if before != 1 else 2
    try:
        cfg = BenchmarkConfig().replace(seeds=(0,), epochs=2, threads=target)
        prepare_output(cfg, str(tmp_path))
        assert torch.get_num_threads() == target
        assert json.loads((tmp_path / "environment.json").read_text())["torch_threads"] == target
    finally:
        torch.set_num_threads(before)


def test_old_flat_config_json_resumes(tmp_path):
    """An output directory of an older version (flat config.json) resumes with the same settings
    and refuses other ones; config.json is then rewritten nested."""
    import os
    import shutil


    old = os.path.join(os.path.dirname(__file__), "data", "flat_config.json")
    shutil.copy(old, tmp_path / "config.json")
    with open(old) as f:
        cfg = BenchmarkConfig.from_dict(json.load(f))
    # it predates trunk_width: it ran the 64-channel cnn, so today's default (32) must not reuse it
    with pytest.raises(ValueError, match=r"different settings \(model.trunk_width\)"):
        prepare_output(cfg, str(tmp_path))
    cfg = cfg.replace(trunk_width=64)
    assert BenchmarkConfig.from_recorded(json.load(open(old))) == cfg
    with pytest.raises(ValueError, match=r"different settings \(optim.epochs\)"):
        prepare_output(cfg.replace(epochs=8), str(tmp_path))
    prepare_output(cfg.replace(seeds=(0,)), str(tmp_path))  # seeds may change on resume
    assert json.loads((tmp_path / "config.json").read_text())["run"]["seeds"] == [0]


@pytest.mark.slow
def test_worker_processes_give_the_same_rows(tmp_path):
    """``workers=2`` (spawned processes, one torch thread each) and ``workers=1`` (in process,
    one thread) write the same per_seed.csv (but the timings) and the same test embeddings."""
    import numpy as np

    from pml_grouploss.benchmark.suite import run_benchmark

    cfg = BenchmarkConfig().replace(epochs=1, eval_every=1, max_classes=10, seeds=(0, 1),
                                    methods=("grouploss", "triplet"), classes_per_batch=4,
                                    samples_per_class=4, threads=1)
    before = torch.get_num_threads()
    try:
        rows = {w: run_benchmark(cfg.replace(workers=w), str(tmp_path / f"w{w}"), figures=False,
                                 log=lambda *_: None).drop(columns="seconds_per_epoch")
                for w in (1, 2)}
    finally:
        torch.set_num_threads(before)
    assert rows[1].method.tolist() == ["grouploss", "triplet"] * 2 and rows[1].equals(rows[2])
    for run in ("grouploss/seed1", "triplet/seed0"):
        a, b = (np.load(tmp_path / f"w{w}/runs/{run}/test_embeddings.npz") for w in (1, 2))
        assert a["embeddings"].tobytes() == b["embeddings"].tobytes()


def test_recorded_config_keeps_the_trunk_width_its_run_used():
    nested = BenchmarkConfig().to_dict()
    assert BenchmarkConfig.from_recorded(nested).model.trunk_width == 32  # recorded: kept
    del nested["model"]["trunk_width"]  # a run from before the option: the 64-channel cnn
    assert BenchmarkConfig.from_recorded(nested).model.trunk_width == 64
    assert BenchmarkConfig.from_dict(nested).model.trunk_width == 32  # a config to run: default


def test_another_job_in_the_same_output_dir_is_refused(tmp_path):
    # `ablate`/`tune` used to overwrite a `run`'s results.md, per_seed.csv and summary.csv
    cfg = BenchmarkConfig().replace(seeds=(0,), epochs=2)
    prepare_output(cfg, str(tmp_path))
    assert json.loads((tmp_path / "job.json").read_text()) == {"job": "run"}
    with pytest.raises(ValueError, match=r"holds the results of `run`, not of `ablate negatives`"):
        prepare_output(cfg, str(tmp_path), job="ablate negatives")
    with pytest.raises(ValueError, match=r"not of `tune`.*fresh=True"):
        prepare_output(cfg, str(tmp_path), job="tune")
    prepare_output(cfg, str(tmp_path))  # the same job resumes
    prepare_output(cfg, str(tmp_path), fresh=True, job="ablate steps")
    with pytest.raises(ValueError, match=r"`ablate steps`, not of `ablate negatives`"):
        prepare_output(cfg, str(tmp_path), job="ablate negatives")
    (tmp_path / "job.json").unlink()  # a directory of an older version: resumes as before
    prepare_output(cfg, str(tmp_path), job="tune")
    assert json.loads((tmp_path / "job.json").read_text()) == {"job": "tune"}


def test_a_sweep_variant_that_does_not_fit_is_refused_before_training(tmp_path, monkeypatch):
    from pml_grouploss.benchmark import suite
    from pml_grouploss.benchmark.ablations import run_ablation
    from pml_grouploss.benchmark.validation import ConfigValueError

    def no_training(*args, **kwargs):
        raise AssertionError("trained before the check")

    monkeypatch.setattr(suite, "run_one", no_training)
    cfg = BenchmarkConfig().replace(seeds=(0,), epochs=2, max_classes=20, num_folds=5)
    with pytest.raises(ConfigValueError, match=r"variant 'classes=20' does not fit \(20 classes "
                                               r"per batch but only 16 training classes"):
        run_ablation("classes", cfg, str(tmp_path / "out"), log=lambda *_: None)
    assert not (tmp_path / "out").exists()


def test_a_dataset_too_small_for_folds_of_two_classes_is_named(monkeypatch):
    """7 training classes in 4 folds would validate on a fold of one class (P@1 = 1 whatever the
    model): refused before any output, naming --num-folds."""
    from types import SimpleNamespace

    from pml_grouploss.benchmark import suite

    monkeypatch.setattr(suite, "load_base", lambda *a: (SimpleNamespace(labels=list(range(7))),
                                                        None, 1))
    with pytest.raises(ValueError) as info:
        suite.training_classes(BenchmarkConfig().replace(num_folds=4))
    assert info.value.field == "data.num_folds"
    assert "the dataset has 7 training classes, fewer than the 8 that" in str(info.value)
    assert suite.training_classes(BenchmarkConfig().replace(num_folds=3)) == 4


def test_results_of_one_seed_say_that_they_have_no_confidence_interval(tmp_path):
    import pandas as pd

    from pml_grouploss.benchmark.suite import Grid

    grid = Grid(BenchmarkConfig(), str(tmp_path), log=lambda *_: None, prepare=False)
    one = pd.DataFrame({"method": ["a", "b", "b"], "precision_at_1": [0.5, 0.6, 0.7]})
    md = grid.write(one, "t")
    assert "| a | 50.0 | 1 |" in md and "| b | 65.0 ± 63.5 | 2 |" in md
    assert "A row of one seed has no confidence interval (its cells have no ±)" in md
    assert "no confidence interval" in (tmp_path / "results.md").read_text()
    assert "no confidence interval" not in grid.write(one[one.method == "b"], "t")
