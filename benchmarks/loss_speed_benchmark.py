"""Forward+backward time and working memory of GroupLoss against PML's losses, by class count.

Usage::

    python benchmarks/loss_speed_benchmark.py --quick          # n in {32, 128}, m in {100, 11318}
    python benchmarks/loss_speed_benchmark.py                  # the issue-10 grid (long)
    python benchmarks/loss_speed_benchmark.py --n 120 --m 11318 100 1000000
    python benchmarks/loss_speed_benchmark.py --scaling --n 128 --m 100 1000000

``benchmarks/class_scale_checks.py`` has the MetricLossOnly epoch over 100,000 classes and the
cost of PML's logging hook.

One process, one thread by default (``--threads``). For every ``(n, m)`` the losses are built
once and timed in rotation (one step of each in turn, in a new seeded order every round,
``--repeats`` rounds after 2 warm-up rounds) so that the load of a shared machine and the
caches a step leaves to the next hit them alike; the table gives medians and
ratios to ``NormalizedSoftmaxLoss`` of the same round set. A step is ``loss(embeddings,
labels).backward()`` (with the miner for the triplet loss), gradients reset to ``None``
before it as PML's trainers do; no optimizer step. Embeddings ``(n, d)`` are random, labels
``n // 4`` classes (at most ``m``) drawn from ``m`` with 4 samples each (an
``MPerClassSampler`` batch).

"work MiB" is the growth of the process's peak resident set during one step over its resident
size just before it (``/proc/self/clear_refs``; for that step only glibc is told to return
every block of 64 KiB or more to the OS, so freed memory is not reused unnoticed; the timed
steps run with blocks reused, as in training): it counts the step's tensors and the gradients
(a dense ``W.grad`` is ``m x d`` floats), not the parameters themselves.

Losses whose estimated working memory exceeds ``--max-gb`` are skipped (the estimate is
printed). GroupLoss "batch" is ``prior_classes="batch", sparse_gradients=True``. "dense T=0"
runs no refinement: what is left is the Pearson similarity and the classifier, so its
difference to T=1 is the price of the replicator dynamics and the refined-label NLL.
"""

from __future__ import annotations

import argparse
import datetime
import os
import random
import shlex
import statistics
import sys
import time
import warnings
from contextlib import contextmanager
from typing import Callable, Dict, List, Optional

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from _process_memory import malloc_returns_memory, peak_growth_mib  # noqa: E402

GRID_N = (32, 128, 512)
GRID_M = (100, 11_318, 100_000, 1_000_000)
QUICK_N = (32, 128)
QUICK_M = (100, 11_318)
REFERENCE = "NormalizedSoftmax"
MAX_GB = 6.0  # --max-gb's default


def _losses(n: int, m: int, d: int) -> Dict[str, Callable[[], torch.nn.Module]]:
    from pytorch_metric_learning import losses as pml_losses
    from pytorch_metric_learning import miners as pml_miners

    from pml_grouploss import losses

    def group_loss(prior: str, T: int):
        extra = dict(prior_classes="batch", sparse_gradients=True) if prior == "batch" else {}
        return lambda: losses.GroupLoss(m, d, num_iterations=T, **extra)

    def triplet():
        loss = pml_losses.TripletMarginLoss(margin=0.2)
        loss.miner = pml_miners.TripletMarginMiner(margin=0.2, type_of_triplets="semihard")
        return loss

    return {
        "GroupLoss dense T=0": group_loss("all", 0),
        "GroupLoss dense T=1": group_loss("all", 1),
        "GroupLoss dense T=3": group_loss("all", 3),
        "GroupLoss batch T=1": group_loss("batch", 1),
        "GroupLoss batch T=3": group_loss("batch", 3),
        "GradML": lambda: losses.GradMLLoss(),
        "Triplet+semihard": triplet,
        "ProxyAnchor": lambda: pml_losses.ProxyAnchorLoss(m, d),
        REFERENCE: lambda: pml_losses.NormalizedSoftmaxLoss(m, d),
        "ArcFace": lambda: pml_losses.ArcFaceLoss(m, d),
        "MultiSimilarity": lambda: pml_losses.MultiSimilarityLoss(),
    }


def estimate_gib(name: str, n: int, m: int, d: int) -> float:
    """Rough memory (GiB) of a loss and one step: its ``m x d`` parameters, plus ``n x m``
    float tensors alive at the peak and copies of ``W`` (a dense ``W.grad``; losses that
    normalise ``W`` every step hold several): from the measurements of GroupLoss dense (8.1 GB
    at 128 x 1e6, issue 10) and NormalizedSoftmax (11.7 GB at 32 x 1e6, run G); ProxyAnchor
    and ArcFace assumed alike."""
    nm = n * m * 4 / 2**30
    wd = m * d * 4 / 2**30
    per_loss = {"GroupLoss dense": (10, 1), "ProxyAnchor": (8, 6), "NormalizedSoftmax": (4, 6),
                "ArcFace": (6, 6)}
    params = wd if _has_params(name) else 0.0
    for prefix, (k_nm, k_w) in per_loss.items():
        if name.startswith(prefix):
            return params + k_nm * nm + k_w * wd
    return params + 0.05


def _params_gib(m: int, d: int) -> float:
    return m * d * 4 / 2**30


def _batch(n: int, m: int, d: int, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    num = max(1, min(n // 4, m))
    classes = torch.randperm(m, generator=g)[:num]
    labels = classes.repeat_interleave(-(-n // num))[:n]
    labels = labels[torch.randperm(n, generator=g)]
    return torch.randn(n, d, generator=g, requires_grad=True), labels


def _shuffled(keys: list, round_index: int) -> list:
    """``keys`` in the order of this round: a step leaves the caches to its successor, and
    in a fixed order each loss would always follow the same one (n = 120, m = 100, five runs
    each: the fixed order read dense GroupLoss 0.07x lower and hid a 0.09x speed-up)."""
    order = list(keys)
    random.Random(round_index).shuffle(order)
    return order


def _step(loss: torch.nn.Module, e: torch.Tensor, labels: torch.Tensor) -> float:
    for p in loss.parameters():
        p.grad = None
    e.grad = None
    start = time.perf_counter()
    miner = getattr(loss, "miner", None)
    value = loss(e, labels, miner(e, labels)) if miner is not None else loss(e, labels)
    value.backward()
    return time.perf_counter() - start


def _work_mib(loss, e, labels) -> Optional[float]:
    for p in loss.parameters():
        p.grad = None
    e.grad = None
    return peak_growth_mib(lambda: _step(loss, e, labels))


@contextmanager
def _no_frozen_classifier_warning():
    """No optimizer steps the losses here, so GroupLoss's frozen-classifier warning is expected
    and ignored; any other warning still shows."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".* receives gradients but has not changed")
        yield


def measure(n: int, m: int, d: int, repeats: int, max_gb: float, names=None) -> List[dict]:
    """Rows ``{n, m, loss, median_ms, work_mib, skipped}`` for one ``(n, m)``."""
    e, labels = _batch(n, m, d)
    factories = _losses(n, m, d)
    rows, built = [], {}
    for name, factory in factories.items():
        if names and name not in names:
            continue
        est = estimate_gib(name, n, m, d)
        if est > max_gb:
            rows.append(dict(n=n, m=m, loss=name, skipped=f"est. {est:.1f} GiB > --max-gb"))
            continue
        built[name] = factory()
    # Interleave when every loss's parameters fit together; else one loss at a time.
    together = _params_gib(m, d) * sum(1 for k in built if _has_params(k)) <= max_gb / 2
    times: Dict[str, List[float]] = {k: [] for k in built}
    work: Dict[str, Optional[float]] = {}
    with _no_frozen_classifier_warning():
        groups = [list(built)] if together and built else [[k] for k in built]
        for group in groups:
            for k in group:
                _step(built[k], e, labels)
            slow = max(_step(built[k], e, labels) for k in group)
            rounds = repeats if slow < 2.0 else max(3, repeats // 5)
            for round_index in range(rounds):
                for k in _shuffled(group, round_index):
                    times[k].append(_step(built[k], e, labels))
            for k in group:
                work[k] = _work_mib(built[k], e, labels)
                if not together:
                    built[k] = None  # free W before the next loss
    for k in times:
        rows.append(dict(n=n, m=m, loss=k, median_ms=1e3 * statistics.median(times[k]),
                         rounds=len(times[k]), work_mib=work[k], interleaved=together))
    return rows


def scaling(n: int, ms: List[int], d: int, repeats: int) -> List[dict]:
    """The class-count scaling of batch-class GroupLoss in one rotation: its T=1 and T=3
    losses at every ``m`` in ``ms`` and MultiSimilarityLoss (no per-class parameters) are
    timed in turn, so each ratio to the smallest ``m`` (and to MultiSimilarity) shares the
    load of every round. Rows ``{n, m, loss, median_ms, work_mib}``."""
    e, labels = _batch(n, min(ms), d)  # labels valid for every m
    built = {}
    for m in ms:
        for name in ("GroupLoss batch T=1", "GroupLoss batch T=3"):
            built[(m, name)] = _losses(n, m, d)[name]()
    built[(None, "MultiSimilarity")] = _losses(n, min(ms), d)["MultiSimilarity"]()
    times = {k: [] for k in built}
    with _no_frozen_classifier_warning():
        for k in built:
            _step(built[k], e, labels)
            _step(built[k], e, labels)
        for round_index in range(repeats):
            for k in _shuffled(list(built), round_index):
                times[k].append(_step(built[k], e, labels))
        work = {k: _work_mib(built[k], e, labels) for k in built}
    return [dict(n=n, m=m, loss=name, median_ms=1e3 * statistics.median(times[(m, name)]),
                 rounds=repeats, work_mib=work[(m, name)]) for (m, name) in built]


def scaling_markdown(rows: List[dict]) -> str:
    ms_ms = next(r["median_ms"] for r in rows if r["loss"] == "MultiSimilarity")
    lowest = min(r["m"] for r in rows if r["m"] is not None)
    base = {r["loss"]: r["median_ms"] for r in rows if r["m"] == lowest}
    out = [f"\n### Scaling in m, n = {rows[0]['n']} (one rotation)\n",
           f"| loss | m | median ms | x own m = {lowest:,} | x MultiSimilarity | work MiB |",
           "|---|---|---|---|---|---|"]
    for r in rows:
        own = "" if r["m"] is None else f"{r['median_ms'] / base[r['loss']]:.2f}"
        m = "—" if r["m"] is None else f"{r['m']:,}"
        mib = "" if r["work_mib"] is None else f"{r['work_mib']:.0f}"
        out.append(f"| {r['loss']} | {m} | {r['median_ms']:.1f} | {own} | "
                   f"{r['median_ms'] / ms_ms:.2f} | {mib} |")
    return "\n".join(out) + "\n"


def _has_params(name: str) -> bool:
    return name.split()[0] in ("GroupLoss", "ProxyAnchor", REFERENCE, "ArcFace")


def environment() -> Dict[str, str]:
    """The machine and versions (``pml_grouploss.benchmark.provenance``), date and load."""
    from pml_grouploss.benchmark.provenance import environment as facts

    env = facts()
    return {
        "date (UTC)": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M"),
        "commit": env["git_commit"] or "unknown", "CPU": env["cpu_model"],
        "cores (os.cpu_count)": str(env["cpu_count"]), "torch threads": str(env["torch_threads"]),
        "torch CPU capability": env["cpu_capability"], "torch": env["packages"]["torch"],
        "pytorch-metric-learning": env["packages"]["pytorch-metric-learning"],
        "python": env["python"],
        "load average at start": " ".join(f"{x:.1f}" for x in os.getloadavg()),
    }


def markdown(rows: List[dict]) -> str:
    """One table per ``n``: a row per loss, a column per ``m`` with ``ms (x ref) / MiB``."""
    out = []
    for n in sorted({r["n"] for r in rows}):
        ms = sorted({r["m"] for r in rows if r["n"] == n})
        names = list(dict.fromkeys(r["loss"] for r in rows if r["n"] == n))
        ref = {r["m"]: r.get("median_ms") for r in rows if r["n"] == n and r["loss"] == REFERENCE}
        out.append(f"\n### n = {n}\n")
        out.append("| loss | " + " | ".join(f"m = {m:,}" for m in ms) + " |")
        out.append("|---|" + "---|" * len(ms))
        for name in names:
            cells = []
            for m in ms:
                r = next((r for r in rows if r["n"] == n and r["m"] == m and r["loss"] == name),
                         None)
                if r is None:
                    cells.append("")
                elif "skipped" in r:
                    cells.append(f"skipped ({r['skipped']})")
                else:
                    ratio = f" ({r['median_ms'] / ref[m]:.2f}x)" if ref.get(m) else ""
                    mib = "" if r["work_mib"] is None else f" / {r['work_mib']:.0f} MiB"
                    cells.append(f"{r['median_ms']:.1f} ms{ratio}{mib}")
            out.append(f"| {name} | " + " | ".join(cells) + " |")
        alone = sorted({r["m"] for r in rows if r["n"] == n and r.get("interleaved") is False})
        if alone:
            out.append(f"\nAt m = {', '.join(f'{m:,}' for m in alone)} the losses' parameters "
                       "did not fit together in --max-gb / 2: each loss was timed in its own "
                       "rounds, so its ratio compares separate rounds.")
    return "\n".join(out) + "\n"


def _count(text: str) -> int:
    """An integer of at least 1 (argparse ``type``: a bad value exits 2 naming the option)."""
    if not text.isdecimal() or int(text) < 1:
        raise argparse.ArgumentTypeError(f"must be an integer of at least 1, got {text!r}")
    return int(text)


def check_args(parser: argparse.ArgumentParser, args: argparse.Namespace) -> None:
    """Refuse (``parser.error``, exit 2) what would measure nothing or fail after measuring."""
    if args.max_gb is not None and not args.max_gb > 0:
        parser.error(f"--max-gb must be positive (got {args.max_gb})")
    if args.scaling and (args.losses or args.max_gb is not None):
        parser.error("--scaling times its own losses (GroupLoss batch T=1 and T=3 at every --m, "
                     "MultiSimilarity) and no others: drop --losses and --max-gb")
    names = list(_losses(1, 1, 1))
    unknown = [name for name in args.losses or () if name not in names]
    if unknown:
        parser.error(f"--losses: unknown {', '.join(map(repr, unknown))}; the names (quote those "
                     "with spaces): " + ", ".join(map(repr, names)))
    for option, values in (("--n", args.n), ("--m", args.m)):
        if values and len(set(values)) < len(values):
            parser.error(f"{option}: each value once (got {' '.join(map(str, values))})")
    # the batch's classes are drawn by a permutation of all m (8 bytes each)
    if args.m and 8 * max(args.m) / 2**30 > (MAX_GB if args.max_gb is None else args.max_gb):
        parser.error(f"--m {max(args.m):,}: drawing the batch's classes alone needs "
                     f"{8 * max(args.m) / 2**30:.1f} GiB, above --max-gb")
    parent = os.path.dirname(os.path.abspath(args.out)) if args.out else None
    if parent and (not os.path.isdir(parent) or os.path.isdir(args.out)):
        parser.error(f"--out {args.out}: " + ("a directory; give a file" if os.path.isdir(args.out)
                     else f"no directory {parent}; create it first"))
    if parent:  # opened now: an unwritable --out fails before the measurements, not after
        existed = os.path.exists(args.out)
        try:
            open(args.out, "a").close()
        except OSError as error:
            parser.error(f"--out {args.out}: cannot be written ({error.strerror})")
        if not existed:
            os.remove(args.out)


def main(argv: Optional[List[str]] = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="n 32,128; m 100,11318; 5 rounds")
    parser.add_argument("--n", type=_count, nargs="+", help=f"batch sizes (default {GRID_N})")
    parser.add_argument("--m", type=_count, nargs="+", help=f"class counts (default {GRID_M})")
    parser.add_argument("--d", type=_count, default=512)
    parser.add_argument("--repeats", type=_count, help="timed rounds (default 15; --quick 5)")
    parser.add_argument("--threads", type=_count, default=1)
    parser.add_argument("--max-gb", type=float,
                        help="skip a loss whose estimated working memory is larger "
                             f"(default {MAX_GB:g})")
    parser.add_argument("--losses", nargs="+", help="only these losses, exact names as in the "
                        "table, quoted (e.g. 'GroupLoss batch T=1' GradML)")
    parser.add_argument("--out", help="append the Markdown table and environment to this file")
    parser.add_argument("--scaling", action="store_true",
                        help="batch-class GroupLoss at every --m in one rotation (with "
                             "MultiSimilarity), ratios to the smallest m; refuses --losses and "
                             "--max-gb (its losses are fixed)")
    args = parser.parse_args(argv)
    check_args(parser, args)
    torch.set_num_threads(args.threads)
    malloc_returns_memory(False)
    ns = args.n or (QUICK_N if args.quick else GRID_N)
    ms = args.m or (QUICK_M if args.quick else GRID_M)
    repeats = args.repeats or (5 if args.quick else 15)
    max_gb = MAX_GB if args.max_gb is None else args.max_gb
    env = environment()
    command = "python " + shlex.join([os.path.relpath(__file__)]
                                     + (sys.argv[1:] if argv is None else list(argv)))
    text = f"\nCommand: `{command}`\n\n" + "\n".join(f"- {k}: {v}" for k, v in env.items())
    if args.scaling:
        for n in ns:
            text += "\n" + scaling_markdown(scaling(n, list(ms), args.d, repeats))
    else:
        rows = []
        for m in ms:
            for n in ns:
                new = measure(n, m, args.d, repeats, max_gb, args.losses)
                rows += new
                for r in new:
                    print(r, flush=True)
        text += "\n" + markdown(rows)
    print(text)
    if args.out:
        with open(args.out, "a") as f:
            f.write(text)


if __name__ == "__main__":
    main()
