"""BenchmarkConfig validates every field once, with errors that name the field (issue 8)."""

import dataclasses
import json
import os

import pytest

from pml_grouploss.benchmark.config import PAPER_CONFIGS, BenchmarkConfig, config_fields
from pml_grouploss.benchmark.suite import prepare_output, run_benchmark
from pml_grouploss.benchmark.cli import cli_message
from pml_grouploss.benchmark.validation import ConfigTypeError, ConfigValueError, check_output_dir


@pytest.mark.parametrize(
    "changes, error, field, message",
    [
        ({"iterations_per_epoch": 0}, ValueError, "optim.iterations_per_epoch", "an int >= 1"),
        ({"patience": -1}, ValueError, "optim.patience", "optim.patience must be an int >= 0"),
        ({"num_folds": 1}, ValueError, "data.num_folds", "data.num_folds must be an int >= 2"),
        ({"image_size": 0}, ValueError, "model.image_size", "model.image_size must be an int"),
        ({"seeds": (0, -1)}, ValueError, "run.seeds", "run.seeds must be an int >= 0, got -1"),
        ({"seeds": ()}, ValueError, "run.seeds", "run.seeds must name at least one seed"),
        ({"methods": ()}, ValueError, "run.methods", "run.methods must name at least one method"),
        ({"methods": ("triplet", "triplet")}, ValueError, "run.methods", "must be distinct"),
        ({"epochs": 5, "eval_every": 2}, ValueError, "optim.epochs", "must be a multiple of"),
        ({"lr": float("inf")}, ValueError, "optim.lr", "optim.lr must be a finite number > 0"),
        ({"weight_decay": -1e-4}, ValueError, "optim.weight_decay", "must be a finite number >= 0"),
        ({"max_classes": 4}, ValueError, "data.max_classes", "fewer training classes than the 10"),
        ({"max_classes": 9}, ValueError, "data.max_classes", "validation folds of at least 2"),
        ({"classes_per_batch": 1}, ValueError, "model.classes_per_batch", "no negative pair"),
        ({"warmup_epochs": 1000}, ValueError, "optim.warmup_epochs", "plain cross-entropy only"),
        ({"lr_decay_epoch": 40}, ValueError, "optim.lr_decay_epoch", "would never decay"),
        ({"batch_size": 8}, ValueError, "model.batch_size", "holds one class of model.samples"),
        ({"epochs": 2.5}, TypeError, "optim.epochs", "optim.epochs must be an int, got float 2.5"),
        ({"optimizer": "adagrad"}, ValueError, "optim.optimizer", "optim.optimizer must be one of"),
        ({"overrides": {"grouploss": {"loss_lr": "abc"}}}, TypeError, "run.overrides", "loss_lr"),
        ({"overrides": {"grouploss": 3}}, TypeError, "run.overrides", "must map parameter names"),
        ({"overrides": {"grouploss": {"num_anchors": -1}}}, ValueError, "run.overrides", "num_a"),
        ({"overrides": {"triplet": {"no_such": 1}}}, ValueError, "run.overrides", "'no_such'"),
        ({"recall_ks": (1, 0)}, ValueError, "run.recall_ks", "run.recall_ks must be an int >= 1"),
        ({"label_noise": 1.0}, ValueError, "data.label_noise", "data.label_noise must be < 1"),
        ({"label_noise": -0.1}, ValueError, "data.label_noise", "must be a finite number >= 0"),
        ({"train_eval_classes": 0}, ValueError, "optim.train_eval_classes", "an int >= 1"),
        ({"lr_plateau_patience": 3}, ValueError, "optim.lr_plateau_patience", "multiple of"),
        ({"data_root": "/data"}, ValueError, "data.data_root", "dataset omniglot-small is embed"),
        ({"download": True}, ValueError, "data.download", "dataset omniglot-small is embedded"),
        ({"sampler": "x"}, ValueError, "model.sampler", "model.sampler must be one of"),
        ({"final_test": 1}, TypeError, "run.final_test", "run.final_test must be a bool"),
    ],
)
def test_invalid_field_raises_naming_it(changes, error, field, message):
    with pytest.raises(error) as info:
        BenchmarkConfig().replace(**changes)
    assert isinstance(info.value, (ConfigValueError, ConfigTypeError))
    assert info.value.field == field and message in str(info.value)
    # and the same check when a section of a valid config is changed
    section = field.split(".")[0]
    cfg = BenchmarkConfig()
    sections = {**cfg.__dict__, section: dataclasses.replace(getattr(cfg, section), **changes)}
    with pytest.raises(error, match=message.split(",")[0].replace("(", r"\(")):
        BenchmarkConfig(**sections)


@pytest.mark.parametrize("section", ["data", "optim"])
@pytest.mark.parametrize("value", [3, None, "epochs=2"])
def test_a_section_that_is_no_mapping_is_named(section, value):
    with pytest.raises(ConfigTypeError) as info:
        BenchmarkConfig().replace(**{section: value})
    assert info.value.field == section
    assert f"{section} must be a dict of its fields or a {section.title()}Config" in str(info.value)


def test_valid_configs_still_construct():
    assert BenchmarkConfig().run.methods == ("grouploss", "grouploss_ce", "triplet", "proxyanchor")
    for name, fields in PAPER_CONFIGS.items():
        cfg = BenchmarkConfig.from_dict({**fields, "data_root": "/data"})
        assert cfg.model.image_size == 227 and cfg.optim.epochs % cfg.optim.eval_every == 0, name
        assert BenchmarkConfig.from_dict(json.loads(cfg.to_json())) == cfg  # config.json
    cfg = BenchmarkConfig().replace(patience=0, iterations_per_epoch=1, image_size=16, seeds=(7, 0))
    assert (cfg.optim.patience, cfg.optim.iterations_per_epoch, cfg.run.seeds) == (0, 1, (7, 0))
    assert BenchmarkConfig().replace(trunk="resnet50", image_size=1).model.image_size == 1


def test_unknown_keys_and_nested_or_flat_dicts():
    cfg = BenchmarkConfig.from_dict({"optim": {"epochs": 4}, "seeds": [3], "label_noise": 0.2})
    assert (cfg.optim.epochs, cfg.run.seeds, cfg.data.label_noise) == (4, (3,), 0.2)
    assert json.loads(cfg.to_json())["optim"]["epochs"] == 4  # config.json is nested
    assert BenchmarkConfig.from_dict(cfg.to_dict()) == cfg
    for bad, key in (({"epoch": 4}, "epoch"), ({"optim": {"dataset": "cub"}}, "optim.dataset")):
        with pytest.raises(ConfigValueError, match="unknown config keys") as info:
            BenchmarkConfig.from_dict(bad)
        assert info.value.field == key


def test_old_flat_config_json_still_loads():
    """docs/results/*/config.json and old output directories were written flat."""
    path = os.path.join(os.path.dirname(__file__), "data", "flat_config.json")
    with open(path) as f:
        flat = json.load(f)
    cfg = BenchmarkConfig.from_dict(flat)
    assert (cfg.optim.epochs, cfg.model.samples_per_class, cfg.run.seeds) == (16, 8, (0, 1, 2))
    assert cfg.run.overrides == flat["overrides"] and cfg.data.label_noise == 0.0
    for dotted, f in config_fields():  # every flat key lands in its section
        value = flat.get(f.name, f.default)
        assert cfg.get(dotted) == (tuple(value) if isinstance(value, list) else value), dotted


def test_cli_message_names_the_option():
    def message(**changes):
        with pytest.raises((ConfigValueError, ConfigTypeError)) as info:
            BenchmarkConfig().replace(**changes)
        return cli_message(info.value)

    assert message(iterations_per_epoch=0).startswith(
        "argument --iterations-per-epoch: must be an int >= 1, got 0; omit it"
    )
    assert message(methods=()).startswith("argument --losses: must name at least one method")
    assert message(methods=("NoSuchLoss",)).startswith("argument --losses: unknown loss 'NoSu")
    assert message(overrides={"gradml": {"lr": 0}}).startswith(
        "argument --set/--params-file: gradml.lr must be a finite number > 0, got 0"
    )
    assert message(log_freq=0) == "config field run.log_freq must be an int >= 1, got 0"


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
    assert BenchmarkConfig().replace(max_classes=12, num_folds=6).data.num_folds == 6
    with pytest.raises(ValueError, match="max_classes 5 leaves fewer training classes"):
        BenchmarkConfig().replace(max_classes=5, num_folds=6)
    with pytest.raises(ValueError, match="num_folds 200 must be >= 2 .* at most the 135 classes"):
        run_benchmark(BenchmarkConfig().replace(num_folds=200), str(tmp_path), log=lambda *_: None)
    assert not (tmp_path / "config.json").exists()


def test_build_method_checks_learning_rates():
    from pml_grouploss.benchmark.methods import build_method, get_method

    with pytest.raises(TypeError, match="grouploss.loss_lr must be a real number, got str 'abc'"):
        build_method(get_method("grouploss"), 3, 8, {"loss_lr": "abc"})
    with pytest.raises(ValueError, match=r"triplet.lr must be a finite number > 0, got nan"):
        build_method(get_method("triplet"), 3, 8, {"lr": float("nan")})
    built = build_method(get_method("proxyanchor"), 3, 8, {"loss_lr": 0.03, "lr": 2e-3})
    assert (built.loss_lr, built.lr, built.params["loss_lr"]) == (0.03, 2e-3, 0.03)


def test_recorded_unused_data_root_is_dropped(tmp_path):
    """Older versions recorded a --data-root/--download the embedded omniglot-small ignored: the
    results still load, and a rerun without them resumes."""
    recorded = BenchmarkConfig().to_dict()
    recorded["data"].update(data_root="/not/used", download=True)
    (tmp_path / "config.json").write_text(json.dumps(recorded))
    cfg = BenchmarkConfig.from_recorded(recorded)
    assert (cfg.data.data_root, cfg.data.download) == (None, False)
    assert BenchmarkConfig.from_recorded({"data_root": "/not/used"}).data.data_root is None
    prepare_output(BenchmarkConfig(), str(tmp_path))  # not "different settings (data.data_root)"
    assert json.loads((tmp_path / "config.json").read_text())["data"]["data_root"] is None
    cub = {"data": {"dataset": "cub", "data_root": "/data/cub", "download": True}}
    assert BenchmarkConfig.from_recorded(cub).data.data_root == "/data/cub"  # kept where used
