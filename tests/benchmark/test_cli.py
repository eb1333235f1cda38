import os

import pytest

from pml_grouploss.benchmark import cli


def _err(capsys, argv):
    with pytest.raises(SystemExit) as e:
        cli.main(argv)
    assert e.value.code == 2
    return capsys.readouterr().err


def test_help_lists_every_option(capsys):
    with pytest.raises(SystemExit) as e:
        cli.main(["run", "--help"])
    assert e.value.code == 0
    out = capsys.readouterr().out
    for opt in (
        "--losses",
        "--dataset",
        "--data-root",
        "--seeds",
        "--classes-per-batch",
        "--samples-per-class",
        "--batch-size",
        "--trunk",
        "--pretrained",
        "--epochs",
        "--output-dir",
        "--fresh",
        "--set",
        "--params-file",
        "--config",
    ):
        assert opt in out
    with pytest.raises(SystemExit):
        cli.main(["--help"])
    assert "ablate" in capsys.readouterr().out


def test_unknown_loss(capsys):
    err = _err(capsys, ["--losses", "grouploss,NoSuchLoss", "--output-dir", "/nonexistent/x"])
    assert "unknown loss 'NoSuchLoss'" in err and "proxyanchor" in err


def test_missing_data_root(capsys, tmp_path):
    err = _err(capsys, ["--dataset", "cub"])
    assert "--data-root" in err
    err = _err(capsys, ["--dataset", "cub", "--data-root", str(tmp_path / "missing")])
    assert "does not exist" in err and "missing" in err


def test_missing_files_under_root(capsys, tmp_path):
    err = _err(
        capsys,
        ["--dataset", "sop", "--data-root", str(tmp_path), "--output-dir", str(tmp_path / "out")],
    )
    assert "Ebay_train.txt" in err


def test_batch_not_divisible(capsys, tmp_path):
    err = _err(
        capsys, ["--batch-size", "100", "--samples-per-class", "8", "--output-dir", str(tmp_path)]
    )
    assert "not divisible by --samples-per-class 8" in err


def test_too_many_classes_per_batch(capsys, tmp_path):
    # 135 training classes, 5 folds -> 108 left for training
    err = _err(capsys, ["--classes-per-batch", "120", "--output-dir", str(tmp_path)])
    assert "120 classes per batch but only 108 training classes" in err
    err = _err(
        capsys, ["--max-classes", "10", "--classes-per-batch", "9", "--output-dir", str(tmp_path)]
    )
    assert "only 8 training classes" in err


def test_bad_values(capsys, tmp_path):
    assert "METHOD.PARAM=VALUE" in _err(capsys, ["--set", "temperature=3"])
    assert "--seeds" in _err(capsys, ["--seeds", "x"])
    assert "multiple of --eval-every" in _err(
        capsys, ["--epochs", "5", "--eval-every", "2", "--output-dir", str(tmp_path)]
    )
    assert "not run" in _err(capsys, ["--losses", "triplet", "--set", "proxyanchor.margin=0.2"])
    assert "pretrained" in _err(
        capsys, ["--pretrained", "--output-dir", str(tmp_path), "--epochs", "2"]
    )
    assert "invalid choice" in _err(capsys, ["--dataset", "mnist"])


def test_config_from_args_parses_everything(tmp_path):
    p = tmp_path / "best.json"
    p.write_text('{"grouploss": {"temperature": 5.0, "loss_lr": 0.3}}')
    args = cli.build_parser().parse_args(
        [
            "run",
            "--losses",
            "grouploss,triplet",
            "--seeds",
            "4",
            "--set",
            "triplet.margin=0.2",
            "--params-file",
            str(p),
            "--set",
            "grouploss.temperature=10",
            "--epochs",
            "6",
        ]
    )
    cfg = cli.config_from_args(args)
    assert cfg.run.methods == ("grouploss", "triplet") and cfg.run.seeds == (0, 1, 2, 3)
    assert cfg.run.overrides == {
        "grouploss": {"temperature": 10, "loss_lr": 0.3},
        "triplet": {"margin": 0.2},
    }
    assert cfg.optim.epochs == 6
    args = cli.build_parser().parse_args(
        ["run", "--seeds", "3,7", "--config", "cub-paper", "--data-root", str(tmp_path)]
    )
    cfg = cli.config_from_args(args)
    assert cfg.run.seeds == (3, 7) and cfg.data.dataset == "cub"
    assert cfg.model.classes_per_batch == 6
    assert cfg.model.samples_per_class == 9 and cfg.run.overrides["grouploss"]["num_anchors"] == 2
    args = cli.build_parser().parse_args(["run", "--no-test", "--label-noise", "0.2"])
    cfg = cli.config_from_args(args)
    assert cfg.run.final_test is False and cfg.data.label_noise == 0.2
    assert cli.config_from_args(cli.build_parser().parse_args(["run"])).run.final_test is True
    # every Optional option can be turned off, whatever its default
    args = cli.build_parser().parse_args(["run", "--patience", "None", "--lr-plateau-patience",
                                          "none", "--max-classes", "12", "--batch-size", "none"])
    cfg = cli.config_from_args(args)
    assert (cfg.optim.patience, cfg.optim.lr_plateau_patience, cfg.model.batch_size) == (
        None, None, None) and cfg.data.max_classes == 12


def test_missing_logging_dependencies_fail_at_once(capsys, monkeypatch, tmp_path):
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util,
        "find_spec",
        lambda name, *a: None if name == "record_keeper" else real(name, *a),
    )
    err = _err(capsys, ["--output-dir", str(tmp_path / "out")])
    assert "needs record_keeper" in err and "with-hooks-cpu" in err
    assert not (tmp_path / "out").exists()


# --- issue 8: invalid options fail before any training, exit 2, no traceback, naming the option


@pytest.fixture
def no_training(monkeypatch):
    """Any (method, seed) training is a test failure (the error must come first)."""
    from pml_grouploss.benchmark import suite

    def trained(*args, **kwargs):
        raise AssertionError("a model was trained before the invalid option was reported")

    monkeypatch.setattr(suite, "run_one", trained)  # the grid runner trains every subcommand


def _usage_error(capsys, argv):
    """``argv`` exits with code 2 and a one-line message (no traceback); returns stderr."""
    err = _err(capsys, argv)
    assert "Traceback" not in err and err.startswith("pml-grouploss-bench: error: ")
    assert err.count("\n") == 1
    return err


@pytest.mark.parametrize("losses", ["", ",", " , "])
def test_empty_losses_is_an_error_not_the_defaults(capsys, tmp_path, no_training, losses):
    err = _usage_error(capsys, ["--losses", losses, "--output-dir", str(tmp_path / "out")])
    assert "argument --losses: must name at least one method" in err
    assert "--losses grouploss,triplet" in err  # the fix


@pytest.mark.parametrize(
    "setting, expected",
    [
        ("grouploss.loss_lr=abc", "grouploss.loss_lr must be a real number, got str 'abc'"),
        ("proxyanchor.loss_lr=0", "proxyanchor.loss_lr must be a finite number > 0, got 0"),
        ("triplet.lr=-1e-3", "triplet.lr must be a finite number > 0, got -0.001"),
        ("grouploss.temperature=abc", "grouploss: temperature must be a real number"),
    ],
)
def test_bad_set_values_fail_before_training(capsys, tmp_path, no_training, setting, expected):
    argv = ["--set", setting, "--output-dir", str(tmp_path / "out")]
    err = _usage_error(capsys, argv)
    assert err.startswith("pml-grouploss-bench: error: argument --set/--params-file: ")
    assert expected in err


def _mkdir_denied_under(monkeypatch, root):
    """``os.mkdir`` under ``root`` fails as in a directory the user may not write."""
    real = os.mkdir

    def mkdir(path, *args, **kwargs):
        if os.path.abspath(os.fspath(path)).startswith(str(root)):
            raise PermissionError(13, "Permission denied", os.fspath(path))
        return real(path, *args, **kwargs)

    monkeypatch.setattr(os, "mkdir", mkdir)


def test_unusable_output_dir_fails_before_training(capsys, tmp_path, no_training, monkeypatch):
    a_file = tmp_path / "a_file"
    a_file.write_text("not a directory")
    cases = {
        str(a_file): "is a file, not a directory; choose another --output-dir",
        str(a_file / "sub"): f"cannot be created: '{a_file}' is a file, not a directory",
        "/proc/pml-grouploss-out": "cannot be created or written in '/proc'",
    }
    for path, expected in cases.items():
        err = _usage_error(capsys, ["--output-dir", path])
        assert f"--output-dir '{path}'" in err and expected in err, err
    (tmp_path / "locked").mkdir()
    _mkdir_denied_under(monkeypatch, tmp_path / "locked")
    path = str(tmp_path / "locked" / "out")
    err = _usage_error(capsys, ["--output-dir", path])
    assert f"--output-dir '{path}' cannot be created or written" in err
    assert "Permission denied" in err and "choose a writable directory" in err
    assert not os.path.exists(path) and a_file.read_text() == "not a directory"


@pytest.mark.parametrize(
    "argv, expected",
    [
        (["--seeds", "0,-1"], "argument --seeds: must be an int >= 0, got -1"),
        (["--seeds", "0,0"], "argument --seeds: must be distinct"),
        (["--iterations-per-epoch", "0"], "argument --iterations-per-epoch: must be an int >= 1"),
        (["--patience", "-1"], "argument --patience: must be an int >= 0, got -1"),
        (["--num-folds", "1"], "argument --num-folds: must be an int >= 2, got 1; one fold"),
        (["--image-size", "0"], "argument --image-size: must be an int >= 16, got 0"),
        (["--image-size", "8"], "argument --image-size: must be an int >= 16, got 8"),
        (["ablate", "steps", "--patience", "-2"], "argument --patience: must be an int >= 0"),
        (["tune", "--iterations-per-epoch", "0"], "argument --iterations-per-epoch"),
    ],
)
def test_bad_protocol_values_fail_before_training(capsys, tmp_path, no_training, argv, expected):
    err = _usage_error(capsys, argv + ["--output-dir", str(tmp_path / "out")])
    assert expected in err


@pytest.mark.parametrize(
    "content, expected",
    [
        ('{"grouploss": {"temperature": 5,}}', ": not valid JSON (Expecting property name"),
        ("[1, 2]", 'expected JSON {"method": {"param": value}}'),
        ('{"grouploss": 5}', 'expected JSON {"method": {"param": value}}'),
    ],
)
def test_malformed_params_file_names_option_and_file(
    capsys, tmp_path, no_training, content, expected
):
    path = tmp_path / "best_params.json"
    path.write_text(content)
    argv = ["--params-file", str(path), "--output-dir", str(tmp_path / "out")]
    err = _usage_error(capsys, argv)
    assert f"--params-file '{path}'" in err and expected in err


# --- options the command would ignore are errors, not silently recorded


def test_data_root_and_download_of_the_embedded_dataset_are_errors(capsys, tmp_path, no_training):
    out = tmp_path / "out"  # --workers 1: without the check, no_training stops a training
    err = _usage_error(capsys, ["--data-root", str(tmp_path), "--output-dir", str(out),
                                "--workers", "1"])
    assert "argument --data-root: dataset omniglot-small is embedded in the package" in err
    assert "drop --data-root, or choose the --dataset under it" in err
    err = _usage_error(capsys, ["tune", "--download", "--output-dir", str(out), "--workers", "1"])
    assert "argument --download: dataset omniglot-small is embedded" in err
    assert "drop --download" in err and not out.exists()


@pytest.mark.parametrize(
    "argv, expected",
    [
        (["--losses", "triplet", "--set", "grouploss.temperature=10"],
         "--set/--params-file name methods that are not run: ['grouploss']; add them to --losses"),
        (["tune", "--losses", "triplet", "--set", "grouploss.num_anchors=2"],
         "name methods that are not run: ['grouploss']"),
        (["ablate", "steps", "--set", "triplet.margin=0.2"],
         "--set names methods that ablate does not run: ['triplet']; its sweeps train grouploss"),
        (["--config", "cub-paper", "--losses", "triplet", "--set", "grouploss.temperature=3"],
         "name methods that are not run: ['grouploss']"),
    ],
)
def test_set_of_a_method_that_is_not_run_is_an_error(capsys, tmp_path, no_training, argv, expected):
    if "--config" in argv:
        argv = argv + ["--data-root", str(tmp_path)]
    err = _usage_error(capsys, argv + ["--output-dir", str(tmp_path / "out"), "--workers", "1"])
    assert expected in err and not (tmp_path / "out").exists()


def test_params_file_of_a_method_that_is_not_run_is_an_error(capsys, tmp_path, no_training):
    path = tmp_path / "best_params.json"
    path.write_text('{"grouploss": {"temperature": 5.0}, "triplet": {"margin": 0.1}}')
    argv = ["--losses", "triplet", "--params-file", str(path), "--output-dir", str(tmp_path),
            "--workers", "1"]
    assert "methods that are not run: ['grouploss']" in _usage_error(capsys, argv)


def test_paper_configuration_grouploss_settings_need_not_be_run(tmp_path):
    """--config sets grouploss's parameters whatever --losses runs; that is no user error."""
    parse = cli.build_parser().parse_args
    cfg = cli.config_from_args(parse(["run", "--config", "cars-paper", "--losses", "triplet",
                                      "--data-root", str(tmp_path)]))
    assert cfg.run.methods == ("triplet",) and cfg.run.overrides["grouploss"]["temperature"] == 79
    cfg = cli.config_from_args(parse(["ablate", "steps", "--set", "grouploss.temperature=3"]))
    assert cfg.run.overrides == {"grouploss": {"temperature": 3}}


@pytest.mark.parametrize("seeds", ["0", "-1"])
def test_seed_count_below_one_explains_seeds(capsys, tmp_path, no_training, seeds):
    err = _usage_error(capsys, ["--seeds", seeds, "--output-dir", str(tmp_path / "out")])
    assert f"--seeds: one number is how many seeds to run and must be >= 1, got '{seeds}'" in err
    assert "--seeds 1 runs seed 0 alone" in err and "--seeds 0,5,7" in err
    args = cli.build_parser().parse_args(["run", "--seeds", "0,"])
    assert cli.config_from_args(args).run.seeds == (0,)  # the comma form names one seed


# --- adversarial trial: output directories, devices


def test_fresh_refuses_to_delete_a_directory_that_holds_no_results(capsys, tmp_path, no_training,
                                                                   monkeypatch):
    (tmp_path / "notes").mkdir()
    (tmp_path / "notes" / "thesis.tex").write_text("precious")
    monkeypatch.chdir(tmp_path)
    err = _usage_error(capsys, ["--fresh", "--output-dir", ".", "--workers", "1"])
    assert "--output-dir '.' is not a results directory (no config.json) and not empty" in err
    assert "--fresh deletes results directories only" in err
    assert (tmp_path / "notes" / "thesis.tex").read_text() == "precious"


def test_fresh_empties_a_results_directory_that_is_the_working_directory(tmp_path, monkeypatch):
    from pml_grouploss.benchmark.config import BenchmarkConfig
    from pml_grouploss.benchmark.suite import prepare_output

    cfg = BenchmarkConfig().replace(seeds=(0,))
    prepare_output(cfg, str(tmp_path))
    (tmp_path / "runs" / "grouploss").mkdir(parents=True)
    monkeypatch.chdir(tmp_path)
    prepare_output(cfg.replace(epochs=2), ".", fresh=True)  # rmtree(".") failed half-way
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        "config.json", "environment.json", "job.json"]


def test_empty_output_dir_is_an_error_not_the_default(capsys, tmp_path, no_training, monkeypatch):
    monkeypatch.chdir(tmp_path)
    err = _usage_error(capsys, ["--output-dir", "", "--workers", "1"])
    assert "--output-dir must be a directory path, got ''" in err
    assert not (tmp_path / "results").exists()


@pytest.mark.parametrize("device", ["meta", "mps"])
def test_a_device_that_cannot_train_is_refused(capsys, tmp_path, no_training, device):
    import torch

    if device == "mps" and torch.backends.mps.is_available():
        pytest.skip("this machine trains on mps")
    err = _usage_error(capsys, ["--device", device, "--output-dir", str(tmp_path / "out")])
    assert f"argument --device: '{device}' cannot train here; use cpu or cuda" in err
    assert not (tmp_path / "out").exists()
