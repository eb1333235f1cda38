"""GroupLoss with every PML trainer, wrapper, reducer and regularizer a user may combine it with
(docs/losses.md, "PML features"): each either trains (finite losses, changed parameters) or fails
with an error that says what to use instead. Tiny in-memory data, 2 trainer iterations."""

from __future__ import annotations

import math
import os
import queue as queue_module
import shutil
import socket
import time
import warnings
from typing import Callable, Dict, List

import pytest
import torch
import torch.multiprocessing as mp
from pytorch_metric_learning import losses as pml_losses
from pytorch_metric_learning import miners as pml_miners
from pytorch_metric_learning import reducers, regularizers, samplers, trainers
from pytorch_metric_learning.utils import distributed as pml_dist

from pml_grouploss.losses import GroupLoss, ParametricDistributedLossWrapper
from pml_grouploss.miners import AnchorMiner
from pml_grouploss.miners.anchor_miner import NOT_PAIRS_MESSAGE

NUM_CLASSES, PER_CLASS, DIM_IN, DIM_HIDDEN, DIM_EMB = 4, 8, 6, 8, 5
M, BATCH, ITERATIONS = 4, 16, 2  # batches of 4 classes x 4 samples, 2 iterations


# -- data, models, trainer runs --------------------------------------------------------------
def _inputs(seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    labels = torch.arange(NUM_CLASSES).repeat_interleave(PER_CLASS)
    centres = 2 * torch.randn(NUM_CLASSES, DIM_IN, generator=g)
    return centres[labels] + torch.randn(len(labels), DIM_IN, generator=g), labels


def _dataset(two_stream: bool = False) -> torch.utils.data.TensorDataset:
    """``(x, label)`` items, or ``(anchor, posneg, label)`` for TwoStreamMetricLoss."""
    x, labels = _inputs()
    if two_stream:
        posneg = x + 0.1 * torch.randn(x.shape, generator=torch.Generator().manual_seed(1))
        return torch.utils.data.TensorDataset(x, posneg, labels)
    return torch.utils.data.TensorDataset(x, labels)


def _sampler(dataset, iterations: int) -> samplers.MPerClassSampler:
    labels = dataset.tensors[-1]
    return samplers.MPerClassSampler(
        labels, m=M, batch_size=BATCH, length_before_new_iter=BATCH * iterations
    )


def _models(**extra) -> Dict[str, torch.nn.Module]:
    torch.manual_seed(0)
    models = {
        "trunk": torch.nn.Sequential(torch.nn.Linear(DIM_IN, DIM_HIDDEN), torch.nn.ReLU()),
        "embedder": torch.nn.Linear(DIM_HIDDEN, DIM_EMB),
    }
    models.update(extra)
    return models


def _optimizers(modules: Dict[str, torch.nn.Module]) -> Dict[str, torch.optim.Optimizer]:
    return {f"{k}_optimizer": torch.optim.SGD(m.parameters(), lr=0.1) for k, m in modules.items()}


def _group_loss(embedding_size: int = DIM_EMB, seed: int = 5, **kwargs) -> GroupLoss:
    torch.manual_seed(seed)  # the classifier's initialisation
    return GroupLoss(NUM_CLASSES, embedding_size, temperature=2.0, num_anchors=1, **kwargs)


def _params(*modules: torch.nn.Module) -> List[torch.Tensor]:
    return [p.detach().clone() for m in modules for p in m.parameters()]


def _all_changed(before: List[torch.Tensor], *modules: torch.nn.Module) -> bool:
    after = _params(*modules)
    assert len(after) == len(before) > 0
    return all(not torch.equal(b, a) for b, a in zip(before, after))


def _run(
    trainer_class, models, loss_funcs, optimizers, dataset, iterations: int = ITERATIONS, **kwargs
) -> List[dict]:
    """Trains one epoch of ``iterations`` batches; the per-iteration losses (floats)."""
    history: List[dict] = []

    def hook(trainer):
        history.append({k: float(torch.as_tensor(v).detach()) for k, v in trainer.losses.items()})

    trainer = trainer_class(
        models=models,
        optimizers=optimizers,
        batch_size=BATCH,
        loss_funcs=loss_funcs,
        dataset=dataset,
        sampler=_sampler(dataset, iterations),
        dataloader_num_workers=0,
        data_device=torch.device("cpu"),
        end_of_iteration_hook=hook,
        **kwargs,
    )
    trainer.train(num_epochs=1)
    assert len(history) == iterations
    return history


def _finite_positive(history: List[dict], *names: str) -> bool:
    return all(math.isfinite(h[n]) and h[n] > 0 for h in history for n in names)


# -- trainers --------------------------------------------------------------------------------
def test_metric_loss_only_with_anchor_miner():
    models, loss, miner = _models(), _group_loss(collect_stats=True), AnchorMiner(1)
    before = _params(*models.values(), loss)
    history = _run(
        trainers.MetricLossOnly,
        models,
        {"metric_loss": loss},
        _optimizers({**models, "metric_loss": loss}),
        _dataset(),
        mining_funcs={"tuple_miner": miner},
    )
    assert _finite_positive(history, "metric_loss", "total_loss")
    assert _all_changed(before, *models.values(), loss)
    # the miner's anchors are the ones used: 1 per class of the 4 x 4 batch
    assert (miner.num_anchors, miner.num_non_anchors, loss.num_anchors_used) == (4, 12, 4)


def test_train_with_classifier():
    models = _models(classifier=torch.nn.Linear(DIM_EMB, NUM_CLASSES))
    loss = _group_loss()
    loss_funcs = {"metric_loss": loss, "classifier_loss": torch.nn.CrossEntropyLoss()}
    before = _params(*models.values(), loss)
    history = _run(
        trainers.TrainWithClassifier,
        models,
        loss_funcs,
        _optimizers({**models, "metric_loss": loss}),
        _dataset(),
    )
    assert _finite_positive(history, "metric_loss", "classifier_loss")
    assert all(
        h["total_loss"] == pytest.approx(h["metric_loss"] + h["classifier_loss"]) for h in history
    )
    assert _all_changed(before, *models.values(), loss)


def test_cascaded_embeddings():
    # the embedding is cut into 3 + 2 features, each with its own GroupLoss (and miner)
    models, losses = _models(), {"metric_loss_0": _group_loss(3), "metric_loss_1": _group_loss(2)}
    miner = AnchorMiner(2)
    before = _params(*models.values(), *losses.values())
    history = _run(
        trainers.CascadedEmbeddings,
        models,
        losses,
        _optimizers({**models, **losses}),
        _dataset(),
        embedding_sizes=[3, 2],
        mining_funcs={"tuple_miner_0": miner},
    )
    assert _finite_positive(history, "metric_loss_0", "metric_loss_1")
    assert _all_changed(before, *models.values(), *losses.values())
    assert (miner.num_anchors, miner.num_non_anchors) == (8, 8)


def test_two_stream_metric_loss_with_anchor_miner():
    # the loss sees [first stream; second stream] (2 x 16 samples); anchors in the first
    models, loss, miner = _models(), _group_loss(collect_stats=True), AnchorMiner(1)
    before = _params(*models.values(), loss)
    history = _run(
        trainers.TwoStreamMetricLoss,
        models,
        {"metric_loss": loss},
        _optimizers({**models, "metric_loss": loss}),
        _dataset(two_stream=True),
        mining_funcs={"tuple_miner": miner},
    )
    assert _finite_positive(history, "metric_loss")
    assert _all_changed(before, *models.values(), loss)
    assert (miner.num_anchors, miner.num_non_anchors, loss.num_anchors_used) == (4, 12, 4)


def test_two_stream_metric_loss_without_miner_names_anchor_miner():
    # without a tuple_miner the trainer passes all triplets; the error names the fix above
    models, loss = _models(), _group_loss()
    with pytest.raises(ValueError) as info:
        _run(
            trainers.TwoStreamMetricLoss,
            models,
            {"metric_loss": loss},
            _optimizers({**models, "metric_loss": loss}),
            _dataset(two_stream=True),
        )
    assert str(info.value).startswith("GroupLoss received triplets;")
    assert "pml_grouploss.miners.AnchorMiner" in str(info.value)


def _daml(loss: GroupLoss, optimizer_for_loss: str, iterations: int = ITERATIONS):
    """DeepAdversarialMetricLearning, GroupLoss as metric_loss, the loss's parameters in
    ``"metric_loss_optimizer"`` (PML's usual place) or in ``"embedder_optimizer"``."""
    generator = torch.nn.Linear(3 * DIM_HIDDEN, DIM_HIDDEN)
    models = _models(generator=generator)
    optimizers = _optimizers({**models, "metric_loss": loss})
    if optimizer_for_loss == "embedder_optimizer":
        del optimizers["metric_loss_optimizer"]
        optimizers["embedder_optimizer"].add_param_group({"params": list(loss.parameters())})
    loss_funcs = {
        "metric_loss": loss,
        "synth_loss": pml_losses.TripletMarginLoss(),
        "g_adv_loss": pml_losses.TripletMarginLoss(),
    }
    before = _params(*models.values(), loss)
    history = _run(
        trainers.DeepAdversarialMetricLearning,
        models,
        loss_funcs,
        optimizers,
        _dataset(),
        iterations,
        g_triplets_per_anchor=4,
    )
    return history, before, models


def test_deep_adversarial_metric_learning_loss_parameters_in_embedder_optimizer():
    loss = _group_loss()
    history, before, models = _daml(loss, "embedder_optimizer")
    assert _finite_positive(history, "metric_loss", "g_hard_loss", "g_reg_loss")
    assert _all_changed(before, *models.values(), loss)


def test_deep_adversarial_metric_learning_never_steps_metric_loss_optimizer():
    # PML's DAML steps only the trunk/embedder/classifier/generator optimizers
    loss = _group_loss()
    W0 = loss.W.detach().clone()
    history, before, models = _daml(loss, "metric_loss_optimizer")
    assert _finite_positive(history, "metric_loss")
    assert torch.equal(loss.W.detach(), W0)
    assert not torch.equal(models["trunk"][0].weight.detach(), before[0])


def test_deep_adversarial_metric_learning_warns_that_the_classifier_is_frozen():
    loss = _group_loss()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        _daml(loss, "metric_loss_optimizer", iterations=4)
    messages = [str(w.message) for w in caught if "GroupLoss" in str(w.message)]
    assert any("embedder_optimizer" in m for m in messages), messages


def test_deep_adversarial_metric_learning_synth_loss_must_be_a_triplet_loss():
    # synth_loss gets the generator's packaged triplets
    loss = _group_loss()
    generator = torch.nn.Linear(3 * DIM_HIDDEN, DIM_HIDDEN)
    models = _models(generator=generator)
    loss_funcs = {
        "metric_loss": loss,
        "synth_loss": _group_loss(),
        "g_adv_loss": pml_losses.TripletMarginLoss(),
    }
    with pytest.raises(ValueError, match="^GroupLoss received triplets;"):
        _run(
            trainers.DeepAdversarialMetricLearning,
            models,
            loss_funcs,
            _optimizers(models),
            _dataset(),
            g_triplets_per_anchor=4,
        )


def test_unsupervised_embeddings_using_augmentations_is_not_in_pml():
    # removed from PML; its collate_fn labelled each augmented image with its batch position
    assert not hasattr(trainers, "UnsupervisedEmbeddingsUsingAugmentations")


# -- loss wrappers ---------------------------------------------------------------------------
def test_cross_batch_memory_refuses_grouploss():
    with pytest.raises(Exception) as info:
        pml_losses.CrossBatchMemory(_group_loss(), DIM_EMB, memory_size=32)
    assert str(info.value) == "CrossBatchMemory not supported for GroupLoss"


def test_self_supervised_loss_refuses_grouploss():
    with pytest.raises(Exception) as info:
        pml_losses.SelfSupervisedLoss(_group_loss())
    assert str(info.value) == "SelfSupervisedLoss not supported for GroupLoss"


def _batch(n_per_class: int = 4, dtype=torch.float64):
    g = torch.Generator().manual_seed(3)
    labels = torch.arange(NUM_CLASSES).repeat_interleave(n_per_class)
    emb = torch.randn(len(labels), DIM_EMB, generator=g, dtype=dtype).requires_grad_(True)
    return emb, labels


def test_multiple_losses_without_miners():
    emb, labels = _batch()
    group, triplet = _group_loss().double(), pml_losses.TripletMarginLoss()
    combined = pml_losses.MultipleLosses([group, triplet], weights=[1.0, 0.5])
    value = combined(emb, labels)
    assert value.item() == pytest.approx(
        group(emb, labels).item() + 0.5 * triplet(emb, labels).item(), rel=1e-12
    )
    value.backward()
    assert group.W.grad.abs().sum() > 0 and torch.isfinite(emb.grad).all()


def test_multiple_losses_one_miner_per_loss():
    emb, labels = _batch()
    group, triplet = _group_loss().double(), pml_losses.TripletMarginLoss()
    anchor_miner, triplet_miner = AnchorMiner(2), pml_miners.TripletMarginMiner(margin=0.5)
    combined = pml_losses.MultipleLosses(
        {"group": group, "triplet": triplet},
        miners={"group": anchor_miner, "triplet": triplet_miner},
    )
    value = combined(emb, labels)
    anchors = AnchorMiner(2)(emb, labels)
    expected = group(emb, labels, anchors) + triplet(emb, labels, triplet_miner(emb, labels))
    assert value.item() == pytest.approx(expected.item(), rel=1e-12)
    assert group(emb, labels, anchors).item() != pytest.approx(group(emb, labels).item())
    assert (anchor_miner.num_anchors, anchor_miner.num_non_anchors) == (8, 8)


def test_multiple_losses_shared_anchor_miner_says_one_miner_per_loss():
    emb, labels = _batch()
    combined = pml_losses.MultipleLosses([_group_loss().double(), pml_losses.TripletMarginLoss()])
    with pytest.raises(TypeError) as info:
        combined(emb, labels, AnchorMiner(1)(emb, labels))
    assert str(info.value) == NOT_PAIRS_MESSAGE


def test_trainer_tuple_miner_shared_by_multiple_losses_says_one_miner_per_loss():
    models = _models()
    combined = pml_losses.MultipleLosses([_group_loss(), pml_losses.ContrastiveLoss()])
    with pytest.raises(TypeError) as info:
        _run(
            trainers.MetricLossOnly,
            models,
            {"metric_loss": combined},
            _optimizers({**models, "metric_loss": combined}),
            _dataset(),
            mining_funcs={"tuple_miner": AnchorMiner(1)},
        )
    assert str(info.value) == NOT_PAIRS_MESSAGE


def test_trainer_with_multiple_losses_one_miner_per_loss():
    models, loss = _models(), _group_loss()
    combined = pml_losses.MultipleLosses(
        [loss, pml_losses.ContrastiveLoss()], miners=[AnchorMiner(1), None]
    )
    before = _params(*models.values(), loss)
    history = _run(
        trainers.MetricLossOnly,
        models,
        {"metric_loss": combined},
        _optimizers({**models, "metric_loss": combined}),
        _dataset(),
    )
    assert _finite_positive(history, "metric_loss")
    assert _all_changed(before, *models.values(), loss)


def test_pml_distributed_loss_wrapper_single_process_is_the_loss():
    emb, labels = _batch()
    loss = _group_loss().double()
    with pytest.warns(UserWarning, match="non-distributed setting"):
        value = pml_dist.DistributedLossWrapper(loss)(emb, labels)
    assert value.item() == loss(emb, labels).item()
    with pytest.warns(UserWarning, match="non-distributed setting"):
        ours = ParametricDistributedLossWrapper(loss)(emb, labels, AnchorMiner(1)(emb, labels))
    assert ours.item() == loss(emb, labels, AnchorMiner(1)(emb, labels)).item()


# -- two gloo processes ----------------------------------------------------------------------
def _worker(rank: int, port: int, queue, fn: Callable) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch.set_num_threads(1)
    try:
        torch.distributed.init_process_group("gloo", rank=rank, world_size=2)
        queue.put((rank, fn(rank)))
    except BaseException as exc:  # report instead of hanging the parent
        queue.put((rank, f"{type(exc).__name__}: {exc}"))
    finally:
        if torch.distributed.is_initialized():
            torch.distributed.destroy_process_group()


def _two_processes(fn: Callable) -> Dict[int, dict]:
    if not torch.distributed.is_available():
        pytest.skip("torch.distributed is not available")
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    ctx = mp.get_context("fork")  # the children inherit the imports
    queue = ctx.Queue()
    procs = [ctx.Process(target=_worker, args=(r, port, queue, fn)) for r in range(2)]
    for p in procs:
        p.start()
    results, deadline = {}, time.monotonic() + 60
    try:
        while len(results) < 2:
            try:
                rank, out = queue.get(timeout=1)
                results[rank] = out
            except queue_module.Empty:
                if time.monotonic() > deadline or any(p.exitcode for p in procs):
                    raise AssertionError("a process died or hung")
    finally:
        for p in procs:
            p.join(timeout=10)
            if p.is_alive():
                p.kill()
    for rank, out in results.items():
        assert isinstance(out, dict), f"rank {rank}: {out}"
    return results


def _error_text(fn: Callable) -> str:
    try:
        fn()
    except ValueError as exc:
        return str(exc)
    return "no error"


def _distributed_cases(rank: int) -> dict:
    emb, labels = _batch()
    emb = emb[rank::2].detach().requires_grad_(True)  # this rank's half, 2 per class
    labels = labels[rank::2]
    loss = _group_loss().double()
    out = {}
    for efficient in (True, False):
        wrapped = pml_dist.DistributedLossWrapper(loss, efficient=efficient)
        out[efficient] = _error_text(lambda: wrapped(emb, labels).backward())
    value = ParametricDistributedLossWrapper(loss)(emb, labels, AnchorMiner(1)(emb, labels))
    value.backward()
    out["ours"] = (value.item(), loss.W.grad.tolist())  # no tensors through the queue
    return out


@pytest.fixture(scope="module")
def distributed_results() -> Dict[int, dict]:
    return _two_processes(_distributed_cases)


WRAPPER = "pml_grouploss.losses.ParametricDistributedLossWrapper"


def test_pml_distributed_loss_wrapper_efficient_names_parametric_wrapper(distributed_results):
    for rank in (0, 1):
        assert WRAPPER in distributed_results[rank][True], distributed_results[rank][True]


def test_pml_distributed_loss_wrapper_names_parametric_wrapper(distributed_results):
    for rank in (0, 1):
        assert WRAPPER in distributed_results[rank][False], distributed_results[rank][False]


def test_parametric_wrapper_with_anchor_miner_is_the_single_process_loss(distributed_results):
    # 2 x 8 rows, rank-ordered: the single-process batch is [rank 0's rows; rank 1's rows]
    emb, labels = _batch()
    order = torch.cat([torch.arange(0, 16, 2), torch.arange(1, 16, 2)])
    emb, labels = emb[order].detach(), labels[order]
    loss = _group_loss().double()
    anchors = torch.cat(
        [AnchorMiner(1)(emb[:8], labels[:8])[0], 8 + AnchorMiner(1)(emb[8:], labels[8:])[0]]
    )
    expected = loss(emb, labels, (anchors,))
    expected.backward()
    for rank in (0, 1):
        value, W_grad = distributed_results[rank]["ours"]
        assert value == pytest.approx(expected.item(), rel=1e-12)
        torch.testing.assert_close(
            torch.tensor(W_grad, dtype=torch.float64), loss.W.grad, rtol=1e-10, atol=1e-12
        )


# -- reducers and regularizers ---------------------------------------------------------------
def _sub_losses(emb, labels) -> Dict[str, torch.Tensor]:
    loss_dict = _group_loss(reducer=reducers.DoNothingReducer()).double()(emb, labels)
    assert {k: v["reduction_type"] for k, v in loss_dict.items()} == {
        "group_loss": "element",
        "ce_loss": "element",
    }
    return {k: v["losses"].detach() for k, v in loss_dict.items()}


CLASS_WEIGHTS = torch.tensor([1.0, 2.0, 0.5, 3.0], dtype=torch.float64)
REDUCERS = {
    "MeanReducer": (reducers.MeanReducer, lambda losses, y: losses.mean()),
    "SumReducer": (reducers.SumReducer, lambda losses, y: losses.sum()),
    "AvgNonZeroReducer": (
        reducers.AvgNonZeroReducer, lambda losses, y: losses[losses > 0].mean()),
    "ThresholdReducer": (
        lambda: reducers.ThresholdReducer(low=1.0), lambda losses, y: losses[losses > 1].mean()),
    "ClassWeightedReducer": (
        lambda: reducers.ClassWeightedReducer(CLASS_WEIGHTS),
        lambda losses, y: (losses * CLASS_WEIGHTS[y]).mean(),
    ),
    "PerAnchorReducer": (reducers.PerAnchorReducer, lambda losses, y: losses.mean()),
}


@pytest.mark.parametrize("name", list(REDUCERS))
def test_reducer(name):
    make, reference = REDUCERS[name]
    emb, labels = _batch()
    parts = _sub_losses(emb, labels)
    loss = _group_loss(reducer=make()).double()
    value = loss(emb, labels)
    # an anchor's NLL is -log(1 + 1e-12) < 0: AvgNonZeroReducer averages over the 12 others
    assert int((parts["group_loss"] > 0).sum()) == 16 - 4
    expected = sum(reference(parts[k], labels) for k in ("group_loss", "ce_loss"))
    assert value.item() == pytest.approx(expected.item(), rel=1e-12)
    value.backward()
    assert loss.W.grad.abs().sum() > 0


def test_multiple_reducers_per_sub_loss():
    emb, labels = _batch()
    parts = _sub_losses(emb, labels)
    reducer = reducers.MultipleReducers({"group_loss": reducers.SumReducer()})
    value = _group_loss(reducer=reducer).double()(emb, labels)
    expected = parts["group_loss"].sum() + parts["ce_loss"].mean()
    assert value.item() == pytest.approx(expected.item(), rel=1e-12)


def test_divisor_reducer_is_the_mean():
    emb, labels = _batch()
    parts = _sub_losses(emb, labels)
    value = _group_loss(reducer=reducers.DivisorReducer()).double()(emb, labels)
    expected = parts["group_loss"].mean() + parts["ce_loss"].mean()
    assert value.item() == pytest.approx(expected.item(), rel=1e-12)


def test_weight_and_embedding_regularizers_add_their_values():
    emb, labels = _batch()
    plain = _group_loss().double()(emb, labels)
    loss = _group_loss(
        weight_regularizer=regularizers.LpRegularizer(),
        weight_reg_weight=0.3,
        embedding_regularizer=regularizers.LpRegularizer(power=2),
        embedding_reg_weight=0.7,
    ).double()
    assert loss.sub_loss_names() == [
        "group_loss",
        "ce_loss",
        "weight_reg_loss",
        "embedding_reg_loss",
    ]
    value = loss(emb, labels)
    expected = plain + 0.3 * loss.W.norm(dim=1).mean() + 0.7 * (emb.norm(dim=1) ** 2).mean()
    assert value.item() == pytest.approx(expected.item(), rel=1e-12)


def test_regular_face_regularizer_on_the_classifier():
    emb, labels = _batch()
    plain = _group_loss().double()(emb, labels)
    regularizer = regularizers.RegularFaceRegularizer()
    loss = _group_loss(weight_regularizer=regularizer, weight_reg_weight=2.0).double()
    value = loss(emb, labels)
    assert value.item() == pytest.approx((plain + 2.0 * regularizer(loss.W)).item(), rel=1e-12)
    # the classifier gets the penalty's gradient on top of the loss's
    (W_grad,) = torch.autograd.grad(value, loss.W)
    (W_grad_plain,) = torch.autograd.grad(loss(emb, labels) - 2.0 * regularizer(loss.W), loss.W)
    (W_grad_penalty,) = torch.autograd.grad(regularizer(loss.W), loss.W)
    assert W_grad_penalty.abs().sum() > 0
    torch.testing.assert_close(W_grad, W_grad_plain + 2.0 * W_grad_penalty)


# -- torch.compile ---------------------------------------------------------------------------
@pytest.mark.slow
def test_torch_compile_forward_backward_matches_eager():
    if not hasattr(torch, "compile"):
        pytest.skip("torch.compile needs torch >= 2.0")
    if shutil.which(os.environ.get("CXX", "g++")) is None:
        pytest.skip("torch.compile's CPU backend (inductor) needs a C++ compiler (g++)")
    emb, labels = _batch(dtype=torch.float32)
    eager = _group_loss()
    compiled_loss = _group_loss()
    compiled_loss.load_state_dict(eager.state_dict())
    anchors = AnchorMiner(1)(emb, labels)
    expected = eager(emb, labels, anchors)
    expected.backward()
    emb_grad, emb.grad = emb.grad.clone(), None
    value = torch.compile(compiled_loss)(emb, labels, anchors)
    value.backward()
    assert value.item() == pytest.approx(expected.item(), rel=1e-5)
    torch.testing.assert_close(emb.grad, emb_grad, rtol=1e-4, atol=1e-6)
    torch.testing.assert_close(compiled_loss.W.grad, eager.W.grad, rtol=1e-4, atol=1e-6)
