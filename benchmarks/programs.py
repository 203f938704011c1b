"""`python -m benchmarks.programs`: the compiled programs that draw lazymod's values,
hashing with lazymod's unrolled threefry (`lazymod/_threefry.py`) against JAX's
`threefry2x32_p` (on CPU, a rolled loop). Each program draws `uniform(-0.1, 0.1)` for
a chunk of flat indices, as lazymod's chunk programs do; the *block* rows compute
their indices by integer division by a block's dims first, as the programs of a
sharded init do. Prints compile and run medians (one process, interleaved) and checks
that both hashes give the same bits.
"""

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax
from jax.extend.random import threefry2x32_p

from lazymod._threefry import threefry2x32


_ROW = 2**15  # as lazymod's programs: rows that XLA spreads over the cores


def _primitive(k1: Any, k2: Any, x1: jax.Array, x2: jax.Array) -> tuple[jax.Array, jax.Array]:
    first, second = threefry2x32_p.bind(k1, k2, x1, x2)
    return first, second


HASHES: dict[str, Callable[..., tuple[jax.Array, jax.Array]]] = {
    "lazymod's unrolled threefry": threefry2x32,
    "JAX's threefry2x32_p": _primitive,
}


def uniform_program(hash_words: Callable[..., Any], chunk: int, block: bool) -> Callable[..., Any]:
    """A jitted program drawing `chunk` uniform floats from the flat indices from
    `offset` (or, with `block`, from the indices of a 2-d block of a larger value)."""
    shape = (chunk // _ROW, _ROW)

    def run(k1: jax.Array, k2: jax.Array, offset: jax.Array, dims: jax.Array) -> jax.Array:
        rows = lax.broadcasted_iota(np.uint32, shape, 0) * np.uint32(_ROW)
        low = offset + rows + lax.broadcasted_iota(np.uint32, shape, 1)
        if block:  # row-major index in the value of element `low` of a (dims) block
            low = (low // dims[1]) * (2 * dims[1]) + low % dims[1]
        first, second = hash_words(k1, k2, jnp.zeros_like(low), low)
        bits = (first ^ second) >> np.uint32(9) | np.uint32(0x3F800000)
        return (lax.bitcast_convert_type(bits, np.float32) - 1.0) * 0.2 - 0.1

    return jax.jit(run)


def measure(
    chunk: int, block: bool, runs: int, names: tuple[str, ...] = tuple(HASHES)
) -> dict[str, tuple[float, float, Any]]:
    """Per hash: compile seconds, median run seconds (back to back, as an init calls
    one program for every chunk of a value), and the values."""
    args = (np.uint32(7), np.uint32(42), np.uint32(0), np.array([4096, 4096], np.uint32))
    compiled, compile_seconds = {}, {}
    for name in names:
        lowered = uniform_program(HASHES[name], chunk, block).lower(*args)
        start = time.perf_counter()
        compiled[name] = lowered.compile()
        compile_seconds[name] = time.perf_counter() - start
    values = {name: np.asarray(program(*args)) for name, program in compiled.items()}
    times: dict[str, list[float]] = {name: [] for name in names}
    for name, program in compiled.items():
        for _ in range(runs):
            start = time.perf_counter()
            jax.block_until_ready(program(*args))
            times[name].append(time.perf_counter() - start)
    return {
        name: (compile_seconds[name], statistics.median(times[name]), values[name])
        for name in names
    }


CASES = ((2**18, False), (2**20, False), (2**20, True))


def one_process(name: str, runs: int) -> None:
    """In this process, for the hash `name`: prints one JSON line per case."""
    for chunk, block in CASES:
        compile_seconds, run_seconds, _ = measure(chunk, block, runs, (name,))[name]
        row = {"chunk": chunk, "block": block, "compile": compile_seconds, "run": run_seconds}
        print(json.dumps(row))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=50, help="timed runs per program")
    parser.add_argument("--repeats", type=int, default=3, help="fresh processes per hash")
    parser.add_argument("--hash", help=argparse.SUPPRESS)  # a worker process's hash
    options = parser.parse_args()
    if options.hash:
        one_process(options.hash, options.runs)
        return
    measured: dict[tuple[str, int, bool], list[dict]] = {}
    for _ in range(options.repeats):
        for name in HASHES:
            command = [sys.executable, "-m", "benchmarks.programs", "--hash", name]
            command += ["--runs", str(options.runs)]
            env = {**os.environ, "JAX_PLATFORMS": "cpu"}
            output = subprocess.run(command, capture_output=True, text=True, env=env, check=True)
            for line in output.stdout.splitlines():
                row = json.loads(line)
                measured.setdefault((name, row["chunk"], row["block"]), []).append(row)
    print("| program | hash | compile | run | ns per element |")
    print("|---|---|---|---|---|")
    for chunk, block in CASES:
        for name in HASHES:
            rows = measured[(name, chunk, block)]
            compile_seconds = statistics.median(row["compile"] for row in rows)
            run_seconds = statistics.median(row["run"] for row in rows)
            what = f"2**{chunk.bit_length() - 1} uniform floats" + (", block" if block else "")
            print(
                f"| {what} | {name} | {compile_seconds * 1e3:.0f} ms "
                f"| {run_seconds * 1e3:.2f} ms | {run_seconds / chunk * 1e9:.2f} |"
            )


if __name__ == "__main__":
    main()
