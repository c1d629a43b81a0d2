"""Scaling of the EM over processes x devices on one machine: wall time, and the bytes the
devices exchange per EM iteration and per layer.

    python benchmarks/bench_scaling.py                      # 1, 2, 4 processes x devices
    python benchmarks/bench_scaling.py --images 100 --channels 64 --compat original

Each configuration (P processes, D CPU devices each) is started as P processes on
localhost (`egjax.distributed`, gloo), each holding its share of the images (every P-th),
and fits the top `--layers` layers of the VGG-16 graph on synthetic uint8 maps (those of
`bench_em.py`). Per layer: compile and run time (median of `--repeats` runs after the
compile), and the collectives of the compiled fit read from its HLO: those inside the EM
loop run once per iteration, the others once per layer. Bytes are the collectives' result
sizes per device (an all-reduce of B bytes moves about 2B (D-1)/D per device in a ring).
On a 2-core machine expect no speed-up: the point is correctness and overhead.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import socket
import statistics
import subprocess
import sys
import time

CONFIGS = ((1, 1), (1, 2), (2, 1), (1, 4), (2, 2), (4, 1))
COLLECTIVE = re.compile(r"=\s*(.*?)\s(all-reduce|all-gather|reduce-scatter|all-to-all|"
                        r"collective-permute)(?:-start)?\(")
CALLED = re.compile(r"(body|condition|to_apply|calls|true_computation|false_computation)="
                    r"%?([\w.\-]+)|branch_computations=\{([^}]*)\}")
ARRAY = re.compile(r"(pred|[suf]\d+|bf16)\[([\d,]*)\]")
BYTES = {"pred": 1}


def array_bytes(shape_text: str) -> int:
    """Bytes of the arrays in an HLO shape such as `(f32[4,8]{1,0}, s32[])`."""
    total = 0
    for dtype, dims in ARRAY.findall(shape_text):
        size = BYTES.get(dtype) or max(1, int(re.sub(r"\D", "", dtype)) // 8)
        for d in filter(None, dims.split(",")):
            size *= int(d)
        total += size
    return total


def collective_bytes(hlo: str) -> dict:
    """`{"iteration": bytes, "layer": bytes, "ops": [...]}` of a compiled module's text:
    collectives inside a while loop (the EM's `scan` over iterations) count per iteration,
    the others once per layer."""
    computations, name, entry = {}, None, None
    for line in hlo.splitlines():
        header = re.match(r"(ENTRY\s+)?%?([\w.\-]+)\s.*\{\s*$", line)
        if header and not line.startswith(" "):   # instructions are indented
            name = header.group(2)
            entry = name if header.group(1) else entry
            computations[name] = []
        elif name is not None:
            computations[name].append(line)
    depth = {entry: 0}
    todo = [entry]
    while todo:
        current = todo.pop()
        for line in computations.get(current, []):
            for kind, callee, branches in CALLED.findall(line):
                for c in ([callee] if callee else re.findall(r"%?([\w.\-]+)", branches)):
                    d = depth[current] + (kind == "body")
                    if c in computations and c not in depth:
                        depth[c] = d
                        todo.append(c)
    out = {"iteration": 0, "layer": 0, "ops": []}
    for comp, d in depth.items():
        for line in computations[comp]:
            match = COLLECTIVE.search(line)
            if match:
                size = array_bytes(match.group(1))
                out["iteration" if d else "layer"] += size
                out["ops"].append((match.group(2), size, d))
    return out


def worker(args) -> None:
    """One process of one configuration: fit the layers, print a JSON line (process 0)."""
    from egjax import distributed
    if args.processes > 1:
        distributed.initialize(f"localhost:{args.port}", args.processes, args.process_id,
                               timeout=120)
    import jax
    jax.config.update("jax_enable_x64", args.compat == "original")
    from jax.experimental import multihost_utils

    sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
    from bench_em import mirrored, synthetic_maps
    from egjax.config import GraphConfig
    from egjax.em import fit as fit_lib

    index, count = distributed.shard()
    cfg = GraphConfig.vgg16(iterations=args.iterations)
    layers, parent, rows = cfg.layers[len(cfg.layers) - args.layers:], None, []
    for offset in reversed(range(len(layers))):
        layer = layers[offset]
        maps = synthetic_maps(args.images, layer.map_size, args.channels, offset)
        share = jax.tree.map(lambda x: x[index::count], maps)
        flipped = jax.tree.map(lambda x: x[index::count], mirrored(maps))
        call = fit_lib.layer_call(share, layer, jax.random.key(offset), flipped, parent, None,
                                  args.compat, 8)
        start = time.perf_counter()
        compiled = call.function.lower(*call.args).compile()
        compile_s = time.perf_counter() - start
        runs = []
        for _ in range(args.repeats):
            multihost_utils.sync_global_devices("run")
            start = time.perf_counter()
            outputs = jax.block_until_ready(compiled(*call.args))
            multihost_utils.sync_global_devices("done")
            runs.append(time.perf_counter() - start)
        parent = fit_lib.layer_fit(outputs, call)
        comm = collective_bytes(compiled.as_text())
        rows.append({"tap": layer.tap, "compile_s": compile_s, "run_s": statistics.median(runs),
                     "iteration_bytes": comm["iteration"], "layer_bytes": comm["layer"],
                     "collectives": len(comm["ops"])})
    if index == 0:
        print(json.dumps({"processes": count, "devices": jax.device_count(), "layers": rows}))


def start(config, args) -> dict:
    processes, devices = config
    with socket.socket() as s:
        s.bind(("localhost", 0))
        port = s.getsockname()[1]
    env = dict(os.environ, XLA_FLAGS=f"--xla_force_host_platform_device_count={devices}",
               JAX_PLATFORMS="cpu")
    command = [sys.executable, os.path.abspath(__file__), "--worker", "--port", str(port),
               "--processes", str(processes), "--images", str(args.images), "--channels",
               str(args.channels), "--iterations", str(args.iterations), "--layers",
               str(args.layers), "--compat", args.compat, "--repeats", str(args.repeats)]
    started = time.perf_counter()
    children = [subprocess.Popen(command + ["--process-id", str(i)], env=env,
                                 stdout=subprocess.PIPE, text=True) for i in range(processes)]
    outputs = [child.communicate()[0] for child in children]
    if any(child.returncode for child in children):
        raise SystemExit(f"{processes} x {devices}: a process failed "
                         f"({[c.returncode for c in children]})")
    result = json.loads(outputs[0].strip().splitlines()[-1])
    result["wall_s"] = time.perf_counter() - started
    return result


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=100, help="N images (default 100)")
    parser.add_argument("--channels", type=int, default=32, help="filters per layer")
    parser.add_argument("--iterations", type=int, default=20, help="EM iterations per layer")
    parser.add_argument("--layers", type=int, default=2, choices=(1, 2, 3, 4),
                        help="top layers of the VGG-16 graph to fit (default 2: conv5_2, conv5_3)")
    parser.add_argument("--compat", default="fixed", choices=("fixed", "original"))
    parser.add_argument("--repeats", type=int, default=3, help="timed runs per layer (median)")
    parser.add_argument("--configs", default=",".join(f"{p}x{d}" for p, d in CONFIGS),
                        help="processes x devices to run, comma-separated")
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--port", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--processes", type=int, default=1, help=argparse.SUPPRESS)
    parser.add_argument("--process-id", type=int, default=0, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.images < 2 or args.channels < 1 or args.iterations < 1 or args.repeats < 1:
        parser.error("--images must be >= 2; --channels, --iterations, --repeats >= 1")
    if args.worker:
        return worker(args)
    configs = [tuple(int(v) for v in c.split("x")) for c in args.configs.split(",")]
    print(f"egjax scaling: N={args.images} images, {args.channels} filters, top {args.layers} "
          f"layers, {args.iterations} iterations, compat={args.compat}, "
          f"median of {args.repeats} runs; {os.cpu_count()} CPU cores", flush=True)
    results = [start(config, args) for config in configs]
    base = sum(r["run_s"] for r in results[0]["layers"])
    print(f"\n| processes x devices | fit (run) s | vs {configs[0][0]}x{configs[0][1]} | "
          f"compile s | per iteration: bytes | per layer: bytes | collectives |")
    print("|---|---|---|---|---|---|---|")
    for (p, d), r in zip(configs, results):
        run = sum(x["run_s"] for x in r["layers"])
        compile_s = sum(x["compile_s"] for x in r["layers"])
        per_it = " + ".join(f"{x['iteration_bytes']:,}" for x in r["layers"])
        per_layer = " + ".join(f"{x['layer_bytes']:,}" for x in r["layers"])
        ops = sum(x["collectives"] for x in r["layers"])
        print(f"| {p} x {d} | {run:.2f} | {run / base:.2f}x | {compile_s:.1f} | {per_it} | "
              f"{per_layer} | {ops} |")
    taps = ", ".join(x["tap"] for x in results[0]["layers"])
    print(f"\nlayers in fit order (top first): {taps}; bytes are per device, the collectives' "
          f"result sizes")


if __name__ == "__main__":
    sys.exit(main())
