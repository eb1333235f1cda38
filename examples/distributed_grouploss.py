"""GroupLoss with several processes: DDP + ParametricDistributedLossWrapper.

Trains a small convnet on the embedded Omniglot subset (offline, 28x28 grayscale), one process
per CPU core (gloo) or per GPU (nccl):

    torchrun --nproc_per_node=2 examples/distributed_grouploss.py

(about a minute on 2 CPU cores; ``python examples/distributed_grouploss.py`` runs one process).
Each rank is seeded differently, so its sampler draws its own batches and its GroupLoss starts
from its own random classifier; the wrapper broadcasts rank 0's classifier, computes the loss
on the batches of all ranks concatenated in rank order (the same value on every rank) and
keeps the classifiers identical. The GroupLoss-specific lines are marked "<-". Rank 0 prints the
loss per epoch and the test Precision@1 (PML's AccuracyCalculator) before and after training;
the last line is a dict of the results.
"""

from __future__ import annotations

import argparse
import os
import random
import time

import numpy as np
import torch
import torch.distributed as dist
from pytorch_metric_learning import samplers
from pytorch_metric_learning.utils.accuracy_calculator import AccuracyCalculator
from torch.nn.parallel import DistributedDataParallel as DDP
from torchvision import transforms as T

from pml_grouploss import losses
from pml_grouploss.trunks import SmallCNN
from pml_grouploss.datasets import Omniglot


def _number(kind: type, minimum: float, strict: bool = False):
    """An argparse ``type``: ``kind`` (int or float) ``>= minimum`` (``> minimum`` if strict)."""
    def parse(text: str):
        try:
            value = kind(text)
        except ValueError:
            what = "an int" if kind is int else "a number"
            raise argparse.ArgumentTypeError(f"{text!r} is not {what}") from None
        if not minimum <= value < float("inf") or (strict and value == minimum):
            finite = " and finite" if kind is float else ""
            raise argparse.ArgumentTypeError(f"must be {'>' if strict else '>='} {minimum}"
                                             f"{finite}, got {text}")
        return value
    return parse


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--epochs", type=_number(int, 1), default=6)
    p.add_argument("--max-iterations", type=_number(int, 1), default=None,
                   help="per epoch (for tests)")
    p.add_argument("--classes-per-batch", type=_number(int, 1), default=8, help="per rank")
    p.add_argument("--samples-per-class", type=_number(int, 1), default=8)
    p.add_argument("--embedding-size", type=_number(int, 1), default=64)
    p.add_argument("--lr", type=_number(float, 0, strict=True), default=1e-3, help="model (Adam)")
    p.add_argument("--loss-lr", type=_number(float, 0, strict=True), default=1e-1,
                   help="GroupLoss classifier (Adam)")
    p.add_argument("--seed", type=_number(int, 0), default=0, help="rank r uses seed + r")
    return p.parse_args(argv)


def check_batch(args: argparse.Namespace, train_set, world_size: int) -> int:
    """The batch size per rank, or a ValueError naming the option to change."""
    batch_size = args.classes_per_batch * args.samples_per_class
    if args.classes_per_batch > train_set.num_classes:
        raise ValueError(f"--classes-per-batch {args.classes_per_batch} is more than the "
                         f"{train_set.num_classes} training classes; lower it")
    if batch_size > len(train_set) // world_size:
        raise ValueError(
            f"--classes-per-batch x --samples-per-class = {batch_size} is more than the "
            f"{len(train_set) // world_size} training images per rank; lower them"
        )
    if args.seed + world_size > 2**32:
        raise ValueError(f"--seed must be < 2**32 - {world_size} (rank r uses seed + r)")
    return batch_size


def setup() -> tuple[int, int, torch.device]:
    """Join the process group torchrun describes (or a one-process group without torchrun)."""
    if "RANK" not in os.environ:  # plain `python examples/distributed_grouploss.py`
        os.environ.update(RANK="0", LOCAL_RANK="0", WORLD_SIZE="1")
        os.environ.setdefault("MASTER_ADDR", "127.0.0.1")
        os.environ.setdefault("MASTER_PORT", "29512")
    local_rank = int(os.environ["LOCAL_RANK"])
    if torch.cuda.is_available():
        torch.cuda.set_device(local_rank)
        backend, device = "nccl", torch.device("cuda", local_rank)
    else:
        backend, device = "gloo", torch.device("cpu")
        torch.set_num_threads(max(1, (os.cpu_count() or 1) // int(os.environ["WORLD_SIZE"])))
    dist.init_process_group(backend)
    return dist.get_rank(), dist.get_world_size(), device


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)  # PML's MPerClassSampler draws from numpy
    torch.manual_seed(seed)


@torch.no_grad()
def precision_at_1(model: torch.nn.Module, dataset, device: torch.device) -> float:
    """Test P@1, every test image a query against all the others (class-disjoint split)."""
    model.eval()
    loader = torch.utils.data.DataLoader(dataset, batch_size=512)
    embeddings, labels = [], []
    for x, y in loader:
        embeddings.append(model(x.to(device)).cpu())
        labels.append(y)
    model.train()
    calc = AccuracyCalculator(include=("precision_at_1",), k=1, device=torch.device("cpu"))
    emb, lab = torch.cat(embeddings), torch.cat(labels)
    return calc.get_accuracy(emb, lab, emb, lab, ref_includes_query=True)["precision_at_1"]


def same_on_every_rank(value: torch.Tensor) -> float:
    """Largest absolute difference between this tensor on any rank and on rank 0."""
    value = value.detach().reshape(-1).clone()
    reference = value.clone()
    dist.broadcast(reference, src=0)
    diff = (value - reference).abs().max()
    dist.all_reduce(diff, op=dist.ReduceOp.MAX)
    return float(diff)


def train(args: argparse.Namespace) -> dict:
    start = time.time()
    rank, world_size, device = setup()
    tf = T.Compose([T.ToTensor(), T.Normalize([0.08], [0.25])])
    train_set, test_set = Omniglot(split="train", transform=tf), Omniglot(
        split="test", transform=tf
    )
    batch_size = check_batch(args, train_set, world_size)
    seed_everything(args.seed + rank)  # each rank its own batches and initial classifier
    sampler = samplers.MPerClassSampler(
        train_set.labels,
        m=args.samples_per_class,
        batch_size=batch_size,
        length_before_new_iter=len(train_set) // world_size,
    )
    loader = torch.utils.data.DataLoader(
        train_set, batch_size=batch_size, sampler=sampler, drop_last=True
    )
    model = torch.nn.Sequential(SmallCNN(1, 64), torch.nn.Linear(64, args.embedding_size))
    model = DDP(model.to(device), device_ids=[device.index] if device.type == "cuda" else None)
    loss_func = losses.ParametricDistributedLossWrapper(  # <- instead of PML's wrapper
        losses.GroupLoss(train_set.num_classes, args.embedding_size).to(device)  # <-
    )
    optimizer = torch.optim.Adam(model.parameters(), lr=args.lr)
    loss_optimizer = torch.optim.Adam(loss_func.parameters(), lr=args.loss_lr)  # <-
    result = {}
    if rank == 0:
        result["precision_at_1_untrained"] = precision_at_1(model.module, test_set, device)
        print(f"untrained: test P@1 {result['precision_at_1_untrained']:.3f}", flush=True)
    dist.barrier()
    loss_gap = 0.0
    for epoch in range(args.epochs):
        values = []
        for i, (x, y) in enumerate(loader):
            if args.max_iterations is not None and i >= args.max_iterations:
                break
            optimizer.zero_grad()
            loss_optimizer.zero_grad()
            loss = loss_func(model(x.to(device)), y.to(device))
            loss.backward()
            optimizer.step()
            loss_optimizer.step()
            values.append(loss.detach())
        epoch_loss = torch.stack(values).mean()
        loss_gap = max(loss_gap, same_on_every_rank(epoch_loss))
        if rank == 0:
            print(
                f"epoch {epoch + 1}/{args.epochs}: loss {epoch_loss.item():.4f} "
                f"({len(values)} iterations x {world_size} ranks)",
                flush=True,
            )
    result["loss_max_rank_difference"] = loss_gap
    result["classifier_max_rank_difference"] = max(
        same_on_every_rank(p) for p in loss_func.parameters()
    )
    if rank == 0:
        result["precision_at_1"] = precision_at_1(model.module, test_set, device)
        result["world_size"] = world_size
        result["seconds"] = round(time.time() - start, 1)
        print(f"trained: test P@1 {result['precision_at_1']:.3f}", flush=True)
        print(result)
    dist.barrier()
    dist.destroy_process_group()
    return result


if __name__ == "__main__":
    train(parse_args())
