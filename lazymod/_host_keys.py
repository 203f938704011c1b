"""Threefry keys computed in host memory with NumPy, for lazymod's evaluator.

Deriving a key (`jax.random.split`, `jax.random.fold_in`, indexing a batch of keys) is a
few integer operations on a pair of uint32 words. Run by JAX, each is a dispatch (and,
the first time for each shape, a compilation); a model's init derives hundreds of keys,
one or two per parameter. Threefry-2x32 is integer arithmetic, so NumPy computes the
same bits in microseconds. Only the partitionable threefry implementation (JAX's
default since 0.5) is handled here; anything else goes back to JAX.
"""

import dataclasses
from typing import Any

import jax
import numpy as np
from jax.extend.random import threefry_prng_impl

from ._threefry import PARITY, ROTATIONS, threefry2x32


_MASK = 0xFFFFFFFF
_FEW = 8  # up to this many counters, hash them one by one in Python


def hash_counters(key: np.ndarray, x1: np.ndarray, x2: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The Threefry-2x32 hash of the counters `(x1, x2)` under `key` (uint32[2]),
    bit for bit as `jax.extend.random.threefry2x32_p` computes it."""
    x1, x2 = np.array(x1, np.uint32, ndmin=1), np.array(x2, np.uint32, ndmin=1)
    if 0 < x1.size <= _FEW:  # a split into 2 or a fold_in: Python ints beat NumPy here
        k1, k2 = int(key[0]), int(key[1])
        pairs = (_threefry_one(k1, k2, a, b) for a, b in zip(x1.tolist(), x2.tolist()))
        first, second = zip(*pairs)
        return np.array(first, np.uint32), np.array(second, np.uint32)
    return threefry2x32(np.uint32(key[0]), np.uint32(key[1]), x1, x2)


def _threefry_one(k1: int, k2: int, x1: int, x2: int) -> tuple[int, int]:
    """`hash_counters` of one pair of counters, in Python ints (mod 2**32)."""
    ks = (k1, k2, k1 ^ k2 ^ PARITY)
    a, b = (x1 + k1) & _MASK, (x2 + k2) & _MASK
    for i in range(5):
        for r in ROTATIONS[i % 2]:
            a = (a + b) & _MASK
            b = (((b << r) | (b >> (32 - r))) & _MASK) ^ a
        a = (a + ks[(i + 1) % 3]) & _MASK
        b = (b + ks[(i + 2) % 3] + i + 1) & _MASK
    return a, b


@dataclasses.dataclass(frozen=True, eq=False)
class HostKeys:
    """Concrete threefry keys as their raw data, uint32[*shape, 2], in NumPy."""

    data: np.ndarray
    dtype: Any  # the JAX key dtype, key<fry>

    @property
    def shape(self) -> tuple[int, ...]:
        return self.data.shape[:-1]

    def to_jax(self) -> jax.Array:
        return jax.random.wrap_key_data(self.data, impl="threefry2x32")


def enabled() -> bool:
    """Whether keys are derived on the host: only for partitionable threefry, whose
    `split` is a pure function of the key and the index."""
    return bool(jax.config.jax_threefry_partitionable)  # pyright: ignore[reportAttributeAccessIssue]


def is_threefry_keys(x: Any) -> bool:
    """Whether `x` is an array (concrete, or a tracer) of typed threefry keys."""
    return (
        isinstance(x, jax.Array)
        and jax.dtypes.issubdtype(x.dtype, jax.dtypes.prng_key)
        and getattr(x.dtype, "_impl", None) is threefry_prng_impl
    )


def key_of_seed(seed: int) -> jax.Array:
    """`jax.random.key(seed)`, made without JAX's seeding program: compiling it costs
    about 50 ms in a fresh process. For the default threefry and a seed in
    `[0, 2**31)`, the key's data is `[0, seed]`; any other seed goes to JAX."""
    if jax.config.jax_default_prng_impl == "threefry2x32" and 0 <= seed < 2**31:
        return jax.random.wrap_key_data(np.array([0, seed], np.uint32), impl="threefry2x32")
    return jax.random.key(seed)


def from_array(x: Any) -> HostKeys | None:
    """`x` as `HostKeys` if it is a concrete array of threefry keys."""
    if is_threefry_keys(x) and not isinstance(x, jax.core.Tracer):
        return HostKeys(np.asarray(jax.random.key_data(x)), x.dtype)
    return None


def slice_or_squeeze(name: str, params: dict[str, Any], data: np.ndarray) -> np.ndarray:
    """JAX's `slice` or `squeeze` of leading axes of `data` (for keys, the key words
    are one more axis, last), in NumPy."""
    if name == "squeeze":
        return np.squeeze(data, axis=tuple(params["dimensions"]))
    starts, stops = params["start_indices"], params["limit_indices"]
    strides = params["strides"] or (1,) * len(starts)
    return data[tuple(slice(*bounds) for bounds in zip(starts, stops, strides))]


def split_counters(shape: tuple[int, ...]) -> tuple[np.ndarray, np.ndarray]:
    """The counters `jax.random.split(key, shape)` hashes (partitionable threefry):
    key `i` (flat) hashes `(i >> 32, i & 0xFFFFFFFF)`, as uint32 arrays."""
    index = np.arange(int(np.prod(shape, dtype=np.int64)), dtype=np.uint64)
    return (index >> np.uint64(32)).astype(np.uint32), index.astype(np.uint32)


def apply(name: str, params: dict[str, Any], ins: list[Any]) -> Any:
    """The output of the key primitive `name` on `ins`, whose first is `HostKeys`, or
    `None` if it is not one computed here."""
    keys = ins[0]
    data = keys.data
    if name == "random_split" and keys.shape == ():
        shape = tuple(params["shape"])
        bits1, bits2 = hash_counters(data, *split_counters(shape))
        return HostKeys(np.stack([bits1, bits2], axis=-1).reshape(*shape, 2), keys.dtype)
    if name == "random_fold_in" and keys.shape == ():
        message = ins[1]
        if isinstance(message, jax.core.Tracer) or np.size(message) != 1:
            return None
        word = np.asarray(message).astype(np.uint32).reshape(1)
        bits1, bits2 = hash_counters(data, np.zeros(1, np.uint32), word)
        return HostKeys(np.concatenate([bits1, bits2]), keys.dtype)
    if name == "random_unwrap":
        return data
    if name in ("slice", "squeeze"):
        return HostKeys(slice_or_squeeze(name, params, data), keys.dtype)
    if name == "reshape" and params.get("dimensions") is None:
        return HostKeys(data.reshape(*params["new_sizes"], 2), keys.dtype)
    if name in ("copy", "copy_p"):
        return keys
    return None
