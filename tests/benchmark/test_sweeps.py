"""Tiny end-to-end runs of the ablation sweeps, the equal-budget tuning and the GL++ inference
ablation (few classes, one or two epochs)."""

import json
import os

import numpy as np
import pandas as pd
import pytest

from pml_grouploss.benchmark import cli, figures
from pml_grouploss.benchmark.ablations import ABLATIONS, run_ablation
from pml_grouploss.benchmark.config import BenchmarkConfig
from pml_grouploss.benchmark.suite import run_benchmark
from pml_grouploss.benchmark.tuning import run_tuning

TINY = dict(
    epochs=1,
    eval_every=1,
    max_classes=10,
    classes_per_batch=4,
    samples_per_class=4,
    num_folds=5,
    save_embeddings=False,
    workers=1,
)
quiet = dict(log=lambda *_: None)


def test_ablation_variants_match_the_papers():
    steps = ABLATIONS["steps"].grid
    assert [v[1] for v in steps[:6]] == [{"num_iterations": t} for t in range(6)]
    assert steps[6][1] == {"nll_weight": 0.0}
    anchors = ABLATIONS["anchors"].grid
    assert len(anchors) == 30 and {v[3] for v in anchors} == {
        (a, m) for a in range(5) for m in range(5, 11)
    }
    assert [v[2]["classes_per_batch"] for v in ABLATIONS["classes"].grid] == [
        3,
        5,
        8,
        10,
        15,
        20,
    ]
    assert [v[1] for v in ABLATIONS["negatives"].grid] == [
        {"negatives": "clamp"},
        {"negatives": "shift"},
    ]
    assert [v[1] for v in ABLATIONS["diagonal"].grid] == [
        {"zero_diagonal": False},
        {"zero_diagonal": True},
    ]


def test_ablation_run_writes_table_and_figure(tmp_path):
    cfg = BenchmarkConfig().replace(seeds=(0,), **TINY)
    per_seed = run_ablation("negatives", cfg, str(tmp_path), **quiet)
    assert per_seed.method.tolist() == ["clamp", "shift"]
    assert "precision_at_1" not in per_seed.columns  # validation only by default
    md = (tmp_path / "results.md").read_text()
    assert "| clamp |" in md and "val R@1" in md
    assert (tmp_path / "figures" / "ablation_negatives.png").is_file()
    params = [json.loads(p) for p in per_seed.params]
    assert [p["negatives"] for p in params] == ["clamp", "shift"]


@pytest.mark.slow
def test_tuning_gives_every_method_the_same_budget(tmp_path):
    cfg = BenchmarkConfig().replace(seeds=(0,), methods=("grouploss", "triplet"), **TINY)
    best = run_tuning(cfg, str(tmp_path), budget=2, **quiet)
    per_seed = pd.read_csv(tmp_path / "per_seed.csv")
    assert per_seed.groupby("method_name").size().to_dict() == {"grouploss": 2, "triplet": 2}
    assert set(best) == {"grouploss", "triplet"}
    assert json.loads((tmp_path / "best_params.json").read_text()) == best
    assert "precision_at_1" not in per_seed.columns  # the test classes are never evaluated


@pytest.mark.slow
def test_inference_ablation_on_finished_run(tmp_path, capsys):
    cfg = BenchmarkConfig().replace(seeds=(0,), methods=("grouploss",), **TINY)
    run_benchmark(cfg, str(tmp_path), figures=False, **quiet)
    assert cli.main(["inference", str(tmp_path)]) == 0
    out = tmp_path / "inference_ablation_grouploss"
    df = pd.read_csv(out / "per_seed.csv")
    assert df.configuration.iloc[0] == "baseline"
    assert "+ flip alone" in df.configuration.tolist()
    assert "+ beta alone" in df.configuration.tolist()
    assert any(c.startswith("cumulative: flip + beta") for c in df.configuration)
    # the cnn trunk at 28x28 ends in a 1x1 map: mixed pooling would only repeat the baseline
    assert not any("mixed_pooling" in c for c in df.configuration)
    # the baseline row reproduces the run's own test numbers (same checkpoint, same tester)
    final = json.loads((tmp_path / "runs/grouploss/seed0/final.json").read_text())
    assert df.precision_at_1.iloc[0] == pytest.approx(final["precision_at_1"])
    md = (out / "results.md").read_text()
    assert "Chosen parameters" in md and '"mixed_pooling_note": "not applicable: the identity' in md


@pytest.mark.slow
def test_gradml_and_pml_losses_by_name(tmp_path):
    cfg = BenchmarkConfig().replace(
        seeds=(0,), methods=("gradml", "MultiSimilarityLoss", "NormalizedSoftmaxLoss"), **TINY
    )
    per_seed = run_benchmark(cfg, str(tmp_path), figures=False, **quiet)
    assert per_seed.method.tolist() == ["gradml", "MultiSimilarityLoss", "NormalizedSoftmaxLoss"]
    params = [json.loads(p) for p in per_seed.params]
    assert params[0] == {"k": 2.0, "w": 1.0}
    # a PML loss with weights gets num_classes and its own optimizer at lr 1e-2
    assert params[2] == {"loss_lr": 0.01}
    logs = os.listdir(tmp_path / "runs/NormalizedSoftmaxLoss/seed0/logs")
    assert "metric_loss_optimizer_Adam.csv" in logs
    assert not any(
        "metric_loss_optimizer" in f
        for f in os.listdir(tmp_path / "runs/MultiSimilarityLoss/seed0/logs")
    )


def test_anchors_heatmap_grid_and_figure(tmp_path):
    # Two seeds per cell; cell (1, 6) deliberately not run.
    rows = []
    cells = {(0, 5): (0.50, 0.60), (1, 5): (0.70, 0.80), (0, 6): (0.20, 0.40)}
    for (a, m), values in cells.items():
        for seed, v in enumerate(values):
            rows.append(dict(method=f"a={a},m={m}", seed=seed, x=str((a, m)),
                             val_precision_at_1=v))
    per_seed = pd.DataFrame(rows)
    anchors, ms, grid = figures.heatmap_grid(per_seed, "val_precision_at_1")
    assert anchors == [0, 1] and ms == [5, 6]
    assert grid[0, 0] == pytest.approx(55.0) and grid[1, 0] == pytest.approx(75.0)
    assert grid[0, 1] == pytest.approx(30.0) and np.isnan(grid[1, 1])
    path = figures.ablation_figure(per_seed, ABLATIONS["anchors"], str(tmp_path), "anchors")
    assert path.endswith("ablation_anchors.png") and os.path.getsize(path) > 1000
