"""Progress: a tqdm bar only on a terminal and not --quiet; always one summary line."""

from __future__ import annotations

import io
import sys

import pytest

from egjax import progress


class Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def run_step(total=3, quiet=False):
    with progress.Step(total, "features", "images", quiet=quiet) as bar:
        for _ in range(total):
            bar.update(1)


def test_in_a_log_only_the_summary_line_is_written(capsys):
    run_step()
    err = capsys.readouterr().err
    assert "\r" not in err and err.count("\n") == 1
    assert err.startswith("features: 3 images in ") and err.endswith("/s)\n")


@pytest.mark.parametrize("quiet", [False, True])
def test_on_a_terminal_the_bar_is_drawn_unless_quiet(monkeypatch, quiet):
    terminal = Terminal()
    monkeypatch.setattr(sys, "stderr", terminal)
    run_step(quiet=quiet)
    out = terminal.getvalue()
    assert ("/3 [" in out and "\r" in out) is not quiet      # tqdm's "0/3 [00:00<?, ...]"
    assert out.rstrip("\n").rsplit("\r", 1)[-1].lstrip().startswith("features: 3 images in ")
    assert out.endswith(")\n")


def test_a_failed_step_prints_no_summary(capsys):
    with pytest.raises(RuntimeError):
        with progress.Step(3, "features", "images") as bar:
            bar.update(1)
            raise RuntimeError
    assert capsys.readouterr().err == ""


def test_the_note_joins_the_summary(capsys):
    with progress.Step(2, "train", "steps") as bar:
        bar.update(2)
        bar.describe(desc="train 112 px", note="loss 0.051")
    assert capsys.readouterr().err.rstrip().endswith("; loss 0.051")


@pytest.mark.parametrize("args, line", [
    (("features", 200, "images", 12.3), "features: 200 images in 12.3 s (16.3 images/s)"),
    (("fit", 4, "layers", 372.0), "fit: 4 layers in 6 min 12 s (93 s per layer)"),
    (("download x", 527.75, "MiB", 7380.0, "sha256 ok"),
     "download x: 527.8 MiB in 2 h 03 min (14 s per MiB); sha256 ok"),
    (("predict", 0, "images", 0.0), "predict: 0 images in 0.0 s (none done)"),
])
def test_summary_lines(args, line):
    assert progress.summary(*args) == line
