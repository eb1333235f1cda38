"""GroupLoss with every PML trainer and loss wrapper a user may combine it with (docs/losses.md,
"PML features"; MultipleLosses, reducers and regularizers in the two other test_pml_* files):
each either trains (finite losses, changed parameters) or fails with an error that says what to
use instead. Tiny in-memory data, 2 trainer iterations."""

from __future__ import annotations

import os
import queue as queue_module
import socket
import time
import warnings
from typing import Callable, Dict

import pytest
import torch
import torch.multiprocessing as mp
from pytorch_metric_learning import losses as pml_losses
from pytorch_metric_learning import trainers
from pytorch_metric_learning.utils import distributed as pml_dist

from pml_grouploss.losses import GroupLoss, ParametricDistributedLossWrapper
from pml_grouploss.miners import AnchorMiner

from ._pml_setup import (
    DIM_EMB, DIM_HIDDEN, ITERATIONS, NUM_CLASSES, _all_changed, _batch, _dataset,
    _finite_positive, _group_loss, _models, _optimizers, _params, _run,
)


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
