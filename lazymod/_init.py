"""`lazymod.init` and `lazymod.init_shapes`: one engine that materializes a lazy tree.

One call of `init` goes through these steps, top to bottom:

1. `normalize_keys` turns the key into `{stream: key}`; the inputs are split into
   `jax.ShapeDtypeStruct` specs and everything else.
2. `_trace` runs the three mechanisms (`_run_initializers`, `_run_rng_inits`, then the
   method) on a working copy of the tree, inside `jax.make_jaxpr` with the specs as its
   only inputs and under `jax.ensure_compile_time_eval`. Everything that does not depend
   on a spec is computed eagerly, op by op, right there; the forward pass on the specs
   is only traced, so its cost does not grow with the batch size.
3. `_materialize` reads off the jaxpr which arrays depend on the specs (an error for a
   field, a `ShapeDtypeStruct` for a captured intermediate) and evaluates the rest.
   Eagerly there is nothing left to run: the values are the jaxpr's constants. Under an
   outer `jax.jit`, `jax.vmap` or `jax.eval_shape` (keys or inputs are tracers) the
   needed equations are replayed in the outer trace.
4. One `tree_unflatten` builds the new module; `_check_complete` lists what is left.
"""

import contextlib
import dataclasses
import functools
from collections.abc import Callable, Sequence
from typing import Any

import equinox as eqx
import jax
import jax.numpy as jnp
import jax.tree_util as jtu
import numpy as np
from jax.extend import core as jex_core

from ._context import active, current_trace, InitContext
from ._errors import InitError, UninitializedError
from ._evaluate import can_evaluate, evaluate
from ._keys import derive_key, normalize_keys
from ._module import Module
from ._paths import display_path, KeyPath, path_str
from ._sentinels import (
    ClaimedPlaceholder,
    default_sentinels_with_paths,
    field_items,
    Initializer,
    is_sentinel,
    lazy,
    sentinels_with_paths,
)


# `rule(path, leaf) -> Sharding | None`, as `lazymod.init(..., sharding=rule)` takes it.
ShardingRule = Callable[[str, jax.ShapeDtypeStruct], jax.sharding.Sharding | None]


def init(
    module: Any,
    key: Any,
    /,
    *args: Any,
    method: str | Callable[..., Any] | None = None,
    partial: bool = False,
    capture_intermediates: bool = False,
    sharding: ShardingRule | jax.sharding.Sharding | jax.sharding.Mesh | None = None,
    **kwargs: Any,
) -> Any:
    """Return a new, fully materialized copy of `module`.

    Every [`lazymod.Initializer`][] is replaced by `fn(key)`, then every module's
    `rng_init` runs, then (if inputs are given) `method` runs once on them with
    `initializing()` true, so `if self.initializing():` blocks can read input shapes and
    assign fields. `module` itself is never modified.

    **Arguments:**

    - `module`: any pytree of modules: an `lazymod.Module`, an `equinox.Module`, or
        lists, tuples and dicts of them.
    - `key`: a `jax.random.key(...)`, a legacy `jax.random.PRNGKey(...)`, an int seed
        (same as `jax.random.key(seed)`), or a dict `{stream: key}`. A single key feeds
        the `"params"` stream; a stream with no key of its own falls back to
        `"params"`. The key of every value is derived from its stream and path, so
        adding, removing or reordering other fields never changes it.
    - `*args`, `**kwargs`: the inputs of `method`: arrays, `jax.ShapeDtypeStruct`s, or
        pytrees of them. Specs are only traced, never computed. With no inputs and no
        `method`, only Initializers and `rng_init` run.
    - `method`: the method to run, by name or as a function `f(module, *args,
        **kwargs)`; default `__call__`.
    - `partial`: if `False` (the default), raise [`lazymod.InitError`][] when a
        placeholder or Initializer is left (a branch the inputs never reached). If
        `True`, return the partly initialized module; a later `init` fills the rest.
    - `capture_intermediates`: if `True`, also return a dict from submodule path (like
        `"layers[0]"`) to the output of that submodule's `__call__` during init
        (a `jax.ShapeDtypeStruct` where it depends on a spec).

    - `sharding`: where to put each array: a function `rule(path, leaf)` of the
        array's path (like `"layers[0].weight"`) and its `jax.ShapeDtypeStruct`,
        returning a `jax.sharding.Sharding` or `None` (the default device); or one
        `Sharding` for every array; or a `jax.sharding.Mesh`, to shard each
        `Initializer(..., partition=...)` as it says and replicate every other array.
        Arrays go straight from host memory to their shards, so no device holds a full
        copy of a sharded array.

    **Returns:**

    The new module, or `(module, intermediates)` with `capture_intermediates=True`.

    !!! example

        ```python
        import jax
        import jax.numpy as jnp
        import lazymod as lm

        class Linear(lm.Module):
            features_out: int
            w: jax.Array = lm.lazy()

            def __call__(self, x):
                if self.initializing():
                    self.w = jax.random.uniform(
                        key=lm.next_key(), shape=[x.shape[-1], self.features_out]
                    )
                return x @ self.w

        spec = jax.ShapeDtypeStruct((784,), jnp.float32)
        model = lm.init(Linear(10), jax.random.key(0), spec)
        assert model.w.shape == (784, 10)
        ```
    """
    if not isinstance(partial, bool) or not isinstance(capture_intermediates, bool):
        raise TypeError("lazymod.init: `partial` and `capture_intermediates` must be bool.")
    return _init(module, key, args, kwargs, method, partial, capture_intermediates, sharding, False)


def _init(
    module: Any,
    key: Any,
    args: tuple[Any, ...],
    kwargs: dict[str, Any],
    method: str | Callable[..., Any] | None,
    partial: bool,
    capture_intermediates: bool,
    sharding: Any,
    abstract: bool,
) -> Any:
    """`init`; with `abstract=True` (under `jax.eval_shape`, for `init_shapes`) every
    array is left as the `jax.ShapeDtypeStruct` the trace gives, computing nothing."""
    keys = normalize_keys(key)
    function = _resolve_method(module, method, has_inputs=bool(args or kwargs))
    _check_no_lazy_module_twice(module)
    try:
        # Staged: the whole construction becomes one jaxpr, evaluated afterwards
        # without compiling a program per parameter shape (see _evaluate.py).
        context = InitContext(keys, capture=capture_intermediates)
        closed, out_shapes, rebuild = _trace(module, context, function, args, kwargs, True)
    except _NEEDS_VALUES:
        # The code branches on values (data-dependent init with real arrays): run it
        # op by op, so concrete inputs give concrete values.
        context = InitContext(keys, capture=capture_intermediates)
        closed, out_shapes, rebuild = _trace(module, context, function, args, kwargs, False)
    values = _materialize(module, closed, out_shapes, rebuild, abstract, sharding is None)
    if not abstract:
        values = _place(module, values, rebuild, sharding)
    result, intermediates = rebuild.unflatten(values)
    _check_complete(result, partial)
    if capture_intermediates:
        return result, intermediates
    return result


def init_shapes(
    module: Any,
    /,
    *args: Any,
    method: str | Callable[..., Any] | None = None,
    partial: bool = False,
    **kwargs: Any,
) -> Any:
    """The tree `lazymod.init` would return, with a `jax.ShapeDtypeStruct` in place of
    every array. Nothing is allocated or computed, whatever the sizes.

    Takes the same arguments as [`lazymod.init`][], less the key. Use it to inspect a
    model, or as the skeleton to load a checkpoint into with
    `eqx.tree_deserialise_leaves`.

    !!! example

        ```python
        import jax
        import jax.numpy as jnp
        import lazymod as lm

        class Linear(lm.Module):
            features_out: int
            w: jax.Array = lm.lazy()

            def __call__(self, x):
                if self.initializing():
                    self.w = jax.random.normal(
                        lm.next_key(), (x.shape[-1], self.features_out)
                    )
                return x @ self.w

        big = lm.init_shapes(Linear(100_000), jax.ShapeDtypeStruct((100_000,), jnp.float32))
        assert big.w.shape == (100_000, 100_000)
        ```
    """

    def run(module: Any, key: Any, *args: Any, **kwargs: Any) -> Any:
        return _init(module, key, args, kwargs, method, partial, False, None, True)

    return eqx.filter_eval_shape(run, module, _abstract_key(), *args, **kwargs)


@functools.cache
def _abstract_key() -> jax.ShapeDtypeStruct:
    return jax.eval_shape(jax.random.key, 0)


def _resolve_method(
    module: Any, method: str | Callable[..., Any] | None, has_inputs: bool
) -> Callable[..., Any] | None:
    name = type(module).__name__
    if method is None:
        if not has_inputs:
            return None
        if not callable(module):
            raise TypeError(
                f"lazymod.init got inputs, but {name} is not callable; pass `method=` "
                "(a method name or a function f(module, *inputs)) to say what to run."
            )
        return type(module).__call__
    if isinstance(method, str):
        function = getattr(type(module), method, None)
        if not callable(function):
            raise AttributeError(f"lazymod.init: {name} has no method {method!r}.")
        return function
    if callable(method):
        bound_to = getattr(method, "__self__", None)
        if bound_to is None:
            return method
        if bound_to is module:
            return method.__func__  # pyright: ignore[reportFunctionMemberAccess]
        raise TypeError(
            "lazymod.init: `method` is a method bound to another object; pass the "
            f"method's name, or an unbound function such as `{name}.<method>`."
        )
    raise TypeError(
        f"lazymod.init: `method` must be a method name, a function or None; got "
        f"{type(method).__name__}."
    )


# What JAX raises when Python code needs the value of a traced array.
_NEEDS_VALUES = (
    jax.errors.ConcretizationTypeError,
    jax.errors.TracerArrayConversionError,
    jax.errors.TracerIntegerConversionError,
)


@dataclasses.dataclass
class _Rebuild:
    """How to turn the arrays computed by the trace back into trees. Holds no tracer:
    every array position is `None` until `unflatten` fills it."""

    leaves: list[Any]
    treedef: Any
    array_positions: list[int]
    array_paths: list[KeyPath]  # for error messages
    inter_leaves: list[Any]
    inter_treedef: Any
    inter_positions: list[int]

    @property
    def num_params(self) -> int:
        return len(self.array_positions)

    def unflatten(self, values: Sequence[Any]) -> tuple[Any, dict[str, Any] | None]:
        leaves = list(self.leaves)
        for position, value in zip(self.array_positions, values):
            leaves[position] = value
        inter_leaves = list(self.inter_leaves)
        for position, value in zip(self.inter_positions, values[self.num_params :]):
            inter_leaves[position] = value
        result = jtu.tree_unflatten(self.treedef, leaves)
        return result, jtu.tree_unflatten(self.inter_treedef, inter_leaves)


def _trace(
    module: Any,
    context: InitContext,
    function: Callable[..., Any] | None,
    args: tuple[Any, ...],
    kwargs: dict[str, Any],
    staged: bool,
) -> tuple[Any, Any, _Rebuild]:
    input_leaves, input_treedef = jtu.tree_flatten((args, kwargs))
    spec_positions = [
        i for i, leaf in enumerate(input_leaves) if isinstance(leaf, jax.ShapeDtypeStruct)
    ]
    rebuild: list[_Rebuild] = []

    def run(*traced_specs: jax.Array) -> list[jax.Array]:
        leaves = list(input_leaves)
        for position, traced in zip(spec_positions, traced_specs):
            leaves[position] = traced
        call_args, call_kwargs = jtu.tree_unflatten(input_treedef, leaves)
        context.trace = current_trace()
        context.root_name = type(module).__name__
        try:
            working = _run_all(module, context, function, call_args, call_kwargs)
            outputs, built = _flatten_result(working, context)
        finally:
            context.release()  # no reference to a tracer may outlive the trace
        rebuild.append(built)
        return outputs

    specs = [input_leaves[i] for i in spec_positions]
    context.note_outer_traces((module, input_leaves))
    eager = contextlib.nullcontext() if staged else jax.ensure_compile_time_eval()
    with active(context), eager:
        closed, out_shapes = jax.make_jaxpr(run, return_shape=True)(*specs)
    return closed, out_shapes, rebuild[0]


def _run_all(
    module: Any,
    context: InitContext,
    function: Callable[..., Any] | None,
    args: tuple[Any, ...],
    kwargs: dict[str, Any],
) -> Any:
    """The three mechanisms, in the seed's order, on a working copy of `module`."""
    working = _run_initializers(module, context)
    modules = _register_modules(working, context)
    context.phase = "rng_init"
    _run_rng_inits(working, modules, context)
    if function is not None:
        context.phase = "call"
        with context.running(working):
            try:
                function(working, *args, **kwargs)
            except Exception as error:
                error.add_note(f"(while lazymod.init ran {type(module).__name__})")
                raise
    context.phase = "done"
    for submodule in modules:
        _check_static_fields(working, submodule, context)
        _release_placeholders(submodule)
    if any(_materializes(submodule) for submodule in modules):
        working = _replace_materialized(working)
    return working


def _release_placeholders(module: Module) -> None:
    """Put back the plain placeholder where one is left (with `partial=True`)."""
    for name, value in field_items(module):
        if isinstance(value, ClaimedPlaceholder):
            object.__setattr__(module, name, lazy())


def _materializes(node: Any) -> bool:
    return isinstance(node, Module) and type(node)._materialize is not Module._materialize


def _replace_materialized(tree: Any) -> Any:
    """Replace every module that overrides `_materialize` by what it returns (which
    may itself hold such modules)."""

    def replace(node: Any) -> Any:
        if not _materializes(node):
            return node
        out = node._materialize()
        return out if out is node else _replace_materialized(out)

    return jtu.tree_map(replace, tree, is_leaf=_materializes)


def _flatten_result(working: Any, context: InitContext) -> tuple[list[jax.Array], _Rebuild]:
    leaves_with_paths, treedef = jtu.tree_flatten_with_path(working)
    leaves = [leaf for _, leaf in leaves_with_paths]
    positions = [i for i, leaf in enumerate(leaves) if isinstance(leaf, jax.Array)]
    paths = [leaves_with_paths[i][0] for i in positions]
    foreign = [path for i, path in zip(positions, paths) if context.is_foreign_tracer(leaves[i])]
    if foreign:
        _raise_foreign_tracers(working, foreign)
    inter_leaves, inter_treedef = jtu.tree_flatten(context.intermediates)
    inter_positions = [i for i, leaf in enumerate(inter_leaves) if isinstance(leaf, jax.Array)]
    outputs = [leaves[i] for i in positions] + [inter_leaves[i] for i in inter_positions]
    for i in positions:
        leaves[i] = None
    for i in inter_positions:
        inter_leaves[i] = None
    built = _Rebuild(
        leaves, treedef, positions, paths, inter_leaves, inter_treedef, inter_positions
    )
    return outputs, built


def _run_initializers(module: Any, context: InitContext) -> Any:
    """Phase 1: a copy of `module` with every `Initializer` replaced by its value. The
    copy is made by one flatten and one unflatten, so it shares no module object with
    the input."""
    leaves_with_paths, treedef = jtu.tree_flatten_with_path(module, is_leaf=is_sentinel)
    leaves = []
    for path, leaf in leaves_with_paths:
        if isinstance(leaf, Initializer):
            leaf = _run_initializer(module, path, leaf, context)
        leaves.append(leaf)
    working = jtu.tree_unflatten(treedef, leaves)
    # An Initializer left as a class-level field default is not a leaf: run it too, and
    # store its value in the copy (which shares no module object with the input).
    for path, node, name, sentinel in default_sentinels_with_paths(working):
        if isinstance(sentinel, Initializer):
            object.__setattr__(node, name, _run_initializer(module, path, sentinel, context))
    return working


def _run_initializer(
    root: Any, path: KeyPath, initializer: Initializer, context: InitContext
) -> jax.Array:
    where = display_path(root, path)
    stream = initializer.stream
    key = derive_key(context.root_key(stream), stream, "initializer", path)
    try:
        value = initializer.fn(key)
    except (InitError, UninitializedError):
        raise
    except Exception as error:
        raise InitError(
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


def _check_no_lazy_module_twice(root: Any) -> None:
    """A pytree holds a separate copy of a module at each place it appears, so a lazy
    module placed twice would silently become two layers with different weights."""
    seen: dict[int, KeyPath] = {}

    def visit(node: Any, path: KeyPath) -> None:
        children = jtu.tree_leaves_with_path(
            node, is_leaf=lambda x: x is not node and isinstance(x, eqx.Module)
        )
        for child_path, child in children:
            if not isinstance(child, eqx.Module) or child is node or is_sentinel(child):
                continue
            full_path = path + child_path
            first = seen.setdefault(id(child), full_path)
            if first is not full_path and sentinels_with_paths(child):
                raise InitError(
                    f"{display_path(root, first)} and {display_path(root, full_path)} are "
                    f"the same lazy {type(child).__name__} object. A pytree holds a "
                    "separate copy at each place, so they would be initialized as two "
                    "layers with different values. For two layers, create two objects; "
                    "to reuse one layer, keep it in one field and call it twice; to tie "
                    "weights between layers, wrap the initialized model's layers in "
                    "eqx.nn.Shared."
                )
            visit(child, full_path)

    visit(root, ())


def _register_modules(root: Any, context: InitContext) -> list[Module]:
    """Record the path of the root and of every `lazymod.Module` below it; return the
    `lazymod.Module`s children first, in field order."""
    context.add_module(root, ())
    order: list[Module] = []

    def visit(node: Any, path: KeyPath) -> None:
        children = jtu.tree_leaves_with_path(
            node, is_leaf=lambda x: x is not node and isinstance(x, eqx.Module)
        )
        for child_path, child in children:
            if isinstance(child, eqx.Module) and not is_sentinel(child):
                full_path = path + child_path
                visit(child, full_path)
                if isinstance(child, Module):
                    context.add_module(child, full_path)
                    context.claim_placeholders(child)
                    order.append(child)

    visit(root, ())
    if isinstance(root, Module):
        context.claim_placeholders(root)
        order.append(root)
    return order


def _run_rng_inits(root: Any, modules: list[Module], context: InitContext) -> None:
    for submodule in modules:
        if type(submodule).rng_init is Module.rng_init:
            continue
        with context.running(submodule):
            try:
                submodule.rng_init()
            except (InitError, UninitializedError):
                raise
            except Exception as error:
                where = display_path(root, context.paths[id(submodule)])
                raise InitError(
                    f"{where} ({type(submodule).__name__}): rng_init raised "
                    f"{type(error).__name__}: {error}"
                ) from error


def _check_static_fields(root: Any, module: Module, context: InitContext) -> None:
    for field in dataclasses.fields(module):
        if not field.metadata.get("static", False):
            continue
        value = getattr(module, field.name, None)
        if any(isinstance(leaf, jax.core.Tracer) for leaf in jtu.tree_leaves(value)):
            where = display_path(root, context.paths[id(module)])
            raise InitError(
                f"{where}.{field.name}: a traced array was assigned to this static field "
                "during init, which would leak a tracer. Static fields hold Python "
                "values (ints, strings, shapes); declare the field without "
                "`static=True` to store an array."
            )


def _raise_foreign_tracers(root: Any, paths: list[KeyPath]) -> None:
    names = ", ".join(display_path(root, path) for path in paths)
    raise InitError(
        f"{names}: assigned a value traced inside a JAX transformation that the "
        "forward pass applies (jax.vmap, jax.lax.scan, jax.jit, ...); it cannot leave "
        "that transformation. Assign fields from shapes and keys only, or outside "
        "the transformation."
    )


def _place(
    module: Any,
    values: list[Any],
    rebuild: _Rebuild,
    sharding: ShardingRule | jax.sharding.Sharding | jax.sharding.Mesh | None,
) -> list[Any]:
    """Put every computed array on its device(s): host arrays from the evaluator go
    straight to their shards."""
    if isinstance(sharding, jax.sharding.Mesh):
        sharding = _annotation_rule(module, sharding)
    placed = list(values)
    host: list[int] = []  # host arrays bound for the default device: one transfer
    for i, value in enumerate(values):
        target = None
        if i < rebuild.num_params and sharding is not None:
            target = _sharding_for(module, rebuild.array_paths[i], value, sharding)
        if target is not None:
            placed[i] = jax.device_put(value, target)  # inside jit: a sharding constraint
        elif isinstance(value, np.ndarray):
            host.append(i)
    for i, value in zip(host, jax.device_put([values[i] for i in host])):
        placed[i] = value
    return placed


def _annotation_rule(module: Any, mesh: jax.sharding.Mesh) -> Callable[..., Any]:
    """The rule of `sharding=mesh`: the `partition` of the Initializer that made the
    array, replicated when there is none."""
    partitions = {
        path_str(path): (path, leaf.partition)
        for path, leaf in sentinels_with_paths(module)
        if isinstance(leaf, Initializer) and leaf.partition is not None
    }

    def rule(path: str, leaf: jax.ShapeDtypeStruct) -> jax.sharding.Sharding:
        if path not in partitions:
            return jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec())
        key_path, partition = partitions[path]
        if len(partition) != leaf.ndim:
            raise ValueError(
                f"partition={partition!r} has {len(partition)} entries for an array of "
                f"shape {leaf.shape}; give one per axis (None for an axis not sharded)"
            )
        return jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec(*partition))

    return rule


def _sharding_for(
    module: Any,
    path: KeyPath,
    value: Any,
    sharding: ShardingRule | jax.sharding.Sharding,
) -> jax.sharding.Sharding | None:
    if isinstance(sharding, jax.sharding.Sharding):
        return sharding
    leaf = jax.ShapeDtypeStruct(value.shape, value.dtype)
    try:
        target = sharding(path_str(path), leaf)
    except Exception as error:
        raise InitError(
            f"{display_path(module, path)}: the sharding rule raised "
            f"{type(error).__name__}: {error}"
        ) from error
    if target is not None and not isinstance(target, jax.sharding.Sharding):
        raise InitError(
            f"{display_path(module, path)}: the sharding rule returned "
            f"{type(target).__name__}; it must return a jax.sharding.Sharding or None."
        )
    return target


def _materialize(
    module: Any,
    closed: jex_core.ClosedJaxpr,
    out_shapes: list[Any],
    rebuild: _Rebuild,
    abstract: bool = False,
    on_device: bool = False,
) -> list[Any]:
    """The value of every output of the trace: computed where it does not depend on a
    spec, a `ShapeDtypeStruct` (intermediates) or an error (fields) where it does; with
    `abstract`, a `ShapeDtypeStruct` everywhere."""
    jaxpr = closed.jaxpr
    depends = _depends_on_inputs(jaxpr)
    leaked = [i for i in range(rebuild.num_params) if depends[i]]
    if leaked:
        _raise_data_dependent(module, rebuild, leaked)
    if abstract:
        return [
            jax.ShapeDtypeStruct(
                var.aval.shape,
                var.aval.dtype,
                weak_type=getattr(var.aval, "weak_type", False) and var.aval.shape == (),
            )
            for var in jaxpr.outvars
        ]
    keep = [not d for d in depends]
    computed = iter(_evaluate(closed, keep, on_device))
    return [
        _as_array(next(computed), var.aval) if k else jax.ShapeDtypeStruct(shape.shape, shape.dtype)
        for k, shape, var in zip(keep, out_shapes, jaxpr.outvars)
    ]


def _as_array(value: Any, aval: Any) -> Any:
    """`value` as the array its trace made: a constant output of the jaxpr may come back
    as a Python or NumPy scalar, and a weakly typed scalar (`jnp.array(1.0)`) must stay
    weakly typed, so that it promotes in the forward pass as it did when it was made."""
    if isinstance(value, jax.Array | jax.core.Tracer):
        return value
    if getattr(aval, "weak_type", False) and aval.shape == ():
        return jnp.asarray(np.asarray(value).item())  # a Python scalar: weakly typed
    if not isinstance(value, np.ndarray):
        return np.asarray(value, dtype=aval.dtype)  # placed on a device by _place
    return value


def _depends_on_inputs(jaxpr: jex_core.Jaxpr) -> list[bool]:
    tainted = set(jaxpr.invars)
    for eqn in jaxpr.eqns:
        if any(isinstance(v, jex_core.Var) and v in tainted for v in eqn.invars):
            tainted.update(eqn.outvars)
    return [isinstance(v, jex_core.Var) and v in tainted for v in jaxpr.outvars]


def _evaluate(closed: jex_core.ClosedJaxpr, keep: list[bool], on_device: bool) -> list[Any]:
    """Evaluate the outputs marked in `keep`, running only the equations they need;
    with `on_device`, computed arrays go to the default device as they are ready."""
    jaxpr = closed.jaxpr
    outvars = [v for v, k in zip(jaxpr.outvars, keep) if k]
    needed = {v for v in outvars if isinstance(v, jex_core.Var)}
    eqns = []
    for eqn in reversed(jaxpr.eqns):
        if any(v in needed for v in eqn.outvars):
            eqns.append(eqn)
            needed.update(v for v in eqn.invars if isinstance(v, jex_core.Var))
    eqns.reverse()
    if not eqns:  # every value is already a constant
        env = dict(zip(jaxpr.constvars, closed.consts))
        return [v.val if isinstance(v, jex_core.Literal) else env[v] for v in outvars]
    pruned = jex_core.ClosedJaxpr(jaxpr.replace(eqns=eqns, outvars=outvars), closed.consts)
    if can_evaluate(pruned):
        return evaluate(pruned, outvars, on_device=on_device)
    return jax.core.eval_jaxpr(pruned.jaxpr, pruned.consts, *[None] * len(jaxpr.invars))


def _raise_data_dependent(module: Any, rebuild: _Rebuild, leaked: list[int]) -> None:
    names = [display_path(module, rebuild.array_paths[i]) for i in leaked]
    raise InitError(
        f"{', '.join(names)}: "
        f"{'these values depend' if len(names) > 1 else 'this value depends'} "
        "on the values of an input that lazymod.init only knows as a "
        "jax.ShapeDtypeStruct (its shape and dtype). For a data-dependent "
        "initialization, pass real arrays to lazymod.init; otherwise compute the value "
        "from shapes and keys only."
    )


def _check_complete(result: Any, partial: bool) -> None:
    if partial:
        return
    left = sentinels_with_paths(result)
    if left:
        lines = "\n".join(
            f"  {display_path(result, path)} "
            f"({'Initializer' if isinstance(leaf, Initializer) else 'lazy placeholder'})"
            for path, leaf in left
        )
        raise InitError(
            f"lazymod.init left {len(left)} field{'s' if len(left) > 1 else ''} "
            f"uninitialized:\n{lines}\nThe inputs never reached the code that sets "
            "them (a branch not taken, or a method not run). Pass inputs (or `method=`) "
            "that reach them, or `partial=True` to get the partly initialized module "
            "and initialize the rest with a later lazymod.init."
        )
