"""The engine's rules, each a test that fails without it: a layer is built once per init
(later calls reuse it), re-init never replaces an array, copies made by the forward pass
are the same module, and both evaluators give the same values."""

import warnings

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import lazymod as lm
from lazymod import _values

from .helpers import Dense, EncoderDecoder, spec, tree_bit_equal, WithRngInit


class Twice(lm.Module):
    layer: lm.Module

    def __call__(self, x):
        return self.layer(self.layer(x))


class Once(lm.Module):
    layer: lm.Module

    def __call__(self, x):
        return self.layer(x)


# --- built once --------------------------------------------------------------------


@pytest.mark.parametrize("make", [lambda: lm.nn.Linear(5), lambda: Dense(5)], ids=["nn", "user"])
def test_a_layer_called_twice_is_built_once(make):
    twice = lm.init(Twice(make()), 0, spec(5))
    once = lm.init(Once(make()), 0, spec(5))
    assert tree_bit_equal(twice.layer, once.layer)
    x = jnp.arange(5.0)
    np.testing.assert_allclose(twice(x), once.layer(once.layer(x)), rtol=1e-6)


@pytest.mark.parametrize("make", [lambda: lm.nn.Linear(3), lambda: Dense(3)], ids=["nn", "user"])
def test_a_layer_called_twice_with_other_shapes_names_both(make):
    with pytest.raises(lm.InitError) as info:
        lm.init(Twice(make()), 0, spec(5))
    message = str(info.value)
    assert "Twice.layer" in message and "called again" in message
    assert "float32[5]" in message and "float32[3]" in message
    assert "two layers" in message


class Unrolled(lm.Module):
    cell: lm.nn.GRUCell

    def __call__(self, xs):
        hidden = jnp.zeros(self.cell.hidden_size)
        for x in xs:  # a Python loop over the time steps
            hidden = self.cell(x, hidden)
        return hidden


def test_an_rnn_cell_unrolled_in_python_does_not_depend_on_the_length():
    models = [lm.init(Unrolled(lm.nn.GRUCell(4)), 0, spec(length, 3)) for length in (1, 5, 20)]
    assert all(type(model.cell) is eqx.nn.GRUCell for model in models)
    assert tree_bit_equal(models[0], models[1]) and tree_bit_equal(models[0], models[2])


class EncodeDecode(lm.Module):
    """Two fields set by two methods, which a parent calls one after the other."""

    encoder: jax.Array = lm.lazy()
    decoder: jax.Array = lm.lazy()

    def encode(self, x):
        if self.initializing():
            self.encoder = jax.random.normal(lm.next_key(), (x.shape[-1], 2))
        return x @ self.encoder

    def decode(self, z):
        if self.initializing():
            self.decoder = jax.random.normal(lm.next_key(), (z.shape[-1], 4))
        return z @ self.decoder


class Autoencoder(lm.Module):
    coder: EncodeDecode

    def __call__(self, x):
        return self.coder.decode(self.coder.encode(x))


def test_later_calls_fill_what_the_first_left():
    model = lm.init(Autoencoder(EncodeDecode()), 0, spec(4))
    assert model.coder.encoder.shape == (4, 2) and model.coder.decoder.shape == (2, 4)
    assert not jnp.array_equal(model.coder.encoder[:2, :2], model.coder.decoder[:2, :2])


# --- copies made by the forward pass ----------------------------------------------


class ThroughTransforms(lm.Module):
    layer: lm.nn.Linear

    def __call__(self, x):
        y = eqx.filter_vmap(self.layer)(x)  # a copy of the layer runs
        z = eqx.filter_checkpoint(lambda layer, y: jax.vmap(layer)(y))(self.layer, y)
        return jax.vmap(self.layer)(z)


def test_copies_made_by_transformations_are_the_same_layer():
    model = lm.init(ThroughTransforms(lm.nn.Linear(3)), 0, spec(2, 3))
    plain = lm.init(Once(lm.nn.Linear(3)), 0, spec(3))
    assert tree_bit_equal(model.layer, plain.layer)


class ReadsAfterCall(lm.Module):
    embed: Dense

    def __call__(self, x):
        h = eqx.filter_vmap(self.embed)(x)  # built inside a copy
        return h @ self.embed.w.T  # read through the parent afterwards


def test_a_parent_reads_what_a_copy_of_its_child_built():
    model = lm.init(ReadsAfterCall(Dense(4)), 0, spec(2, 3))
    assert model.embed.w.shape == (3, 4)
    assert model(jnp.ones((2, 3))).shape == (2, 3)


# --- re-init never destroys values --------------------------------------------------


class Lin(lm.Module):
    w: jax.Array = lm.lazy()

    def __call__(self, x):
        if self.initializing():
            self.w = jax.random.normal(lm.next_key(), (x.shape[-1], 2))
        return x @ self.w


def test_reinit_of_an_edited_module_keeps_its_values():
    model = lm.init(Lin(), 0, spec(5))
    edited = eqx.tree_at(lambda m: m.w, model, jnp.zeros((5, 2)))
    again = lm.init(edited, 1, spec(5))
    assert tree_bit_equal(again, edited)


def test_reinit_of_a_trained_model_keeps_its_training():
    model = lm.init(Once(Lin()), 0, spec(3))
    xs, ys = jnp.ones((8, 3)), jnp.zeros((8, 2))
    optimizer = optax.sgd(0.1)
    state = optimizer.init(eqx.filter(model, eqx.is_array))
    grads = eqx.filter_grad(lambda m: jnp.mean((jax.vmap(m)(xs) - ys) ** 2))(model)
    updates, state = optimizer.update(grads, state)
    trained = eqx.apply_updates(model, updates)
    assert not tree_bit_equal(trained, model)
    assert tree_bit_equal(lm.init(trained, 0, spec(3)), trained)


def test_the_seeds_rng_init_runs_once_across_two_inits():
    first = lm.init(WithRngInit(), 0)
    second = lm.init(first, 1)  # another key: nothing is drawn again
    assert tree_bit_equal(first, second)


class OptionalBias(lm.Module):
    """An rng_init module whose `None` field stays `None` after init."""

    w: jax.Array | None
    b: jax.Array | None

    def __init__(self):
        self.w = None
        self.b = None

    def rng_init(self):
        self.w = jax.random.normal(lm.next_key(), (3,))


def test_rng_init_never_replaces_an_array():
    first = lm.init(OptionalBias(), 0)
    assert first.w.shape == (3,) and first.b is None
    assert tree_bit_equal(lm.init(first, 1), first)


def test_partial_then_full_equals_full():
    full = lm.init(EncoderDecoder(lm.nn.Linear(2), Dense(4)), 0, spec(4))
    half = lm.init(
        EncoderDecoder(lm.nn.Linear(2), Dense(4)), 0, spec(4), method="encode", partial=True
    )
    assert type(half.encoder) is eqx.nn.Linear and not lm.is_initialized(half)
    rest = lm.init(half, 0, spec(2), method="decode")
    assert tree_bit_equal(full, rest)
    assert rest.encoder.weight is half.encoder.weight or tree_bit_equal(rest.encoder, half.encoder)


# --- the two evaluators -------------------------------------------------------------


def models_and_specs():
    return [
        (lm.nn.MLP(10, 32, 2), spec(16)),
        (lm.nn.Conv2d(8, 3, padding=1), spec(3, 8, 8)),
        (lm.nn.MultiheadAttention(2, 16), (spec(4, 16),) * 3),
        (Once(Dense(7)), spec(5)),
    ]


def init_with(evaluator, monkeypatch, model, inputs):
    monkeypatch.setenv(_values.EVALUATOR_VARIABLE, evaluator)
    inputs = inputs if isinstance(inputs, tuple) else (inputs,)
    return lm.init(model, jax.random.key(3), *inputs)


@pytest.mark.parametrize("index", range(4))
def test_both_evaluators_give_the_same_values(index, monkeypatch):
    model, inputs = models_and_specs()[index]
    fast = init_with("fast", monkeypatch, model, inputs)
    slow = init_with("jax", monkeypatch, model, inputs)
    assert jax.tree.structure(fast) == jax.tree.structure(slow)
    arrays = [jax.tree.leaves(eqx.filter(tree, eqx.is_array)) for tree in (fast, slow)]
    for a, b in zip(*arrays):
        # Bit for bit, but where XLA fuses a draw's scale and shift (the last bit).
        np.testing.assert_allclose(a, b, rtol=2 * np.finfo(np.float32).eps, atol=0)


def test_an_unknown_evaluator_is_a_clear_error(monkeypatch):
    monkeypatch.setenv(_values.EVALUATOR_VARIABLE, "quick")
    with pytest.raises(ValueError, match="LAZYMOD_EVALUATOR='quick'.*'fast', 'jax'"):
        lm.init(lm.nn.Linear(2), 0, spec(3))


def test_the_fast_evaluator_falls_back_to_jax_with_one_warning(monkeypatch):
    def unknown(*args, **kwargs):
        raise NotImplementedError("a primitive this evaluator does not know")

    monkeypatch.setenv(_values.EVALUATOR_VARIABLE, "fast")
    monkeypatch.setattr(_values.fast_evaluator, "evaluate", unknown)
    monkeypatch.setattr(_values.fast_evaluator, "record", unknown)
    monkeypatch.setattr(_values, "_warned", False)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        first = lm.init(lm.nn.MLP(4, 8, 1), 0, spec(3))
        second = lm.init(lm.nn.MLP(4, 8, 1), 1, spec(3))
    assert len(caught) == 1 and "JAX's own evaluator" in str(caught[0].message)
    monkeypatch.setenv(_values.EVALUATOR_VARIABLE, "jax")
    assert tree_bit_equal(first, lm.init(lm.nn.MLP(4, 8, 1), 0, spec(3)))
    assert not tree_bit_equal(first, second)


# --- what the review found ----------------------------------------------------------


class Holder(lm.Module):
    layer: lm.nn.Linear

    def __call__(self, x):
        return self.layer(x)


def test_the_result_is_the_pytree_written_by_hand():
    model = lm.init(Holder(lm.nn.Linear(3)), 0, spec(4))
    by_hand = Holder(eqx.nn.Linear(4, 3, key=jax.random.key(0)))
    assert set(vars(model)) == {"layer"}  # nothing of init's bookkeeping is left
    assert jax.tree.structure(model) == jax.tree.structure(by_hand)
    assert eqx.filter_jit(model)(jnp.ones(4)).shape == (3,)
    jax.tree.map(
        lambda a, b: a - b, eqx.filter(model, eqx.is_array), eqx.filter(by_hand, eqx.is_array)
    )


class Masked(lm.Module):
    w: jax.Array = lm.lazy()
    b: jax.Array = lm.lazy()

    def rng_init(self):
        self.w = jnp.ones((3, 3))

    def __call__(self, x):
        if self.initializing():
            self.b = -(x @ self.w).mean(0)  # data-dependent, from real inputs
        return x @ self.w + self.b


class EditsACopy(lm.Module):
    masked: Masked

    def __call__(self, x):
        return eqx.tree_at(lambda m: m.w, self.masked, jnp.triu(self.masked.w))(x)


def test_a_copy_edited_by_the_forward_pass_keeps_its_edit():
    x = jnp.arange(6.0).reshape(2, 3)
    model = lm.init(EditsACopy(Masked()), 0, x)
    np.testing.assert_allclose(model.masked.b, -(x @ jnp.triu(jnp.ones((3, 3)))).mean(0))


class WithHelper(lm.Module):
    w: jax.Array | None = None

    def out_size(self):
        return 3

    def __call__(self, x):
        if self.initializing():
            self.w = jnp.ones((x.shape[-1], self.out_size()))
        return x @ self.w


class CallsTheHelperFirst(lm.Module):
    inner: WithHelper

    def __call__(self, x):
        assert self.inner.out_size() == 3
        return self.inner(x)


def test_a_helper_method_called_first_does_not_stop_the_build():
    _, captured = lm.init(CallsTheHelperFirst(WithHelper()), 0, spec(4), capture_intermediates=True)
    model = lm.init(CallsTheHelperFirst(WithHelper()), 0, spec(4))
    assert model.inner.w.shape == (4, 3)
    assert set(captured) == {"__call__", "inner"}


class FilledLater(lm.Module):
    w: jax.Array | None = None

    def __call__(self, x, use):
        if use and self.initializing():
            self.w = jnp.ones(x.shape)
        return x * self.w if use else x


def test_a_none_field_may_be_filled_by_a_later_call():
    class Parent(lm.Module):
        inner: FilledLater

        def __call__(self, x):
            return self.inner(self.inner(x, False), True)

    assert lm.init(Parent(FilledLater()), 0, spec(3)).inner.w.shape == (3,)


def test_numpy_arrays_are_kept_too():
    model = lm.init(Lin(), 0, spec(3))
    loaded = eqx.tree_at(lambda m: m.w, model, np.zeros((3, 2), np.float32))
    assert (np.asarray(lm.init(loaded, 0, spec(3)).w) == 0).all()
    assert (np.asarray(eqx.filter_jit(lm.init)(loaded, 0, spec(3)).w) == 0).all()


def test_an_error_inside_a_layer_names_the_layer_and_its_inputs():
    class Broken(lm.Module):
        def __call__(self, x):
            return x @ jnp.ones((7, 2))  # a shape error, raised by JAX

    class Outer(lm.Module):
        inner: Broken

        def __call__(self, x):
            return self.inner(x)

    with pytest.raises(TypeError, match="dot_general") as info:
        lm.init(Outer(Broken()), 0, spec(5))
    notes = info.value.__notes__
    assert any("Outer.inner (Broken.__call__)" in n and "float32[5]" in n for n in notes)
    assert sum(n.startswith("(raised in") for n in notes) == 1  # the innermost only
