"""The evaluation of a kept trace, recorded once and replayed by every later init.

Walking a deep model's jaxpr equation by equation costs more than computing its
values. But for a kept trace (`_cache.py`) every init walks the same equations to the
same plans: only the root keys differ, and with them the bits of every key derived
from them. So the first evaluation records, with keys as rows of a `KeyTable`
(`_key_table.py`), what each output is: a `Plan` whose keys are rows, a key, or a
constant. A later init replays it: every key in one vectorised NumPy pass
(`KeyTable.resolve`), then the plans' programs (`_chunks.compute_plans`); no
equation is walked again. An evaluation in which a key's bits reach an operation
the evaluator does not record (a QR of a draw...) is not recorded
(`_evaluate.record`), and is walked each time.
"""

import dataclasses
from collections.abc import Sequence
from typing import Any

import jax
import numpy as np

from ._chunks import compute_plans, Plan
from ._host_keys import from_array as host_keys
from ._key_table import KeySlots, KeyTable


@dataclasses.dataclass(frozen=True, eq=False)
class Template:
    """What the outputs of an evaluation are, for any root keys: `plans` (whose keys
    are rows of `table`) for the outputs at `plan_outputs`, keys for those at
    `key_outputs`, and `constants` (the same every time) for the others."""

    table: KeyTable
    root_inputs: tuple[int, ...]  # the inputs that are root keys, in the table's order
    plans: tuple[Plan, ...]
    plan_outputs: tuple[int, ...]
    key_outputs: tuple[tuple[int, KeySlots], ...]
    constants: tuple[tuple[int, Any], ...]
    size: int

    def run(self, inputs: Sequence[Any]) -> list[Any]:
        """The outputs for these inputs (the root keys, concrete threefry keys, at
        `root_inputs`): programs' values on the default device, constants copied (no
        two inits share an array)."""
        roots = [host_keys(inputs[i]).data for i in self.root_inputs]
        data = self.table.resolve(roots)
        plans = [_with_key_data(plan, data) for plan in self.plans]
        values: list[Any] = [None] * self.size
        for i, value in zip(self.plan_outputs, compute_plans(plans, on_device=True)):
            values[i] = value
        for i, keys in self.key_outputs:
            values[i] = jax.random.wrap_key_data(data[keys.slots], impl="threefry2x32")
        for i, constant in self.constants:
            values[i] = _copy(constant)
        return values


def _copy(value: Any) -> Any:
    """A new array holding `value` (a NumPy array is placed on a device by the caller)."""
    if isinstance(value, jax.Array) and jax.dtypes.issubdtype(value.dtype, jax.dtypes.extended):
        data = np.array(jax.random.key_data(value))
        return jax.random.wrap_key_data(data, impl=jax.random.key_impl(value))
    return np.array(value)


def _with_key_data(plan: Plan, data: np.ndarray) -> Plan:
    """`plan` with the data of its keys' rows in place of the rows."""
    keys = [data[row] for row in plan.keys]
    return Plan(plan.root, plan.nodes, keys, plan.scalars, plan.arrays)
