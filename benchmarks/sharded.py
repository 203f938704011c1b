"""`python -m benchmarks.sharded`: sharded init, lazymod against Flax's
`jax.jit(init, out_shardings=...)`, on the cases of docs/sharding.md: one 2 GiB
`Linear` over 8 simulated CPU devices in one process, and a 256 MiB `Linear` over 2
local processes of 4 devices each (a `jax.distributed` job on 127.0.0.1). Every
measurement is a fresh process (`benchmarks/sharded_worker.py`), the two libraries
interleaved; prints the medians of the init time, each process's host staging and
peak RSS, as a Markdown table. `python -m benchmarks` runs it too."""

import argparse
import json
import os
import statistics
import subprocess
import sys
from pathlib import Path


ROOT = Path(__file__).resolve().parent.parent
WORKER = ROOT / "benchmarks" / "sharded_worker.py"
sys.path.insert(0, str(ROOT / "examples"))

# (name, features, inputs, processes): each process has 8 // processes devices.
CASES = [
    ("2 GiB Linear, 8 devices, 1 process", 32768, 16384, 1),
    ("256 MiB Linear, 8 devices, 2 processes", 8192, 8192, 2),
]
QUICK_CASES = [
    ("256 MiB Linear, 8 devices, 1 process", 8192, 8192, 1),
    ("64 MiB Linear, 8 devices, 2 processes", 4096, 4096, 2),
]


def measure(framework: str, features: int, inputs: int, processes: int) -> list[dict]:
    """One run: a result per process."""
    args = [framework, str(features), str(inputs)]
    if processes == 1:
        env = {**os.environ, "JAX_PLATFORMS": "cpu"}
        env["XLA_FLAGS"] = "--xla_force_host_platform_device_count=8"
        done = subprocess.run(
            [sys.executable, str(WORKER), *args], capture_output=True, text=True, env=env
        )
        if done.returncode != 0:
            raise RuntimeError(f"{framework} {args} failed:\n{done.stderr[-3000:]}")
        outputs = [done.stdout]
    else:
        import local_cluster

        job = local_cluster.run(
            WORKER,
            [*args, "--multiprocess"],
            processes=processes,
            devices_per_process=8 // processes,
            timeout=600,
            cwd=ROOT,
        )
        outputs = [process.stdout for process in job.processes]
    return [
        json.loads(line.removeprefix("RESULT "))
        for output in outputs
        for line in output.splitlines()
        if line.startswith("RESULT ")
    ]


def run(quick: bool, repeats: int, log=print) -> list[dict]:
    """Every case and library, `repeats` times interleaved; the medians per case."""
    cases = QUICK_CASES if quick else CASES
    runs: dict[tuple[str, str], list[list[dict]]] = {}
    for repeat in range(repeats):
        for name, features, inputs, processes in cases:
            for framework in ("lazymod", "flax"):
                log(f"  [{repeat + 1}/{repeats}] {framework}: {name}")
                result = measure(framework, features, inputs, processes)
                runs.setdefault((name, framework), []).append(result)
    rows = []
    for (name, framework), results in runs.items():
        per_process = [r for result in results for r in result]
        rows.append(
            {
                "case": name,
                "framework": framework,
                "seconds": statistics.median(max(r["seconds"] for r in res) for res in results),
                "staging_mib": statistics.median(r["staging_mib"] for r in per_process),
                "peak_rss_mib": statistics.median(r["peak_rss_mib"] for r in per_process),
            }
        )
    return rows


def table(rows: list[dict]) -> str:
    """The Markdown table of docs/sharding.md: a row per case, the two libraries side
    by side."""
    lines = [
        "| case | lazymod: host staging per process | Flax | lazymod: peak RSS per process "
        "| Flax | lazymod: time | Flax |",
        "|---|---|---|---|---|---|---|",
    ]
    by_case: dict[str, dict[str, dict]] = {}
    for row in rows:
        by_case.setdefault(row["case"], {})[row["framework"]] = row
    for case, of in by_case.items():
        lazy, flax = of["lazymod"], of["flax"]
        lines.append(
            f"| {case} | {lazy['staging_mib']:.1f} MiB | {flax['staging_mib']:.1f} MiB "
            f"| {lazy['peak_rss_mib']:.0f} MiB | {flax['peak_rss_mib']:.0f} MiB "
            f"| {lazy['seconds']:.2f} s | {flax['seconds']:.2f} s |"
        )
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="smaller arrays")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--out", default=str(ROOT / "docs" / "benchmarks" / "sharded.json"))
    options = parser.parse_args()
    rows = run(options.quick, options.repeats, log=lambda m: print(m, file=sys.stderr))
    Path(options.out).write_text(json.dumps(rows, indent=1) + "\n")
    print(table(rows))


if __name__ == "__main__":
    main()
