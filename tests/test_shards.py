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

# Review findings: a fill under filter_jit, a host memory kind, an uneven split, a
# partial init with annotations for a branch not taken, and init_with_state.
class Zeros(lm.Module):
    w: jax.Array

    def __init__(self):
        self.w = lm.Initializer(lambda key: jnp.zeros((1024, 512)), partition=("model", None))


zeros = eqx.filter_jit(lm.init)(Zeros(), jax.random.key(0), sharding=mesh)
assert zeros.w.shape == (1024, 512) and not zeros.w.any()  # (XLA may replicate a constant)
host = NamedSharding(mesh, P("model"), memory_kind="pinned_host")
drawn = {"w": lm.Initializer(lambda k: jax.random.normal(k, (1024, 512)))}
drawn = lm.init(drawn, 0, sharding=host)
assert drawn["w"].sharding.memory_kind == "pinned_host"
uneven = {"w": lm.Initializer(lambda k: jax.random.normal(k, (1001, 512)))}
try:
    lm.init(uneven, 0, sharding=NamedSharding(mesh, P("model", None)))
except lm.InitValueError as error:
    assert "dict['w']: the sharding" in str(error)
else:
    raise AssertionError("an uneven split was accepted")


class Either(lm.Module):
    a: lm.nn.Linear
    b: lm.nn.Linear

    def __init__(self):
        self.a = lm.nn.Linear(16).partitioned(weight=("model", None))
        self.b = lm.nn.Linear(16).partitioned(weight=("model", None))

    def __call__(self, x, use_b=False):
        return self.b(x) if use_b else self.a(x)


half = lm.init(Either(), 0, vector, partial=True, sharding=mesh)
assert half.a.weight.sharding.spec == P("model", None)


class Normed(lm.Module):
    linear: lm.nn.Linear
    norm: lm.nn.BatchNorm

    def __init__(self):
        self.linear = lm.nn.Linear(64).partitioned(weight=("model", None))
        self.norm = lm.nn.BatchNorm("batch", mode="batch")

    def __call__(self, x, state):
        return self.norm(self.linear(x), state)


normed, state = lm.init_with_state(Normed(), 0, vector, sharding=mesh)
assert normed.linear.weight.sharding.spec == P("model", None)
print("review: fixed")


class Halves(lm.Module):  # the first half built by a partial init
    first: lm.nn.Linear
    second: lm.nn.Linear

    def __init__(self):
        self.first = lm.nn.Linear(8).partitioned(weight=("model", "data"))
        self.second = lm.nn.Linear(4).partitioned(weight=("data", "model"))

    def encode(self, x):
        return self.first(x)

    def __call__(self, x):
        return self.second(self.encode(x))


half = lm.init(Halves(), 0, vector, method="encode", partial=True, sharding=mesh)
for name, finish in (("eager", lm.init), ("filter_jit", eqx.filter_jit(lm.init))):
    whole = finish(half, 0, vector, sharding=mesh)
    assert whole.first.weight.sharding.spec == P("model", "data"), (name, whole.first.weight)
    assert whole.second.weight.sharding.spec == P("data", "model"), (name, whole.second.weight)
    print(f"partial then {name}: kept")

# An array held on another mesh (the same devices, other axes) is replicated, as any
# array without an annotation is, inside jit too.
other = jax.make_mesh((8,), ("rows",), axis_types=(jax.sharding.AxisType.Auto,))
moved = eqx.tree_at(
    lambda m: m.first.weight,
    half,
    jax.device_put(half.first.weight, NamedSharding(other, P("rows", None))),
)
for name, finish in (("eager", lm.init), ("filter_jit", eqx.filter_jit(lm.init))):
    whole = finish(moved, 0, vector, sharding=mesh)
    sharding = whole.first.weight.sharding
    assert sharding.mesh == mesh and set(sharding.spec) <= {None}, (name, sharding)
    print(f"other mesh then {name}: replicated")

# An annotation whose mesh axis does not divide the array: the message says what to change.
rules = lm.AxisRules(mesh, {"mlp": "model"})
try:
    lm.init(lm.nn.Linear(30).partitioned(weight=("mlp", None)), 0, vector, sharding=rules)
except lm.InitValueError as error:
    assert "Linear.weight: the sharding" in str(error), error
    assert "an annotation (.partitioned" in str(error), error
    print("indivisible annotation: named")
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
    assert "review: fixed" in result.stdout
    assert "partial then eager: kept" in result.stdout
    assert "partial then filter_jit: kept" in result.stdout
    assert "other mesh then filter_jit: replicated" in result.stdout
    assert "indivisible annotation: named" in result.stdout
