"""benchmarks/reranking_benchmark.py: arguments that would crash a child or print an empty or
meaningless table exit 2 before any subprocess; a small valid run prints its row."""

from __future__ import annotations

import importlib.util
import os

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
spec = importlib.util.spec_from_file_location(
    "reranking_benchmark", os.path.join(ROOT, "benchmarks", "reranking_benchmark.py"))
bench = importlib.util.module_from_spec(spec)
spec.loader.exec_module(bench)


@pytest.mark.parametrize("argv, message", [
    (["--settings", "default", "--both", "200", "--repeats", "0"],
     "--repeats must be at least 1 (got 0)"),
    (["--settings", "default", "--both", "200", "--dim", "0"], "--dim must be at least 1 (got 0)"),
    (["--settings", "--both", "200"],
     "--settings needs at least one of default, CUB200, Cars196, InShop, SOP"),
    (["--both"], "nothing to measure: give --both and/or --sparse sizes N"),
    (["--settings", "default", "--both", "5"], "--both/--sparse: N must exceed 10 (the top-10 "
                                               "neighbours each query keeps besides itself are "
                                               "compared), got 5"),
    (["--both", "0", "200"], "N must exceed 10"),
    (["--both", "200", "--sparse", "10"], "N must exceed 10 (the top-10 neighbours each query "
                                          "keeps besides itself are compared), got 10"),
])
def test_bad_arguments_exit_2_before_any_child_runs(argv, message, tmp_path, monkeypatch,
                                                    capsys):
    monkeypatch.setattr(bench.subprocess, "run", lambda *a, **k: pytest.fail("ran a child"))
    with pytest.raises(SystemExit) as exit_:
        bench.main(argv + ["--tmp", str(tmp_path / "tmp")])
    assert exit_.value.code == 2
    assert message in capsys.readouterr().err
    assert os.listdir(tmp_path) == []


def test_an_uncreatable_tmp_is_refused(tmp_path, capsys):
    (tmp_path / "a_file").write_text("x")
    with pytest.raises(SystemExit) as exit_:
        bench.main(["--both", "100", "--tmp", str(tmp_path / "a_file" / "tmp")])
    assert exit_.value.code == 2 and "--tmp " in capsys.readouterr().err


def test_the_smallest_valid_size_runs_and_compares_the_top_10(tmp_path, capsys):
    bench.main(["--settings", "default", "--both", "11", "--dim", "4", "--tmp", str(tmp_path)])
    row = capsys.readouterr().out.splitlines()[-1]
    assert row.startswith("| default | 20/6/0.3 | 11 | ") and row.endswith(" | 100.00% |")
