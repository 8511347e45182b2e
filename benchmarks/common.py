"""Shared benchmark helpers: process settings, interleaved timing on the thread-CPU clock, peak memory.

Import this module before torch (`import common` first): `PROCESS_ENV` only takes effect if set
before torch loads OpenMP.

- OMP_WAIT_POLICY=PASSIVE: idle OpenMP workers sleep instead of spinning against other processes.
- Not THP_MEM_ALLOC_ENABLE=1 (transparent huge pages for large torch tensors): it made a fresh
  (H, N, N) float16 copy 4x cheaper in isolation, but a whole 224 px upload 1.3-1.5x slower and
  its peak RSS 90-170 MB higher on this host (compaction stalls, partly used huge pages).

Timing is thread-CPU time (`time.thread_time`): on a shared host it does not count the time other
processes hold the core. It undercounts work on other threads, so the benchmarks run torch with one
intra-op thread (`rvt.device.thread_policy(1)`), and on CUDA they use wall-clock time with a
synchronise instead.
"""
from __future__ import annotations

import os

PROCESS_ENV = {"OMP_WAIT_POLICY": "PASSIVE"}
for _key, _value in PROCESS_ENV.items():
    os.environ.setdefault(_key, _value)

import statistics  # noqa: E402
import time  # noqa: E402
from collections.abc import Callable  # noqa: E402


def interleaved_medians(variants: dict[str, Callable[[], object]], repeats: int, warmup: int = 1,
                        clock: Callable[[], float] = time.thread_time) -> dict[str, float]:
    """Median seconds per call of each variant, calling them round-robin `repeats` times."""
    for fn in variants.values():
        for _ in range(warmup):
            fn()
    samples = {name: [] for name in variants}
    for _ in range(repeats):
        for name, fn in variants.items():
            start = clock()
            fn()
            samples[name].append(clock() - start)
    return {name: statistics.median(times) for name, times in samples.items()}


def _status(key: str) -> int:
    with open("/proc/self/status") as status:
        return next(int(line.split()[1]) * 1024 for line in status if line.startswith(key))


def peak_growth(fn: Callable[[], object]) -> tuple[object, int]:
    """(fn's result, bytes the process's peak RSS rose above its RSS before the call); Linux only.

    Resets the kernel's high-water mark (VmHWM) through /proc/self/clear_refs first, so earlier
    calls do not hide this one's peak.
    """
    base = _status("VmRSS:")
    with open("/proc/self/clear_refs", "w") as refs:
        refs.write("5")
    result = fn()
    return result, _status("VmHWM:") - base


def print_table(header: list[str], rows: list[list[str]]) -> None:
    widths = [max(len(str(r[i])) for r in [header, *rows]) for i in range(len(header))]
    line = lambda cells: "| " + " | ".join(str(c).ljust(w) for c, w in zip(cells, widths)) + " |"  # noqa: E731
    print(line(header))
    print("|" + "|".join("-" * (w + 2) for w in widths) + "|")
    for row in rows:
        print(line(row))
