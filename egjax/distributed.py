"""Several processes, one program (`jax.distributed`): start-up and who does what.

Every process runs the same script. `initialize` joins them, from a cluster launcher's
environment (SLURM `srun`, Open MPI `mpirun`: `jax.distributed.initialize`'s own
detection) or from an explicit coordinator. Each process then loads and extracts its own
share of the images (`shard()`, for `egjax.data.iter_objects(shard=...)`); `fit_graph` and
`infer_graph` shard them over the devices of all processes and reduce the statistics
across all of them; a graph checkpoint is written by all processes, each its own shards
(`egjax.checkpoint.save`); only the main process writes the rest of a run folder. On CPU
the collectives use gloo. A process that dies or stops answering makes the others stop
within `timeout` seconds with a message from the coordination service, instead of waiting
for ever.
"""

from __future__ import annotations

import os
import socket
import time

import jax
import numpy as np
from jax.experimental import multihost_utils

CLUSTER_VARIABLES = ("SLURM_NTASKS", "OMPI_COMM_WORLD_SIZE")


def launched_by_cluster() -> bool:
    """Whether a cluster launcher started several processes (SLURM `srun`, Open MPI)."""
    return any(int(os.environ.get(name, "1") or 1) > 1 for name in CLUSTER_VARIABLES)


def initialize(coordinator: str | None = None, num_processes: int | None = None,
               process_id: int | None = None, *, timeout: int = 60) -> None:
    """Join the processes of this run (`jax.distributed.initialize`), before any other use
    of JAX.

    `coordinator` "HOST:PORT" of process 0, `num_processes` P, `process_id` this one's in
    0..P-1: all three, or none for the cluster's own (SLURM, Open MPI). `timeout` seconds
    for reaching the coordinator, and after which a silent process counts as dead.
    """
    given = {"coordinator": coordinator, "num_processes": num_processes,
             "process_id": process_id}
    if any(v is not None for v in given.values()) and any(v is None for v in given.values()):
        missing = [name for name, v in given.items() if v is None]
        raise ValueError(f"give coordinator, num_processes and process_id together, or none "
                         f"(cluster auto-detection); missing {', '.join(missing)}")
    if num_processes is not None and not (isinstance(num_processes, int) and num_processes >= 1):
        raise ValueError(f"num_processes must be an int >= 1, got {num_processes!r}")
    if process_id is not None and not (isinstance(process_id, int)
                                       and 0 <= process_id < num_processes):
        raise ValueError(f"process_id must be an int in [0, {num_processes - 1}], got "
                         f"{process_id!r}")
    if coordinator is not None and (":" not in coordinator
                                    or not coordinator.rsplit(":", 1)[1].isdigit()):
        raise ValueError(f"coordinator must be HOST:PORT, got {coordinator!r}")
    if not (isinstance(timeout, int) and timeout >= 1):
        raise ValueError(f"timeout must be an int >= 1 (seconds), got {timeout!r}")
    if coordinator is not None and process_id != 0:
        _wait_for(coordinator, timeout)
    jax.config.update("jax_cpu_collectives_implementation", "gloo")
    try:
        jax.distributed.initialize(coordinator_address=coordinator, num_processes=num_processes,
                                   process_id=process_id, initialization_timeout=timeout,
                                   heartbeat_timeout_seconds=timeout)
    except Exception as error:   # jax raises several types (XlaRuntimeError, ValueError)
        where = coordinator or "the cluster's coordinator"
        raise RuntimeError(f"could not join the run's processes through {where} within "
                           f"{timeout} s: {error}") from None


def _wait_for(coordinator: str, timeout: int) -> None:
    """Return once `coordinator` accepts connections; RuntimeError after `timeout` seconds
    (jax would abort the process with a bare DEADLINE_EXCEEDED)."""
    host, port = coordinator.rsplit(":", 1)
    deadline = time.monotonic() + timeout
    while True:
        try:
            socket.create_connection((host, int(port)), timeout=1).close()
            return
        except OSError as error:
            if time.monotonic() > deadline:
                raise RuntimeError(f"cannot reach the coordinator {coordinator} within "
                                   f"{timeout} s ({error}); is process 0 running, and is "
                                   f"the address right?") from None
            time.sleep(0.2)


def shard() -> tuple[int, int]:
    """This process's share of the images: `(process index, process count)`."""
    return jax.process_index(), jax.process_count()


def is_main() -> bool:
    """Whether this is process 0, the one that writes run folders and prints results."""
    return jax.process_index() == 0


def counts(n: int) -> np.ndarray:
    """Every process's `n` (e.g. its objects), by process index."""
    if jax.process_count() == 1:
        return np.asarray([n])
    return np.asarray(multihost_utils.process_allgather(np.int64(n)))


def agreed_token() -> str:
    """A random hex token, the same on every process (process 0's): names a temporary
    folder that all processes write into."""
    token = np.frombuffer(os.urandom(8), np.uint8)
    if jax.process_count() > 1:
        token = np.asarray(multihost_utils.broadcast_one_to_all(token))
    return bytes(token.astype(np.uint8)).hex()


def describe() -> str:
    """'8 cpu devices in 2 processes' (for a script's banner)."""
    devices = jax.devices()
    processes = jax.process_count()
    return (f"{len(devices)} {devices[0].platform} device{'s' * (len(devices) > 1)} in "
            f"{processes} process{'es' * (processes > 1)}")


def gather_shares(x):
    """Every process's share (`shard()`) of a host array `x [n, ...]` (or a pytree of them,
    e.g. `QuantizedMaps`) put together in image order, on every process."""
    index, count = shard()
    if count == 1:
        return x
    shares = np.asarray(multihost_utils.process_allgather(np.int64(jax.tree.leaves(x)[0].shape[0])))

    def one(part):
        part = np.asarray(part)
        padded = np.zeros((int(shares.max()),) + part.shape[1:], part.dtype)
        padded[:len(part)] = part
        every = np.asarray(multihost_utils.process_allgather(padded))
        whole = np.empty((int(shares.sum()),) + part.shape[1:], part.dtype)
        for p in range(count):
            whole[p::count] = every[p][:shares[p]]
        return whole

    return jax.tree.map(one, x)


def gather_rows(x: np.ndarray, wanted) -> np.ndarray:
    """`x_all[wanted]` on every process, from every process's share (`shard()`) `x [n, ...]`
    of the rows of `x_all` (rows p, p + P, ...): only the rows `wanted` are exchanged."""
    index, count = shard()
    x, wanted = np.asarray(x), np.asarray(wanted, np.int64)
    if count == 1:
        return x[wanted]
    mine = wanted % count == index
    part = np.zeros((len(wanted),) + x.shape[1:], x.dtype)
    part[mine] = x[wanted[mine] // count]
    return gather_exact(part)[wanted % count, np.arange(len(wanted))]


def gather_blobs(blobs: list[bytes]) -> list[bytes]:
    """Every process's share (`shard()`) of a list of byte strings (e.g. encoded images),
    put together in image order, on every process."""
    index, count = shard()
    if count == 1:
        return list(blobs)
    shares = counts(len(blobs))
    lengths = np.zeros(int(shares.max()), np.int64)
    lengths[:len(blobs)] = [len(b) for b in blobs]
    data = np.frombuffer(b"".join(blobs), np.uint8)
    longest = int(counts(len(data)).max())
    every_length = gather_exact(lengths)
    every = gather_exact(np.pad(data, (0, longest - len(data))))
    out = [b""] * int(shares.sum())
    for p in range(count):
        ends = np.cumsum(every_length[p][:shares[p]])
        for j, (start, end) in enumerate(zip((ends - every_length[p][:shares[p]]).tolist(),
                                             ends.tolist())):
            out[p + j * count] = every[p, start:end].tobytes()
    return out


def gather_exact(x: np.ndarray) -> np.ndarray:
    """`[P, ...]` every process's host array `x` (the same shape on each), bit for bit (as
    bytes: jax arrays may hold no float64)."""
    x = np.ascontiguousarray(x)
    every = np.asarray(multihost_utils.process_allgather(x.reshape(-1).view(np.uint8)))
    return every.view(x.dtype).reshape((jax.process_count(),) + x.shape)


def addressable(x, axis: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """The part of `x` that this process holds along `axis` (a `jax.Array` split over the
    devices of several processes; else all of it): `(index [n], values)`, the increasing
    positions along `axis` and the values there, on the host."""
    if not isinstance(x, jax.Array) or x.is_fully_addressable:
        return np.arange(np.shape(x)[axis]), np.asarray(x)
    pieces = {}
    for shard in x.addressable_shards:
        start, stop, _ = shard.index[axis].indices(x.shape[axis])
        pieces[start] = (stop, shard.data)
    starts = sorted(pieces)
    index = np.concatenate([np.arange(start, pieces[start][0]) for start in starts])
    return index, np.concatenate([np.asarray(pieces[start][1]) for start in starts], axis=axis)


def leave_together(name: str, timeout: int = 3600) -> None:
    """Wait until every process reaches `leave_together(name)` (at most `timeout` seconds),
    e.g. the others for process 0 to write the run folder: a process that leaves early
    would make the others' exit fail (jax's shutdown waits only a short while for them)."""
    if jax.process_count() == 1:
        return
    from jax._src import distributed as state   # the coordination client jax started
    state.global_state.client.wait_at_barrier(f"egjax {name}", timeout * 1000)
