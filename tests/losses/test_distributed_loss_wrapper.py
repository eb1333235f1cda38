"""Two gloo processes on CPU, started from *different* seeds (different GroupLoss classifiers):
the wrapped GroupLoss returns on every rank the single-process loss of the concatenated batch,
gives the model and the classifier the single-process gradients, trains exactly like a single
process, and keeps the classifier replicas bit-identical. Also: lazy synchronisation (wrapper
built before the process group, deep copies, replaced parameters), anchors passed as a local
``indices_tuple``, a penalty added outside the wrapper, PML's MetricLossOnly trainer and
uneven batch sizes per rank."""

import copy
import importlib
import os
import queue as queue_module
import socket
import time
from typing import Callable, Dict

import numpy as np
import pytest
import torch
import torch.multiprocessing as mp
from pytorch_metric_learning import trainers
from pytorch_metric_learning.losses import ProxyAnchorLoss

from pml_grouploss.losses import GroupLoss, ParametricDistributedLossWrapper
from pml_grouploss.miners import AnchorMiner

WORLD_SIZE, DIM_IN, DIM_EMB, NUM_CLASSES = 2, 10, 6, 8
SIZES = (13, 11)  # rows per rank: uneven on purpose
SEED = 10  # rank r builds its model and loss with seed SEED + r; rank 0's are the reference
STEPS = 4
PENALTY = 0.3  # weight of a penalty on the classifier computed outside the wrapper


def _batch(step: int):
    """The concatenated batch of one step (a shuffle of one data set); rank r holds the rows
    from ``sum(SIZES[:r])`` on."""
    g = torch.Generator().manual_seed(100)
    n = sum(SIZES)
    x = torch.randn(n, DIM_IN, generator=g, dtype=torch.float64)
    # random labels: every class is spread over both ranks, so the batch order decides which
    # samples GroupLoss takes as anchors (the first of each class)
    labels = torch.randint(0, NUM_CLASSES, (n,), generator=g)
    order = torch.randperm(n, generator=torch.Generator().manual_seed(step))
    return x[order], labels[order]


def _shard(t: torch.Tensor, rank: int) -> torch.Tensor:
    start = sum(SIZES[:rank])
    return t[start : start + SIZES[rank]]


def _model(seed: int) -> torch.nn.Module:
    torch.manual_seed(seed)
    return torch.nn.Linear(DIM_IN, DIM_EMB).double()


def _loss(seed: int) -> GroupLoss:
    torch.manual_seed(seed)
    return GroupLoss(
        NUM_CLASSES, DIM_EMB, temperature=2.0, num_iterations=2, num_anchors=1
    ).double()


def _sparse_loss(seed: int) -> GroupLoss:
    torch.manual_seed(seed)
    return GroupLoss(NUM_CLASSES, DIM_EMB, temperature=2.0, num_iterations=2, num_anchors=1,
                     prior_classes="batch", sparse_gradients=True).double()


def _replacement_w(seed: int) -> torch.Tensor:
    return torch.randn(
        NUM_CLASSES, DIM_EMB, generator=torch.Generator().manual_seed(seed), dtype=torch.float64
    )


def _local_anchors(labels: torch.Tensor) -> torch.Tensor:
    return AnchorMiner(num_anchors_per_class=1)(torch.zeros(len(labels), 1), labels)[0]


def _arrays(tensors):
    return [t.detach().numpy().copy() for t in tensors]


def _grads(*modules):
    return [p.grad.numpy().copy() for m in modules for p in m.parameters()]


def _train(model, loss, batches, forward, loss_optimizer=torch.optim.Adam):
    """Adam on the model, ``loss_optimizer`` on the loss; the per-step loss values."""
    opt_model = torch.optim.Adam(model.parameters(), lr=0.05)
    opt_loss = loss_optimizer(loss.parameters(), lr=0.1)
    values = []
    for x, labels in batches:
        opt_model.zero_grad()
        opt_loss.zero_grad()
        value = forward(x, labels)
        value.backward()
        opt_model.step()
        opt_loss.step()
        values.append(value.item())
    return values


def _worker(rank: int, port: int, queue, fn: Callable) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch.set_num_threads(1)
    try:
        queue.put((rank, fn(rank)))
    except BaseException as exc:  # report instead of hanging the parent
        queue.put((rank, exc))
        raise
    finally:
        if torch.distributed.is_initialized():
            torch.distributed.destroy_process_group()


def run_processes(fn: Callable) -> Dict[int, dict]:
    """``fn(rank)`` on WORLD_SIZE spawned processes (``fn`` initialises the gloo group)."""
    if not torch.distributed.is_available():
        pytest.skip("torch.distributed is not available")
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    # fork: the children inherit the imports (torch._dynamo, which DDP imports, takes ~10 s)
    importlib.import_module("torch._dynamo")

    ctx = mp.get_context("fork")
    queue = ctx.Queue()
    procs = [ctx.Process(target=_worker, args=(r, port, queue, fn)) for r in range(WORLD_SIZE)]
    for p in procs:
        p.start()
    results = {}
    deadline = time.monotonic() + 120
    while len(results) < WORLD_SIZE:
        try:
            rank, out = queue.get(timeout=1)
            results[rank] = out
        except queue_module.Empty:
            dead = [p.exitcode for p in procs if p.exitcode not in (None, 0)]
            if dead or time.monotonic() > deadline:
                for p in procs:
                    p.kill()
                raise AssertionError(f"a process died or hung (exit codes {dead})")
    for p in procs:
        p.join(timeout=60)
    for rank, out in results.items():
        if isinstance(out, BaseException):
            raise AssertionError(f"rank {rank} failed") from out
    assert all(p.exitcode == 0 for p in procs)
    return results


def error_message(fn: Callable, error: type = ValueError) -> str:
    """The message of the ``error`` (default ``ValueError``) ``fn()`` raises, or ``""``."""
    try:
        fn()
    except error as exc:
        return str(exc)
    return ""


def init_gloo(rank: int) -> None:
    torch.distributed.init_process_group("gloo", rank=rank, world_size=WORLD_SIZE)


def _scenarios(rank: int) -> dict:
    # built before the process group exists, from this rank's seed: synchronised lazily
    lazy = ParametricDistributedLossWrapper(_loss(SEED + rank))
    copied = copy.deepcopy(lazy)
    init_gloo(rank)
    out = {}
    x, labels = _batch(0)
    xs, ls = _shard(x, rank), _shard(labels, rank)
    # one step: value, embedding, model and classifier gradients
    model, loss = _model(SEED + rank), _loss(SEED + rank)
    ddp = torch.nn.parallel.DistributedDataParallel(model)
    loss_func = ParametricDistributedLossWrapper(loss)
    out["initial_W"] = loss.W.detach().numpy().copy()
    emb = ddp(xs)
    emb.retain_grad()
    value = loss_func(emb, ls)
    (value + PENALTY * (loss.W**2).sum()).backward()
    out["value"] = value.item()
    out["emb_grad"] = emb.grad.numpy().copy()
    out["grads"] = _grads(model, loss)
    # a local indices_tuple (anchors of this rank's batch)
    e = x[:, :DIM_EMB]
    es = _shard(e, rank)
    out["anchors_value"] = loss_func(es, ls, (_local_anchors(ls),)).item()
    # lazy synchronisation, deep copy, replaced parameter
    out["lazy_value"] = lazy(es, ls).item()
    out["lazy_W"] = lazy.loss.W.detach().numpy().copy()
    out["copy_value"] = copied(es, ls).item()
    lazy.loss.W = torch.nn.Parameter(_replacement_w(50 + rank))
    out["replaced_value"] = lazy(es, ls).item()
    out["replaced_W"] = lazy.loss.W.detach().numpy().copy()
    # a PML loss with parameters, from this rank's seed
    torch.manual_seed(SEED + rank)
    proxy = ProxyAnchorLoss(NUM_CLASSES, DIM_EMB).double()
    value = ParametricDistributedLossWrapper(proxy)(es, ls)
    value.backward()
    out["proxy"] = (value.item(), proxy.proxies.grad.numpy().copy())
    # training: DDP model + wrapped loss, Adam on both, a new batch per step
    model, loss = _model(SEED + rank), _loss(SEED + rank)
    ddp = torch.nn.parallel.DistributedDataParallel(model)
    loss_func = ParametricDistributedLossWrapper(loss)
    batches = [(_shard(xb, rank), _shard(lb, rank)) for xb, lb in map(_batch, range(STEPS))]
    out["train_values"] = _train(model, loss, batches, lambda xb, lb: loss_func(ddp(xb), lb))
    out["train_state"] = _arrays([*model.parameters(), *loss.parameters()])
    out["trainer_state"] = _trainer_run(rank, xs, ls)
    out["sparse"] = _sparse_run(rank, xs, ls)
    return out


def _sparse_run(rank: int, xs: torch.Tensor, ls: torch.Tensor) -> dict:
    """Batch-class GroupLoss with sparse classifier gradients: one step's gradient, then
    training with SparseAdam on the classifier."""
    model, loss = _model(SEED + rank), _sparse_loss(SEED + rank)
    ddp = torch.nn.parallel.DistributedDataParallel(model)
    loss_func = ParametricDistributedLossWrapper(loss)
    loss_func(ddp(xs), ls).backward()
    out = {"layout": loss.W.grad.layout, "W_grad": loss.W.grad.to_dense().numpy().copy()}
    model, loss = _model(SEED + rank), _sparse_loss(SEED + rank)
    ddp = torch.nn.parallel.DistributedDataParallel(model)
    loss_func = ParametricDistributedLossWrapper(loss)
    batches = [(_shard(xb, rank), _shard(lb, rank)) for xb, lb in map(_batch, range(STEPS))]
    out["values"] = _train(model, loss, batches, lambda xb, lb: loss_func(ddp(xb), lb),
                           torch.optim.SparseAdam)
    out["state"] = _arrays([*model.parameters(), *loss.parameters()])
    return out


def _trainer_run(rank: int, xs: torch.Tensor, ls: torch.Tensor) -> list:
    """PML's MetricLossOnly: this rank's shard is one batch per epoch, SGD."""
    model, loss = _model(SEED + rank), _loss(SEED + rank)
    ddp = torch.nn.parallel.DistributedDataParallel(model)
    loss_func = ParametricDistributedLossWrapper(loss)
    shard = torch.utils.data.TensorDataset(xs, ls)
    trainer = trainers.MetricLossOnly(
        models={"trunk": ddp},
        optimizers={
            "trunk_optimizer": torch.optim.SGD(ddp.parameters(), lr=0.5),
            "metric_loss_optimizer": torch.optim.SGD(loss_func.parameters(), lr=0.5),
        },
        batch_size=len(xs),
        loss_funcs={"metric_loss": loss_func},
        dataset=shard,
        sampler=torch.utils.data.SequentialSampler(shard),
        dataloader_num_workers=0,
        data_device=torch.device("cpu"),
    )
    trainer.train(num_epochs=STEPS)
    return _arrays([*model.parameters(), *loss.parameters()])


@pytest.fixture(scope="module")
def results():
    return run_processes(_scenarios)


def _single_step():
    x, labels = _batch(0)
    model, loss = _model(SEED), _loss(SEED)
    emb = model(x)
    emb.retain_grad()
    value = loss(emb, labels)
    (value + PENALTY * (loss.W**2).sum()).backward()
    return value.item(), emb.grad.numpy(), _grads(model, loss)


def _assert_all_close(got, expected, rtol=1e-9, atol=1e-12):
    assert len(got) == len(expected)
    for g, e in zip(got, expected):
        np.testing.assert_allclose(g, e, rtol=rtol, atol=atol)


@pytest.mark.slow
def test_every_rank_gets_the_single_process_loss_and_gradients(results):
    value, emb_grad, grads = _single_step()
    assert results[0]["value"] == results[1]["value"]  # the same number on every rank
    assert not np.allclose(_loss(SEED).W.detach().numpy(), _loss(SEED + 1).W.detach().numpy())
    for rank in range(WORLD_SIZE):
        out = results[rank]
        np.testing.assert_array_equal(out["initial_W"], _loss(SEED).W.detach().numpy())
        assert out["value"] == pytest.approx(value, rel=1e-12)
        # the local embeddings get world_size x their share; DDP's averaging undoes it
        np.testing.assert_allclose(
            out["emb_grad"],
            WORLD_SIZE * _shard(torch.from_numpy(emb_grad), rank).numpy(),
            rtol=1e-9,
            atol=1e-12,
        )
        _assert_all_close(out["grads"], grads)  # model W, b; classifier W, bias (+ penalty)


@pytest.mark.slow
def test_local_anchors_are_offset_into_the_gathered_batch(results):
    x, labels = _batch(0)
    anchors = torch.cat(
        [_local_anchors(_shard(labels, r)) + sum(SIZES[:r]) for r in range(WORLD_SIZE)]
    )
    expected = _loss(SEED)(x[:, :DIM_EMB], labels, (anchors,)).item()
    assert expected != pytest.approx(_loss(SEED)(x[:, :DIM_EMB], labels).item(), rel=1e-6)
    for rank in range(WORLD_SIZE):
        assert results[rank]["anchors_value"] == pytest.approx(expected, rel=1e-12)


@pytest.mark.slow
def test_lazy_copy_and_replaced_parameter_are_synchronised(results):
    x, labels = _batch(0)
    e = x[:, :DIM_EMB]
    expected = _loss(SEED)(e, labels).item()
    replaced = _loss(SEED)
    replaced.W = torch.nn.Parameter(_replacement_w(50))
    expected_replaced = replaced(e, labels).item()
    for rank in range(WORLD_SIZE):
        out = results[rank]
        np.testing.assert_array_equal(out["lazy_W"], _loss(SEED).W.detach().numpy())
        assert out["lazy_value"] == pytest.approx(expected, rel=1e-12)
        assert out["copy_value"] == pytest.approx(expected, rel=1e-12)
        np.testing.assert_array_equal(out["replaced_W"], _replacement_w(50).numpy())
        assert out["replaced_value"] == pytest.approx(expected_replaced, rel=1e-12)


@pytest.mark.slow
def test_pml_proxy_anchor_loss_matches_single_process(results):
    x, labels = _batch(0)
    torch.manual_seed(SEED)
    proxy = ProxyAnchorLoss(NUM_CLASSES, DIM_EMB).double()
    value = proxy(x[:, :DIM_EMB], labels)
    value.backward()
    for rank in range(WORLD_SIZE):
        got_value, got_grad = results[rank]["proxy"]
        assert got_value == pytest.approx(value.item(), rel=1e-12)
        np.testing.assert_allclose(got_grad, proxy.proxies.grad.numpy(), rtol=1e-9, atol=1e-12)


@pytest.mark.slow
def test_training_matches_single_process_and_replicas_stay_identical(results):
    model, loss = _model(SEED), _loss(SEED)
    values = _train(model, loss, map(_batch, range(STEPS)), lambda x, lb: loss(model(x), lb))
    state = _arrays([*model.parameters(), *loss.parameters()])
    assert values[-1] < values[0] - 0.05  # it learns something
    for rank in range(WORLD_SIZE):
        out = results[rank]
        np.testing.assert_allclose(out["train_values"], values, rtol=1e-9)
        _assert_all_close(out["train_state"], state, rtol=1e-7, atol=1e-9)
    for key in ("train_state", "trainer_state"):
        for a, b in zip(results[0][key], results[1][key]):
            np.testing.assert_array_equal(a, b)  # bit-identical replicas


@pytest.mark.slow
def test_sparse_classifier_gradients_are_averaged_as_sparse_rows(results):
    x, labels = _batch(0)
    model, loss = _model(SEED), _sparse_loss(SEED)
    loss(model(x), labels).backward()
    assert loss.W.grad.is_sparse
    expected = loss.W.grad.to_dense().numpy()
    model, loss = _model(SEED), _sparse_loss(SEED)
    values = _train(model, loss, map(_batch, range(STEPS)), lambda x, lb: loss(model(x), lb),
                    torch.optim.SparseAdam)
    state = _arrays([*model.parameters(), *loss.parameters()])
    assert values[-1] < values[0] - 0.05  # it learns something
    for rank in range(WORLD_SIZE):
        out = results[rank]["sparse"]
        assert out["layout"] == torch.sparse_coo
        np.testing.assert_allclose(out["W_grad"], expected, rtol=1e-9, atol=1e-12)
        np.testing.assert_allclose(out["values"], values, rtol=1e-9)
        _assert_all_close(out["state"], state, rtol=1e-7, atol=1e-9)
    for a, b in zip(results[0]["sparse"]["state"], results[1]["sparse"]["state"]):
        np.testing.assert_array_equal(a, b)  # bit-identical replicas


@pytest.mark.slow
def test_pml_trainer_matches_single_process_sgd(results):
    x, labels = _batch(0)
    model, loss = _model(SEED), _loss(SEED)
    opt = torch.optim.SGD([*model.parameters(), *loss.parameters()], lr=0.5)
    for _ in range(STEPS):
        opt.zero_grad()
        loss(model(x), labels).backward()
        opt.step()
    state = _arrays([*model.parameters(), *loss.parameters()])
    for rank in range(WORLD_SIZE):
        _assert_all_close(results[rank]["trainer_state"], state, rtol=1e-7, atol=1e-9)


def test_efficient_true_is_rejected():
    with pytest.raises(ValueError, match="efficient=False"):
        ParametricDistributedLossWrapper(_loss(0), efficient=True)


def test_outside_distributed_returns_loss():
    x, labels = _batch(0)
    e = x[:, :DIM_EMB]
    loss = _loss(0)
    with pytest.warns(UserWarning, match="non-distributed"):
        wrapped = ParametricDistributedLossWrapper(loss)(e, labels)
    assert wrapped.item() == pytest.approx(loss(e, labels).item(), rel=1e-12)
