"""NumPy arrays in a module: constants that init leaves in the tree as they are (a
float64 table stays a float64 NumPy array, x64 or not), and that `init_shapes`,
`restore` and `restore_sharded` therefore keep NumPy, in their own dtype. A model
trained under `jax.jit` holds them as JAX arrays (float32 without x64): restoring its
checkpoint gives those back."""

from typing import Any

import jax
import jax.numpy as jnp
import numpy as np


def is_numpy(leaf: Any) -> bool:
    """Whether `leaf` is a NumPy array or scalar."""
    return isinstance(leaf, (np.ndarray, np.generic))


def held_as(like: np.ndarray | np.generic) -> np.dtype:
    """The dtype JAX holds `like` in once it has gone through `jax.jit` (an
    `eqx.filter_jit` training step returns a model's NumPy arrays as JAX arrays):
    float32 for float64, without x64."""
    return np.dtype(jax.dtypes.canonicalize_dtype(like.dtype))


def numpy_read(found: Any, like: np.ndarray | np.generic) -> tuple[Any, bool]:
    """`found`, read for the NumPy leaf `like`, and whether it fits `like`. In `like`'s
    own dtype it is NumPy, as init left it (a scalar of `like`'s type for a scalar);
    in the dtype JAX holds `like` in (saved after a jitted training step), the JAX
    array the trained model held. Otherwise it does not fit, and is left for the
    caller to name.

    The `.npy` format keeps a dtype NumPy lacks (bfloat16, float8, int4: ml_dtypes'
    kind "V") as raw bytes: read for such a leaf, bytes of its width are its dtype
    again. (So a file cannot tell apart two of those dtypes of one width, int4 and
    uint4.)"""
    if isinstance(found, jax.Array) and found.dtype == held_as(like) != like.dtype:
        return found, found.shape == np.shape(like)  # read as JAX holds it already
    found = np.asarray(found)
    if (
        found.dtype != like.dtype
        and like.dtype.kind == "V"
        and found.dtype.kind == "V"
        and found.dtype.names is None
        and found.dtype.itemsize == like.dtype.itemsize
    ):
        found = found.view(like.dtype)
    if found.shape != np.shape(like):
        return found, False
    if found.dtype == like.dtype:
        return (found[()] if isinstance(like, np.generic) else found), True
    if found.dtype == held_as(like):
        return jnp.asarray(found), True
    return found, False


def described(leaf: Any) -> Any:
    """A NumPy leaf as the `jax.ShapeDtypeStruct` of its own shape and dtype; any other
    leaf as it is."""
    return jax.ShapeDtypeStruct(leaf.shape, leaf.dtype) if is_numpy(leaf) else leaf
