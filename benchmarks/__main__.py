"""`python -m benchmarks`: init speed of lazymod against Equinox and Flax linen.

Every measurement runs in a fresh process (`benchmarks.worker`), the frameworks
interleaved and repeated, so that a noisy machine slows all of them alike. Prints the
medians and lazymod's ratios to each peer, and writes `docs/benchmarks.md` with the
tables and two plots (init time against depth and against batch size).

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

from . import report


ROOT = Path(__file__).resolve().parent.parent
FRAMEWORKS = ["lazymod", "equinox", "flax_lazy_init", "flax_jit"]
MODELS = {"mlp": None, "cnn": None, "transformer": None, "deep_mlp": 1000}


def measure(framework: str, model: str, *, batch: int = 1, depth=None, warm: int = 5) -> dict:
    command = [sys.executable, "-m", "benchmarks.worker", framework, model]
    command += ["--batch", str(batch), "--warm", str(warm)]
    if depth is not None:
        command += ["--depth", str(depth)]
    env = {**os.environ, "JAX_PLATFORMS": "cpu"}
    result = subprocess.run(command, capture_output=True, text=True, env=env, cwd=ROOT)
    if result.returncode != 0:
        raise RuntimeError(f"{' '.join(command[2:])} failed:\n{result.stderr[-2000:]}")
    return json.loads(result.stdout.strip().splitlines()[-1])


def median_of(runs: list[dict], field: str) -> float:
    if field == "warm":
        return statistics.median(t for run in runs for t in run["warm"])
    return statistics.median(run[field] for run in runs)


def sweep(cases: list[tuple[str, str, dict]], repeats: int, log) -> dict:
    """Runs every case `repeats` times, interleaved; returns {case: summary}."""
    runs: dict = {case[:2] + (json.dumps(case[2]),): [] for case in cases}
    for repeat in range(repeats):
        for framework, model, options in cases:
            log(f"  [{repeat + 1}/{repeats}] {framework} {model} {options}")
            key = (framework, model, json.dumps(options))
            runs[key].append(measure(framework, model, **options))
    return {
        key: {
            "first": median_of(rs, "first"),
            "warm": median_of(rs, "warm"),
            "peak_rss_mb": median_of(rs, "peak_rss_mb"),
            "rss_before_mb": median_of(rs, "rss_before_mb"),
            "parameter_mb": rs[0]["parameter_mb"],
            "parameters": rs[0]["parameters"],
        }
        for key, rs in runs.items()
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3, help="fresh processes per case")
    parser.add_argument("--quick", action="store_true", help="one repeat, fewer cases")
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
    repeats = 1 if options.quick else options.repeats

    def log(message: str) -> None:
        print(message, file=sys.stderr, flush=True)

    started = time.perf_counter()
    models = {"mlp": None} if options.quick else MODELS
    log("models, fresh processes:")
    main_table = sweep(
        [
            (fw, model, {"depth": depth} if depth else {})
            for model, depth in models.items()
            for fw in FRAMEWORKS
        ],
        repeats,
        log,
    )
    depths = [10, 100] if options.quick else [10, 100, 300, 1000]
    log("depth sweep (MLP 32 wide):")
    depth_table = sweep(
        [
            (fw, "deep_mlp", {"depth": d})
            for d in depths
            for fw in ("lazymod", "equinox", "flax_lazy_init")
        ],
        repeats,
        log,
    )
    batches = [1, 4096] if options.quick else [1, 64, 1024, 4096]
    log("batch sweep (MLP 784 -> 7x1024 -> 10):")
    batch_table = sweep(
        [
            (fw, "mlp", {"batch": b})
            for b in batches
            for fw in ("lazymod", "flax_lazy_init", "flax_eager")
        ],
        repeats,
        log,
    )
    log("init_shapes of a 1 B parameter Transformer; train step parity; floors:")
    shapes = measure("lazymod", "shapes_1b", warm=4)
    train = measure("lazymod", "train_step", warm=20 if options.quick else 200)
    floors = measure("lazymod", "floors", warm=3 if options.quick else 7)

    results = {
        "machine": {
            "platform": platform.platform(),
            "python": platform.python_version(),
            "cpus": os.cpu_count(),
            "repeats": repeats,
        },
        "main": main_table,
        "depth": depth_table,
        "batch": batch_table,
        "shapes_1b": shapes,
        "train_step": train,
        "floors": floors,
        "seconds": time.perf_counter() - started,
    }
    text = report.write(results, Path(options.out))
    print(text)


if __name__ == "__main__":
    main()
