"""benchmarks/notebook_settings_report.py DIR: rewrites DIR/table.md, refuses (exit 2, naming the
file) a directory a sweep did not write; the committed tables are what it writes."""

from __future__ import annotations

import glob
import importlib.util
import json
import os
import shutil

import pytest

from ._cli import refused

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
spec = importlib.util.spec_from_file_location(
    "notebook_settings_report", os.path.join(ROOT, "benchmarks", "notebook_settings_report.py"))
report = importlib.util.module_from_spec(spec)
spec.loader.exec_module(report)

ENV = dict(command="python benchmarks/notebook_settings_sweep.py --quick", wall_seconds=12.0,
           cpu_count=2, cpu_model="CPU", torch_threads=2, load_average_at_start=[1.0, 1.0, 1.0],
           torch="2", pytorch_metric_learning="2.9.0", epochs=1, iterations_per_epoch=2,
           train_images=540, test_images=321, seed=0)
RUN = dict(trunk="net", epochs=1, iterations=2, seed=0, status="ok", map_at_r=0.1,
           p_at_1_cosine=0.2, embedding_std=0.5, train_seconds=1.0)
ROWS = [dict(RUN, method="untrained", batches="-", batch_size=0, trunk_lr=None,
             classifier_lr=None, p_at_1=0.171),
        dict(RUN, method="grouploss", batches="m_per_class", batch_size=32, trunk_lr=0.01,
             classifier_lr=0.001, p_at_1=0.25)]


def _sweep_dir(tmp_path):
    report.write_outputs(ROWS, ENV, str(tmp_path))
    (tmp_path / "table.md").unlink()
    return tmp_path


def _refused(argv, capsys) -> str:
    return refused(report.main, argv, capsys)


def test_rewrites_the_table_of_a_sweep_directory(tmp_path, capsys):
    out = _sweep_dir(tmp_path)
    assert report.main([str(out)]) == 0
    table = (out / "table.md").read_text()
    assert table == report.markdown(report.load_rows(str(out / "results.csv")), ENV)
    assert "**Untrained trunk: P@1 0.171, MAP@R 0.100**" in table and "| +0.079 | ok |" in table
    assert f"wrote {out / 'table.md'}" in capsys.readouterr().out


def test_help_and_a_missing_argument_are_argparse_not_a_directory(capsys, tmp_path,
                                                                   monkeypatch):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(SystemExit) as exit_:
        report.main(["--help"])
    assert exit_.value.code == 0 and "usage: " in capsys.readouterr().out
    assert "the following arguments are required: DIR" in _refused([], capsys)
    assert os.listdir(tmp_path) == []


@pytest.mark.parametrize("spoil, message", [
    (lambda d: shutil.rmtree(d), "no such directory"),
    (lambda d: (d / "results.csv").unlink(), "results.csv: missing"),
    (lambda d: (d / "environment.json").write_text(""), "environment.json: empty"),
    (lambda d: (d / "environment.json").write_text("{"), "environment.json: not JSON"),
    (lambda d: (d / "environment.json").write_text(json.dumps(
        {k: v for k, v in ENV.items() if k != "wall_seconds"})), "environment.json: no "
     "wall_seconds"),
    (lambda d: (d / "environment.json").write_text(json.dumps(
        dict(ENV, load_average_at_start=[]))), "environment.json: load_average_at_start must be "
     "a non-empty list of numbers, got []"),
    (lambda d: (d / "environment.json").write_text(json.dumps(dict(ENV, command=5))),
     "environment.json: command must be a string, got 5"),
    (lambda d: (d / "environment.json").write_text(json.dumps(
        dict(ENV, wall_seconds="12", test_images=3.5))), "environment.json: wall_seconds must be "
     'a number, got "12"; test_images must be an integer, got 3.5'),
    (lambda d: (d / "results.csv").write_text("method,p_at_1\nuntrained,0.1\n"),
     "results.csv: no column trunk, batches"),
    (lambda d: (d / "results.csv").write_text(
        (d / "results.csv").read_text().splitlines()[0] + "\n"), "results.csv: no runs"),
    (lambda d: (d / "results.csv").write_text(
        (d / "results.csv").read_text().replace("0.171", "high")), "a cell is not a number"),
])
def test_a_directory_a_sweep_did_not_write_is_refused_naming_the_file(spoil, message, tmp_path,
                                                                     capsys):
    out = _sweep_dir(tmp_path / "sweep")
    spoil(out)
    err = _refused([str(out)], capsys)
    assert message in err and str(out) in err
    assert "DIR must be the --output-dir of a finished notebook_settings_sweep.py run" in err
    assert not (out / "table.md").exists()


def test_results_without_the_untrained_baseline_are_refused(tmp_path, capsys):
    out = _sweep_dir(tmp_path)
    lines = (out / "results.csv").read_text().splitlines(keepends=True)
    (out / "results.csv").write_text("".join(line for line in lines if "untrained" not in line))
    assert "no `untrained` row of trunk `net`" in _refused([str(out)], capsys)


def test_the_committed_tables_are_what_the_documented_command_writes(tmp_path):
    committed = os.path.join(ROOT, "docs", "results", "notebook_settings")
    dirs = [os.path.dirname(p) for p in glob.glob(os.path.join(committed, "**", "results.csv"),
                                                   recursive=True)]
    assert len(dirs) >= 10
    for directory in dirs:
        copy = tmp_path / ("run_" + os.path.relpath(directory, committed).replace(os.sep, "_"))
        shutil.copytree(directory, copy)
        assert report.main([str(copy)]) == 0
        with open(os.path.join(directory, "table.md")) as f:
            assert (copy / "table.md").read_text() == f.read(), directory
