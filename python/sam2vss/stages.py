"""Per-stage wall time of the engine loop (decode wait, encode, detect, propagate, aggregate and
vote, write wait), accumulated over a run.

On a GPU a stage's work is asynchronous, so `time` synchronises the device at both ends when the
timer is `synced` (bench does this; a production refine leaves it off and reports only the host
waits, which need no sync). The numbers are what `sam2vss bench` and the refine manifest print.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import contextmanager

import torch


class Stages:
    def __init__(self, device: str | torch.device = "cpu", synced: bool = False):
        self.device = torch.device(device)
        self.synced = synced and self.device.type == "cuda"
        self.seconds: dict[str, float] = {}
        self.windows: list[tuple[float, int]] = []  # (wall seconds, frames) per window, end to end

    def add(self, name: str, seconds: float) -> None:
        self.seconds[name] = self.seconds.get(name, 0.0) + seconds

    @contextmanager
    def time(self, name: str) -> Iterator[None]:
        if self.synced:
            torch.cuda.synchronize(self.device)
        t0 = time.perf_counter()
        try:
            yield
        finally:
            if self.synced:
                torch.cuda.synchronize(self.device)
            self.add(name, time.perf_counter() - t0)

    def reset(self) -> None:
        self.seconds, self.windows = {}, []

    def per_frame_ms(self, frames: int) -> dict[str, float]:
        return {k: round(1e3 * v / max(frames, 1), 3) for k, v in self.seconds.items()}

    def share(self, name: str, total_s: float) -> float:
        """The stage's share of a run's wall time."""
        return self.seconds.get(name, 0.0) / max(total_s, 1e-12)
