"""Two gloo processes on CPU: the wrapped GroupLoss gives the model and the loss's classifier
exactly the single-process gradients (also for a penalty added outside the wrapper, after a
deepcopy, and inside PML's MetricLossOnly), and the classifier replicas stay identical."""
import copy
import os
import socket

import numpy as np
import pytest
import torch
import torch.multiprocessing as mp
from pytorch_metric_learning import trainers

from pml_grouploss.losses import GroupLoss, ParametricDistributedLossWrapper

WORLD_SIZE, PER_RANK, DIM_IN, DIM_EMB, NUM_CLASSES = 2, 12, 10, 6, 8
PENALTY = 0.3  # weight of a penalty on the classifier computed outside the wrapper


def _data():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(WORLD_SIZE * PER_RANK, DIM_IN, generator=g, dtype=torch.float64)
    # rank 0 holds classes 0-3, rank 1 classes 4-7 (3 samples each): anchors do not depend
    # on the order in which each process concatenates the gathered batch.
    labels = torch.arange(NUM_CLASSES).repeat_interleave(3)
    return x, labels


def _models():
    torch.manual_seed(1)
    model = torch.nn.Linear(DIM_IN, DIM_EMB).double()
    loss = GroupLoss(NUM_CLASSES, DIM_EMB, temperature=2.0, num_iterations=2,
                     num_anchors=1).double()
    return model, loss


def _penalty(loss):
    return PENALTY * (loss.W**2).sum()


def _param_grads(model, loss):
    return [p.grad.numpy().copy() for p in [*model.parameters(), *loss.parameters()]]


def _worker(rank, port, queue, steps):
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch.distributed.init_process_group("gloo", rank=rank, world_size=WORLD_SIZE)
    try:
        x, labels = _data()
        sl = slice(rank * PER_RANK, (rank + 1) * PER_RANK)
        out = {}
        # plain training loop
        model, loss = _models()
        ddp = torch.nn.parallel.DistributedDataParallel(model)
        loss_func = ParametricDistributedLossWrapper(loss)
        opt = torch.optim.SGD([*ddp.parameters(), *loss_func.parameters()], lr=0.5)
        for step in range(steps):
            opt.zero_grad()
            value = loss_func(ddp(x[sl]), labels[sl])
            value.backward()
            if step == 0:
                out["value"] = value.item()
                out["grads"] = _param_grads(model, loss)
            opt.step()
        out["state"] = [p.detach().numpy().copy() for p in [*model.parameters(),
                                                            *loss.parameters()]]
        # a penalty on the loss's parameter computed outside the wrapper, on every process
        model, loss = _models()
        ddp = torch.nn.parallel.DistributedDataParallel(model)
        loss_func = ParametricDistributedLossWrapper(loss)
        (loss_func(ddp(x[sl]), labels[sl]) + _penalty(loss)).backward()
        out["penalty_grads"] = _param_grads(model, loss)
        # a deep copy of the wrapper (new parameters, which PML/torch copy without hooks)
        model, loss = _models()
        ddp = torch.nn.parallel.DistributedDataParallel(model)
        copied = copy.deepcopy(ParametricDistributedLossWrapper(loss))
        copied(ddp(x[sl]), labels[sl]).backward()
        out["copy_grads"] = _param_grads(model, copied.loss)
        # inside PML's MetricLossOnly trainer: one batch (this process's shard) per epoch
        model, loss = _models()
        ddp = torch.nn.parallel.DistributedDataParallel(model)
        loss_func = ParametricDistributedLossWrapper(loss)
        shard = torch.utils.data.TensorDataset(x[sl], labels[sl])
        trainer = trainers.MetricLossOnly(
            models={"trunk": ddp},
            optimizers={
                "trunk_optimizer": torch.optim.SGD(ddp.parameters(), lr=0.5),
                "metric_loss_optimizer": torch.optim.SGD(loss_func.parameters(), lr=0.5),
            },
            batch_size=PER_RANK,
            loss_funcs={"metric_loss": loss_func},
            dataset=shard,
            sampler=torch.utils.data.SequentialSampler(shard),
            dataloader_num_workers=0,
            data_device=torch.device("cpu"),
        )
        trainer.train(num_epochs=steps)
        out["trainer_state"] = [p.detach().numpy().copy() for p in [*model.parameters(),
                                                                    *loss.parameters()]]
        queue.put((rank, out))
    finally:
        torch.distributed.destroy_process_group()


def _free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.slow
def test_two_processes_match_single_process():
    if not torch.distributed.is_available():
        pytest.skip("torch.distributed is not available")
    steps = 5
    ctx = mp.get_context("spawn")
    queue = ctx.Queue()
    port = _free_port()
    procs = [ctx.Process(target=_worker, args=(r, port, queue, steps)) for r in range(WORLD_SIZE)]
    for p in procs:
        p.start()
    results = dict(queue.get(timeout=180) for _ in procs)
    for p in procs:
        p.join(timeout=60)
        assert p.exitcode == 0

    # single process on the whole batch
    x, labels = _data()
    model, loss = _models()
    opt = torch.optim.SGD([*model.parameters(), *loss.parameters()], lr=0.5)
    single_value = single_grads = None
    for step in range(steps):
        opt.zero_grad()
        value = loss(model(x), labels)
        value.backward()
        if step == 0:
            single_value, single_grads = value.item(), _param_grads(model, loss)
        opt.step()
    single_state = [p.detach().numpy() for p in [*model.parameters(), *loss.parameters()]]
    model, loss = _models()
    (loss(model(x), labels) + _penalty(loss)).backward()
    single_penalty_grads = _param_grads(model, loss)

    def assert_close(got, expected, rtol=1e-10, atol=1e-13):
        assert len(got) == len(expected) == 4
        for g, e in zip(got, expected):
            np.testing.assert_allclose(g, e, rtol=rtol, atol=atol)

    for rank in range(WORLD_SIZE):
        out = results[rank]
        # the value is the single-process loss of the whole batch (PML's wrapper: 2x)
        assert out["value"] == pytest.approx(single_value, rel=1e-12)
        assert_close(out["grads"], single_grads)
        assert_close(out["state"], single_state, rtol=1e-9, atol=1e-12)
        assert_close(out["penalty_grads"], single_penalty_grads)
        assert_close(out["copy_grads"], single_grads)
        assert_close(out["trainer_state"], single_state, rtol=1e-9, atol=1e-12)
    # replicas of the loss's classifier are bit-identical across processes
    for key in ("state", "trainer_state"):
        for a, b in zip(results[0][key], results[1][key]):
            assert np.array_equal(a, b)


def test_outside_distributed_returns_loss():
    x, labels = _data()
    model, loss = _models()
    with pytest.warns(UserWarning, match="non-distributed"):
        wrapped = ParametricDistributedLossWrapper(loss)(model(x), labels)
    assert wrapped.item() == pytest.approx(loss(model(x), labels).item(), rel=1e-12)
