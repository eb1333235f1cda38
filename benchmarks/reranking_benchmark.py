"""Time and peak memory of k-reciprocal re-ranking: dense reference path vs sparse exact path.

Usage::

    python benchmarks/reranking_benchmark.py                     # every setting, N = 1k/2k/10k
    python benchmarks/reranking_benchmark.py --settings CUB200 --both 2000 --sparse
    python benchmarks/reranking_benchmark.py --settings default --both 2000 5000 10000 \\
        --sparse 50000 100000                                     # the large-N scaling runs

Settings (``--settings``): ``default`` (Zhong et al.'s k1=20, k2=6, lambda=0.3) and the four
GL++ Table 7 settings (``pml_grouploss.inference.TABLE7_PRESETS``: CUB200 50/20/0.85,
Cars196 50/20/0.9, InShop 4/2/0.7, SOP 50/20/0.94).

Each measurement runs in a fresh subprocess. "peak memory" is the growth of the process's
peak resident set size (``ru_maxrss``) over its resident size just before the call (after
imports and data generation), so it counts numpy, scipy and faiss allocations alike. Time is the
median over ``--repeats`` subprocesses (the dense and sparse runs alternate, so a change of the
machine's load hits both). Data: 128-d clustered embeddings (float32, ~10 items per class),
query set == gallery set (``ref_includes_query=True``, the deep-metric-learning protocol), top-10.
The dense path is ``dense_re_ranking_knn`` (float64 cdist + the reference-convention ``N x N``
algorithm); the sparse path is ``sparse_re_ranking_knn`` (what ``KReciprocalReRanker`` runs).
Targets: sparse at least as fast as dense at every setting for N >= 1,000 (issue 10); N=10k
sparse >= 5x faster and <= 1/10 of the dense peak memory; N=100k sparse in <= 10 min and
<= 4 GB on 2 CPU cores (issue 3).
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time

from pml_grouploss.inference import TABLE7_PRESETS

K = 10
#: (k1, k2, lambda_value): Zhong et al.'s default and GL++ Table 7 per dataset
SETTINGS = {
    "default": (20, 6, 0.3),
    **{name: (p["k1"], p["k2"], p["lambda_value"]) for name, p in TABLE7_PRESETS.items()},
}


def _data(n: int, dim: int, seed: int = 0):
    import numpy as np

    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(max(2, n // 10), dim)).astype(np.float32)
    labels = rng.integers(0, len(centres), n)
    return (centres[labels] + 0.7 * rng.normal(size=(n, dim))).astype(np.float32)


def _rss_mib() -> float:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return float("nan")


def _child(method: str, n: int, setting: str, dim: int, out: str) -> None:
    import resource

    import numpy as np

    from pml_grouploss.functional import dense_re_ranking_knn, sparse_re_ranking_knn

    x = _data(n, dim)
    fn = dense_re_ranking_knn if method == "dense" else sparse_re_ranking_knn
    base = _rss_mib()
    t = time.perf_counter()
    d, i = fn(x, K, x, True, *SETTINGS[setting])
    secs = time.perf_counter() - t
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    np.save(out + ".npy", i)
    with open(out + ".json", "w") as f:
        json.dump({"seconds": secs, "peak_mib": peak - base}, f)


def _run(method: str, n: int, setting: str, dim: int, tmp: str) -> dict:
    out = os.path.join(tmp, f"{setting}_{method}_{n}")
    cmd = [sys.executable, __file__, "--child", method, str(n), setting, "--dim", str(dim)]
    subprocess.run(cmd + ["--tmp", tmp], check=True)
    with open(out + ".json") as f:
        return json.load(f)


def _median_runs(methods, n, setting, dim, tmp, repeats) -> dict:
    """``{method: {"seconds": median, "peak_mib": max}}`` over alternating fresh runs."""
    runs = {m: [] for m in methods}
    for _ in range(repeats):
        for m in methods:
            runs[m].append(_run(m, n, setting, dim, tmp))
    return {
        m: {
            "seconds": statistics.median(r["seconds"] for r in rs),
            "peak_mib": max(r["peak_mib"] for r in rs),
        }
        for m, rs in runs.items()
    }


def machine() -> str:
    """CPU model, torch's CPU capability, core count, date and load: the table's context."""
    import torch

    model = "unknown CPU"
    with open("/proc/cpuinfo") as f:
        for line in f:
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    load = os.getloadavg()[0]
    return (
        f"{model}, "
        f"torch.backends.cpu.get_cpu_capability()={torch.backends.cpu.get_cpu_capability()}, "
        f"{os.cpu_count()} cores, load average {load:.1f} at start, "
        f"{time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}"
    )


def _row(setting, n, res, same) -> str:
    k1, k2, lam = SETTINGS[setting]
    s = res["sparse"]
    if "dense" not in res:
        return (f"| {setting} | {k1}/{k2}/{lam} | {n} | - | - | {s['seconds']:.2f} "
                f"| {s['peak_mib']:.0f} | - | - | - |")
    d = res["dense"]
    # sparse peak / dense peak, both floored at 1 MiB (a peak below it is noise of the process)
    memory = max(s["peak_mib"], 1) / max(d["peak_mib"], 1)
    return (
        f"| {setting} | {k1}/{k2}/{lam} | {n} | {d['seconds']:.2f} | {d['peak_mib']:.0f} | "
        f"{s['seconds']:.2f} | {s['peak_mib']:.0f} | {d['seconds'] / s['seconds']:.1f}x | "
        f"{memory:.2f} | {100 * same:.2f}% |"
    )


def check_args(p: argparse.ArgumentParser, a: argparse.Namespace) -> None:
    """Refuse (``p.error``, exit 2) what would fail in a child or print an empty or meaningless
    table."""
    for flag in ("repeats", "dim"):
        if getattr(a, flag) < 1:
            p.error(f"--{flag} must be at least 1 (got {getattr(a, flag)})")
    if not a.settings:
        p.error(f"--settings needs at least one of {', '.join(SETTINGS)}")
    if not a.both and not a.sparse:
        p.error("nothing to measure: give --both and/or --sparse sizes N")
    small = [n for n in a.both + a.sparse if n <= K]
    if small:
        p.error(f"--both/--sparse: N must exceed {K} (the top-{K} neighbours each query keeps "
                f"besides itself are compared), got {' '.join(map(str, small))}")


def main(argv=None) -> None:
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--settings", nargs="*", default=list(SETTINGS), choices=list(SETTINGS),
                   help="at least one (default all)")
    p.add_argument("--both", type=int, nargs="*", default=[1000, 2000, 10000],
                   help=f"N for dense and sparse (each N > {K}, the top-{K} compared)")
    p.add_argument("--sparse", type=int, nargs="*", default=[], help="N for sparse only")
    p.add_argument("--repeats", type=int, default=1, help="fresh runs per cell (median time)")
    p.add_argument("--dim", type=int, default=128, help="embedding dimension (>= 1)")
    p.add_argument("--tmp", default="/tmp/reranking_benchmark")
    p.add_argument("--child", nargs=3, metavar=("METHOD", "N", "SETTING"), help=argparse.SUPPRESS)
    a = p.parse_args(argv)
    if not a.child:
        check_args(p, a)
    try:
        os.makedirs(a.tmp, exist_ok=True)
        tempfile.TemporaryFile(dir=a.tmp).close()  # the children write their results there
    except OSError as err:
        p.error(f"--tmp {a.tmp}: cannot be created or written ({err.strerror})")
    if importlib.util.find_spec("faiss") is None:
        p.error("the sparse path's k-NN needs faiss: pip install faiss-cpu (or faiss-gpu)")
    if a.child:
        method, n, setting = a.child
        _child(method, int(n), setting, a.dim, os.path.join(a.tmp, f"{setting}_{method}_{n}"))
        return
    import numpy as np

    print(f"Machine: {machine()}")
    print("| setting | k1/k2/λ | N | dense time (s) | dense peak (MiB) | sparse time (s) | "
          "sparse peak (MiB) | speed-up | sparse/dense peak | same top-10 |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    for setting in a.settings:
        for n in a.both:
            res = _median_runs(("sparse", "dense"), n, setting, a.dim, a.tmp, a.repeats)
            dense, sparse = (
                np.load(os.path.join(a.tmp, f"{setting}_{m}_{n}.npy")) for m in ("dense", "sparse")
            )
            print(_row(setting, n, res, float(np.mean(dense == sparse))), flush=True)
        for n in a.sparse:
            res = _median_runs(("sparse",), n, setting, a.dim, a.tmp, a.repeats)
            print(_row(setting, n, res, None), flush=True)


if __name__ == "__main__":
    main()
