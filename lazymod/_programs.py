"""The compiled programs that compute chunks of symbolic values: one per structure
(the `nodes` of a plan in `_chunks.py`), whatever a value's shape and constants."""

import functools
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax
from jax.extend.random import threefry2x32_p
from jax.typing import ArrayLike

from ._threefry import threefry2x32


# Programs compute their elements as rows of `_ROW`, which XLA spreads over the cores.
_ROW = 2**15


@functools.cache
def program(nodes: tuple[tuple[Any, ...], ...], scalar_dtypes: tuple[Any, ...], chunk: int):
    """One compiled program per structure: computes `chunk` consecutive elements
    (from the flat index `offset`) of the value that `nodes` describe. Values that are
    not per element are computed once, as 0-d arrays."""
    del scalar_dtypes  # part of the cache key only

    def run(
        offset: ArrayLike,
        keys: list[ArrayLike],
        scalars: list[ArrayLike],
        arrays: list[ArrayLike],
    ) -> jax.Array:
        # The barriers keep XLA from folding constants into, or fusing callers with,
        # this computation: inlined into an enclosing jit it computes the same bits.
        scalars, arrays = lax.optimization_barrier((scalars, arrays))
        shape = _block_shape(chunk)
        iota = _flat_iota(shape)
        low = offset[1] + iota
        high = offset[0] + (low < iota).astype(np.uint32)  # carry into the high word
        key_words = [(key[0], key[1]) for key in keys]
        arrays = [a.reshape(shape) for a in arrays]
        out = _run_nodes(nodes, shape, high, low, key_words, scalars, arrays)
        return lax.optimization_barrier(out.reshape(chunk))

    return jax.jit(run)


@functools.cache
def packed_program(
    nodes: tuple[tuple[Any, ...], ...], scalar_dtypes: tuple[Any, ...], dtype: Any, length: int
):
    """One compiled program per structure computing small values side by side in
    `length` elements: every element comes with its flat index
    `low` in its own value, and that value's keys and scalars."""
    del scalar_dtypes, dtype  # part of the cache key only

    def run(
        low: ArrayLike,
        keys: list[tuple[ArrayLike, ArrayLike]],
        scalars: list[ArrayLike],
    ) -> jax.Array:
        low, keys, scalars = lax.optimization_barrier((low, keys, scalars))
        shape = _block_shape(length)
        low = low.reshape(shape)
        keys = [(k1.reshape(shape), k2.reshape(shape)) for k1, k2 in keys]
        scalars = [s.reshape(shape) for s in scalars]
        out = _run_nodes(nodes, shape, jnp.zeros_like(low), low, keys, scalars, [])
        return lax.optimization_barrier(out.reshape(length))

    return jax.jit(run)


@functools.cache
def block_program(
    nodes: tuple[tuple[Any, ...], ...], scalar_dtypes: tuple[Any, ...], chunk: int, rank: int
):
    """One compiled program per structure and rank: computes `chunk` consecutive
    elements (from `offset`, in row-major order) of a block of the value that `nodes`
    describe, the block given by its `dims`, `starts` and the value's `strides` (each
    uint32[rank], the value smaller than 2**32 elements). Element for element, the same
    bits as `program` gives at the same flat index of the whole value."""
    del scalar_dtypes  # part of the cache key only

    def run(
        offset: ArrayLike,
        dims: ArrayLike,
        starts: ArrayLike,
        strides: ArrayLike,
        keys: list[ArrayLike],
        scalars: list[ArrayLike],
    ) -> jax.Array:
        scalars, dims, starts, strides = lax.optimization_barrier((scalars, dims, starts, strides))
        shape = _block_shape(chunk)
        local = offset + _flat_iota(shape)  # row-major index within the block
        flat = jnp.zeros(shape, np.uint32)
        for axis in reversed(range(rank)):
            flat = flat + (starts[axis] + local % dims[axis]) * strides[axis]
            local = local // dims[axis]
        key_words = [(key[0], key[1]) for key in keys]
        # JAX's own threefry here: the indices come from integer divisions by the
        # block's dims, which LLVM cannot vectorize, and fused with the unrolled hash
        # they would make the whole loop scalar (4.7 ms instead of 2.2 ms per 2**20
        # elements, `python -m benchmarks.programs`). The primitive's CPU loop keeps
        # them apart. The same bits.
        out = _run_nodes(
            nodes, shape, jnp.zeros_like(flat), flat, key_words, scalars, [], _primitive_hash
        )
        return lax.optimization_barrier(out.reshape(chunk))

    return jax.jit(run)


def _block_shape(chunk: int) -> tuple[int, ...]:
    """A chunk's elements as rows of `_ROW` elements: XLA spreads the rows of a 2-d
    computation over the CPU's cores, not the elements of a 1-d one."""
    return (chunk // _ROW, _ROW) if chunk >= 2 * _ROW else (chunk,)


def _flat_iota(shape: tuple[int, ...]) -> jax.Array:
    """The row-major flat index of every element of `shape`, as uint32."""
    if len(shape) == 1:
        return lax.iota(np.uint32, shape[0])
    rows = lax.broadcasted_iota(np.uint32, shape, 0)
    return rows * np.uint32(shape[1]) + lax.broadcasted_iota(np.uint32, shape, 1)


def _run_nodes(
    nodes: tuple[tuple[Any, ...], ...],
    shape: tuple[int, ...],
    high: jax.Array,
    low: jax.Array,
    keys: list[tuple[ArrayLike, ArrayLike]],
    scalars: list[ArrayLike],
    arrays: list[ArrayLike],
    hash_words: Callable[..., tuple[jax.Array, jax.Array]] = threefry2x32,
) -> jax.Array:
    """The value `nodes` describe at the flat indices `(high, low)`: the body of the
    programs. A scalar is 0-d, or has one entry per element (packed values). Bits are
    hashed by `hash_words(k1, k2, high, low)`: lazymod's unrolled threefry unless a
    program says otherwise."""
    values: list[jax.Array] = []

    def read(ref: tuple[str, int], per_element: bool) -> jax.Array:
        kind, i = ref
        x = values[i] if kind == "node" else scalars[i]
        return jnp.broadcast_to(x, shape) if per_element and x.ndim == 0 else x

    for spec in nodes:
        if spec[0] == "bits":
            _, k, width = spec
            bits1, bits2 = hash_words(*keys[k], high, low)
            bits = bits1 ^ bits2
            if width != 32:
                bits = lax.convert_element_type(bits, np.dtype(f"uint{width}"))
            values.append(bits)
        elif spec[0] == "fill":
            values.append(read(spec[1], True))
        elif spec[0] == "value":
            values.append(read(spec[1], False))
        elif spec[0] == "array":
            values.append(arrays[spec[1]])
        else:
            _, primitive, params, refs, per_element = spec
            ins = [read(r, per_element) for r in refs]
            values.append(primitive.bind(*ins, **dict(params)))
    return values[-1]


def _primitive_hash(k1: Any, k2: Any, x1: jax.Array, x2: jax.Array) -> tuple[jax.Array, jax.Array]:
    """Threefry-2x32 by JAX's primitive (on CPU, its rolled loop)."""
    bits1, bits2 = threefry2x32_p.bind(k1, k2, x1, x2)
    return bits1, bits2
