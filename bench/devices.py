"""The device a bench runs on: checked once, named in its results, and synchronised before a clock is read.

CUDA work is asynchronous: `time.perf_counter()` right after a launch reads the time it took to queue the
kernels, not to run them, so every wall-clock timing of a bench ends with `synchronize(device)`.
"""

from __future__ import annotations

import platform
import sys
from pathlib import Path

DEVICES = ("cpu", "cuda")


def check_device(device: str) -> None:
    """Exit with one line when `device` is cuda and no CUDA GPU is visible (a bench flag, not a traceback)."""
    import torch

    if device == "cuda" and not torch.cuda.is_available():
        print("error: --device cuda but torch sees no CUDA GPU (torch.cuda.is_available() is False)", file=sys.stderr)
        sys.exit(2)


def device_name(device: str) -> str:
    """What runs the bench: the GPU's name (torch.cuda.get_device_name), or the CPU's model name."""
    import torch

    if device.startswith("cuda"):
        return torch.cuda.get_device_name(device)
    cpuinfo = Path("/proc/cpuinfo")
    if cpuinfo.is_file():
        for line in cpuinfo.read_text().splitlines():
            if line.startswith("model name"):
                return f"CPU: {line.split(':', 1)[1].strip()}"
    return f"CPU: {platform.processor() or platform.machine()}"


def synchronize(device: str) -> None:
    """Wait for the device's queued work (a no-op on CPU)."""
    import torch

    if device.startswith("cuda"):
        torch.cuda.synchronize(device)
