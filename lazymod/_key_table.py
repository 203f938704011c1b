"""Keys known by where they come from, not by their bits: the key program of an init.

Every key an init derives is threefry of another key and a pair of counters: a
`jax.random.split` hashes the index, a `jax.random.fold_in` the word. Recorded in a
`KeyTable` as it is walked, the derivation is the same for every init of a kept trace;
only the root keys differ. `KeyTable.resolve` then computes every key of the init at
once, one vectorised NumPy threefry call per generation of keys (a root, its
fold-ins, their splits, ...), instead of one small computation per key.
"""

import dataclasses
from typing import Any

import numpy as np

from ._host_keys import split_counters
from ._threefry import threefry2x32


@dataclasses.dataclass(frozen=True, eq=False)
class KeySlots:
    """Threefry keys as their rows in a `KeyTable`: `slots` is int64[*shape]."""

    slots: np.ndarray
    dtype: Any  # the JAX key dtype, key<fry>

    @property
    def shape(self) -> tuple[int, ...]:
        return self.slots.shape


class KeyTable:
    """How every key of an evaluation derives from the root keys. Rows `0..roots-1`
    are the roots (their data given to `resolve`); then each row is a constant key
    (its data known when recorded) or a derived key: threefry of its parent's row and
    a pair of counters."""

    def __init__(self, roots: int):
        self.roots = roots
        # Per row: None (a root), ("constant", data) or ("derived", parent, high, low).
        self._rows: list[tuple[Any, ...] | None] = [None] * roots
        self._generation: list[int] = [0] * roots  # 0: a root or a constant
        self._grouped: tuple[int, Any] | None = None
        # Calls walked once while recording, and what they made (see `_fragments.py`).
        self.calls_walked: dict[Any, Any] = {}

    @property
    def size(self) -> int:
        return len(self._rows)

    def root(self, index: int, dtype: Any) -> KeySlots:
        return KeySlots(np.asarray(index, np.int64), dtype)

    def constant(self, data: np.ndarray, dtype: Any) -> KeySlots:
        """Constant keys (their data, uint32[*shape, 2]) as new rows."""
        flat = np.asarray(data, np.uint32).reshape(-1, 2)
        slots = np.arange(self.size, self.size + len(flat), dtype=np.int64)
        self._rows.extend(("constant", row) for row in flat)
        self._generation.extend([0] * len(flat))
        return KeySlots(slots.reshape(np.shape(data)[:-1]), dtype)

    def derive(self, parent: int, high: np.ndarray, low: np.ndarray) -> np.ndarray:
        """New rows: threefry of row `parent` with the counters `(high[i], low[i])`."""
        start = self.size
        generation = self._generation[parent] + 1
        for a, b in zip(high.tolist(), low.tolist()):
            self._rows.append(("derived", parent, a, b))
            self._generation.append(generation)
        return np.arange(start, self.size, dtype=np.int64)

    def copy_rows(self, start: int, stop: int, remap: dict[int, int]) -> dict[int, int]:
        """Rows `start..stop-1` again, as new rows whose parents are mapped by `remap`
        (old row to new; others kept); returns `remap` with the copied rows added."""
        for row in range(start, stop):
            made = self._rows[row]
            assert made is not None
            if made[0] == "constant":
                remap[row] = int(self.constant(made[1], None).slots)
            else:
                _, parent, high, low = made
                parent = remap.get(parent, parent)
                counters = np.asarray([high], np.uint32), np.asarray([low], np.uint32)
                remap[row] = int(self.derive(parent, *counters)[0])
        return remap

    def split(self, keys: KeySlots, shape: tuple[int, ...]) -> KeySlots:
        """`jax.random.split` of one key (partitionable threefry)."""
        slots = self.derive(int(keys.slots), *split_counters(shape))
        return KeySlots(slots.reshape(shape), keys.dtype)

    def fold_in(self, keys: KeySlots, word: int) -> KeySlots:
        """`jax.random.fold_in` of one key with a uint32 word: the counters `(0, word)`."""
        slots = self.derive(int(keys.slots), np.zeros(1, np.uint32), np.asarray([word]))
        return KeySlots(slots.reshape(()), keys.dtype)

    def resolve(self, roots: list[np.ndarray]) -> np.ndarray:
        """The data of every row, uint32[rows, 2], for the roots' data (uint32[2] each)."""
        data = np.empty((self.size, 2), np.uint32)
        if self.roots:
            data[: self.roots] = np.asarray(roots, np.uint32).reshape(self.roots, 2)
        constant_rows, constants, generations = self._grouping()
        if len(constant_rows):
            data[constant_rows] = constants
        for rows, parents, high, low in generations:
            data[rows, 0], data[rows, 1] = threefry2x32(
                data[parents, 0], data[parents, 1], high, low
            )
        return data

    def _grouping(self) -> Any:
        """The constant rows and their data, and per generation of derived rows: the
        rows, their parents and counters (grouped once, and again if the table grew)."""
        if self._grouped is None or self._grouped[0] != self.size:
            constant_rows = [i for i, r in enumerate(self._rows) if r and r[0] == "constant"]
            constants = np.asarray([self._rows[i][1] for i in constant_rows], np.uint32)
            derived = [i for i, r in enumerate(self._rows) if r and r[0] == "derived"]
            rows = np.asarray(derived, np.int64)
            made = np.asarray([self._rows[i][1:] for i in derived], np.int64).reshape(-1, 3)
            generation = np.asarray(self._generation, np.int64)[rows]
            generations = []
            for g in np.unique(generation):
                these = np.flatnonzero(generation == g)
                parents, high, low = made[these].T
                generations.append(
                    (rows[these], parents, high.astype(np.uint32), low.astype(np.uint32))
                )
            grouping = (np.asarray(constant_rows, np.int64), constants, generations)
            self._grouped = (self.size, grouping)
        return self._grouped[1]
