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


@pytest.mark.skipif(not os.path.isdir("/proc/self"), reason="needs Linux's /proc")
def test_an_unwritable_tmp_is_refused_before_the_table(monkeypatch, capsys):
    monkeypatch.setattr(bench.subprocess, "run", lambda *a, **k: pytest.fail("ran a child"))
    with pytest.raises(SystemExit) as exit_:  # /proc exists and takes no files, even for root
        bench.main(["--both", "100", "--tmp", "/proc"])
    captured = capsys.readouterr()
    assert exit_.value.code == 2 and "--tmp /proc: cannot be created or written" in captured.err
    assert "| setting |" not in captured.out


def test_without_faiss_the_run_is_refused_before_the_table(tmp_path, monkeypatch, capsys):
    real = bench.importlib.util.find_spec
    monkeypatch.setattr(bench.importlib.util, "find_spec",
                        lambda name, *a: None if name == "faiss" else real(name, *a))
    with pytest.raises(SystemExit) as exit_:
        bench.main(["--both", "100", "--tmp", str(tmp_path)])
    captured = capsys.readouterr()
    assert exit_.value.code == 2 and "needs faiss: pip install faiss-cpu" in captured.err
    assert "| setting |" not in captured.out


@pytest.mark.parametrize("dense, sparse, shown", [
    (950.0, 100.0, "0.11"),  # 1/9.5: not "1/10"
    (141.0, 119.0, "0.84"),
    (0.9, 0.4, "1.00"),  # both below 1 MiB: no difference shown, not "more"
    (42.0, 46.0, "1.10"),
])
def test_the_memory_column_is_the_sparse_over_dense_peak(dense, sparse, shown):
    res = {"dense": {"seconds": 2.0, "peak_mib": dense},
           "sparse": {"seconds": 1.0, "peak_mib": sparse}}
    assert bench._row("default", 1000, res, 1.0).split(" | ")[-2] == shown
