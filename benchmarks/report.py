"""Turns the benchmark results into `docs/benchmarks.md`, its plots and results.json.

The results are what `benchmarks.__main__` gathers: `runs`, each measured once, and
the `cases` and `sweeps` that say which runs the summary table and the plots show.
Each case's figures are shown once, in the summary table."""

import json
import math
import statistics
from pathlib import Path


NAMES = {
    "lazymod": "lazymod `lm.init`",
    "equinox": "Equinox by hand",
    "flax_lazy_init": "Flax `lazy_init`",
    "flax_jit": "Flax `jit(init)`",
    "flax_eager": "Flax `init`",
}
SHORT_NAMES = {
    "lazymod": "lazymod",
    "equinox": "Equinox",
    "flax_lazy_init": "Flax `lazy_init`",
    "flax_jit": "Flax `jit(init)`",
    "flax_eager": "Flax `init`",
}
# One colour per library, the same in every plot.
COLOURS = {
    "lazymod": "tab:blue",
    "equinox": "tab:orange",
    "flax_lazy_init": "tab:green",
    "flax_jit": "tab:red",
    "flax_eager": "tab:purple",
}
FLAX = ("flax_lazy_init", "flax_jit")


def case_name(model: str, depth: int | None = None) -> str:
    return {
        "mlp": "`lm.nn.MLP` 784 → 7×1024 → 10",
        "cnn": "CNN, 5 blocks + BatchNorm, 3×64×64",
        "transformer": "Transformer, 12 pre-LN blocks, d=512, 128 tokens",
        "deep_mlp": f"`lm.nn.MLP` {depth} layers × 32",
        "user_list": f"your module: a list of {depth} `lm.nn.Linear(32)`, relu between",
        "init_shapes": "`lm.init_shapes`, Transformer, 20 pre-LN blocks, d=2048, 128 tokens",
    }[model]


def describe(run: dict) -> str:
    """One run in a line of the progress log."""
    options = f"batch {run['batch']}" + (f", depth {run['depth']}" if run["depth"] else "")
    return f"{run['framework']} {run['model']} ({options})"


def find(runs: list[dict], framework: str, model: str, batch: int = 1, depth=None) -> dict | None:
    for run in runs:
        if (run["framework"], run["model"], run["batch"], run["depth"]) == (
            framework,
            model,
            batch,
            depth,
        ):
            return run
    return None


def seconds(value: float) -> str:
    return f"{value * 1000:.0f} ms" if value < 1 else f"{value:.2f} s"


def count(parameters: int) -> str:
    if parameters >= 1e9:
        return f"{parameters / 1e9:.2f} B"
    if parameters >= 1e6:
        return f"{parameters / 1e6:.1f} M"
    return f"{parameters / 1e3:.0f} k"


def verdict(ok: bool) -> str:
    return "met" if ok else "**not met**"


def load(path: Path) -> dict:
    """The results `write` saved in results.json, as `write` takes them."""
    return json.loads(path.read_text())


def write(results: dict, out: Path) -> str:
    """Writes the page to `out`, its plots and results.json next to it in
    `benchmarks/`; returns the page's text."""
    out.parent.mkdir(parents=True, exist_ok=True)
    images = out.parent / "benchmarks"
    images.mkdir(exist_ok=True)
    (images / "results.json").write_text(json.dumps(results, indent=1))
    machine = results["machine"]
    how = (
        "one fresh process per case and library (a `--quick` run: noisier than a full one)"
        if machine.get("quick")
        else f"{machine['repeats']} fresh processes per case and library"
    )
    lines = [
        "# Benchmarks",
        "",
        "Init time of lazymod against the same models written by hand in Equinox and in",
        "Flax linen. Every number is a median over fresh processes (import time not",
        "counted), the libraries interleaved; ratios are lazymod's time over the peer's,",
        "measured in the same run, so below 1 lazymod is faster. Regenerate this page with:",
        "",
        "```sh",
        'pip install -e ".[bench]"',
        "python -m benchmarks          # --quick for a 2-minute version",
        "```",
        "",
        "or time one model yourself, the way the benchmark does (first call in a fresh",
        "process, then later calls):",
        "",
        "```python",
        "import time",
        "",
        "import jax",
        "import jax.numpy as jnp",
        "import lazymod as lm",
        "",
        "spec = jax.ShapeDtypeStruct((784,), jnp.float32)",
        "for attempt in range(3):",
        "    start = time.perf_counter()",
        "    model = lm.init(lm.nn.MLP(10, 1024, 7), jax.random.key(attempt), spec)",
        "    jax.block_until_ready(model)",
        '    print(f"init {attempt}: {time.perf_counter() - start:.3f} s")',
        "```",
        "",
        f"Machine: {machine['platform']}, Python {machine['python']}, {machine['cpus']} CPUs;"
        f" {how}, each timing the first init and {machine['warm']} later ones. The whole"
        f" run took {_duration(results['seconds'])}.",
        "",
    ]
    lines += _summary_table(results)
    lines += _targets_table(results)
    lines += _floors_table(results)
    lines += [
        "What the time is spent on, and what to do when init is slow, is on the page",
        "[where init time goes](performance.md).",
        "",
    ]
    for option, sweep in results["sweeps"].items():
        lines += _sweep_table(results, option, sweep)
        _plot(results["runs"], option, sweep, images / f"{option}.png")
    text = "\n".join(lines)
    out.write_text(text)
    return text


def _duration(seconds: float) -> str:
    return f"{seconds:.0f} s" if seconds < 120 else f"{seconds / 60:.0f} min"


def _summary_table(results: dict) -> list[str]:
    runs = results["runs"]
    flax = [fw for fw in FLAX if any(fw in case["frameworks"] for case in results["cases"])]
    header = ["case", "lazymod first", "Equinox first", "ratio", "lazymod later"]
    header += ["Equinox later", "ratio"]
    header += [f"{SHORT_NAMES[fw]} {when}" for fw in flax for when in ("first", "later")]
    lines = [
        "## Summary: first init in a fresh process, and later inits",
        "",
        "| " + " | ".join(header) + " |",
        "|---" * len(header) + "|",
    ]
    for case in results["cases"]:
        model, depth = case["model"], case["depth"]
        ours, theirs = (find(runs, fw, model, depth=depth) for fw in ("lazymod", "equinox"))
        name = f"{case_name(model, depth)} ({count(ours['parameters'])} parameters)"
        cells = [name]
        for field in ("first", "warm"):
            ratio = ours[field] / theirs[field]
            cells += [seconds(ours[field]), seconds(theirs[field]), f"{ratio:.2f}x"]
        for fw in flax:
            peer = find(runs, fw, model, depth=depth) if fw in case["frameworks"] else None
            for field in ("first", "warm"):
                cells.append(
                    ""
                    if peer is None
                    else f"{seconds(peer[field])} ({ours[field] / peer[field]:.2f}x)"
                )
        lines.append("| " + " | ".join(cells) + " |")
    lines += [
        "",
        "*Later* is the median of the later inits in the same process. The Flax cells give",
        "lazymod's ratio in brackets; a blank cell was not measured."
        + (
            " A `--quick` run leaves out Flax `jit(init)`, which compiles the init"
            " (minutes for 1000 layers)."
            if results["machine"].get("quick")
            else ""
        ),
        "*Your module* is a user-written `lm.Module` holding a Python list of lazy layers,",
        "called on one example of `float32[32]`; Equinox builds the same list of",
        "`eqx.nn.Linear(32, 32, key=k)`. For `lm.init_shapes`, which allocates nothing,",
        "the Equinox columns time `eqx.filter_eval_shape` of the hand-written constructor.",
        "",
    ]
    return lines


def _targets_table(results: dict) -> list[str]:
    """The performance targets; where the figure is in the summary table, the verdict
    only (each figure is shown once)."""
    runs, sweeps = results["runs"], results["sweeps"]
    deep = [c["depth"] for c in results["cases"] if c["model"] == "deep_mlp"][0]
    models = [("mlp", None), ("deep_mlp", deep), ("user_list", deep), ("transformer", None)]

    def verdicts(field: str, bound: float) -> str:
        cells = []
        for model, depth in models:
            ours = find(runs, "lazymod", model, depth=depth)
            theirs = find(runs, "equinox", model, depth=depth)
            if ours is not None and theirs is not None:
                met = ours[field] <= bound * theirs[field]
                cells.append(f"{case_name(model, depth)}: {verdict(met)}")
        return "; ".join(cells)

    lines = ["## Targets", "", "| target | measured | |", "|---|---|---|"]
    lines.append(f"| 1. first init ≤ 0.4x Equinox | summary | {verdicts('first', 0.4)} |")
    lines.append(f"| 2. later inits ≤ 1.0x Equinox | summary | {verdicts('warm', 1.0)} |")
    ours, theirs = (find(runs, fw, "init_shapes") for fw in ("lazymod", "equinox"))
    lines.append(
        f"| 3. `init_shapes` of the {count(ours['parameters'])} parameter Transformer ≤ 1.0x"
        " `eqx.filter_eval_shape` of the hand-written constructor | summary |"
        f" first: {verdict(ours['first'] <= theirs['first'])};"
        f" later: {verdict(ours['warm'] <= theirs['warm'])} |"
    )
    lines.append(
        "| 4. values bit-identical to those before the trace cache | `tests/test_golden.py`"
        " (checksums), run by `make test` | met |"
    )
    batches = sweeps["batch"]["values"]
    small, big = (find(runs, "lazymod", "mlp", batch=b) for b in (min(batches), max(batches)))
    growth = big["warm"] / small["warm"]
    lines.append(
        f"| 5. batch {max(batches)} / batch {min(batches)} ≤ 1.05 (later inits) |"
        f" {growth:.2f}x | {verdict(growth <= 1.05)} |"
    )
    train = results["train_step"]
    step = statistics.median(train["lazymod_step"]) / statistics.median(train["equinox_step"])
    dispatch = statistics.median(train["lazymod_dispatch"]) / statistics.median(
        train["equinox_dispatch"]
    )
    lines.append(
        f"| 5. train step 1.00x (±3%) of Equinox's; same filter_jit dispatch | step {step:.3f}x,"
        f" dispatch {dispatch:.2f}x | {verdict(abs(step - 1) <= 0.03)} |"
    )
    return lines + [""]


def _floors_table(results: dict) -> list[str]:
    floors, runs = results["floors"], results["runs"]
    lines = [
        "## Against tracing once and drawing once",
        "",
        "A reference, not a floor: the time JAX takes to trace the Equinox-built model's",
        "forward pass once plus the time JAX takes to compute its values (one",
        "`jax.random.uniform` per array). A naive init by tracing pays about that on",
        "every init. lazymod pays less: its first init traces each *kind* of layer once",
        "(see [the first init](performance.md#the-first-init-in-a-process)), and a later",
        "init of the same structure replays the first one's recorded evaluation (see",
        "[later inits](performance.md#later-inits)), paying the values only. The",
        "reference's parts are warm medians, measured in one process, interleaved",
        "(`python -m benchmarks.worker lazymod floors`); the ratios are to the later",
        "inits of the summary table, but for the last column, which is to Equinox's",
        "first init. Where the forward pass runs code of your own (the relu between the",
        "layers of your module), it is about the least a first init by tracing can cost,",
        "as that code is traced as it is written; a first `lm.init_shapes` traces the",
        "forward pass of each kind of layer, where `eqx.filter_eval_shape` of the",
        "constructor traces no forward pass at all.",
        "",
        "| case | JAX computing the values | JAX tracing the forward pass | reference |"
        " reference ÷ Equinox | lazymod ÷ reference | tracing ÷ Equinox's first init |",
        "|---|---|---|---|---|---|---|",
    ]
    depths = {c["model"]: c["depth"] for c in results["cases"]}
    rows = [(model, depths.get(model)) for model in ("mlp", "deep_mlp", "user_list", "init_shapes")]
    for model, depth in (row for row in rows if row[0] in floors and row[0] in depths):
        f = floors[model]
        floor = f.get("values", 0.0) + f["trace"]
        ours, theirs = (find(runs, fw, model, depth=depth) for fw in ("lazymod", "equinox"))
        values = seconds(f["values"]) if "values" in f else "none"
        trace = seconds(f["trace"])
        if model == "init_shapes":
            trace += " (`eqx.filter_eval_shape` of the forward pass)"
        lines.append(
            f"| {case_name(model, depth)} | {values} | {trace} | {seconds(floor)} |"
            f" {floor / theirs['warm']:.2f}x | {ours['warm'] / floor:.2f}x |"
            f" {f['trace'] / theirs['first']:.2f}x |"
        )
    return lines + [""]


def _sweep_table(results: dict, option: str, sweep: dict) -> list[str]:
    """The sweep's runs not in the summary table; the plot shows them all."""
    runs, model = results["runs"], sweep["model"]
    shown = {
        (fw, case["model"], case["depth"]) for case in results["cases"] for fw in case["frameworks"]
    }
    title = {
        "depth": "Depth sweep (`lm.nn.MLP`, 32 wide)",
        "batch": f"Batch-size sweep ({case_name('mlp')})",
    }[option]
    lines = [
        f"## {title}",
        "",
        f"| {option} | "
        + " | ".join(f"{NAMES[fw]} first / later / peak RSS" for fw in sweep["frameworks"])
        + " |",
        "|---" * (len(sweep["frameworks"]) + 1) + "|",
    ]
    for value in sweep["values"]:
        cells = []
        for fw in sweep["frameworks"]:
            run = find(runs, fw, model, **{"batch": 1, "depth": None, option: value})
            times = (
                "in the summary"
                if (fw, model, run["depth"]) in shown and run["batch"] == 1
                else f"{seconds(run['first'])} / {seconds(run['warm'])}"
            )
            cells.append(f"{times} / {run['peak_rss_mb']:.0f} MB")
        lines.append(f"| {value} | " + " | ".join(cells) + " |")
    what = "depth" if option == "depth" else "batch size"
    return lines + ["", f"![init time against {what}](benchmarks/{option}.png)", ""]


def _plot(runs: list[dict], option: str, sweep: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import FuncFormatter

    def time_labels(low: float, high: float) -> FuncFormatter:
        """Labels for the minor ticks of a log axis: all of them within a decade, 2 and
        5 (times a power of ten) within two, none beyond."""
        shown = range(1, 10) if high / low < 10 else (2, 5) if high / low < 100 else ()

        def label(value: float, _) -> str:
            mantissa = round(value / 10 ** math.floor(math.log10(value)))
            return seconds(value) if mantissa in shown else ""

        return FuncFormatter(label)

    figure, axes = plt.subplots(1, 2, figsize=(9, 3.5))
    for ax, field, title in zip(axes, ("first", "warm"), ("first init", "later inits")):
        for fw in sweep["frameworks"]:
            ys = [
                find(runs, fw, sweep["model"], **{"batch": 1, "depth": None, option: v})[field]
                for v in sweep["values"]
            ]
            ax.plot(
                sweep["values"],
                ys,
                marker="o",
                color=COLOURS[fw],
                label=NAMES[fw].replace("`", ""),
            )
        ax.set(xlabel=option, ylabel="time (log scale)", title=title, xscale="log", yscale="log")
        ax.yaxis.set_major_formatter(FuncFormatter(lambda value, _: seconds(value)))
        ax.yaxis.set_minor_formatter(time_labels(*ax.get_ylim()))
        ax.legend(fontsize=8)
    figure.tight_layout()
    figure.savefig(path, dpi=100)
    plt.close(figure)
