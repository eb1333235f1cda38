"""``pml-grouploss-bench``: the side-by-side benchmark of GroupLoss and PML's losses.

Subcommands (``run`` is the default when none is given)::

    pml-grouploss-bench                      # main job: embedded Omniglot, 4 methods x 3 seeds
    pml-grouploss-bench run --losses grouploss,triplet,MultiSimilarityLoss --seeds 5
    pml-grouploss-bench ablate steps         # GroupLoss refinement steps T = 0..5
    pml-grouploss-bench tune --budget 6      # equal-budget random search on validation folds
    pml-grouploss-bench inference results/main  # GL++ inference ablation on its GroupLoss models
    pml-grouploss-bench figures results/main # redraw the figures of a finished run
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from typing import List, Optional

from .config import PAPER_CONFIGS, BenchmarkConfig
from .data import DATASET_NAMES
from .methods import DEFAULT_METHODS, METHODS
from .options import config_from_args, output_dir_from_args
from .trunks import TRUNK_NAMES
from .validation import CHOICES, ConfigError, cli_message

__all__ = ["build_parser", "config_from_args", "main"]

SUBCOMMANDS = ("run", "ablate", "tune", "inference", "figures")


def _add_protocol_options(p: argparse.ArgumentParser) -> None:
    d = BenchmarkConfig()
    g = p.add_argument_group("data")
    g.add_argument(
        "--config",
        choices=sorted(PAPER_CONFIGS),
        default=None,
        help="start from a paper configuration (CUB/Cars/SOP settings of the Group Loss "
        "papers; needs --data-root and a GPU; not run by the authors of this "
        "package). Explicit options below override it.",
    )
    g.add_argument(
        "--dataset",
        choices=DATASET_NAMES,
        default=None,
        help=f"omniglot-small = the subset embedded in the package (offline, default); "
        f"omniglot = full Omniglot in torchvision's layout; cub, cars196, sop = "
        f"PML's dataset classes. All but omniglot-small need --data-root. "
        f"(default: {d.dataset})",
    )
    g.add_argument(
        "--data-root",
        default=None,
        help="directory holding the dataset (see docs/datasets.md for each layout)",
    )
    g.add_argument(
        "--download",
        action="store_true",
        help="download the dataset into --data-root first (needs network)",
    )
    g.add_argument(
        "--max-classes",
        type=int,
        default=None,
        help="use only the first N training and N test classes (quick trials)",
    )
    g.add_argument(
        "--num-folds",
        type=int,
        default=None,
        help=f"the training classes are cut into this many class-disjoint folds; seed s "
        f"validates on fold s %% num_folds and trains on the others "
        f"(default: {d.num_folds})",
    )
    g.add_argument(
        "--augment",
        choices=CHOICES["augment"],
        default=None,
        help=f"training augmentation, the same for every method (default: {d.augment})",
    )
    g = p.add_argument_group("model and batches (the same for every method)")
    g.add_argument(
        "--trunk",
        choices=TRUNK_NAMES,
        default=None,
        help=f"cnn = 4-block CNN for 28x28 inputs; torchvision trunks use the papers' "
        f"preprocessing (resize 256, crop 227) (default: {d.trunk})",
    )
    g.add_argument(
        "--pretrained",
        action="store_true",
        default=None,
        help="ImageNet weights for torchvision trunks (downloaded by torchvision; "
        "a clear error when offline)",
    )
    g.add_argument(
        "--embedder",
        choices=CHOICES["embedder"],
        default=None,
        help=f"linear layer on the pooled features, or the pooled features themselves "
        f"(default: {d.embedder})",
    )
    g.add_argument(
        "--embedding-size",
        type=int,
        default=None,
        help=f"embedding dimension (default: {d.embedding_size})",
    )
    g.add_argument(
        "--image-size",
        type=int,
        default=None,
        help=f"input side for the small CNN (default: {d.image_size})",
    )
    g.add_argument(
        "--classes-per-batch",
        type=int,
        default=None,
        help=f"classes per MPerClassSampler batch (default: {d.classes_per_batch})",
    )
    g.add_argument(
        "--samples-per-class",
        type=int,
        default=None,
        help=f"samples per class in a batch, MPerClassSampler's m "
        f"(default: {d.samples_per_class})",
    )
    g.add_argument(
        "--batch-size",
        type=int,
        default=None,
        help="batch size; must be divisible by --samples-per-class "
        "(default: classes-per-batch x samples-per-class)",
    )
    g = p.add_argument_group("optimisation (the same for every method)")
    g.add_argument("--epochs", type=int, default=None, help=f"epochs (default: {d.epochs})")
    g.add_argument(
        "--iterations-per-epoch",
        type=int,
        default=None,
        help="iterations per epoch (default: training images / batch size)",
    )
    g.add_argument(
        "--optimizer",
        choices=CHOICES["optimizer"],
        default=None,
        help=f"optimizer of trunk, embedder and loss parameters (default: {d.optimizer})",
    )
    g.add_argument(
        "--lr",
        type=float,
        default=None,
        help=f"learning rate of trunk and embedder (default: {d.lr}); losses with "
        "parameters have their own (see --set METHOD.loss_lr=...)",
    )
    g.add_argument(
        "--weight-decay", type=float, default=None, help=f"weight decay (default: {d.weight_decay})"
    )
    g.add_argument(
        "--lr-decay-epoch",
        type=int,
        default=None,
        help="multiply every learning rate by 0.1 every N epochs (papers: 30)",
    )
    g.add_argument(
        "--eval-every",
        type=int,
        default=None,
        help=f"evaluate validation and train classes every N epochs; --epochs must be "
        f"a multiple (default: {d.eval_every})",
    )
    g.add_argument(
        "--patience",
        type=int,
        default=None,
        help="early stopping: stop a training when the validation metric has not "
        "improved for more than N epochs (default: off, train all --epochs)",
    )
    g.add_argument(
        "--primary-metric",
        default=None,
        choices=CHOICES["primary_metric"],
        help=f"validation metric that picks the checkpoint (default: {d.primary_metric})",
    )
    g = p.add_argument_group("run")
    g.add_argument(
        "--seeds",
        default=None,
        help="number of seeds (e.g. 3 -> 0,1,2) or a comma list (e.g. 0,5,7); "
        f"default: {len(d.seeds)}",
    )
    g.add_argument(
        "--output-dir",
        default=None,
        help="results directory; rerunning the same command resumes in it "
        "(default: results/main, results/tune, results/ablate_<sweep>)",
    )
    g.add_argument(
        "--fresh", action="store_true", help="delete --output-dir first instead of resuming"
    )
    g.add_argument("--device", default=None, help="torch device (default: cpu)")
    g.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    g.add_argument("--no-figures", action="store_true", help="skip the matplotlib figures")
    g.add_argument("--verbose", action="store_true", help="PML's INFO logging")


def _add_method_options(p: argparse.ArgumentParser, default_methods=DEFAULT_METHODS) -> None:
    names = ", ".join(f"{k} ({v.description})" for k, v in METHODS.items())
    p.add_argument(
        "--losses",
        default=None,
        help=f"comma-separated methods. Built in: {names}. Any PML loss class name "
        f"also works (e.g. MultiSimilarityLoss, NormalizedSoftmaxLoss) with PML's "
        f"defaults. (default: {','.join(default_methods)})",
    )
    p.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="METHOD.PARAM=VALUE",
        help="override a loss parameter, e.g. --set grouploss.temperature=10 "
        "--set proxyanchor.loss_lr=0.03 (loss_lr = lr of the loss's own "
        "parameters, lr = trunk lr for this method). Repeatable.",
    )
    p.add_argument(
        "--params-file",
        default=None,
        help="JSON {method: {param: value}} of overrides, e.g. the best_params.json "
        "written by `tune`",
    )


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="pml-grouploss-bench",
        description="Side-by-side metric-learning benchmark in PML's trainers and testers: "
        "GroupLoss vs PML's TripletMarginLoss and ProxyAnchorLoss (and any PML loss), "
        "class-disjoint validation folds for model selection, test classes touched "
        "once, mean ± 95% CI over seeds. Without a subcommand, `run` is assumed.",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog=__doc__.split("\n\n", 1)[1],
    )
    sub = parser.add_subparsers(dest="command", metavar="{run,ablate,tune,inference,figures}")
    p = sub.add_parser("run", help="the main benchmark (default)")
    _add_protocol_options(p)
    _add_method_options(p)
    from .ablations import ABLATIONS

    p = sub.add_parser("ablate", help="a GroupLoss ablation sweep from the papers")
    p.add_argument(
        "sweep",
        choices=sorted(ABLATIONS),
        help="; ".join(f"{k}: {v.description}" for k, v in sorted(ABLATIONS.items())),
    )
    _add_protocol_options(p)
    p.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="grouploss.PARAM=VALUE",
        help="fix other GroupLoss parameters for the whole sweep",
    )
    p.add_argument(
        "--test",
        action="store_true",
        help="also evaluate each variant on the test classes (default: validation "
        "only, so ablations never feed back from test)",
    )
    p = sub.add_parser("tune", help="equal-budget random search on validation folds")
    _add_protocol_options(p)
    _add_method_options(p)
    p.add_argument(
        "--budget",
        type=int,
        default=6,
        help="configurations per method, the same for every method (default: 6; the "
        "first is always the method's default)",
    )
    p = sub.add_parser(
        "inference",
        help="GroupLoss++ inference ablation on a finished run's "
        "GroupLoss models (GL++ Tables 3-4)",
    )
    p.add_argument(
        "output_dir",
        nargs="?",
        default=os.path.join("results", "main"),
        help="a results directory written by `run` (default: results/main)",
    )
    p.add_argument(
        "--method",
        default="grouploss",
        help="which method's checkpoints to evaluate (default: grouploss)",
    )
    p.add_argument("--verbose", action="store_true", help="PML's INFO logging")
    p = sub.add_parser("figures", help="redraw the figures of a results directory")
    p.add_argument("output_dir", help="a results directory written by `run`")
    return parser


def main(argv: Optional[List[str]] = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or (argv[0] not in SUBCOMMANDS and argv[0] not in ("-h", "--help")):
        argv = ["run"] + argv
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return _dispatch(args)
    except KeyboardInterrupt:
        print(
            "\ninterrupted: finished seeds are kept; rerun the same command to resume from the "
            "last checkpoint",
            file=sys.stderr,
        )
        return 130
    except ConfigError as err:  # a config field: name its option
        parser.exit(2, f"pml-grouploss-bench: error: {cli_message(err)}\n")
    except (ValueError, FileNotFoundError, RuntimeError) as err:
        parser.exit(2, f"pml-grouploss-bench: error: {err}\n")


def _dispatch(args: argparse.Namespace) -> int:
    from .runner import quiet_pml

    if args.command == "figures":
        from . import figures

        cfg_path = os.path.join(args.output_dir, "config.json")
        if not os.path.isfile(cfg_path):
            raise FileNotFoundError(
                f"{args.output_dir!r} is not a results directory (no config.json)"
            )
        with open(cfg_path) as f:
            cfg = BenchmarkConfig.from_dict(json.load(f))
        figures.make_all(args.output_dir, cfg)
        print(f"figures written to {os.path.join(args.output_dir, 'figures')}")
        return 0
    quiet_pml(args.verbose)
    if args.command == "inference":
        from .inference_ablation import run_inference_ablation

        if not os.path.isfile(os.path.join(args.output_dir, "config.json")):
            raise FileNotFoundError(
                f"{args.output_dir!r} is not a results directory of `run` "
                "(no config.json); run the benchmark first"
            )
        run_inference_ablation(args.output_dir, method=args.method)
        return 0
    cfg = config_from_args(args)
    out = output_dir_from_args(args)
    if args.command == "run":
        from .suite import run_benchmark

        run_benchmark(cfg, out, fresh=args.fresh, figures=not args.no_figures)
    elif args.command == "ablate":
        from .ablations import run_ablation

        run_ablation(
            args.sweep,
            cfg,
            out,
            fresh=args.fresh,
            final_test=args.test,
            figures=not args.no_figures,
        )
    elif args.command == "tune":
        from .tuning import run_tuning

        run_tuning(cfg, out, budget=args.budget, fresh=args.fresh)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
