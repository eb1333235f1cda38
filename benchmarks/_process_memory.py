"""The growth of this process's peak resident set during one call (Linux ``/proc``, glibc)."""
from __future__ import annotations

import ctypes
from typing import Callable, Optional


def malloc_returns_memory(returns: bool) -> None:
    """glibc's thresholds. ``True`` (memory steps): blocks >= 64 KiB are mmapped and unmapped
    on free, so the peak resident size sees every tensor. ``False`` (timing): 32 MiB, the
    ceiling glibc's own adaptive threshold reaches in a long-running process, so blocks are
    reused as in training. Timing with ``True`` page-faults every tensor of 64 KiB or more on
    each step: it doubled the steps at n = 120, m = 100 and compressed their ratios (GroupLoss
    1.46x NormalizedSoftmaxLoss against 1.97x; docs/results/loss_speed, runs H and M)."""
    mmap_threshold, trim_threshold = (64 << 10, 128 << 10) if returns else (32 << 20, 64 << 20)
    try:
        libc = ctypes.CDLL("libc.so.6")
        libc.mallopt(-3, mmap_threshold)  # M_MMAP_THRESHOLD
        libc.mallopt(-1, trim_threshold)  # M_TRIM_THRESHOLD
        if returns:
            libc.malloc_trim(0)  # the free blocks the timed steps left in the heap
    except OSError:  # not glibc: the allocator keeps its own thresholds
        pass


def _status_kib(field: str) -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    return -1


def _reset_peak() -> bool:
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


def peak_growth_mib(call: Callable[[], object]) -> Optional[float]:
    """MiB the peak resident set grew during ``call()`` over the resident size just before it,
    with glibc returning every block of 64 KiB or more to the OS for that call (freed memory
    is not reused unnoticed); ``None`` where the peak cannot be reset."""
    malloc_returns_memory(True)
    try:
        before = _status_kib("VmRSS")
        if not _reset_peak():
            return None
        call()
        return (_status_kib("VmHWM") - before) / 1024
    finally:
        malloc_returns_memory(False)
