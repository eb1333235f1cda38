"""The reducer of GroupLoss's and GradML's sub-losses: PML's MultipleReducers to the bit, with
fewer operations; a reducer the user gives is kept or copied as PML does."""
import pytest
import torch
from pytorch_metric_learning import reducers, regularizers
from torch.utils._python_dispatch import TorchDispatchMode

from pml_grouploss.losses import GradMLLoss, GroupLoss
from pml_grouploss.losses._stacked_sub_losses import StackedSubLosses


def _with_pml_reducer(loss_fn):
    loss_fn.reducer = reducers.MultipleReducers(dict(loss_fn.reducer.reducers))
    return loss_fn


def _value_and_grads(loss_fn, x, labels, autocast):
    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=autocast):
        value = loss_fn(x, labels)
    return [value.detach()] + list(torch.autograd.grad(value, [x, *loss_fn.parameters()]))


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.float16, torch.bfloat16])
@pytest.mark.parametrize("make", [
    lambda: GroupLoss(6, 16),
    lambda: GroupLoss(6, 16, num_iterations=3, nll_weight=0.5, ce_weight=2.0),
    lambda: GroupLoss(6, 16, weight_regularizer=regularizers.LpRegularizer()),  # 3 sub-losses
    lambda: GradMLLoss(),
    lambda: GradMLLoss(k=3.0, reducer=reducers.SumReducer()),
], ids=["group", "group-weights", "group-regularised", "gradml", "gradml-sum"])
@pytest.mark.parametrize("autocast", [False, True])
def test_bit_identical_to_pml_multiple_reducers(make, dtype, autocast):
    torch.manual_seed(0)
    ours = make()
    assert type(ours.reducer) is StackedSubLosses
    pml = _with_pml_reducer(make())
    pml.load_state_dict(ours.state_dict())
    x = torch.randn(24, 16, dtype=dtype, requires_grad=True)
    labels = torch.arange(24) % 6
    for a, b in zip(_value_and_grads(ours, x, labels, autocast),
                    _value_and_grads(pml, x, labels, autocast)):
        assert a.dtype == b.dtype and torch.equal(a, b)


class _Ops(TorchDispatchMode):
    def __init__(self):
        super().__init__()
        self.count = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        self.count += 1
        return func(*args, **(kwargs or {}))


def _reduction_ops(reducer):
    losses = [torch.randn(6, requires_grad=True) for _ in range(2)]
    info = {name: dict(losses=value, indices=torch.arange(6), reduction_type="element")
            for name, value in zip(("a", "b"), losses)}
    embeddings = torch.randn(6, 3)
    with _Ops() as ops:
        reducer(info, embeddings, None).backward()
    return ops.count


def test_the_sum_of_two_sub_losses_takes_12_fewer_operations():
    sub = {"a": reducers.MeanReducer(), "b": reducers.MeanReducer()}
    pml = _reduction_ops(reducers.MultipleReducers(sub))
    ours = _reduction_ops(StackedSubLosses(sub))
    # besides the two means and the backward's seed (9), PML: zeros, 2 x (select, copy_),
    # sum and 11 backward (the copies' clones); ours: stack, sum, expand and 2 selects
    assert (pml, ours) == (9 + 17, 9 + 5)


def test_given_reducers_are_copied_per_sub_loss_or_kept():
    threshold = reducers.ThresholdReducer(low=0.1)
    loss_fn = GroupLoss(6, 16, reducer=threshold)
    assert type(loss_fn.reducer) is StackedSubLosses
    copies = [loss_fn.reducer.reducers[k] for k in ("group_loss", "ce_loss")]
    assert all(type(r) is reducers.ThresholdReducer and r is not threshold for r in copies)
    assert copies[0] is not copies[1]
    given = reducers.MultipleReducers({"group_loss": reducers.SumReducer()})
    assert GroupLoss(6, 16, reducer=given).reducer is given
    nothing = reducers.DoNothingReducer()
    assert GroupLoss(6, 16, reducer=nothing).reducer is nothing
