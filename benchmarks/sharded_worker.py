"""One measurement of `python -m benchmarks.sharded`: a `Linear` with `features`
outputs and `inputs` inputs, initialized straight into its shards (the output axis
split over every device), by lazymod or by Flax's `jax.jit(init, out_shardings=...)`.
Prints one line `RESULT {json}`: the seconds the init took in this fresh process
(compilation included), the peak of the Python heap during it (NumPy's buffers
included: NumPy reports them to `tracemalloc`) and the process's peak RSS. With
`--multiprocess`, the process first joins the local `jax.distributed` job that
`examples/local_cluster.py` started."""

import argparse
import json
import resource
import sys
import time
import tracemalloc
from collections.abc import Callable
from pathlib import Path
from typing import Any


sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "examples"))


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("framework", choices=["lazymod", "flax"])
    parser.add_argument("features", type=int)
    parser.add_argument("inputs", type=int)
    parser.add_argument("--multiprocess", action="store_true")
    options = parser.parse_args()
    if options.multiprocess:
        import local_cluster  # does not import jax

        local_cluster.connect()
    import jax
    import jax.numpy as jnp

    mesh = jax.make_mesh((len(jax.devices()),), ("model",))
    spec = jax.ShapeDtypeStruct((options.inputs,), jnp.float32)
    build = _lazymod if options.framework == "lazymod" else _flax
    init = build(mesh, options.features, spec)
    tracemalloc.start()
    start = time.perf_counter()
    weight = jax.block_until_ready(init())
    seconds = time.perf_counter() - start
    staged = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    assert weight.size == options.features * options.inputs
    assert len(weight.addressable_shards) == jax.local_device_count()
    result = {
        "process": jax.process_index(),
        "seconds": seconds,
        "staging_mib": staged / 2**20,
        "peak_rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
    }
    print("RESULT " + json.dumps(result), flush=True)


def _lazymod(mesh: Any, features: int, spec: Any) -> Callable[[], Any]:

    import lazymod as lm

    layer = lm.nn.Linear(features).partitioned(weight=("model", None), bias=("model",))
    return lambda: lm.init(layer, 0, spec, sharding=mesh).weight  # weight: (out, in)


def _flax(mesh: Any, features: int, spec: Any) -> Callable[[], Any]:
    import flax.linen as nn
    import jax

    model = nn.Dense(features)
    # The kernel is (in, out): split its output axis, as lazymod's rows are.
    split = {"kernel": jax.P(None, "model"), "bias": jax.P("model")}

    def init() -> Any:
        key = jax.random.key(0)
        shapes = jax.eval_shape(model.init, key, spec)
        shardings = {
            "params": {
                name: jax.sharding.NamedSharding(mesh, split[name]) for name in shapes["params"]
            }
        }
        return jax.jit(model.init, out_shardings=shardings)(key, spec)["params"]["kernel"]

    return init


if __name__ == "__main__":
    main()
