"""A tiny benchmark run through every dataset adapter on its fixture tree."""

import math

import pytest

from pml_grouploss.benchmark.config import BenchmarkConfig
from pml_grouploss.benchmark.suite import run_benchmark

from dataset_trees import write_cars_tree, write_cub_tree, write_omniglot_tree, write_sop_tree


def _tree(name, root):
    if name == "omniglot":
        write_omniglot_tree(root, background={"A": 4, "B": 4}, evaluation={"C": 4}, drawers=3)
    elif name == "cub":
        write_cub_tree(root, n_classes=200, per_class=2)
    elif name == "cars196":
        write_cars_tree(root, n_classes=196, per_class=2)
    else:
        write_sop_tree(root, n_train=8, n_test=6, per_class=2)


@pytest.mark.parametrize("dataset", ["omniglot", "cub", "cars196", "sop"])
def test_tiny_run_on_fixture_tree(tmp_path, dataset):
    root = str(tmp_path / "data")
    _tree(dataset, root)
    cfg = BenchmarkConfig().replace(
        dataset=dataset,
        data_root=root,
        epochs=1,
        eval_every=1,
        max_classes=8,
        seeds=(0,),
        methods=("grouploss", "triplet"),
        classes_per_batch=2,
        samples_per_class=2,
        num_folds=4,
        image_size=28,
        workers=1,
    )
    per_seed = run_benchmark(cfg, str(tmp_path / "out"), figures=False, log=lambda *_: None)
    assert len(per_seed) == 2
    for _, row in per_seed.iterrows():
        assert row.num_train_classes == 6 and row.num_val_classes == 2
        assert 0.0 <= row.precision_at_1 <= 1.0 and math.isfinite(row.mean_average_precision_at_r)
