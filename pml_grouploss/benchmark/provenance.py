"""Where a result came from: the checkout's commit, the machine and the package versions.
Kept free of the benchmark's optional dependencies, so that the stand-alone scripts in
``benchmarks/`` record the same facts."""
from __future__ import annotations

import contextlib
import os
from typing import Any, Dict, Optional

ENVIRONMENT_PACKAGES = ("torch", "torchvision", "pytorch-metric-learning", "numpy", "scipy",
                        "scikit-learn", "faiss-cpu", "faiss-gpu", "record-keeper", "pml_grouploss")


def git_commit() -> Optional[str]:
    """The checkout's commit (with ``+dirty`` for uncommitted changes), None outside git."""
    import subprocess

    try:
        out = subprocess.run(["git", "describe", "--always", "--abbrev=40", "--dirty=+dirty",
                              "--exclude=*"], cwd=os.path.dirname(os.path.abspath(__file__)),
                             capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.strip() if out.returncode == 0 else None


def environment() -> Dict[str, Any]:
    """Versions, threads and machine of this process: CPU training is deterministic for a fixed
    environment, but another torch build or thread count gives other roundings. Packages that
    are not installed (e.g. faiss-gpu beside faiss-cpu) are left out."""
    import platform
    from importlib import metadata

    import torch

    versions = {}
    for name in ENVIRONMENT_PACKAGES:
        with contextlib.suppress(metadata.PackageNotFoundError):
            versions[name] = metadata.version(name)
    cpu = None  # the first "model name" of /proc/cpuinfo, else platform.processor()
    with contextlib.suppress(OSError), open("/proc/cpuinfo") as f:
        cpu = next((line.split(":", 1)[1].strip() for line in f if line.startswith("model name")),
                   None)
    return {"git_commit": git_commit(), "python": platform.python_version(),
            "platform": platform.platform(), "torch_threads": torch.get_num_threads(),
            "cpu_count": os.cpu_count(), "cpu_model": cpu or platform.processor() or None,
            "cpu_capability": torch.backends.cpu.get_cpu_capability(),
            "cuda": torch.version.cuda if torch.cuda.is_available() else None,
            "packages": versions}
