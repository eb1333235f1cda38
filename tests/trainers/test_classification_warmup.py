"""ClassificationWarmup with PML's MetricLossOnly on a tiny float64 dataset: during the warm-up
the loss is the plain cross-entropy of the loss's classifier (hand-computed), the NLL gets no
gradient, afterwards it is GroupLoss's own value; resuming, errors and restored weights."""
from __future__ import annotations

import math
import os
from typing import Dict, List

import pandas as pd
import pytest
import torch
from pytorch_metric_learning import losses as pml_losses
from pytorch_metric_learning import samplers
from pytorch_metric_learning.utils import logging_presets

from pml_grouploss import trainers
from pml_grouploss.losses import GroupLoss, ParametricDistributedLossWrapper
from pml_grouploss.trainers import ClassificationWarmup

NUM_CLASSES, PER_CLASS, DIM_IN, DIM_EMB, BATCH, ITERATIONS = 4, 6, 6, 5, 12, 2
LOSS_KWARGS = dict(temperature=2.0, num_anchors=1, num_iterations=2)


def _dataset() -> torch.utils.data.TensorDataset:
    g = torch.Generator().manual_seed(0)
    labels = torch.arange(NUM_CLASSES).repeat_interleave(PER_CLASS)
    centres = 2 * torch.randn(NUM_CLASSES, DIM_IN, generator=g, dtype=torch.float64)
    x = centres[labels] + torch.randn(len(labels), DIM_IN, generator=g, dtype=torch.float64)
    return torch.utils.data.TensorDataset(x, labels)


def _loss(**kwargs) -> GroupLoss:
    torch.manual_seed(5)
    return GroupLoss(NUM_CLASSES, DIM_EMB, **{**LOSS_KWARGS, **kwargs}).double()


def _hand_ce(embeddings, labels, W, bias) -> torch.Tensor:
    """Mean cross-entropy of the classifier on ``sqrt(d) x / ||x||`` (GroupLoss's input)."""
    x = math.sqrt(embeddings.shape[1]) * embeddings / embeddings.norm(dim=1, keepdim=True)
    logits = x @ W.T + bias
    true = logits.gather(1, labels.view(-1, 1)).squeeze(1)
    return (torch.logsumexp(logits, dim=1) - true).mean()


def _train(loss, warmup, num_epochs, start_epoch=1, chained=None, **kwargs) -> List[Dict]:
    """Trains with MetricLossOnly; one record per loss call: inputs, classifier, value, mode."""
    calls: List[Dict] = []

    def record(module, args, output):
        calls.append(dict(embeddings=args[0].detach().clone(), labels=args[1].clone(),
                          W=module.W.detach().clone(), bias=module.bias.detach().clone(),
                          value=output.detach().clone(), warming_up=warmup.warming_up,
                          nll_weight=module.nll_weight))

    handle = loss.register_forward_hook(record)
    torch.manual_seed(1)
    trunk = torch.nn.Sequential(torch.nn.Linear(DIM_IN, 8), torch.nn.ReLU()).double()
    embedder = torch.nn.Linear(8, DIM_EMB).double()
    dataset = _dataset()
    trainer = trainers.MetricLossOnly(
        models={"trunk": trunk, "embedder": embedder},
        optimizers={"trunk_optimizer": torch.optim.SGD(trunk.parameters(), lr=0.1),
                    "embedder_optimizer": torch.optim.SGD(embedder.parameters(), lr=0.1),
                    "metric_loss_optimizer": torch.optim.SGD(loss.parameters(), lr=0.1)},
        batch_size=BATCH, loss_funcs={"metric_loss": loss}, dataset=dataset,
        sampler=samplers.MPerClassSampler(dataset.tensors[1], m=3, batch_size=BATCH,
                                          length_before_new_iter=BATCH * ITERATIONS),
        dataloader_num_workers=0, data_device=torch.device("cpu"), dtype=torch.float64,
        end_of_epoch_hook=warmup.end_of_epoch_hook(chained), **kwargs,
    )
    trainer.train(start_epoch=start_epoch, num_epochs=num_epochs)
    handle.remove()
    return calls


def test_warmup_epochs_are_plain_ce_then_group_loss():
    loss = _loss()
    warmup = ClassificationWarmup(loss, epochs=2)
    calls = _train(loss, warmup, num_epochs=4)
    assert [c["warming_up"] for c in calls] == [True] * 4 + [False] * 4
    reference = _loss()  # a fresh GroupLoss with the same settings and no warm-up
    for c in calls:
        ce = _hand_ce(c["embeddings"], c["labels"], c["W"], c["bias"])
        with torch.no_grad():
            reference.W.copy_(c["W"])
            reference.bias.copy_(c["bias"])
            group = reference(c["embeddings"], c["labels"])
        if c["warming_up"]:
            assert c["value"].item() == pytest.approx(ce.item(), rel=1e-13, abs=0)
            assert abs(group.item() - ce.item()) > 1e-3  # the NLL term would have mattered
        else:
            assert c["value"].item() == pytest.approx(group.item(), rel=1e-13, abs=0)
            assert c["value"].item() > ce.item() + 1e-3  # CE plus a positive NLL
    assert (loss.nll_weight, loss.ce_weight, loss.num_iterations) == (1.0, 1.0, 2)
    assert not warmup.warming_up


def test_warmup_gradient_is_the_ce_gradient_nll_gets_none():
    loss = _loss(ce_weight=0.0)  # the loss's own CE weight 0 must not zero the warm-up
    ClassificationWarmup(loss, epochs=1)
    g = torch.Generator().manual_seed(3)
    e = torch.randn(12, DIM_EMB, generator=g, dtype=torch.float64, requires_grad=True)
    labels = torch.arange(NUM_CLASSES).repeat(3)
    value = loss(e, labels)
    grads = torch.autograd.grad(value, [e, loss.W, loss.bias])
    e2 = e.detach().clone().requires_grad_(True)
    W = loss.W.detach().clone().requires_grad_(True)
    bias = loss.bias.detach().clone().requires_grad_(True)
    ce = _hand_ce(e2, labels, W, bias)
    expected = torch.autograd.grad(ce, [e2, W, bias])
    assert value.item() == pytest.approx(ce.item(), rel=1e-14) and ce.item() > 0.5
    for got, want in zip(grads, expected):
        torch.testing.assert_close(got, want, rtol=1e-12, atol=1e-15)
    # the sub-loss of the refined-label NLL is exactly 0 in the warm-up
    sub = loss.compute_loss(e, labels, None, e, labels)
    assert torch.count_nonzero(sub["group_loss"]["losses"]) == 0


def test_user_weights_are_restored_exactly():
    loss = _loss(nll_weight=0.37, ce_weight=0.0, num_iterations=3)
    warmup = ClassificationWarmup(loss, epochs=1, ce_weight=0.5)
    assert (loss.nll_weight, loss.ce_weight, loss.num_iterations) == (0.0, 0.5, 0)
    calls = _train(loss, warmup, num_epochs=2)
    assert [c["nll_weight"] for c in calls] == [0.0, 0.0, 0.37, 0.37]
    assert (loss.nll_weight, loss.ce_weight, loss.num_iterations) == (0.37, 0.0, 3)
    assert type(loss.num_iterations) is int


def test_restore_leaves_an_unfinished_warmup():
    loss = _loss(nll_weight=2.0)
    warmup = ClassificationWarmup(loss, epochs=10)
    _train(loss, warmup, num_epochs=1)
    assert warmup.warming_up and loss.nll_weight == 0.0  # stopped inside the warm-up
    warmup.restore()
    assert not warmup.warming_up and (loss.nll_weight, loss.num_iterations) == (2.0, 2)


def test_a_second_warmup_of_a_loss_in_warmup_restores_the_loss_own_values():
    # a notebook cell run twice: the second object must not take 0 / 0.5 / 0 as the loss's own
    loss = _loss(nll_weight=0.37, ce_weight=0.0, num_iterations=3)
    first = ClassificationWarmup(loss, epochs=2, ce_weight=0.5)
    second = ClassificationWarmup(loss, epochs=2, ce_weight=0.5)
    second.set_epoch(3)
    assert (loss.nll_weight, loss.ce_weight, loss.num_iterations) == (0.37, 0.0, 3)
    first.set_epoch(3)  # nothing left to restore
    assert (loss.nll_weight, loss.ce_weight, loss.num_iterations) == (0.37, 0.0, 3)


def test_resume_with_start_epoch():
    loss = _loss()
    warmup = ClassificationWarmup(loss, epochs=3, start_epoch=3)
    assert warmup.warming_up
    calls = _train(loss, warmup, num_epochs=5, start_epoch=3)
    assert [c["warming_up"] for c in calls] == [True, True, False, False, False, False]
    late = _loss()
    assert not ClassificationWarmup(late, epochs=3, start_epoch=4).warming_up
    assert late.nll_weight == 1.0 and late.num_iterations == 2


def test_resume_without_start_epoch_is_an_error():
    loss = _loss()
    warmup = ClassificationWarmup(loss, epochs=3)  # start_epoch=1, but training resumes at 4
    with pytest.raises(RuntimeError, match="start_epoch"):
        _train(loss, warmup, num_epochs=5, start_epoch=4)


def test_chained_hook_runs_and_its_result_stops_training():
    seen: List[int] = []

    def stop_after_two(trainer):
        seen.append(trainer.epoch)
        return trainer.epoch < 2

    loss = _loss()
    warmup = ClassificationWarmup(loss, epochs=1)
    calls = _train(loss, warmup, num_epochs=5, chained=stop_after_two)
    assert seen == [1, 2] and len(calls) == 2 * ITERATIONS
    assert [c["warming_up"] for c in calls] == [True, True, False, False]


def test_record_keeper_logs_the_modes(tmp_path):
    record_keeper, _, _ = logging_presets.get_record_keeper(
        str(tmp_path / "logs"), str(tmp_path / "tb"))
    hooks = logging_presets.get_hook_container(record_keeper, log_freq=1)
    loss = _loss(collect_stats=True)
    warmup = ClassificationWarmup(loss, epochs=1)
    _train(loss, warmup, num_epochs=2, end_of_iteration_hook=hooks.end_of_iteration_hook)
    record_keeper.save_records()
    frame = pd.read_csv(os.path.join(str(tmp_path / "logs"), "metric_loss_GroupLoss.csv"))
    assert frame["nll_weight"].tolist() == [0.0, 0.0, 1.0, 1.0]
    assert frame["num_iterations"].tolist() == [0, 0, 2, 2]
    assert frame["avg_true_class_probability"].between(0, 1).all()
    record_keeper.update_records({"warmup": warmup}, 3)
    records = record_keeper.record_writer.records["warmup_ClassificationWarmup"]
    assert records["warming_up"][3] is False


@pytest.mark.parametrize("bad,match", [(dict(epochs=-1), "epochs"), (dict(epochs=2.5), "epochs"),
                                        (dict(start_epoch=0), "start_epoch"),
                                        (dict(ce_weight=0.0), "ce_weight")])
def test_bad_arguments_name_themselves(bad, match):
    with pytest.raises((TypeError, ValueError), match=match):
        ClassificationWarmup(_loss(), **bad)


def test_a_chained_hook_that_is_not_callable_is_named_at_once():
    with pytest.raises(TypeError, match="chained_hook must be a callable"):
        ClassificationWarmup(_loss(), epochs=1).end_of_epoch_hook("not callable")


def test_a_loss_without_classifier_is_a_type_error():
    with pytest.raises(TypeError, match="loss must be a GroupLoss.*ProxyAnchorLoss"):
        ClassificationWarmup(pml_losses.ProxyAnchorLoss(NUM_CLASSES, DIM_EMB))


def test_a_distributed_wrapper_around_grouploss_is_unwrapped():
    loss = _loss()
    warmup = ClassificationWarmup(ParametricDistributedLossWrapper(loss), epochs=1)
    assert warmup.loss is loss and loss.nll_weight == 0.0
    warmup.set_epoch(2)
    assert loss.nll_weight == 1.0


def test_hook_slips_are_named_with_the_fix(tmp_path):
    # the warm-up's method passed uncalled: the trainer calls it with itself
    loss = _loss()
    warmup = ClassificationWarmup(loss, epochs=1)
    trainer = trainers.MetricLossOnly(
        models={"trunk": torch.nn.Identity()}, optimizers={}, batch_size=BATCH,
        loss_funcs={"metric_loss": loss}, dataset=_dataset())
    with pytest.raises(TypeError, match=r"pass end_of_epoch_hook=warmup.end_of_epoch_hook\(hook"):
        warmup.end_of_epoch_hook(trainer)
    # HookContainer's hook factory itself: was PML's "missing 2 required positional arguments"
    # after a whole epoch
    record_keeper, _, _ = logging_presets.get_record_keeper(
        str(tmp_path / "logs"), str(tmp_path / "tb"))
    hooks = logging_presets.get_hook_container(record_keeper)
    with pytest.raises(TypeError, match=r"HookContainer.end_of_epoch_hook itself.*"
                                        r"hooks.end_of_epoch_hook\(tester, dataset_dict, "):
        warmup.end_of_epoch_hook(hooks.end_of_epoch_hook)
