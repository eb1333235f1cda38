"""benchmarks/loss_speed_benchmark.py: the table's rows; benchmarks/class_scale_checks.py: PML's
MetricLossOnly at m=100,000."""
import argparse
import importlib.util
import math
import os
import warnings

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def _load_script(name):
    path = os.path.join(ROOT, "benchmarks", name + ".py")
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


bench = _load_script("loss_speed_benchmark")
checks = _load_script("class_scale_checks")


def test_each_round_runs_the_losses_in_its_own_seeded_order():
    keys = list(bench._losses(16, 12, 8))
    orders = [bench._shuffled(keys, r) for r in range(20)]
    assert all(sorted(o) == sorted(keys) for o in orders)
    assert orders == [bench._shuffled(keys, r) for r in range(20)]  # reproducible
    # no loss always follows the same one
    predecessors = {k: {o[o.index(k) - 1] for o in orders if o.index(k) > 0} for k in keys}
    assert all(len(p) > 1 for p in predecessors.values())


def test_the_dense_rows_differ_only_in_the_refinement_steps():
    dense = {k: f() for k, f in bench._losses(16, 12, 8).items() if "dense" in k}
    assert {k: (g.num_iterations, g.prior_classes) for k, g in dense.items()} == {
        "GroupLoss dense T=0": (0, "all"), "GroupLoss dense T=1": (1, "all"),
        "GroupLoss dense T=3": (3, "all")}


def test_measure_times_every_loss_and_the_table_gives_ratios():
    rows = bench.measure(n=16, m=12, d=8, repeats=1, max_gb=6.0)
    names = [r["loss"] for r in rows]
    assert names == list(bench._losses(16, 12, 8))
    assert all(r["median_ms"] > 0 and r["rounds"] == 1 and r["interleaved"] for r in rows)
    table = bench.markdown(rows)
    assert "| NormalizedSoftmax | " in table and "(1.00x)" in table
    assert table.count("\n| ") == 1 + len(names)


def test_losses_over_the_memory_budget_are_skipped_not_run():
    # n x m = 1e9 floats: dense GroupLoss est. 39 GiB; batch-class: its 1.9 GiB W and ~0 more
    assert bench.estimate_gib("GroupLoss dense T=1", 1000, 1_000_000, 512) > 30
    assert 1.9 < bench.estimate_gib("GroupLoss batch T=1", 1000, 1_000_000, 512) < 2.0
    rows = bench.measure(n=64, m=100_000, d=8, repeats=1, max_gb=0.1,
                         names=["GroupLoss dense T=1", "MultiSimilarity"])
    skipped = {r["loss"]: r.get("skipped") for r in rows}
    assert skipped["GroupLoss dense T=1"].startswith("est.")
    assert skipped["MultiSimilarity"] is None


@pytest.mark.slow
def test_metric_loss_only_epoch_with_100000_classes_never_builds_a_batch_by_classes_tensor():
    result = checks.train_check(num_classes=100_000, iterations=4, batch_size=128)
    assert result["dense_batch_by_classes_tensor"] is False
    # 4 batches of 64 classes x 2 samples: only their rows of W move (SparseAdam)
    assert 64 <= result["changed_rows"] <= 4 * 64
    assert result["logged_iterations"] == 4
    # one anchor per class: the other 64 samples are relabelled by the dynamics
    assert result["anchors_in_last_batch"] == 64
    assert all(map(math.isfinite, (result["metric_loss_first"], result["metric_loss_last"])))
    assert result["metric_loss_first"] > 0


@pytest.mark.slow
def test_the_shape_detector_sees_the_dense_prior():
    result = checks.train_check(num_classes=100_000, iterations=1, batch_size=128,
                               prior_classes="all")
    assert result["dense_batch_by_classes_tensor"] is True
    assert result["changed_rows"] == 100_000  # Adam moves every row


def test_scaling_rotation_rows_and_ratios():
    rows = bench.scaling(n=16, ms=[10, 1000], d=8, repeats=1)
    assert [(r["m"], r["loss"]) for r in rows] == [
        (10, "GroupLoss batch T=1"), (10, "GroupLoss batch T=3"),
        (1000, "GroupLoss batch T=1"), (1000, "GroupLoss batch T=3"), (None, "MultiSimilarity")]
    table = bench.scaling_markdown(rows)
    assert table.count("| 1.00 |") >= 3  # each loss at the smallest m, and MultiSimilarity


@pytest.fixture
def quiet_main(monkeypatch):
    """``bench.main`` with the process-wide settings and the measurements replaced: the
    ``measure``/``scaling`` calls are recorded instead of timed."""
    calls = []
    monkeypatch.setattr(bench.torch, "set_num_threads", lambda n: calls.append(("threads", n)))
    monkeypatch.setattr(bench, "malloc_returns_memory", lambda returns: None)
    monkeypatch.setattr(bench, "environment", lambda: {})
    monkeypatch.setattr(bench, "measure", lambda *a: calls.append(("measure",) + a) or [])
    monkeypatch.setattr(bench, "scaling", lambda *a: calls.append(("scaling",) + a) or [
        dict(n=a[0], m=m, loss=name, median_ms=1.0, rounds=1, work_mib=None)
        for m, name in ((a[1][0], "GroupLoss batch T=1"), (None, "MultiSimilarity"))])
    return calls


@pytest.mark.parametrize("argv, message", [
    (["--losses", "NoSuchLoss"], "--losses: unknown 'NoSuchLoss'; the names (quote those with "
                                 "spaces): 'GroupLoss dense T=0', 'GroupLoss dense T=1'"),
    (["--losses", "GroupLoss", "GradML"], "--losses: unknown 'GroupLoss'; the names"),
    (["--n", "0"], "argument --n: must be an integer of at least 1, got '0'"),
    (["--m", "100", "0"], "argument --m: must be an integer of at least 1, got '0'"),
    (["--repeats", "0"], "argument --repeats: must be an integer of at least 1, got '0'"),
    (["--threads", "0"], "argument --threads: must be an integer of at least 1, got '0'"),
    (["--d", "-1"], "argument --d: must be an integer of at least 1, got '-1'"),
    (["--max-gb", "0"], "--max-gb must be positive (got 0.0)"),
    (["--scaling", "--losses", "GradML"], "--scaling times its own losses"),
    (["--scaling", "--max-gb", "5"], "drop --losses and --max-gb"),
    (["--n", "32", "32", "--m", "100"], "--n: each value once (got 32 32)"),
    (["--m", "100", "100"], "--m: each value once (got 100 100)"),
    (["--m", "1000000000"], "--m 1,000,000,000: drawing the batch's classes alone needs 7.5 GiB"),
])
def test_bad_arguments_exit_2_before_measuring(argv, message, quiet_main, capsys):
    with pytest.raises(SystemExit) as exit_:
        bench.main(["--n", "32", "--m", "100"] + argv if "--n" not in argv else argv)
    assert exit_.value.code == 2
    assert message in capsys.readouterr().err
    assert quiet_main == []  # nothing set, nothing measured


def test_out_in_a_missing_directory_or_a_directory_is_refused_before_measuring(
        tmp_path, quiet_main, capsys):
    for out, message in ((tmp_path / "no" / "table.md", f"no directory {tmp_path / 'no'}; "
                          "create it first"), (tmp_path, "a directory; give a file")):
        with pytest.raises(SystemExit) as exit_:
            bench.main(["--n", "32", "--m", "100", "--out", str(out)])
        assert exit_.value.code == 2 and message in capsys.readouterr().err
    assert quiet_main == []


@pytest.mark.skipif(not os.path.isdir("/proc/self"), reason="needs Linux's /proc")
def test_an_unwritable_out_is_refused_before_measuring(quiet_main, capsys):
    with pytest.raises(SystemExit) as exit_:  # /proc takes no new files, even for root
        bench.main(["--n", "32", "--m", "100", "--out", "/proc/pml_grouploss_table.md"])
    assert exit_.value.code == 2
    assert "--out /proc/pml_grouploss_table.md: cannot be written" in capsys.readouterr().err
    assert quiet_main == []


def test_an_out_that_did_not_exist_is_not_left_behind_by_the_check(tmp_path):
    out = tmp_path / "table.md"
    args = argparse.Namespace(max_gb=None, scaling=False, losses=None, n=[32], m=[100],
                              out=str(out))
    bench.check_args(argparse.ArgumentParser(), args)
    assert not out.exists()
    out.write_text("earlier runs\n")
    bench.check_args(argparse.ArgumentParser(), args)
    assert out.read_text() == "earlier runs\n"


def test_the_estimate_counts_the_parameters_of_the_losses_that_have_them():
    # 200,000,000 classes x 512: W alone is 381 GiB, whatever the loss does with it
    assert bench.estimate_gib("GroupLoss batch T=1", 32, 200_000_000, 512) > 381
    assert bench.estimate_gib("GradML", 32, 200_000_000, 512) == 0.05  # no parameters


def test_a_table_of_losses_timed_in_separate_rounds_says_so():
    rows = [dict(n=8, m=10, loss=name, median_ms=ms, work_mib=None, interleaved=False)
            for name, ms in ((bench.REFERENCE, 2.0), ("GradML", 1.0))]
    table = bench.markdown(rows)
    assert "1.0 ms (0.50x)" in table
    assert "At m = 10 the losses' parameters did not fit together" in table
    assert "did not fit" not in bench.markdown([dict(r, interleaved=True) for r in rows])


def test_the_recorded_commit_marks_uncommitted_changes():
    from pml_grouploss.benchmark.provenance import git_commit

    assert bench.environment()["commit"] == (git_commit() or "unknown")


def test_the_defaults_are_unchanged_and_quick_fills_only_what_is_unset(tmp_path, quiet_main):
    out = tmp_path / "table.md"
    bench.main(["--n", "16", "--m", "12", "--losses", "GroupLoss batch T=1", "GradML",
                "--out", str(out)])
    assert quiet_main == [("threads", 1), ("measure", 16, 12, 512, 15, 6.0,
                                           ["GroupLoss batch T=1", "GradML"])]
    # the command of the call, not of the process that made it (pytest's here)
    assert "loss_speed_benchmark.py --n 16 --m 12 --losses 'GroupLoss batch T=1' GradML --out " \
        in out.read_text()
    quiet_main.clear()
    bench.main(["--quick"])
    assert [c[1:] for c in quiet_main[1:]] == [(n, m, 512, 5, 6.0, None)
                                             for m in bench.QUICK_M for n in bench.QUICK_N]
    quiet_main.clear()
    bench.main(["--quick", "--repeats", "15", "--max-gb", "2", "--n", "8", "--m", "10"])
    assert quiet_main[1:] == [("measure", 8, 10, 512, 15, 2.0, None)]  # 15 was read as 5
    quiet_main.clear()
    bench.main(["--scaling", "--n", "8", "--m", "10", "100"])
    assert quiet_main[1:] == [("scaling", 8, [10, 100], 512, 15)]


@pytest.mark.parametrize("argv, message", [
    ([], "nothing to do: give --train-check, --log-cost or both"),
    (["--log-cost", "--iterations", "3"], "--iterations sets the --train-check epoch"),
    (["--train-check", "--iterations", "0"], "argument --iterations: must be an integer of at"),
    (["--log-cost", "--threads", "0"], "argument --threads: must be an integer of at least 1"),
])
def test_class_scale_checks_refuse_what_would_do_nothing_or_fail(argv, message, capsys):
    with pytest.raises(SystemExit) as exit_:
        checks.main(argv)
    assert exit_.value.code == 2 and message in capsys.readouterr().err


def test_timing_hides_only_the_frozen_classifier_warning(monkeypatch):
    step = bench._step

    def step_that_warns(loss, e, labels):
        warnings.warn("a warning of the loss under test", RuntimeWarning)
        return step(loss, e, labels)

    monkeypatch.setattr(bench, "_step", step_that_warns)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        bench.measure(16, 12, 8, 4, 1.0, names=["GroupLoss dense T=1"])
    messages = {str(w.message) for w in caught}
    assert "a warning of the loss under test" in messages
    assert not any("receives gradients but has not changed" in m for m in messages)
