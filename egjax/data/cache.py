"""A cache of what was parsed from each annotation file, so a slow parse happens once.

Pascal-Part's .mat files hold full-image masks: parsing one takes tens of milliseconds, most
of it inflating the masks, while what a load needs from it (boxes of masks) is a few numbers.
The cache keeps those numbers per file, keyed by the file's size and modification time, in
`$XDG_CACHE_HOME/egjax/<dataset>/<hash of the root>.json` (default `~/.cache`). A file that
changed is parsed again; a cache that cannot be written is only a slower next load.
"""

from __future__ import annotations

import hashlib
import json
import os
import pathlib
import tempfile
from typing import Callable


def cache_dir() -> pathlib.Path:
    base = os.environ.get("XDG_CACHE_HOME") or pathlib.Path.home() / ".cache"
    return pathlib.Path(base) / "egjax"


class FileCache:
    """Parsed summaries (JSON values) of the files under one dataset root."""

    def __init__(self, dataset: str, root: pathlib.Path):
        self.root = root
        digest = hashlib.sha1(str(root.resolve()).encode()).hexdigest()[:16]
        self.path = cache_dir() / dataset / f"{digest}.json"
        try:
            self.entries = json.loads(self.path.read_text())
        except (OSError, ValueError):
            self.entries = {}
        self.changed = False

    def read(self, file: pathlib.Path, parse: Callable[[pathlib.Path], object]):
        """`parse(file)` (a JSON value, or None for an unreadable file), from the cache while
        the file keeps its size and modification time."""
        key = file.relative_to(self.root).as_posix()
        try:
            stat = file.stat()
        except OSError:
            return parse(file)
        stamp = [stat.st_size, stat.st_mtime_ns]
        cached_stamp, value = self.entries.get(key, (None, None))
        if cached_stamp == stamp:
            return value
        value = parse(file)
        if value is not None:
            self.entries[key] = (stamp, value)
            self.changed = True
        return value

    def save(self) -> None:
        """Writes the cache atomically if anything was added (skipped if it cannot)."""
        if not self.changed:
            return
        temporary = None
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            with tempfile.NamedTemporaryFile("w", dir=self.path.parent, delete=False,
                                             suffix=".tmp") as out:
                temporary = out.name
                json.dump(self.entries, out)
            os.replace(temporary, self.path)
            self.changed = False
        except OSError:
            if temporary is not None:
                pathlib.Path(temporary).unlink(missing_ok=True)
