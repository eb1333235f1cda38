import math

import pandas as pd
import pytest

from pml_grouploss.benchmark.aggregate import format_table, mean_ci, summarize, to_markdown


def test_mean_ci_hand_example():
    # values 0.80, 0.84, 0.88: mean 0.84, s = 0.04, t_{0.975, 2} = 4.302652729911275
    # half-width = 4.302652729911275 * 0.04 / sqrt(3) = 0.099365...
    mean, half = mean_ci([0.80, 0.84, 0.88])
    assert mean == pytest.approx(0.84, abs=1e-12)
    assert half == pytest.approx(4.302652729911275 * 0.04 / math.sqrt(3), rel=1e-9)
    assert half == pytest.approx(0.0993655, abs=1e-6)


def test_mean_ci_two_values_and_confidence():
    # n=2: t_{0.975,1} = 12.706204736174707, s = |a-b|/sqrt(2)
    mean, half = mean_ci([1.0, 3.0])
    assert mean == 2.0 and half == pytest.approx(12.706204736174707 * math.sqrt(2) / math.sqrt(2))
    _, half90 = mean_ci([1.0, 3.0], confidence=0.90)  # t_{0.95,1} = 6.313751514675041
    assert half90 == pytest.approx(6.313751514675041)


def test_mean_ci_degenerate():
    assert mean_ci([0.5])[0] == 0.5 and math.isnan(mean_ci([0.5])[1])
    assert mean_ci([0.7, 0.7, 0.7]) == (pytest.approx(0.7), pytest.approx(0.0, abs=1e-12))
    assert all(math.isnan(v) for v in mean_ci([]))
    assert mean_ci([0.2, float("nan"), 0.4])[0] == pytest.approx(0.3)


def test_summarize_and_table():
    df = pd.DataFrame(
        {
            "method": ["b", "b", "b", "a", "a", "a"],
            "seed": [0, 1, 2, 0, 1, 2],
            "precision_at_1": [0.80, 0.84, 0.88, 0.5, 0.5, 0.5],
            "NMI": [0.1, 0.2, 0.3, 0.4, 0.4, 0.4],
        }
    )
    s = summarize(df)
    assert s.method.tolist() == ["b", "a"] and s.n_seeds.tolist() == [3, 3]
    assert s.precision_at_1_mean[0] == pytest.approx(0.84)
    assert s.precision_at_1_ci[0] == pytest.approx(0.0993655, abs=1e-6)
    t = format_table(s)
    assert t["P@1"].tolist() == ["84.0 ± 9.9", "50.0 ± 0.0"]
    assert t["NMI"].tolist() == ["20.0 ± 24.8", "40.0 ± 0.0"]
    md = to_markdown(t)
    assert md.splitlines()[0] == "| method | P@1 | NMI | seeds |"
    assert md.splitlines()[2] == "| b | 84.0 ± 9.9 | 20.0 ± 24.8 | 3 |"
