"""benchmarks/notebook_settings_sweep.py: the smoke run writes sane files; the collapse it shows."""

from __future__ import annotations

import csv
import glob
import importlib.util
import json
import math
import os
import sys
import warnings

import numpy as np
import pytest
import torch

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
SCRIPT = os.path.join(ROOT, "benchmarks", "notebook_settings_sweep.py")


def _load_script():
    spec = importlib.util.spec_from_file_location("notebook_settings_sweep", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


sweep = _load_script()


@pytest.mark.slow
def test_quick_sweep_writes_finite_results(tmp_path):
    rows = sweep.main(["--quick", "--output-dir", str(tmp_path)])
    with open(tmp_path / "results.csv", newline="") as f:
        reader = csv.DictReader(f)
        assert reader.fieldnames == sweep.COLUMNS
        written = list(reader)
    assert [r["method"] for r in written] == ["untrained", "grouploss", "triplet", "grouploss_raw"]
    assert len(rows) == len(written)
    for r in written:
        for key in ("p_at_1", "map_at_r", "p_at_1_cosine", "embedding_std"):
            assert math.isfinite(float(r[key])), (key, r)
        assert 0.0 <= float(r["p_at_1"]) <= 1.0 and 0.0 <= float(r["map_at_r"]) <= 1.0
    untrained = float(written[0]["p_at_1"])
    # 107 test characters x 3 drawers: chance P@1 is 2/320 = 0.006. The untrained trunk is a
    # random conv net on MNIST-normalised images and measures 0.171 at seed 0; a broken
    # evaluation (labels misaligned with embeddings, query matched to itself) gives ~0 or 1.
    assert 0.1 < untrained < 0.3, untrained
    table = (tmp_path / "table.md").read_text()
    assert f"Untrained trunk: P@1 {untrained:.3f}" in table
    assert table.count("\n| ") >= len(written) + 2  # every run plus two header rows
    env = json.loads((tmp_path / "environment.json").read_text())
    assert env["torch"] == torch.__version__ and env["cpu_model"]
    assert env["test_images"] == 107 * 3 and env["train_images"] == 135 * 4


def _embedding_spread(normalize: bool, train, probe: torch.Tensor) -> tuple:
    """Mean per-feature std of eval-mode embeddings of ``probe`` after 8 steps at trunk lr 1e-2."""
    torch.manual_seed(0)
    np.random.seed(0)
    trunk = sweep.Net()
    loss, _, loss_optimizer = sweep.make_loss(
        "grouploss" if normalize else "grouploss_raw", classifier_lr=1e-2
    )
    loader = sweep.make_loader(train, "m_per_class", batch_size=32, seed=0, iterations=8)
    optimizer = torch.optim.Adam(trunk.parameters(), lr=1e-2)  # the MNIST notebooks' value
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        status = sweep.train_plain(trunk, loss, None, loader, optimizer, loss_optimizer, 1)
    collapse_warned = any("has collapsed" in str(w.message) for w in caught)
    return status, float(sweep.embed(trunk, probe).std(dim=0).mean()), collapse_warned


@pytest.mark.slow
def test_normalized_classifier_input_prevents_trunk_collapse_at_notebook_lr():
    train = sweep.load_split("train", limit=4)
    probe = train.tensors[0][:64]
    status, spread, warned = _embedding_spread(True, train, probe)
    assert status == "ok" and spread > 1e-3 and not warned, (status, spread)
    # The authors' form (raw embeddings into the classifier): logits grow, the ReLUs die and
    # every embedding equals fc1's bias after ~5 steps (measured at seeds 0-2); the loss warns.
    status, spread, warned = _embedding_spread(False, train, probe)
    assert status == "ok" and spread < 1e-6 and warned, (status, spread)


@pytest.mark.slow
@pytest.mark.parametrize("trunk_lr, warns", [(1e-2, True), (1e-3, False)])
def test_metric_loss_only_split_warns_of_a_too_large_trunk_lr(trunk_lr, warns):
    """The MetricLossOnly split (Net + MLP, batches of 32, PML's trainer): at trunk lr 1e-2,
    where GroupLoss does not train in 4 epochs (docs/losses.md), the embedding norm grows
    more than 1000-fold within 40 iterations and the loss says so once; at 1e-3 (trains) not."""
    train = sweep.load_split("train")
    test = sweep.load_split("test", limit=1)
    run = dict(
        method="grouploss", trunk="net+mlp", batches="m_per_class", batch_size=32,
        trunk_lr=trunk_lr, classifier_lr=1e-3, seed=0, epochs=1, iterations=40,
    )
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        result = sweep.run_one(run, train, test)
    assert result["status"] == "ok"
    messages = [str(w.message) for w in caught if "mean norm grew" in str(w.message)]
    assert len(messages) == (1 if warns else 0), messages
    if warns:
        assert "trunk's and embedder's learning rates to 1e-3" in messages[0]


@pytest.mark.parametrize("argv, message", [
    (["--epochs", "0"], "--epochs must be at least 1 (got 0)"),
    (["--epochs", "-3"], "--epochs must be at least 1 (got -3)"),
    (["--batch-size", "0"], "--batch-size must be at least 1 (got 0)"),
    (["--iterations", "0"], "--iterations must be at least 1 (got 0)"),
    (["--train-per-class", "0"], "--train-per-class must be at least 1 (got 0)"),
    (["--test-per-class", "1"], "--test-per-class must be at least 2 (got 1)"),
    (["--trunk-lrs", "-1"], "--trunk-lrs -1: must be finite and > 0"),
    (["--mlp-classifier-lr", "0"], "--mlp-classifier-lr 0: must be finite and > 0"),
    (["--trunk-lrs", "1e-3", "inf"], "--trunk-lrs inf: must be finite and > 0"),  # nan results
    (["--classifier-lrs", "nan"], "--classifier-lrs nan: must be finite and > 0"),
    (["--raw-trunk-lrs=-inf"], "--raw-trunk-lrs -inf: must be finite and > 0"),
    (["--raw-classifier-lrs", "inf"], "--raw-classifier-lrs inf: must be finite and > 0"),
    (["--seed", "-1"], "--seed must be between 0 and 2**32 - 1 (numpy's seeds; got -1)"),
    (["--seed", "4294967296"], "--seed must be between 0 and 2**32 - 1 (numpy's seeds; got "
                               "4294967296)"),
    # options no run would use
    (["--trunk-lrs", "1e-3", "--raw-trunk-lrs", "1e-3", "1e-2"], "--raw-trunk-lrs 0.01: not "
                                                                 "among --trunk-lrs"),
    (["--batches", "--mlp-trunk", "--classifier-lrs", "0.01"], "--classifier-lrs: no effect "
                                                               "with bare --batches"),
    (["--batches", "--mlp-trunk", "--batch-size", "64", "--raw-classifier-lrs", "0.1"],
     "--batch-size, --raw-classifier-lrs: no effect with bare --batches"),
    (["--mlp-classifier-lr", "0.1"], "--mlp-classifier-lr: no effect without --mlp-trunk"),
    (["--batches"], "bare --batches runs no Net configuration: name a batching or add --mlp-trunk"),
    (["--batch-size", "30"], "--batch-size 30 with m_per_class batches (4 images of each "
                             "character) must be a multiple of 4 and at most 540"),
    (["--batches", "m_per_class", "--train-per-class", "1", "--iterations", "2",
      "--batch-size", "600"], "at most 540 (4 x 135 characters)"),
])
@pytest.mark.parametrize("quick", [[], ["--quick"]])
def test_values_that_train_nothing_or_fail_mid_sweep_are_refused(argv, message, quick, capsys,
                                                                  tmp_path):
    with pytest.raises(SystemExit) as exit_:
        sweep.parse_args(quick + argv + ["--output-dir", str(tmp_path)])
    assert exit_.value.code == 2
    assert message in capsys.readouterr().err


def test_one_pass_over_fewer_images_than_a_batch_is_refused(capsys):
    with pytest.raises(SystemExit) as exit_:
        sweep.parse_args(["--batches", "m_per_class", "--train-per-class", "1"])
    assert exit_.value.code == 2
    assert "--batch-size 256 with m_per_class batches (4 images of each character) must be a " \
        "multiple of 4 and at most 540 (4 x 135 characters) and, without --iterations, the 135 " \
        "training images" in capsys.readouterr().err
    sweep.parse_args(["--batches", "m_per_class", "--train-per-class", "1", "--iterations", "2"])


@pytest.mark.parametrize("bad", ["a_file/out", "a_file"])
def test_an_unusable_output_dir_is_refused_before_any_training(bad, tmp_path, capsys,
                                                               monkeypatch):
    (tmp_path / "a_file").write_text("x")
    monkeypatch.setattr(sweep, "load_split", lambda *a: pytest.fail("loaded the data"))
    with pytest.raises(SystemExit) as exit_:
        sweep.main(["--quick", "--output-dir", str(tmp_path / bad)])
    assert exit_.value.code == 2
    err = capsys.readouterr().err
    why = "is" if bad == "a_file" else f"cannot be created: {str(tmp_path / 'a_file')!r} is"
    assert f"--output-dir {str(tmp_path / bad)!r} {why} a file, not a directory" in err
    sweep.parse_args(["--output-dir", str(tmp_path / "new" / "deeper")])  # creatable: accepted
    assert sorted(os.listdir(tmp_path)) == ["a_file"]  # the check creates nothing


def test_quick_fills_in_only_the_options_left_unset(tmp_path, monkeypatch):
    monkeypatch.setattr(sweep, "DEFAULT_OUTPUT", str(tmp_path))  # checked: not the committed one
    unset = vars(sweep.parse_args([]))
    assert {k: unset[k] for k in sweep.DEFAULTS} == sweep.DEFAULTS
    assert unset["output_dir"] == str(tmp_path)
    quick = vars(sweep.parse_args(["--quick"]))
    assert quick == dict(unset, quick=True, output_dir=None, epochs=1, iterations=2, batch_size=32,
                         trunk_lrs=[1e-2], classifier_lrs=[1e-3], raw_trunk_lrs=[1e-2],
                         raw_classifier_lrs=[1e-3], batches=["m_per_class"], train_per_class=4,
                         test_per_class=3)
    given = vars(sweep.parse_args(["--quick", "--epochs", "3", "--batch-size", "64", "--batches",
                                   "shuffled", "--train-per-class", "20", "--iterations", "5",
                                   "--trunk-lrs", "1e-3", "1e-4", "--test-per-class", "2"]))
    assert given == dict(quick, epochs=3, batch_size=64, batches=["shuffled"], train_per_class=20,
                         iterations=5, trunk_lrs=[1e-3, 1e-4], raw_trunk_lrs=[1e-3, 1e-4],
                         test_per_class=2)


def test_quick_without_output_dir_writes_to_a_new_temporary_directory(tmp_path, monkeypatch,
                                                                      capsys):
    import tempfile

    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    images = torch.zeros(2, 1, 28, 28)
    monkeypatch.setattr(sweep, "load_split", lambda *a: torch.utils.data.TensorDataset(
        images, torch.tensor([0, 1])))
    monkeypatch.setattr(sweep, "run_one", lambda run, train, test: dict(
        run, status="ok", train_seconds=0.0, p_at_1=0.2, map_at_r=0.1, p_at_1_cosine=0.2,
        embedding_std=1.0))
    written = []
    monkeypatch.setattr(sweep, "write_outputs", lambda rows, env, out: written.append(out))
    sweep.main(["--quick"])
    (out,) = written
    assert os.path.dirname(out) == str(tmp_path) and os.path.isdir(out)
    assert out != sweep.DEFAULT_OUTPUT
    assert f"--quick without --output-dir: writing to {out}" in capsys.readouterr().out


def test_raw_classifier_lrs_without_a_raw_trunk_lr_in_the_sweep_are_refused(capsys, tmp_path):
    """The default --raw-trunk-lrs (1e-2) is not among --trunk-lrs 1e-3: no raw run (with
    --quick the raw runs take the --trunk-lrs, so they run)."""
    argv = ["--trunk-lrs", "1e-3", "--raw-classifier-lrs", "0.1", "--output-dir", str(tmp_path)]
    with pytest.raises(SystemExit) as exit_:
        sweep.parse_args(argv)
    assert exit_.value.code == 2
    assert "--raw-classifier-lrs: no effect, no --raw-trunk-lrs is among --trunk-lrs" in \
        capsys.readouterr().err
    runs = sweep.build_grid(sweep.parse_args(["--quick"] + argv))
    assert [(r["trunk_lr"], r["classifier_lr"]) for r in runs
            if r["method"] == "grouploss_raw"] == [(1e-3, 0.1)]


def test_the_committed_commands_parse_but_those_with_an_ignored_option(tmp_path):
    """docs/results/notebook_settings/*/environment.json: every recorded command is accepted,
    but the two that passed --classifier-lrs to MLP-only runs (it had no effect there)."""
    refused = []
    for path in sorted(glob.glob(os.path.join(ROOT, "docs", "results", "notebook_settings", "**",
                                              "environment.json"), recursive=True)):
        with open(path) as f:
            argv = json.load(f)["command"].split()[2:]
        if "--output-dir" in argv:  # not the committed results' directory
            argv = argv[:argv.index("--output-dir")] + argv[argv.index("--output-dir") + 2:]
        argv += ["--output-dir", str(tmp_path)]
        try:
            sweep.parse_args(argv)
        except SystemExit:
            refused.append(os.path.basename(os.path.dirname(path)))
    assert refused == ["metric_loss_only_4epochs", "metric_loss_only_4epochs_seed1"]


def test_a_missing_faiss_is_refused_before_any_training(tmp_path, capsys, monkeypatch):
    monkeypatch.setitem(sys.modules, "faiss", None)  # import faiss: ModuleNotFoundError
    monkeypatch.setattr(sweep, "load_split", lambda *a: pytest.fail("loaded the data"))
    with pytest.raises(SystemExit) as exit_:
        sweep.main(["--quick", "--output-dir", str(tmp_path)])
    assert exit_.value.code == 2
    assert "needs faiss: pip install faiss-cpu" in capsys.readouterr().err
