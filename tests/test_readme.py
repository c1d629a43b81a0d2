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


def test_own_network_snippet_runs(tmp_path):
    """A user's Flax module registered with the model contract: geometry derived, a graph fitted."""
    (tmp_path / "snippet.py").write_text(snippet("### Your own network: the model contract"))
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    done = subprocess.run([sys.executable, "snippet.py"], cwd=tmp_path, env=env,
                          capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    lines = done.stdout.splitlines()
    # by hand: conv1 5x5 stride 2 pad 2, conv2 3x3 stride 1 pad 1 -> stride 2, size 5 + 2*2 = 9,
    # centre of cell 0: -2 + 2 = 0 (the first kernel's centre)
    assert lines[0] == "ReceptiveField(stride=2.0, center=0.0, size=9.0)", lines
    # 64 px -> 32 x 32 cells, 8 filters; K = ceil(32 * 32 * 0.1) = 103 nodes per filter
    assert lines[1] == f"({8 * 103}, 8)", lines
