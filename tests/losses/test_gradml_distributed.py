"""GradMLLoss inside PML's DistributedLossWrapper on two gloo processes, against eq. (10) on the
concatenated batch: ``efficient=False`` gives world_size x its loss and gradient on every rank,
``efficient=True`` each rank's rows against all rows."""
import os
import socket

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from pytorch_metric_learning import reducers
from pytorch_metric_learning.utils.distributed import DistributedLossWrapper

from pml_grouploss import losses
from pml_grouploss.functional.gradml import gradml_loss


def _free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


DIST_X = np.random.RandomState(0).randn(8, 5)
DIST_LABELS = np.array([0, 1, 2, 3, 0, 1, 2, 2])


def _dist_worker(rank, world_size, port, queue):
    import torch.distributed as dist

    os.environ["MASTER_ADDR"], os.environ["MASTER_PORT"] = "127.0.0.1", str(port)
    dist.init_process_group("gloo", rank=rank, world_size=world_size)
    try:
        half = len(DIST_X) // world_size
        rows = slice(rank * half, (rank + 1) * half)
        out = {}
        for efficient in (False, True):
            emb = torch.tensor(DIST_X[rows], requires_grad=True)
            loss_fn = DistributedLossWrapper(
                losses.GradMLLoss(reducer=reducers.SumReducer()), efficient=efficient
            )
            loss = loss_fn(emb, torch.tensor(DIST_LABELS[rows]))
            loss.backward()
            out[efficient] = (loss.item(), emb.grad.numpy().copy())
        queue.put((rank, out))
    finally:
        dist.destroy_process_group()


@pytest.mark.slow
def test_distributed_loss_wrapper_two_gloo_processes():
    import torch.multiprocessing as mp

    ctx = mp.get_context("spawn")
    queue = ctx.Queue()
    world_size = 2
    port = _free_port()
    procs = [
        ctx.Process(target=_dist_worker, args=(r, world_size, port, queue))
        for r in range(world_size)
    ]
    for p in procs:
        p.start()
    results = dict(queue.get(timeout=120) for _ in procs)
    for p in procs:
        p.join(timeout=60)
        assert p.exitcode == 0

    x = torch.tensor(DIST_X)
    labels = torch.tensor(DIST_LABELS)
    u = F.normalize(x, dim=1)
    full = gradml_loss(u, labels).item()  # eq. (10) over unordered pairs of the global batch
    # d(full)/dx through the normalization, for the rows of each rank
    xg = x.clone().requires_grad_(True)
    (g_full,) = torch.autograd.grad(gradml_loss(F.normalize(xg, dim=1), labels), xg)
    half = len(DIST_X) // world_size
    for rank in range(world_size):
        rows = list(range(rank * half, (rank + 1) * half))
        # efficient=False: every rank computes the global loss, times world_size
        loss_val, grad = results[rank][False]
        assert loss_val == pytest.approx(world_size * full, rel=1e-10)
        np.testing.assert_allclose(grad, world_size * g_full[rows].numpy(), rtol=1e-8, atol=1e-10)
        # efficient=True: local rows against all rows (ordered pairs, self excluded)
        xr = x.clone().requires_grad_(True)
        ur = F.normalize(xr, dim=1)
        c = torch.where(labels[:, None] == labels[None, :], 1.0, -1.0).double()
        d2 = torch.cdist(ur, ur) ** 2 * c
        others = range(len(DIST_X))
        expected_loss = world_size * sum(d2[i, j] for i in rows for j in others if j != i)
        (g_eff,) = torch.autograd.grad(expected_loss, xr)
        loss_val, grad = results[rank][True]
        assert loss_val == pytest.approx(expected_loss.item(), rel=1e-10)
        np.testing.assert_allclose(grad, g_eff[rows].numpy(), rtol=1e-8, atol=1e-10)
    # summed over ranks, efficient mode counts every ordered pair once: 2 x eq. (10)
    total = sum(results[r][True][0] for r in range(world_size)) / world_size
    assert total == pytest.approx(2 * full, rel=1e-10)
