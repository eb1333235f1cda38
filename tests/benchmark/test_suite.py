"""Results directories: config and environment are recorded next to the numbers."""

import json

import torch

from pml_grouploss.benchmark.config import BenchmarkConfig
from pml_grouploss.benchmark.suite import prepare_output


def test_prepare_output_records_config_and_environment(tmp_path):
    cfg = BenchmarkConfig(seeds=(0,), epochs=2)
    prepare_output(cfg, str(tmp_path))
    assert BenchmarkConfig.from_dict(json.loads((tmp_path / "config.json").read_text())) == cfg
    env = json.loads((tmp_path / "environment.json").read_text())
    assert env["packages"]["torch"].split("+")[0] == torch.__version__.split("+")[0]
    assert env["packages"]["pytorch-metric-learning"].startswith("2.")
    assert env["torch_threads"] == torch.get_num_threads()
    commit = env["git_commit"]
    assert commit is None or len(commit.split("+")[0]) == 40


def test_threads_option_sets_torch_threads(tmp_path):
    before = torch.get_num_threads()
    target = 1 if before != 1 else 2
    try:
        prepare_output(BenchmarkConfig(seeds=(0,), epochs=2, threads=target), str(tmp_path))
        assert torch.get_num_threads() == target
        assert json.loads((tmp_path / "environment.json").read_text())["torch_threads"] == target
    finally:
        torch.set_num_threads(before)
