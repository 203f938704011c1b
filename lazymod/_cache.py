"""Traces kept for later inits of the same structure.

Tracing the forward pass is most of an init's cost. A second init of a model of the
same structure, with inputs of the same shapes and keys of the same streams, runs the
same Python code to the same jaxpr: only the root keys differ, and they are the
jaxpr's inputs. So the trace is kept (as `jax.jit` keeps its compilations) and the
later init only computes values. What makes two inits "the same" is everything the
trace can see: the module's tree structure with its static fields and non-array
leaves (functions by identity), the inputs' structure, shapes, dtypes and Python
values, the key streams and implementation, the options, and JAX's configuration.

An init is not kept when it could see anything else: arrays in the module or among
the inputs (a re-init, a data-dependent init), tracers of an enclosing
transformation, an unhashable leaf, or code that branched on values (traced op by
op). Code whose shapes depend on Python state outside the module and its inputs (a
global changed between two inits) must call `lazymod.clear_caches()` after changing
it, as with `jax.jit`."""

import collections
import dataclasses
import functools
import threading
import weakref
from collections.abc import Hashable
from typing import Any

import equinox as eqx
import jax
import jax.tree_util as jtu
import numpy as np
from jax.extend import core as jex_core

from ._context import at_top_level


_CAPACITY = 16  # structures kept, least recently used first out (a deep model's trace is MBs)
_MAX_CONSTANT_BYTES = 2**24
_traces: collections.OrderedDict[Hashable, Any] = collections.OrderedDict()
_lock = threading.Lock()


def clear_caches() -> None:
    """Forget every trace `lazymod.init` kept (of whole inits, and of each kind of
    built layer's constructor and forward pass): the next init of any model traces it
    again. Call it after changing Python state that a forward pass reads outside its
    module and inputs (as `jax.clear_caches()` for `jax.jit`).

    ```python
    import jax, jax.numpy as jnp, lazymod as lm

    lm.init(lm.nn.Linear(2), 0, jax.ShapeDtypeStruct((3,), jnp.float32))
    lm.clear_caches()
    ```
    """
    with _lock:
        _traces.clear()
    from ._kept_calls import forget_kept_calls  # it imports this module

    forget_kept_calls()


def trace_key(module: Any, keys: dict[str, Any], inputs: Any, options: tuple) -> Hashable | None:
    """What the trace of this init depends on, or `None` when it cannot be kept."""
    if not at_top_level():
        return None
    try:
        module_leaves, module_tree = jtu.tree_flatten(module)
        input_leaves, input_tree = jtu.tree_flatten(inputs)
        parts = (
            module_tree,
            static_numbers(module),  # 1 == 1.0 == True and -0.0 == 0.0 to the treedef
            tuple(_leaf_key(leaf) for leaf in module_leaves),
            input_tree,
            tuple(_leaf_key(leaf) for leaf in input_leaves),
            tuple((stream, _key_kind(key)) for stream, key in sorted(keys.items())),
            options,
            _configuration(),
        )
        hash(parts)
    except _NotKept:
        return None
    except TypeError:  # an unhashable leaf or static field
        return None
    return parts


def lookup(key: Hashable | None) -> Any:
    """The trace kept for `key`, or `None`."""
    if key is None:
        return None
    with _lock:
        traced = _traces.get(key)
        if traced is not None:
            _traces.move_to_end(key)
        return traced


def keep(key: Hashable | None, traced: Any) -> None:
    """Keep `traced` for later inits with `key`, unless later inits would share its
    objects: a NumPy array init assigned (mutable), or an array the trace computed and
    returns as it is (a constant, which a donation would delete); or unless its
    constants are large (a forward pass closing over a big array)."""
    if key is None:
        return
    jaxpr = traced.jaxpr.jaxpr
    constants = sum(getattr(c, "nbytes", 0) for c in traced.jaxpr.consts)
    leaves = [*traced.skeleton.leaves, *traced.skeleton.inter_leaves]
    constvars = set(jaxpr.constvars)
    shared = any(isinstance(leaf, np.ndarray) for leaf in leaves) or any(
        v in constvars for v in jaxpr.outvars if isinstance(v, jex_core.Var)
    )
    if shared or constants > _MAX_CONSTANT_BYTES:
        return
    with _lock:
        _traces[key] = traced
        while len(_traces) > _CAPACITY:
            _traces.popitem(last=False)


# Traces whose result was checked complete (no placeholder or Initializer left): the
# same for every init they serve, so checked once.
_complete: weakref.WeakSet[Any] = weakref.WeakSet()


def known_complete(traced: Any) -> bool:
    """Whether an init of `traced` was found to leave nothing uninitialized."""
    return traced in _complete


def mark_complete(traced: Any) -> None:
    _complete.add(traced)


class _NotKept(Exception):
    pass


def static_numbers(tree: Any) -> tuple[Hashable, ...]:
    """The numbers among the static fields of the modules in `tree`, with their types
    and signs (without asking any other static value for its repr, which may be slow):
    a treedef compares `1`, `1.0` and `True` (and `0.0`, `-0.0`) equal."""
    found: list[Hashable] = []

    def visit(node: Any) -> None:
        fields = _fields_of(type(node))
        if fields is not None:
            # Read from the instance's dict, not through `eqx.Module.__getattribute__`
            # (about 1 us an attribute); a field left at its class default is not there.
            stored = node.__dict__
            for name, static in fields:
                value = stored[name] if name in stored else getattr(node, name, None)
                if static:
                    found.append(_number_key(value))
                else:
                    visit(value)
        elif isinstance(node, list | tuple):
            for child in node:
                visit(child)
        elif isinstance(node, dict):
            for child in node.values():
                visit(child)

    visit(tree)
    return tuple(found)


@functools.lru_cache(maxsize=4096)
def _fields_of(cls: type) -> tuple[tuple[str, bool], ...] | None:
    """The fields of an `eqx.Module` class, each with whether it is static; `None` for
    any other class."""
    if not issubclass(cls, eqx.Module):
        return None
    return tuple((f.name, bool(f.metadata.get("static", False))) for f in dataclasses.fields(cls))


def _number_key(value: Any) -> Hashable:
    if isinstance(value, bool | int | float | complex):
        return (type(value), repr(value))
    if isinstance(value, tuple):
        return tuple(_number_key(v) for v in value)
    return None  # compared by the treedef


def _leaf_key(leaf: Any) -> Hashable:
    if isinstance(leaf, jax.ShapeDtypeStruct):
        return ("spec", leaf.shape, np.dtype(leaf.dtype), leaf.weak_type, leaf.sharding)
    if isinstance(leaf, (jax.Array, np.ndarray, np.generic, jax.core.Tracer)):
        raise _NotKept  # values the trace may read
    return value_key(leaf)


def value_key(leaf: Any) -> Hashable:
    """A non-array leaf as kept traces tell leaves apart: numbers by type and repr
    (`0.0` and `-0.0`, `1` and `True` are equal, but trace differently)."""
    if isinstance(leaf, bool | int | float | complex):
        return (type(leaf), repr(leaf))
    return (type(leaf), leaf)


def _key_kind(key: Any) -> Hashable:
    if isinstance(key, jax.core.Tracer):
        raise _NotKept
    return (key.dtype, key.shape)


_CONFIGURATION = (  # JAX options that change what a trace gives
    "jax_enable_x64",
    "jax_default_prng_impl",
    "jax_threefry_partitionable",
    "jax_numpy_dtype_promotion",
    "jax_default_matmul_precision",
)


def _configuration() -> Hashable:
    return tuple(getattr(jax.config, name, None) for name in _CONFIGURATION)
