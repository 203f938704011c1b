import html
from collections.abc import Callable
from typing import Any

import equinox as eqx
import jax
import jax.tree_util as jtu
import numpy as np

from ._init import abstract_key, initialize
from ._inputs import resolve_method
from ._numpy_leaves import described, is_numpy
from ._paths import path_str
from ._shapes import eval_shape_holding_numpy


_COLUMNS = ("path", "type", "output", "parameters", "count", "bytes", "state")


class Summary(str):
    """The text of [`lazymod.summary`][]: a `str` that prints as its table in a
    terminal and renders as an HTML table in a notebook."""

    rows: list[tuple[str, ...]]
    footer: str

    def __new__(cls, rows: list[tuple[str, ...]], footer: str) -> "Summary":
        self = super().__new__(cls, _text_table(rows, footer))
        self.rows = rows
        self.footer = footer
        return self

    def __repr__(self) -> str:
        return str(self)

    def _repr_html_(self) -> str:
        columns = _columns(self.rows)
        head = "".join(f"<th>{name}</th>" for name in columns)
        body = "".join(
            "<tr>"
            + "".join(f"<td>{html.escape(cell)}</td>" for cell in row[: len(columns)])
            + "</tr>"
            for row in self.rows
        )
        return (
            f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"
            f"<p>{html.escape(self.footer)}</p>"
        )


def summary(
    model: Any,
    /,
    *args: Any,
    method: str | Callable[..., Any] | None = None,
    with_state: bool = False,
    **kwargs: Any,
) -> str:
    """A table of `model`'s submodules as [`lazymod.init`][] would build them: one row
    per module (its path, type, output shape, parameter shapes and dtypes, parameter
    count and bytes) and the totals.

    It works on a model that is not initialized yet, and on one that is: everything
    comes from [`lazymod.init_shapes`][], so nothing is allocated or computed whatever
    the sizes. The output column shows what each `lazymod.Module` (which includes every
    `lazymod.nn` layer) returned from `__call__` during init, and `-` for plain
    Equinox modules, whose calls lazymod does not see.

    **Arguments:** as [`lazymod.init`][], less the key: `model`, the inputs or their
    `jax.ShapeDtypeStruct`s, and `method=`. For a stateful model, `with_state=True`
    runs the method with the state, as [`lazymod.init_with_state`][] does; the state
    of each layer (`eqx.nn.StateIndex`) shows in its own column, and is not counted
    as parameters.

    **Returns:** the table as a `str`; in a notebook it renders as an HTML table.

    !!! example

        ```python
        import jax
        import jax.numpy as jnp
        import lazymod as lm

        model = lm.nn.MLP(out_size=10, width_size=64, depth=2)
        table = lm.summary(model, jax.ShapeDtypeStruct((784,), jnp.float32))
        print(table)
        assert "layers[0]" in table and "f32[64,784]" in table
        assert "55,050 parameters" in table
        ```
    """
    function = resolve_method(
        model, method, has_inputs=bool(args or kwargs), entry="lazymod.summary"
    )
    outputs: list[Any] = []

    def run_and_keep_output(module: Any, *args: Any, **kwargs: Any) -> Any:
        assert function is not None
        out = function(module, *args, **kwargs)
        outputs.append(_shapes_only(out))  # no tracer may outlive init's trace
        return out

    def build(model: Any, key: Any, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
        return initialize(
            model,
            key,
            args=args,
            kwargs=kwargs,
            method=None if function is None else run_and_keep_output,
            capture_intermediates=True,
            with_state=with_state,
            abstract=True,
            entry="lazymod.summary",
        )

    # The forward pass's own keyword arguments (a `key=` among them) travel as one dict;
    # NumPy arrays, which init leaves as they are, are shown in their own dtype.
    built = eval_shape_holding_numpy(build, model, abstract_key(), args, kwargs)
    shapes, intermediates = jtu.tree_map(described, built)
    shapes, state = shapes if with_state else (shapes, None)
    root_output = outputs[-1] if outputs else None
    return _tabulate(shapes, state, intermediates, root_output, function is not None)


def _shapes_only(tree: Any) -> Any:
    """Every array of `tree` (a JAX array, a tracer, or a NumPy array in its own dtype)
    as its `jax.ShapeDtypeStruct`."""
    return jax.tree.map(
        lambda x: (
            jax.ShapeDtypeStruct(x.shape, x.dtype) if isinstance(x, jax.Array) or is_numpy(x) else x
        ),
        tree,
    )


def _tabulate(
    shapes: Any,
    state: eqx.nn.State | None,
    intermediates: dict[str, Any],
    root_output: Any,
    ran: bool,
) -> Summary:
    rows: list[tuple[str, ...]] = []
    total_count = total_bytes = total_arrays = 0
    state_count = state_bytes = 0

    def visit(node: Any, path: tuple[Any, ...]) -> None:
        nonlocal total_count, total_bytes, total_arrays, state_count, state_bytes

        def stop(x: Any) -> bool:
            return x is not node and isinstance(x, eqx.Module)

        own: list[tuple[str, jax.ShapeDtypeStruct]] = []
        own_state: list[jax.ShapeDtypeStruct] = []
        children: list[tuple[tuple[Any, ...], Any]] = []
        for child_path, leaf in jtu.tree_leaves_with_path(node, is_leaf=stop):
            if isinstance(leaf, eqx.nn.StateIndex):  # state, not parameters: its own column
                own_state += _state_shapes(leaf, state)
            elif isinstance(leaf, eqx.Module) and leaf is not node:
                children.append((path + child_path, leaf))
            elif isinstance(leaf, jax.ShapeDtypeStruct):
                own.append((path_str(child_path), leaf))
        count = sum(_size(leaf) for _, leaf in own)
        nbytes = sum(_size(leaf) * leaf.dtype.itemsize for _, leaf in own)
        total_count += count
        total_bytes += nbytes
        total_arrays += len(own)
        state_count += sum(_size(leaf) for leaf in own_state)
        state_bytes += sum(_size(leaf) * leaf.dtype.itemsize for leaf in own_state)
        name = path_str(path)
        if not path:
            output = _format_output(root_output) if ran else "-"
        else:
            output = _format_output(intermediates.get(name)) if name in intermediates else "-"
        rows.append(
            (
                name or "(root)",
                type(node).__name__,
                output,
                ", ".join(f"{field} {_format_shape(leaf)}" for field, leaf in own),
                f"{count:,}" if own else "",
                _format_bytes(nbytes) if own else "",
                ", ".join(_format_shape(leaf) for leaf in own_state),
            )
        )
        for child_path, child in children:
            visit(child, child_path)

    visit(shapes, ())
    footer = (
        f"Total: {total_count:,} parameters in {total_arrays:,} "
        f"array{'' if total_arrays == 1 else 's'}, "
        f"{_format_bytes(total_bytes)}"
    )
    if state_count:
        footer += f"; state: {state_count:,} values, {_format_bytes(state_bytes)}"
    return Summary(rows, footer)


def _state_shapes(index: eqx.nn.StateIndex, state: eqx.nn.State | None) -> list[Any]:
    """The shapes of a `StateIndex`'s state: from `state` when given, else its initial
    value (a model initialized without `with_state` keeps it)."""
    value = state._state.get(index.marker) if state is not None else index.init  # pyright: ignore
    return [leaf for leaf in jax.tree.leaves(value) if isinstance(leaf, jax.ShapeDtypeStruct)]


def _size(leaf: jax.ShapeDtypeStruct) -> int:
    return int(np.prod(leaf.shape, dtype=np.int64))


def _format_shape(leaf: jax.ShapeDtypeStruct) -> str:
    if jax.dtypes.issubdtype(leaf.dtype, jax.dtypes.prng_key):
        return f"key[{','.join(str(d) for d in leaf.shape)}]"
    name = np.dtype(leaf.dtype).name
    for long, short in (("bfloat", "bf"), ("float", "f"), ("uint", "u"), ("int", "i")):
        name = name.replace(long, short)
    name = name.replace("complex", "c")
    return f"{name}[{','.join(str(d) for d in leaf.shape)}]"


def _format_output(output: Any) -> str:
    if isinstance(output, tuple) and output and isinstance(output[-1], eqx.nn.State):
        output = output[:-1] if len(output) > 2 else output[0]  # (x, state): the state column
    leaves = [
        leaf
        for leaf in jax.tree.leaves(output)
        if isinstance(leaf, (jax.ShapeDtypeStruct, jax.Array, np.ndarray))
    ]
    if not leaves:
        return "-"
    text = ", ".join(_format_shape(leaf) for leaf in leaves)
    return text if len(leaves) == 1 else f"({text})"


def _format_bytes(nbytes: int) -> str:
    value = float(nbytes)
    for unit in ("B", "KiB", "MiB", "GiB"):
        if value < 1024 or unit == "GiB":
            return f"{nbytes} B" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    raise AssertionError("unreachable")


def _columns(rows: list[tuple[str, ...]]) -> tuple[str, ...]:
    """The columns shown: the state column only for a model that has state."""
    return _COLUMNS if any(row[-1] for row in rows) else _COLUMNS[:-1]


def _text_table(rows: list[tuple[str, ...]], footer: str) -> str:
    columns = _columns(rows)
    rows = [row[: len(columns)] for row in rows]
    table = [columns, *rows]
    widths = [max(len(row[i]) for row in table) for i in range(len(columns))]
    numeric = {4, 5}

    def line(row: tuple[str, ...]) -> str:
        cells = [
            cell.rjust(width) if i in numeric else cell.ljust(width)
            for i, (cell, width) in enumerate(zip(row, widths))
        ]
        return "  ".join(cells).rstrip()

    rule = "  ".join("-" * width for width in widths)
    return "\n".join([line(columns), rule, *(line(row) for row in rows), rule, footer])
