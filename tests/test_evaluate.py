"""lazymod's fast evaluator (lazymod/_evaluate.py, lazymod/_chunks.py) computes initial
values chunk by chunk with one compiled program per structure. Whatever the shape, dtype
or distribution, its values must be bit for bit those JAX computes directly."""

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.extend.random import threefry2x32_p

import lazymod as lm
from lazymod import _host_keys
from lazymod._chunks import (
    chunk_size,
    LARGE_CHUNK,
    MEDIUM_CHUNK,
    PACK_CHUNK,
    PACK_LIMIT,
    SMALL_CHUNK,
)
from lazymod._evaluate import evaluate
from lazymod._threefry import threefry2x32

from .helpers import tree_bit_equal


SAMPLERS = {
    "uniform": lambda k, s, d: jax.random.uniform(k, s, d, -0.3, 0.7),
    "normal": lambda k, s, d: jax.random.normal(k, s, d),
    "truncated_normal": lambda k, s, d: jax.random.truncated_normal(k, -2.0, 2.0, s, d),
    "bits": lambda k, s, d: jax.random.bits(k, s),
    "bernoulli": lambda k, s, d: jax.random.bernoulli(k, 0.3, s),
    "he_normal": lambda k, s, d: jax.nn.initializers.he_normal()(k, s, d),
    "glorot_uniform": lambda k, s, d: jax.nn.initializers.glorot_uniform()(k, s, d),
    "lecun_normal": lambda k, s, d: jax.nn.initializers.lecun_normal()(k, s, d),
    "orthogonal": lambda k, s, d: jax.nn.initializers.orthogonal()(k, s, d),
    "ones": lambda k, s, d: jnp.ones(s, d),
    "constant": lambda k, s, d: jax.nn.initializers.constant(0.25)(k, s, d),
    "scaled": lambda k, s, d: (jax.random.normal(k, s, d) * 0.02 + 1).astype(d),
}
# What JAX computes in one compiled function (with its constants as arguments, as the
# evaluator has them) comes out bit for bit the same. Elsewhere XLA may fuse `x * a + b`
# into one rounding (a fused multiply-add) where op-by-op JAX rounds twice: 1 ulp.
EXACT = {"uniform", "normal", "truncated_normal", "bits", "bernoulli", "ones", "constant"}
# Across the small/medium chunk threshold and across a medium chunk's end.
SHAPES = [(), (7,), (3, 5), (4 * SMALL_CHUNK + 1,), (2, MEDIUM_CHUNK + 3)]
LARGE_SHAPE = (2, LARGE_CHUNK - 3)  # across a large chunk's end


def test_chunk_sizes():
    assert chunk_size(4 * SMALL_CHUNK + 1) == MEDIUM_CHUNK
    # The shapes above use the medium and the large chunk, each across a chunk's end.
    assert chunk_size(2 * (MEDIUM_CHUNK + 3)) == MEDIUM_CHUNK
    assert chunk_size(LARGE_SHAPE[0] * LARGE_SHAPE[1]) == LARGE_CHUNK
    assert chunk_size(1024 * 1024) == LARGE_CHUNK
    assert chunk_size(3 * 3 * 256 * 256) == MEDIUM_CHUNK  # 3 medium calls, not 1 large


def direct_and_evaluated(sampler, shape, dtype):
    key = jax.random.key(42)
    direct = sampler(key, shape, dtype)
    closed = jax.make_jaxpr(lambda: sampler(key, shape, dtype))()
    (evaluated,) = evaluate(closed, closed.jaxpr.outvars)
    return direct, evaluated


@pytest.mark.parametrize("name", sorted(SAMPLERS))
@pytest.mark.parametrize("shape", SHAPES, ids=str)
def test_values_equal_jax_bit_for_bit(name, shape):
    if name in ("he_normal", "glorot_uniform", "lecun_normal", "orthogonal") and len(shape) < 2:
        shape = (*shape, 3, 4)[-2:] if shape else (3, 4)
    direct, evaluated = direct_and_evaluated(SAMPLERS[name], shape, jnp.float32)
    assert_same(direct, evaluated, exact=name in EXACT)


@pytest.mark.parametrize("name", ["uniform", "normal", "bits"])
def test_large_values_equal_jax_bit_for_bit(name):
    direct, evaluated = direct_and_evaluated(SAMPLERS[name], LARGE_SHAPE, jnp.float32)
    assert_same(direct, evaluated, exact=True)


def assert_same(direct, evaluated, exact):
    assert (evaluated.shape, evaluated.dtype) == (direct.shape, direct.dtype)
    if exact:
        assert tree_bit_equal(direct, evaluated)
    else:
        np.testing.assert_array_max_ulp(np.asarray(direct), np.asarray(evaluated), maxulp=1)


@pytest.mark.parametrize("dtype", [jnp.float16, jnp.bfloat16, jnp.float32])
@pytest.mark.parametrize("name", ["uniform", "normal", "truncated_normal", "scaled"])
def test_low_precision_values_equal_jax(name, dtype):
    direct, evaluated = direct_and_evaluated(SAMPLERS[name], (5, 1000), dtype)
    assert evaluated.dtype == dtype
    if dtype == jnp.float32 or name in EXACT:
        assert_same(direct, evaluated, exact=name in EXACT)
    else:  # NumPy has no ulp arithmetic for these: compare as float32, within one ulp
        step = float(jnp.finfo(dtype).eps)
        diff = np.abs(np.asarray(direct, np.float32) - np.asarray(evaluated, np.float32))
        assert np.all(diff <= step * np.maximum(1, np.abs(np.asarray(direct, np.float32))))


def test_eager_init_equals_jitted_init_for_every_sampler():
    fields = {
        name: lm.Initializer(lambda k, f=f: f(k, (33, 65), jnp.float32))
        for name, f in SAMPLERS.items()
    }
    eager = lm.init(fields, 0)
    jitted = eqx.filter_jit(lm.init)(fields, jax.random.key(0))
    assert tree_bit_equal(eager, jitted)
    # Across both chunk sizes, in float16 too.
    fields = {
        f"{name}{size}": lm.Initializer(lambda k, f=f, size=size: f(k, (size,), jnp.float16))
        for name, f in SAMPLERS.items()
        if name not in ("he_normal", "glorot_uniform", "lecun_normal", "orthogonal")
        for size in (5, 4 * SMALL_CHUNK + 7)
    }
    assert tree_bit_equal(lm.init(fields, 1), eqx.filter_jit(lm.init)(fields, jax.random.key(1)))


def test_a_value_computed_twice_is_shared():
    # `w` is needed on its own (by a reduction) and inside a later elementwise value.
    def sampler(key):
        w = jax.random.normal(key, (300,))
        return w, w * 2 + jnp.mean(w)

    key = jax.random.key(1)
    closed = jax.make_jaxpr(lambda: sampler(key))()
    assert tree_bit_equal(tuple(evaluate(closed, closed.jaxpr.outvars)), sampler(key))


KEY_DERIVATIONS = {
    "split": lambda k: jax.random.split(k, 5),
    "split_2d": lambda k: jax.random.split(k, (3, 4)),
    "fold_in": lambda k: jax.random.fold_in(k, 7),
    "fold_in_max": lambda k: jax.random.fold_in(k, np.uint32(2**32 - 1)),
    "index_unpack": lambda k: jnp.stack(list(jax.random.split(k, 3))[::-1]),
    "slice_reshape": lambda k: jax.random.split(k, 12)[2:11:3].reshape(3, 1),
    "nested": lambda k: jax.random.split(jax.random.fold_in(jax.random.split(k)[1], 3))[0],
    "key_data": lambda k: jax.random.key_data(jax.random.split(k)[0]),
    "legacy": lambda k: jax.random.split(jax.random.PRNGKey(3))[1],
    "unstack": lambda k: jnp.unstack(jax.random.split(k, (3, 2)), axis=1)[1],
}


@pytest.mark.parametrize("name", sorted(KEY_DERIVATIONS))
@pytest.mark.parametrize("seed", [0, 1, 2**31 + 5])
def test_keys_derived_on_the_host_equal_jax(name, seed):
    # Key derivation runs in NumPy (lazymod/_host_keys.py), bit for bit as JAX does it,
    # and so does what is drawn from the derived keys.
    derive = KEY_DERIVATIONS[name]
    key = jax.random.key(seed)
    closed = jax.make_jaxpr(lambda: derive(key))()
    (evaluated,) = evaluate(closed, closed.jaxpr.outvars)
    assert tree_bit_equal(evaluated, derive(key))

    def draw(k):
        keys = derive(k)
        if not jnp.issubdtype(keys.dtype, jax.dtypes.prng_key):
            keys = jax.random.wrap_key_data(keys)
        return jax.random.uniform(keys.reshape(-1)[0], (3, 5))

    closed = jax.make_jaxpr(lambda: draw(key))()
    (evaluated,) = evaluate(closed, closed.jaxpr.outvars)
    assert tree_bit_equal(evaluated, draw(key))


@pytest.mark.parametrize("count", [1, 2, _host_keys._FEW, _host_keys._FEW + 1, 300])
def test_host_threefry_equals_jax(count):
    # Few counters are hashed in Python ints, more in NumPy: both must be JAX's bits.
    rng = np.random.default_rng(count)
    key, x1, x2 = (rng.integers(0, 2**32, n, dtype=np.uint32) for n in (2, count, count))
    expected = threefry2x32_p.bind(key[0], key[1], x1, x2)
    assert tree_bit_equal(_host_keys.hash_counters(key, x1, x2), tuple(expected))


@pytest.mark.parametrize("seed", [0, 1, 42, 2**31 - 1, 2**31, 2**40, -1])
def test_key_of_seed_equals_jax(seed):
    # Made in NumPy for the usual seeds, by JAX for the others: the same key either way.
    key = _host_keys.key_of_seed(seed)
    assert key.dtype == jax.random.key(seed).dtype
    assert tree_bit_equal(jax.random.key_data(key), jax.random.key_data(jax.random.key(seed)))


def test_unrolled_threefry_in_a_program_equals_jax():
    # The programs hash with lazymod's unrolled threefry, not the primitive (whose CPU
    # lowering is a slow rolled loop): jitted, with 0-d or per-element key words, it
    # must give the primitive's bits.
    rng = np.random.default_rng(0)
    x1, x2 = (rng.integers(0, 2**32, (4, 1000), dtype=np.uint32) for _ in range(2))
    for k1, k2 in [rng.integers(0, 2**32, 2, dtype=np.uint32), (x2[::-1], x1[::-1])]:
        ours = jax.jit(threefry2x32)(k1, k2, x1, x2)
        assert tree_bit_equal(ours, tuple(threefry2x32_p.bind(k1, k2, x1, x2)))


def test_small_values_computed_side_by_side_equal_jax():
    # Hundreds of small values of one structure share packed program calls (more
    # elements than one call holds, so several calls); each must be what JAX computes
    # for it alone, whatever its neighbours. (Few distinct shapes: JAX compiles a
    # sampler per shape.)
    shapes = [(1,), (7,), (3, 5), (33,), (2, 40), (1500,)] * 50
    shapes.append((PACK_LIMIT,))  # the largest packed value

    def make():
        key = jax.random.key(3)
        return [
            jax.random.uniform(jax.random.fold_in(key, i), shape, minval=-i, maxval=i + 1.5)
            if i % 3
            else jax.random.normal(jax.random.fold_in(key, i), shape, jnp.bfloat16)
            for i, shape in enumerate(shapes)
        ]

    closed = jax.make_jaxpr(make)()
    evaluated = evaluate(closed, closed.jaxpr.outvars)
    assert sum(np.size(v) for v in evaluated) > PACK_CHUNK
    assert tree_bit_equal(evaluated, make())
