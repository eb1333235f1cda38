"""benchmarks/regime_search.py: every regime command runs end to end (tiny), on validation
only, and the report pairs GroupLoss with each comparison per seed."""

import importlib.util
import os
import sys

import pandas as pd
import pytest

from ._cli import refused

HERE = os.path.dirname(os.path.abspath(__file__))
spec = importlib.util.spec_from_file_location(
    "regime_search", os.path.join(HERE, "..", "..", "benchmarks", "regime_search.py"))
regime_search = importlib.util.module_from_spec(spec)
sys.modules["regime_search"] = regime_search  # its dataclass looks its module up
spec.loader.exec_module(regime_search)


def test_commands_are_validation_only_and_name_their_directory():
    args = regime_search.command("label_noise_20", 5, "R", test=False, tiny=False)
    assert args[:5] == ["run", "--seeds", "5", "--output-dir", os.path.join("R", "label_noise_20")]
    assert "--no-test" in args and args[args.index("--label-noise") + 1] == "0.2"
    test_args = regime_search.command("warmup_4", 5, "R", test=True, tiny=False,
                                      methods=["grouploss"])
    assert "--no-test" not in test_args and os.path.join("R", "test_warmup_4") in test_args
    assert test_args[test_args.index("--losses") + 1] == "grouploss"
    assert test_args[test_args.index("--warmup-epochs") + 1] == "4"
    # a smoke run has 2 epochs: its warm-up stays below them (else GroupLoss is plain CE only)
    tiny = regime_search.command("warmup_4", 5, "R", test=True, tiny=True)
    assert tiny[tiny.index("--warmup-epochs") + 1] == "1"
    assert tiny[tiny.index("--epochs") + 1] == "2"


def _write_val(root, name, rows):
    os.makedirs(os.path.join(root, name))
    pd.DataFrame(rows, columns=["method", "seed", "val_precision_at_1",
                                "val_mean_average_precision_at_r"]).to_csv(
        os.path.join(root, name, "per_seed.csv"), index=False)


def test_each_method_gets_its_best_trained_regime_within_one_condition(tmp_path):
    root = str(tmp_path)
    _write_val(root, "default", [(m, 0, 0.80, 0.50) for m in regime_search.ALL])
    # best for triplet by R@1 + MAP@R (0.83 + 0.49 > 0.80 + 0.50), also trains the others
    _write_val(root, "classes_40x3", [("triplet", 0, 0.83, 0.49), ("grouploss", 0, 0.70, 0.4),
                                      ("grouploss_ce", 0, 0.70, 0.4), ("proxyanchor", 0, 0.7, 0.4)])
    _write_val(root, "nll_only", [("grouploss", 0, 0.81, 0.52)])  # GroupLoss only
    # the best numbers of all, but under label noise: another condition, never chosen for clean
    _write_val(root, "label_noise_20", [(m, 0, 0.99, 0.99) for m in regime_search.ALL])
    assert regime_search.choose(root) == {"grouploss": "nll_only", "grouploss_ce": "default",
                                          "triplet": "classes_40x3", "proxyanchor": "default"}
    _write_val(root, "label_noise_20_nll_only", [("grouploss", 0, 0.98, 0.99)])
    assert regime_search.choose(root, "label_noise_20") == {
        "grouploss": "label_noise_20", "grouploss_ce": "label_noise_20",
        "triplet": "label_noise_20", "proxyanchor": "label_noise_20"}  # 1.98 > 1.97
    assert regime_search.CONDITIONS[:2] == ("clean", "label_noise_10")


def test_paired_differences_per_seed():
    rows = pd.DataFrame({
        "method": ["grouploss", "grouploss_ce", "triplet", "proxyanchor"] * 2,
        "seed": [0] * 4 + [1] * 4,
        "val_precision_at_1": [0.80, 0.78, 0.79, 0.70, 0.90, 0.86, 0.85, 0.80]})
    diffs = regime_search.paired(rows, "val_precision_at_1")
    assert diffs["grouploss_ce"][0] == pytest.approx(3.0)  # (+2, +4) points
    assert diffs["grouploss_ce"][1] == pytest.approx(12.706, rel=1e-3)  # t(0.975, 1) * 1.41 / 1.41
    assert diffs["triplet"][0] == pytest.approx(3.0) and diffs["better"] == diffs["triplet"]
    assert diffs["proxyanchor"][0] == pytest.approx(10.0)


@pytest.mark.slow
def test_every_regime_runs_tiny_and_reports(tmp_path, monkeypatch):
    monkeypatch.setenv("TQDM_DISABLE", "1")
    root = str(tmp_path)
    assert regime_search.main(["validate", "--all", "--tiny", "--seeds", "2", "--root", root]) == 0
    for name, regime in regime_search.REGIMES.items():
        rows = pd.read_csv(os.path.join(root, name, "per_seed.csv"))
        assert sorted(rows.method.unique()) == sorted(regime.methods)
        assert "precision_at_1" not in rows.columns  # no test evaluation
    md = regime_search.report(root)
    assert all(f"| {name} | 2 |" in md for name in regime_search.REGIMES)
    assert regime_search.main(["test", "clean", "label_noise_20", "--tiny", "--seeds", "2",
                               "--root", root]) == 0
    chosen = {**regime_search.choose(root), **{
        "noisy " + m: r for m, r in regime_search.choose(root, "label_noise_20").items()}}
    assert sorted(os.path.join(root, d) for d in os.listdir(root) if d.startswith("test_")) == \
        sorted({os.path.join(root, "test_" + r) for r in chosen.values()})
    for condition in ("clean", "label_noise_20"):  # each method trained once, in its regime
        rows = regime_search.test_rows(root, condition)
        assert sorted(rows.method) == sorted(list(regime_search.ALL) * 2)
        assert "precision_at_1" in rows
    md = regime_search.report(root)
    assert "Test classes under `clean`" in md and "Test classes under `label_noise_20`" in md
    summary = md.split("Every test run")[1].split("Test regimes under")[0]
    assert "| clean | 2 |" in summary and "| label_noise_20 | 2 |" in summary
    assert "| condition | GroupLoss | plain CE | Triplet | ProxyAnchor |" in summary


def test_a_grouploss_only_regime_pairs_with_the_runs_of_its_base(tmp_path):
    root = str(tmp_path)
    _write_val(root, "default", [(m, 0, 0.80, 0.50) for m in regime_search.ALL])
    _write_val(root, "label_noise_20", [(m, 0, 0.60, 0.30) for m in regime_search.ALL])
    _write_val(root, "label_noise_20_nll_only", [("grouploss", 0, 0.65, 0.35)])
    rows = regime_search.per_seed("label_noise_20_nll_only", root).set_index("method")
    assert rows.loc["grouploss", "val_precision_at_1"] == 0.65
    assert (rows.drop("grouploss")["val_precision_at_1"] == 0.60).all()  # noisy, not default


def test_test_details_give_each_method_and_the_per_seed_differences():
    rows = pd.DataFrame({
        "method": ["grouploss", "grouploss_ce", "triplet", "proxyanchor"] * 2,
        "seed": [0] * 4 + [1] * 4,
        "precision_at_1": [0.80, 0.78, 0.79, 0.70, 0.90, 0.86, 0.85, 0.80],
        "mean_average_precision_at_r": [0.30, 0.20, 0.40, 0.30, 0.50, 0.40, 0.40, 0.30]})
    md = regime_search.test_details(rows)
    r1, map_r = md.splitlines()
    assert r1.startswith("- Test R@1: grouploss 85.0 ± 63.5, grouploss_ce 82.0 ± 50.8")
    assert "(0, 1): − grouploss_ce +2.0, +4.0; − triplet +1.0, +5.0; − proxyanchor +10.0, +10.0." \
        in r1
    assert "− triplet -10.0, +10.0" in map_r
    table = regime_search.method_means({"clean": rows}).splitlines()
    assert table[0] == "| condition | GroupLoss | plain CE | Triplet | ProxyAnchor |"
    assert table[2] == "| clean | 85.0 / 40.0 | 82.0 / 30.0 | 82.0 / 40.0 | 75.0 / 30.0 |"


def _write_test(root, name, rows):
    os.makedirs(os.path.join(root, "test_" + name))
    pd.DataFrame(rows, columns=["method", "seed", "precision_at_1",
                                "mean_average_precision_at_r"]).to_csv(
        os.path.join(root, "test_" + name, "per_seed.csv"), index=False)


def test_the_test_table_reads_only_each_methods_chosen_regime(tmp_path):
    """A ``test_<regime>`` left from an earlier ``test`` (validation has since chosen another
    regime for GroupLoss) is named in the report, not averaged into the numbers."""
    root = str(tmp_path)
    _write_val(root, "default", [(m, s, 0.5, 0.2) for m in regime_search.ALL for s in range(3)])
    _write_val(root, "warmup_4", [("grouploss", s, 0.52, 0.2) for s in range(3)])
    _write_val(root, "nll_only", [("grouploss", s, 0.60, 0.2) for s in range(3)])
    others = regime_search.ALL[1:]
    # test_default also holds GroupLoss's rows from a test run when default was its regime
    _write_test(root, "default", [(m, s, 0.5, 0.2) for m in regime_search.ALL for s in range(3)])
    _write_test(root, "warmup_4", [("grouploss", s, 0.30, 0.1) for s in range(3)])  # stale
    _write_test(root, "nll_only", [("grouploss", s, 0.70, 0.3) for s in range(3)])
    rows = regime_search.test_rows(root)
    assert sorted(rows.method) == sorted(list(regime_search.ALL) * 3)
    assert (rows[rows.method == "grouploss"].precision_at_1 == 0.70).all()
    assert (rows[rows.method.isin(others)].precision_at_1 == 0.5).all()
    assert regime_search.unused_test_dirs(root) == ["test_warmup_4"]
    md = regime_search.report(root)
    assert "| clean | 3 | 70.0 ± 0.0 | +20.0 ± 0.0 | +20.0 ± 0.0 |" in md
    assert "- Test R@1: grouploss 70.0 ± 0.0, grouploss_ce 50.0 ± 0.0" in md
    assert "Not read (regimes no longer chosen on validation; rerun `test` or remove them): " \
        "`test_warmup_4`." in md


def test_a_method_not_tested_in_its_chosen_regime_gives_no_test_table(tmp_path):
    root = str(tmp_path)
    _write_val(root, "default", [(m, 0, 0.5, 0.2) for m in regime_search.ALL])
    _write_val(root, "nll_only", [("grouploss", 0, 0.60, 0.2)])  # chosen after the test run
    _write_test(root, "default", [(m, 0, 0.5, 0.2) for m in regime_search.ALL])
    assert sorted(regime_search.test_rows(root).method) == sorted(regime_search.ALL[1:])
    md = regime_search.report(root)
    assert "Every test run" not in md and "Test classes under `clean`" not in md
    assert "No test table under `clean`: grouploss not tested in the regime chosen now; " \
        "run `test clean`." in md


def test_report_names_a_regime_whose_base_has_not_run_instead_of_failing(tmp_path):
    root = str(tmp_path)
    _write_val(root, "warmup_4", [("grouploss", s, 0.8, 0.5) for s in range(2)])
    md = regime_search.report(root)
    assert "| warmup_4 |" not in md
    assert "validate warmup_4` (**not in the table: base `default` not validated yet: run " \
        "`validate default`**)" in md
    _write_val(root, "default", [(m, s, 0.8, 0.5) for m in ("triplet", "proxyanchor")
                                 for s in range(2)])  # a partial run of the base
    md = regime_search.report(root)
    assert "validate default` (**not in the table: no validation rows of grouploss, " \
        "grouploss_ce: rerun `validate default`**)" in md
    assert "(**not in the table: base `default` has no rows of grouploss_ce: rerun " \
        "`validate default`**)" in md


@pytest.mark.parametrize("argv, message", [
    (["validate"], "validate takes regime names or --all (every regime), none given"),
    (["validate", "default", "--all"], "validate takes regime names or --all (every regime), "
                                       "not both"),
    (["validate", "nosuch"], "unknown regimes ['nosuch']"),
    (["validate", "--all", "--seeds", "0"], "--seeds must be at least 1 (got 0)"),
    (["test", "--all"], "--all is for validate; test takes conditions (clean, label_noise_10"),
    (["test", "default"], "test takes conditions (clean, label_noise_10, label_noise_20, "
                          "label_noise_40), not default"),
    (["report", "default"], "report takes no regimes (got default)"),
    (["report", "--all"], "--all is for validate; report takes no regimes"),
])
def test_arguments_that_would_do_nothing_or_fail_late_are_refused(argv, message, capsys,
                                                                   monkeypatch, tmp_path):
    monkeypatch.setattr(regime_search, "bench", lambda args: pytest.fail("ran the benchmark"))
    with pytest.raises(SystemExit) as exit_:
        regime_search.main(argv + ["--root", str(tmp_path)])
    assert exit_.value.code == 2
    assert message in capsys.readouterr().err


@pytest.mark.parametrize("action", ["report", "test"])
def test_a_missing_root_is_refused_naming_the_option(action, capsys, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # the default root is relative: from elsewhere it is missing
    for argv in ([action], [action, "--root", str(tmp_path / "missing")]):
        with pytest.raises(SystemExit) as exit_:
            regime_search.main(argv)
        assert exit_.value.code == 2
        err = capsys.readouterr().err
        assert "--root " in err and "no such directory" in err and str(tmp_path) in err
    assert os.listdir(tmp_path) == []


def _refused(argv, capsys) -> str:
    return refused(regime_search.main, argv, capsys)


def test_report_writes_only_into_a_root_of_regime_runs_and_its_own_readme(tmp_path, capsys):
    """``report --root .`` in a repository root must not overwrite the project's README.md."""
    readme = tmp_path / "README.md"
    readme.write_text("# My project\n")
    err = _refused(["report", "--root", str(tmp_path)], capsys)
    assert f"--root {tmp_path}: no regime run in it" in err
    _write_val(str(tmp_path), "default", [(m, 0, 0.5, 0.2) for m in regime_search.ALL])
    err = _refused(["report", "--root", str(tmp_path)], capsys)
    assert "its README.md is read-only or not one report wrote" in err and "# Regime search" in err
    assert readme.read_text() == "# My project\n"
    readme.write_text("# Regime search (issue 13)\nold\n")  # its own: rewritten
    assert regime_search.main(["report", "--root", str(tmp_path)]) == 0
    assert "| default | 1 |" in readme.read_text()


def test_one_seed_gives_means_without_an_interval_not_nan():
    rows = pd.DataFrame({"method": list(regime_search.ALL), "seed": [0] * 4,
                         "precision_at_1": [0.8, 0.7, 0.6, 0.5],
                         "mean_average_precision_at_r": [0.4, 0.3, 0.2, 0.1]})
    md = regime_search.table({"clean": rows}, "") + regime_search.test_details(rows)
    assert "nan" not in md
    assert "| clean | 1 | 80.0 | +10.0 |" in md
    assert "- Test R@1: grouploss 80.0, grouploss_ce 70.0" in md


def test_errors_of_the_benchmark_name_this_scripts_options(tmp_path, capsys, monkeypatch):
    """The benchmark's ``--output-dir`` is translated into this script's ``--root``; its
    ``--fresh`` exists here too."""
    monkeypatch.setenv("TQDM_DISABLE", "1")
    (tmp_path / "default").mkdir()
    (tmp_path / "default" / "job.json").write_text('{"job": "tune"}')  # another job's results
    with pytest.raises(SystemExit) as exit_:
        regime_search.main(["validate", "default", "--tiny", "--root", str(tmp_path)])
    err = capsys.readouterr().err
    assert exit_.value.code == 2 and "or --fresh to delete it" in err  # an option it has
    assert err.endswith(f"regime_search.py: (the benchmark's --output-dir above is "
                        f"{str(tmp_path / 'default')!r}, a regime's directory in --root)\n")
    monkeypatch.setattr(regime_search, "bench", lambda args: pytest.fail("ran the benchmark"))
    (tmp_path / "a_file").write_text("x")
    for action in ("validate", "report", "test"):
        err = _refused([action] + ["default"] * (action == "validate")
                       + ["--root", str(tmp_path / "a_file")], capsys)
        assert "--root" in err and "--output-dir" not in err
    assert f"--root {str(tmp_path / 'a_file')!r} is a file, not a directory; choose another " \
        "--root" in _refused(["validate", "default", "--root", str(tmp_path / "a_file")], capsys)
    assert "--fresh is for validate and test" in _refused(
        ["report", "--fresh", "--root", str(tmp_path)], capsys)


def test_without_pandas_help_works_and_the_rest_names_the_extra(tmp_path, capsys, monkeypatch):
    monkeypatch.setitem(sys.modules, "pandas", None)  # import pandas: ModuleNotFoundError
    monkeypatch.delitem(sys.modules, "pml_grouploss.benchmark.aggregate", raising=False)
    module = importlib.util.module_from_spec(spec)
    monkeypatch.setitem(sys.modules, "regime_search", module)
    spec.loader.exec_module(module)
    with pytest.raises(SystemExit) as exit_:
        module.main(["--help"])
    assert exit_.value.code == 0 and "usage: " in capsys.readouterr().out
    with pytest.raises(SystemExit) as exit_:
        module.main(["report", "--root", str(tmp_path)])
    assert exit_.value.code == 2
    assert 'regime_search needs pandas: pip install -e ".[bench]"' in capsys.readouterr().err


@pytest.mark.skipif(not os.path.isdir("/proc/self"), reason="needs Linux's /proc")
def test_an_unwritable_root_is_refused_before_any_work(capsys, monkeypatch):
    monkeypatch.setattr(regime_search, "bench", lambda args: pytest.fail("ran the benchmark"))
    for argv in (["report"], ["test"], ["validate", "default"]):
        err = _refused(argv + ["--root", "/proc"], capsys)
        assert "--root '/proc' cannot be created or written in '/proc'" in err
