"""The trace of one init: the three mechanisms run on a working copy of the tree inside
`jax.make_jaxpr`, with the input specs as the jaxpr's only inputs.

`trace` runs, in the seed's order: every field `Initializer` (`_run_initializers`, which
also makes the working copy), every module's `rng_init`, then the method on the inputs.
What they assign is recorded by path in the `InitContext`; the tree init returns is the
working copy with those values, its lazy layers replaced by what they built
(`init_result`). Its arrays are the jaxpr's outputs, and `Skeleton` puts computed
values back in their places.
"""

import contextlib
import dataclasses
from collections.abc import Callable, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import jax.tree_util as jtu
import numpy as np
from jax.extend import core as jex_core
from jaxtyping import PRNGKeyArray

from ._context import Capture, current_trace, InitContext, Phase
from ._errors import (
    init_error_like,
    InitError,
    InitTypeError,
    InitValueError,
    UninitializedError,
)
from ._keys import derive_key
from ._methods import call_method
from ._paths import display_path, KeyPath
from ._running import active
from ._sentinels import default_sentinels_with_paths, Initializer, is_sentinel
from ._tree import init_result, lazy_modules, STAND_INS


@dataclasses.dataclass
class Skeleton:
    """The returned tree and the captured outputs with every array taken out, in the
    order of the jaxpr's outputs: the parameters first, then the intermediates. Holds
    no tracer."""

    leaves: list[Any]
    treedef: Any
    array_positions: list[int]
    array_paths: list[KeyPath]  # for error messages and sharding rules
    inter_leaves: list[Any]
    inter_treedef: Any
    inter_positions: list[int]

    @property
    def num_params(self) -> int:
        return len(self.array_positions)

    def unflatten(self, values: Sequence[Any]) -> tuple[Any, dict[str, Any] | None]:
        """The tree and the intermediates, with `values` in the arrays' places."""
        leaves = list(self.leaves)
        for position, value in zip(self.array_positions, values):
            leaves[position] = value
        inter_leaves = list(self.inter_leaves)
        for position, value in zip(self.inter_positions, values[self.num_params :]):
            inter_leaves[position] = value
        result = jtu.tree_unflatten(self.treedef, leaves)
        return result, jtu.tree_unflatten(self.inter_treedef, inter_leaves)


@dataclasses.dataclass(eq=False)  # one object per trace: kept traces are looked up by it
class Traced:
    """What `trace` returns: the jaxpr whose outputs are every array of the result,
    their shapes, and where each goes."""

    jaxpr: jex_core.ClosedJaxpr
    out_shapes: list[Any]
    skeleton: Skeleton
    # Staged: the last inputs of the jaxpr are the root keys of these streams, so that
    # the same trace serves another init with other keys.
    streams: tuple[str, ...] = ()
    # Whether the forward pass left out calls whose outputs only shapes needed.
    left_out: bool = False

    def inputs(self, keys: dict[str, PRNGKeyArray]) -> list[Any]:
        """The jaxpr's inputs for an init with `keys`: `None` for every spec (no
        computed value depends on one), then the root keys."""
        specs = len(self.jaxpr.jaxpr.invars) - len(self.streams)
        return [None] * specs + [keys[stream] for stream in self.streams]


# What JAX raises when Python code needs the value of a traced array.
NEEDS_VALUES = (
    jax.errors.ConcretizationTypeError,
    jax.errors.TracerArrayConversionError,
    jax.errors.TracerIntegerConversionError,
)


def trace(
    module: Any,
    keys: dict[str, PRNGKeyArray],
    *,
    function: Callable[..., Any] | None,
    args: tuple[Any, ...],
    kwargs: dict[str, Any],
    capture: Capture,
    staged: bool,
    exact: bool = False,
    entry: str = "lazymod.init",
) -> Traced:
    """Trace the three mechanisms on `module` with these inputs. With `staged`, every
    value is staged into the jaxpr (the evaluator computes it afterwards); without,
    what does not depend on a spec is computed op by op as it is traced, so code that
    branches on the values of real inputs works. With `exact`, the forward pass makes
    every call, even those whose outputs only shapes need (`_shape_only.py`)."""
    input_leaves, input_treedef = jtu.tree_flatten((args, kwargs))
    spec_positions = [
        i for i, leaf in enumerate(input_leaves) if isinstance(leaf, jax.ShapeDtypeStruct)
    ]
    context = InitContext(keys, capture=capture, root_name=type(module).__name__)
    context.staged = staged
    context.exact = exact
    context.only_specs = not any(isinstance(leaf, jax.Array | np.ndarray) for leaf in input_leaves)
    skeletons: list[Skeleton] = []
    # Staged, the root keys are inputs of the jaxpr; unstaged, values computed op by
    # op need them concrete.
    streams = tuple(sorted(keys)) if staged else ()

    def run(*traced: jax.Array) -> list[jax.Array]:
        traced_specs = traced[: len(spec_positions)]
        if streams:
            context.keys = dict(zip(streams, traced[len(spec_positions) :]))
        leaves = list(input_leaves)
        for position, traced in zip(spec_positions, traced_specs):
            leaves[position] = traced
        call_args, call_kwargs = jtu.tree_unflatten(input_treedef, leaves)
        context.trace = current_trace()
        try:
            result = _run_mechanisms(module, context, function, call_args, call_kwargs, entry)
            outputs, skeleton = _take_arrays(result, context)
        finally:
            context.release()  # no reference to a tracer may outlive the trace
            context.keys = keys
        skeletons.append(skeleton)
        return outputs

    specs = [input_leaves[i] for i in spec_positions]
    _note_outer_traces(context, (module, input_leaves))
    eager = contextlib.nullcontext() if staged else jax.ensure_compile_time_eval()
    try:
        with active(context), eager:
            root_keys = [keys[stream] for stream in streams]
            closed, out_shapes = jax.make_jaxpr(run, return_shape=True)(*specs, *root_keys)
    except NEEDS_VALUES as error:
        if staged:  # the caller runs it again, unstaged, for real arrays
            raise
        where = context.raised_in or context.root_name
        raise InitTypeError(
            f"{where}: Python needs the value of an input here (`if`, `int()`, "
            "`bool()`, `.item()`, or NumPy on it), but lazymod.init knows this input "
            "only as a jax.ShapeDtypeStruct (or as a tracer of a jax.jit around "
            "lazymod.init). For a data-dependent initialization, pass real arrays to "
            "lazymod.init; otherwise branch on shapes and dtypes only "
            f"({type(error).__name__}: {str(error).splitlines()[0]})"
        ) from error
    # Only what the outputs need is kept: the forward pass's own equations (a relu
    # between layers, the calls of built layers) are most of a deep model's jaxpr, and
    # a kept trace would hold them for nothing.
    closed = needed_only(closed, closed.jaxpr.outvars)
    return Traced(closed, out_shapes, skeletons[0], streams, context.left_out)


def _run_mechanisms(
    module: Any,
    context: InitContext,
    function: Callable[..., Any] | None,
    args: tuple[Any, ...],
    kwargs: dict[str, Any],
    entry: str,
) -> Any:
    """The three mechanisms, in the seed's order; returns the tree init returns."""
    working = _run_initializers(module, context)
    modules = lazy_modules(working)
    for path, submodule in modules:
        context.register(submodule, path)
    context.phase = Phase.RNG_INIT
    for path, submodule in modules:
        _run_rng_init(submodule, path, context)
    if function is not None:
        context.phase = Phase.CALL
        with context.running(()):
            try:
                function(working, *args, **kwargs)
            except Exception as error:
                if not isinstance(error, (InitError, UninitializedError)):  # named already
                    context.note_raised_in(error, working, (), None)
                error.add_note(f"(while {entry} ran {type(module).__name__})")
                raise
    context.phase = Phase.DONE
    for path, submodule in modules:
        _check_static_fields(submodule, path, context)
    return init_result(working)


def _run_initializers(module: Any, context: InitContext) -> Any:
    """Phase 1: a copy of `module` with every `Initializer` replaced by its value (and
    every Equinox layer with a stand-in, its stand-in). The copy is made by one flatten
    and one unflatten, so it shares no module object with the input."""

    def stop(x: Any) -> bool:
        return is_sentinel(x) or type(x) in STAND_INS

    leaves_with_paths, treedef = jtu.tree_flatten_with_path(module, is_leaf=stop)
    leaves, filled = [], []
    for path, leaf in leaves_with_paths:
        if isinstance(leaf, Initializer):
            leaf = _run_initializer(module, path, leaf, context)
            filled.append(path)
        elif type(leaf) in STAND_INS:
            leaf = STAND_INS[type(leaf)](leaf)
        leaves.append(leaf)
    working = jtu.tree_unflatten(treedef, leaves)
    # An Initializer left as a class-level field default is not a leaf: run it too, and
    # store its value in the copy (which shares no module object with the input).
    for path, node, name, sentinel in default_sentinels_with_paths(working):
        if isinstance(sentinel, Initializer):
            object.__setattr__(node, name, _run_initializer(module, path, sentinel, context))
            filled.append(path)
    # A field an Initializer filled may still be assigned by rng_init or the forward
    # pass (it did not hold an array when init started).
    for path in filled:
        context.initializer_fields.update(
            (path[:i], entry.name)
            for i, entry in enumerate(path)
            if isinstance(entry, jtu.GetAttrKey)
        )
    return working


def _run_initializer(
    root: Any, path: KeyPath, initializer: Initializer, context: InitContext
) -> jax.Array:
    where = display_path(root, path)
    stream = initializer.stream
    key = derive_key(context.root_key(stream, path), stream, "initializer", path)
    try:
        value = initializer.fn(key)
    except UninitializedError:
        raise
    except InitError as error:  # say which field's Initializer it came from
        raise init_error_like(error)(f"{where}: {error}") from error
    except Exception as error:
        raise init_error_like(error)(
            f"{where}: its Initializer raised {type(error).__name__}: {error}"
        ) from error
    if isinstance(value, np.ndarray):
        value = jnp.asarray(value)
    if not isinstance(value, jax.Array):
        raise InitError(
            f"{where}: its Initializer returned {type(value).__name__} {value!r}, not an "
            "array. An Initializer's function must return a jax.Array: write "
            "`lambda key: jnp.asarray(...)` for a constant."
        )
    return value


def _run_rng_init(module: Any, path: KeyPath, context: InitContext) -> None:
    with context.running(path):
        try:
            call_method(module, "rng_init")
        except (InitError, UninitializedError):
            raise
        except Exception as error:
            raise init_error_like(error)(
                f"{context.where(path)} ({type(module).__name__}): rng_init raised "
                f"{type(error).__name__}: {error}"
            ) from error


def _check_static_fields(module: Any, path: KeyPath, context: InitContext) -> None:
    for field in dataclasses.fields(module):
        if not field.metadata.get("static", False):
            continue
        value = getattr(module, field.name, None)
        if any(isinstance(leaf, jax.core.Tracer) for leaf in jtu.tree_leaves(value)):
            raise InitTypeError(
                f"{context.where(path)}.{field.name}: a traced array was assigned to this "
                "static field during init, which would leak a tracer. Static fields hold "
                "Python values (ints, strings, shapes); declare the field without "
                "`static=True` to store an array."
            )


def _take_arrays(result: Any, context: InitContext) -> tuple[list[jax.Array], Skeleton]:
    """The arrays of the result and of the captured outputs (the jaxpr's outputs), and
    the skeleton that puts them back."""
    leaves_with_paths, treedef = jtu.tree_flatten_with_path(result)
    leaves = [leaf for _, leaf in leaves_with_paths]
    positions = [i for i, leaf in enumerate(leaves) if isinstance(leaf, jax.Array)]
    paths = [leaves_with_paths[i][0] for i in positions]
    foreign = [path for i, path in zip(positions, paths) if _is_foreign_tracer(context, leaves[i])]
    if foreign:
        names = ", ".join(display_path(result, path) for path in foreign)
        raise InitTypeError(  # JAX's UnexpectedTracerError is a TypeError
            f"{names}: assigned a value traced inside a JAX transformation that the "
            "forward pass applies (jax.vmap, jax.lax.scan, jax.jit, ...); it cannot leave "
            "that transformation (under jax.vmap, a value made from shapes and keys "
            "alone can; under jax.lax.scan or jax.jit, none can). Set the field outside "
            "the transformation: call the module once before it (for a scan, on one "
            "step's input), or set the field in rng_init or with a lazymod.Initializer. "
            "The lazymod.nn layers do this themselves."
        )
    for i, path in zip(positions, paths):
        if any(d < 0 for d in leaves[i].shape):
            raise InitValueError(
                f"{display_path(result, path)}: init made it with the shape "
                f"{tuple(leaves[i].shape)}, which has a negative dimension. Check the sizes "
                "given to its layer's constructor, its Initializer or rng_init."
            )
    inter_leaves, inter_treedef = jtu.tree_flatten(context.intermediates)
    inter_positions = [i for i, leaf in enumerate(inter_leaves) if isinstance(leaf, jax.Array)]
    outputs = [leaves[i] for i in positions] + [inter_leaves[i] for i in inter_positions]
    for i in positions:
        leaves[i] = None
    for i in inter_positions:
        inter_leaves[i] = None
    skeleton = Skeleton(
        leaves, treedef, positions, paths, inter_leaves, inter_treedef, inter_positions
    )
    return outputs, skeleton


def _is_foreign_tracer(context: InitContext, value: Any) -> bool:
    """True for a tracer of a transformation that the model itself applied during
    init (a `jax.vmap` or `jax.lax.scan` in its forward pass): it must not escape."""
    if not isinstance(value, jax.core.Tracer):
        return False
    trace = getattr(value, "_trace", context.trace)
    return trace is not context.trace and all(trace is not t for t in context.outer_traces)


def _note_outer_traces(context: InitContext, inputs: Any) -> None:
    """Remember the traces around init: the current one and its parents, and those
    of any tracer among the inputs (the module's arrays under `jax.jit`)."""
    trace = current_trace()
    while trace is not None and all(trace is not t for t in context.outer_traces):
        context.outer_traces.append(trace)
        trace = getattr(trace, "parent_trace", None)
    for leaf in jax.tree.leaves(inputs):
        trace = getattr(leaf, "_trace", None)
        if isinstance(leaf, jax.core.Tracer) and all(trace is not t for t in context.outer_traces):
            context.outer_traces.append(trace)


def needed_only(closed: jex_core.ClosedJaxpr, outvars: list[Any]) -> jex_core.ClosedJaxpr:
    """`closed` computing only `outvars`, with only the equations they need."""
    needed = {v for v in outvars if isinstance(v, jex_core.Var)}
    eqns = []
    for eqn in reversed(closed.jaxpr.eqns):
        if any(v in needed for v in eqn.outvars):
            eqns.append(eqn)
            needed.update(v for v in eqn.invars if isinstance(v, jex_core.Var))
    eqns.reverse()
    # No effects if no equation kept has one: that of a dropped `jax.debug.print` would
    # keep the fast evaluator off for nothing. Otherwise all, as declared (an input
    # effect's index is the jaxpr's, not an equation's).
    effects = closed.jaxpr.effects if any(eqn.effects for eqn in eqns) else set()
    jaxpr = closed.jaxpr.replace(eqns=eqns, outvars=outvars, effects=effects)
    return jex_core.ClosedJaxpr(jaxpr, closed.consts)
