"""What `lazymod.init` accepts as a key, and how the key of each draw is derived."""

from typing import Any

import jax
import numpy as np
from jaxtyping import PRNGKeyArray

from ._host_keys import key_of_seed
from ._paths import KeyPath, path_hash


DEFAULT_STREAM = "params"

_ACCEPTED = (
    "a jax.random.key(...), a legacy jax.random.PRNGKey(...), an int seed, or a dict "
    "mapping RNG stream names (str) to such keys"
)


def normalize_keys(key: Any) -> dict[str, PRNGKeyArray]:
    """`{stream: typed key}` from anything `lazymod.init` accepts; a single key feeds
    the `"params"` stream."""
    if isinstance(key, dict):
        if not key:
            raise TypeError(f"lazymod.init got an empty dict of keys; pass {_ACCEPTED}.")
        keys = {}
        for stream, value in key.items():
            if not isinstance(stream, str):
                raise TypeError(
                    f"lazymod.init: RNG stream names must be str; got {stream!r} "
                    f"({type(stream).__name__}) in the dict of keys."
                )
            keys[stream] = _one_key(value, f"key[{stream!r}]")
        return keys
    return {DEFAULT_STREAM: _one_key(key, "key")}


def _one_key(key: Any, where: str) -> PRNGKeyArray:
    if isinstance(key, (int, np.integer)) and not isinstance(key, (bool, np.bool_)):
        try:
            return key_of_seed(int(key))
        except OverflowError:
            raise ValueError(
                f"lazymod.init: {where} is the int seed {int(key)}, which does not fit in "
                "64 bits; pass a smaller seed, or a jax.random.key(...)."
            ) from None
    if isinstance(key, (jax.Array, np.ndarray)):
        if jax.dtypes.issubdtype(key.dtype, jax.dtypes.prng_key):
            if key.shape == ():
                return key
            problem = f"a batch of keys of shape {key.shape}; pass a single key"
        elif key.dtype == np.uint32 and key.ndim == 1:
            try:
                return jax.random.wrap_key_data(key)
            except (TypeError, ValueError):
                problem = f"a uint32 array of shape {key.shape}, which is not a legacy key"
        else:
            problem = f"an array of dtype {key.dtype} and shape {key.shape}"
            if isinstance(key, jax.core.Tracer) and key.shape == ():
                problem += (
                    " (under jax.jit an int seed becomes a traced array: use "
                    "eqx.filter_jit(lazymod.init), which keeps it a Python int, or pass "
                    "jax.random.key(seed))"
                )
    else:
        problem = f"{type(key).__name__} {key!r}"
    raise TypeError(f"lazymod.init: {where} must be {_ACCEPTED}; got {problem}.")


@jax.jit
def _fold_in_twice(key: PRNGKeyArray, words: jax.Array | np.ndarray) -> PRNGKeyArray:
    return jax.random.fold_in(jax.random.fold_in(key, words[0]), words[1])


def derive_key(
    root: PRNGKeyArray, stream: str, kind: str, path: KeyPath, *extra: object
) -> PRNGKeyArray:
    """The key of one draw: the root key folded with a 64-bit hash of the stream, the
    kind of draw, the path and `extra`. The same inputs give the same key in every
    process, eagerly or under a transformation."""
    words = np.asarray(path_hash(stream, kind, path, *extra), dtype=np.uint32)
    return _fold_in_twice(root, words)
