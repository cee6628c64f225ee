"""Step schedules of the trainer: the learning rate (linear warm-up, cosine decay) and the L1 ramp."""

from __future__ import annotations

import math


def lr_factor(step: int, total_steps: int, warmup_steps: int, min_ratio: float) -> float:
    """Linear warm-up over `warmup_steps`, then cosine decay from 1 to `min_ratio` at `total_steps`."""
    if warmup_steps > 0 and step < warmup_steps:
        return (step + 1) / warmup_steps
    span = max(1, total_steps - warmup_steps)
    t = min(1.0, (step - warmup_steps) / span)
    return min_ratio + (1.0 - min_ratio) * 0.5 * (1.0 + math.cos(math.pi * t))


def warmup_factor(step: int, warmup_steps: int) -> float:
    """Linear ramp from 1/warmup_steps to 1 (for the L1 coefficient)."""
    return 1.0 if warmup_steps <= 0 else min(1.0, (step + 1) / warmup_steps)
