"""Cost accounting: denoiser evaluations (images × forward passes), wall time and peak memory."""

from __future__ import annotations

import contextlib
import threading
import time
from dataclasses import dataclass, field

import torch


def _rss_bytes() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * 4096


@dataclass
class Cost:
    evaluations: int = 0
    seconds: float = 0.0
    peak_bytes: int = 0
    samples: list[int] = field(default_factory=list, repr=False)

    def add(self, other: Cost) -> None:
        self.evaluations += other.evaluations
        self.seconds += other.seconds
        self.peak_bytes = max(self.peak_bytes, other.peak_bytes)


@contextlib.contextmanager
def measure(denoiser: torch.nn.Module, interval: float = 0.02):
    """Count every image the denoiser processes; track peak memory above the level at entry.

    Memory is the process's resident set on the CPU (sampled every `interval` s) or the CUDA
    allocator's peak on a GPU.
    """
    cost = Cost()
    handle = denoiser.register_forward_pre_hook(
        lambda module, args, kwargs: setattr(cost, "evaluations", cost.evaluations + _batch(args, kwargs)),
        with_kwargs=True)
    cuda = torch.cuda.is_available()
    if cuda:
        torch.cuda.reset_peak_memory_stats()
    baseline, stop = (torch.cuda.memory_allocated() if cuda else _rss_bytes()), threading.Event()

    def watch():
        while not stop.is_set():
            cost.peak_bytes = max(cost.peak_bytes, _rss_bytes() - baseline)
            stop.wait(interval)

    watcher = threading.Thread(target=watch, daemon=True)
    if not cuda:
        watcher.start()
    start = time.perf_counter()
    try:
        yield cost
    finally:
        cost.seconds = time.perf_counter() - start
        stop.set()
        handle.remove()
        if cuda:
            cost.peak_bytes = torch.cuda.max_memory_allocated() - baseline
        else:
            watcher.join()


def _batch(args, kwargs) -> int:
    first = args[0] if args else kwargs.get("hidden_states", kwargs.get("sample"))
    return int(first.shape[0])
