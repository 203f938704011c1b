"""Turns the benchmark results into `docs/benchmarks.md`, its plots and a JSON file."""

import json
import statistics
from pathlib import Path


NAMES = {
    "lazymod": "lazymod `lm.init`",
    "equinox": "Equinox by hand",
    "flax_lazy_init": "Flax `lazy_init`",
    "flax_jit": "Flax `jit(init)`",
    "flax_eager": "Flax `init`",
}
MODEL_NAMES = {
    "mlp": "MLP 784 → 7×1024 → 10",
    "cnn": "CNN, 5 blocks + BatchNorm, 3×64×64",
    "transformer": "Transformer encoder, 12 blocks, d=512",
    "deep_mlp": "MLP 1000 layers × 32",
}


def lookup(table: dict, framework: str, model: str, **options) -> dict | None:
    for (fw, m, opts), summary in table.items():
        if fw == framework and m == model and json.loads(opts) == options:
            return summary
    return None


def seconds(value: float) -> str:
    return f"{value * 1000:.0f} ms" if value < 1 else f"{value:.2f} s"


def verdict(ok: bool) -> str:
    return "met" if ok else "**not met**"


def write(results: dict, out: Path) -> str:
    out.parent.mkdir(parents=True, exist_ok=True)
    images = out.parent / "benchmarks"
    images.mkdir(exist_ok=True)
    (images / "results.json").write_text(
        json.dumps({**results, **{k: _jsonable(results[k]) for k in ("main", "depth", "batch")}})
    )
    main, depth, batch = results["main"], results["depth"], results["batch"]
    machine = results["machine"]
    lines = [
        "# Benchmarks",
        "",
        "Init time of lazymod against the same models written by hand in Equinox and in",
        "Flax linen. Every number is a median over fresh processes (import time not",
        "counted), the frameworks interleaved; ratios are lazymod's time over the peer's,",
        "measured in the same run. Regenerate this page with:",
        "",
        "```sh",
        'pip install -e ".[bench]"',
        "python -m benchmarks          # --quick for a 2-minute version",
        "```",
        "",
        "or time one model yourself, the way the benchmark does (first call in a fresh",
        "process, then warm calls):",
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
        f"Machine: {machine['platform']}, Python {machine['python']}, {machine['cpus']} CPUs,"
        f" {machine['repeats']} fresh processes per case; the whole run took"
        f" {results['seconds'] / 60:.0f} min.",
        "",
        "## First init in a fresh process, and later (warm) inits",
        "",
    ]
    frameworks = ["lazymod", "equinox", "flax_lazy_init", "flax_jit"]
    header = "| model | " + " | ".join(NAMES[f] for f in frameworks) + " |"
    for field, title in (("first", "first init"), ("warm", "warm init")):
        lines += [f"**{title}** (lazymod's ratio to each peer in brackets)", "", header]
        lines.append("|---" * (len(frameworks) + 1) + "|")
        for model in dict.fromkeys(m for _, m, _ in main):
            cells = []
            ours = None
            for fw in frameworks:
                options = {"depth": 1000} if model == "deep_mlp" else {}
                summary = lookup(main, fw, model, **options)
                if summary is None:
                    cells.append("")
                    continue
                value = summary[field]
                if fw == "lazymod":
                    ours = value
                    cells.append(seconds(value))
                else:
                    cells.append(f"{seconds(value)} ({ours / value:.2f}x)")
            lines.append(f"| {MODEL_NAMES[model]} | " + " | ".join(cells) + " |")
        lines.append("")

    lines += ["## Targets", "", "| target | measured | |", "|---|---|---|"]
    lm_mlp, eqx_mlp = lookup(main, "lazymod", "mlp"), lookup(main, "equinox", "mlp")
    flax_mlp = lookup(main, "flax_lazy_init", "mlp")
    flax_jit = lookup(main, "flax_jit", "mlp")
    ratio = lm_mlp["warm"] / eqx_mlp["warm"]
    lines.append(f"| 1. warm init ≤ 1.0x Equinox (MLP) | {ratio:.2f}x | {verdict(ratio <= 1.0)} |")
    ratios = [lm_mlp["first"] / p["first"] for p in (eqx_mlp, flax_mlp, flax_jit)]
    lines.append(
        "| 2. first init ≤ 0.5x Equinox and Flax (MLP) | "
        f"{ratios[0]:.2f}x Equinox, {ratios[1]:.2f}x Flax lazy_init, {ratios[2]:.2f}x Flax jit"
        f" | {verdict(max(ratios) <= 0.5)} |"
    )
    big, small = max(b["batch"] for b in _options(batch)), min(b["batch"] for b in _options(batch))
    lm_big, lm_small = (
        lookup(batch, "lazymod", "mlp", batch=big),
        lookup(batch, "lazymod", "mlp", batch=small),
    )
    growth = lm_big["warm"] / lm_small["warm"]
    memory = lm_big["peak_rss_mb"] - lm_big["rss_before_mb"]
    budget = lm_big["parameter_mb"] + 64
    lines.append(
        f"| 3. batch {big} / batch {small} ≤ 1.05 (warm) | {growth:.2f}x"
        f" | {verdict(growth <= 1.05)} |"
    )
    lines.append(
        f"| 3. peak RSS during first init ≤ parameters + 64 MB | {memory:.0f} MB (budget "
        f"{budget:.0f} MB) | {verdict(memory <= budget)} |"
    )
    depths = sorted({o["depth"] for o in _options(depth)})
    if 1000 in depths and 100 in depths:
        lm_1000, lm_100 = (lookup(depth, "lazymod", "deep_mlp", depth=d) for d in (1000, 100))
        eqx_1000 = lookup(depth, "equinox", "deep_mlp", depth=1000)
        r = lm_1000["warm"] / eqx_1000["warm"]
        r_first = lm_1000["first"] / eqx_1000["first"]
        lines.append(
            f"| 4. 1000 layers no slower than Equinox | warm {r:.2f}x, first {r_first:.2f}x"
            f" | {verdict(r <= 1.0 and r_first <= 1.0)} |"
        )
        g = lm_1000["warm"] / lm_100["warm"]
        lines.append(f"| 4. time(1000) / time(100) ≤ 11 (warm) | {g:.1f} | {verdict(g <= 11)} |")
    shapes = results["shapes_1b"]
    warm_shapes = statistics.median(shapes["warm"])
    lines.append(
        f"| 5. `init_shapes` of a {shapes['parameters'] / 1e9:.2f} B parameter Transformer"
        f" < 0.3 s | first {seconds(shapes['first'])}, later {seconds(warm_shapes)} |"
        f" {verdict(shapes['first'] < 0.3)} |"
    )
    train = results["train_step"]
    step = statistics.median(train["lazymod_step"]) / statistics.median(train["equinox_step"])
    dispatch = statistics.median(train["lazymod_dispatch"]) / statistics.median(
        train["equinox_dispatch"]
    )
    lines.append(
        f"| 6. train step 1.00x (±3%) of Equinox's; same filter_jit dispatch | step {step:.3f}x,"
        f" dispatch {dispatch:.2f}x | {verdict(abs(step - 1) <= 0.03)} |"
    )
    lines += [""]
    if "floors" in results:
        lines += _floors_table(results["floors"])
    lines += [
        "What the time is spent on, and what to do when init is slow, is on the page",
        "[where init time goes](performance.md).",
        "",
    ]

    lines += _sweep_table(depth, "deep_mlp", "depth", "Depth sweep (MLP, 32 wide)")
    lines += ["![init time against depth](benchmarks/depth.png)", ""]
    lines += _sweep_table(batch, "mlp", "batch", "Batch-size sweep (MLP 784 → 7×1024 → 10)")
    lines += ["![init time against batch size](benchmarks/batch.png)", ""]
    _plot(depth, "deep_mlp", "depth", images / "depth.png", log_x=True)
    _plot(batch, "mlp", "batch", images / "batch.png", log_x=True)
    text = "\n".join(lines)
    out.write_text(text)
    return text


def _floors_table(floors: dict) -> list[str]:
    lines = [
        "## What any init by tracing pays",
        "",
        "Inferring shapes by tracing the forward pass, and drawing the random numbers JAX",
        "draws, costs at least the time JAX takes to trace the forward pass once plus the",
        "time JAX takes to compute the values (one `jax.random.uniform` per array). Where",
        "that floor is above Equinox's time, no init by tracing can match Equinox; the gap",
        "between lazymod and the floor is lazymod's own cost. Warm medians, measured in one",
        "process, interleaved (`python -m benchmarks.worker lazymod floors`):",
        "",
        "| model | lazymod | Equinox by hand | JAX computing the values | JAX tracing the forward"
        " pass | floor (values + trace) |",
        "|---|---|---|---|---|---|",
    ]
    for model in ("mlp", "deep_mlp"):
        f = floors[model]
        floor = f["values"] + f["trace"]
        lines.append(
            f"| {MODEL_NAMES[model]} | {seconds(f['lazymod'])} | {seconds(f['equinox'])} |"
            f" {seconds(f['values'])} | {seconds(f['trace'])} | {seconds(floor)}"
            f" ({floor / f['equinox']:.2f}x Equinox) |"
        )
    f = floors["shapes_1b"]
    lines.append(
        f"| `init_shapes`, 1 B parameter Transformer | {seconds(f['lazymod'])} | | |"
        f" {seconds(f['trace'])} (`eqx.filter_eval_shape` of the forward pass) |"
        f" {seconds(f['trace'])} |"
    )
    return lines + [""]


def _options(table: dict) -> list[dict]:
    return [json.loads(opts) for _, _, opts in table]


_SUMMARY_FIELDS = ("first", "warm", "peak_rss_mb", "rss_before_mb", "parameter_mb", "parameters")


def load(path: Path) -> dict:
    """The results `write` saved in results.json, as `write` takes them."""
    results = json.loads(path.read_text())
    for name in ("main", "depth", "batch"):
        table = {}
        for row in results[name]:
            options = {
                k: v
                for k, v in row.items()
                if k not in ("framework", "model") and k not in _SUMMARY_FIELDS
            }
            summary = {k: row[k] for k in _SUMMARY_FIELDS}
            table[(row["framework"], row["model"], json.dumps(options))] = summary
        results[name] = table
    return results


def _jsonable(table: dict) -> list:
    return [{"framework": f, "model": m, **json.loads(o), **s} for (f, m, o), s in table.items()]


def _sweep_table(table: dict, model: str, option: str, title: str) -> list[str]:
    frameworks = list(dict.fromkeys(f for f, _, _ in table))
    values = sorted({o[option] for o in _options(table)})
    lines = [
        f"## {title}",
        "",
        f"| {option} | "
        + " | ".join(f"{NAMES[f]} first / warm / peak RSS" for f in frameworks)
        + " |",
        "|---" * (len(frameworks) + 1) + "|",
    ]
    for value in values:
        cells = []
        for fw in frameworks:
            s = lookup(table, fw, model, **{option: value})
            cells.append(
                f"{seconds(s['first'])} / {seconds(s['warm'])} / {s['peak_rss_mb']:.0f} MB"
            )
        lines.append(f"| {value} | " + " | ".join(cells) + " |")
    return lines + [""]


def _plot(table: dict, model: str, option: str, path: Path, log_x: bool) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    frameworks = list(dict.fromkeys(f for f, _, _ in table))
    values = sorted({o[option] for o in _options(table)})
    figure, axes = plt.subplots(1, 2, figsize=(9, 3.5))
    for ax, field in zip(axes, ("first", "warm")):
        for fw in frameworks:
            ys = [lookup(table, fw, model, **{option: v})[field] for v in values]
            ax.plot(values, ys, marker="o", label=NAMES[fw].replace("`", ""))
        ax.set(xlabel=option, ylabel="seconds", title=f"{field} init", yscale="log")
        if log_x:
            ax.set_xscale("log")
    axes[0].legend(fontsize=8)
    figure.tight_layout()
    figure.savefig(path, dpi=100)
    plt.close(figure)
