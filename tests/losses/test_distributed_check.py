"""``check_distributed_use``: under 2 gloo processes PML's own ``DistributedLossWrapper``
(``efficient=True`` and ``efficient=False``) around GroupLoss raises an error naming
``pml_grouploss.losses.ParametricDistributedLossWrapper``; a purely local loss warns once; the
package's wrapper and a single process are silent."""

import warnings

import pytest
import torch
from pytorch_metric_learning.utils import distributed as pml_dist

from pml_grouploss.losses import GroupLoss, ParametricDistributedLossWrapper
from pml_grouploss.losses.distributed_loss_wrapper import check_distributed_use

from .test_distributed_loss_wrapper import DIM_EMB, NUM_CLASSES, SIZES, _batch, _shard
from .test_distributed_loss_wrapper import init_gloo, run_processes
from .test_distributed_loss_wrapper import error_message as _error

NAME = "pml_grouploss.losses.ParametricDistributedLossWrapper"


def _loss_factories():
    """Losses that call ``check_distributed_use`` at the start of ``compute_loss``."""
    return {"GroupLoss": lambda: GroupLoss(NUM_CLASSES, DIM_EMB).double()}


def _warnings(fn) -> list:
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        fn()
    return [str(w.message) for w in caught]


def _check_cases(rank: int) -> dict:
    init_gloo(rank)
    x, labels = _batch(0)
    n = min(SIZES)  # PML's wrapper needs the same batch size on every rank
    emb = _shard(x[:, :DIM_EMB], rank)[:n].clone().requires_grad_(True)
    ls = _shard(labels, rank)[:n]
    out = {}
    for key, make in _loss_factories().items():
        loss = make()
        for efficient in (True, False):
            wrapped = pml_dist.DistributedLossWrapper(loss, efficient=efficient)
            out[key, "pml", efficient] = _error(lambda: wrapped(emb, ls).backward())
        ours = ParametricDistributedLossWrapper(loss)
        out[key, "ours"] = _warnings(lambda: ours(emb, ls).backward())
        with torch.no_grad():
            out[key, "no_grad"] = _warnings(lambda: loss(emb, ls))
        out[key, "local"] = _warnings(lambda: loss(emb, ls))
        out[key, "local_again"] = _warnings(lambda: loss(emb, ls))
    return out


@pytest.fixture(scope="module")
def results():
    return run_processes(_check_cases)


@pytest.mark.slow
@pytest.mark.parametrize("key", list(_loss_factories()))
@pytest.mark.parametrize("efficient", [True, False])
def test_pml_wrapper_names_the_parametric_wrapper(results, key, efficient):
    for rank in (0, 1):
        message = results[rank][key, "pml", efficient]
        assert NAME in message, message


@pytest.mark.slow
@pytest.mark.parametrize("key", list(_loss_factories()))
def test_local_loss_warns_once_and_the_wrapper_is_silent(results, key):
    for rank in (0, 1):
        out = results[rank]
        assert not any(NAME in m for m in out[key, "ours"]), out[key, "ours"]
        assert out[key, "no_grad"] == []
        local = [m for m in out[key, "local"] if NAME in m]
        assert len(local) == 1 and "world_size=2" in local[0], out[key, "local"]
        assert out[key, "local_again"] == []


def test_single_process_is_silent():
    assert not torch.distributed.is_initialized()
    x, labels = _batch(0)
    loss = GroupLoss(NUM_CLASSES, DIM_EMB).double()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        check_distributed_use(loss)
        value = loss(x[:, :DIM_EMB], labels)
    assert not [w for w in caught if "distributed" in str(w.message)], caught
    assert torch.isfinite(value)
