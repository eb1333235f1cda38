"""Every script in examples/ runs as a user would run it, and learns something."""
import ast
import os
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


@pytest.mark.slow
def test_grouploss_in_pml_trainer():
    env = dict(os.environ, OMP_WAIT_POLICY="PASSIVE")
    out = subprocess.run(
        [sys.executable, os.path.join("examples", "grouploss_in_pml_trainer.py")],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=900,
    )
    assert out.returncode == 0, out.stderr[-3000:]
    accuracy = ast.literal_eval(out.stdout.strip().splitlines()[-1])
    # Raw pixels give P@1 0.39 on these test characters (docs/benchmark.md); 5 epochs of
    # GroupLoss reach 0.63.
    assert accuracy["precision_at_1_level0"] > 0.5, accuracy
    assert 0.1 < accuracy["mean_average_precision_at_r_level0"] < 1.0, accuracy


def test_grouploss_in_pml_trainer_help_and_bad_arguments_do_not_train():
    # `--help` used to start the 5-epoch training (the script had no argument parser)
    script = os.path.join("examples", "grouploss_in_pml_trainer.py")
    out = subprocess.run([sys.executable, script, "--help"], cwd=ROOT, capture_output=True,
                         text=True, timeout=120)
    assert out.returncode == 0 and "--epochs EPOCHS" in out.stdout, out.stderr[-2000:]
    assert "total_loss" not in out.stderr
    out = subprocess.run([sys.executable, script, "--epochs", "0"], cwd=ROOT,
                         capture_output=True, text=True, timeout=120)
    assert out.returncode == 2, out.stderr[-2000:]
    assert "argument --epochs: must be >= 1, got 0" in out.stderr
