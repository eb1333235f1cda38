"""Two gloo processes on CPU: the wrapped GroupLoss gives the model and the loss's classifier
exactly the single-process gradients, and the classifier replicas stay identical."""
import os
import socket

import numpy as np
import pytest
import torch
import torch.multiprocessing as mp

from pml_grouploss.losses import GroupLoss, ParametricDistributedLossWrapper

WORLD_SIZE, PER_RANK, DIM_IN, DIM_EMB, NUM_CLASSES = 2, 12, 10, 6, 8


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


def _worker(rank, port, queue, steps):
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch.distributed.init_process_group("gloo", rank=rank, world_size=WORLD_SIZE)
    try:
        x, labels = _data()
        model, loss = _models()
        ddp = torch.nn.parallel.DistributedDataParallel(model)
        loss_func = ParametricDistributedLossWrapper(loss)
        opt = torch.optim.SGD([*ddp.parameters(), *loss_func.parameters()], lr=0.5)
        sl = slice(rank * PER_RANK, (rank + 1) * PER_RANK)
        grads = None
        for step in range(steps):
            opt.zero_grad()
            loss_func(ddp(x[sl]), labels[sl]).backward()
            if step == 0:
                grads = [p.grad.numpy().copy() for p in [*model.parameters(), *loss.parameters()]]
            opt.step()
        state = [p.detach().numpy().copy() for p in [*model.parameters(), *loss.parameters()]]
        queue.put((rank, grads, state))
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
    results = dict((r, (g, s)) for r, g, s in (queue.get(timeout=120) for _ in procs))
    for p in procs:
        p.join(timeout=60)
        assert p.exitcode == 0

    # single process on the whole batch
    x, labels = _data()
    model, loss = _models()
    opt = torch.optim.SGD([*model.parameters(), *loss.parameters()], lr=0.5)
    single_grads = None
    for step in range(steps):
        opt.zero_grad()
        loss(model(x), labels).backward()
        if step == 0:
            single_grads = [p.grad.numpy().copy() for p in [*model.parameters(),
                                                            *loss.parameters()]]
        opt.step()
    single_state = [p.detach().numpy() for p in [*model.parameters(), *loss.parameters()]]

    for rank in range(WORLD_SIZE):
        grads, state = results[rank]
        for g, expected in zip(grads, single_grads):
            np.testing.assert_allclose(g, expected, rtol=1e-10, atol=1e-13)
        for s, expected in zip(state, single_state):
            np.testing.assert_allclose(s, expected, rtol=1e-9, atol=1e-12)
    # replicas of the loss's classifier are bit-identical across processes
    for a, b in zip(results[0][1], results[1][1]):
        assert np.array_equal(a, b)


def test_outside_distributed_returns_loss():
    x, labels = _data()
    model, loss = _models()
    with pytest.warns(UserWarning, match="non-distributed"):
        wrapped = ParametricDistributedLossWrapper(loss)(model(x), labels)
    assert wrapped.item() == pytest.approx(loss(model(x), labels).item(), rel=1e-12)
