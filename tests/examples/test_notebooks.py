"""Every notebook in examples/notebooks/ runs top to bottom, as a user would run it.

Each notebook ends with its own assertions on the numbers it shows (accuracies above the
untrained trunk, identical rankings, ...), so a notebook that runs but stops teaching the
right thing fails here too. Skip them in a fast run with ``-m "not notebook"``.
"""
import glob
import json
import os
import time

import nbclient
import nbformat
import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
NOTEBOOK_DIR = os.path.join(ROOT, "examples", "notebooks")
NOTEBOOKS = sorted(glob.glob(os.path.join(NOTEBOOK_DIR, "*.ipynb")))
# Each notebook is meant to take <= 3 minutes on 2 CPU cores, i.e. <= 360 s of CPU time in its
# kernel (CPU time, not wall time: the budget must not depend on what else the machine runs).
MAX_CPU_SECONDS = 360
CELL_TIMEOUT = 900  # seconds of wall time per cell: a hang fails instead of blocking CI
_CPU_CELL = ("import json, resource\n"
             "_r = resource.getrusage(resource.RUSAGE_SELF)\n"
             "print(json.dumps(_r.ru_utime + _r.ru_stime))")

def _load(path):
    with open(path, encoding="utf-8") as f:
        return json.load(f)


def test_there_are_six_notebooks():
    assert len(NOTEBOOKS) == 6, NOTEBOOKS


@pytest.mark.parametrize("path", NOTEBOOKS, ids=os.path.basename)
def test_notebook_is_stored_without_outputs(path):
    nb = _load(path)
    for cell in nb["cells"]:
        if cell["cell_type"] == "code":
            assert cell.get("outputs") == [] and cell.get("execution_count") is None, (
                f"{os.path.basename(path)} has outputs: clear them before committing")
    assert os.path.getsize(path) < 1_000_000


@pytest.mark.slow
@pytest.mark.notebook
@pytest.mark.parametrize("path", NOTEBOOKS, ids=os.path.basename)
def test_notebook_runs(path):
    nb = nbformat.read(path, as_version=4)
    nb.cells.append(nbformat.v4.new_code_cell(_CPU_CELL))
    client = nbclient.NotebookClient(
        nb, timeout=CELL_TIMEOUT, kernel_name="python3",
        resources={"metadata": {"path": NOTEBOOK_DIR}})
    start = time.perf_counter()
    client.execute()
    wall = time.perf_counter() - start
    cpu = json.loads(nb.cells[-1].outputs[0]["text"])
    print(f"{os.path.basename(path)}: {wall:.0f} s wall, {cpu:.0f} s CPU")
    assert cpu < MAX_CPU_SECONDS, f"{os.path.basename(path)} used {cpu:.0f} s of CPU"


def test_readme_and_site_link_every_notebook():
    readme = open(os.path.join(ROOT, "README.md"), encoding="utf-8").read()
    site = open(os.path.join(ROOT, "docs", "notebooks.md"), encoding="utf-8").read()
    nav = open(os.path.join(ROOT, "mkdocs.yml"), encoding="utf-8").read()
    for path in NOTEBOOKS:
        name = os.path.basename(path)
        assert f"(examples/notebooks/{name})" in readme, name
        assert f"(notebooks/{name})" in site and f"notebooks/{name}" in nav, name
