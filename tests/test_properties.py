"""Properties of lm.init over randomly generated architectures (hypothesis): layers of
several kinds with random widths, nested in lists, tuples, dicts and plain Equinox
modules, drawing keys from two streams. The examples are derandomized and bounded so
the suite stays fast and reproducible."""

from typing import Any

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
from hypothesis import given, HealthCheck, settings, strategies as st

import lazymod as lm

from .helpers import spec, tree_bit_equal


PROPERTY_SETTINGS = settings(
    max_examples=8,
    deadline=None,
    derandomize=True,
    suppress_health_check=[HealthCheck.too_slow],
)


class Noisy(lm.Module):
    """All three mechanisms: an Initializer, rng_init, and a lazy field set from the
    input's shape, on a chosen stream."""

    stream: str = eqx.field(static=True)
    scale: Any
    shift: jax.Array = lm.lazy()
    bias: jax.Array = lm.lazy()

    def __init__(self, stream: str):
        self.stream = stream
        self.scale = lm.Initializer(lambda key: jax.random.uniform(key, (1,)), stream)

    def rng_init(self):
        self.shift = self.scale + jax.random.normal(lm.next_key(self.stream), (1,))

    def __call__(self, x):
        if self.initializing():
            self.bias = jax.random.normal(lm.next_key(self.stream), x.shape)
        return x * self.scale + self.shift + self.bias


class Plain(eqx.Module):
    """A plain Equinox module holding lazy parts."""

    inner: Any

    def __call__(self, x):
        return apply(self.inner, x)


def apply(block: Any, x: jax.Array) -> jax.Array:
    if isinstance(block, (list, tuple)):
        for item in block:
            x = apply(item, x)
        return x
    if isinstance(block, dict):
        for name in sorted(block):
            x = apply(block[name], x)
        return x
    return block(x)


class Net(lm.Module):
    blocks: list

    def __call__(self, x):
        return apply(self.blocks, x)


# An architecture is described by plain data, so that hypothesis can shrink and print
# it, and so that the same description builds fresh module objects each time.
leaf_kinds = st.one_of(
    st.tuples(st.just("linear"), st.integers(1, 12)),
    st.tuples(st.just("noisy"), st.sampled_from(["params", "noise"])),
    st.tuples(st.just("layernorm")),
)
descriptions = st.recursive(
    leaf_kinds,
    lambda inner: st.one_of(
        st.tuples(st.just("list"), st.lists(inner, min_size=1, max_size=3)),
        st.tuples(st.just("tuple"), st.lists(inner, min_size=1, max_size=3)),
        st.tuples(
            st.just("dict"),
            st.dictionaries(st.sampled_from("abcd"), inner, min_size=1, max_size=3),
        ),
        st.tuples(st.just("plain"), inner),
    ),
    max_leaves=6,
)
architectures = st.tuples(st.lists(descriptions, min_size=1, max_size=3), st.integers(1, 8))


def build(description: Any) -> Any:
    kind, *rest = description
    if kind == "linear":
        return lm.nn.Linear(rest[0])
    if kind == "noisy":
        return Noisy(rest[0])
    if kind == "layernorm":
        return lm.nn.LayerNorm()
    if kind == "list":
        return [build(d) for d in rest[0]]
    if kind == "tuple":
        return tuple(build(d) for d in rest[0])
    if kind == "dict":
        return {name: build(d) for name, d in rest[0].items()}
    assert kind == "plain"
    return Plain(build(rest[0]))


def net(architecture: Any) -> Net:
    blocks, _ = architecture
    return Net([build(d) for d in blocks])


def input_spec(architecture: Any) -> jax.ShapeDtypeStruct:
    return spec(architecture[1])


KEYS = {"params": jax.random.key(0), "noise": jax.random.key(1)}


def arrays(tree: Any) -> list[np.ndarray]:
    return [np.asarray(a) for a in jax.tree.leaves(eqx.filter(tree, eqx.is_array))]


@PROPERTY_SETTINGS
@given(architectures)
def test_deterministic_and_the_same_eagerly_and_under_filter_jit(architecture):
    x = input_spec(architecture)
    first = lm.init(net(architecture), KEYS, x)
    assert tree_bit_equal(first, lm.init(net(architecture), KEYS, x))
    jitted = eqx.filter_jit(lm.init)(net(architecture), KEYS, x)
    assert jax.tree.structure(jitted) == jax.tree.structure(first)
    for a, b in zip(arrays(first), arrays(jitted)):
        np.testing.assert_allclose(
            a, b, rtol=0, atol=4 * np.finfo(a.dtype).eps * max(1, np.abs(a).max(initial=0))
        )
    assert lm.is_initialized(first)
    out = first(jnp.ones(x.shape))
    assert out.shape[0] >= 1 and bool(jnp.all(jnp.isfinite(out)))


@PROPERTY_SETTINGS
@given(architectures)
def test_init_shapes_are_the_shapes_of_init(architecture):
    x = input_spec(architecture)
    shapes = lm.init_shapes(net(architecture), x)
    model = lm.init(net(architecture), KEYS, x)
    as_shapes = jax.tree.map(
        lambda a: jax.ShapeDtypeStruct(a.shape, a.dtype), eqx.filter(model, eqx.is_array)
    )
    is_shape = lambda leaf: isinstance(leaf, jax.ShapeDtypeStruct)  # noqa: E731
    assert jax.tree.leaves(eqx.filter(shapes, is_shape)) == jax.tree.leaves(as_shapes)


@PROPERTY_SETTINGS
@given(architectures)
def test_incremental_init_equals_a_full_init(architecture):
    x = input_spec(architecture)
    full = lm.init(net(architecture), KEYS, x)
    first = lm.init(net(architecture), KEYS, partial=True)  # Initializers and rng_init
    rest = lm.init(first, KEYS, x)  # then the forward pass
    assert tree_bit_equal(rest, full)


@PROPERTY_SETTINGS
@given(architectures, descriptions)
def test_appending_a_layer_leaves_every_other_value_unchanged(architecture, extra):
    x = input_spec(architecture)
    blocks, width = architecture
    model = lm.init(net(architecture), KEYS, x)
    longer = lm.init(net((blocks + [extra], width)), KEYS, x)
    for before, after in zip(model.blocks, longer.blocks[: len(blocks)]):
        assert tree_bit_equal(before, after)


@PROPERTY_SETTINGS
@given(architectures)
def test_the_input_module_is_never_modified_and_no_tracer_escapes(architecture):
    lazy = net(architecture)
    leaves_before = jax.tree.leaves(lazy, is_leaf=lambda x: isinstance(x, eqx.Module))
    fields_before = [dict(vars(leaf)) for leaf in leaves_before if isinstance(leaf, eqx.Module)]
    with jax.checking_leaks():
        model = lm.init(lazy, KEYS, input_spec(architecture))
    leaves_after = jax.tree.leaves(lazy, is_leaf=lambda x: isinstance(x, eqx.Module))
    fields_after = [dict(vars(leaf)) for leaf in leaves_after if isinstance(leaf, eqx.Module)]
    assert all(a is b for a, b in zip(leaves_before, leaves_after))
    assert len(fields_before) == len(fields_after)
    for before, after in zip(fields_before, fields_after):
        assert before.keys() == after.keys()
        assert all(before[name] is after[name] for name in before)
    assert not lm.is_initialized(lazy) and lm.is_initialized(model)
