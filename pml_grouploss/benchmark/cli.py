"""``pml-grouploss-bench``: the side-by-side benchmark of GroupLoss and PML's losses.

Subcommands (``run`` is the default when none is given)::

    pml-grouploss-bench                      # main job: embedded Omniglot, 4 methods x 3 seeds
    pml-grouploss-bench run --losses grouploss,triplet,MultiSimilarityLoss --seeds 5
    pml-grouploss-bench ablate steps         # GroupLoss refinement steps T = 0..5
    pml-grouploss-bench tune --budget 6      # equal-budget Optuna search on validation folds
    pml-grouploss-bench inference results/main  # GL++ inference ablation on its GroupLoss models
    pml-grouploss-bench figures results/main # redraw the figures of a finished run
"""

from __future__ import annotations

import argparse
import ast
import dataclasses
import json
import os
import sys
from typing import Any, Dict, List, Optional, Tuple

from .config import PAPER_CONFIGS, SECTIONS, BenchmarkConfig, config_fields
from .validation import ConfigError, check_output_dir, cli_message, cli_text

__all__ = ["build_parser", "config_from_args", "main"]

SUBCOMMANDS = ("run", "ablate", "tune", "inference", "figures")
#: options that are not config fields (the rest of the parser is generated from the config)
RUN_OPTIONS = (
    ("--output-dir", dict(default=None, help="results directory; rerunning the same command "
                          "resumes in it (default: results/main, results/tune, "
                          "results/ablate_<sweep>)")),
    ("--fresh", dict(action="store_true", help="delete --output-dir first instead of resuming")),
    ("--no-figures", dict(action="store_true", help="skip the matplotlib figures")),
    ("--verbose", dict(action="store_true", help="PML's INFO logging")),
)


def parse_seeds(text: str) -> Tuple[int, ...]:
    """``"3"`` -> ``(0, 1, 2)``; ``"0,5,7"`` -> ``(0, 5, 7)`` (range checks: the config)."""
    try:
        seeds = [int(x) for x in (p.strip() for p in text.split(",")) if x]
    except ValueError:
        seeds = None
    if not seeds:
        raise ValueError(f"--seeds: expected a count (e.g. 3) or a comma list of integers "
                         f"(e.g. 0,5,7), got {text!r}")
    if len(seeds) == 1 and "," not in text:
        if seeds[0] < 1:
            raise ValueError(f"--seeds must be >= 1, got {seeds[0]}")
        return tuple(range(seeds[0]))
    return tuple(seeds)


def parse_losses(text: str) -> Tuple[str, ...]:
    """``"grouploss,triplet"`` -> a tuple; ``""`` and ``","`` are errors, not the default."""
    names = tuple(m.strip() for m in text.split(",") if m.strip())
    if not names:
        raise ValueError("argument --losses: must name at least one method, e.g. --losses "
                         "grouploss,triplet (omit --losses for the default methods)")
    return names


def parse_overrides(items) -> Dict[str, Dict[str, Any]]:
    """``["grouploss.temperature=10", "proxyanchor.loss_lr=0.03"]`` -> nested dict. Values are
    Python literals (``ast.literal_eval``), or plain strings when not a literal."""
    out: Dict[str, Dict[str, Any]] = {}
    for item in items or ():
        if "=" not in item or "." not in item.split("=", 1)[0]:
            raise ValueError(f"--set: expected METHOD.PARAM=VALUE, got {item!r}")
        key, raw = item.split("=", 1)
        method, param = key.split(".", 1)
        try:
            value = ast.literal_eval(raw)
        except (ValueError, SyntaxError):
            value = raw
        out.setdefault(method, {})[param] = value
    return out


def load_params_file(path: str) -> Dict[str, Dict[str, Any]]:
    """``--params-file``: JSON ``{method: {param: value}}``; errors name the option and file."""
    what = f"--params-file {path!r}"
    expected = 'expected JSON {"method": {"param": value}}, e.g. the best_params.json of `tune`'
    if not os.path.isfile(path):
        raise FileNotFoundError(f"{what} does not exist or is not a file")
    try:
        with open(path, encoding="utf-8") as f:
            data = json.load(f)
    except json.JSONDecodeError as err:
        raise ValueError(f"{what} is not valid JSON ({err.msg} at line {err.lineno} column "
                         f"{err.colno}); {expected}") from None
    except (OSError, UnicodeDecodeError) as err:
        raise ValueError(f"{what} cannot be read ({err}); {expected}") from None
    if not isinstance(data, dict) or not all(
            isinstance(k, str) and isinstance(v, dict) for k, v in data.items()):
        raise ValueError(f"{what}: {expected}; got {json.dumps(data)[:80]}")
    return data


def _config_options(p: argparse.ArgumentParser, skip: Tuple[str, ...] = ()) -> None:
    """One option per config field with a flag, from its metadata (help, choices, default), in
    one group per config section."""
    groups = {k: p.add_argument_group(title) for k, (_, title) in SECTIONS.items()}
    groups["data"].add_argument(
        "--config", choices=sorted(PAPER_CONFIGS), default=None,
        help="start from a paper configuration (CUB/Cars/SOP settings of the Group Loss papers; "
        "needs --data-root and a GPU; not run by the authors of this package). Explicit options "
        "override it.")
    for dotted, f in config_fields():
        section, meta, kind = dotted.split(".")[0], f.metadata, str(f.type)
        flag, default = meta["flag"], f.default
        if flag is None or "/" in flag or f.name in skip:
            continue
        kw: Dict[str, Any] = dict(default=None, help=meta["help"], choices=meta["choices"])
        if kind == "bool":
            kw = dict(action="store_const", const=not default, default=None, help=meta["help"])
        elif f.name in ("seeds", "methods"):  # parsed in config_from_args: errors name the option
            default = len(default) if f.name == "seeds" else ",".join(default)
        elif "int" in kind or "float" in kind:
            kw["type"] = int if "int" in kind else float
        if default is not None and "(default" not in meta["help"] and "action" not in kw:
            kw["help"] += f" (default: {default})"
        flag = flag or "--" + f.name.replace("_", "-")
        if "action" not in kw and not kw["choices"]:
            kw["metavar"] = flag[2:].replace("-", "_").upper()
        groups[section].add_argument(flag, dest=f.name, **kw)
    for flag, kw in RUN_OPTIONS:
        groups["run"].add_argument(flag, **kw)


def _method_options(p: argparse.ArgumentParser, params_file: bool = True) -> None:
    p.add_argument(
        "--set", action="append", default=[], metavar="METHOD.PARAM=VALUE",
        help="override a loss parameter, e.g. --set grouploss.temperature=10 --set "
        "proxyanchor.loss_lr=0.03 (loss_lr = lr of the loss's own parameters, lr = trunk lr "
        "for this method). Repeatable.")
    if params_file:
        p.add_argument("--params-file", default=None,
                       help="JSON {method: {param: value}} of overrides, e.g. the "
                       "best_params.json written by `tune`")


def build_parser() -> argparse.ArgumentParser:
    from .ablations import ABLATIONS

    parser = argparse.ArgumentParser(
        prog="pml-grouploss-bench", formatter_class=argparse.RawDescriptionHelpFormatter,
        description="Side-by-side metric-learning benchmark in PML's trainers and testers: "
        "GroupLoss vs PML's TripletMarginLoss and ProxyAnchorLoss (and any PML loss), "
        "class-disjoint validation folds for model selection, test classes touched once, "
        "mean ± 95% CI over seeds. Without a subcommand, `run` is assumed.",
        epilog=__doc__.split("\n\n", 1)[1])
    sub = parser.add_subparsers(dest="command", metavar="{run,ablate,tune,inference,figures}")
    p = sub.add_parser("run", help="the main benchmark (default)")
    _config_options(p)
    _method_options(p)
    p = sub.add_parser("ablate", help="a GroupLoss ablation sweep from the papers")
    p.add_argument("sweep", choices=sorted(ABLATIONS), help="; ".join(
        f"{k}: {v.description}" for k, v in sorted(ABLATIONS.items())))
    _config_options(p, skip=("methods", "final_test"))
    _method_options(p, params_file=False)
    p.add_argument("--test", action="store_true", help="also evaluate each variant on the test "
                   "classes (default: validation only, so ablations never feed back from test)")
    p = sub.add_parser("tune", help="equal-budget Optuna search (TPE, median pruning) on "
                       "validation folds")
    _config_options(p)
    _method_options(p)
    p.add_argument("--budget", type=int, default=6, help="trials per method, the same for every "
                   "method (default: 6; the first trial is the method's defaults)")
    p.add_argument("--storage", default=None, help="Optuna storage of the study (default: "
                   "sqlite:///<output-dir>/optuna.db, so an interrupted tune resumes); an RDB URL "
                   "such as postgresql://user:pass@host/db lets processes on several machines "
                   "share the trials")
    p = sub.add_parser("inference", help="GroupLoss++ inference ablation on a finished run's "
                       "GroupLoss models (GL++ Tables 3-4)")
    p.add_argument("output_dir", nargs="?", default=os.path.join("results", "main"),
                   help="a results directory written by `run` (default: results/main)")
    p.add_argument("--method", default="grouploss",
                   help="which method's checkpoints to evaluate (default: grouploss)")
    p.add_argument("--verbose", action="store_true", help="PML's INFO logging")
    p = sub.add_parser("figures", help="redraw the figures of a results directory")
    p.add_argument("output_dir", help="a results directory written by `run`")
    return parser


def config_from_args(args: argparse.Namespace) -> BenchmarkConfig:
    """The run's config from parsed options (``--config`` first, explicit options override)."""
    base = dict(PAPER_CONFIGS[args.config]) if getattr(args, "config", None) else {}
    for _, f in config_fields():
        value = getattr(args, f.name, None)
        if value is not None:
            parse = {"methods": parse_losses, "seeds": parse_seeds}.get(f.name)
            base[f.name] = parse(value) if parse else value
    overrides = {k: dict(v) for k, v in base.get("overrides", {}).items()}
    sources = [load_params_file(args.params_file)] if getattr(args, "params_file", None) else []
    for source in sources + [parse_overrides(getattr(args, "set", []))]:
        for k, v in source.items():
            overrides.setdefault(k, {}).update(v)
    base["overrides"] = overrides
    cfg = BenchmarkConfig.from_dict(base)
    unknown = sorted(set(cfg.run.overrides) - set(cfg.run.methods) - {"grouploss"})
    if unknown and args.command in ("run", "tune"):
        raise ValueError(f"--set/--params-file name methods that are not run: {unknown}; "
                         "add them to --losses")
    if args.command == "tune" and args.budget < 1:
        raise ValueError(f"--budget must be >= 1 (trials per method), got {args.budget}")
    return cfg


def output_dir_from_args(args: argparse.Namespace) -> str:
    """``--output-dir`` or the subcommand's default, checked writable (nothing is created)."""
    default = {"run": "main", "tune": "tune"}.get(args.command) or f"ablate_{args.sweep}"
    out = args.output_dir or os.path.join("results", default)
    check_output_dir(out, "--output-dir")
    return out


def main(argv: Optional[List[str]] = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or (argv[0] not in SUBCOMMANDS and argv[0] not in ("-h", "--help")):
        argv = ["run"] + argv
    parser = build_parser()
    try:
        return _dispatch(parser.parse_args(argv))
    except KeyboardInterrupt:
        print("\ninterrupted: finished seeds are kept; rerun the same command to resume from "
              "the last checkpoint", file=sys.stderr)
        return 130
    except ModuleNotFoundError as err:
        if err.name not in ("pandas", "matplotlib", "optuna"):
            raise
        parser.exit(2, f"pml-grouploss-bench: error: the benchmark needs {err.name}: pip install "
                    "'pml_grouploss[bench]' (or [with-hooks-cpu], which includes it)\n")
    except ConfigError as err:  # a config field: name its option
        parser.exit(2, f"pml-grouploss-bench: error: {cli_message(err)}\n")
    except (ValueError, FileNotFoundError, RuntimeError) as err:
        parser.exit(2, f"pml-grouploss-bench: error: {cli_text(str(err))}\n")


def _results_config(output_dir: str) -> BenchmarkConfig:
    path = os.path.join(output_dir, "config.json")
    if not os.path.isfile(path):
        raise FileNotFoundError(f"{output_dir!r} is not a results directory of `run` (no "
                                "config.json); run the benchmark first")
    with open(path) as f:
        return BenchmarkConfig.from_dict(json.load(f))


def _dispatch(args: argparse.Namespace) -> int:
    from .runner import quiet_pml

    if args.command == "figures":
        from . import figures

        figures.make_all(args.output_dir, _results_config(args.output_dir))
        print(f"figures written to {os.path.join(args.output_dir, 'figures')}")
        return 0
    quiet_pml(args.verbose)
    if args.command == "inference":
        from .inference_ablation import run_inference_ablation

        _results_config(args.output_dir)
        run_inference_ablation(args.output_dir, method=args.method)
        return 0
    cfg, out = config_from_args(args), output_dir_from_args(args)
    if args.command == "run":
        from .suite import run_benchmark

        run_benchmark(cfg, out, fresh=args.fresh, figures=not args.no_figures)
    elif args.command == "ablate":
        from .ablations import run_ablation

        run_ablation(args.sweep, cfg, out, fresh=args.fresh, final_test=args.test,
                     figures=not args.no_figures)
    else:
        from .tuning import run_tuning

        run_tuning(cfg, out, budget=args.budget, fresh=args.fresh, storage=args.storage)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
