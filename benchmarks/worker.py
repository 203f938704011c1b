"""One measurement in a fresh process: `python -m benchmarks.worker FRAMEWORK MODEL
[--batch B] [--depth D] [--warm N]` prints one JSON line: the first init's time, the
later (warm) inits' times, RSS after imports and at its peak, and the parameters' count
and bytes. MODEL is one of `models.BUILDERS`, or `floors` or `train_step` (whatever
FRAMEWORK), which measure what their functions here say.

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
    """What any init that traces the forward pass pays, all measured warm in this one
    process (medians, in seconds, interleaved):

    - `values`: JAX computing the model's parameters directly, one `jax.random.uniform`
      per array, as `eqx.nn.Linear` draws them;
    - `trace`: JAX tracing the Equinox-built model's forward pass on the spec once
      (for the user's list, on one example, as its init is called).

    For `init_shapes` of the 1 B Transformer, `trace` is `eqx.filter_eval_shape` of
    the forward pass of the Equinox-built (abstract) model, and there are no values."""
    import equinox as eqx
    import jax.numpy as jnp

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
    for model, size in (("mlp", models.MLP_IN), ("deep_mlp", models.NARROW_WIDTH)):
        built = models.builder("equinox", model)(key, 1)
        spec = jax.ShapeDtypeStruct((1, size), jnp.float32)
        results[model] = timed({"values": values_of(built), "trace": trace_of(built, spec)})
    # The user's list is called on one example, as lazymod's init calls it.
    listed = models.equinox_user_list(key, 1)
    one = jax.ShapeDtypeStruct((models.NARROW_WIDTH,), jnp.float32)
    results["user_list"] = timed(
        {"values": values_of(listed), "trace": lambda: jax.make_jaxpr(lambda x: listed(x))(one)}
    )
    sizes = models.BIG_TRANSFORMER
    abstract = models.equinox_transformer_shapes(key, 1)
    spec = models.transformer_spec(1, sizes)
    results["init_shapes"] = timed(
        {"trace": lambda: eqx.filter_eval_shape(models.transformer_forward, abstract, spec)}
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

    def timed(key: Any) -> tuple[float, Any]:
        start = time.perf_counter()
        params = build(key, args.batch)
        models.block(params)
        return time.perf_counter() - start, params

    first, params = timed(keys[0])
    result = {
        "first": first,
        "rss_before_mb": rss_before,
        "peak_rss_mb": peak_rss_mb(),
        "parameter_mb": models.parameter_bytes(params) / 2**20,
        "parameters": models.num_parameters(params),
    }
    del params
    result["warm"] = [timed(key)[0] for key in keys[1:]]
    print(json.dumps(result))


if __name__ == "__main__":
    main()
