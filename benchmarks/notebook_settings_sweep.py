"""GroupLoss in the settings of PML's example notebooks, on the embedded Omniglot subset.

Usage::

    python benchmarks/notebook_settings_sweep.py                       # the full sweep
    python benchmarks/notebook_settings_sweep.py --epochs 1 --trunk-lrs 1e-3 --classifier-lrs 1e-1
    python benchmarks/notebook_settings_sweep.py --quick --output-dir /tmp/nb   # smoke run

Settings taken from PML's notebooks (``examples/notebooks/`` of KevinMusgrave/
pytorch-metric-learning): the MNIST notebooks' ``Net`` trunk (conv 1->32->64, max-pool,
dropout, fc 9216->128), ``ToTensor() + Normalize((0.1307,), (0.3081,))``, Adam on the trunk at
the notebooks' learning rates (1e-2 in TripletMarginLossMNIST/SubCenterArcFaceMNIST, 1e-4 for
the loss's own parameters in SubCenterArcFaceMNIST, 1e-5..1e-4 in MetricLossOnly), batch 256
shuffled (TripletMarginLossMNIST) or ``MPerClassSampler(labels, m=4)``, the plain training loop
of SubCenterArcFaceMNIST (a trunk optimizer plus a loss optimizer), and ``AccuracyCalculator``
with its defaults (faiss L2 k-NN on the raw embeddings). ``--mlp-trunk`` adds the MetricLossOnly
notebook's split (trunk -> ``MLP([128, 64])`` embedder, batch 32, ``m=4``, PML's
``trainers.MetricLossOnly``; TripletMarginLoss(margin=0.1) + MultiSimilarityMiner(0.1)); the
notebook's trunk is a pretrained ResNet-18 (unavailable offline), here it is ``Net`` trained from
scratch and the embedder gets the trunk's learning rate.

Adapted to run offline: MNIST -> ``pml_grouploss.datasets.Omniglot`` (135 training characters,
2,700 images; test = 107 unseen characters, 2,140 images, evaluated against themselves), fixed
seed (the notebooks set none) so every run starts from the same initial trunk, and a budget of
a few epochs. The untrained trunk's P@1 is the baseline every run must beat.
"""

from __future__ import annotations

import argparse
import logging
import math
import os
import platform
import sys
import tempfile
import time
from typing import Dict, List, Optional, Sequence

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from _notebook_models import MLP, Net  # noqa: E402
from notebook_settings_report import COLUMNS, environment, write_outputs  # noqa: E402,F401

NUM_TRAIN_CLASSES = 135
EMBEDDING_SIZE = 128
MNIST_MEAN, MNIST_STD = (0.1307,), (0.3081,)
DEFAULT_OUTPUT = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
                              "docs", "results", "notebook_settings")


def load_split(split: str, limit: Optional[int] = None) -> torch.utils.data.TensorDataset:
    """Omniglot ``split`` as a TensorDataset of MNIST-normalised ``(1, 28, 28)`` images.

    The notebooks' transform (``ToTensor`` then ``Normalize``) is deterministic, so it is
    applied once here. ``limit`` keeps the first images of each class (drawer order).
    """
    from torchvision import transforms

    from pml_grouploss.datasets import Omniglot

    data = Omniglot(split=split)
    transform = transforms.Compose([transforms.ToTensor(),
                                    transforms.Normalize(MNIST_MEAN, MNIST_STD)])
    keep = np.arange(len(data))
    if limit is not None:
        seen: Dict[int, int] = {}
        keep = np.array([i for i, y in enumerate(data.labels) if _count(seen, y) < limit])
    images = torch.stack([transform(data[int(i)][0]) for i in keep])
    return torch.utils.data.TensorDataset(images, data.targets[keep])


def _count(seen: Dict[int, int], label: int) -> int:
    seen[label] = seen.get(label, 0) + 1
    return seen[label] - 1


def make_loader(dataset, batches: str, batch_size: int, seed: int, iterations: Optional[int]):
    """Shuffled batches (the MNIST notebook) or ``MPerClassSampler(m=4)`` batches."""
    from pytorch_metric_learning import samplers

    labels = dataset.tensors[1].tolist()
    generator = torch.Generator().manual_seed(seed)
    length = len(labels) if iterations is None else iterations * batch_size
    if batches == "shuffled":
        num_samples = length if iterations else None
        sampler = torch.utils.data.RandomSampler(dataset, num_samples=num_samples,
                                                 generator=generator)
    else:
        sampler = samplers.MPerClassSampler(labels, m=4, batch_size=batch_size,
                                            length_before_new_iter=length)
    return torch.utils.data.DataLoader(dataset, batch_size=batch_size, sampler=sampler)


def make_loss(method: str, classifier_lr: Optional[float], mlp: bool = False):
    """``(loss, miner, loss_optimizer)`` for ``grouploss``, ``grouploss_raw`` or ``triplet``."""
    from pytorch_metric_learning import distances, losses, miners, reducers

    from pml_grouploss.losses import GroupLoss

    if method.startswith("grouploss"):
        size = 64 if mlp else EMBEDDING_SIZE
        loss = GroupLoss(num_classes=NUM_TRAIN_CLASSES, embedding_size=size,
                         normalize_embeddings=method == "grouploss")
        return loss, None, torch.optim.Adam(loss.parameters(), lr=classifier_lr)
    if mlp:  # MetricLossOnly notebook
        return losses.TripletMarginLoss(margin=0.1), miners.MultiSimilarityMiner(0.1), None
    distance = distances.CosineSimilarity()  # TripletMarginLossMNIST notebook
    loss = losses.TripletMarginLoss(margin=0.2, distance=distance,
                                    reducer=reducers.ThresholdReducer(low=0))
    miner = miners.TripletMarginMiner(margin=0.2, distance=distance, type_of_triplets="semihard")
    return loss, miner, None


def train_plain(model, loss, miner, loader, optimizer, loss_optimizer, epochs: int) -> str:
    """The notebooks' loop; returns ``"ok"`` or why training stopped."""
    model.train()
    for _ in range(epochs):
        for data, labels in loader:
            optimizer.zero_grad()
            if loss_optimizer is not None:
                loss_optimizer.zero_grad()
            embeddings = model(data)
            indices_tuple = miner(embeddings, labels) if miner is not None else None
            try:
                value = loss(embeddings, labels, indices_tuple)
            except ValueError as err:  # GroupLoss rejects NaN/inf embeddings
                return f"stopped: {str(err).split(';')[0]}"
            if not torch.isfinite(value):
                return "stopped: non-finite loss"
            value.backward()
            optimizer.step()
            if loss_optimizer is not None:
                loss_optimizer.step()
    return "ok"


def train_with_trainer(trunk, embedder, loss, miner, loss_optimizer, train, run) -> str:
    """The MetricLossOnly notebook: PML's trainer with trunk/embedder/metric-loss optimizers."""
    from pytorch_metric_learning import trainers

    optimizers = {f"{name}_optimizer": torch.optim.Adam(part.parameters(), lr=run["trunk_lr"])
                  for name, part in (("trunk", trunk), ("embedder", embedder))}
    if loss_optimizer is not None:
        optimizers["metric_loss_optimizer"] = loss_optimizer
    loader = make_loader(train, "m_per_class", run["batch_size"], run["seed"], run["iterations"])
    mining = {"tuple_miner": miner} if miner is not None else {}
    trainer = trainers.MetricLossOnly(
        {"trunk": trunk, "embedder": embedder}, optimizers, run["batch_size"],
        {"metric_loss": loss}, train, mining_funcs=mining, sampler=loader.sampler,
        dataloader_num_workers=0, iterations_per_epoch=run["iterations"])
    try:
        trainer.train(num_epochs=run["epochs"])
    except ValueError as err:
        return f"stopped: {str(err).split(';')[0]}"
    return "ok"


@torch.no_grad()
def embed(model: nn.Module, images: torch.Tensor, batch_size: int = 512) -> torch.Tensor:
    """Embeddings of ``images`` in eval mode (dropout off), as PML's testers compute them."""
    model.eval()
    return torch.cat([model(chunk) for chunk in images.split(batch_size)])


def evaluate(model: nn.Module, test) -> Dict[str, float]:
    """Test P@1 and MAP@R (test vs itself, PML's defaults), P@1 on L2-normalised embeddings."""
    from pytorch_metric_learning.utils.accuracy_calculator import AccuracyCalculator

    images, labels = test.tensors
    emb = embed(model, images)
    spread = float(emb.std(dim=0).mean()) if torch.isfinite(emb).all() else float("nan")
    out = {"embedding_std": spread}
    if not torch.isfinite(emb).all():
        return dict(out, p_at_1=float("nan"), map_at_r=float("nan"), p_at_1_cosine=float("nan"))
    calc = AccuracyCalculator(include=("precision_at_1", "mean_average_precision_at_r"),
                              k="max_bin_count")
    acc = calc.get_accuracy(emb, labels)
    cos = calc.get_accuracy(F.normalize(emb, dim=1), labels, include=("precision_at_1",))
    out.update(p_at_1=acc["precision_at_1"], map_at_r=acc["mean_average_precision_at_r"],
               p_at_1_cosine=cos["precision_at_1"])
    return out


def run_one(run: Dict, train, test) -> Dict:
    """Train one configuration from the seeded initial trunk and evaluate it."""
    torch.manual_seed(run["seed"])
    np.random.seed(run["seed"])  # MPerClassSampler draws from numpy's global state
    trunk = Net()
    mlp = run["trunk"] == "net+mlp"
    embedder = MLP([EMBEDDING_SIZE, 64]) if mlp else None
    start = time.perf_counter()
    status = "untrained"
    if run["method"] != "untrained":
        loss, miner, loss_opt = make_loss(run["method"], run["classifier_lr"], mlp)
        if mlp:
            status = train_with_trainer(trunk, embedder, loss, miner, loss_opt, train, run)
        else:
            loader = make_loader(train, run["batches"], run["batch_size"], run["seed"],
                                 run["iterations"])
            optimizer = torch.optim.Adam(trunk.parameters(), lr=run["trunk_lr"])
            status = train_plain(trunk, loss, miner, loader, optimizer, loss_opt, run["epochs"])
    model = nn.Sequential(trunk, embedder) if mlp else trunk
    seconds = time.perf_counter() - start
    metrics = evaluate(model, test)
    if status == "ok" and metrics["embedding_std"] < 1e-6:
        status = "collapsed"
    return dict(run, status=status, train_seconds=round(seconds, 1), **metrics)


def build_grid(args: argparse.Namespace) -> List[Dict]:
    """Every configuration of the sweep, the untrained baseline first."""
    base = {"seed": args.seed, "epochs": args.epochs, "iterations": args.iterations}
    runs = [dict(base, method="untrained", trunk="net", batches="-", batch_size=0, trunk_lr=None,
                 classifier_lr=None, epochs=0)]
    for batches in args.batches:
        plain = dict(base, trunk="net", batches=batches, batch_size=args.batch_size)
        for trunk_lr in args.trunk_lrs:
            for classifier_lr in args.classifier_lrs:
                runs.append(dict(plain, method="grouploss", trunk_lr=trunk_lr,
                                 classifier_lr=classifier_lr))
            runs.append(dict(plain, method="triplet", trunk_lr=trunk_lr, classifier_lr=None))
        for trunk_lr in [lr for lr in args.raw_trunk_lrs if lr in args.trunk_lrs]:
            for classifier_lr in args.raw_classifier_lrs:
                runs.append(dict(plain, method="grouploss_raw", trunk_lr=trunk_lr,
                                 classifier_lr=classifier_lr))
    if args.mlp_trunk:
        mlp = dict(base, trunk="net+mlp", batches="m_per_class", batch_size=32)
        runs.append(dict(runs[0], trunk="net+mlp"))  # the baseline of this architecture
        for trunk_lr in args.trunk_lrs:
            runs += [dict(mlp, method="grouploss", trunk_lr=trunk_lr,
                          classifier_lr=args.mlp_classifier_lr),
                     dict(mlp, method="triplet", trunk_lr=trunk_lr, classifier_lr=None)]
    return runs


#: an option left unset, without and with ``--quick`` (which fills in only unset options; its
#: normalize_embeddings=False runs default to its own trunk and classifier lrs)
DEFAULTS = dict(epochs=2, iterations=None, batch_size=256, trunk_lrs=[1e-2, 1e-3, 1e-4],
                classifier_lrs=[1e-3, 1e-2, 1e-1], raw_trunk_lrs=[1e-2], raw_classifier_lrs=[1e-2],
                batches=["shuffled", "m_per_class"], train_per_class=None, test_per_class=None,
                mlp_classifier_lr=1e-2)
QUICK = dict(epochs=1, iterations=2, batch_size=32, trunk_lrs=[1e-2], classifier_lrs=[1e-3],
             raw_trunk_lrs=None, raw_classifier_lrs=None, batches=["m_per_class"],
             train_per_class=4, test_per_class=3, mlp_classifier_lr=1e-2)


def _unset(key: str, what: str = "", default: str = "", quick: str = "") -> str:
    """An option's help: ``what`` it is, then its value when unset, without and with --quick."""
    return (f"{what}{'; ' if what else ''}default {default or DEFAULTS[key]}, "
            f"--quick {quick or QUICK[key]}")


def parse_args(argv: Optional[Sequence[str]] = None) -> argparse.Namespace:
    """Command-line flags; ``--quick`` shrinks what is not given to a smoke test of seconds."""
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--epochs", type=int, help=_unset("epochs"))
    p.add_argument("--output-dir", help=f"default {DEFAULT_OUTPUT}; with --quick a new "
                   "temporary directory (printed), never the committed results")
    p.add_argument("--trunk-lrs", type=float, nargs="+", help=_unset("trunk_lrs"))
    p.add_argument("--classifier-lrs", type=float, nargs="+", help=_unset("classifier_lrs"))
    p.add_argument("--raw-trunk-lrs", type=float, nargs="+", help=_unset(
        "raw_trunk_lrs", "trunk lrs at which GroupLoss(normalize_embeddings=False) also runs",
        quick="the --trunk-lrs"))
    p.add_argument("--raw-classifier-lrs", type=float, nargs="+", help=_unset(
        "raw_classifier_lrs", "classifier lrs of the normalize_embeddings=False runs",
        quick="the --classifier-lrs"))
    p.add_argument("--batches", nargs="*", choices=["shuffled", "m_per_class"], help=_unset(
        "batches", "batchings of the Net runs; none (bare --batches) runs only --mlp-trunk"))
    p.add_argument("--batch-size", type=int, help=_unset("batch_size"))
    p.add_argument("--iterations", type=int, help=_unset(
        "iterations", "iterations per epoch", default="one pass over the training set"))
    p.add_argument("--train-per-class", type=int, help=_unset(
        "train_per_class", "keep only the first N drawers of each training character",
        default="all 20"))
    p.add_argument("--test-per-class", type=int, help=_unset(
        "test_per_class", "keep only the first N (>= 2) drawers of each test character",
        default="all 20"))
    p.add_argument("--mlp-trunk", action="store_true",
                   help="also run the MetricLossOnly notebook's trunk+MLP embedder split")
    p.add_argument("--mlp-classifier-lr", type=float, help="the --mlp-trunk runs' classifier "
                   "lr (they take no --classifier-lrs); default 1e-2")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--quick", action="store_true", help="smoke test: fills in each option not "
                   "given with its --quick value (1 epoch of 2 iterations of batch 32, one lr, "
                   "small sets); the options given are kept")
    args = p.parse_args(argv)
    given = {key for key in DEFAULTS if getattr(args, key) is not None}  # on the command line
    for key, value in (QUICK if args.quick else DEFAULTS).items():
        if getattr(args, key) is None:
            setattr(args, key, list(value) if isinstance(value, list) else value)
    if args.quick:
        args.raw_trunk_lrs = args.raw_trunk_lrs or args.trunk_lrs
        args.raw_classifier_lrs = args.raw_classifier_lrs or args.classifier_lrs
    if args.output_dir is None and not args.quick:
        args.output_dir = DEFAULT_OUTPUT
    check_args(p, args, given)
    return args


def check_args(p: argparse.ArgumentParser, args: argparse.Namespace, given=frozenset()) -> None:
    """Refuse (``p.error``, exit 2) values that would train nothing, fail mid-sweep, or have no
    effect (``given``: the options on the command line; those filled in are never refused)."""
    for flag, low in (("epochs", 1), ("batch_size", 1), ("iterations", 1),
                      ("train_per_class", 1), ("test_per_class", 2)):
        value = getattr(args, flag)
        if value is not None and value < low:
            p.error(f"--{flag.replace('_', '-')} must be at least {low} (got {value})")
    if not 0 <= args.seed < 2**32:
        p.error(f"--seed must be between 0 and 2**32 - 1 (numpy's seeds; got {args.seed})")
    for flag in [key for key in DEFAULTS if "_lr" in key]:  # every learning-rate option
        bad = [f"{lr:g}" for lr in np.ravel(getattr(args, flag)) if not 0 < lr < math.inf]
        if bad:
            p.error(f"--{flag.replace('_', '-')} {' '.join(bad)}: must be finite and > 0")
    if not args.batches and not args.mlp_trunk:
        p.error("bare --batches runs no Net configuration: name a batching or add --mlp-trunk")
    _check_used(p, args, given)
    images = min(135 * (args.train_per_class or 20) if args.iterations is None else 540, 540)
    if "m_per_class" in args.batches and (args.batch_size % 4 or args.batch_size > images):
        p.error(f"--batch-size {args.batch_size} with m_per_class batches (4 images of each "
                "character) must be a multiple of 4 and at most 540 (4 x 135 characters)"
                + (f" and, without --iterations, the {images} training images" if images < 540
                   else ""))
    if args.output_dir is not None:
        from pml_grouploss.benchmark.validation import check_output_dir

        try:  # the benchmark's probe: creatable and writable, nothing left behind
            check_output_dir(args.output_dir, "--output-dir")
        except ValueError as err:
            p.error(str(err))


def _check_used(p: argparse.ArgumentParser, args: argparse.Namespace, given) -> None:
    """Refuse options given that no run would use, and a missing faiss (needed by every run's
    evaluation, PML's AccuracyCalculator, which would fail only after the training)."""
    net_only = sorted(given & {"batch_size", "classifier_lrs", "raw_trunk_lrs",
                               "raw_classifier_lrs"}) if not args.batches else []
    off = [f"{lr:g}" for lr in args.raw_trunk_lrs if lr not in args.trunk_lrs]
    if net_only:
        p.error(f"{', '.join('--' + k.replace('_', '-') for k in net_only)}: no effect with bare "
                "--batches (no Net run; --mlp-trunk uses batch 32, --mlp-classifier-lr); drop it")
    if "raw_trunk_lrs" in given and off:
        p.error(f"--raw-trunk-lrs {' '.join(off)}: not among --trunk-lrs, so no run (the "
                "normalize_embeddings=False runs are at those); add to --trunk-lrs or drop")
    if "raw_classifier_lrs" in given and len(off) == len(args.raw_trunk_lrs):
        p.error("--raw-classifier-lrs: no effect, no --raw-trunk-lrs is among --trunk-lrs (no "
                "normalize_embeddings=False run); give --raw-trunk-lrs of the --trunk-lrs")
    if "mlp_classifier_lr" in given and not args.mlp_trunk:
        p.error("--mlp-classifier-lr: no effect without --mlp-trunk; drop it or add --mlp-trunk")
    try:
        import faiss  # noqa: F401
    except ImportError:
        p.error("the evaluation (PML's AccuracyCalculator) needs faiss: pip install faiss-cpu")


def main(argv: Optional[Sequence[str]] = None) -> List[Dict]:
    """Run the sweep, print one line per run and write CSV, Markdown table and environment."""
    args = parse_args(argv)
    if args.output_dir is None:  # --quick: never into the committed results
        args.output_dir = tempfile.mkdtemp(prefix="notebook_settings_quick_")
        print(f"--quick without --output-dir: writing to {args.output_dir}", flush=True)
    logging.getLogger("PML").setLevel(logging.WARNING)
    train = load_split("train", args.train_per_class)
    test = load_split("test", args.test_per_class)
    env = environment(args, argv if argv is not None else sys.argv[1:], len(train), len(test))
    wall = time.perf_counter()
    rows = []
    for run in build_grid(args):
        rows.append(run_one(run, train, test))
        r = rows[-1]
        print(f"{r['method']:14s} {r['trunk']:8s} {r['batches']:12s} trunk_lr={r['trunk_lr']} "
              f"cls_lr={r['classifier_lr']} P@1={r['p_at_1']:.3f} MAP@R={r['map_at_r']:.3f} "
              f"{r['status']} {r['train_seconds']}s", flush=True)
    env.update(wall_seconds=round(time.perf_counter() - wall, 1), platform=platform.platform())
    write_outputs(rows, env, args.output_dir)
    return rows


if __name__ == "__main__":
    main()
