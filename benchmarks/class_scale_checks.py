"""GroupLoss at many classes: a PML ``MetricLossOnly`` epoch over 100,000 classes, and the
cost of PML's logging hook on its classifier (issue 10, items 3 and 5).

Usage::

    python benchmarks/class_scale_checks.py --train-check [--iterations 30]
    python benchmarks/class_scale_checks.py --log-cost
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from typing import Dict, List, Optional

import torch

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
from loss_speed_benchmark import _count, environment  # noqa: E402


def train_check(num_classes: int = 100_000, iterations: int = 20, batch_size: int = 128,
                embedding_size: int = 64, check_shapes: bool = True,
                prior_classes: str = "batch") -> Dict[str, float]:
    """One epoch of PML's ``MetricLossOnly`` with ``GroupLoss(prior_classes="batch",
    sparse_gradients=True, num_anchors=1)`` and ``SparseAdam`` over a synthetic dataset of
    ``num_classes`` classes (2 samples each: one anchor and one sample the dynamics relabel);
    the epoch is ``iterations`` batches of an ``MPerClassSampler`` (``prior_classes="all"``:
    the dense loss and Adam, for comparison). Returns the epoch's seconds, the rows of ``W``
    changed, the first and last loss, the anchors of the last batch and whether any dense
    ``(batch_size, num_classes)`` tensor was produced (checked by a dispatch mode)."""
    from pytorch_metric_learning import samplers, trainers
    from torch.utils._python_dispatch import TorchDispatchMode

    from pml_grouploss import losses

    class _Shapes(TorchDispatchMode):
        widest = 0

        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            out = func(*args, **(kwargs or {}))
            for t in out if isinstance(out, (tuple, list)) else [out]:
                if torch.is_tensor(t) and t.layout == torch.strided and t.dim() == 2:
                    if batch_size in t.shape and num_classes in t.shape:
                        _Shapes.widest = max(_Shapes.widest, num_classes)
            return out

    g = torch.Generator().manual_seed(0)
    centres = torch.randn(num_classes, 16, generator=g)
    labels = torch.arange(num_classes).repeat_interleave(2)
    data = centres[labels] + 0.1 * torch.randn(len(labels), 16, generator=g)
    dataset = torch.utils.data.TensorDataset(data, labels)
    trunk = torch.nn.Sequential(torch.nn.Linear(16, 64), torch.nn.ReLU(),
                                torch.nn.Linear(64, embedding_size))
    seen: List[float] = []  # the metric loss of every iteration
    sparse = prior_classes == "batch"
    # num_anchors=1: with the default 2 every sample of a 2-per-class batch would be an anchor
    # and the loss the cross-entropy alone (no prior refined, no dynamics)
    loss = losses.GroupLoss(num_classes, embedding_size, prior_classes=prior_classes,
                            sparse_gradients=sparse, temperature=10.0, num_anchors=1,
                            collect_stats=True)
    loss_optimizer = (torch.optim.SparseAdam if sparse else torch.optim.Adam)(
        loss.parameters(), lr=1e-2)
    trainer = trainers.MetricLossOnly(
        models={"trunk": trunk},
        optimizers={"trunk_optimizer": torch.optim.Adam(trunk.parameters(), lr=1e-3),
                    "metric_loss_optimizer": loss_optimizer},
        batch_size=batch_size,
        loss_funcs={"metric_loss": loss},
        dataset=dataset,
        sampler=samplers.MPerClassSampler(labels, m=2, batch_size=batch_size,
                                          length_before_new_iter=iterations * batch_size),
        dataloader_num_workers=0,
        data_and_label_getter=lambda batch: batch,
        end_of_iteration_hook=lambda t: seen.append(t.losses["metric_loss"].item()),
    )
    W_before = loss.W.detach().clone()
    start = time.perf_counter()
    if check_shapes:
        with _Shapes():
            trainer.train(num_epochs=1)
    else:
        trainer.train(num_epochs=1)
    seconds = time.perf_counter() - start
    changed_rows = int((loss.W.detach() != W_before).any(dim=1).sum())
    return {"seconds": seconds, "iterations": iterations, "changed_rows": changed_rows,
            "dense_batch_by_classes_tensor": bool(_Shapes.widest) if check_shapes else None,
            "metric_loss_first": seen[0], "metric_loss_last": seen[-1],
            "logged_iterations": len(seen), "anchors_in_last_batch": loss.num_anchors_used}


def logging_cost(variant: str, num_classes: int = 11_318, embedding_size: int = 512,
                 steps: int = 5) -> Dict[str, float]:
    """PML's ``HookContainer.end_of_iteration_hook`` on a trainer holding one GroupLoss, for
    ``steps`` logged iterations: median seconds per call and growth of the peak resident set,
    with GroupLoss's parameter table (``"now"``) or torch's plain ``dict`` (``"before"``).
    The peak is a lifetime high-water mark: run each variant in its own process
    (:func:`logging_cost_in_fresh_process`)."""
    import resource
    import tempfile
    from types import SimpleNamespace

    from pytorch_metric_learning.utils import logging_presets

    from pml_grouploss import losses

    loss = losses.GroupLoss(num_classes, embedding_size, collect_stats=True)
    if variant == "before":
        object.__setattr__(loss, "_parameters", dict(loss._parameters))
    loss(torch.randn(24, embedding_size), torch.arange(6).repeat(4))
    folder = tempfile.mkdtemp()
    record_keeper, _, _ = logging_presets.get_record_keeper(folder + "/logs", folder + "/tb")
    hooks = logging_presets.get_hook_container(record_keeper, log_freq=1)
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    times = []
    for it in range(1, steps + 1):
        trainer = SimpleNamespace(
            iteration=it, get_global_iteration=lambda it=it: it, mining_funcs={},
            loss_tracker=SimpleNamespace(losses={"metric_loss": 0.5},
                                         loss_weights={"metric_loss": 1}),
            loss_funcs={"metric_loss": loss}, models={}, optimizers={})
        start = time.perf_counter()
        hooks.end_of_iteration_hook(trainer)
        times.append(time.perf_counter() - start)
    grown = (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - rss) / 1024
    return {f"{variant}: s per logged step": statistics.median(times),
            f"{variant}: peak RSS growth MiB over {steps} steps": grown}


def logging_cost_in_fresh_process(variant: str, threads: int = 1) -> Dict[str, float]:
    """:func:`logging_cost` in a new Python process (its own peak resident set)."""
    code = (f"import json, sys, torch; sys.path.insert(0, {HERE!r}); "
            f"torch.set_num_threads({threads}); import class_scale_checks as c; "
            f"print(json.dumps(c.logging_cost({variant!r})))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def main(argv: Optional[List[str]] = None) -> None:
    parser = argparse.ArgumentParser(description=" ".join(__doc__.split("\n\n")[0].split()))
    parser.add_argument("--train-check", action="store_true",
                        help="MetricLossOnly epoch over 100,000 classes (and 1/10 as many "
                             "iterations of the dense loss, for comparison)")
    parser.add_argument("--iterations", type=_count,
                        help="iterations of the --train-check epoch (default 30)")
    parser.add_argument("--log-cost", action="store_true",
                        help="PML's logging hook on GroupLoss(11318, 512), before/now")
    parser.add_argument("--threads", type=_count, default=1)
    args = parser.parse_args(argv)
    if not (args.train_check or args.log_cost):
        parser.error("nothing to do: give --train-check, --log-cost or both")
    if args.iterations is not None and not args.train_check:
        parser.error("--iterations sets the --train-check epoch; add --train-check or drop it")
    if args.log_cost:
        try:
            import record_keeper  # noqa: F401
        except ImportError:
            parser.error("--log-cost runs PML's logging hooks, which need record-keeper: "
                         "pip install record-keeper tensorboard (or the with-hooks-cpu extra)")
    torch.set_num_threads(args.threads)
    print(environment())
    if args.log_cost:
        for variant in ("before", "now"):
            print(logging_cost_in_fresh_process(variant, args.threads))
    if args.train_check:
        iterations = args.iterations or 30
        print("batch-class, SparseAdam:", train_check(iterations=iterations))
        print("dense, Adam:", train_check(iterations=max(1, iterations // 10),
                                          check_shapes=False, prior_classes="all"))


if __name__ == "__main__":
    main()
