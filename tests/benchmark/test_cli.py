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
    assert cfg.methods == ("grouploss", "triplet") and cfg.seeds == (0, 1, 2, 3)
    assert cfg.overrides == {
        "grouploss": {"temperature": 10, "loss_lr": 0.3},
        "triplet": {"margin": 0.2},
    }
    assert cfg.epochs == 6
    args = cli.build_parser().parse_args(
        ["run", "--seeds", "3,7", "--config", "cub-paper", "--data-root", str(tmp_path)]
    )
    cfg = cli.config_from_args(args)
    assert cfg.seeds == (3, 7) and cfg.dataset == "cub" and cfg.classes_per_batch == 6
    assert cfg.samples_per_class == 9 and cfg.overrides["grouploss"]["num_anchors"] == 2


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
