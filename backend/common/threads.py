"""How many torch threads a burst of work the user waits for should use: the cores that are idle now.

torch's intra-op threads spin while they wait for each other; when the cores are busy (the browser, a
dictionary training in the background, another job) two threads fighting over one free core made an
Effects panel that takes 3 s on an idle 2-core machine take 45 s (measured 2026-12-05). So the app runs
its small passes on half the cores (explorer/data.py), and a long computation the user waits for (an
Effects panel, a steered generation) borrows the cores that are idle at its start, for its duration.
Idle cores come from /proc/stat sampled over a few tens of milliseconds (Linux), else the 1-minute load
average, which lags by a minute.
"""

from __future__ import annotations

import os
import time
from contextlib import contextmanager
from typing import Iterator

SAMPLE_S = 0.05  # long enough to see a busy core, short beside the seconds of work it decides


def _cpu_times() -> tuple[int, int] | None:
    """(idle + iowait jiffies, total jiffies) of all CPUs, or None where /proc/stat does not exist."""
    try:
        with open("/proc/stat") as f:
            fields = [int(v) for v in f.readline().split()[1:]]
    except (OSError, ValueError):
        return None
    return fields[3] + (fields[4] if len(fields) > 4 else 0), sum(fields)


def idle_cores(sample_s: float = SAMPLE_S) -> int:
    """Cores idle now (at least 1): the idle share of a short /proc/stat sample times the core count."""
    n = os.cpu_count() or 1
    before = _cpu_times()
    if before is None:
        try:
            return max(1, min(n, round(n - os.getloadavg()[0])))
        except OSError:
            return 1
    time.sleep(sample_s)
    after = _cpu_times()
    total = after[1] - before[1]
    share = (after[0] - before[0]) / total if total > 0 else 1.0
    return max(1, min(n, round(n * share)))


@contextmanager
def burst_threads(limit: int = 8) -> Iterator[int]:
    """torch uses max(its current threads, the idle cores, at most `limit`) inside the block; yields the count."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(max(before, min(limit, idle_cores())))
    try:
        yield torch.get_num_threads()
    finally:
        torch.set_num_threads(before)
