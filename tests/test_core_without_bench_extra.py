"""The core install (torch, torchvision, PML, numpy; PML brings scikit-learn, scipy and tqdm) is
enough for every module outside ``pml_grouploss.benchmark`` (issue 12).

A fresh virtual environment per test run would take minutes; instead a subprocess installs a
``sys.meta_path`` finder that makes every import of the ``[bench]`` extra's packages fail, as in
an environment without them, and imports the core modules there.
"""

import os
import subprocess
import sys
import textwrap

import pytest

BENCH_ONLY = ("pandas", "matplotlib", "optuna")
CORE = ("losses", "functional", "inference", "evaluation", "datasets", "samplers", "miners",
        "distances", "trainers", "trunks")
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

BLOCKER = textwrap.dedent(
    """
    import importlib.abc, sys
    BLOCKED = set(sys.argv[1].split(","))

    class Block(importlib.abc.MetaPathFinder):
        def find_spec(self, name, path=None, target=None):
            if name.split(".")[0] in BLOCKED:
                raise ModuleNotFoundError(f"No module named {name!r} (blocked)", name=name)
            return None

    sys.meta_path.insert(0, Block())
    for name in sys.argv[2].split(","):
        __import__(name)
    print("imported", len(sys.argv[2].split(",")), "modules;",
          "loaded blocked:", sorted(m for m in sys.modules if m.split(".")[0] in BLOCKED))
    """
)


def _run(blocked, modules):
    return subprocess.run(
        [sys.executable, "-c", BLOCKER, ",".join(blocked), ",".join(modules)],
        capture_output=True, text=True, cwd=ROOT, timeout=300,
        env={**os.environ, "OMP_NUM_THREADS": "1"})


def test_core_modules_import_without_the_bench_extra():
    modules = ["pml_grouploss"] + [f"pml_grouploss.{m}" for m in CORE]
    result = _run(BENCH_ONLY, modules)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == f"imported {len(modules)} modules; loaded blocked: []"


@pytest.mark.parametrize("blocked", BENCH_ONLY)
def test_the_blocker_really_blocks(blocked):
    """The check can fail: the benchmark's tables need pandas, its figures matplotlib, its
    tuner Optuna."""
    module = {"pandas": "pml_grouploss.benchmark.suite", "matplotlib":
              "pml_grouploss.benchmark.figures", "optuna": "pml_grouploss.benchmark.tuning"}
    result = _run([blocked], [module[blocked]])
    assert result.returncode != 0
    assert f"No module named '{blocked}' (blocked)" in result.stderr
