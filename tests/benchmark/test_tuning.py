"""``tune`` with Optuna on a tiny budget: determinism under the seed, resume after Ctrl-C, median
pruning on the validation curve, best_params.json. Training is replaced by a stand-in whose
validation curve is a known function of the configuration, so the tuner's logic is tested in
seconds; the real tiny tune (and that it reads no test image) is in test_sweeps/test_protocol."""

import json
import os

import optuna
import pandas as pd
import pytest

from pml_grouploss.benchmark import suite
from pml_grouploss.benchmark.config import BenchmarkConfig
from pml_grouploss.benchmark.tuning import default_trial, run_tuning, study_name

CFG = BenchmarkConfig().replace(epochs=4, eval_every=1, max_classes=10, classes_per_batch=4,
                                samples_per_class=4, num_folds=5, seeds=(0, 1),
                                methods=("triplet",))


def curve(overrides):
    """Validation P@1 per epoch: better for larger margins and 'semihard', rising with epochs."""
    top = 0.4 + overrides["margin"] + (0.2 if overrides["type_of_triplets"] == "semihard" else 0)
    return [top * e / CFG.optim.epochs for e in range(1, CFG.optim.epochs + 1)]


class FakeTraining:
    """Stands in for ``run_one``: reports the curve, stops when told, reuses finished runs."""

    def __init__(self, interrupt_at=None):
        self.calls, self.stopped, self.interrupt_at = [], [], interrupt_at

    def __call__(self, cfg, spec, seed, splits, run_dir, label=None, overrides=None,
                 final_test=True, on_phase=None, on_validation=None):
        assert final_test is False  # tuning never evaluates the test classes
        final = os.path.join(run_dir, "final.json")
        if os.path.isfile(final):
            with open(final) as f:
                return json.load(f)
        self.calls.append((label, seed))
        if len(self.calls) == self.interrupt_at:
            raise KeyboardInterrupt
        values = curve(overrides)
        for epoch, value in enumerate(values, 1):
            if not on_validation(epoch, value):
                self.stopped.append((label, seed, epoch))
                values = values[:epoch]
                break
        row = {"method": label, "seed": seed, "val_precision_at_1": max(values),
               "val_mean_average_precision_at_r": 0.1, "val_NMI": 0.2,
               "train_precision_at_1": 0.3, "seconds_per_epoch": 1.0}
        os.makedirs(run_dir, exist_ok=True)
        with open(final, "w") as f:
            json.dump(row, f)
        return row


def _tune(monkeypatch, out, fake, budget=4):
    monkeypatch.setattr(suite, "run_one", fake)
    return run_tuning(CFG, str(out), budget=budget, log=lambda *_: None)


def _trials(out, cfg=CFG, storage=None):
    study = optuna.load_study(study_name=study_name("triplet", cfg),
                              storage=storage or f"sqlite:///{out}/optuna.db")
    return [(t.state.name, t.params, t.value) for t in study.trials]


def test_first_trial_is_the_defaults():
    assert default_trial("triplet", CFG) == {"margin": 0.05, "type_of_triplets": "semihard",
                                             "lr": 1e-3}
    assert default_trial("grouploss", CFG) == {"temperature": 24.0, "num_iterations": 1,
                                               "num_anchors": 2, "loss_lr": 0.1, "lr": 1e-3}


def test_tune_is_deterministic_and_prunes_on_the_validation_curve(tmp_path, monkeypatch):
    fakes = [FakeTraining(), FakeTraining()]
    best = [_tune(monkeypatch, tmp_path / f"t{i}", fake) for i, fake in enumerate(fakes)]
    trials = [_trials(tmp_path / f"t{i}") for i in range(2)]
    assert trials[0] == trials[1] and best[0] == best[1] and fakes[0].calls == fakes[1].calls
    states = [s for s, _, _ in trials[0]]
    assert len(states) == 4 and states[0] == "COMPLETE" and trials[0][0][1] == {
        "margin": 0.05, "type_of_triplets": "semihard", "lr": 1e-3}
    # a trial whose curve lies below the median of the earlier ones at the same step is pruned
    # at that validation; its training stops there and its second seed is not trained
    pruned = [i for i, s in enumerate(states) if s == "PRUNED"]
    assert pruned, trials[0]
    for i in pruned:
        label = f"triplet#{i}"
        assert [c for c in fakes[0].calls if c[0] == label] == [(label, 0)]
        assert [s[:2] for s in fakes[0].stopped if s[0] == label] == [(label, 0)]
    complete = [(v, p) for s, p, v in trials[0] if s == "COMPLETE"]
    top_value, top_params = max(complete, key=lambda x: x[0])
    assert best[0] == {"triplet": top_params}
    assert top_value == pytest.approx(curve(top_params)[-1])  # mean over seeds of the best epoch
    assert json.loads((tmp_path / "t0" / "best_params.json").read_text()) == best[0]
    per_seed = pd.read_csv(tmp_path / "t0" / "per_seed.csv")
    assert set(per_seed.trial_state) == {"COMPLETE", "PRUNED"}
    assert "precision_at_1" not in per_seed.columns
    assert "configuration" in (tmp_path / "t0" / "results.md").read_text()


def test_interrupted_tune_resumes_to_the_same_trials(tmp_path, monkeypatch):
    straight = FakeTraining()
    best = _tune(monkeypatch, tmp_path / "straight", straight)
    interrupted = FakeTraining(interrupt_at=4)  # Ctrl-C in the 4th training (2nd or 3rd trial)
    with pytest.raises(KeyboardInterrupt):
        _tune(monkeypatch, tmp_path / "resumed", interrupted)
    states = [s for s, _, _ in _trials(tmp_path / "resumed")]
    assert states[-1] == "FAIL" and "FAIL" not in states[:-1]
    resumed = FakeTraining()
    assert _tune(monkeypatch, tmp_path / "resumed", resumed) == best
    trials = _trials(tmp_path / "resumed")
    failed = states.index("FAIL")
    assert trials[failed + 1][1] == trials[failed][1]  # the same configuration again
    assert [t for t in trials if t[0] != "FAIL"] == _trials(tmp_path / "straight")
    # nothing finished was trained again: only the interrupted training is repeated
    assert len(interrupted.calls) - 1 + len(resumed.calls) == len(straight.calls)
    assert len(pd.read_csv(tmp_path / "resumed" / "per_seed.csv")) == len(
        pd.read_csv(tmp_path / "straight" / "per_seed.csv"))


def test_a_second_process_on_the_same_study_adds_no_trials_beyond_the_budget(tmp_path,
                                                                              monkeypatch):
    first = FakeTraining()
    _tune(monkeypatch, tmp_path, first, budget=2)
    second = FakeTraining()
    _tune(monkeypatch, tmp_path, second, budget=2)  # shares optuna.db: the budget is spent
    assert second.calls == [] and len(_trials(tmp_path)) == 2


def test_a_shared_storage_keeps_studies_of_other_settings_apart(tmp_path, monkeypatch):
    # the same --storage for two tunes of other settings: the second trains its own trials
    storage = f"sqlite:///{tmp_path}/shared.db"
    monkeypatch.setattr(suite, "run_one", FakeTraining())
    run_tuning(CFG, str(tmp_path / "a"), budget=2, storage=storage, log=lambda *_: None)
    other = CFG.replace(epochs=3)
    fake = FakeTraining()
    monkeypatch.setattr(suite, "run_one", fake)
    run_tuning(other, str(tmp_path / "b"), budget=2, storage=storage, log=lambda *_: None)
    # its own two trials (the second may be pruned after one seed); before, it reused the other
    # study's trials and trained nothing
    assert fake.calls[:2] == [("triplet#0", 0), ("triplet#0", 1)] and len(fake.calls) >= 3
    assert study_name("triplet", CFG) != study_name("triplet", other)
    assert len(_trials(None, CFG, storage)) == len(_trials(None, other, storage)) == 2


def test_a_parameter_fixed_with_set_is_not_searched(tmp_path, monkeypatch):
    fixed = CFG.replace(overrides={"triplet": {"margin": 0.15}})
    fake = FakeTraining()
    monkeypatch.setattr(suite, "run_one", fake)
    best = run_tuning(fixed, str(tmp_path), budget=3, log=lambda *_: None)
    assert best["triplet"]["margin"] == 0.15
    assert all("margin" not in params for _, params, _ in _trials(tmp_path, fixed))
    assert "margin" not in default_trial("triplet", fixed)


@pytest.mark.parametrize("storage", ["bogus://x", "sqlite:////nonexistent/dir/optuna.db"])
def test_a_storage_that_cannot_be_opened_is_named_before_any_output(tmp_path, storage):
    out = tmp_path / "out"
    with pytest.raises(ValueError, match=r"storage .* cannot be opened .*sqlite:///path"):
        run_tuning(CFG, str(out), budget=2, storage=storage, log=lambda *_: None)
    assert not out.exists()
