"""Sharded init computes each array in its shards: on 8 simulated CPU devices (in a
fresh process, so that XLA makes them), every sharding gives the values of an
unsharded init bit for bit, and no host array as large as a weight is ever made."""

import os
import subprocess
import sys
import textwrap


CHECKS = """
import tracemalloc

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import NamedSharding, PartitionSpec as P

import lazymod as lm

assert len(jax.devices()) == 8
auto = (jax.sharding.AxisType.Auto,) * 2
mesh = jax.make_mesh((2, 4), ("data", "model"), axis_types=auto)


class Net(lm.Module):
    embed: lm.nn.Embedding
    expand: lm.nn.Linear
    conv: lm.nn.Conv2d
    rotation: jax.Array

    def __init__(self):
        self.embed = lm.nn.Embedding(512, 256)
        self.expand = lm.nn.Linear(16384)
        self.conv = lm.nn.Conv2d(32, 3)
        self.rotation = lm.Initializer(  # QR: off the fast path
            lambda key: jax.nn.initializers.orthogonal()(key, (512, 256))
        )

    def __call__(self, token):
        x = self.expand(self.embed(token))
        return self.conv(x.reshape(256, 8, 8)).sum() + self.rotation.sum()


def same(a, b):
    return all(
        np.array_equal(np.asarray(x), np.asarray(y))
        for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b), strict=True)
    )


token = jax.ShapeDtypeStruct((), jnp.int32)
plain = lm.init(Net(), 0, token)
for name, spec in {
    "rows": P("model", None),
    "columns": P(None, "model"),
    "grid": P("data", "model"),
    "replicated": P(),
}.items():

    def rule(path, leaf):
        fits = leaf.ndim >= len(spec) and all(
            leaf.shape[i] % mesh.shape[axis] == 0 for i, axis in enumerate(spec) if axis
        )
        return NamedSharding(mesh, spec) if fits else None

    tracemalloc.start()
    sharded = lm.init(Net(), 0, token, sharding=rule)
    jax.block_until_ready(sharded)
    staged = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    assert sharded.expand.weight.sharding == NamedSharding(mesh, spec)
    assert same(sharded, plain), name
    shapes = lm.init_shapes(Net(), token, sharding=rule)
    assert shapes.expand.weight.sharding == sharded.expand.weight.sharding
    print(f"{name}: equal, host staging {staged / 2**20:.1f} MiB")

weight = 16384 * 256 * 4  # 16 MiB; staging is bounded by a chunk, not a weight
assert staged < weight / 2, (staged, weight)

# Under eqx.filter_jit, the arrays are sharding constraints inside the jit.
rows = NamedSharding(mesh, P("model", None))


def by_rank(path, leaf):
    return rows if leaf.ndim == 2 else None


jitted = eqx.filter_jit(lambda key: lm.init(Net(), key, token, sharding=by_rank))(jax.random.key(0))
assert jitted.expand.weight.sharding.is_equivalent_to(rows, 2) and same(jitted, plain)
print("jit: equal")

# Logical axis names on built-in layers, mapped to the mesh by rules.
logical = lm.nn.Linear(16384).partitioned(weight=("mlp", "embed"), bias=("mlp",))
rules = lm.AxisRules(mesh, {"mlp": "model", "embed": "data"})
vector = jax.ShapeDtypeStruct((256,), jnp.float32)
built = lm.init(logical, 0, vector, sharding=rules)
assert built.weight.sharding.spec == P("model", "data") and built.bias.sharding.spec == P("model")
assert same(built, lm.init(logical, 0, vector))
print("logical: equal")
"""


def test_every_sharding_gives_the_unsharded_values_and_stages_no_weight():
    env = {**os.environ, "XLA_FLAGS": "--xla_force_host_platform_device_count=8"}
    env["JAX_PLATFORMS"] = "cpu"
    result = subprocess.run(
        [sys.executable, "-c", textwrap.dedent(CHECKS)],
        capture_output=True,
        text=True,
        env=env,
        timeout=300,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    for name in ("rows", "columns", "grid", "replicated"):
        assert f"{name}: equal" in result.stdout, result.stdout
    assert "jit: equal" in result.stdout and "logical: equal" in result.stdout
