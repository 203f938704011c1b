"""lazymod.nn as a whole: the drop-in namespace, Linear, and lazy layers inside
containers, Sequential, Shared and user modules. Each layer family has its own file
(test_nn_conv.py, test_nn_norm.py, ...)."""

import inspect
from typing import Any

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import lazymod as lm

from .helpers import spec, tree_bit_equal


# --- Linear --------------------------------------------------------------------------


def arrays_of(module):
    return jax.tree.map(lambda x: (x.shape, x.dtype), eqx.filter(module, eqx.is_array))


@pytest.mark.parametrize("in_shape, out_features", [((5,), 3), ((), 4), ((5,), "scalar")])
@pytest.mark.parametrize("use_bias", [True, False])
def test_linear_matches_equinox(in_shape, out_features, use_bias):
    layer = lm.init(lm.nn.Linear(out_features, use_bias=use_bias), 0, spec(*in_shape))
    in_features = in_shape[0] if in_shape else "scalar"
    reference = eqx.nn.Linear(in_features, out_features, use_bias, key=jax.random.key(1))
    assert type(layer) is eqx.nn.Linear
    assert arrays_of(layer) == arrays_of(reference)
    assert (layer.in_features, layer.out_features, layer.use_bias) == (
        reference.in_features,
        reference.out_features,
        reference.use_bias,
    )
    same_arrays = eqx.tree_at(
        lambda m: (m.weight, m.bias),
        reference,
        (layer.weight, layer.bias),
        is_leaf=lambda x: x is None,
    )
    x = jax.random.normal(jax.random.key(2), in_shape)
    np.testing.assert_array_equal(layer(x), same_arrays(x))


def uniform_like(a, bound):
    """`a` looks like a sample of U(-bound, bound): its extremes, mean and std agree
    within five standard errors for its size."""
    n = a.size
    std = bound / 3**0.5
    return (
        float(jnp.max(jnp.abs(a))) <= bound
        and float(jnp.max(jnp.abs(a))) > 0.9 * bound
        and abs(float(jnp.mean(a))) < 5 * std / n**0.5
        and abs(float(jnp.std(a)) / std - 1) < 5 * (0.8 / (4 * n)) ** 0.5
    )


def test_linear_default_init_statistics_match_equinox():
    ours = lm.init(lm.nn.Linear(256), 0, spec(512))
    theirs = eqx.nn.Linear(512, 256, key=jax.random.key(5))
    bound = 1 / 512**0.5  # Equinox's default: U(-1/sqrt(in_features), 1/sqrt(in_features))
    for name in ("weight", "bias"):
        assert uniform_like(getattr(theirs, name), bound)  # the reference agrees
        assert uniform_like(getattr(ours, name), bound), name


@pytest.mark.parametrize("dtype", [jnp.float16, jnp.bfloat16])
def test_linear_dtype(dtype):
    layer = lm.init(lm.nn.Linear(3, dtype=dtype), 0, spec(4, dtype=dtype))
    assert layer.weight.dtype == dtype and layer.bias.dtype == dtype


def test_linear_wrong_rank_names_path_expected_and_received():
    model = lm.nn.Sequential([lm.nn.Linear(3), lm.nn.Linear(2)])
    with pytest.raises(lm.InitError) as info:
        lm.init(model, 0, spec(4, 5))
    message = str(info.value)
    assert "Sequential.layers[0] (Linear)" in message
    assert "(in_features,)" in message and "shape (4, 5)" in message and "jax.vmap" in message


def test_linear_under_filter_jit_and_init_shapes():
    model = [lm.nn.Linear(3), {"head": lm.nn.Linear(2)}]

    def forward(m, x):
        return m[1]["head"](m[0](x))

    eager = lm.init(model, 0, spec(4), method=forward)
    jitted = eqx.filter_jit(lambda m, k: lm.init(m, k, spec(4), method=forward))(
        model, jax.random.key(0)
    )
    assert tree_bit_equal(eager, jitted)
    shapes = lm.init_shapes(model, spec(4), method=forward)
    assert shapes[1]["head"].weight.shape == (2, 3)


# --- composition -----------------------------------------------------------------------


class Block(lm.Module):
    linear: lm.nn.Linear
    dropout: eqx.nn.Dropout

    def __init__(self, width: int):
        self.linear = lm.nn.Linear(width)
        self.dropout = lm.nn.Dropout(0.5)

    def __call__(self, x, *, key=None):
        return self.dropout(jax.nn.relu(self.linear(x)), key=key)


class PlainModel(eqx.Module):
    blocks: tuple
    head: lm.nn.Linear

    def __call__(self, x, *, key=None):
        for block in self.blocks:
            x = block(x, key=key)
        return self.head(x)


def test_lazy_layers_in_user_modules_plain_modules_and_tuples():
    model = PlainModel((Block(8), Block(8)), lm.nn.Linear(2))
    out = lm.init(model, 0, spec(3), key=jax.random.key(9))
    assert type(out) is PlainModel and type(out.blocks[0]) is Block
    assert type(out.blocks[1].linear) is eqx.nn.Linear
    assert out.blocks[0].linear.weight.shape == (8, 3)
    assert out.head.weight.shape == (2, 8)
    y = out(jnp.ones(3), key=jax.random.key(1))
    assert y.shape == (2,)


def test_dropout_and_inference_mode():
    model = lm.init(Block(16), 0, spec(4), key=jax.random.key(0))
    x = jnp.ones(4)
    a = model(x, key=jax.random.key(1))
    b = model(x, key=jax.random.key(2))
    assert not jnp.array_equal(a, b)
    frozen = lm.nn.inference_mode(model)
    np.testing.assert_array_equal(frozen(x), jax.nn.relu(model.linear(x)))


def test_sequential_infers_sizes_through_lambdas():
    model = lm.nn.Sequential(
        [lm.nn.Linear(6), lm.nn.Lambda(jax.nn.relu), lm.nn.Lambda(jnp.ravel), lm.nn.Linear(2)]
    )
    out = lm.init(model, 0, spec(4))
    assert type(out) is eqx.nn.Sequential
    assert [type(layer) for layer in out.layers] == [
        eqx.nn.Linear,
        eqx.nn.Lambda,
        eqx.nn.Lambda,
        eqx.nn.Linear,
    ]
    assert out.layers[3].in_features == 6


def test_shared_with_lazy_children():
    # Tie an embedding to the output projection; the layer in between is lazy.
    class TiedModel(eqx.Module):
        shared: eqx.nn.Shared

        def __init__(self):
            embedding = lm.nn.Embedding(10, 4, key=jax.random.key(0))
            head = eqx.nn.Linear(4, 10, use_bias=False, key=jax.random.key(1))
            middle = lm.nn.Linear(4)
            self.shared = lm.nn.Shared(
                (embedding, middle, head),
                where=lambda t: t[2].weight,
                get=lambda t: t[0].weight,
            )

        def __call__(self, token):
            embedding, middle, head = self.shared()
            return head(middle(embedding(token)))

    model = lm.init(TiedModel(), 0, jnp.array(3))
    embedding, middle, head = model.shared()
    assert type(middle) is eqx.nn.Linear and middle.weight.shape == (4, 4)
    np.testing.assert_array_equal(head.weight, embedding.weight)
    assert model(jnp.array(3)).shape == (10,)


def test_init_with_state_without_stateful_layers_is_make_with_state():
    model, state = lm.init_with_state(lm.nn.Linear(3), 0, spec(2), method=lambda m, x, s: (m(x), s))
    assert type(model) is eqx.nn.Linear and isinstance(state, eqx.nn.State)


def test_calling_an_uninitialized_lazy_layer_says_to_init():
    with pytest.raises(lm.UninitializedError, match=r"Linear.*lazy layer is not.*init") as raised:
        lm.nn.Linear(3)(jnp.ones(2))
    assert "'layer'" not in str(raised.value)  # an internal field the user never wrote


def test_copies_made_by_the_forward_pass_are_initialized_too():
    # The forward pass rebuilds its tree with eqx.tree_at before calling the lazy layer:
    # what the copy builds lands in the model init returns.
    class Scaled(eqx.Module):
        inner: list
        scale: jax.Array

        def __call__(self, x):
            copy = eqx.tree_at(lambda m: m.scale, self, self.scale * 2)
            return copy.inner[0](x) * copy.scale

    model = lm.init(Scaled([lm.nn.Linear(3)], jnp.array(1.0)), 0, spec(2))
    assert type(model.inner[0]) is eqx.nn.Linear and model.inner[0].weight.shape == (3, 2)
    assert lm.is_initialized(model)


def test_key_keyword_reaches_the_forward_pass():
    seen = []

    class Noisy(lm.Module):
        def __call__(self, x, *, key):
            seen.append(key)
            return x

    lm.init(Noisy(), 0, spec(2), key=jax.random.key(3))
    assert len(seen) == 1


def test_batch_norm_inside_sequential_gets_the_state():
    model = lm.nn.Sequential([lm.nn.Linear(4), lm.nn.BatchNorm("batch", mode="batch")])
    model, state = lm.init_with_state(model, 0, spec(3))
    assert type(model.layers[1]) is eqx.nn.BatchNorm and model.layers[1].input_size == 4
    x = jnp.ones((2, 3))
    out, state = jax.vmap(model, axis_name="batch", in_axes=(0, None), out_axes=(0, None))(x, state)
    assert out.shape == (2, 4)


def test_a_lazy_layer_first_called_inside_lax_scan_is_built_outside_it():
    # The canonical recurrent pattern: the layer's arrays come from shapes and keys only,
    # so they belong to the model, not to the scan's body.
    class Recurrent(lm.Module):
        step: lm.nn.Linear

        def __init__(self):
            self.step = lm.nn.Linear(4)

        def __call__(self, xs):
            def body(h, x):
                return jnp.tanh(self.step(jnp.concatenate([h, x]))), None

            return jax.lax.scan(body, jnp.zeros(4), xs)[0]

    eager = lm.init(Recurrent(), 0, spec(5, 3))
    assert type(eager.step) is eqx.nn.Linear and eager.step.weight.shape == (4, 7)
    assert tree_bit_equal(eager, eqx.filter_jit(lm.init)(Recurrent(), 0, spec(5, 3)))
    assert eager(jnp.ones((5, 3))).shape == (4,)


def test_namespace_is_a_drop_in_for_equinox_nn():
    public = {name for name in dir(eqx.nn) if not name.startswith("_")}
    missing = {name for name in public if not hasattr(lm.nn, name)}
    assert not missing, f"lazymod.nn lacks {sorted(missing)}"
    # Names lazymod has no reason to change are Equinox's own objects.
    for name in ("MaxPool2d", "Identity", "Lambda", "Sequential"):
        assert getattr(lm.nn, name) is getattr(eqx.nn, name)
    # Dropout needs a key in the forward pass, which init draws (an eqx.nn.Dropout).
    assert issubclass(lm.nn.Dropout, eqx.nn.Dropout)


def test_is_initialized_sees_lazy_layers_before_init_only():
    layers = [lm.nn.Linear(3), lm.nn.Conv2d(4, 3), lm.nn.LayerNorm(), lm.nn.MLP(2, 8, 1)]
    for layer in layers:
        assert not lm.is_initialized(layer)
        assert not lm.is_initialized([eqx.nn.Identity(), {"inner": layer}])
    assert lm.is_initialized(lm.init(lm.nn.Linear(3), 0, spec(5)))


def test_shared_ties_weights_of_lazy_layers():
    class Tied(lm.Module):
        shared: lm.nn.Shared

        def __init__(self):
            embedding = eqx.nn.Embedding(20, 6, key=jax.random.key(3))
            linear = lm.nn.Linear(20, use_bias=False)
            self.shared = lm.nn.Shared(
                (embedding, linear), lambda p: p[1].weight, lambda p: p[0].weight
            )

        def __call__(self, tokens):
            embedding, linear = self.shared()
            return jax.vmap(linear)(jax.vmap(embedding)(tokens))

    model = lm.init(Tied(), 0, spec(5, dtype=jnp.int32))
    assert type(model.shared) is eqx.nn.Shared and lm.is_initialized(model)
    embedding, linear = model.shared()
    assert linear.weight is embedding.weight and linear.in_features == 6
    tokens = jnp.arange(5)
    expected = embedding.weight[tokens] @ embedding.weight.T
    np.testing.assert_allclose(model(tokens), expected, rtol=1e-5, atol=1e-5)

    class Mismatched(Tied):
        def __init__(self):
            embedding = eqx.nn.Embedding(20, 6, key=jax.random.key(3))
            linear = lm.nn.Linear(19, use_bias=False)
            self.shared = lm.nn.Shared(
                (embedding, linear), lambda p: p[1].weight, lambda p: p[0].weight
            )

    with pytest.raises(lm.InitError, match=r"Mismatched.shared \(Shared\): equinox.nn.Shared"):
        lm.init(Mismatched(), 0, spec(5, dtype=jnp.int32))


# --- stochastic layers at init ------------------------------------------------------


class Noisy(lm.Module):
    linear: lm.nn.Linear
    dropout: lm.nn.Dropout
    attention: lm.nn.MultiheadAttention

    def __init__(self):
        self.linear = lm.nn.Linear(8)
        self.dropout = lm.nn.Dropout(0.5)
        self.attention = lm.nn.MultiheadAttention(2, 8, dropout_p=0.5)

    def __call__(self, x, *, key=None):  # x: (tokens, features)
        keys = [None] * 4 if key is None else list(jax.random.split(key, 4))
        h = self.dropout(jax.vmap(self.linear)(x), key=keys[0])
        h = self.attention(h, h, h, key=keys[1])
        h = self.dropout(h, key=keys[2])  # each applied twice
        return self.attention(h, h, h, key=keys[3])


def test_dropout_and_attention_dropout_draw_their_keys_at_init():
    model = lm.init(Noisy(), 0, spec(5, 3))  # no key=: drawn from the "dropout" stream
    assert type(model.dropout) is eqx.nn.Dropout and model.dropout.p == 0.5
    assert type(model.attention) is eqx.nn.MultiheadAttention
    # The parameters do not depend on the dropout keys, however they are given.
    with_key = lm.init(Noisy(), 0, spec(5, 3), key=jax.random.key(7))
    with_stream = lm.init(
        Noisy(), {"params": jax.random.key(0), "dropout": jax.random.key(1)}, spec(5, 3)
    )
    assert tree_bit_equal(model, with_key) and tree_bit_equal(model, with_stream)
    # After init they are Equinox's layers: training needs a key, as in Equinox.
    with pytest.raises(RuntimeError, match="Dropout requires a key"):
        model(jnp.ones((5, 3)))
    assert model(jnp.ones((5, 3)), key=jax.random.key(2)).shape == (5, 8)


def test_the_dropout_stream_is_the_one_drawn():
    class OnlyDropout(lm.Module):
        dropout: lm.nn.Dropout

        def __call__(self, x):
            return self.dropout(x)

    model = lm.init(OnlyDropout(lm.nn.Dropout(0.2)), {"dropout": jax.random.key(0)}, spec(3))
    assert type(model.dropout) is eqx.nn.Dropout
    with pytest.raises(
        lm.InitError,
        match="OnlyDropout.dropout: drew a key from the stream 'dropout', which has no key",
    ):
        lm.init(OnlyDropout(lm.nn.Dropout(0.2)), {"other": jax.random.key(0)}, spec(3))


def test_forward_key_reaches_shapes_summary_and_restore(tmp_path):
    model = lm.init(Noisy(), 0, spec(5, 3), key=jax.random.key(7))
    shapes = lm.init_shapes(Noisy(), spec(5, 3), key=jax.random.key(7))
    assert shapes.linear.weight == jax.ShapeDtypeStruct((8, 3), jnp.float32)
    assert "linear" in lm.summary(Noisy(), spec(5, 3), key=jax.random.key(7))
    eqx.tree_serialise_leaves(tmp_path / "noisy.eqx", model)
    restored = lm.restore(Noisy(), tmp_path / "noisy.eqx", spec(5, 3), key=jax.random.key(7))
    assert tree_bit_equal(restored, model)


# --- layers seeded by init that Equinox builds with a key --------------------------


def test_embedding_is_seeded_by_init_exactly_as_equinox_draws_it():
    class ByHand(lm.Module):
        weight: jax.Array = lm.lazy()

        def rng_init(self):
            self.weight = eqx.nn.Embedding(10, 4, key=lm.next_key()).weight

    layer = lm.nn.Embedding(10, 4)
    assert not lm.is_initialized(layer)
    with pytest.raises(lm.UninitializedError, match="'weight'"):
        layer(jnp.asarray(1))

    class Model(lm.Module):
        embedding: Any

    model = lm.init(Model(layer), 0)
    assert type(model.embedding) is eqx.nn.Embedding
    by_hand = lm.init(Model(ByHand()), 0)  # at the same path, so with the same key
    assert tree_bit_equal(model.embedding.weight, by_hand.embedding.weight)
    assert not tree_bit_equal(model, lm.init(Model(layer), 1))


def test_embedding_weight_from_an_initializer_an_array_or_a_key():
    zeros = lm.init(lm.nn.Embedding(weight=lm.Initializer(lambda k: jnp.zeros((5, 3)))), 0)
    assert type(zeros) is eqx.nn.Embedding and zeros.num_embeddings == 5
    assert (zeros.weight == 0).all()
    key = jax.random.key(4)
    eager = lm.init(lm.nn.Embedding(6, 2, key=key), 0)
    assert tree_bit_equal(eager, eqx.nn.Embedding(6, 2, key=key))
    with pytest.raises(ValueError, match="num_embeddings and embedding_size"):
        lm.nn.Embedding(6)


def test_prelu_takes_an_array_slope_and_rotary_has_equinox_static_methods():
    act = lm.init(lm.nn.PReLU(jnp.array([0.1, 0.2])), 0, spec(2))  # no warning (an error here)
    assert type(act) is eqx.nn.PReLU and act.negative_slope.shape == (2,)
    ours, theirs = lm.nn.RotaryPositionalEmbedding, eqx.nn.RotaryPositionalEmbedding
    x = jnp.arange(8.0).reshape(2, 4)
    assert (ours.rotate_half(x) == theirs.rotate_half(x)).all()
    assert tree_bit_equal(
        ours.precompute_freqs_cis(8, 4, 10_000.0, jnp.float32),
        theirs.precompute_freqs_cis(8, 4, 10_000.0, jnp.float32),
    )


def equinox_classes():
    return [
        (name, getattr(eqx.nn, name))
        for name in dir(eqx.nn)
        if not name.startswith("_") and isinstance(getattr(eqx.nn, name), type)
    ]


def test_every_layer_equinox_builds_with_a_key_is_seeded_by_init():
    for name, theirs in equinox_classes():
        key = inspect.signature(theirs.__init__).parameters.get("key")
        if key is None:
            continue
        ours = getattr(lm.nn, name)
        assert ours is not theirs, f"lm.nn.{name} is Equinox's, which needs a key"
        ours_key = inspect.signature(ours.__init__).parameters.get("key")
        assert ours_key is None or ours_key.default is None, name


def test_lazy_twins_expose_the_static_and_class_methods_of_equinox_layers():
    for name, theirs in equinox_classes():
        ours = getattr(lm.nn, name)
        for attribute in dir(theirs):
            member = inspect.getattr_static(theirs, attribute)
            if attribute.startswith("_") or not isinstance(member, staticmethod | classmethod):
                continue
            assert hasattr(ours, attribute), f"lm.nn.{name} lacks {attribute}"


def test_an_equinox_dropout_draws_its_key_at_init_too():
    class ByHand(lm.Module):
        linear: lm.nn.Linear
        dropout: eqx.nn.Dropout

        def __call__(self, x):
            return self.dropout(self.linear(x))

    model = lm.init(ByHand(lm.nn.Linear(4), eqx.nn.Dropout(0.3)), 0, spec(3))
    assert type(model.dropout) is eqx.nn.Dropout and model.dropout.p == 0.3
    assert tree_bit_equal(lm.init(model, 1, spec(3)), model)  # re-init: drawn again, kept
