"""Computing a symbolic value in its shards: each process computes only the blocks
its own devices hold, chunk by chunk, and places each block as it is made.

Threefry's bits depend only on the key and an element's flat index, so the program of
a value's structure computes any block alone, bit for bit what the whole value holds
there (`_programs.block_program`). Blocks are computed on the default device (one
compiled program per structure, not one per device) and copied to the devices that
hold them; no process holds the whole value, and no host memory is used for it but
its keys and scalars. `jax.make_array_from_single_device_arrays` assembles the global
array, without communication between processes. (Small values are computed whole, in
packed calls of a fixed 2**17 elements: about 4 MiB of host memory per call.)"""

from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from ._chunks import chunk_size, plan_of, Symbolic
from ._context import at_top_level
from ._programs import block_program


# The flat indices are uint32: a larger value is computed whole (see `compute_sharded`).
_MAX_ELEMENTS = 2**32


def compute_sharded(root: Symbolic, sharding: jax.sharding.Sharding) -> jax.Array | None:
    """`root` as a global array sharded as `sharding`, each process computing only its
    addressable devices' blocks; `None` where this path does not apply (a value not
    per element, one built from an array already computed, a size of 2**32 or more,
    or inputs traced by an enclosing `jax.jit`), for the caller to compute whole."""
    plan = plan_of(root)
    shape = tuple(root.shape)
    concrete = all(not isinstance(x, jax.core.Tracer) for x in (*plan.keys, *plan.scalars))
    if not (root.per_element and not plan.arrays and shape and concrete and at_top_level()):
        return None  # inside jit (a fill has no key to tell): a sharding constraint
    if plan.size >= _MAX_ELEMENTS or plan.size == 0:
        return None
    strides = np.cumprod((1, *shape[:0:-1]), dtype=np.int64)[::-1].astype(np.uint32)
    try:
        indices = sharding.addressable_devices_indices_map(shape)
    except ValueError:  # the sharding does not fit the shape: placing it says so
        return None
    devices_of: dict[tuple[tuple[int, int], ...], list[Any]] = {}
    for device, index in indices.items():
        bounds = tuple(_bounds(s, n) for s, n in zip(index, shape))
        devices_of.setdefault(bounds, []).append(device)
    placed: dict[Any, jax.Array] = {}
    for bounds, devices in devices_of.items():  # one block at a time: memory stays low
        block = _block(plan, bounds, strides)
        for device in devices:
            # No copy on its own device; the sharding's memory kind (host memory...).
            where = jax.sharding.SingleDeviceSharding(device, memory_kind=sharding.memory_kind)
            placed[device] = jax.device_put(block, where)
        del block
    arrays = [placed[device] for device in indices]
    return jax.make_array_from_single_device_arrays(shape, sharding, arrays)


def _bounds(index: slice, size: int) -> tuple[int, int]:
    start, stop, step = index.indices(size)
    assert step == 1, index
    return start, stop


def _block(plan: Any, bounds: tuple[tuple[int, int], ...], strides: np.ndarray) -> jax.Array:
    """The block of `plan`'s value within `bounds`, on the default device."""
    dims = np.asarray([stop - start for start, stop in bounds], np.uint32)
    starts = np.asarray([start for start, _ in bounds], np.uint32)
    size = int(np.prod(dims, dtype=np.int64))
    chunk = chunk_size(size)
    program = block_program(plan.nodes, tuple(s.dtype for s in plan.scalars), chunk, len(dims))
    parts = [
        program(np.uint32(offset), dims, starts, strides, plan.keys, plan.scalars)
        for offset in range(0, size, chunk)
    ]
    flat = parts[0] if len(parts) == 1 else jnp.concatenate(parts)
    del parts  # freed before the block is copied anywhere
    if flat.size != size:
        flat = flat[:size]
    return flat.reshape(tuple(int(d) for d in dims))
