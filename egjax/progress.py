"""Progress of long steps: a tqdm bar on a terminal, and always a one-line summary.

    with progress.Step(len(images), "features", "images", quiet=quiet) as bar:
        for batch in batches:
            ...
            bar.update(len(batch))
    # stderr: "features: 200 images in 12.3 s (16.3 images/s)"

The bar (tqdm) is drawn only when stderr is a terminal and `quiet` is False: in a log,
redrawn bars would pile up. When the step completes, the bar is cleared and one line
says what ran, how much, how long and how fast, quiet or not, so a log still records it.
tqdm does not count while it is disabled, hence the small wrapper that keeps the count.
"""

from __future__ import annotations

import sys
import time

from tqdm import tqdm


class Step:
    """A long step of `total` `unit`s (None: unknown) named `desc`: its tqdm bar, count and
    clock; a context manager that prints the summary line on normal exit (`note` adds to
    it, e.g. the final loss)."""

    def __init__(self, total: float | None, desc: str, unit: str, *, quiet: bool = False):
        self.desc, self.unit, self.done, self.note = desc, unit, 0, ""
        self.bar = tqdm(total=total, desc=desc, unit=f" {unit}", leave=False, file=sys.stderr,
                        disable=quiet or not sys.stderr.isatty(), dynamic_ncols=True)
        self._started = time.perf_counter()

    def update(self, n: float = 1) -> None:
        """Adds `n` units of finished work."""
        self.done += n
        self.bar.update(n)

    def describe(self, desc: str | None = None, note: str | None = None) -> None:
        """Changes the bar's label (`desc`) or the text after it and in the summary (`note`)."""
        if desc is not None:
            self.bar.set_description(desc)
        if note is not None:
            self.note = note
            self.bar.set_postfix_str(note, refresh=False)

    def __enter__(self) -> "Step":
        return self

    def __exit__(self, exc_type, *exc) -> None:
        self.bar.close()
        if exc_type is None:
            print(summary(self.desc, self.done, self.unit, time.perf_counter() - self._started,
                          self.note), file=sys.stderr, flush=True)


def summary(desc: str, done: float, unit: str, seconds: float, note: str = "") -> str:
    """`"features: 200 images in 12.3 s (16.3 images/s)"`, with `"; note"` if given; the rate
    as seconds per unit when below one per second."""
    count = f"{done:d}" if isinstance(done, int) else f"{done:.1f}"
    if seconds > 0 and done >= seconds:
        rate = f"{done / seconds:.3g} {unit}/s"
    elif done > 0:
        rate = f"{seconds / done:.3g} s per {unit[:-1] if unit.endswith('s') else unit}"
    else:
        rate = "none done"
    return f"{desc}: {count} {unit} in {duration(seconds)} ({rate})" + (f"; {note}" if note else "")


def duration(seconds: float) -> str:
    """`"12.3 s"`, `"4 min 05 s"`, `"2 h 03 min"`."""
    if seconds < 60:
        return f"{seconds:.1f} s"
    minutes, seconds = divmod(round(seconds), 60)
    if minutes < 60:
        return f"{minutes} min {seconds:02d} s"
    hours, minutes = divmod(minutes, 60)
    return f"{hours} h {minutes:02d} min"
