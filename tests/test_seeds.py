"""The two documents lazymod grows from, as tests: the Treex "Initialization" page with
`tx` replaced by `lm`, and the doctest of Flax linen's `Module.init` translated."""

import jax
import jax.numpy as jnp
import numpy as np

import lazymod as lm

from .helpers import Dense, spec, WithRngInit


# --- Treex: Module.initializing, verbatim but for tx -> lm --------------------------


# The seed's `Dense` is in tests/helpers.py, shared with other tests.


def test_treex_initializing_block():
    module = lm.init(Dense(3), 0, spec(5))
    assert module.w.shape == (5, 3)
    assert module.w.dtype == jnp.float32
    assert bool(jnp.all((module.w >= 0) & (module.w < 1)))
    x = jnp.arange(5.0)
    np.testing.assert_allclose(module(x), x @ module.w)


# --- Treex: field Initializer --------------------------------------------------------


class MyModule(lm.Module):
    a: lm.Initializer | jnp.ndarray

    def __init__(self):
        self.a = lm.Initializer(lambda key: jax.random.uniform(key, shape=(1,)))


def test_treex_field_initializer():
    module = MyModule().init(42)
    assert isinstance(module.a, jax.Array) and module.a.shape == (1,)
    assert 0 <= float(module.a[0]) < 1
    assert lm.is_initialized(module)
    # The seed's spelling is lm.init under another name.
    assert jnp.array_equal(module.a, lm.init(MyModule(), 42).a)


# --- Treex: rng_init (the seed's two typos read as in shared/seeds/README.md) --------


# The seed's `WithRngInit` is in tests/helpers.py, shared with other tests.


def test_treex_rng_init():
    module = WithRngInit().init(42)
    assert module.a.shape == (1,) and module.b.shape == (1,)
    # The two keys differ, so b is not exactly 10 * a.
    assert not jnp.array_equal(module.b, 10.0 * module.a)


# --- Treex: initialization order ----------------------------------------------------


class Ordered(lm.Module):
    a: jax.Array
    b: jax.Array = lm.lazy()
    c: jax.Array = lm.lazy()
    seen_by_call: tuple = ()

    def __init__(self):
        self.a = lm.Initializer(lambda key: jnp.full((2,), 3.0))

    def rng_init(self):
        assert isinstance(self.a, jax.Array), "rng_init runs after Initializers"
        self.b = 2 * self.a

    def __call__(self, x):
        if self.initializing():
            assert isinstance(self.b, jax.Array), "__call__ runs after rng_init"
            self.c = self.b + x.shape[-1]
        return x


def test_order_initializers_then_rng_init_then_call():
    module = lm.init(Ordered(), 0, spec(4))
    np.testing.assert_array_equal(module.a, [3.0, 3.0])
    np.testing.assert_array_equal(module.b, [6.0, 6.0])
    np.testing.assert_array_equal(module.c, [10.0, 10.0])


# --- Flax: Module.init with RNG streams, translated ---------------------------------


class Foo(lm.Module):
    dense1: Dense
    dense2: Dense
    other_variable: jax.Array = lm.lazy()

    def __init__(self):
        self.dense1 = Dense(16)
        self.dense2 = Dense(1)

    def __call__(self, x):
        x = self.dense1(x)
        x = jax.nn.relu(x)
        if self.initializing():
            self.other_variable = jax.random.normal(lm.next_key("other_rng"), x.shape)
        x = x + self.other_variable
        return self.dense2(x)


def params(module: Foo) -> list[jax.Array]:
    return [module.dense1.w, module.dense2.w]


def test_flax_streams_doctest():
    x = jnp.empty((7,))
    rngs = {"params": jax.random.key(0), "other_rng": jax.random.key(1)}
    variables0 = lm.init(Foo(), rngs, x)

    rngs["other_rng"] = jax.random.key(0)
    variables1 = lm.init(Foo(), rngs, x)
    # equivalent params (key(0))
    jax.tree.map(np.testing.assert_array_equal, params(variables0), params(variables1))
    # different other_variable (key(1) vs key(0))
    assert not jnp.array_equal(variables0.other_variable, variables1.other_variable)

    del rngs["other_rng"]
    # lm.next_key("other_rng") defaults to the 'params' RNG stream
    variables2 = lm.init(Foo(), rngs, x)
    jax.tree.map(np.testing.assert_array_equal, params(variables1), params(variables2))
    np.testing.assert_array_equal(variables1.other_variable, variables2.other_variable)

    # passing in a single key is equivalent to passing in {'params': key}
    variables3 = lm.init(Foo(), jax.random.key(0), x)
    jax.tree.map(np.testing.assert_array_equal, params(variables2), params(variables3))
    np.testing.assert_array_equal(variables2.other_variable, variables3.other_variable)


def test_flax_jitting_init_uses_only_shapes():
    # "Jitting init initializes a model lazily using only the shapes of the inputs":
    # lm.init does that without jit, from a spec; and jit of it agrees.
    x = jnp.empty((7,))
    eager = lm.init(Dense(1), jax.random.key(0), jax.ShapeDtypeStruct(x.shape, x.dtype))
    jitted = jax.jit(lambda key: lm.init(Dense(1), key, x))(jax.random.key(0))
    np.testing.assert_array_equal(eager.w, jitted.w)
