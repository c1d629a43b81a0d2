"""What the experiment scripts share on the command line: argparse value types (each refuses
a bad value with the range it allows), the run-folder flags and their checks, and `run`,
which ends a script on Ctrl-C with one line, and `end`, which ends the process with its status.

    parser = argparse.ArgumentParser()
    cli.add_run_arguments(parser, name="bird", runs_folder="runs")
    args = parser.parse_args()
    args.out = cli.run_folder(parser, args)       # checked before any work
    ...
    if __name__ == "__main__":
        cli.end(cli.run(main))

Scripts that read a dataset take `add_data_arguments`' flags and call `data_error` for what
`egjax.data` refuses (an unknown category or part, a missing folder, a corrupt file with
--strict), so it ends as one line, not a traceback.
"""

from __future__ import annotations

import argparse
import os
import pathlib
import sys
from collections.abc import Callable
from typing import NoReturn

import jax

from egjax import data, distributed, runs

DEFAULT_CATEGORY = {"synthetic": "quadruped", "pascal_part": "cow", "cub200": "bird",
                    "folder": "object"}  # ilsvrc_animal_part: --category is required


def positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be an int >= 1, got {text}")
    return value


def non_negative_int(text: str) -> int:
    value = int(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be an int >= 0, got {text}")
    return value


def positive_float(text: str) -> float:
    value = float(text)
    if not value > 0 or value == float("inf"):
        raise argparse.ArgumentTypeError(f"must be a finite number > 0, got {text}")
    return value


def proportion(text: str) -> float:
    value = float(text)
    if not 0 <= value <= 1:
        raise argparse.ArgumentTypeError(f"must be a number in [0, 1], got {text}")
    return value


def image_size(text: str) -> int:
    value = int(text)
    if not 64 <= value <= 1024:
        raise argparse.ArgumentTypeError(f"must be an int in [64, 1024] px, got {text}")
    return value


def run_name(text: str) -> str:
    """A run name: one plain folder name under `--runs`."""
    try:
        return runs.check_name(text)
    except ValueError as error:
        raise argparse.ArgumentTypeError(str(error)) from None


def add_run_arguments(parser: argparse.ArgumentParser, *, name: str | None,
                      runs_folder) -> None:
    """`--name`, `--runs`, `--overwrite` and `--quiet`, as every script that writes
    `runs/<name>/` takes them (`name` None: the script picks a default)."""
    parser.add_argument("--name", type=run_name, default=name,
                        help="run folder name under --runs (one plain folder name)"
                        + (f"; default {name}" if name else ""))
    parser.add_argument("--runs", type=pathlib.Path, default=pathlib.Path(runs_folder),
                        help=f"folder of run folders (default {runs_folder})")
    parser.add_argument("--overwrite", action="store_true",
                        help="replace runs/<name>/ (only that folder) if it exists")
    parser.add_argument("--quiet", action="store_true",
                        help="no progress bars (the one-line summary of each step remains)")


def coordinator_address(text: str) -> str:
    """HOST:PORT of process 0."""
    host, _, port = text.rpartition(":")
    if not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise argparse.ArgumentTypeError(f"must be HOST:PORT (port 1..65535), got {text}")
    return text


def add_distributed_arguments(parser: argparse.ArgumentParser) -> None:
    """`--cpu-devices`, and `--coordinator`, `--num-processes`, `--process-id` (all three, or
    none: a cluster launcher's own, e.g. SLURM `srun`, or one process), for
    `start_distributed`."""
    group = parser.add_argument_group("several devices and processes (jax.distributed)")
    group.add_argument("--cpu-devices", type=positive_int, default=None,
                       help="split each process's CPU into N JAX devices "
                       "(jax_num_cpu_devices): the EM splits its images over them as over "
                       "any devices and uses the cores better (1.3x with 2 on 2 cores), "
                       "with the same fit (README, Several devices and machines). "
                       "Default: JAX's, one")
    group.add_argument("--coordinator", type=coordinator_address, default=None,
                       help="HOST:PORT of process 0 (default: from the cluster launcher, if any)")
    group.add_argument("--num-processes", type=positive_int, default=None,
                       help="processes in the run, each started with the same flags")
    group.add_argument("--process-id", type=non_negative_int, default=None,
                       help="this process, 0 .. num-processes - 1 (0 writes the run folder)")


def start_distributed(parser: argparse.ArgumentParser, args: argparse.Namespace) -> None:
    """Split the CPU into `--cpu-devices`, then join the run's processes
    (`egjax.distributed.initialize`) when the flags of `add_distributed_arguments` are given
    or a cluster launcher started several processes; else nothing (one process). Call it
    before any other use of JAX. Bad or incomplete flags, or an unreachable coordinator,
    exit with one line and status 2."""
    if args.cpu_devices is not None:
        jax.config.update("jax_num_cpu_devices", args.cpu_devices)
    flags = (args.coordinator, args.num_processes, args.process_id)
    if all(v is None for v in flags) and not distributed.launched_by_cluster():
        return
    try:
        distributed.initialize(*flags)
    except (ValueError, RuntimeError) as error:
        parser.exit(2, f"{parser.prog}: error: {error}\n")


def add_data_arguments(parser: argparse.ArgumentParser, datasets=None) -> None:
    """`--dataset` (one of `datasets`, default `egjax.data.names()`; default synthetic),
    `--data-dir`, `--category`, `--negatives-dir` and `--strict`; `data_category` fills the
    default category after parsing."""
    parser.add_argument("--dataset", default="synthetic", choices=datasets or data.names(),
                        help="the dataset (default synthetic: drawn here, no files); "
                        "`python -c 'import egjax.data as d; print(d.describe(NAME))'` says "
                        "how to get each and what it holds")
    parser.add_argument("--data-dir", type=pathlib.Path, default=None,
                        help="where the dataset's archives were extracted (not used by "
                        "synthetic)")
    parser.add_argument("--category", default=None, help="object category (default: "
                        + ", ".join(f"{c} for {d}" for d, c in DEFAULT_CATEGORY.items())
                        + "; required for ilsvrc_animal_part)")
    parser.add_argument("--negatives-dir", type=pathlib.Path, default=None,
                        help="a folder of images without the category (needed by cub200, "
                        "ilsvrc_animal_part and folder; replaces pascal_part's and "
                        "synthetic's own negatives)")
    parser.add_argument("--strict", action="store_true",
                        help="stop at an unreadable dataset file instead of skipping it with "
                        "a warning")


def data_category(parser: argparse.ArgumentParser, args: argparse.Namespace) -> str:
    """`args.category`, or the dataset's default one (an error where there is none)."""
    if args.category is None and args.dataset not in DEFAULT_CATEGORY:
        data_error(parser, f"--dataset {args.dataset} needs --category; valid: "
                           f"{', '.join(data.describe(args.dataset).categories)}")
    return args.category or DEFAULT_CATEGORY[args.dataset]


def data_error(parser: argparse.ArgumentParser, error) -> None:
    """Ends the script with `error` (what `egjax.data` raised) on one line, status 2."""
    parser.exit(2, f"{parser.prog}: error: {error}\n")


def run_folder(parser: argparse.ArgumentParser, args: argparse.Namespace) -> pathlib.Path:
    """`args.runs / args.name`, checked before any work (`runs.prepare`); a bad name, a runs
    folder that cannot be written or an existing run without `--overwrite` exit with one
    line on stderr and status 2."""
    try:
        return runs.prepare(args.runs, args.name, overwrite=args.overwrite)
    except FileExistsError:
        message = (f"{args.runs / args.name} exists; pass --overwrite to replace it, or "
                   f"another --name")
    except (ValueError, OSError) as error:
        message = str(error)
    parser.exit(2, f"{parser.prog}: error: {message}\n")


INTERRUPTED = 130   # the shell's status for a process ended by SIGINT


def run(main: Callable[[], int | None]) -> int:
    """Calls a script's `main()` and returns its exit status; Ctrl-C ends it with one line
    and status 130 instead of a traceback (run folders and checkpoints are written
    atomically, so nothing half-written is left)."""
    try:
        return main() or 0
    except KeyboardInterrupt:
        sys.stderr.write(f"\n{os.path.basename(sys.argv[0])}: interrupted (Ctrl-C); "
                         f"nothing half-written was kept\n")
        return INTERRUPTED


def end(status: int) -> NoReturn:
    """Ends the process with `status`. After Ctrl-C it skips the interpreter's teardown
    (`os._exit`, once stdout and stderr are flushed): JAX may still be compiling on a
    background thread, and tearing its client down under that compile crashes the process
    (SIGSEGV in `PjRtLoadedExecutable::Create`, jaxlib 0.10) instead of ending it with 130.
    The script's own cleanup has already run as the interrupt unwound it."""
    if status == INTERRUPTED:
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(status)
    sys.exit(status)
