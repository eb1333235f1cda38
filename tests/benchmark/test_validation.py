"""BenchmarkConfig validates every field once, with errors that name the field (issue 8)."""

import dataclasses
import json

import pytest

from pml_grouploss.benchmark.config import PAPER_CONFIGS, BenchmarkConfig
from pml_grouploss.benchmark.suite import prepare_output, run_benchmark
from pml_grouploss.benchmark.validation import (
    ConfigTypeError,
    ConfigValueError,
    check_output_dir,
    cli_message,
)


@pytest.mark.parametrize(
    "changes, error, field, message",
    [
        ({"iterations_per_epoch": 0}, ValueError, "iterations_per_epoch", "must be an int >= 1"),
        ({"patience": -1}, ValueError, "patience", "patience must be an int >= 0, got -1"),
        ({"num_folds": 1}, ValueError, "num_folds", "num_folds must be an int >= 2, got 1"),
        ({"image_size": 0}, ValueError, "image_size", "image_size must be an int >= 16"),
        ({"seeds": (0, -1)}, ValueError, "seeds", "seeds must be an int >= 0, got -1"),
        ({"seeds": ()}, ValueError, "seeds", "seeds must name at least one seed"),
        ({"methods": ()}, ValueError, "methods", "methods must name at least one method"),
        ({"methods": ("triplet", "triplet")}, ValueError, "methods", "must be distinct"),
        ({"epochs": 5, "eval_every": 2}, ValueError, "epochs", "must be a multiple of"),
        ({"lr": float("inf")}, ValueError, "lr", "lr must be a finite number > 0, got inf"),
        ({"weight_decay": -1e-4}, ValueError, "weight_decay", "must be a finite number >= 0"),
        ({"max_classes": 4}, ValueError, "max_classes", "fewer training classes than the 5"),
        ({"epochs": 2.5}, TypeError, "epochs", "epochs must be an int, got float 2.5"),
        ({"optimizer": "adagrad"}, ValueError, "optimizer", "optimizer must be one of"),
        ({"overrides": {"grouploss": {"loss_lr": "abc"}}}, TypeError, "overrides", "loss_lr"),
        ({"overrides": {"grouploss": 3}}, TypeError, "overrides", "must map parameter names"),
        ({"overrides": {"grouploss": {"num_anchors": -1}}}, ValueError, "overrides", "num_anch"),
        ({"overrides": {"triplet": {"no_such": 1}}}, ValueError, "overrides", "'no_such'"),
        ({"recall_ks": (1, 0)}, ValueError, "recall_ks", "recall_ks must be an int >= 1, got 0"),
    ],
)
def test_invalid_field_raises_naming_it(changes, error, field, message):
    with pytest.raises(error) as info:
        BenchmarkConfig(**changes)
    assert isinstance(info.value, (ConfigValueError, ConfigTypeError))
    assert info.value.field == field and message in str(info.value)
    # and the same check when a valid config is changed
    with pytest.raises(error, match=message.split(",")[0].replace("(", r"\(")):
        dataclasses.replace(BenchmarkConfig(), **changes)


def test_valid_configs_still_construct():
    assert BenchmarkConfig().methods == ("grouploss", "grouploss_ce", "triplet", "proxyanchor")
    for name, fields in PAPER_CONFIGS.items():
        cfg = BenchmarkConfig.from_dict({**fields, "data_root": "/data"})
        assert cfg.image_size == 227 and cfg.epochs % cfg.eval_every == 0, name
        assert BenchmarkConfig.from_dict(json.loads(cfg.to_json())) == cfg  # config.json
    cfg = BenchmarkConfig(patience=0, iterations_per_epoch=1, image_size=16, seeds=(7, 0))
    assert (cfg.patience, cfg.iterations_per_epoch, cfg.seeds) == (0, 1, (7, 0))
    assert BenchmarkConfig(trunk="resnet50", image_size=1).image_size == 1  # crops 227 itself


def test_cli_message_names_the_option():
    def message(**changes):
        with pytest.raises((ConfigValueError, ConfigTypeError)) as info:
            BenchmarkConfig(**changes)
        return cli_message(info.value)

    assert message(iterations_per_epoch=0).startswith(
        "argument --iterations-per-epoch: must be an int >= 1, got 0; omit it"
    )
    assert message(methods=()).startswith("argument --losses: must name at least one method")
    assert message(methods=("NoSuchLoss",)).startswith("argument --losses: unknown loss 'NoSuchLoss'")
    assert message(overrides={"gradml": {"lr": 0}}).startswith(
        "argument --set/--params-file: gradml.lr must be a finite number > 0, got 0"
    )
    assert message(log_freq=0) == "config field log_freq must be an int >= 1, got 0"


def test_output_dir_checks_create_nothing(tmp_path):
    check_output_dir(str(tmp_path / "new" / "deeper"))
    check_output_dir(tmp_path)  # existing, writable
    assert sorted(p.name for p in tmp_path.iterdir()) == []
    (tmp_path / "f").write_text("x")
    with pytest.raises(ValueError, match="output_dir '.*/f' is a file, not a directory"):
        prepare_output(BenchmarkConfig(), str(tmp_path / "f"))
    with pytest.raises(ValueError, match="--output-dir '/proc/x/y' cannot be created or written"):
        check_output_dir("/proc/x/y", "--output-dir")


def test_more_folds_than_training_classes_is_named(tmp_path):
    assert BenchmarkConfig(max_classes=6, num_folds=6).num_folds == 6
    with pytest.raises(ValueError, match="max_classes 5 leaves fewer training classes"):
        BenchmarkConfig(max_classes=5, num_folds=6)
    with pytest.raises(ValueError, match="num_folds 200 exceeds the 135 training classes"):
        run_benchmark(BenchmarkConfig(num_folds=200), str(tmp_path), log=lambda *_: None)
    assert not (tmp_path / "config.json").exists()


def test_build_method_checks_learning_rates():
    from pml_grouploss.benchmark.methods import build_method, get_method

    with pytest.raises(TypeError, match="grouploss.loss_lr must be a real number, got str 'abc'"):
        build_method(get_method("grouploss"), 3, 8, {"loss_lr": "abc"})
    with pytest.raises(ValueError, match=r"triplet.lr must be a finite number > 0, got nan"):
        build_method(get_method("triplet"), 3, 8, {"lr": float("nan")})
    built = build_method(get_method("proxyanchor"), 3, 8, {"loss_lr": 0.03, "lr": 2e-3})
    assert (built.loss_lr, built.lr, built.params["loss_lr"]) == (0.03, 2e-3, 0.03)
