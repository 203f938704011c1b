"""The lazy normalisation layers, PReLU, rotary embeddings, attention, recurrent cells
and MLP, each checked against the Equinox layer built by hand with the inferred sizes.
(Linear and the containers: test_nn.py; convolutions: test_nn_conv.py; BatchNorm:
test_stateful.py; wrappers: test_nn_wrappers.py.)"""

import dataclasses
from collections.abc import Callable
from typing import Any

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import lazymod as lm

from .helpers import spec, tree_bit_equal


@dataclasses.dataclass(frozen=True)
class Case:
    name: str
    lazy: Callable[[], Any]  # the lazy layer
    equinox: Callable[[Any], Any]  # key -> the Equinox layer with the inferred sizes
    inputs: tuple  # specs (pytrees of ShapeDtypeStruct), positional
    random: bool = True  # whether the default init is random (else deterministic)

    def __str__(self) -> str:
        return self.name


def hidden(n):
    return (spec(n), spec(n))


CASES = [
    Case(
        "LayerNorm",
        lambda: lm.nn.LayerNorm(),
        lambda k: eqx.nn.LayerNorm((4, 6)),
        (spec(4, 6),),
        False,
    ),
    Case(
        "LayerNorm-plain",
        lambda: lm.nn.LayerNorm(1e-3, use_weight=False, use_bias=False),
        lambda k: eqx.nn.LayerNorm(6, 1e-3, use_weight=False, use_bias=False),
        (spec(6),),
        False,
    ),
    Case(
        "RMSNorm", lambda: lm.nn.RMSNorm(), lambda k: eqx.nn.RMSNorm((3, 5)), (spec(3, 5),), False
    ),
    Case(
        "RMSNorm-bias",
        lambda: lm.nn.RMSNorm(use_bias=False),
        lambda k: eqx.nn.RMSNorm(5, use_bias=False),
        (spec(5),),
        False,
    ),
    Case(
        "GroupNorm",
        lambda: lm.nn.GroupNorm(2),
        lambda k: eqx.nn.GroupNorm(2, 6),
        (spec(6, 5),),
        False,
    ),
    Case(
        "GroupNorm-plain",
        lambda: lm.nn.GroupNorm(3, channelwise_affine=False),
        lambda k: eqx.nn.GroupNorm(3, 6, channelwise_affine=False),
        (spec(6, 2, 2),),
        False,
    ),
    Case("PReLU", lambda: lm.nn.PReLU(), lambda k: eqx.nn.PReLU(), (spec(6, 3),), False),
    Case(
        "PReLU-channelwise",
        lambda: lm.nn.PReLU(0.1, channelwise=True),
        lambda k: eqx.nn.PReLU(jnp.full((6, 1, 1), 0.1, jnp.float32)),
        (spec(6, 3, 3),),
        False,
    ),
    Case(
        "RotaryPositionalEmbedding",
        lambda: lm.nn.RotaryPositionalEmbedding(),
        lambda k: eqx.nn.RotaryPositionalEmbedding(8),
        (spec(5, 8),),
        False,
    ),
    Case(
        "RotaryPositionalEmbedding-theta",
        lambda: lm.nn.RotaryPositionalEmbedding(theta=100.0),
        lambda k: eqx.nn.RotaryPositionalEmbedding(6, theta=100.0),
        (spec(4, 6),),
        False,
    ),
    Case(
        "MultiheadAttention-self",
        lambda: lm.nn.MultiheadAttention(4),
        lambda k: eqx.nn.MultiheadAttention(4, 16, key=k),
        (spec(5, 16), spec(5, 16), spec(5, 16)),
    ),
    Case(
        "MultiheadAttention-cross",
        lambda: lm.nn.MultiheadAttention(
            2, output_size=7, use_query_bias=True, use_output_bias=True
        ),
        lambda k: eqx.nn.MultiheadAttention(
            2, 16, 12, 10, 7, use_query_bias=True, use_output_bias=True, key=k
        ),
        (spec(5, 16), spec(3, 12), spec(3, 10)),
    ),
    Case(
        "MultiheadAttention-sizes",
        lambda: lm.nn.MultiheadAttention(3, qk_size=4, vo_size=2, dropout_p=0.1, inference=True),
        lambda k: eqx.nn.MultiheadAttention(
            3, 10, qk_size=4, vo_size=2, dropout_p=0.1, inference=True, key=k
        ),
        (spec(5, 10), spec(5, 10), spec(5, 10)),
    ),
    Case(
        "GRUCell",
        lambda: lm.nn.GRUCell(8),
        lambda k: eqx.nn.GRUCell(5, 8, key=k),
        (spec(5), spec(8)),
    ),
    Case(
        "GRUCell-nobias",
        lambda: lm.nn.GRUCell(4, use_bias=False),
        lambda k: eqx.nn.GRUCell(3, 4, use_bias=False, key=k),
        (spec(3), spec(4)),
    ),
    Case(
        "LSTMCell",
        lambda: lm.nn.LSTMCell(8),
        lambda k: eqx.nn.LSTMCell(5, 8, key=k),
        (spec(5), hidden(8)),
    ),
    Case("MLP", lambda: lm.nn.MLP(3, 16, 2), lambda k: eqx.nn.MLP(5, 3, 16, 2, key=k), (spec(5),)),
    Case(
        "MLP-scalar",
        lambda: lm.nn.MLP("scalar", 4, 0, use_final_bias=False),
        lambda k: eqx.nn.MLP("scalar", "scalar", 4, 0, use_final_bias=False, key=k),
        (spec(),),
    ),
    Case(
        "MLP-activations-scan",
        lambda: lm.nn.MLP(2, 8, 3, jax.nn.tanh, jax.nn.sigmoid, scan=True),
        lambda k: eqx.nn.MLP(4, 2, 8, 3, jax.nn.tanh, jax.nn.sigmoid, scan=True, key=k),
        (spec(4),),
    ),
]


def call(layer, *xs):
    return layer(*xs)


def init(case: Case, key=0, **kwargs):
    return lm.init(case.lazy(), key, *case.inputs, method=call, **kwargs)


def concrete(inputs, seed=3):
    leaves, tree = jax.tree.flatten(inputs)
    keys = jax.random.split(jax.random.key(seed), len(leaves))
    return jax.tree.unflatten(
        tree, [jax.random.normal(k, leaf.shape, leaf.dtype) for k, leaf in zip(keys, leaves)]
    )


def arrays_of(tree):
    return jax.tree.map(lambda a: (a.shape, a.dtype), eqx.filter(tree, eqx.is_array))


@pytest.mark.parametrize("case", CASES, ids=str)
def test_is_the_equinox_layer_with_the_same_fields(case):
    ours, theirs = init(case), case.equinox(jax.random.key(1))
    assert type(ours) is type(theirs)
    assert arrays_of(ours) == arrays_of(theirs)
    # Same static configuration and non-array fields (activations, dropout, ...).
    assert eqx.tree_equal(
        eqx.filter(ours, eqx.is_array, inverse=True),
        eqx.filter(theirs, eqx.is_array, inverse=True),
    )
    if not case.random:  # deterministic defaults (ones, zeros, 0.25): the same values
        assert tree_bit_equal(ours, theirs)


@pytest.mark.parametrize("case", CASES, ids=str)
def test_computes_what_the_equinox_layer_computes_with_the_same_arrays(case):
    ours = init(case)
    theirs = eqx.combine(
        eqx.filter(ours, eqx.is_array),
        eqx.filter(case.equinox(jax.random.key(1)), eqx.is_array, inverse=True),
    )
    xs = concrete(case.inputs)
    np.testing.assert_array_equal(
        jax.tree.leaves(ours(*xs)),
        jax.tree.leaves(case.equinox(jax.random.key(1)).__class__.__call__(theirs, *xs)),
    )


@pytest.mark.parametrize("case", CASES, ids=str)
def test_eager_filter_jit_and_init_shapes_agree(case):
    eager, jitted = init(case), eqx.filter_jit(init)(case)
    # Same keys, same values; XLA may fuse the scale-and-shift of a vmapped draw (MLP's
    # scan=True) differently inside a larger program: allow a rounding error of the
    # array's scale, never more.
    assert arrays_of(eager) == arrays_of(jitted)
    for a, b in zip(
        jax.tree.leaves(eqx.filter(eager, eqx.is_array)),
        jax.tree.leaves(eqx.filter(jitted, eqx.is_array)),
    ):
        a, b = np.asarray(a), np.asarray(b)
        scale = np.finfo(a.dtype).eps * max(1.0, float(np.max(np.abs(a), initial=0)))
        np.testing.assert_allclose(a, b, rtol=0, atol=2 * scale)
    shapes = lm.init_shapes(case.lazy(), *case.inputs, method=call)
    is_shape = lambda x: isinstance(x, jax.ShapeDtypeStruct)  # noqa: E731
    assert jax.tree.map(lambda a: (a.shape, a.dtype), eqx.filter(shapes, is_shape)) == arrays_of(
        eager
    )


class Holder(lm.Module):
    inner: Any

    def __call__(self, *xs):
        return self.inner(*xs)


class PlainHolder(eqx.Module):
    inner: list

    def __call__(self, *xs):
        return self.inner[0](*xs)


@pytest.mark.parametrize("case", CASES[::3], ids=str)
def test_inside_user_modules_plain_modules_and_lists(case):
    expected = arrays_of(case.equinox(jax.random.key(1)))
    for wrap, unwrap in (
        (Holder, lambda m: m.inner),
        (lambda layer: PlainHolder([layer]), lambda m: m.inner[0]),
    ):
        model = lm.init(wrap(case.lazy()), 0, *case.inputs)
        assert lm.is_initialized(model) and arrays_of(unwrap(model)) == expected


def scale_of(a):
    return float(jnp.std(a)), float(jnp.max(jnp.abs(a)))


# Large enough that a wrong fan-in or scale shows: each array of 1000 elements or more
# has its std and largest value within 10% of Equinox's (different keys).
STATISTICS = [
    (
        lambda: lm.nn.MultiheadAttention(4),
        lambda k: eqx.nn.MultiheadAttention(4, 96, 64, 48, key=k),
        (spec(3, 96), spec(3, 64), spec(3, 48)),
    ),
    (lambda: lm.nn.GRUCell(64), lambda k: eqx.nn.GRUCell(96, 64, key=k), (spec(96), spec(64))),
    (lambda: lm.nn.LSTMCell(32), lambda k: eqx.nn.LSTMCell(80, 32, key=k), (spec(80), hidden(32))),
    (lambda: lm.nn.MLP(48, 128, 1), lambda k: eqx.nn.MLP(200, 48, 128, 1, key=k), (spec(200),)),
]


@pytest.mark.parametrize(
    "lazy, equinox, inputs", STATISTICS, ids=["attention", "gru", "lstm", "mlp"]
)
def test_default_initialization_statistics_match_equinox(lazy, equinox, inputs):
    ours = lm.init(lazy(), 0, *inputs, method=call)
    theirs = equinox(jax.random.key(7))
    pairs = list(
        zip(
            jax.tree.leaves(eqx.filter(ours, eqx.is_array)),
            jax.tree.leaves(eqx.filter(theirs, eqx.is_array)),
            strict=True,
        )
    )
    checked = 0
    for a, b in pairs:
        assert a.shape == b.shape
        if a.size >= 1000:
            (std_a, max_a), (std_b, max_b) = scale_of(a), scale_of(b)
            assert abs(std_a / std_b - 1) < 0.1 and abs(max_a / max_b - 1) < 0.1, a.shape
            checked += 1
    assert checked >= 2


DTYPED = [
    (lambda d: lm.nn.LayerNorm(dtype=d), (spec(4, dtype=jnp.float16),)),
    (lambda d: lm.nn.RMSNorm(dtype=d), (spec(4, dtype=jnp.float16),)),
    (lambda d: lm.nn.GroupNorm(2, dtype=d), (spec(4, 3, dtype=jnp.float16),)),
    (lambda d: lm.nn.PReLU(channelwise=True, dtype=d), (spec(4, 3, dtype=jnp.float16),)),
    (lambda d: lm.nn.MultiheadAttention(2, dtype=d), (spec(3, 4, dtype=jnp.float16),) * 3),
    (lambda d: lm.nn.GRUCell(4, dtype=d), (spec(3, dtype=jnp.float16), spec(4, dtype=jnp.float16))),
    (
        lambda d: lm.nn.LSTMCell(4, dtype=d),
        (spec(3, dtype=jnp.float16), (spec(4, dtype=jnp.float16),) * 2),
    ),
    (lambda d: lm.nn.MLP(2, 4, 1, dtype=d), (spec(3, dtype=jnp.float16),)),
]


@pytest.mark.parametrize("make, inputs", DTYPED)
@pytest.mark.parametrize("dtype", [jnp.float16, jnp.bfloat16])
def test_dtype_is_honoured(make, inputs, dtype):
    layer = lm.init(make(dtype), 0, *inputs, method=call)
    assert {a.dtype for a in jax.tree.leaves(eqx.filter(layer, eqx.is_array))} == {np.dtype(dtype)}


def test_rotary_dtype_is_honoured():
    rope = lm.init(lm.nn.RotaryPositionalEmbedding(dtype=jnp.float16), 0, spec(5, 8))
    assert rope.dtype == jnp.float16 and rope(jnp.ones((5, 8), jnp.float16)).dtype == jnp.float16


BAD = [
    (lambda: lm.nn.GroupNorm(4), (spec(6, 3),), "divisible by groups=4", "(6, 3)"),
    (lambda: lm.nn.GroupNorm(2), (spec(),), "(channels, ...)", "shape ()"),
    (lambda: lm.nn.PReLU(channelwise=True), (spec(),), "(channels, ...)", "shape ()"),
    (lambda: lm.nn.RotaryPositionalEmbedding(), (spec(4, 5),), "an even embedding_size", "(4, 5)"),
    (lambda: lm.nn.RotaryPositionalEmbedding(), (spec(8),), "(seq_length, embedding_size)", "(8,)"),
    (lambda: lm.nn.MultiheadAttention(2), (spec(8),) * 3, "(seq_length, query_size)", "(8,)"),
    (
        lambda: lm.nn.MultiheadAttention(2),
        (spec(3, 8), spec(4, 8), spec(5, 8)),
        "the sequence length of `key_`",
        "(5, 8)",
    ),
    (lambda: lm.nn.MultiheadAttention(3), (spec(3, 8),) * 3, "divisible by num_heads=3", "(3, 8)"),
    (lambda: lm.nn.GRUCell(4), (spec(2, 3), spec(4)), "(input_size,)", "(2, 3)"),
    (lambda: lm.nn.GRUCell(4), (spec(3), spec(5)), "hidden state of shape (4,)", "(5,)"),
    (
        lambda: lm.nn.LSTMCell(4),
        (spec(3), (spec(4), spec(5))),
        "hidden state of shape (4,)",
        "(5,)",
    ),
    (lambda: lm.nn.MLP(2, 4, 1), (spec(3, 3),), "(in_size,)", "(3, 3)"),
]


@pytest.mark.parametrize("make, inputs, expected, received", BAD)
def test_wrong_inputs_name_the_path_what_was_expected_and_what_came(
    make, inputs, expected, received
):
    model = Holder(make())
    with pytest.raises(lm.InitError) as info:
        lm.init(model, 0, *inputs)
    message = str(info.value)
    assert f"Holder.inner ({type(model.inner).__name__})" in message
    assert expected in message and received in message
    assert lm.is_initialized(model) is False and type(model.inner) is type(make())


def test_attention_dropout_follows_keys_and_inference_mode():
    attention = lm.init(lm.nn.MultiheadAttention(2, dropout_p=0.5), 0, *(spec(4, 8),) * 3)
    x = jnp.ones((4, 8)) + jnp.arange(8.0)
    a = attention(x, x, x, key=jax.random.key(1))
    b = attention(x, x, x, key=jax.random.key(2))
    assert not np.allclose(a, b)
    quiet = eqx.nn.inference_mode(attention)
    np.testing.assert_array_equal(quiet(x, x, x), attention(x, x, x, inference=True))
    # inference_mode reaches a lazy layer before init as well.
    lazy = eqx.nn.inference_mode(lm.nn.MultiheadAttention(2, dropout_p=0.5))
    assert lm.init(lazy, 0, *(spec(4, 8),) * 3).dropout.inference is True


def test_attention_mask_is_passed_through():
    attention = lm.init(lm.nn.MultiheadAttention(2), 0, *(spec(4, 8),) * 3)
    x = jax.random.normal(jax.random.key(0), (4, 8))
    causal = jnp.tril(jnp.ones((4, 4), bool))
    masked = attention(x, x, x, mask=causal)
    # The first query sees only the first key: changing later keys leaves it alone.
    changed = x.at[1:].set(0.0)
    np.testing.assert_allclose(attention(x, changed, changed, mask=causal)[0], masked[0], rtol=1e-6)
    assert not np.allclose(attention(x, x, x)[0], masked[0])


def test_normalisation_layers_return_the_state_when_given_one():
    norm = lm.init(lm.nn.LayerNorm(), 0, spec(4))
    state = eqx.nn.State(norm)
    out, same = norm(jnp.arange(4.0), state)
    assert same is state and out.shape == (4,)


def test_lstm_scanned_over_a_sequence_inside_a_module():
    class Encoder(lm.Module):
        cell: lm.nn.LSTMCell

        def __init__(self):
            self.cell = lm.nn.LSTMCell(6)

        def __call__(self, xs):
            def step(carry, x):
                return self.cell(x, carry), None

            return jax.lax.scan(step, (jnp.zeros(6), jnp.zeros(6)), xs)[0][0]

    encoder = lm.init(Encoder(), 0, spec(10, 3))
    assert type(encoder.cell) is eqx.nn.LSTMCell and encoder.cell.input_size == 3
    assert encoder(jnp.ones((10, 3))).shape == (6,)
    assert tree_bit_equal(encoder, eqx.filter_jit(lm.init)(Encoder(), 0, spec(10, 3)))
