"""`lazymod.init` and `lazymod.init_with_state`, the entry points of one engine (which
`lazymod.init_shapes`, in `_shapes.py`, runs without computing).

One call of `init` reads top to bottom in `initialize`:

1. `normalize_keys` turns the key into `{stream: key}`; `resolve_method` finds what to
   run; `check_no_lazy_module_twice` refuses a lazy module placed twice.
2. `trace` (`_trace.py`) runs the three mechanisms on a working copy of the tree inside
   `jax.make_jaxpr`, with the input specs as its only inputs; what they assign is
   recorded by path. The jaxpr's outputs are the arrays of the tree init returns.
3. `compute` (`_values.py`) checks that no field depends on a spec and computes the
   others; `place` (`_sharding.py`) puts them on their devices.
4. `Skeleton.unflatten` builds the new module; `_check_complete` lists what is left.
"""

import functools
from collections.abc import Callable
from typing import Any

import equinox as eqx
import jax
import jax.tree_util as jtu

from ._cache import keep, known_complete, lookup, mark_complete, trace_key
from ._collection import collection_paused
from ._context import at_top_level, Capture
from ._errors import InitError
from ._inputs import check_specs, note_likely_causes, resolve_method
from ._keys import normalize_keys
from ._paths import display_path
from ._sentinels import Initializer, sentinels_with_paths
from ._sharding import place, Sharding, targets_for
from ._stateful import continued, initial_state, split_state
from ._trace import NEEDS_VALUES, trace
from ._tree import check_no_lazy_module_twice, is_lazy_layer
from ._values import compute, reads_left_out


def init(
    module: Any,
    key: Any,
    /,
    *args: Any,
    method: str | Callable[..., Any] | None = None,
    partial: bool = False,
    capture_intermediates: Capture = False,
    sharding: Sharding = None,
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
        `"params"`. The key of every value is derived from its stream and path (and,
        for `lazymod.next_key`, from how many keys its module drew before it), so
        adding, removing or reordering other layers never changes it.
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
        (a `jax.ShapeDtypeStruct` where it depends on a spec, or where the call runs
        inside a `jax.vmap`, `jax.lax.scan` or `jax.jit` of the forward pass, whose
        values cannot leave it: its shape there, per example under `jax.vmap`); the
        root's output is under `"__call__"`, and later calls of a module under
        `"layers[0]#1"`, .... As in Flax, a function `filter(module, method_name) ->
        bool` instead chooses which method calls are stored; another method's output is
        under `"path.method_name"` (`"method_name"` for the root).

    - `sharding`: where to put each array: a function `rule(path, leaf)` of the
        array's path (like `"layers[0].weight"`) and its `jax.ShapeDtypeStruct`,
        returning a `jax.sharding.Sharding` or `None` (the default device); or one
        `Sharding` for every array; or a `jax.sharding.Mesh`, to shard each array
        annotated by `Initializer(..., partition=...)` or a layer's `.partitioned(...)`
        as it says and replicate every other array (one the module holds already on
        that mesh, from a partial init, keeps its sharding); or a `lazymod.AxisRules`, for
        annotations of logical axis names. Each process computes only the blocks its
        devices hold (see [Sharding](sharding.md) for the values that need a full copy).

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
    if not isinstance(partial, bool):
        raise TypeError("lazymod.init: `partial` must be a bool.")
    if not (isinstance(capture_intermediates, bool) or callable(capture_intermediates)):
        raise TypeError(
            "lazymod.init: `capture_intermediates` must be a bool or a function "
            "filter(module, method_name) -> bool."
        )
    result, intermediates = initialize(
        module,
        key,
        args=args,
        kwargs=kwargs,
        method=method,
        partial=partial,
        capture_intermediates=capture_intermediates,
        sharding=sharding,
    )
    return (result, intermediates) if capture_intermediates is not False else result


def init_with_state(
    module: Any,
    key: Any,
    /,
    *args: Any,
    method: str | Callable[..., Any] | None = None,
    partial: bool = False,
    sharding: Sharding = None,
    state: eqx.nn.State | None = None,
    **kwargs: Any,
) -> tuple[Any, eqx.nn.State]:
    """The lazy counterpart of `eqx.nn.make_with_state`: initialize a model holding
    stateful layers (such as `lazymod.nn.BatchNorm`) and return `(model, state)`.

    While init runs, `method` (default `__call__`) is called as
    `method(*args, state, **kwargs)` and returns `(output, state)`, as Equinox's
    stateful modules do. The state it returns is discarded: the returned `state` holds
    every `eqx.nn.StateIndex`'s initial value, exactly as `eqx.nn.make_with_state`
    builds it, and the model has its initial states deleted.

    Takes the same arguments as [`lazymod.init`][] (but for `capture_intermediates`),
    and `state`: for a model that holds stateful layers built already (one that
    `init_with_state` returned, and training since), their state. Init continues it:
    the returned state holds those values, and the initial state of every layer init
    builds now (a lazy `BatchNorm` added to a trained model).

    !!! example

        ```python
        import jax
        import jax.numpy as jnp
        import lazymod as lm

        class Net(lm.Module):
            linear: lm.nn.Linear
            norm: lm.nn.BatchNorm

            def __init__(self):
                self.linear = lm.nn.Linear(4)
                self.norm = lm.nn.BatchNorm("batch", mode="batch")

            def __call__(self, x, state):
                x, state = self.norm(self.linear(x), state)
                return x, state

        spec = jax.ShapeDtypeStruct((3,), jnp.float32)
        model, state = lm.init_with_state(Net(), 0, spec)
        assert model.norm.input_size == 4
        ```
    """
    if state is not None:
        check_no_lazy_module_twice(module)  # continued copies the tree
        module = continued(module, state)
    result, _ = initialize(
        module,
        key,
        args=args,
        kwargs=kwargs,
        method=method,
        partial=partial,
        sharding=sharding,
        with_state=True,
        entry="lazymod.init_with_state",
    )
    return result


@collection_paused()
def initialize(
    module: Any,
    key: Any,
    *,
    args: tuple[Any, ...],
    kwargs: dict[str, Any],
    method: str | Callable[..., Any] | None = None,
    partial: bool = False,
    capture_intermediates: Capture = False,
    sharding: Sharding = None,
    with_state: bool = False,
    abstract: bool = False,
    entry: str = "lazymod.init",
) -> tuple[Any, dict[str, Any] | None]:
    """The engine behind every entry point: the initialized tree and the captured
    outputs (`None` unless `capture_intermediates`). With `with_state`, the method
    also takes the state (last) and the tree is `(model, state)`. With `abstract`
    (under `jax.eval_shape`), every array is left as the `jax.ShapeDtypeStruct` the
    trace gives, and nothing is computed."""
    keys = normalize_keys(key)
    function = resolve_method(module, method, has_inputs=bool(args or kwargs), entry=entry)
    check_no_lazy_module_twice(module)
    check_specs(args, kwargs, entry)
    if with_state and function is not None:
        args = (*args, initial_state(module, entry))
    options = dict(
        function=function, args=args, kwargs=kwargs, capture=capture_intermediates, entry=entry
    )
    # A model of the same structure, inputs and options traced before: its trace
    # serves again, with these keys (see _cache.py).
    kept = trace_key(module, keys, (args, kwargs), (function, capture_intermediates))
    traced = lookup(kept)
    try:
        try:
            # Staged: the whole construction becomes one jaxpr, evaluated afterwards
            # without compiling a program per parameter shape (see _evaluate.py).
            if traced is None:
                traced = trace(module, keys, staged=True, **options)
                if traced.left_out and reads_left_out(traced):
                    traced = trace(module, keys, staged=True, exact=True, **options)
                keep(kept, traced)
        except NEEDS_VALUES:
            if abstract and at_top_level():
                raise  # shapes_of runs it again under jax.eval_shape: nothing computed
            # The code branches on values (data-dependent init with real arrays): run
            # it op by op, so concrete inputs give concrete values.
            traced = trace(module, keys, staged=False, **options)
    except Exception as error:
        note_likely_causes(error, args, with_state, entry, module)
        raise
    paths = traced.skeleton.array_paths
    targets = [] if abstract else targets_for(module, traced.out_shapes, paths, sharding, partial)
    values = compute(module, traced, abstract=abstract, targets=targets, keys=keys)
    if not abstract:
        values = place(module, values, paths, targets)
    result, intermediates = traced.skeleton.unflatten(values)
    if not (partial or known_complete(traced)):
        _check_complete(result, entry, ran=function is not None)
        mark_complete(traced)
    return (split_state(result, abstract) if with_state else result), intermediates


@functools.cache
def abstract_key() -> jax.ShapeDtypeStruct:
    """The shape of a key, for init under `jax.eval_shape`."""
    return jax.eval_shape(jax.random.key, 0)


def _check_complete(result: Any, entry: str, ran: bool) -> None:
    left = sentinels_with_paths(result)
    if left:
        # A lazymod.nn layer left unbuilt is named by its own path, not its `layer`.
        layers = dict(jtu.tree_leaves_with_path(result, is_leaf=is_lazy_layer))
        unbuilt = {
            path: layers[path[:-1]]
            for path, _ in left
            if path[-1:] == (jtu.GetAttrKey("layer"),) and is_lazy_layer(layers.get(path[:-1]))
        }
        lines = "\n".join(
            f"  {display_path(result, path[:-1])} (a lazy {type(unbuilt[path]).__name__}, "
            "never called)"
            if path in unbuilt
            else f"  {display_path(result, path)} "
            f"({'Initializer' if isinstance(leaf, Initializer) else 'lazy placeholder'})"
            for path, leaf in left
        )
        if not ran:
            why = (
                "No inputs were given, so no forward pass ran to build them. Pass the "
                f"inputs (or their specs): {entry}(model, ..., jax.ShapeDtypeStruct("
                "shape, dtype))"
            )
        else:
            why = (
                "The inputs never reached the code that sets them (a branch not taken, "
                "or a method not run). Pass inputs (or `method=`) that reach them"
            )
        if entry in ("lazymod.init", "lazymod.init_with_state", "lazymod.init_shapes"):
            why += (
                ", or `partial=True` to get the partly initialized module and initialize "
                "the rest with a later lazymod.init"
            )
        raise InitError(
            f"{entry} left {len(left)} field{'s' if len(left) > 1 else ''} "
            f"uninitialized:\n{lines}\n{why}."
        )
