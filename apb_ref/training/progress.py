"""A dependency-free progress bar: one redrawn line on a terminal, a few plain lines in logs."""
from __future__ import annotations

import sys
import time
from typing import TextIO


def format_seconds(seconds: float) -> str:
    seconds = int(round(seconds))
    h, rem = divmod(seconds, 3600)
    m, s = divmod(rem, 60)
    return f"{h}:{m:02d}:{s:02d}" if h else f"{m:d}:{s:02d}"


class Progress:
    """`update(done_items, **stats)` after each step; shows items/s and the ETA of this bar."""

    def __init__(self, total_steps: int, label: str, items_per_step: int = 1, stream: TextIO | None = None,
                 enabled: bool = True, width: int = 24):
        self.total, self.label, self.width = total_steps, label, width
        self.stream = stream or sys.stderr
        self.enabled = enabled
        self.interactive = enabled and getattr(self.stream, "isatty", lambda: False)()
        self.start = time.perf_counter()
        self.steps = self.items = 0
        self.last_draw, self.next_report = 0.0, 30.0

    def update(self, items: int, **stats: float) -> None:
        self.steps += 1
        self.items += items
        if not self.enabled:
            return
        now = time.perf_counter()
        if self.interactive:
            if now - self.last_draw < 0.1 and self.steps < self.total:
                return
            self.last_draw = now
            self.stream.write("\r" + self._line(now, stats) + "\033[K")
        elif now - self.start >= self.next_report:  # logs: a line every 30 s, not a flood
            self.next_report += 30.0
            self.stream.write(self._line(now, stats) + "\n")
        self.stream.flush()

    def _line(self, now: float, stats: dict[str, float]) -> str:
        elapsed = max(now - self.start, 1e-9)
        filled = int(self.width * self.steps / max(self.total, 1))
        rate = self.items / elapsed
        eta = (self.total - self.steps) * elapsed / max(self.steps, 1)
        shown = " ".join(f"{k} {v:.4f}" if isinstance(v, float) else f"{k} {v}" for k, v in stats.items())
        return (f"{self.label} [{'#' * filled}{'.' * (self.width - filled)}] {self.steps}/{self.total} "
                f"{shown} {rate:.0f} img/s ETA {format_seconds(eta)}")

    def close(self) -> None:
        if self.interactive:
            self.stream.write("\n")
            self.stream.flush()

    @property
    def items_per_second(self) -> float:
        return self.items / max(time.perf_counter() - self.start, 1e-9)
