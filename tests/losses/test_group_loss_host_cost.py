"""GroupLoss's host-side cost: no device reads when not validating, W not serialised by
PML's logging hooks."""
import copy
import pickle
import time
import tracemalloc
from types import SimpleNamespace

import pytest
import torch
from pytorch_metric_learning.utils import logging_presets
from torch.utils._python_dispatch import TorchDispatchMode

from pml_grouploss import losses, miners

#: aten ops that read a tensor's values back to the host (a CUDA synchronisation).
DEVICE_READS = {"_local_scalar_dense", "nonzero", "unique", "_unique", "_unique2",
                "unique_dim", "unique_consecutive", "masked_select", "item"}


class _DeviceReads(TorchDispatchMode):
    """Records the ops that read values to the host. ``tolist``/``numpy`` on a CPU tensor
    copy without dispatching an op, so they are wrapped as well."""

    def __init__(self):
        super().__init__()
        self.reads = []
        self._originals = {}

    def __enter__(self):
        for name in ("tolist", "numpy"):
            original = self._originals[name] = getattr(torch.Tensor, name)

            def wrapped(tensor, *args, _name=name, _original=original, **kwargs):
                self.reads.append(_name)
                return _original(tensor, *args, **kwargs)

            setattr(torch.Tensor, name, wrapped)
        return super().__enter__()

    def __exit__(self, *exc):
        for name, original in self._originals.items():
            setattr(torch.Tensor, name, original)
        return super().__exit__(*exc)

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        name = func.overloadpacket.__name__
        if name in DEVICE_READS:
            self.reads.append(name)
        if name == "index" and any(
            torch.is_tensor(i) and i.dtype == torch.bool for i in (args[1] or [])
        ):
            self.reads.append("boolean index")
        return func(*args, **(kwargs or {}))


def _batch(n=24, d=8, num_classes=30):
    g = torch.Generator().manual_seed(0)
    labels = torch.tensor([4, 9, 17, 25]).repeat(n // 4)
    return torch.randn(n, d, generator=g, requires_grad=True), labels


@pytest.mark.parametrize("kwargs", [
    dict(), dict(prior_classes="batch", sparse_gradients=True),
    dict(prior_classes="batch", ce_classes="all"), dict(anchor_selection="random", seed=0),
    dict(negatives="shift", zero_diagonal=True, num_iterations=3),
], ids=["dense", "batch-sparse", "batch-ce-all", "random-anchors", "shift"])
@pytest.mark.parametrize("miner", [False, True])
def test_no_device_read_in_forward_and_backward_when_not_validating(kwargs, miner,
                                                                    monkeypatch):
    loss_fn = losses.GroupLoss(30, 8, validate=False, **kwargs)
    # the batch's classes in n padded slots, as off the CPU (on it: torch.unique, k slots)
    monkeypatch.setattr(loss_fn, "_pads_batch_classes", lambda x: True)
    e, labels = _batch()
    indices = miners.AnchorMiner(1)(e, labels) if miner else None
    with _DeviceReads() as mode:
        loss_fn(e, labels, indices).backward()
    assert mode.reads == []


def test_validating_call_reads_the_device_and_catches_what_it_should():
    loss_fn = losses.GroupLoss(30, 8)  # validate=None: every call on CPU tensors
    e, labels = _batch()
    with _DeviceReads() as mode:
        loss_fn(e, labels)
    # call 1: label range, row magnitudes and the logits' range (one stacked read), the
    # diagnostic warnings' statistics (one stacked read)
    assert mode.reads == ["tolist", "tolist"]
    loss_fn(e, labels)
    with _DeviceReads() as mode:
        loss_fn(e, labels)  # call 3: the errors' checks only (warnings on calls 1, 2, 4, ...)
    assert mode.reads == ["tolist"]
    with pytest.raises(ValueError, match="num_classes"):  # still checked on a later call
        loss_fn(e, labels + 10)
    with pytest.raises(ValueError, match="NaN"):
        loss_fn(torch.full_like(e, float("nan")), labels)
    with pytest.raises(ValueError, match="index into the batch"):
        loss_fn(e, labels, (torch.tensor([0, 99]),))


def test_validate_policy_powers_of_two_off_the_cpu():
    """``(errors, warnings)``: off the CPU both on calls 1, 2, 4, ...; on it the errors every
    call, the warnings on calls 1, 2, 4, ...; ``True``/``False``: both always/never."""
    powers = [1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024]
    off_cpu, on_cpu = torch.empty(0, device="meta"), torch.empty(0)
    default = losses.GroupLoss(3, 4)
    assert [call for call in range(1, 1025) if default._validating(off_cpu) == (True, True)] \
        == powers
    default = losses.GroupLoss(3, 4)
    checks = [default._validating(on_cpu) for _ in range(1024)]
    assert all(errors for errors, _ in checks)  # CPU: every call
    assert [call for call, (_, warns) in enumerate(checks, 1) if warns] == powers
    assert losses.GroupLoss(3, 4, validate=True)._validating(off_cpu) == (True, True)
    assert losses.GroupLoss(3, 4, validate=False)._validating(on_cpu) == (False, False)


def test_validate_false_skips_value_checks_but_keeps_shape_checks():
    loss_fn = losses.GroupLoss(30, 8, validate=False)
    e, labels = _batch()
    bad = torch.full_like(e, float("nan"))
    loss_fn(bad, labels)  # not checked: no error
    with pytest.raises(ValueError, match="NaN"):
        losses.GroupLoss(30, 8, validate=True)(bad, labels)
    with pytest.raises(ValueError, match="embedding_size"):
        loss_fn(torch.randn(4, 5), torch.tensor([0, 1, 0, 1]))
    with pytest.raises(TypeError, match="labels"):
        loss_fn(e, labels.float())


def _log_one_iteration(loss_fn, record_keeper):
    """PML's HookContainer.end_of_iteration_hook on a trainer holding only this loss."""
    hooks = logging_presets.get_hook_container(record_keeper, log_freq=1)
    trainer = SimpleNamespace(
        iteration=1, get_global_iteration=lambda: 1,
        loss_tracker=SimpleNamespace(losses={"metric_loss": 0.5}, loss_weights={"metric_loss": 1}),
        loss_funcs={"metric_loss": loss_fn}, mining_funcs={}, models={}, optimizers={},
    )
    tracemalloc.start()
    start = time.perf_counter()
    hooks.end_of_iteration_hook(trainer)
    seconds = time.perf_counter() - start
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    return seconds, peak


def test_pml_logging_hook_logs_stats_but_does_not_serialise_W(tmp_path, capsys):
    m, d = 2000, 64  # 128,000 weights
    loss_fn = losses.GroupLoss(m, d, collect_stats=True)
    e, labels = torch.randn(24, d), torch.arange(6).repeat(4)
    loss_fn(e, labels)
    record_keeper, _, _ = logging_presets.get_record_keeper(
        str(tmp_path / "logs"), str(tmp_path / "tb"))
    seconds, peak = _log_one_iteration(loss_fn, record_keeper)
    records = record_keeper.record_writer.records
    assert records["metric_loss_GroupLoss"]["avg_true_class_probability"][1] == pytest.approx(
        loss_fn.avg_true_class_probability)
    series = {s for group in records.values() for s in group}
    assert not {"W", "bias"} & series, series
    lists = [v for group in records.values() for s in group.values() for v in s.values()
             if isinstance(v, list)]
    assert sum(map(len, lists)) < 100

    # The cost before: the same loss with torch's plain parameter dict.
    before = losses.GroupLoss(m, d, collect_stats=True)
    object.__setattr__(before, "_parameters", dict(before._parameters))
    before(e, labels)
    rk_before, _, _ = logging_presets.get_record_keeper(
        str(tmp_path / "logs_before"), str(tmp_path / "tb_before"))
    seconds_before, peak_before = _log_one_iteration(before, rk_before)
    W_logged = rk_before.record_writer.records["metric_loss_GroupLoss__parameters"]["W"][1]
    assert len(W_logged) == m and len(W_logged[0]) == d  # W as a nested Python list
    assert peak_before > 20 * peak  # the m x d floats as Python objects
    with capsys.disabled():
        print(f"\nlogging one iteration, W {m}x{d}: {seconds_before * 1e3:.1f} ms, "
              f"{peak_before / 2**20:.1f} MiB before; {seconds * 1e3:.1f} ms, "
              f"{peak / 2**20:.2f} MiB now")


def test_parameters_behave_as_module_parameters():
    loss_fn = losses.GroupLoss(5, 3)
    assert [n for n, _ in loss_fn.named_parameters()] == ["W", "bias"]
    assert list(loss_fn.state_dict()) == ["W", "bias"]
    for other in (copy.deepcopy(loss_fn), pickle.loads(pickle.dumps(loss_fn))):
        torch.testing.assert_close(other.W, loss_fn.W)
        assert [n for n, _ in other.named_parameters()] == ["W", "bias"]
    double = copy.deepcopy(loss_fn).double()
    assert double.W.dtype == torch.float64 and isinstance(double.W, torch.nn.Parameter)
    fresh = losses.GroupLoss(5, 3)
    fresh.load_state_dict(loss_fn.state_dict())
    torch.testing.assert_close(fresh.W, loss_fn.W)
    loss_fn.extra = torch.nn.Parameter(torch.zeros(2))
    assert "extra" in dict(loss_fn.named_parameters())
    del loss_fn.extra
    assert "extra" not in dict(loss_fn.named_parameters())
