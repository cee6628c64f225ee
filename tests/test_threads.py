"""backend.common.threads: the idle-core count and the burst that borrows them."""

import os

import torch

from backend.common import threads


def test_idle_cores_is_a_core_count():
    n = threads.idle_cores(0.02)
    assert 1 <= n <= (os.cpu_count() or 1)


def test_burst_borrows_idle_cores_and_gives_them_back(monkeypatch):
    before = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        monkeypatch.setattr(threads, "idle_cores", lambda sample_s=threads.SAMPLE_S: 3)
        with threads.burst_threads(limit=2) as n:
            assert n == 2 and torch.get_num_threads() == 2  # capped by the limit
        assert torch.get_num_threads() == 1
        monkeypatch.setattr(threads, "idle_cores", lambda sample_s=threads.SAMPLE_S: 1)
        torch.set_num_threads(2)
        with threads.burst_threads() as n:
            assert n == 2  # never fewer threads than the caller had
        assert torch.get_num_threads() == 2
    finally:
        torch.set_num_threads(before)


def test_busy_cores_are_not_counted(monkeypatch):
    """/proc/stat showing half the jiffies idle on 4 cores -> 2 idle cores."""
    samples = iter([(100, 1000), (150, 1100)])
    monkeypatch.setattr(threads, "_cpu_times", lambda: next(samples))
    monkeypatch.setattr(threads.os, "cpu_count", lambda: 4)
    monkeypatch.setattr(threads.time, "sleep", lambda s: None)
    assert threads.idle_cores() == 2
