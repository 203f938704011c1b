"""A kept trace's evaluation is recorded once and replayed by later inits: every key
at once from a key table, then the recorded programs. The values are, bit for bit,
those of the evaluation walked afresh (and of JAX's own evaluator); an evaluation
that gives a key's bits to an operation it does not record is walked every time."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import lazymod as lm
from lazymod import _values
from lazymod._key_table import KeySlots, KeyTable
from lazymod._replay import Template

from .helpers import spec, tree_bit_equal


@pytest.fixture(autouse=True)
def fresh(monkeypatch):
    monkeypatch.setenv(_values.EVALUATOR_VARIABLE, "fast")  # what records templates
    lm.clear_caches()
    yield
    lm.clear_caches()


def walked(module, key, *inputs, **options):
    """The init with JAX's own evaluator: no template, no fast path."""
    import os

    old = os.environ.get(_values.EVALUATOR_VARIABLE)
    os.environ[_values.EVALUATOR_VARIABLE] = "jax"
    try:
        lm.clear_caches()
        return lm.init(module, key, *inputs, **options)
    finally:
        lm.clear_caches()
        if old is None:
            del os.environ[_values.EVALUATOR_VARIABLE]
        else:
            os.environ[_values.EVALUATOR_VARIABLE] = old


def templates() -> list:
    return [t for t in _values._templates.values()]


class Keeper(lm.Module):
    """Keys as fields, a key made by the forward pass, a constant and a draw."""

    layer: lm.nn.Linear
    key: jax.Array = lm.lazy()
    made: jax.Array = lm.lazy()
    table: jax.Array = lm.lazy()
    noise: jax.Array = lm.lazy()

    def __init__(self):
        self.layer = lm.nn.Linear(3)

    def __call__(self, x):
        if self.initializing():
            self.key = lm.next_key()
            self.made = jax.random.normal(jax.random.key(7), (4,))  # the same every init
            self.table = jnp.arange(5.0) * 2
            keys = jax.random.split(lm.next_key(), (2, 3))
            self.noise = jax.random.uniform(keys[1, 2], (3,)) + self.table[1]
        return self.layer(x)


@pytest.mark.parametrize("seed", [0, 1, 2**31 + 5])
def test_later_inits_replay_the_recorded_evaluation_bit_for_bit(seed):
    lm.init(Keeper(), 99, spec(2))  # recorded
    [template] = templates()
    assert isinstance(template, Template)
    replayed = lm.init(Keeper(), seed, spec(2))  # replayed
    assert tree_bit_equal(replayed, walked(Keeper(), seed, spec(2)))


def test_replayed_inits_differ_by_key_and_share_no_array():
    a = lm.init(Keeper(), 0, spec(2))
    b = lm.init(Keeper(), 1, spec(2))
    assert not np.array_equal(jax.random.key_data(a.key), jax.random.key_data(b.key))
    assert not np.array_equal(a.layer.weight, b.layer.weight)
    assert np.array_equal(a.made, b.made) and a.made is not b.made
    assert a.table is not b.table
    assert a.table.unsafe_buffer_pointer() != b.table.unsafe_buffer_pointer()


class Orthogonal(lm.Module):
    w: jax.Array = lm.lazy()

    def __call__(self, x):
        if self.initializing():
            self.w = jax.nn.initializers.orthogonal()(lm.next_key(), (x.shape[0], 4))
        return x @ self.w


def test_a_key_given_to_an_unrecorded_operation_is_walked_every_time():
    first = lm.init(Orthogonal(), 0, spec(6))
    assert templates() == [None]  # a QR of a draw: not recorded
    second = lm.init(Orthogonal(), 1, spec(6))
    assert tree_bit_equal(second, walked(Orthogonal(), 1, spec(6)))
    assert not tree_bit_equal(first, second)


def test_deep_models_replay_bit_for_bit():
    class Stack(lm.Module):
        layers: list

        def __init__(self):
            self.layers = [lm.nn.Linear(5) for _ in range(20)] + [lm.nn.LayerNorm()]

        def __call__(self, x):
            for layer in self.layers:
                x = jax.nn.relu(layer(x))
            return x

    lm.init(Stack(), 0, spec(3))
    for seed in (1, 2):
        assert tree_bit_equal(lm.init(Stack(), seed, spec(3)), walked(Stack(), seed, spec(3)))


def test_unstacked_keys_are_recorded_and_replayed_bit_for_bit():
    class Unstacked(lm.Module):
        draws: tuple = lm.lazy()

        def __call__(self, x):
            if self.initializing():
                keys = jnp.unstack(jax.random.split(lm.next_key(), (2, 3)), axis=1)
                self.draws = tuple(jax.random.uniform(k[1], (4,)) for k in keys)
            return x

    lm.init(Unstacked(), 0, spec(2))
    [template] = templates()
    assert isinstance(template, Template)
    for seed in (1, 2):
        got = lm.init(Unstacked(), seed, spec(2))
        assert tree_bit_equal(got, walked(Unstacked(), seed, spec(2)))


def test_the_key_table_derives_keys_as_jax_does():
    root = jax.random.key(2026)
    table = KeyTable(1)
    slots = table.root(0, root.dtype)
    folded = table.fold_in(slots, 123456789)
    split = table.split(folded, (2, 3))
    again = table.fold_in(KeySlots(np.asarray(split.slots[1, 2]), root.dtype), 7)
    data = table.resolve([np.asarray(jax.random.key_data(root))])
    expected_fold = jax.random.fold_in(root, 123456789)
    expected_split = jax.random.split(expected_fold, (2, 3))
    expected_again = jax.random.fold_in(expected_split[1, 2], 7)
    np.testing.assert_array_equal(data[folded.slots], jax.random.key_data(expected_fold))
    np.testing.assert_array_equal(data[split.slots], jax.random.key_data(expected_split))
    np.testing.assert_array_equal(data[again.slots], jax.random.key_data(expected_again))


def test_a_model_storing_keys_in_a_batch_is_walked_and_correct():
    class Batch(lm.Module):
        keys: jax.Array = lm.lazy()

        def __call__(self, x):
            if self.initializing():
                self.keys = jax.vmap(lambda k: jax.random.fold_in(k, 3))(
                    jax.random.split(lm.next_key(), 4)
                )
            return x

    lm.init(Batch(), 0, spec(2))
    got = lm.init(Batch(), 5, spec(2))
    assert tree_bit_equal(got, walked(Batch(), 5, spec(2)))
