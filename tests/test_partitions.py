"""Partition annotations on built-in layers, and logical axis names mapped to mesh axes
by `lm.AxisRules` (one device here; test_shards.py runs the same on eight)."""

import jax
import jax.numpy as jnp
import pytest

import lazymod as lm

from .helpers import spec, tree_bit_equal


MESH = jax.make_mesh((1, 1), ("data", "model"))
RULES = {"mlp": "model", "embed": None, "vocab": "data", "heads": "model"}


class Block(lm.Module):
    embed: lm.nn.Embedding
    expand: lm.nn.Linear
    project: lm.nn.Linear
    attention: lm.nn.MultiheadAttention
    conv: lm.nn.Conv1d

    def __init__(self):
        self.embed = lm.nn.Embedding(100, 16).partitioned(weight=("vocab", "embed"))
        self.expand = lm.nn.Linear(64).partitioned(weight=("mlp", "embed"), bias=("mlp",))
        self.project = lm.nn.Linear(16).partitioned(weight=("embed", "mlp"))
        self.attention = lm.nn.MultiheadAttention(2).partitioned(
            **{"query_proj.weight": ("heads", "embed")}
        )
        self.conv = lm.nn.Conv1d(8, 3).partitioned(weight=("mlp", None, None))

    def __call__(self, tokens):
        x = jax.vmap(self.embed)(tokens)
        x = x + jax.vmap(lambda v: self.project(jax.nn.gelu(self.expand(v))))(x)
        x = x + self.attention(x, x, x)
        return self.conv(x.T)


def spec_of(array):
    return array.sharding.spec


def test_logical_names_map_to_mesh_axes_and_values_are_unchanged():
    tokens = spec(4, dtype=jnp.int32)
    block = lm.init(Block(), 0, tokens, sharding=lm.AxisRules(MESH, RULES))
    assert spec_of(block.embed.weight) == jax.P("data", None)
    assert spec_of(block.expand.weight) == jax.P("model", None)
    assert spec_of(block.expand.bias) == jax.P("model")
    assert spec_of(block.project.weight) == jax.P(None, "model")
    assert spec_of(block.project.bias) == jax.P()  # not annotated: replicated
    assert spec_of(block.attention.query_proj.weight) == jax.P("model", None)
    assert spec_of(block.conv.weight) == jax.P("model", None, None)
    assert tree_bit_equal(block, lm.init(Block(), 0, tokens))
    shapes = lm.init_shapes(Block(), tokens, sharding=lm.AxisRules(MESH, RULES))
    assert shapes.expand.weight.sharding == block.expand.weight.sharding


def test_a_mesh_reads_annotations_as_mesh_axes():
    layer = lm.nn.Linear(4).partitioned(weight=("model", None))
    built = lm.init(layer, 0, spec(3), sharding=MESH)
    assert spec_of(built.weight) == jax.P("model", None) and spec_of(built.bias) == jax.P()


def test_partitioned_returns_a_copy_and_merges():
    layer = lm.nn.Linear(4)
    annotated = layer.partitioned(weight=("model", None)).partitioned(bias=("model",))
    assert layer.partition is None
    assert dict(annotated.partition) == {"weight": ("model", None), "bias": ("model",)}
    assert type(lm.init(annotated, 0, spec(3))) is type(lm.init(layer, 0, spec(3)))


def test_a_logical_axis_without_a_rule_names_the_array():
    with pytest.raises(lm.InitValueError, match=r"Block\.embed\.weight: the logical axis 'vocab'"):
        lm.init(Block(), 0, spec(4, dtype=jnp.int32), sharding=lm.AxisRules(MESH, {"mlp": None}))


def test_a_misspelt_array_name_is_refused_with_the_names_there():
    layer = lm.nn.Linear(4).partitioned(wieght=("model", None))
    with pytest.raises(lm.InitValueError, match=r"Linear\.wieght: a partition is given"):
        lm.init(layer, 0, spec(3), sharding=MESH)
    cell = lm.nn.GRUCell(4).partitioned(weight=("model", None))
    made = "there it makes bias, bias_n, weight_hh, weight_ih"
    with pytest.raises(lm.InitValueError, match=made):
        lm.init(cell, 0, spec(3), jnp.zeros(4), sharding=MESH)


def test_an_annotation_naming_no_axis_of_the_mesh_says_which_there_are():
    layer = lm.nn.Linear(4).partitioned(weight=("modle", None))
    with pytest.raises(lm.InitValueError, match=r"Linear\.weight: .* 'modle', which the mesh"):
        lm.init(layer, 0, spec(3), sharding=MESH)


def test_an_annotation_of_the_wrong_rank_names_the_array():
    layer = lm.nn.Linear(4).partitioned(bias=("model", None))
    with pytest.raises(lm.InitValueError, match=r"Linear\.bias: partition=.* one per axis"):
        lm.init(layer, 0, spec(3), sharding=MESH)


def test_bad_rules_and_annotations_are_refused_at_once():
    with pytest.raises(ValueError, match="mesh axes of \\('data', 'model'\\)"):
        lm.AxisRules(MESH, {"mlp": "modl"})
    with pytest.raises(TypeError, match="one entry per array axis"):
        lm.nn.Linear(4).partitioned(weight="model")


class Halves(lm.Module):
    """Two annotated layers, the first one built alone by `method="encode"`."""

    first: lm.nn.Linear
    second: lm.nn.Linear

    def __init__(self, first: tuple, second: tuple):
        self.first = lm.nn.Linear(4).partitioned(weight=first)
        self.second = lm.nn.Linear(2).partitioned(weight=second)

    def encode(self, x):
        return self.first(x)

    def __call__(self, x):
        return self.second(self.encode(x))


@pytest.mark.parametrize(
    "sharding, axes",
    [
        (lm.AxisRules(MESH, RULES), (("mlp", "embed"), ("embed", "mlp"))),
        (MESH, (("model", None), (None, "model"))),
    ],
    ids=["axis rules", "mesh"],
)
def test_an_array_a_partial_init_sharded_keeps_its_sharding(sharding, axes):
    """A layer built by a partial init is an Equinox layer, without its annotation: the
    array it made keeps the sharding it was given. It used to be replicated."""
    model = Halves(*axes)
    part = lm.init(model, 0, spec(3), method="encode", partial=True, sharding=sharding)
    assert spec_of(part.first.weight) == jax.P("model", None)
    full = lm.init(part, 0, spec(3), sharding=sharding)
    assert spec_of(full.first.weight) == jax.P("model", None)
    assert spec_of(full.second.weight) == jax.P(None, "model")
    assert spec_of(full.first.bias) == jax.P()  # never annotated: replicated
    shapes = lm.init_shapes(part, spec(3), sharding=sharding)
    assert shapes.first.weight.sharding == full.first.weight.sharding
    assert tree_bit_equal(full, lm.init(model, 0, spec(3)))
