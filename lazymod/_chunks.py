"""Computing symbolic values in chunks, with one compiled program per structure.

Run op by op, JAX compiles every random sampler and every elementwise op once for each
new shape (about a tenth of a second per parameter shape on a CPU); jit-compiling the whole
construction instead costs minutes for deep models. A `Symbolic` value, built only from
threefry bits, scalars and elementwise ops, is computed here in fixed-size chunks of its
flattened form by one compiled program per *structure* (`_programs.py`; say, "uniform in [a, b)"),
whatever its shape and constants. Threefry's bits depend only on the key and the
element's flat index, so each chunk is bit for bit what the op-by-op (or jitted)
computation gives for those elements. Small values of one structure are computed side
by side, many to a call (`_launch_packed`); a value that is one scalar broadcast
(`jnp.zeros`) is filled in NumPy.
"""

import collections
import dataclasses
import functools
import itertools
import math
from collections.abc import Callable, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from ._programs import packed_program, program


# Chunk sizes (elements): small values use the small one, so a 32-wide layer does not
# pay for 2**18 random numbers. On a 2-core CPU, XLA computes threefry bits about twice
# as fast per element in calls of 2**20 as in calls of 2**18 (`python -m
# benchmarks.programs`: 0.72 and 1.54 ns per element), and a value computed in one
# call is not assembled in host memory (a copy and a second allocation of the value:
# a third of a later init of a 7-layer MLP of width 1024). So larger values use the
# large chunk (a 1024x1024 weight in one call) unless it would compute more elements
# than the medium one: a 3x3x256x256 kernel (0.5625 * 2**20 elements) takes three
# medium calls, not one large one.
SMALL_CHUNK = 2**12
MEDIUM_CHUNK = 2**18
LARGE_CHUNK = 2**20
# Values of at most `PACK_LIMIT` elements with the same structure are computed side by
# side, up to `PACK_CHUNK` elements per program call: a deep, narrow model's hundreds
# of small parameters take a few calls, not hundreds.
PACK_LIMIT = 2**16
PACK_CHUNK = 2**17
# How far (in bytes of values) programs are dispatched ahead of the value awaited.
_IN_FLIGHT_BYTES = 2**26


@dataclasses.dataclass(eq=False)
class Symbolic:
    """A value not computed yet: `kind` is "bits" (threefry bits of `key`), "fill" (a
    size-1 value broadcast to `shape`) or "op" (an elementwise primitive). A value is
    `per_element` if it varies along its flattened index; otherwise it has size 1."""

    shape: tuple[int, ...]
    dtype: Any
    kind: str
    per_element: bool
    key: Any = None  # "bits": the raw key data, uint32[2] (or its row in a KeyTable)
    width: int = 32  # "bits": the bit width
    primitive: Any = None  # "op"
    params: tuple[tuple[str, Any], ...] = ()  # "op"
    inputs: tuple[Any, ...] = ()  # "op", "fill": Symbolic or concrete size-1 values
    value: Any = None  # set once computed
    keyed: bool = False  # whether it depends on a key ("bits" somewhere below)
    # A copy of another value with the rows of its keys mapped, made while recording a
    # template (`_fragments.py`): (the original, {old row: new row}). `plan_of` takes
    # the original's plan for it, so only a copy of the same elements may keep it (a
    # reshape does: `dataclasses.replace` copies it).
    renumbered: tuple[Any, dict[int, int]] | None = None


def size_of(shape: Sequence[int]) -> int:
    return math.prod(shape)


@dataclasses.dataclass
class Plan:
    """How to compute one symbolic value: its structure (`nodes`, the cache key of its
    program) and the inputs of that structure."""

    root: Symbolic
    nodes: tuple[tuple[Any, ...], ...]
    keys: list[Any]  # uint32[2] each
    scalars: list[Any]  # 0-d each
    arrays: list[Any]  # computed per-element values, flattened

    @property
    def size(self) -> int:
        return size_of(self.root.shape)

    @property
    def packable(self) -> bool:
        """Whether the value can share a program call with other small values."""
        return self.root.per_element and not self.arrays and self.size <= PACK_LIMIT

    @property
    def is_constant(self) -> bool:
        """Whether the value is one concrete scalar broadcast to its shape."""
        return (
            self.nodes == (("fill", ("scalar", 0)),)
            and isinstance(self.scalars[0], np.ndarray)
            and self.scalars[0].dtype == np.dtype(self.root.dtype)
        )

    @property
    def structure(self) -> tuple[Any, ...]:
        return (self.nodes, tuple(s.dtype for s in self.scalars), np.dtype(self.root.dtype))


def plan_of(root: Symbolic, plans: dict[int, Plan] | None = None) -> Plan:
    """How to compute `root`. With `plans` (the plans made so far while recording one
    template, by the id of their root), a renumbered copy's plan is its original's with
    the rows of the keys mapped: a thousand alike layers walk one layer's values."""
    if plans is not None and root.renumbered is not None and root.value is None:
        original, remap = root.renumbered
        base = plans.get(id(original))
        if base is None:
            base = plans[id(original)] = plan_of(original, plans)
        keys = [remap.get(row, row) for row in base.keys]
        return Plan(root, base.nodes, keys, base.scalars, base.arrays)
    plan = _walked(root)
    if plans is not None:  # an original may be an output too
        plans[id(root)] = plan
    return plan


def _walked(root: Symbolic) -> Plan:
    nodes: list[tuple[Any, ...]] = []
    keys: list[np.ndarray] = []
    scalars: list[np.ndarray] = []
    arrays: list[np.ndarray] = []
    index: dict[int, int] = {}

    def ref(x: Any) -> tuple[str, int]:
        if isinstance(x, Symbolic):
            return ("node", visit(x))
        scalars.append(to_host(x).reshape(()))
        return ("scalar", len(scalars) - 1)

    def visit(node: Symbolic) -> int:
        if id(node) in index:
            return index[id(node)]
        if node.value is not None and node.per_element:  # computed already
            arrays.append(to_host(node.value).reshape(-1))
            spec: tuple[Any, ...] = ("array", len(arrays) - 1)
        elif node.value is not None:
            spec = ("value", ref(node.value))
        elif node.kind == "bits":
            keys.append(node.key)
            spec = ("bits", len(keys) - 1, node.width)
        elif node.kind == "fill":
            spec = ("fill", ref(node.inputs[0]))
        else:
            refs = tuple(ref(x) for x in node.inputs)
            spec = ("op", node.primitive, node.params, refs, node.per_element)
        nodes.append(spec)
        index[id(node)] = len(nodes) - 1
        return len(nodes) - 1

    visit(root)
    return Plan(root, tuple(nodes), keys, scalars, arrays)


def compute(root: Symbolic) -> Any:
    """Compute a symbolic value with the compiled program for its structure."""
    return _launch(plan_of(root))()


def compute_all(roots: Sequence[Symbolic], on_device: bool) -> None:
    """Compute every value in `roots` (setting its `value`), as `compute_plans`."""
    unique: dict[int, Symbolic] = {}
    for root in roots:
        if root.value is None:
            unique.setdefault(id(root), root)
    todo = list(unique.values())
    for root, value in zip(todo, compute_plans([plan_of(r) for r in todo], on_device)):
        root.value = value


def compute_plans(plans: Sequence[Plan], on_device: bool) -> list[Any]:
    """The value of every plan (its root is left as it is). Programs are dispatched
    up to `_IN_FLIGHT_BYTES` ahead of the value being awaited, so they overlap while
    memory stays bounded; small values of the same structure share program calls.
    With `on_device`, values computed by a program go to the default device as soon
    as they are ready (a constant stays a NumPy array, placed by the caller)."""
    values: list[Any] = [None] * len(plans)
    launchers: list[tuple[list[int], Callable[[], Any], int]] = []
    groups: dict[tuple[Any, ...], list[int]] = {}
    for i, plan in enumerate(plans):
        if plan.is_constant:
            # `jnp.zeros(shape)`, `jnp.ones(shape)`: no program to compile for a copy.
            values[i] = np.full(plan.root.shape, plan.scalars[0], plan.root.dtype)
        elif plan.packable:
            groups.setdefault(plan.structure, []).append(i)
        else:
            launch = functools.partial(_launch_one, plan)
            launchers.append(([i], launch, plan.size * plan.root.dtype.itemsize))
    for group in groups.values():
        for batch in _batches([plans[i] for i in group], group):
            launch = functools.partial(_launch_packed, [plans[i] for i in batch])
            size = sum(plans[i].size for i in batch) * plans[batch[0]].root.dtype.itemsize
            launchers.append((batch, launch, size))
    in_flight: collections.deque[tuple[list[int], Callable[[], list[Any]], int]]
    in_flight = collections.deque()
    pending_bytes = 0

    def finish_oldest() -> int:
        done, finish, size = in_flight.popleft()
        finished = finish()
        if on_device:  # one transfer for a packed call's values
            host = [i for i, value in enumerate(finished) if isinstance(value, np.ndarray)]
            for i, value in zip(host, jax.device_put([finished[i] for i in host])):
                finished[i] = value
        for i, value in zip(done, finished):
            values[i] = value
        return size

    for done, launch, size in launchers:
        in_flight.append((done, launch(), size))
        pending_bytes += size
        while pending_bytes > _IN_FLIGHT_BYTES:
            pending_bytes -= finish_oldest()
    while in_flight:
        finish_oldest()
    return values


def _batches(plans: list[Plan], indices: list[int]) -> list[list[int]]:
    """Consecutive runs of `plans` (their `indices`) that fit one packed call."""
    batches: list[list[int]] = [[]]
    filled = 0
    for plan, index in zip(plans, indices):
        if filled + plan.size > PACK_CHUNK:
            batches.append([])
            filled = 0
        batches[-1].append(index)
        filled += plan.size
    return [batch for batch in batches if batch]


def _launch_packed(batch: list[Plan]) -> Any:
    """Dispatch one call computing every value of `batch` (same structure, each at most
    `PACK_LIMIT` elements) side by side; return a function that awaits it and returns
    the values. Element `i` of each value is computed from that value's keys and
    scalars and its own flat index `i`, exactly as the value alone would be."""
    sizes = [plan.size for plan in batch]
    starts = [0, *itertools.accumulate(sizes)][:-1]
    filled = starts[-1] + sizes[-1]
    # Per element: its index within its value, and its value's keys and scalars.
    low = np.zeros(PACK_CHUNK, np.uint32)
    low[:filled] = np.arange(filled, dtype=np.uint32) - np.repeat(
        np.asarray(starts, np.uint32), sizes
    )
    first = batch[0]

    def per_element(column: list[Any], dtype: Any) -> Any:
        if any(isinstance(x, jax.core.Tracer) for x in column):  # inside jit, vmap, ...
            parts = [jnp.broadcast_to(jnp.asarray(x, dtype), (n,)) for x, n in zip(column, sizes)]
            return jnp.concatenate([*parts, jnp.zeros(PACK_CHUNK - filled, dtype)])
        out = np.zeros(PACK_CHUNK, dtype)
        out[:filled] = np.repeat(np.asarray(column, dtype), sizes)
        return out

    keys = [
        (
            per_element([plan.keys[k][0] for plan in batch], np.uint32),
            per_element([plan.keys[k][1] for plan in batch], np.uint32),
        )
        for k in range(len(first.keys))
    ]
    scalars = [
        per_element([plan.scalars[i] for plan in batch], scalar.dtype)
        for i, scalar in enumerate(first.scalars)
    ]
    out = packed_program(*first.structure, PACK_CHUNK)(low, keys, scalars)

    def finish() -> list[Any]:
        flat = to_host(out)  # a tracer inside jit, vmap, ...
        return [
            flat[start : start + size].reshape(plan.root.shape)
            for plan, start, size in zip(batch, starts, sizes)
        ]

    return finish


def _launch_one(plan: Plan) -> Callable[[], list[Any]]:
    finish = _launch(plan)
    return lambda: [finish()]


def _launch(plan: Plan) -> Any:
    """Dispatch the calls computing one value chunk by chunk; return a function that
    awaits them and returns the value."""
    root, keys, scalars, arrays = plan.root, plan.keys, plan.scalars, plan.arrays
    size = plan.size
    scalar_dtypes = tuple(s.dtype for s in scalars)
    if not root.per_element:
        out = program(plan.nodes, scalar_dtypes, 1)(np.zeros(2, np.uint32), keys, scalars, [])
        return lambda: to_host(out).reshape(root.shape)
    chunk = chunk_size(size)
    compiled = program(plan.nodes, scalar_dtypes, chunk)
    parts = [
        compiled(
            np.array([start >> 32, start & 0xFFFFFFFF], np.uint32),
            keys,
            scalars,
            [_padded(a[start : start + chunk], chunk) for a in arrays],
        )
        for start in range(0, size, chunk)
    ]

    def finish() -> Any:
        if any(isinstance(part, jax.core.Tracer) for part in parts):  # inside jit, vmap
            return jnp.concatenate(parts)[:size].reshape(root.shape)
        if len(parts) == 1:
            return np.asarray(parts[0])[:size].reshape(root.shape)
        out = np.empty(size, np.dtype(root.dtype))
        for number, part in enumerate(parts):
            start = number * chunk
            stop = min(size, start + chunk)
            out[start:stop] = np.asarray(part)[: stop - start]
        return out.reshape(root.shape)

    return finish


def chunk_size(size: int) -> int:
    """The chunk a value of `size` elements is computed in (see the constants above)."""
    if size <= 4 * SMALL_CHUNK:
        return SMALL_CHUNK
    computed = {chunk: math.ceil(size / chunk) * chunk for chunk in (MEDIUM_CHUNK, LARGE_CHUNK)}
    return LARGE_CHUNK if computed[LARGE_CHUNK] <= computed[MEDIUM_CHUNK] else MEDIUM_CHUNK


def to_host(x: Any) -> Any:
    """`x` as a NumPy array, or as it is if it is a tracer."""
    return x if isinstance(x, jax.core.Tracer) else np.asarray(x)


def _padded(a: Any, length: int) -> Any:
    if a.size == length:
        return a
    return (
        jnp.pad(a, (0, length - a.size))
        if isinstance(a, jax.core.Tracer)
        else np.pad(a, (0, length - a.size))
    )
