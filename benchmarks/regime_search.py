"""Issue 13's regime search: where does Group Loss's refinement pay?

Usage::

    python benchmarks/regime_search.py validate default label_noise_20   # validation runs
    python benchmarks/regime_search.py validate --all                     # every regime
    python benchmarks/regime_search.py report                             # paired table
    python benchmarks/regime_search.py test                               # clean data, once
    python benchmarks/regime_search.py test label_noise_20                # under 20% noise

Each regime is the benchmark's main command (``pml-grouploss-bench run``) with a few options
changed, run on the **validation folds only** (``--no-test``: no test image is read) with
``--seeds 5`` (seed s validates on class fold s), into ``docs/results/regimes/<regime>/``.
Regimes that change only GroupLoss (warm-up, a sharper similarity) train only GroupLoss and pair
it with the other methods' runs of their ``base`` regime (``default``, or the ``label_noise_*``
regime of the same level: the same folds, seeds, protocol and noise).

``report`` pairs every regime's per-seed validation R@1 and MAP@R: GroupLoss - plain CE on the
same classifier (``grouploss_ce``), GroupLoss - ProxyAnchor, GroupLoss - Triplet and GroupLoss -
the better of the two by mean; mean and Student-t 95% CI over the seeds (``aggregate.mean_ci``).
``test CONDITION`` then picks each method's regime on validation among the regimes of one
condition of the data (``clean``, or a label-noise level: noise is a condition, not a setting a
user picks), by the largest mean validation R@1 + MAP@R among those that trained the method;
trains each method once more in it with the test classes (same seeds); and reports the same
paired differences on test. Everything lands in ``docs/results/regimes/README.md``.
"""

from __future__ import annotations

import argparse
import os
import sys
from typing import Dict, List, Optional, Sequence, Tuple

from pml_grouploss.benchmark.validation import check_output_dir

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from _regimes import ALL, CONDITIONS, REGIMES  # noqa: E402,F401

MISSING = ""  # a package of the optional "bench" extra, not installed: check_args says so
try:  # (and --help works without it)
    import pandas as pd
    from pml_grouploss.benchmark.aggregate import mean_ci
except ModuleNotFoundError as err:
    MISSING = err.name or "pandas"

ROOT = os.path.join("docs", "results", "regimes")
TITLE = "# Regime search"  # the first line of the README.md report writes (and only overwrites)
INSTALL = 'pip install -e ".[bench]" (the optional "bench" extra, or [with-hooks-cpu])'
#: options that make a regime command a seconds-long smoke run (the tests)
TINY = ("--max-classes", "80", "--epochs", "2", "--iterations-per-epoch", "1", "--workers", "1",
        "--eval-every", "1", "--patience", "1")
PAIRS = (("grouploss_ce", "plain CE"), ("proxyanchor", "ProxyAnchor"), ("triplet", "Triplet"),
         ("better", "better of PA/Triplet"))
METRICS = (("precision_at_1", "R@1"), ("mean_average_precision_at_r", "MAP@R"))
TITLES = {"grouploss": "GroupLoss", **dict(PAIRS[:3])}  # method -> table heading


def command(name: str, seeds: int, root: str, test: bool, tiny: bool,
            methods: Optional[Sequence[str]] = None, fresh: bool = False) -> List[str]:
    """The benchmark arguments of regime ``name`` (``methods``: default the regime's own;
    ``fresh``: delete its directory first)."""
    regime = REGIMES[name]
    out = os.path.join(root, ("test_" if test else "") + name)
    regime_args = list(regime.args)
    if tiny and "--warmup-epochs" in regime_args:  # below TINY's 2 epochs
        regime_args[regime_args.index("--warmup-epochs") + 1] = "1"
    args = ["run", "--seeds", str(seeds), "--output-dir", out, "--losses",
            ",".join(methods or regime.methods), *regime_args] + ["--fresh"] * fresh
    return args + ([] if test else ["--no-test"]) + (list(TINY) if tiny else [])


def bench(argv: List[str]) -> int:
    """``pml-grouploss-bench`` on ``argv`` (a :func:`command`). Its errors name its own options;
    a line after them says which of this script's they are."""
    from pml_grouploss.benchmark.cli import main

    try:
        return main(argv)
    except SystemExit as exit_:
        if exit_.code == 2:
            print("regime_search.py: (the benchmark's --output-dir above is "
                  f"{argv[argv.index('--output-dir') + 1]!r}, a regime's directory in --root)",
                  file=sys.stderr)
        raise


def per_seed(name: str, root: str) -> Optional[pd.DataFrame]:
    """One row per (method, seed) of a regime on validation, with its ``base``'s rows for the
    methods the regime does not retrain; None if it has not run."""
    path = os.path.join(root, name, "per_seed.csv")
    if not os.path.isfile(path):
        return None
    rows = pd.read_csv(path)
    base = os.path.join(root, REGIMES[name].base, "per_seed.csv")
    if name != REGIMES[name].base and os.path.isfile(base):
        other = pd.read_csv(base)
        rows = pd.concat([rows, other[~other.method.isin(rows.method)]], ignore_index=True)
    return rows


def paired(rows: pd.DataFrame, column: str) -> Dict[str, Tuple[float, float]]:
    """GroupLoss minus each comparison, per seed: (mean, 95% CI half-width) in points."""
    wide = rows.pivot_table(index="seed", columns="method", values=column)
    out = {"grouploss": mean_ci((100 * wide["grouploss"]).tolist())}
    better = max(("proxyanchor", "triplet"), key=lambda m: wide[m].mean())
    for other, _ in PAIRS:
        ref = wide[better if other == "better" else other]
        out[other] = mean_ci((100 * (wide["grouploss"] - ref)).dropna().tolist())
    return out


def _cell(mean_half: Tuple[float, float], sign: str = "+") -> str:
    """``mean ± half`` in points; the mean alone when there is no interval (one seed)."""
    mean, half = mean_half
    return f"{mean:{sign}.1f} ± {half:.1f}" if half == half else f"{mean:{sign}.1f}"


def table(rows_by_label: Dict[str, pd.DataFrame], prefix: str) -> str:
    """The paired table (Markdown, a line per label); ``prefix`` is ``"val_"`` or ``""`` (test
    columns)."""
    head = ["regime", "n", "GroupLoss R@1"] + [f"− {t} {m}" for _, m in METRICS for _, t in PAIRS]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for name, rows in rows_by_label.items():
        cells = []
        for metric, _ in METRICS:
            diffs = paired(rows, prefix + metric)
            cells += [_cell(diffs[o]) for o, _ in PAIRS]
        gl = mean_ci((100 * rows[rows.method == "grouploss"][prefix + "precision_at_1"]).tolist())
        n = int((rows.method == "grouploss").sum())
        lines.append(f"| {name} | {n} | {_cell(gl, '')} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def test_details(rows: pd.DataFrame) -> str:
    """Under a test table: each method's test R@1 and MAP@R (mean ± 95% CI) and GroupLoss minus
    each comparison per seed, in points (Markdown)."""
    lines = []
    for metric, short in METRICS:
        wide = 100 * rows.pivot_table(index="seed", columns="method", values=metric)
        means = ", ".join(f"{m} {_cell(mean_ci(wide[m].tolist()), '')}" for m in ALL)
        seeds = "; ".join(f"− {m} " + ", ".join(f"{d:+.1f}" for d in wide.grouploss - wide[m])
                          for m in ALL[1:])
        lines.append(f"- Test {short}: {means}. GroupLoss per seed "
                     f"({', '.join(str(s) for s in wide.index)}): {seeds}.")
    return "\n".join(lines) + "\n"


def method_means(rows_by_condition: Dict[str, pd.DataFrame]) -> str:
    """Each method's test R@1 / MAP@R, mean over seeds in %, a line per condition (Markdown)."""
    head = ["condition"] + [TITLES[m] for m in ALL]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for condition, rows in rows_by_condition.items():
        means = rows.groupby("method")[[metric for metric, _ in METRICS]].mean() * 100
        lines.append(f"| {condition} | " + " | ".join(
            " / ".join(f"{means.loc[m, metric]:.1f}" for metric, _ in METRICS) for m in ALL)
            + " |")
    return "\n".join(lines) + "\n"


def choose(root: str, condition: str = "clean") -> Dict[str, str]:
    """Each method's regime for the test run under ``condition``: among that condition's regimes
    that trained it on validation, the one with the largest mean validation R@1 + MAP@R."""
    chosen: Dict[str, str] = {}
    for method in ALL:
        best = -1.0
        for name, regime in REGIMES.items():
            path = os.path.join(root, name, "per_seed.csv")
            if regime.condition != condition or method not in regime.methods \
                    or not os.path.isfile(path):
                continue
            own = pd.read_csv(path)
            own = own[own.method == method]
            score = sum(own["val_" + metric].mean() for metric, _ in METRICS)
            if score > best:
                chosen[method], best = name, score
    return chosen


def test_rows(root: str, condition: str = "clean") -> Optional[pd.DataFrame]:
    """The test runs under ``condition``: each method's rows from the directory of its regime
    chosen on validation (``test_<regime>``), or None. Other ``test_*`` directories (a regime no
    longer chosen) and other methods' rows in them are left out (:func:`unused_test_dirs`)."""
    frames = []
    for method, name in choose(root, condition).items():
        path = os.path.join(root, "test_" + name, "per_seed.csv")
        if os.path.isfile(path):
            rows = pd.read_csv(path)
            frames.append(rows[rows.method == method])
    return pd.concat(frames, ignore_index=True) if frames else None


def unused_test_dirs(root: str) -> List[str]:
    """The ``test_*`` directories of ``root`` that no method's chosen regime reads under any
    condition (left from a ``test`` run before validation chose another regime)."""
    used = {"test_" + name for c in CONDITIONS for name in choose(root, c).values()}
    return sorted(d for d in os.listdir(root) if d.startswith("test_")
                  and os.path.isdir(os.path.join(root, d)) and d not in used)


def not_in_table(name: str, rows: pd.DataFrame, root: str) -> str:
    """Why a regime that has run on validation cannot be paired ("" if it can): the methods it
    lacks, with the command that adds them."""
    missing = [m for m in ALL if m not in set(rows.method)]
    base = REGIMES[name].base
    if not missing:
        return ""
    if name == base or set(missing) & set(REGIMES[name].methods):
        return f"no validation rows of {', '.join(missing)}: rerun `validate {name}`"
    if not os.path.isfile(os.path.join(root, base, "per_seed.csv")):
        return f"base `{base}` not validated yet: run `validate {base}`"
    return f"base `{base}` has no rows of {', '.join(missing)}: rerun `validate {base}`"


def report(root: str) -> str:
    """Write ``root/README.md``: the validation table, each method's chosen regime, and the
    test table once ``test`` has run. A regime that lacks a method (its base not validated
    yet) and a ``test_*`` directory no method's chosen regime reads are named, not counted."""
    validated = {k: r for k in REGIMES if (r := per_seed(k, root)) is not None}  # has run
    why = {k: not_in_table(k, r, root) for k, r in validated.items()}
    val = table({k: r for k, r in validated.items() if not why[k]}, "val_")
    text = [TITLE + " (issue 13)", "",
            "GroupLoss minus each comparison, paired per seed (same fold and seed), mean ± 95% CI "
            "over seeds, in points. Validation folds only (no test image read):", "", val]
    text += [f"- `{k}`: {r.description}; `python benchmarks/regime_search.py validate {k}`"
             + (" (**not run yet**)" if k not in validated else
                f" (**not in the table: {why[k]}**)" if why[k] else "")
             for k, r in REGIMES.items()]
    tested = {c: test_rows(root, c) for c in CONDITIONS}
    partial = {c: sorted(set(ALL) - set(r.method)) for c, r in tested.items() if r is not None}
    tested = {c: r for c, r in tested.items() if r is not None and not partial[c]}
    if tested:
        text += ["", "Every test run, a row per condition of the data (each method in its regime "
                 "chosen on validation; details below):", "", table(tested, ""),
                 "Each method's test R@1 / MAP@R (mean over seeds, in %):", "",
                 method_means(tested)]
    for condition in CONDITIONS:
        chosen = choose(root, condition)
        if chosen:
            text += ["", f"Test regimes under `{condition}` (each method's largest mean validation "
                     "R@1 + MAP@R among the regimes of that condition that trained it): "
                     + ", ".join(f"{m} `{r}`" for m, r in chosen.items()) + "."]
        if condition in tested:
            test = table({condition: tested[condition]}, "")
            text += ["", f"Test classes under `{condition}`, run once:", "", test,
                     test_details(tested[condition])]
        elif partial.get(condition):
            text += ["", f"No test table under `{condition}`: {', '.join(partial[condition])} "
                     f"not tested in the regime chosen now; run `test {condition}`."]
    unused = unused_test_dirs(root)
    if unused:
        text += ["", "Not read (regimes no longer chosen on validation; rerun `test` or remove "
                 "them): " + ", ".join(f"`{d}`" for d in unused) + "."]
    md = "\n".join(text) + "\n"
    with open(os.path.join(root, "README.md"), "w") as f:
        f.write(md)
    return md


def run_test(root: str, condition: str, seeds: int, tiny: bool, fresh: bool = False) -> int:
    """Train every method once more, in its regime chosen on validation under ``condition``,
    and evaluate on the test classes (one run of the benchmark per distinct regime)."""
    chosen = choose(root, condition)
    missing = sorted(set(ALL) - set(chosen))
    if missing:
        raise SystemExit(f"no validation results under {condition} for {missing}: run "
                         f"`validate {'default' if condition == 'clean' else condition}` first")
    for name in dict.fromkeys(chosen.values()):
        methods = [m for m in ALL if chosen[m] == name]
        code = bench(command(name, seeds, root, True, tiny, methods, fresh))
        if code:
            return code
    return 0


def check_args(parser: argparse.ArgumentParser, args: argparse.Namespace) -> None:
    """Refuse (``parser.error``, exit 2) what would do nothing or fail after the first run."""
    if MISSING:
        parser.error(f"regime_search needs {MISSING}: {INSTALL}")
    if args.seeds < 1:
        parser.error(f"--seeds must be at least 1 (got {args.seeds})")
    if args.action == "validate":
        if args.all == bool(args.regimes):
            parser.error("validate takes regime names or --all (every regime), "
                         + ("not both" if args.all else "none given") + "; regimes: "
                         + ", ".join(REGIMES))
        unknown = sorted(set(args.regimes) - set(REGIMES))
        if unknown:
            parser.error(f"unknown regimes {unknown}; choose from {', '.join(REGIMES)}")
        return check_root(parser, args.root)
    if args.all:
        parser.error(f"--all is for validate; {args.action} "
                     + ("takes no regimes" if args.action == "report" else
                        f"takes conditions ({', '.join(CONDITIONS)}; default clean)"))
    if args.action == "report" and (args.regimes or args.fresh):
        parser.error(f"report takes no regimes (got {' '.join(args.regimes)}): it reads every run "
                     "under --root" if args.regimes else "--fresh is for validate and test")
    wrong = sorted(set(args.regimes) - set(CONDITIONS))
    if wrong:
        parser.error(f"test takes conditions ({', '.join(CONDITIONS)}), not {', '.join(wrong)}: "
                     "each method's regime under a condition is chosen on validation")
    if not os.path.isdir(args.root):
        parser.error(f"--root {args.root}: no such directory (relative to {os.getcwd()}); run "
                     "`validate` first, or pass --root the directory of the regime runs")
    check_root(parser, args.root, args.action == "report")


def check_root(parser: argparse.ArgumentParser, root: str, report: bool = False) -> None:
    """Refuse a ``--root`` that cannot be a writable directory; for ``report`` (it writes
    ``README.md`` there), also one with no regime run, or whose README.md it did not write."""
    try:
        check_output_dir(root, "--root")
    except ValueError as err:
        parser.error(str(err))
    fix, readme = "pass --root the directory of the regime runs", os.path.join(root, "README.md")
    if not report:
        return
    if not any(os.path.isdir(os.path.join(root, p + n)) for n in REGIMES for p in ("", "test_")):
        parser.error(f"--root {root}: no regime run in it (no directory named after a regime), "
                     f"nothing to report; {fix}, or run `validate` first")
    try:
        with open(readme, encoding="utf-8", errors="replace") as f:
            ours = f.readline().startswith(TITLE) and os.access(readme, os.W_OK)
    except FileNotFoundError:
        return
    except OSError:  # a directory, unreadable
        ours = False
    if not ours:
        parser.error(f"--root {root}: its README.md is read-only or not one report wrote (its "
                     f"first line is not {TITLE!r}...); report will not overwrite it: move it "
                     f"away, or {fix}")


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("action", choices=("validate", "report", "test"))
    parser.add_argument("regimes", nargs="*", help="validate: of " + ", ".join(REGIMES)
                        + "; test: conditions, of " + ", ".join(CONDITIONS) + " (default clean)")
    parser.add_argument("--all", action="store_true", help="validate: every regime")
    parser.add_argument("--seeds", type=int, default=5)
    parser.add_argument("--root", default=ROOT, help="the directory of the regime runs (default "
                        f"{ROOT}, relative to the current directory; report and test need it)")
    parser.add_argument("--tiny", action="store_true", help="seconds-long smoke runs (tests)")
    parser.add_argument("--fresh", action="store_true", help="validate, test: delete each "
                        "regime's directory first instead of resuming in it")
    args = parser.parse_args(argv)
    check_args(parser, args)
    if args.action == "report":
        print(report(args.root))
        return 0
    if args.action == "test":  # lazy: stop at the first run that fails
        codes = (run_test(args.root, c, args.seeds, args.tiny, args.fresh)
                 for c in args.regimes or ["clean"])
    else:
        codes = (bench(command(name, args.seeds, args.root, False, args.tiny, fresh=args.fresh))
                 for name in (list(REGIMES) if args.all else dict.fromkeys(args.regimes)))
    return next((code for code in codes if code), 0)


if __name__ == "__main__":
    sys.exit(main())
