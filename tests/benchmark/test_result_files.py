"""`inference` and `figures` on results directories that are unfinished, damaged or lack the
asked method: exit 2 with one line naming the file or option and the fix, and nothing written."""

import pytest

from pml_grouploss.benchmark import cli
from pml_grouploss.benchmark.config import BenchmarkConfig


def _usage_error(capsys, argv):
    """``argv`` exits with code 2 and a one-line message (no traceback); returns stderr."""
    with pytest.raises(SystemExit) as e:
        cli.main(argv)
    assert e.value.code == 2
    err = capsys.readouterr().err
    assert err.startswith("pml-grouploss-bench: error: ") and err.count("\n") == 1
    return err


@pytest.fixture
def results(tmp_path):
    """A results directory as `run --seeds 1 --losses grouploss,triplet` leaves it while its
    grouploss seed is still training: config.json, triplet finished (final.json)."""
    cfg = BenchmarkConfig().replace(seeds=(0,), methods=("grouploss", "triplet"))
    (tmp_path / "config.json").write_text(cfg.to_json())
    (tmp_path / "runs" / "grouploss" / "seed0").mkdir(parents=True)
    (tmp_path / "runs" / "triplet" / "seed0").mkdir(parents=True)
    (tmp_path / "runs" / "triplet" / "seed0" / "final.json").write_text("{}")
    return tmp_path


def test_inference_of_a_method_without_runs_names_the_methods(capsys, results):
    err = _usage_error(capsys, ["inference", str(results), "--method", "nosuch"])
    assert f"--method 'nosuch': '{results}' has no runs of it" in err
    assert "choose a method with finished runs: triplet" in err
    assert not (results / "inference_ablation_nosuch").exists()


def test_inference_of_an_unfinished_method(capsys, results):
    err = _usage_error(capsys, ["inference", str(results)])  # default --method grouploss
    assert "--method 'grouploss': its runs are not finished; rerun the benchmark" in err
    assert "or choose a method with finished runs: triplet" in err
    assert not (results / "inference_ablation_grouploss").exists()


def test_inference_without_finished_runs_says_what_to_run(capsys, results):
    (results / "runs" / "triplet" / "seed0" / "final.json").unlink()
    for argv in (["inference", str(results)], ["inference", str(results), "--method", "x"]):
        err = _usage_error(capsys, argv)
        assert f"'{results}' holds no finished run yet" in err
        fix = "rerun the benchmark that wrote it (same settings and --output-dir; it resumes)"
        assert fix in err


@pytest.mark.parametrize(
    "content, expected",
    [
        ("garbage{", "is damaged: not valid JSON (Expecting value at line 1 column 1)"),
        ("", "is damaged: not valid JSON"),
        ("[1, 2]", "is damaged: expected a JSON object of settings, got [1, 2]"),
        ('{"epoch": 4}', "is damaged: not the settings of a run (unknown config keys ['epoch']"),
    ],
)
@pytest.mark.parametrize("command", ["figures", "inference"])
def test_damaged_config_json_is_named_with_the_fix(capsys, results, command, content, expected):
    (results / "config.json").write_text(content)
    err = _usage_error(capsys, [command, str(results)])
    assert f"'{results / 'config.json'}' {expected}" in err
    assert "restore it, or rerun the benchmark with --fresh to delete its directory" in err


def test_resume_into_a_damaged_config_json_is_named(capsys, results, monkeypatch):
    from pml_grouploss.benchmark import suite

    monkeypatch.setattr(suite, "run_one", lambda *a, **k: pytest.fail("trained"))
    (results / "config.json").write_text("garbage{")
    err = _usage_error(capsys, ["run", "--seeds", "1", "--output-dir", str(results)])
    assert f"'{results / 'config.json'}' is damaged: not valid JSON" in err and "--fresh" in err


@pytest.mark.parametrize(
    "content, expected",
    [
        (None, "does not exist: the run has not finished; rerun the benchmark"),
        ("", "is damaged (No columns to parse from file); rerun the benchmark"),
        ("method,seed\ntriplet,0\n",
         "is damaged or not written by a run with test numbers (no columns ['precision_at_1', "
         "'train_precision_at_1']); rerun"),
    ],
)
def test_figures_name_a_missing_or_damaged_per_seed_csv(capsys, results, content, expected):
    if content is not None:
        (results / "per_seed.csv").write_text(content)
    err = _usage_error(capsys, ["figures", str(results)])
    assert f"'{results / 'per_seed.csv'}' {expected}" in err
    assert "with the same settings and --output-dir (finished seeds are reused" in err
    assert not (results / "figures").exists()  # no figure drawn before the error


def test_figures_name_a_damaged_history(capsys, results):
    (results / "per_seed.csv").write_text("method,precision_at_1,train_precision_at_1\n")
    history = results / "runs" / "triplet" / "seed0" / "history.jsonl"
    history.write_text('{"epoch": 2, "split": "val"\n')
    err = _usage_error(capsys, ["figures", str(results)])
    assert f"'{history}' is damaged (ValueError:" in err
    assert f"delete '{history.parent}' and rerun the benchmark to train that seed again" in err
