"""One measurement in a fresh process: `python -m benchmarks.worker FRAMEWORK MODEL
[--batch B] [--depth D] [--warm N]` prints one JSON line: the first init's time, the
later (warm) inits' times, RSS after imports and at its peak, and the parameter bytes.

Import time is not counted: every framework pays it once, whatever the model."""

import argparse
import json
import resource
import statistics
import time
from collections.abc import Callable
from typing import Any

import jax

from . import models


def rss_mb() -> float:
    with open("/proc/self/statm") as f:
        pages = int(f.read().split()[1])
    return pages * resource.getpagesize() / 2**20


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux


def shapes_of_a_billion_parameter_transformer(repeats: int) -> dict:
    """`lm.init_shapes` of a 20-block Transformer of width 2048 (1.0 B parameters)."""
    import jax.numpy as jnp

    import lazymod as lm

    width, hidden, blocks = 2048, 8192, 20
    models.TRANSFORMER.update(width=width, hidden=hidden, heads=16)
    spec = jax.ShapeDtypeStruct((1, models.TRANSFORMER["seq_len"], width), jnp.float32)
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        shapes = lm.init_shapes(
            [models.LazyBlock() for _ in range(blocks)], spec, method=models.transformer_forward
        )
        times.append(time.perf_counter() - start)
    count = sum(
        leaf.size for leaf in jax.tree.leaves(shapes) if isinstance(leaf, jax.ShapeDtypeStruct)
    )
    return {"first": times[0], "warm": times[1:], "parameters": count}


def train_step_parity(steps: int) -> dict:
    """Step times of the MLP built by lazymod and by Equinox, interleaved, under one
    `eqx.filter_jit` training step, and the dispatch cost of a trivial filter_jit."""
    import equinox as eqx
    import jax.numpy as jnp

    built = {
        "lazymod": models.lazymod_mlp(jax.random.key(0), 1),
        "equinox": models.equinox_mlp(jax.random.key(0), 1),
    }
    x = jax.random.normal(jax.random.key(1), (256, models.MLP_IN))
    y = jax.random.normal(jax.random.key(2), (256, models.MLP_OUT))

    @eqx.filter_jit
    def step(model):
        def loss(model):
            return jnp.mean((jax.vmap(model)(x) - y) ** 2)

        grads = eqx.filter_grad(loss)(model)
        return eqx.apply_updates(model, jax.tree.map(lambda g: -1e-3 * g, grads))

    @eqx.filter_jit
    def nothing(model):
        return None

    times = {f"{name}_{what}": [] for name in built for what in ("step", "dispatch")}
    for name, model in built.items():  # compile both first
        jax.block_until_ready(step(model))
        nothing(model)
    for _ in range(steps):
        for name, model in built.items():
            start = time.perf_counter()
            jax.block_until_ready(step(model))
            times[f"{name}_step"].append(time.perf_counter() - start)
            start = time.perf_counter()
            nothing(model)
            times[f"{name}_dispatch"].append(time.perf_counter() - start)
    return times


def floors(repeats: int) -> dict:
    """What any init that traces the forward pass pays, next to lazymod's and Equinox's
    warm inits of the same models, all measured warm in this one process (medians, in
    seconds, the four interleaved):

    - `values`: JAX computing the model's parameters directly, one `jax.random.uniform`
      per array, as `eqx.nn.Linear` draws them;
    - `trace`: JAX tracing the Equinox-built model's forward pass on the spec once.

    For `init_shapes` of the 1 B Transformer, `trace` is `eqx.filter_eval_shape` of
    the forward pass of the Equinox-built (abstract) model."""
    import equinox as eqx
    import jax.numpy as jnp

    import lazymod as lm

    key = jax.random.key(0)

    def values_of(model: Any) -> Callable[[], Any]:
        leaves = jax.tree.leaves(eqx.filter(model, eqx.is_array))

        def compute() -> Any:
            keys = jax.random.split(key, len(leaves))
            return [
                jax.random.uniform(k, leaf.shape, leaf.dtype, -0.1, 0.1)
                for k, leaf in zip(keys, leaves)
            ]

        return compute

    def trace_of(model: Any, spec: jax.ShapeDtypeStruct) -> Callable[[], Any]:
        # A new function each time: jax.make_jaxpr would reuse the trace of the last.
        return lambda: jax.make_jaxpr(lambda x: models.batched(model, x))(spec)

    def timed(functions: dict[str, Callable[[], Any]]) -> dict[str, float]:
        for function in functions.values():
            models.block(function())
        times: dict[str, list[float]] = {name: [] for name in functions}
        for _ in range(repeats):
            for name, function in functions.items():
                start = time.perf_counter()
                models.block(function())
                times[name].append(time.perf_counter() - start)
        return {name: statistics.median(ts) for name, ts in times.items()}

    results = {}
    for model, depth, size in (
        ("mlp", None, models.MLP_IN),
        ("deep_mlp", 1000, models.NARROW_WIDTH),
    ):
        build_lazymod, build_equinox = (
            models.builder(framework, model, depth) for framework in ("lazymod", "equinox")
        )
        built = build_equinox(key, 1)
        spec = jax.ShapeDtypeStruct((1, size), jnp.float32)
        results[model] = timed(
            {
                "lazymod": lambda b=build_lazymod: b(key, 1),
                "equinox": lambda b=build_equinox: b(key, 1),
                "values": values_of(built),
                "trace": trace_of(built, spec),
            }
        )
    # Last: it changes the Transformer's sizes.
    width, hidden, blocks = 2048, 8192, 20
    models.TRANSFORMER.update(width=width, hidden=hidden, heads=16)
    spec = jax.ShapeDtypeStruct((1, models.TRANSFORMER["seq_len"], width), jnp.float32)
    abstract = eqx.filter_eval_shape(lambda: models.equinox_transformer(key, 1, blocks))
    results["shapes_1b"] = timed(
        {
            "lazymod": lambda: lm.init_shapes(
                [models.LazyBlock() for _ in range(blocks)], spec, method=models.transformer_forward
            ),
            "trace": lambda: eqx.filter_eval_shape(models.transformer_forward, abstract, spec),
        }
    )
    return results


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("framework")
    parser.add_argument("model")
    parser.add_argument("--batch", type=int, default=1)
    parser.add_argument("--depth", type=int, default=None)
    parser.add_argument("--warm", type=int, default=5, help="warm inits after the first")
    args = parser.parse_args()
    if args.model == "shapes_1b":
        print(json.dumps(shapes_of_a_billion_parameter_transformer(args.warm + 1)))
        return
    if args.model == "floors":
        print(json.dumps(floors(args.warm)))
        return
    if args.model == "train_step":
        print(json.dumps(train_step_parity(args.warm)))
        return

    build = models.builder(args.framework, args.model, args.depth)
    keys = [jax.random.key(i) for i in range(args.warm + 1)]
    jax.block_until_ready(keys)
    rss_before = rss_mb()
    times = []
    for key in keys:
        start = time.perf_counter()
        params = models.block(build(key, args.batch))
        times.append(time.perf_counter() - start)
        if len(times) == 1:
            peak = peak_rss_mb()
        del params
    params = build(keys[0], args.batch)
    result = {
        "first": times[0],
        "warm": times[1:],
        "rss_before_mb": rss_before,
        "peak_rss_mb": peak,
        "parameter_mb": models.parameter_bytes(params) / 2**20,
        "parameters": models.num_parameters(params),
    }
    print(json.dumps(result))


if __name__ == "__main__":
    main()
