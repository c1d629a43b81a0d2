"""A dependency-free progress bar on stderr: `desc  done/total unit  rate unit/s  elapsed`.

    with Progress(total=len(images), unit="images", desc="features") as bar:
        for batch in batches:
            ...
            bar.update(len(batch))

`quiet=True` silences it. The bar redraws at most every `interval` seconds, on one line.
"""

from __future__ import annotations

import sys
import time
from typing import TextIO


class Progress:
    """Counts work done and prints its rate; a context manager that ends the line on exit."""

    def __init__(self, total: float | None, *, unit: str = "items", desc: str = "",
                 quiet: bool = False, stream: TextIO | None = None, interval: float = 0.5):
        self.total = total
        self.unit = unit
        self.desc = desc
        self.quiet = quiet
        self.stream = sys.stderr if stream is None else stream
        self.interval = interval
        self.done = 0
        self._start = time.perf_counter()
        self._last_draw = -float("inf")

    @property
    def rate(self) -> float:
        """Units per second since the bar started."""
        elapsed = time.perf_counter() - self._start
        return self.done / elapsed if elapsed > 0 else 0.0

    def update(self, n: float = 1) -> None:
        """Adds `n` units of finished work and redraws if `interval` has passed."""
        self.done += n
        now = time.perf_counter()
        if now - self._last_draw >= self.interval:
            self._last_draw = now
            self._draw()

    def close(self) -> None:
        """Draws the final state and ends the line."""
        self._draw()
        if not self.quiet:
            self.stream.write("\n")
            self.stream.flush()

    def __enter__(self) -> "Progress":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def _draw(self) -> None:
        if self.quiet:
            return
        elapsed = time.perf_counter() - self._start
        count = f"{self.done:.0f}" if self.total is None else f"{self.done:.0f}/{self.total:.0f}"
        bar = ""
        if self.total:
            filled = int(20 * min(self.done / self.total, 1.0))
            bar = "[" + "#" * filled + "." * (20 - filled) + "] "
        prefix = f"{self.desc}: " if self.desc else ""
        self.stream.write(f"\r{prefix}{bar}{count} {self.unit}  "
                          f"{self.rate:.1f} {self.unit}/s  {elapsed:.0f}s")
        self.stream.flush()
