"""Exact resume (``pml_grouploss.trainers.resume``): every random-number and sampler state
round-trips through a ``weights_only`` file. The end-to-end check (an interrupted and resumed
benchmark run is bit-identical) is tests/benchmark/test_resume.py."""

import random
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from pytorch_metric_learning import samplers
from pytorch_metric_learning.utils import common_functions as c_f

from pml_grouploss.trainers import resume


def test_state_round_trip_through_weights_only_load(tmp_path, monkeypatch):
    monkeypatch.setattr(c_f, "NUMPY_RANDOM", np.random.RandomState(3))
    labels = [0] * 5 + [1] * 5 + [2] * 5
    inner = samplers.MPerClassSampler(labels, 2, 4, length_before_new_iter=12)
    sampler = resume.ResumableSampler(inner)
    generator = torch.Generator().manual_seed(11)
    loader = SimpleNamespace(generator=torch.Generator().manual_seed(12))
    loss = SimpleNamespace(generator=generator)
    trainer = SimpleNamespace(sampler=sampler, dataloader=loader, loss_funcs={"metric_loss": loss})
    it = iter(sampler)
    first = [next(it) for _ in range(3)]  # part of a pass
    resume.save_state(trainer, str(tmp_path), epoch=2, previous=1)
    state = resume.load_state(str(tmp_path), 2)  # torch.load(weights_only=True)
    assert state["stopped_early"] is False
    with pytest.warns(UserWarning, match="resumes, but not bit-identically"):
        assert resume.load_state(str(tmp_path), 1) is None

    def draws():
        return (
            torch.rand(3).tolist(),
            np.random.rand(3).tolist(),
            random.random(),
            c_f.NUMPY_RANDOM.rand(2).tolist(),
            torch.rand(2, generator=generator).tolist(),
            torch.rand(2, generator=loader.generator).tolist(),
            list(sampler),  # the rest of the pass
            list(sampler),  # a new pass: the sampler's shuffled labels and NumPy's state
        )

    before = draws()
    trainer.sampler = sampler = resume.ResumableSampler(inner)  # as in a new process
    resume.restore_state(trainer, state)
    after = draws()
    assert before == after
    assert len(before[6]) == 12 - 3 and len(before[7]) == 12 and first + before[6] != before[7]
