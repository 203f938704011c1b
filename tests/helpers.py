from typing import Any

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np

import lazymod as lm


def tree_bit_equal(a: Any, b: Any) -> bool:
    """Same structure, same static parts, and every array bit for bit the same."""
    leaves_a, tree_a = jax.tree.flatten(eqx.filter(a, eqx.is_array))
    leaves_b, tree_b = jax.tree.flatten(eqx.filter(b, eqx.is_array))
    if tree_a != tree_b:
        return False
    return all(_bit_equal(x, y) for x, y in zip(leaves_a, leaves_b))


def _bit_equal(x: Any, y: Any) -> bool:
    if x.shape != y.shape or x.dtype != y.dtype:
        return False
    if jnp.issubdtype(x.dtype, jax.dtypes.prng_key):
        x, y = jax.random.key_data(x), jax.random.key_data(y)
    x, y = np.asarray(x).reshape(-1), np.asarray(y).reshape(-1)
    return bool(np.array_equal(x.view(np.uint8), y.view(np.uint8)))


def spec(*shape: int, dtype: Any = jnp.float32) -> jax.ShapeDtypeStruct:
    return jax.ShapeDtypeStruct(shape, dtype)


# --- toy modules that several test files use ----------------------------------------


class Dense(lm.Module):
    """The Treex seed's `initializing()` example, verbatim but for tx -> lm."""

    features_out: int
    w: jax.Array = lm.lazy()

    def __call__(self, x: jnp.ndarray) -> jnp.ndarray:
        if self.initializing():
            self.w = jax.random.uniform(key=lm.next_key(), shape=[x.shape[-1], self.features_out])
        return x @ self.w


class WithRngInit(lm.Module):
    """The Treex seed's `rng_init` example (its two typos read as in
    shared/seeds/README.md)."""

    a: jnp.ndarray | None
    b: jnp.ndarray | None

    def __init__(self):
        self.a = None
        self.b = None

    def rng_init(self):
        self.a = jax.random.uniform(lm.next_key(), shape=(1,))
        self.b = 10.0 * self.a + jax.random.normal(lm.next_key(), shape=(1,))


class Linear(lm.Module):
    """A dense layer written with an `initializing()` block, with a bias."""

    features_out: int
    w: jax.Array = lm.lazy()
    b: jax.Array = lm.lazy()

    def __call__(self, x: jax.Array) -> jax.Array:
        if self.initializing():
            self.w = jax.random.normal(lm.next_key(), (x.shape[-1], self.features_out))
            self.b = jax.random.normal(lm.next_key(), (self.features_out,))
        return x @ self.w + self.b


class MLP(lm.Module):
    """A list of layers with tanh between them."""

    layers: list

    def __call__(self, x: jax.Array) -> jax.Array:
        for layer in self.layers:
            x = jnp.tanh(layer(x))
        return x


class EncoderDecoder(lm.Module):
    """Two submodules, each run by a method of its own (for `method=` and partial init)."""

    encoder: Any
    decoder: Any

    def encode(self, x):
        return self.encoder(x)

    def decode(self, z):
        return self.decoder(z)

    def __call__(self, x):
        return self.decode(self.encode(x))


class WithNumPy(lm.Module):
    """NumPy constants, which init leaves as they are: a float64 table (float64 without
    x64 too), a bfloat16 one (which `.npy` files keep as raw bytes), a NumPy scalar
    whose value the forward pass reads, and a NumPy mask the forward pass assigns."""

    table: np.ndarray | None
    half: np.ndarray | None
    scale: np.float64 | float
    mask: np.ndarray = lm.lazy()
    w: jax.Array = lm.lazy()

    def __init__(self, held: bool = True, size: int = 4):
        self.table = np.arange(size, dtype=np.float64) / 3 if held else None
        self.half = np.asarray([1.5, -2.0], jnp.bfloat16) if held else None
        self.scale = np.float64(0.5) if held else 0.5

    def __call__(self, x):
        if self.initializing():
            self.mask = np.tril(np.ones((x.shape[0],) * 2, np.bool_))
            self.w = jax.random.normal(lm.next_key(), x.shape)
        table = 0.0 if self.table is None else self.table.astype(np.float32)
        sign = 1.0 if self.scale > 0 else -1.0  # a value, not a shape
        return x * self.w * self.scale * sign + table


class NormedHead(lm.Module):
    """A lazy BatchNorm (batch mode, over the axis "batch") then a Linear head: the
    smallest model with an `eqx.nn.State`."""

    norm: lm.nn.BatchNorm
    head: lm.nn.Linear

    def __init__(self):
        self.norm = lm.nn.BatchNorm(axis_name="batch", mode="batch")
        self.head = lm.nn.Linear(2)

    def __call__(self, x, state):
        x, state = self.norm(x, state)
        return self.head(x), state
