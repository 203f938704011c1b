from typing import Any

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np


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
