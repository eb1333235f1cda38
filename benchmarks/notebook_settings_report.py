"""Reporting for ``notebook_settings_sweep.py``: environment facts, CSV and Markdown table.

``python benchmarks/notebook_settings_report.py DIR`` rewrites ``DIR/table.md`` from the
``results.csv`` and ``environment.json`` a sweep wrote there.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import platform
import sys
from typing import Dict, List, Optional, Sequence

import torch

COLUMNS = [
    "method",
    "trunk",
    "batches",
    "batch_size",
    "trunk_lr",
    "classifier_lr",
    "epochs",
    "iterations",
    "seed",
    "status",
    "p_at_1",
    "map_at_r",
    "p_at_1_cosine",
    "embedding_std",
    "train_seconds",
]
LABELS = {
    "untrained": "untrained trunk",
    "grouploss": "GroupLoss",
    "grouploss_raw": "GroupLoss(normalize_embeddings=False)",
    "triplet": "TripletMarginLoss + miner",
}


def environment(args: argparse.Namespace, argv: Sequence[str], n_train: int, n_test: int) -> Dict:
    """Machine and package facts written next to the results."""
    import pytorch_metric_learning

    cpu = "unknown"
    if os.path.exists("/proc/cpuinfo"):
        with open("/proc/cpuinfo") as f:
            names = [line.split(":", 1)[1].strip() for line in f if line.startswith("model name")]
        cpu = names[0] if names else cpu
    return {
        "command": "python benchmarks/notebook_settings_sweep.py " + " ".join(argv),
        "torch": torch.__version__,
        "pytorch_metric_learning": pytorch_metric_learning.__version__,
        "python": platform.python_version(),
        "cpu_model": cpu,
        "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "load_average_at_start": list(os.getloadavg()),
        "train_images": n_train,
        "test_images": n_test,
        "epochs": args.epochs,
        "iterations_per_epoch": args.iterations,
        "seed": args.seed,
    }


def _fmt(value, metric: bool = True) -> str:
    """A metric to 3 decimals, a learning rate in ``%g`` form, ``None`` as ``-``."""
    if value is None or value == "":
        return "-"
    value = float(value)
    if value != value:
        return "nan"
    return f"{value:.3f}" if metric else f"{value:g}"


def markdown(rows: List[Dict], env: Dict) -> str:
    """The results as Markdown: header with the budget, a GroupLoss grid, every run."""
    base = next(r for r in rows if r["method"] == "untrained")
    # each trained model is compared with the same architecture untrained (Net, or Net + MLP)
    bases = {r["trunk"]: r for r in reversed(rows) if r["method"] == "untrained"}
    lines = [
        "# GroupLoss in PML's example-notebook settings (embedded Omniglot)",
        "",
        f"Command: `{env['command'].strip()}`. Wall time {env['wall_seconds']:.0f} s on "
        f"{env['cpu_count']} CPU cores ({env['cpu_model']}, {env['torch_threads']} torch threads, "
        f"load average {env['load_average_at_start'][0]:.1f} at start: shared machine), "
        f"torch {env['torch']}, PML {env['pytorch_metric_learning']}.",
        "",
        f"Budget: {env['epochs']} epoch(s) of "
        + (
            f"{env['iterations_per_epoch']} iterations"
            if env["iterations_per_epoch"]
            else f"one pass over the {env['train_images']} training images"
        )
        + f", seed {env['seed']} (every run starts from the same initial trunk). Test: "
        f"{env['test_images']} images of unseen characters against themselves, PML's "
        "`AccuracyCalculator` defaults (L2 k-NN on raw embeddings); `P@1 cos` on L2-normalised "
        "embeddings.",
        "",
        f"**Untrained trunk: P@1 {base['p_at_1']:.3f}, MAP@R {base['map_at_r']:.3f}** "
        f"(P@1 cos {base['p_at_1_cosine']:.3f}). `vs untrained` = P@1 minus that of the same "
        "architecture untrained (the `untrained` row of its trunk).",
        "",
    ]
    lines += _subsampling(env) + _failures(rows, bases)
    lines += _grid(rows)
    lines += [
        "## Every run",
        "",
        "| loss | trunk | batches | trunk lr | classifier lr | P@1 | "
        "MAP@R | P@1 cos | vs untrained | status | train s |",
        "|" + "---|" * 11,
    ]
    for r in rows:
        lines.append(
            "| "
            + " | ".join(
                [
                    LABELS[r["method"]],
                    r["trunk"],
                    f"{r['batches']} ({r['batch_size']})" if r["batch_size"] else "-",
                    _fmt(r["trunk_lr"], False),
                    _fmt(r["classifier_lr"], False),
                    _fmt(r["p_at_1"]),
                    _fmt(r["map_at_r"]),
                    _fmt(r["p_at_1_cosine"]),
                    f"{r['p_at_1'] - bases.get(r['trunk'], base)['p_at_1']:+.3f}",
                    r["status"],
                    f'{r["train_seconds"]:.0f}',
                ]
            )
            + " |"
        )
    return "\n".join(lines) + "\n"


def _subsampling(env: Dict) -> List[str]:
    """Say plainly when the data were cut to fit the time budget."""
    cuts = [
        f"{name} set cut to the first {n // classes} of 20 drawers per character ({n} images)"
        for name, n, classes in (
            ("training", env["train_images"], 135),
            ("test", env["test_images"], 107),
        )
        if n < classes * 20
    ]
    return [f"Reduced to fit the time budget: {'; '.join(cuts)}.", ""] if cuts else []


def _failures(rows: List[Dict], bases: Dict[str, Dict]) -> List[str]:
    """The runs whose P@1 does not exceed that of their architecture untrained."""
    failed = [
        f"{LABELS[r['method']]} ({r['batches']}, trunk lr {_fmt(r['trunk_lr'], False)}, "
        f"classifier lr {_fmt(r['classifier_lr'], False)}: {_fmt(r['p_at_1'])}, {r['status']})"
        for r in rows
        if r["method"] != "untrained"
        and not r["p_at_1"] > bases.get(r["trunk"], bases["net"])["p_at_1"]
    ]
    return ["**Not better than the untrained trunk:** " + ("; ".join(failed) or "none") + ".", ""]


def load_rows(path: str) -> List[Dict]:
    """Rows of a ``results.csv`` with numbers parsed (empty cells become ``None``)."""
    with open(path, newline="") as f:
        rows = list(csv.DictReader(f))
    for r in rows:
        for key in ("batch_size", "epochs", "seed"):
            r[key] = int(r[key])
        r["iterations"] = int(r["iterations"]) if r["iterations"] else None
        for key in (
            "trunk_lr",
            "classifier_lr",
            "p_at_1",
            "map_at_r",
            "p_at_1_cosine",
            "embedding_std",
            "train_seconds",
        ):
            r[key] = float(r[key]) if r[key] else None
    return rows


def render(output_dir: str) -> None:
    """Rewrite ``table.md`` from the ``results.csv`` and ``environment.json`` of a finished run."""
    with open(os.path.join(output_dir, "environment.json")) as f:
        env = json.load(f)
    rows = load_rows(os.path.join(output_dir, "results.csv"))
    with open(os.path.join(output_dir, "table.md"), "w") as f:
        f.write(markdown(rows, env))


def _grid(rows: List[Dict]) -> List[str]:
    """GroupLoss P@1 by trunk lr (rows) and classifier lr (columns), per batching."""
    out: List[str] = []
    for trunk, batches in sorted(
        {(r["trunk"], r["batches"]) for r in rows if r["method"] == "grouploss"}
    ):
        cell = {
            (r["trunk_lr"], r["classifier_lr"]): r
            for r in rows
            if r["method"] == "grouploss" and r["trunk"] == trunk and r["batches"] == batches
        }
        trunk_lrs = sorted({k[0] for k in cell}, reverse=True)
        cls_lrs = sorted({k[1] for k in cell})
        out += [
            f"## GroupLoss P@1, trunk `{trunk}`, {batches} batches",
            "",
            "| trunk lr \\ classifier lr | " + " | ".join(_fmt(c, False) for c in cls_lrs) + " |",
            "|" + "---|" * (len(cls_lrs) + 1),
        ]
        for t in trunk_lrs:
            vals = [cell.get((t, c)) for c in cls_lrs]
            out.append(
                f"| {_fmt(t, False)} | "
                + " | ".join(
                    (
                        "-"
                        if v is None
                        else _fmt(v["p_at_1"])
                        + ("" if v["status"] == "ok" else f" ({v['status']})")
                    )
                    for v in vals
                )
                + " |"
            )
        out.append("")
    return out


def write_outputs(rows: List[Dict], env: Dict, output_dir: str) -> None:
    """``results.csv``, ``table.md`` and ``environment.json`` in ``output_dir``."""
    os.makedirs(output_dir, exist_ok=True)
    with open(os.path.join(output_dir, "results.csv"), "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=COLUMNS, extrasaction="ignore")
        writer.writeheader()
        writer.writerows(rows)
    with open(os.path.join(output_dir, "table.md"), "w") as f:
        f.write(markdown(rows, env))
    with open(os.path.join(output_dir, "environment.json"), "w") as f:
        json.dump(env, f, indent=2)


#: the ``environment.json`` keys :func:`markdown` reads
ENV_KEYS = ("command", "wall_seconds", "cpu_count", "cpu_model", "torch_threads",
            "load_average_at_start", "torch", "pytorch_metric_learning", "epochs",
            "iterations_per_epoch", "train_images", "test_images", "seed")


def _number(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


#: what :func:`markdown` does with some of them needs a type (the others are only printed)
ENV_TYPES = {
    "command": ("a string", lambda v: isinstance(v, str)),
    "wall_seconds": ("a number", _number),
    "load_average_at_start": ("a non-empty list of numbers",
                              lambda v: isinstance(v, list) and v and all(map(_number, v))),
    "train_images": ("an integer", lambda v: _number(v) and isinstance(v, int)),
    "test_images": ("an integer", lambda v: _number(v) and isinstance(v, int)),
}


def checked_inputs(parser: argparse.ArgumentParser, output_dir: str):
    """``(rows, env)`` of a sweep's directory, or ``parser.error`` (exit 2) naming the file."""
    fix = "DIR must be the --output-dir of a finished notebook_settings_sweep.py run"
    if not os.path.isdir(output_dir):
        parser.error(f"DIR {output_dir}: no such directory; {fix}")
    paths = [os.path.join(output_dir, name) for name in ("results.csv", "environment.json")]
    for path in paths:
        if not os.path.isfile(path) or os.path.getsize(path) == 0:
            parser.error(f"{path}: {'empty' if os.path.isfile(path) else 'missing'}; {fix}")
    try:
        with open(paths[1]) as f:
            env = json.load(f)
    except ValueError as err:
        parser.error(f"{paths[1]}: not JSON ({err}); {fix}")
    missing = [k for k in ENV_KEYS if not isinstance(env, dict) or k not in env]
    if missing:
        parser.error(f"{paths[1]}: no {', '.join(missing)}; {fix}")
    wrong = [f"{k} must be {what}, got {json.dumps(env[k])[:40]}"
             for k, (what, ok) in ENV_TYPES.items() if not ok(env[k])]
    if wrong:
        parser.error(f"{paths[1]}: {'; '.join(wrong)}; {fix}")
    with open(paths[0], newline="") as f:
        header = csv.DictReader(f).fieldnames or []
    missing = [c for c in COLUMNS if c not in header]
    if missing:
        parser.error(f"{paths[0]}: no column {', '.join(missing)}; {fix}")
    try:
        rows = load_rows(paths[0])
    except (TypeError, ValueError) as err:
        parser.error(f"{paths[0]}: a cell is not a number ({err}); {fix}")
    if not any(r["method"] == "untrained" and r["trunk"] == "net" for r in rows):
        parser.error(f"{paths[0]}: " + ("no runs" if not rows else "no `untrained` row of trunk "
                     "`net` (the baseline every run is compared with)") + f"; {fix}")
    return rows, env


def main(argv: Optional[Sequence[str]] = None) -> int:
    """``python benchmarks/notebook_settings_report.py DIR``: rewrite ``DIR/table.md``."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[1].replace("``", "`"))
    parser.add_argument("dir", metavar="DIR", help="a directory a sweep wrote (--output-dir of "
                        "notebook_settings_sweep.py): its results.csv and environment.json are "
                        "read, its table.md rewritten")
    args = parser.parse_args(argv)
    rows, env = checked_inputs(parser, args.dir)
    try:
        text = markdown(rows, env)
    except (LookupError, AttributeError, TypeError, ValueError) as err:
        parser.error(f"{args.dir}: cannot tabulate its results ({type(err).__name__}: {err})")
    path = os.path.join(args.dir, "table.md")
    with open(path, "w") as f:
        f.write(text)
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
