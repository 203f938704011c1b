"""lm.init(..., sharding=rule) places each array in its sharding as it is created."""

import subprocess
import sys
from pathlib import Path

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import lazymod as lm

from .helpers import NormedHead, spec, tree_bit_equal


ROOT = Path(__file__).resolve().parent.parent


def model():
    return [lm.nn.Linear(6), {"head": lm.nn.Linear(2)}]


def forward(m, x):
    return m[1]["head"](m[0](x))


def test_rule_sees_every_path_and_leaf_and_values_are_unchanged():
    seen = {}
    device = jax.devices()[0]

    def rule(path, leaf):
        seen[path] = leaf
        return jax.sharding.SingleDeviceSharding(device)

    placed = lm.init(model(), 0, spec(4), method=forward, sharding=rule)
    assert seen == {
        "[0].weight": jax.ShapeDtypeStruct((6, 4), jnp.float32),
        "[0].bias": jax.ShapeDtypeStruct((6,), jnp.float32),
        "[1]['head'].weight": jax.ShapeDtypeStruct((2, 6), jnp.float32),
        "[1]['head'].bias": jax.ShapeDtypeStruct((2,), jnp.float32),
    }
    assert tree_bit_equal(placed, lm.init(model(), 0, spec(4), method=forward))
    assert placed[0].weight.sharding == jax.sharding.SingleDeviceSharding(device)


def test_one_sharding_for_everything_and_under_filter_jit():
    sharding = jax.sharding.SingleDeviceSharding(jax.devices()[0])
    eager = lm.init(model(), 0, spec(4), method=forward, sharding=sharding)
    jitted = eqx.filter_jit(
        lambda k: lm.init(model(), k, spec(4), method=forward, sharding=sharding)
    )(jax.random.key(0))
    assert tree_bit_equal(eager, jitted)


def test_a_bad_rule_names_the_array():
    with pytest.raises(lm.InitError, match=r"list\[0\]\.weight: the sharding rule raised KeyError"):
        lm.init(model(), 0, spec(4), method=forward, sharding=lambda path, leaf: {}[path])
    with pytest.raises(lm.InitError, match=r"returned 'model' \(a str\); it must return a jax"):
        lm.init(model(), 0, spec(4), method=forward, sharding=lambda path, leaf: "model")
    spec_rule = lambda path, leaf: jax.sharding.PartitionSpec()  # noqa: E731
    with pytest.raises(lm.InitError, match=r"the PartitionSpec P\(\).*NamedSharding\(mesh, spec\)"):
        lm.init(model(), 0, spec(4), method=forward, sharding=spec_rule)


class Counted(lm.Module):
    """A lazy BatchNorm's state beside an `eqx.nn.StateIndex` held as NumPy, which init
    leaves where it is (it traces JAX arrays only)."""

    normed: NormedHead
    count: eqx.nn.StateIndex

    def __init__(self):
        self.normed = NormedHead()
        self.count = eqx.nn.StateIndex(np.zeros(5, np.int32))

    def __call__(self, x, state):
        return self.normed(x, state)


def test_init_shapes_shards_the_state_as_init_does():
    mesh = jax.make_mesh((len(jax.devices()),), ("model",), (jax.sharding.AxisType.Auto,))
    seen = []

    def rule(path, leaf):  # sees each array at its path: both must pair them alike
        seen.append((path, leaf.shape, leaf.dtype))
        return jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec())

    _, state = lm.init_with_state(Counted(), 0, spec(3), sharding=rule)
    made = list(seen)
    seen.clear()
    _, shapes = lm.init_shapes(Counted(), spec(3), with_state=True, sharding=rule)
    assert sorted(seen) == sorted(made), (seen, made)
    assert ("normed.norm.batch_state_index.init[0]", (3,), jnp.float32) in seen
    assert ("normed.norm.batch_counter.init", (), jnp.int32) in seen
    # (None: the default device, where init leaves the NumPy-held count.)
    default = jax.sharding.SingleDeviceSharding(jax.devices()[0])
    assert [leaf.sharding or default for leaf in jax.tree.leaves(shapes)] == [
        leaf.sharding for leaf in jax.tree.leaves(state)
    ]
    assert [leaf.sharding for leaf in jax.tree.leaves(shapes)].count(None) == 1
    _, shapes = lm.init_shapes(NormedHead(), spec(3), with_state=True, sharding=mesh)
    assert all(leaf.sharding == rule("", leaf) for leaf in jax.tree.leaves(shapes))


def test_init_shapes_refuses_a_sharding_that_does_not_fit_as_init_does():
    mesh = jax.make_mesh((len(jax.devices()),), ("model",), (jax.sharding.AxisType.Auto,))
    three_axes = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec(None, None, None))
    rule = lambda path, leaf: three_axes if path.endswith("weight") else None  # noqa: E731
    for entry in (
        lambda: lm.init(model(), 0, spec(4), method=forward, sharding=rule),
        lambda: lm.init_shapes(model(), spec(4), method=forward, sharding=rule),
    ):
        with pytest.raises(
            lm.InitValueError,
            match=r"list\[0\]\.weight: the sharding .* does not fit its shape \(6, 4\)",
        ):
            entry()


def test_sharded_init_on_an_eight_device_mesh():
    # A fresh process, to give XLA 8 host devices; the example asserts that each weight
    # is held as quarter shards, equals an unsharded init, and trains a step.
    result = subprocess.run(
        [sys.executable, str(ROOT / "examples" / "sharded_init.py"), "--smoke"],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr
    assert "is held as shards [(64, 64)]" in result.stdout
    assert "one training step on the mesh" in result.stdout


class Annotated(lm.Module):
    w: jax.Array
    b: jax.Array
    head: lm.nn.Linear

    def __init__(self):
        self.w = lm.Initializer(
            lambda key: jax.random.normal(key, (4, 6)), partition=(None, "model")
        )
        self.b = lm.Initializer(lambda key: jnp.zeros(6))
        self.head = lm.nn.Linear(2)

    def __call__(self, x):
        return self.head(x @ self.w + self.b)


def test_a_mesh_shards_annotated_initializers_and_replicates_the_rest():
    mesh = jax.make_mesh((1,), ("model",))
    placed = lm.init(Annotated(), 0, spec(4), sharding=mesh)
    assert placed.w.sharding == jax.NamedSharding(mesh, jax.P(None, "model"))
    for array in (placed.b, placed.head.weight, placed.head.bias):
        assert array.sharding == jax.NamedSharding(mesh, jax.P())
    assert tree_bit_equal(placed, lm.init(Annotated(), 0, spec(4)))


def test_a_partition_of_the_wrong_length_names_the_field():
    class Bad(lm.Module):
        w: jax.Array = lm.Initializer(lambda key: jnp.zeros((2, 3)), partition=("model",))

    with pytest.raises(lm.InitError, match=r"Bad\.w.*partition=\('model',\).*one per axis"):
        lm.init(Bad(), 0, sharding=jax.make_mesh((1,), ("model",)))


def test_a_partition_must_hold_axis_names():
    with pytest.raises(TypeError, match="one entry per array axis"):
        lm.Initializer(lambda key: jnp.zeros(2), partition=(0,))
