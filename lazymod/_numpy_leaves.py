"""NumPy arrays in a module: constants that init leaves in the tree as they are (a
float64 table stays a float64 NumPy array, x64 or not), and that `init_shapes`,
`restore` and `restore_sharded` therefore keep NumPy, in their own dtype."""

from typing import Any

import jax
import numpy as np


def is_numpy(leaf: Any) -> bool:
    """Whether `leaf` is a NumPy array or scalar."""
    return isinstance(leaf, (np.ndarray, np.generic))


def numpy_like(found: Any, like: np.ndarray | np.generic) -> Any:
    """`found`, read for the NumPy leaf `like`, as NumPy: an array, or a scalar of
    `like`'s type (a mismatch of shape or dtype is left for the caller to name). The
    `.npy` format keeps a dtype NumPy lacks (bfloat16, float8, int4: ml_dtypes' kind
    "V") as raw bytes: read for such a leaf, bytes of its width are its dtype again.
    (So a file cannot tell apart two of those dtypes of one width, int4 and uint4.)"""
    found = np.asarray(found)
    if (
        found.dtype != like.dtype
        and like.dtype.kind == "V"
        and found.dtype.kind == "V"
        and found.dtype.names is None
        and found.dtype.itemsize == like.dtype.itemsize
    ):
        found = found.view(like.dtype)
    if isinstance(like, np.generic) and found.shape == () and found.dtype == like.dtype:
        return found[()]
    return found


def described(leaf: Any) -> Any:
    """A NumPy leaf as the `jax.ShapeDtypeStruct` of its own shape and dtype; any other
    leaf as it is."""
    return jax.ShapeDtypeStruct(leaf.shape, leaf.dtype) if is_numpy(leaf) else leaf
