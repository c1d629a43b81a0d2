"""The README's "Your own images and network" snippet runs as written and prints what it says."""

import os
import pathlib
import re
import subprocess
import sys

ROOT = pathlib.Path(__file__).resolve().parents[1]


def snippet(heading: str) -> str:
    """The first ```python block after `heading` in README.md."""
    text = (ROOT / "README.md").read_text()
    section = text[text.index(heading):]
    return re.search(r"```python\n(.*?)```", section, re.S).group(1)


def test_own_images_snippet_runs(tmp_path):
    (tmp_path / "checkpoints").symlink_to(ROOT / "checkpoints")   # paths as from the root
    (tmp_path / "snippet.py").write_text(snippet("## Your own images and network"))
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    done = subprocess.run([sys.executable, "snippet.py"], cwd=tmp_path, env=env,
                          capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    rows = [line.split() for line in done.stdout.splitlines()]
    assert [row[0] for row in rows] == ["conv4_2", "conv4_3", "conv5_2", "conv5_3"]
    for row in rows:   # the graph's nodes are more stable than the raw filters on every layer
        assert float(row[2]) < float(row[4]), done.stdout
    assert (tmp_path / "my_graph" / "manifest.json").exists()
