"""Calls walked once while recording a template (`_replay.py`).

A model of alike layers makes the same call many times: each layer built by one kept
trace of its constructor (`lazymod.nn`) is one call of the same traced body, with
inputs of the same kinds (its keys, the same small constants). While recording, the
first walk of such a call is remembered as a `Fragment`: the rows it added to the
`KeyTable` and its outputs. A later call with inputs of the same kinds copies those
rows, derived from its own keys, and the outputs with their keys renumbered, instead
of walking the body again: the same plans, keys and values as a walk would give.
"""

import dataclasses
from collections.abc import Hashable
from typing import Any

import numpy as np

from ._chunks import Symbolic
from ._key_table import KeySlots, KeyTable


@dataclasses.dataclass(frozen=True, eq=False)
class Fragment:
    """What one walk of a call made: the rows `start..stop-1` of the table, from the
    rows of its key inputs (`inputs`, flattened in order), and its outputs."""

    body: Any  # the call's ClosedJaxpr, kept alive while its id is in a signature
    inputs: tuple[int, ...]
    start: int
    stop: int
    outs: tuple[Any, ...]


def signature(body: Any, ins: list[Any]) -> Hashable | None:
    """The kinds of inputs that make a call of `body` walk to the same plans: keys by
    their shape, small NumPy values by their bytes; `None` for any other input (a
    symbolic value, a large or JAX array), whose call is walked every time."""
    parts: list[Hashable] = [id(body)]
    for x in ins:
        if isinstance(x, KeySlots):
            parts.append(("keys", x.shape))
        elif isinstance(x, np.ndarray | np.generic) and np.size(x) <= 64:
            parts.append(("value", np.dtype(x.dtype).str, np.shape(x), np.asarray(x).tobytes()))
        else:
            return None
    return tuple(parts)


def remember(body: Any, ins: list[Any], start: int, table: KeyTable, outs: list[Any]) -> Any:
    """The fragment of a call just walked (`start`: the table's size before), or `None`
    if its key inputs share rows (then a copy could not tell them apart)."""
    rows = _rows_of(ins)
    if len(set(rows)) != len(rows):
        return None
    return Fragment(body, tuple(rows), start, table.size, tuple(outs))


def replay(fragment: Fragment, ins: list[Any], table: KeyTable) -> list[Any]:
    """The outputs of another call like the fragment's, with inputs `ins`."""
    remap = dict(zip(fragment.inputs, _rows_of(ins)))
    table.copy_rows(fragment.start, fragment.stop, remap)
    copies: dict[int, Any] = {}
    return [_renumbered(out, remap, copies) for out in fragment.outs]


def _rows_of(ins: list[Any]) -> list[int]:
    return [int(row) for x in ins if isinstance(x, KeySlots) for row in x.slots.reshape(-1)]


def _renumbered(x: Any, remap: dict[int, int], copies: dict[int, Any]) -> Any:
    """`x` with the rows of its keys mapped by `remap` (a value of no key: as it is)."""
    if isinstance(x, KeySlots):
        slots = np.asarray([remap.get(int(r), int(r)) for r in x.slots.reshape(-1)], np.int64)
        return KeySlots(slots.reshape(x.shape), x.dtype)
    if not (isinstance(x, Symbolic) and x.keyed):
        return x
    copy = copies.get(id(x))
    if copy is None:
        copy = object.__new__(Symbolic)
        copy.__dict__.update(x.__dict__)
        copy.renumbered = (x, remap)
        if x.kind == "bits":
            copy.key = remap.get(x.key, x.key)
        else:
            copy.inputs = tuple(_renumbered(i, remap, copies) for i in x.inputs)
        copies[id(x)] = copy
    return copy
