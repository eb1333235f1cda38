"""The convergence curves with early-stopped runs: a stopped run keeps its last value."""
import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import pandas as pd  # noqa: E402
import pytest  # noqa: E402

from pml_grouploss.benchmark.figures import _curves, band_label  # noqa: E402


def test_a_stopped_run_is_carried_forward_and_marked():
    hist = pd.DataFrame({
        "method": ["gl"] * 5, "split": ["val"] * 5, "seed": [0, 0, 1, 1, 1],
        "epoch": [2, 4, 2, 4, 6], "precision_at_1": [0.5, 0.7, 0.6, 0.8, 0.9]})
    fig, ax = plt.subplots()
    _curves(ax, hist, "val", ["gl"])
    line, stops = ax.lines
    assert list(line.get_xdata()) == [2, 4, 6]
    assert list(line.get_ydata()) == pytest.approx([55.0, 75.0, 80.0])  # seed 0 keeps 0.7
    assert list(stops.get_xdata()) == [4] and list(stops.get_ydata()) == pytest.approx([75.0])
    plt.close(fig)


def test_the_title_says_a_single_seed_has_no_band():
    # the figure was titled "mean ± 95% CI" with one seed, whose band has zero width
    one = pd.DataFrame({"seed": [0, 0], "epoch": [1, 2]})
    assert band_label(one) == "one seed: no confidence band"
    assert band_label(pd.concat([one, one.assign(seed=1)])) == "mean ± 95% CI"


def test_importing_the_figures_keeps_the_callers_matplotlib_backend():
    # A notebook that runs the benchmark and then plots (notebook 4) keeps its inline backend:
    # the figures module draws on Figure objects and never selects a backend itself.
    import subprocess
    import sys

    code = ("import matplotlib; matplotlib.use('svg'); "
            "import pml_grouploss.benchmark.figures, pml_grouploss.benchmark.cli; "
            "print(matplotlib.get_backend())")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "svg"
