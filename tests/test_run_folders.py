"""Run folders: `--name` is one plain folder name, `--runs` is checked before any work,
`--overwrite` replaces `runs/<name>/` and nothing else, Ctrl-C ends with one line; and
`runs.run_directory` keeps what it must keep on every path."""

from __future__ import annotations

import importlib.util
import os
import pathlib
import runpy
import signal
import subprocess
import sys
import time

import pytest

from egjax import cli, runs

ROOT = pathlib.Path(__file__).resolve().parents[1]
VOC = ROOT / "experiments" / "vgg16_voc.py"
CONTINUITY = ROOT / "experiments" / "continuity.py"
BAD_NAMES = [".", "..", "../x", "a/b", "", "/abs"]


def snapshot(folder: pathlib.Path) -> dict:
    """Every file under `folder` with its bytes (and every folder, as None)."""
    return {p.relative_to(folder).as_posix(): (p.read_bytes() if p.is_file() else None)
            for p in sorted(folder.rglob("*"))}


@pytest.fixture
def runs_folder(tmp_path):
    """`tmp/runs` with two earlier runs, and a file beside `runs` that must stay too."""
    folder = tmp_path / "runs"
    for name in ("bird", "quadruped"):
        (folder / name / "graph").mkdir(parents=True)
        (folder / name / "metrics.json").write_text(f'{{"run": "{name}"}}\n')
        (folder / name / "graph" / "data").write_bytes(os.urandom(64))
    (tmp_path / "x").write_text("beside runs\n")
    return folder


def run_voc(argv):
    sys.argv = [str(VOC), *argv]
    return runpy.run_path(str(VOC), run_name="__main__")


@pytest.fixture(scope="module")
def continuity_script():
    spec = importlib.util.spec_from_file_location("continuity_script", CONTINUITY)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.parametrize("name", BAD_NAMES)
def test_vgg16_voc_refuses_a_name_that_is_not_one_folder(runs_folder, name, capsys):
    before = snapshot(runs_folder.parent)
    with pytest.raises(SystemExit) as exit_info:
        run_voc(["--runs", str(runs_folder), "--name", name, "--overwrite", "--quiet"])
    assert exit_info.value.code == 2
    assert "one plain folder name" in capsys.readouterr().err
    assert snapshot(runs_folder.parent) == before


@pytest.mark.parametrize("name", BAD_NAMES)
def test_continuity_refuses_a_name_that_is_not_one_folder(continuity_script, runs_folder, name,
                                                          capsys):
    before = snapshot(runs_folder.parent)
    with pytest.raises(SystemExit) as exit_info:
        continuity_script.parse_args(["--runs", str(runs_folder), "--name", name, "--overwrite"])
    assert exit_info.value.code == 2
    assert "one plain folder name" in capsys.readouterr().err
    assert snapshot(runs_folder.parent) == before


def run_script(script: pathlib.Path, *argv, timeout: float = 120) -> tuple:
    started = time.perf_counter()
    done = subprocess.run([sys.executable, str(script), *argv], capture_output=True, text=True,
                          timeout=timeout, env={**os.environ, "PYTHONPATH": str(ROOT)})
    return done, time.perf_counter() - started


def test_unwritable_runs_folder_is_refused_within_seconds(tmp_path):
    """The real script in a subprocess: one line naming the folder and the reason, status 2,
    before any computation (the time is python's start, jax's import, the network load)."""
    blocker = tmp_path / "file"
    blocker.write_text("a file, not a folder\n")
    runs_path = blocker / "runs"
    done, seconds = run_script(VOC, "--runs", str(runs_path), "--quiet")
    assert done.returncode == 2, done.stderr
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1, done.stderr
    assert lines[0] == f"vgg16_voc.py: error: cannot write to {runs_path}: Not a directory"
    assert seconds < 60
    assert blocker.read_text() == "a file, not a folder\n"


def test_continuity_refuses_an_unwritable_runs_folder(continuity_script, tmp_path, capsys):
    (tmp_path / "file").write_text("a file, not a folder\n")
    with pytest.raises(SystemExit) as exit_info:
        continuity_script.parse_args(["--runs", str(tmp_path / "file" / "runs")])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and f"cannot write to {tmp_path / 'file' / 'runs'}" in err


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes into read-only folders")
def test_read_only_runs_folder_is_refused(tmp_path, capsys):
    folder = tmp_path / "runs"
    folder.mkdir()
    folder.chmod(0o555)
    try:
        with pytest.raises(OSError, match=f"cannot write to {folder}"):
            runs.prepare(folder, "bird")
    finally:
        folder.chmod(0o755)


def test_ctrl_c_ends_with_one_line_and_keeps_nothing(runs_folder):
    before = snapshot(runs_folder)
    # As from a terminal: a suite started in the background (`make test &`) passes an ignored
    # SIGINT down, which Python would leave ignored in the script; restore Python's handler
    # first (in the child's own Python: a preexec_fn would fork this multithreaded process).
    start = ("import runpy, signal, sys; signal.signal(signal.SIGINT, signal.default_int_handler);"
             " sys.argv = sys.argv[1:]; runpy.run_path(sys.argv[0], run_name='__main__')")
    process = subprocess.Popen(
        [sys.executable, "-c", start, str(VOC), "--runs", str(runs_folder), "--name", "new",
         "--images", "40", "--negatives", "200"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        env={**os.environ, "PYTHONPATH": str(ROOT), "PYTHONUNBUFFERED": "1"})
    try:
        header = process.stdout.readline()          # printed as the computation starts
        assert header.startswith("egjax"), header
        time.sleep(1.0)
        process.send_signal(signal.SIGINT)
        try:
            _, err = process.communicate(timeout=30)
        except subprocess.TimeoutExpired:
            # JAX's tracing has a bare `except:` (tree_util.FlatTree.paths) that can swallow
            # a KeyboardInterrupt raised inside it; a user presses Ctrl-C again.
            process.send_signal(signal.SIGINT)
            _, err = process.communicate(timeout=120)
    finally:
        process.kill()
    assert process.returncode == 130, err
    assert "Traceback" not in err
    assert err.strip().splitlines()[-1].endswith("interrupted (Ctrl-C); nothing half-written "
                                                 "was kept")
    assert snapshot(runs_folder) == before


def test_run_wrapper_turns_ctrl_c_into_one_line(capsys):
    def main():
        raise KeyboardInterrupt

    assert cli.run(main) == 130
    err = capsys.readouterr().err
    assert err.strip().count("\n") == 0 and "interrupted" in err
    assert cli.run(lambda: None) == 0 and cli.run(lambda: 3) == 3


@pytest.mark.parametrize("status, teardown", [(130, False), (3, True), (0, True)])
def test_end_exits_with_the_status_and_flushes_what_was_printed(status, teardown):
    # After Ctrl-C (130) the interpreter's teardown, where a JAX compile still running on a
    # background thread crashed the process, is skipped: no atexit handler runs.
    script = ("import atexit, sys; from egjax import cli;"
              " atexit.register(lambda: print('teardown'));"
              f" print('out'); sys.stderr.write('err'); cli.end({status})")
    env = {key: value for key, value in os.environ.items() if key != "PYTHONUNBUFFERED"}
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                          env={**env, "PYTHONPATH": str(ROOT)}, timeout=120)   # buffered
    assert done.returncode == status
    assert done.stdout.split() == (["out", "teardown"] if teardown else ["out"])
    assert done.stderr == "err"


# ------------------------------------------------------------------ the library: runs.py

@pytest.mark.parametrize("name", BAD_NAMES)
def test_prepare_refuses_a_bad_name_before_creating_anything(tmp_path, name):
    with pytest.raises(ValueError, match="one plain folder name"):
        runs.prepare(tmp_path / "runs", name, overwrite=True)
    assert list(tmp_path.iterdir()) == []


def test_prepare_creates_the_runs_folder_and_refuses_what_it_must(runs_folder, tmp_path):
    assert runs.prepare(tmp_path / "new" / "runs", "a") == tmp_path / "new" / "runs" / "a"
    assert (tmp_path / "new" / "runs").is_dir()
    assert not (tmp_path / "new" / "runs" / "a").exists()
    assert list((tmp_path / "new" / "runs").iterdir()) == []       # the probe is removed
    with pytest.raises(FileExistsError):
        runs.prepare(runs_folder, "bird")
    assert runs.prepare(runs_folder, "bird", overwrite=True) == runs_folder / "bird"
    (runs_folder / "plain").write_text("a file\n")
    with pytest.raises(ValueError, match="not a folder"):
        runs.prepare(runs_folder, "plain", overwrite=True)
    with pytest.raises(OSError, match=f"cannot write to {tmp_path / 'x' / 'runs'}: Not a dir"):
        runs.prepare(tmp_path / "x" / "runs", "bird")


def test_error_inside_a_run_leaves_nothing_and_keeps_siblings(runs_folder):
    before = snapshot(runs_folder)
    with pytest.raises(RuntimeError):
        with runs.run_directory(runs_folder / "new") as out:
            (out / "half.json").write_text("{")
            raise RuntimeError("the computation failed")
    assert snapshot(runs_folder) == before


def test_overwrite_keeps_the_old_run_until_the_new_one_is_complete(runs_folder):
    old = snapshot(runs_folder / "bird")
    with runs.run_directory(runs_folder / "bird", overwrite=True) as out:
        assert snapshot(runs_folder / "bird") == old            # still whole while writing
        (out / "metrics.json").write_text("new\n")
    assert snapshot(runs_folder / "bird") == {"metrics.json": b"new\n"}
    assert sorted(p.name for p in runs_folder.iterdir()) == ["bird", "quadruped"]


def test_failed_overwrite_keeps_the_old_run(runs_folder):
    before = snapshot(runs_folder)
    with pytest.raises(RuntimeError):
        with runs.run_directory(runs_folder / "bird", overwrite=True) as out:
            (out / "metrics.json").write_text("new\n")
            raise RuntimeError("the computation failed")
    assert snapshot(runs_folder) == before


def test_overwrite_whose_final_rename_fails_puts_the_old_run_back(runs_folder, monkeypatch):
    """An overwrite that deleted (or moved away) the old run before renaming the new one in
    would lose it here."""
    before = snapshot(runs_folder)
    real_replace = os.replace

    def replace(source, target):
        if ".tmp-" in os.fspath(source):
            raise OSError("disk full")
        real_replace(source, target)

    monkeypatch.setattr(runs.os, "replace", replace)
    with pytest.raises(OSError, match="disk full"):
        with runs.run_directory(runs_folder / "bird", overwrite=True) as out:
            (out / "metrics.json").write_text("new\n")
    assert snapshot(runs_folder) == before


def test_existing_run_is_refused_without_overwrite(runs_folder):
    before = snapshot(runs_folder)
    with pytest.raises(FileExistsError):
        with runs.run_directory(runs_folder / "bird"):
            pytest.fail("the body must not run")
    assert snapshot(runs_folder) == before
