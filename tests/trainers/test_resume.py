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

from pml_grouploss.samplers import NearestClassSampler
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


@pytest.mark.skipif(torch.cuda.is_available(), reason="the CPU side of a GPU-saved state")
def test_a_gpu_saved_state_resumed_without_cuda_warns():
    trainer = SimpleNamespace(sampler=None, dataloader=None, loss_funcs={})
    state = {**resume.capture_state(trainer), "cuda": [torch.zeros(16, dtype=torch.uint8)]}
    with pytest.warns(UserWarning, match="CUDA random states .* not bit-identically"):
        resume.restore_state(trainer, state)


def test_nearest_class_sampler_resumes_its_pass_count_and_centroids():
    labels = np.repeat(np.arange(6), 4)
    centroids = torch.randn(6, 3, generator=torch.Generator().manual_seed(0))

    def sampler():
        inner = NearestClassSampler(labels, m=2, batch_size=4, length_before_new_iter=12, seed=5)
        return resume.ResumableSampler(inner)

    uninterrupted = sampler()
    list(uninterrupted)  # epoch 1, no centroids yet
    uninterrupted.sampler.update_centroids(centroids.numpy()[labels])
    it = iter(uninterrupted)
    head = [next(it) for _ in range(5)]
    state = uninterrupted.state_dict()
    assert state["wrapped"]["epoch"] == 2 and torch.equal(state["wrapped"]["centroids"],
                                                          uninterrupted.sampler.centroids)
    rest, next_pass = list(it), list(uninterrupted)
    resumed = sampler()  # a new process: epoch 0, no centroids
    resumed.load_state_dict(state)
    assert list(resumed) == rest and list(resumed) == next_pass
    assert head + rest != next_pass


@pytest.mark.parametrize("labels", [[0.25, 0.75, 1.5], ["cat", "dog", "eel"]])
def test_labels_of_any_type_come_back_in_their_shuffled_order(labels):
    # the state was keyed on int(label): 0.25 came back as 0.75, strings failed
    data = [x for x in labels for _ in range(4)]
    inner = samplers.MPerClassSampler(data, 2, 4, length_before_new_iter=12)
    list(inner)  # shuffles inner.labels in place
    state = resume.ResumableSampler(inner).state_dict()
    fresh = samplers.MPerClassSampler(data, 2, 4, length_before_new_iter=12)
    resume.ResumableSampler(fresh).load_state_dict(state)
    assert fresh.labels == inner.labels and sorted(map(str, fresh.labels)) == sorted(
        map(str, labels))


def test_a_sampler_state_of_other_labels_is_refused():
    inner = samplers.MPerClassSampler([0, 0, 1, 1, 2, 2], 2, 4)
    state = resume.ResumableSampler(inner).state_dict()
    other = samplers.MPerClassSampler([0, 0, 1, 1, 2, 2, 3, 3], 2, 4)
    with pytest.raises(ValueError, match="orders 3 classes, this sampler has 4"):
        resume.ResumableSampler(other).load_state_dict(state)


def test_state_files_and_dicts_that_cannot_be_used_are_named(tmp_path):
    folder = str(tmp_path)
    trainer = SimpleNamespace(sampler=resume.ResumableSampler(samplers.MPerClassSampler(
        [0, 0, 1, 1], 2, 4)), loss_funcs={})
    resume.save_state(trainer, folder, epoch=3, previous=3)
    assert resume.load_state(folder, 3)["stopped_early"] is False  # was deleted right away
    with open(tmp_path / "resume_state_4.pth", "wb") as f:
        f.write(b"not a state")
    with pytest.raises(ValueError, match=r"resume_state_4.pth is damaged.*earlier checkpoint"):
        resume.load_state(folder, 4)
    with pytest.raises(FileNotFoundError, match="does not exist"):
        resume.load_state(str(tmp_path / "nope"), 3)
    with pytest.raises(TypeError, match="epoch must be an int"):
        resume.load_state(folder, "3")
    state = resume.load_state(folder, 3)
    plain = SimpleNamespace(sampler=samplers.MPerClassSampler([0, 0, 1, 1], 2, 4),
                            loss_funcs={})
    with pytest.raises(ValueError, match=r"sampler=ResumableSampler\(...\)"):
        resume.restore_state(plain, state)
    with pytest.raises(ValueError, match=r"without \['torch'\]"):
        resume.restore_state(trainer, {k: v for k, v in state.items() if k != "torch"})


def _trainer(trainer_cls=None, workers=0, loss=None, wrap=True):
    """A tiny real PML trainer over 12 points of 3 classes."""
    from pml_grouploss.losses import GroupLoss

    labels = torch.arange(3).repeat_interleave(4)
    data = torch.utils.data.TensorDataset(torch.randn(12, 4), labels)
    sampler = samplers.MPerClassSampler(labels, 2, 6, length_before_new_iter=12)
    model = torch.nn.Linear(4, 3)
    loss = GroupLoss(3, 3) if loss is None else loss
    return (trainer_cls or resume.ResumableTrainer)(
        models={"trunk": model}, batch_size=6, loss_funcs={"metric_loss": loss}, dataset=data,
        optimizers={"trunk_optimizer": torch.optim.SGD(model.parameters(), lr=0.1),
                    "metric_loss_optimizer": torch.optim.SGD(loss.parameters(), lr=0.1)},
        sampler=resume.ResumableSampler(sampler) if wrap else sampler,
        dataloader_num_workers=workers, data_device=torch.device("cpu"))


def test_dataloader_workers_are_refused():
    # workers prefetch past the saved position: the resumed run trained on other batches
    with pytest.raises(ValueError, match=r"^dataloader_num_workers must be 0 .* got 2 \(PML's "
                                         r"default is 2\).*pass dataloader_num_workers=0$"):
        _trainer(workers=2)
    from pml_grouploss import trainers

    plain = _trainer(trainers.MetricLossOnly, workers=1)
    with pytest.raises(ValueError, match="dataloader_num_workers must be 0 .* got 1"):
        resume.capture_state(plain)
    unwrapped = _trainer(trainers.MetricLossOnly, workers=1, wrap=False)
    assert "sampler" not in resume.capture_state(unwrapped)  # no position to get wrong


def test_a_state_that_does_not_fit_the_trainer_is_refused_before_anything_changes():
    from pml_grouploss.losses import GroupLoss

    seeded = _trainer(loss=GroupLoss(3, 3, seed=4))
    seeded.initialize_dataloader()
    state = resume.capture_state(seeded)
    unseeded = _trainer()
    unseeded.initialize_dataloader()
    torch.manual_seed(0)
    before = torch.get_rng_state()
    with pytest.raises(ValueError, match=r"random generator of 'metric_loss' \(a loss or miner.*"
                                         r"but the trainer's has none.*seed=\.\.\."):
        resume.restore_state(unseeded, state)
    assert torch.equal(torch.get_rng_state(), before)  # was restored before the crash
    for bad in (5, torch.zeros(3)):  # were TypeError / RuntimeError from `in`
        with pytest.raises(ValueError, match=f"must be the dict load_state.*got "
                                             f"{type(bad).__name__}$"):
            resume.restore_state(unseeded, bad)


def test_generators_of_miners_and_of_losses_inside_multiple_losses_are_saved_and_restored():
    """Only ``loss_funcs[name].generator`` was saved: an AnchorMiner(seed=...) tuple miner and
    a GroupLoss(seed=...) inside MultipleLosses resumed with other random anchors."""
    from pytorch_metric_learning.losses import MultipleLosses, TripletMarginLoss

    from pml_grouploss.losses import GroupLoss
    from pml_grouploss.miners import AnchorMiner

    group = GroupLoss(3, 3, anchor_selection="random", seed=1)
    trainer = _trainer(loss=MultipleLosses({"g": group, "t": TripletMarginLoss()}))
    trainer.mining_funcs = {"tuple_miner": AnchorMiner(selection="random", seed=2)}
    trainer.initialize_dataloader()
    state = resume.capture_state(trainer)
    miner = trainer.mining_funcs["tuple_miner"]
    assert {k for k in state if k.startswith("generator:")} == {
        "generator:metric_loss.losses.g", "generator:tuple_miner"}
    expected = [torch.randperm(10, generator=g) for g in (group.generator, miner.generator)]
    resume.restore_state(trainer, state)
    drawn = [torch.randperm(10, generator=g) for g in (group.generator, miner.generator)]
    assert all(torch.equal(a, b) for a, b in zip(drawn, expected))


def test_resumable_sampler_refuses_batch_samplers_and_other_samplers_states():
    for bad in (None, torch.utils.data.BatchSampler(range(6), 2, False)):
        with pytest.raises(TypeError, match=f"index sampler .* got {type(bad).__name__};"):
            resume.ResumableSampler(bad)
    state = resume.ResumableSampler(samplers.MPerClassSampler([0, 0, 1, 1], 2, 4)).state_dict()
    other = resume.ResumableSampler(torch.utils.data.RandomSampler(range(4)))
    with pytest.raises(ValueError, match=r"holds 'label_order', which this ResumableSampler's "
                                         r"RandomSampler has no labels_to_indices for"):
        other.load_state_dict(state)
    assert other.indices == [] and other.position == 0


def test_save_state_names_a_missing_folder_and_load_state_a_foreign_file(tmp_path):
    trainer = _trainer()
    with pytest.raises(FileNotFoundError, match="folder .*nope' does not exist"):
        resume.save_state(trainer, str(tmp_path / "nope"), epoch=1, previous=0)
    torch.save([1, 2], tmp_path / "resume_state_2.pth")
    with pytest.raises(ValueError, match=r"resume_state_2.pth holds a list, not a state "
                                         r"save_state\(\) wrote"):
        resume.load_state(str(tmp_path), 2)
