"""Time and peak memory of k-reciprocal re-ranking: dense reference path vs sparse exact path.

Usage::

    python benchmarks/reranking_benchmark.py                      # 2k/5k/10k both, 50k/100k sparse
    python benchmarks/reranking_benchmark.py --both 2000 --sparse   # N=2k only, both paths

Each measurement runs in a fresh subprocess. "peak memory" is the growth of the process's
peak resident set size (``ru_maxrss``) over its resident size just before the call (after
imports and data generation), so it counts numpy, scipy and faiss allocations alike.
Data: 128-d clustered embeddings (float32, ~10 items per class), query set == gallery set
(``ref_includes_query=True``, the deep-metric-learning protocol), k1=20, k2=6, lambda=0.3, top-10.
The dense path is ``dense_re_ranking_knn`` (float64 cdist + the reference-convention
``N x N`` algorithm); the sparse path is ``KReciprocalReRanker`` / ``sparse_re_ranking_knn``.
Targets (issue 3): N=10k sparse >= 5x faster and <= 1/10 of the dense peak memory; N=100k
sparse in <= 10 min and <= 4 GB on 2 CPU cores.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys

K = 10


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


def _child(method: str, n: int, dim: int, out: str) -> None:
    import resource
    import time

    import numpy as np

    from pml_grouploss.functional.reranking import dense_re_ranking_knn, sparse_re_ranking_knn

    x = _data(n, dim)
    fn = dense_re_ranking_knn if method == "dense" else sparse_re_ranking_knn
    base = _rss_mib()
    t = time.perf_counter()
    d, i = fn(x, K, x, True, 20, 6, 0.3)
    secs = time.perf_counter() - t
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    np.save(out + ".npy", i)
    with open(out + ".json", "w") as f:
        json.dump({"method": method, "n": n, "seconds": secs, "peak_mib": peak - base}, f)


def _run(method: str, n: int, dim: int, tmp: str) -> dict:
    out = os.path.join(tmp, f"{method}_{n}")
    cmd = [sys.executable, __file__, "--child", method, str(n), "--dim", str(dim), "--tmp", tmp]
    subprocess.run(cmd, check=True)
    with open(out + ".json") as f:
        return json.load(f)


def main(argv=None) -> None:
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--both", type=int, nargs="*", default=[2000, 5000, 10000])
    p.add_argument("--sparse", type=int, nargs="*", default=[50000, 100000])
    p.add_argument("--dim", type=int, default=128)
    p.add_argument("--tmp", default="/tmp/reranking_benchmark")
    p.add_argument("--child", nargs=2, metavar=("METHOD", "N"), help=argparse.SUPPRESS)
    a = p.parse_args(argv)
    os.makedirs(a.tmp, exist_ok=True)
    if a.child:
        _child(
            a.child[0], int(a.child[1]), a.dim, os.path.join(a.tmp, f"{a.child[0]}_{a.child[1]}")
        )
        return
    import numpy as np

    rows = []
    print(
        "| N | dense time (s) | dense peak (MiB) | sparse time (s) | sparse peak (MiB) | speed-up | memory ratio | same top-10 |"
    )
    print("|---|---|---|---|---|---|---|---|")
    for n in a.both:
        s = _run("sparse", n, a.dim, a.tmp)
        d = _run("dense", n, a.dim, a.tmp)
        same = float(
            np.mean(
                np.load(os.path.join(a.tmp, f"dense_{n}.npy"))
                == np.load(os.path.join(a.tmp, f"sparse_{n}.npy"))
            )
        )
        print(
            f"| {n} | {d['seconds']:.1f} | {d['peak_mib']:.0f} | {s['seconds']:.1f} | {s['peak_mib']:.0f} | "
            f"{d['seconds'] / s['seconds']:.1f}x | 1/{d['peak_mib'] / max(s['peak_mib'], 1):.0f} | {100 * same:.2f}% |",
            flush=True,
        )
        rows.append((n, d, s))
    for n in a.sparse:
        s = _run("sparse", n, a.dim, a.tmp)
        print(f"| {n} | - | - | {s['seconds']:.1f} | {s['peak_mib']:.0f} | - | - | - |", flush=True)


if __name__ == "__main__":
    main()
