"""One process of tests/test_multihost.py's job: 2 processes of 2 CPU devices each,
started by `examples/local_cluster.py`. Each process initializes the same model in its
shards over the 4 devices and checks its own shards against an unsharded init; it
prints one line `RESULT {json}` with the figures the test reports."""

import json
import sys
import time
import tracemalloc
from collections.abc import Callable
from pathlib import Path
from typing import Any


sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "examples"))
import local_cluster  # noqa: E402  (does not import jax)


started = time.perf_counter()
local_cluster.connect()

import equinox as eqx  # noqa: E402
import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
from jax.sharding import NamedSharding, PartitionSpec as P  # noqa: E402

import lazymod as lm  # noqa: E402


connected = time.perf_counter() - started


class MLP(lm.Module):
    layers: list

    def __init__(self) -> None:
        self.layers = [lm.nn.Linear(n) for n in (2048, 2048, 256, 64)]

    def __call__(self, x: jax.Array) -> jax.Array:
        for layer in self.layers[:-1]:
            x = jax.nn.relu(layer(x))
        return self.layers[-1](x)


auto = jax.sharding.AxisType.Auto
mesh = jax.make_mesh((2, 2), ("data", "model"), axis_types=(auto, auto))
everywhere = ("data", "model")  # split over all 4 devices, so across the processes
SHARDINGS = {
    "layers[0].weight": P(everywhere, None),  # (2048, 256): rows
    "layers[0].bias": P(everywhere),  # (2048,): small, split
    "layers[1].weight": P(None, everywhere),  # (2048, 2048), 16 MB, the largest: columns
    "layers[2].weight": P(),  # (256, 2048): large, replicated
    "layers[3].weight": P("data", None),  # (64, 256): small, rows across processes
}


def rule(path: str, leaf: jax.ShapeDtypeStruct) -> NamedSharding:
    return NamedSharding(mesh, SHARDINGS.get(path, P()))  # the other biases: replicated


def arrays(tree: Any) -> dict[str, jax.Array]:
    leaves = jax.tree_util.tree_leaves_with_path(eqx.filter(tree, eqx.is_array))
    return {jax.tree_util.keystr(path): leaf for path, leaf in leaves}


def bits(x: Any) -> np.ndarray:
    return np.ascontiguousarray(np.asarray(x)).view(np.uint8)


def host_peak(function: Callable[[], Any]) -> tuple[Any, int]:
    """`function()`, and the peak host memory traced (NumPy reports its buffers)
    while it ran, above what was traced before."""
    tracemalloc.start()
    before = tracemalloc.get_traced_memory()[0]
    tracemalloc.reset_peak()
    out = function()
    peak = tracemalloc.get_traced_memory()[1] - before
    tracemalloc.stop()
    return out, peak


spec = jax.ShapeDtypeStruct((256,), jnp.float32)
timings = {}

# The sharded init once to compile its programs, then measured: the host memory traced
# during the second run is the values' staging, not the Python objects of compilation
# (which also make tracemalloc slow).
t = time.perf_counter()
lm.init(MLP(), 0, spec, sharding=rule)
timings["sharded_init_cold"] = time.perf_counter() - t
t = time.perf_counter()
sharded, sharded_peak = host_peak(lambda: lm.init(MLP(), 0, spec, sharding=rule))
timings["sharded_init"] = time.perf_counter() - t
t = time.perf_counter()
plain, plain_peak = host_peak(lambda: lm.init(MLP(), 0, spec))  # this process's device
timings["plain_init"] = time.perf_counter() - t
reference = {path: np.asarray(leaf) for path, leaf in arrays(plain).items()}
got = arrays(sharded)
largest = max(leaf.nbytes for leaf in reference.values())

# (a) Every array has its sharding, and each shard this process holds equals the same
# slice of the unsharded init, bit for bit.
assert got.keys() == reference.keys(), (got.keys(), reference.keys())
shards_checked = 0
for path, array in got.items():
    want = NamedSharding(mesh, SHARDINGS.get(path[1:], P()))  # keystr starts with "."
    assert array.sharding == want, (path, array.sharding, want)
    expected_devices = {d for d in want.device_set if d.process_index == jax.process_index()}
    assert {s.device for s in array.addressable_shards} == expected_devices, path
    assert not array.is_fully_addressable and len(array.sharding.device_set) == 4, path
    for shard in array.addressable_shards:
        data = np.asarray(shard.data)
        assert data.shape == reference[path][shard.index].shape, (path, shard.index)
        assert np.array_equal(bits(data), bits(reference[path][shard.index])), (path, shard.index)
        shards_checked += 1
spread = got[".layers[1].weight"]
assert not spread.is_fully_addressable and len(spread.addressable_shards) == 2

# (b) The sharded init staged far less than the largest weight in host memory.
assert sharded_peak < largest / 2, (sharded_peak, largest)

# (c) init_shapes gives the same shapes, dtypes and shardings.
shapes = lm.init_shapes(MLP(), spec, sharding=rule)
flat_shapes = {
    jax.tree_util.keystr(path): leaf
    for path, leaf in jax.tree_util.tree_leaves_with_path(shapes)
    if isinstance(leaf, jax.ShapeDtypeStruct)
}
assert flat_shapes.keys() == got.keys(), (flat_shapes.keys(), got.keys())
for path, leaf in flat_shapes.items():
    assert (leaf.shape, leaf.dtype) == (got[path].shape, got[path].dtype), path
    assert leaf.sharding == got[path].sharding, (path, leaf.sharding, got[path].sharding)
assert jax.tree.structure(shapes) == jax.tree.structure(sharded)


# (d) A jitted training step runs on the global arrays, across both processes, and
# agrees with the same step on this process's unsharded copy. XLA chooses the
# shardings of the step's outputs (with Auto axes it split layers[3].bias as
# layers[3].weight); constraining the new parameters to init_shapes' shardings keeps
# them where the init put them.
@eqx.filter_jit
def step(model: MLP, x: Any, shardings: Any = None) -> tuple[jax.Array, MLP]:
    def loss(model: MLP) -> jax.Array:
        return jnp.sum(jax.vmap(model)(x) ** 2)

    value, grads = eqx.filter_value_and_grad(loss)(model)
    params, static = eqx.partition(model, eqx.is_array)
    params = jax.tree.map(lambda p, g: p - 1e-3 * g, params, eqx.filter(grads, eqx.is_array))
    if shardings is not None:
        params = jax.tree.map(jax.lax.with_sharding_constraint, params, shardings)
    return value, eqx.combine(params, static)


is_shape = lambda leaf: isinstance(leaf, jax.ShapeDtypeStruct)  # noqa: E731
shardings = jax.tree.map(lambda s: s.sharding, eqx.filter(shapes, is_shape), is_leaf=is_shape)
x = np.linspace(-1, 1, 8 * 256, dtype=np.float32).reshape(8, 256)  # the same in every process
t = time.perf_counter()
loss, trained = step(sharded, x, shardings)
loss = float(loss)  # replicated: readable in every process
timings["sharded_step"] = time.perf_counter() - t
plain_loss, plain_trained = step(plain, x)
assert np.isclose(loss, float(plain_loss), rtol=1e-5), (loss, float(plain_loss))
plain_trained = arrays(plain_trained)
for path, array in arrays(trained).items():
    assert array.sharding.is_equivalent_to(got[path].sharding, array.ndim), path
    for shard in array.addressable_shards:
        np.testing.assert_allclose(
            np.asarray(shard.data),
            np.asarray(plain_trained[path])[shard.index],
            rtol=1e-5,
            atol=1e-6,
            err_msg=path,
        )
    assert not np.array_equal(
        np.asarray(array.addressable_shards[0].data),
        reference[path][array.addressable_shards[0].index],
    ), path

# (e) Each process saves its own shards with Orbax into a directory both see, and
# restores them into other shardings (rows for columns): no initializer runs, and each
# shard equals the unsharded init's slice.
if len(sys.argv) > 1:
    directory = Path(sys.argv[1]) / "checkpoint"
    t = time.perf_counter()
    lm.save_sharded(directory, sharded)
    swapped = {".layers[0].weight": P(None, everywhere), ".layers[1].weight": P(everywhere, None)}

    def other(path: str, leaf: jax.ShapeDtypeStruct) -> NamedSharding:
        return NamedSharding(mesh, swapped.get("." + path, SHARDINGS.get(path, P())))

    restored = arrays(lm.restore_sharded(MLP(), directory, spec, sharding=other))
    timings["save_and_restore"] = time.perf_counter() - t
    for path, array in restored.items():
        want = NamedSharding(mesh, swapped.get(path, SHARDINGS.get(path[1:], P())))
        assert array.sharding == want and not array.is_fully_addressable, path
        for shard in array.addressable_shards:
            assert np.array_equal(bits(shard.data), bits(reference[path][shard.index])), path
            shards_checked += 1

local_cluster.check_own_sockets("after the step")
timings["worker"] = time.perf_counter() - started
timings["connect"] = connected
result = {
    "process": jax.process_index(),
    "shards_checked": shards_checked,
    "largest_weight_bytes": largest,
    "sharded_init_host_peak_bytes": sharded_peak,
    "plain_init_host_peak_bytes": plain_peak,
    "loss": loss,
    "timings": {name: round(seconds, 3) for name, seconds in timings.items()},
}
print("RESULT " + json.dumps(result), flush=True)
