"""`python -m benchmarks`: init speed of lazymod against Equinox and Flax linen.

Every measurement runs in a fresh process (`benchmarks.worker`), the frameworks
interleaved and repeated, so that a noisy machine slows all of them alike. Each run
(framework, model, batch, depth) is measured once: the summary table and the two sweeps
(init time against depth and against batch size) share the runs they have in common.
Prints the page it writes, `docs/benchmarks.md`, with its plots and results.json.

Needs the bench extra: `pip install -e ".[bench]"` (flax, matplotlib).
"""

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import time
from pathlib import Path

from . import report, sharded


ROOT = Path(__file__).resolve().parent.parent
DEEP = 1000  # layers of the two deep, narrow cases


def cases(quick: bool) -> list[dict]:
    """The summary table's rows: a model (with its depth, for the deep ones) and the
    libraries that build it. `--quick` leaves out `jax.jit(model.init)`, the slowest
    Flax way to init (it compiles the init: minutes for 1000 layers)."""
    flax = ["flax_lazy_init"] if quick else ["flax_lazy_init", "flax_jit"]
    return [
        {"model": "mlp", "depth": None, "frameworks": ["lazymod", "equinox", *flax]},
        {"model": "cnn", "depth": None, "frameworks": ["lazymod", "equinox", *flax]},
        {"model": "transformer", "depth": None, "frameworks": ["lazymod", "equinox", *flax]},
        {"model": "deep_mlp", "depth": DEEP, "frameworks": ["lazymod", "equinox", *flax]},
        {"model": "user_list", "depth": DEEP, "frameworks": ["lazymod", "equinox"]},
        {"model": "init_shapes", "depth": None, "frameworks": ["lazymod", "equinox"]},
    ]


def sweeps(quick: bool) -> dict:
    """The two plots: which model, which option varies over which values, and which
    frameworks."""
    return {
        "depth": {
            "model": "deep_mlp",
            "values": [10, 100, DEEP] if quick else [10, 100, 300, DEEP],
            "frameworks": ["lazymod", "equinox", "flax_lazy_init"],
        },
        "batch": {
            "model": "mlp",
            "values": [1, 4096] if quick else [1, 64, 1024, 4096],
            "frameworks": ["lazymod", "flax_lazy_init", "flax_eager"],
        },
    }


def runs_of(cases: list[dict], sweeps: dict) -> list[dict]:
    """Every run the page needs, each once, in the order of the cases then the sweeps."""
    runs = [
        {"framework": fw, "model": case["model"], "batch": 1, "depth": case["depth"]}
        for case in cases
        for fw in case["frameworks"]
    ]
    for option, sweep in sweeps.items():
        for value in sweep["values"]:
            for fw in sweep["frameworks"]:
                run = {"framework": fw, "model": sweep["model"], "batch": 1, "depth": None}
                run[option] = value
                if run not in runs:
                    runs.append(run)
    return runs


def measure(framework: str, model: str, *, warm: int, batch: int = 1, depth=None) -> dict:
    """What `benchmarks.worker` prints for one run, in a fresh process."""
    command = [sys.executable, "-m", "benchmarks.worker", framework, model]
    command += ["--batch", str(batch), "--warm", str(warm)]
    if depth is not None:
        command += ["--depth", str(depth)]
    env = {**os.environ, "JAX_PLATFORMS": "cpu"}
    result = subprocess.run(command, capture_output=True, text=True, env=env, cwd=ROOT)
    if result.returncode != 0:
        raise RuntimeError(f"{' '.join(command[2:])} failed:\n{result.stderr[-2000:]}")
    return json.loads(result.stdout.strip().splitlines()[-1])


def measure_all(runs: list[dict], repeats: int, warm: int, log) -> list[dict]:
    """Measures every run `repeats` times, interleaved, every other repeat in reverse
    order (so that a machine getting busier or quieter during a repeat does not favour
    the runs at one end of it); returns the runs with their medians over processes
    (`warm`: over every warm init of every process)."""
    measured: list[list[dict]] = [[] for _ in runs]
    for repeat in range(repeats):
        order = list(zip(runs, measured))
        for run, results in order if repeat % 2 == 0 else reversed(order):
            log(f"  [{repeat + 1}/{repeats}] {report.describe(run)}")
            results.append(measure(**run, warm=warm))
    return [
        {
            **run,
            "first": statistics.median(r["first"] for r in results),
            "warm": statistics.median(t for r in results for t in r["warm"]),
            "peak_rss_mb": statistics.median(r["peak_rss_mb"] for r in results),
            "rss_before_mb": statistics.median(r["rss_before_mb"] for r in results),
            "parameter_mb": results[0]["parameter_mb"],
            "parameters": results[0]["parameters"],
        }
        for run, results in zip(runs, measured)
    ]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3, help="fresh processes per run")
    parser.add_argument(
        "--quick",
        action="store_true",
        help="one process per run, 3 warm inits, no Flax jit(init), fewer sweep points",
    )
    parser.add_argument("--out", default=str(ROOT / "docs" / "benchmarks.md"))
    parser.add_argument(
        "--report-only",
        metavar="RESULTS_JSON",
        help="rewrite the page from a saved results.json instead of measuring",
    )
    options = parser.parse_args()
    if options.report_only:
        print(report.write(report.load(Path(options.report_only)), Path(options.out)))
        return
    repeats, warm = (1, 3) if options.quick else (options.repeats, 10)

    def log(message: str) -> None:
        print(message, file=sys.stderr, flush=True)

    started = time.perf_counter()
    summary, plots = cases(options.quick), sweeps(options.quick)
    runs = runs_of(summary, plots)
    log(f"{len(runs)} runs, {repeats} fresh process(es) each, {warm} warm inits:")
    measured = measure_all(runs, repeats, warm, log)
    log("train step parity; floors:")
    train = measure("lazymod", "train_step", warm=20 if options.quick else 200)
    floors = measure("lazymod", "floors", warm=1 if options.quick else 7)
    results = {
        "machine": {
            "platform": platform.platform(),
            "python": platform.python_version(),
            "cpus": os.cpu_count(),
            "repeats": repeats,
            "warm": warm,
            "quick": options.quick,
        },
        "cases": summary,
        "sweeps": plots,
        "runs": measured,
        "train_step": train,
        "floors": floors,
        "seconds": time.perf_counter() - started,
    }
    text = report.write(results, Path(options.out))
    print(text)
    log("sharded init (also: python -m benchmarks.sharded):")
    rows = sharded.run(options.quick, repeats, log)
    if not options.quick:  # the figures docs/sharding.md shows are the full cases'
        (ROOT / "docs" / "benchmarks" / "sharded.json").write_text(
            json.dumps(rows, indent=1) + "\n"
        )
    print(sharded.table(rows))


if __name__ == "__main__":
    main()
