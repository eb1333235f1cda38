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
import json
import os
import re
import sys
from typing import Any, Dict, List, Optional, Set, Tuple

from .config import PAPER_CONFIGS, SECTIONS, BenchmarkConfig, config_fields
from .validation import ConfigError, check_output_dir, read_json_object

__all__ = ["build_parser", "config_from_args", "main"]

SUBCOMMANDS = ("run", "ablate", "tune", "inference", "figures")
VERBOSE = ("--verbose", dict(action="store_true", help="PML's INFO logging"))
#: options that are not config fields (the rest of the parser is generated from the config)
RUN_OPTIONS = (
    ("--output-dir", dict(help="results directory; rerunning the same command resumes in it "
                          "(default: results/main, results/tune, results/ablate_<sweep>)")),
    ("--fresh", dict(action="store_true", help="delete --output-dir first instead of resuming "
                     "(only a results directory, with config.json, or an empty one)")),
    ("--no-figures", dict(action="store_true", help="skip the matplotlib figures")), VERBOSE,
    ("--set", dict(action="append", default=[], metavar="METHOD.PARAM=VALUE", help="override a "
                   "loss parameter, e.g. --set grouploss.temperature=10 --set proxyanchor."
                   "loss_lr=0.03 (loss_lr = lr of the loss's own parameters, lr = trunk lr for "
                   "this method). Repeatable.")),
    ("--params-file", dict(help="JSON {method: {param: value}} of overrides, e.g. the "
                           "best_params.json written by `tune`")),
)
#: per subcommand: (help, arguments, config fields without an option)
COMMANDS = {
    "run": ("the main benchmark (default)", (), ()),
    "ablate": ("a GroupLoss ablation sweep from the papers", (
        ("--test", dict(action="store_true", help="also evaluate each variant on the test "
                        "classes (default: validation only, so ablations never feed back from "
                        "test)")),), ("methods", "final_test", "params_file")),
    "tune": ("equal-budget Optuna search (TPE, median pruning) on validation folds", (
        ("--budget", dict(type=int, default=6, help="trials per method, the same for every "
                          "method (default: 6; the first trial is the method's defaults)")),
        ("--storage", dict(help="Optuna storage of the study (default: sqlite:///<output-dir>/"
                           "optuna.db, so an interrupted tune resumes); an RDB URL such as "
                           "postgresql://user:pass@host/db lets processes on several machines "
                           "share the trials"))), ("final_test",)),
}
#: library arguments that are options of the command line, not config fields
CLI_ARGUMENTS = {"output_dir": "--output-dir", "fresh=True": "--fresh", "budget": "--budget",
                 "method=": "--method "}


def parse_seeds(text: str) -> Tuple[int, ...]:
    """``"3"`` -> ``(0, 1, 2)``; ``"0,5,7"`` -> ``(0, 5, 7)`` (range checks: the config)."""
    try:
        seeds = tuple(int(x) for x in text.split(",") if x.strip())
    except ValueError:
        seeds = ()
    if not seeds:
        raise ValueError(f"--seeds: expected a count (e.g. 3) or a comma list of integers "
                         f"(e.g. 0,5,7), got {text!r}")
    if len(seeds) > 1 or "," in text:
        return seeds
    if seeds[0] < 1:
        raise ValueError(
            f"--seeds: one number is how many seeds to run and must be >= 1, got {text!r} (e.g. "
            "--seeds 3 runs seeds 0,1,2 and --seeds 1 runs seed 0 alone); to name the seeds "
            "give a comma list, e.g. --seeds 0,5,7 (or --seeds 5, for seed 5 alone)")
    return tuple(range(seeds[0]))


def parse_overrides(items: List[str]) -> Dict[str, Dict[str, Any]]:
    """``["grouploss.temperature=10", "proxyanchor.loss_lr=0.03"]`` -> nested dict. Values are
    Python literals (``ast.literal_eval``), or plain strings when not a literal."""
    out: Dict[str, Dict[str, Any]] = {}
    for item in items:
        key, _, raw = item.partition("=")
        method, _, param = key.partition(".")
        if not raw or not param:
            raise ValueError(f"--set: expected METHOD.PARAM=VALUE, got {item!r}")
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
    data = read_json_object(path, what, "a JSON object", expected)
    if not all(
            isinstance(k, str) and isinstance(v, dict) for k, v in data.items()):
        raise ValueError(f"{what}: {expected}; got {json.dumps(data)[:80]}")
    return data


PARSERS = {"seeds": parse_seeds,
           "methods": lambda text: tuple(m.strip() for m in text.split(",") if m.strip())}
NONE = "none"  #: the value of an Optional option that turns it off (``--patience none``)


def _or_none(kind: type):
    """argparse ``type``: ``kind(text)``, or :data:`NONE` for "none" (any case)."""
    def parse(text: str) -> Any:
        return NONE if text.lower() == NONE else kind(text)

    parse.__name__ = kind.__name__  # argparse's "invalid int value: 'x'"
    return parse


def flags() -> Dict[str, Optional[str]]:
    """Dotted config field -> its command-line option (None: no option)."""
    return {name: ("--" + f.name.replace("_", "-") if f.metadata["flag"] == ""
                   else f.metadata["flag"]) for name, f in config_fields()}


def cli_text(text: str) -> str:
    """``text`` with every dotted config field (and :data:`CLI_ARGUMENTS`) replaced by its
    command-line option."""
    for name, option in {**flags(), **CLI_ARGUMENTS}.items():
        text = re.sub(rf"(?<![\w/.-]){re.escape(name)}(?![\w/])", option or name, text)
    return text


def cli_message(err: ConfigError) -> str:
    """``err``'s message with config field names replaced by the command-line options."""
    flag = flags().get(err.field, err.field)
    if flag is None:
        return f"config field {err}"
    text = re.sub(rf"^{re.escape(err.field)}:? ", "", str(err))
    return f"argument {flag}: {cli_text(text)}"


def _config_options(p: argparse.ArgumentParser, skip: Tuple[str, ...]) -> None:
    """One option per config field with a flag, from its metadata (help, choices, default), in
    one group per config section; then :data:`RUN_OPTIONS` but ``skip``."""
    groups = {k: p.add_argument_group(title) for k, (_, title) in SECTIONS.items()}
    groups["data"].add_argument(
        "--config", choices=sorted(PAPER_CONFIGS), help="start from a paper configuration "
        "(CUB/Cars/SOP settings of the Group Loss papers; needs --data-root and a GPU; not run by"
        " the authors of this package). Explicit options override it.")
    for dotted, f in config_fields():
        meta, kind, flag, default = f.metadata, str(f.type), f.metadata["flag"], f.default
        if flag is None or "/" in flag or f.name in skip:
            continue
        kw: Dict[str, Any] = dict(help=meta["help"], choices=meta["choices"])
        if kind == "bool":
            kw = dict(action="store_const", const=not default, help=meta["help"])
        elif f.name in ("seeds", "methods"):  # parsed in config_from_args: errors name the option
            default = len(default) if f.name == "seeds" else ",".join(default)
        elif "int" in kind or "float" in kind:
            kw["type"] = int if "int" in kind else float
        if kind.startswith("Optional"):
            kw["type"] = _or_none(kw.get("type", str))
            kw["help"] += "; none unsets it"
        if default is not None and "(default" not in meta["help"] and "action" not in kw:
            kw["help"] += f" (default: {default})"
        flag = flag or "--" + f.name.replace("_", "-")
        if "action" not in kw and not kw["choices"]:
            kw["metavar"] = flag[2:].replace("-", "_").upper()
        groups[dotted.split(".")[0]].add_argument(flag, dest=f.name, **kw)
    for flag, kw in RUN_OPTIONS:
        if flag[2:].replace("-", "_") not in skip:
            groups["run"].add_argument(flag, **kw)


def build_parser() -> argparse.ArgumentParser:
    from .ablations import ABLATIONS

    parser = argparse.ArgumentParser(
        prog="pml-grouploss-bench", formatter_class=argparse.RawDescriptionHelpFormatter,
        description="Side-by-side metric-learning benchmark in PML's trainers and testers: "
        "GroupLoss vs PML's TripletMarginLoss and ProxyAnchorLoss (and any PML loss), "
        "class-disjoint validation folds for model selection, test classes touched once, "
        "mean ± 95% CI over seeds. Without a subcommand, `run` is assumed.",
        epilog=__doc__.split("\n\n", 1)[1])
    sub = parser.add_subparsers(dest="command", metavar="{" + ",".join(SUBCOMMANDS) + "}")
    for name, (text, arguments, skip) in COMMANDS.items():
        p = sub.add_parser(name, help=text)
        if name == "ablate":
            p.add_argument("sweep", choices=sorted(ABLATIONS), help="; ".join(
                f"{k}: {v.description}" for k, v in sorted(ABLATIONS.items())))
        _config_options(p, skip)
        for flag, kw in arguments:
            p.add_argument(flag, **kw)
    p = sub.add_parser("inference", help="GroupLoss++ inference ablation on a finished run's "
                       "GroupLoss models (GL++ Tables 3-4)")
    p.add_argument("output_dir", nargs="?", default=os.path.join("results", "main"),
                   help="a results directory written by `run` (default: results/main)")
    p.add_argument("--method", default="grouploss",
                   help="which method's checkpoints to evaluate (default: grouploss)")
    p.add_argument(VERBOSE[0], **VERBOSE[1])
    p = sub.add_parser("figures", help="redraw the figures of a results directory")
    p.add_argument("output_dir", help="a results directory written by `run`")
    return parser


def config_from_args(args: argparse.Namespace) -> BenchmarkConfig:
    """The run's config from parsed options (``--config`` first, explicit options override)."""
    base = dict(PAPER_CONFIGS[args.config]) if args.config else {}
    for _, f in config_fields():
        value = getattr(args, f.name, None)
        if value is not None:
            base[f.name] = None if value is NONE else PARSERS.get(f.name, lambda v: v)(value)
    overrides = {k: dict(v) for k, v in base.get("overrides", {}).items()}
    sources = [load_params_file(args.params_file)] if getattr(args, "params_file", None) else []
    user_set = parse_overrides(args.set)
    for source in sources + [user_set]:
        for k, v in source.items():
            overrides.setdefault(k, {}).update(v)
    cfg = BenchmarkConfig.from_dict({**base, "overrides": overrides})
    _check_override_methods(args.command, cfg, {k for s in sources for k in s}, set(user_set))
    return cfg


def _check_override_methods(command: str, cfg: BenchmarkConfig, from_file: Set[str],
                            from_set: Set[str]) -> None:
    """A method of the user's ``--set``/``--params-file`` that ``command`` does not run is an
    error (``ablate`` runs grouploss only). A ``--config``'s grouploss settings are not
    checked: the paper configurations set them whatever ``--losses`` runs."""
    if command in ("run", "tune"):
        unknown = sorted((from_file | from_set) - set(cfg.run.methods))
        if unknown:
            raise ValueError(f"--set/--params-file name methods that are not run: {unknown}; "
                             "add them to --losses (or drop their settings)")
    elif command == "ablate":
        unknown = sorted(from_set - {"grouploss"})
        if unknown:
            raise ValueError(f"--set names methods that ablate does not run: {unknown}; its "
                             "sweeps train grouploss only (use --set grouploss.PARAM=VALUE)")


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


def _dispatch(args: argparse.Namespace) -> int:
    from . import ablations, figures, inference_ablation, suite, tuning
    from .runner import quiet_pml

    if args.command == "figures":
        figures.make_all(args.output_dir, suite.results_config(args.output_dir))
        print(f"figures written to {os.path.join(args.output_dir, 'figures')}")
        return 0
    quiet_pml(args.verbose)
    if args.command == "inference":
        inference_ablation.run_inference_ablation(args.output_dir, method=args.method)
        return 0
    cfg = config_from_args(args)
    default = {"run": "main", "tune": "tune"}.get(args.command) or f"ablate_{args.sweep}"
    out = os.path.join("results", default) if args.output_dir is None else args.output_dir
    check_output_dir(out)
    if args.command == "run":
        suite.run_benchmark(cfg, out, fresh=args.fresh, figures=not args.no_figures)
    elif args.command == "ablate":
        ablations.run_ablation(args.sweep, cfg, out, fresh=args.fresh, final_test=args.test,
                               figures=not args.no_figures)
    else:
        tuning.run_tuning(cfg, out, budget=args.budget, fresh=args.fresh, storage=args.storage)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
