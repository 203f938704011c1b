"""Calls traced once per kind, while an init traces: a model of many alike layers
pays for one trace of each kind of layer's constructor and forward pass.

`call_kept(function, *args)` is `function(*args)` staged as one call of a `jax.jit`
whose trace is kept per *kind* of call: the function, the structure and non-array
leaves of the arguments (numbers with their types), and the shapes and dtypes of
their arrays, which are the only inputs of the call. It is `eqx.filter_jit`'s idea
with less to do per call, which matters here: it is called once per layer.
"""

import collections
import functools
import threading
from collections.abc import Callable, Hashable
from typing import Any

import equinox as eqx
import jax
import jax.tree_util as jtu

from ._cache import static_numbers, value_key


_KINDS_KEPT = 4096  # kinds of call remembered, least recently used first out


class _Kind:
    """One kind of call: how to rebuild the arguments from their arrays, and (once
    traced) how to rebuild the output from its arrays."""

    def __init__(self, function: Callable[..., Any], treedef: Any, leaves: list[Any]):
        self.function = function
        self.treedef = treedef
        self.leaves = leaves  # the non-array leaves; None where the arrays go
        self.positions = [i for i, leaf in enumerate(leaves) if leaf is None]
        self.output: tuple[Any, list[Any]] | None = None  # its treedef and non-arrays


_kinds: collections.OrderedDict[Hashable, _Kind] = collections.OrderedDict()
_lock = threading.Lock()


_forgetters: list[Callable[[], None]] = []


def on_forget(forget: Callable[[], None]) -> None:
    """Have `forget` called with every `forget_kept_calls()` (a memo by kind of call)."""
    _forgetters.append(forget)


def forget_kept_calls() -> None:
    """Forget every kept trace of a kind of call (by `lazymod.clear_caches`)."""
    with _lock:
        _kinds.clear()
        _traced.clear_cache()
        for forget in _forgetters:
            forget()


def kind_of(function: Callable[..., Any], tree: Any) -> tuple[Hashable, Any, list] | None:
    """The kind of the call `function(tree)`, with the treedef and leaves of `tree`;
    `None` if a leaf cannot be hashed, or is a concrete or weakly typed array (whose
    value the call might read)."""
    leaves, treedef = jtu.tree_flatten(tree)
    parts: list[Hashable] = []
    for leaf in leaves:
        if eqx.is_array(leaf):
            if getattr(leaf, "weak_type", False) or not isinstance(leaf, jax.core.Tracer):
                return None
            parts.append((leaf.shape, leaf.dtype))
        else:
            parts.append(value_key(leaf))
    kind = (function, treedef, static_numbers(tree), tuple(parts))
    try:
        hash(kind)
    except TypeError:
        return None
    return kind, treedef, leaves


def call_kept(function: Callable[..., Any], *args: Any) -> Any:
    """`function(*args)`, traced once per kind of call (see the module's docstring);
    the plain call where the kind cannot be told (`kind_of` is `None`)."""
    found = kind_of(function, args)
    if found is None:
        return function(*args)
    kind, treedef, leaves = found
    with _lock:
        known = _kinds.get(kind)
        if known is None:
            template = [None if eqx.is_array(leaf) else leaf for leaf in leaves]
            known = _kinds[kind] = _Kind(function, treedef, template)
            while len(_kinds) > _KINDS_KEPT:
                _kinds.popitem(last=False)
        else:
            _kinds.move_to_end(kind)
    arrays = [leaf for leaf in leaves if eqx.is_array(leaf)]
    outputs = _traced(_Key(kind, known), arrays)
    if known.output is None:  # traced for a kind forgotten since: call it as it is
        return function(*args)
    out_treedef, out_leaves = known.output
    out_leaves = list(out_leaves)
    for i, value in zip([i for i, leaf in enumerate(out_leaves) if leaf is None], outputs):
        out_leaves[i] = value
    return jtu.tree_unflatten(out_treedef, out_leaves)


class _Key:
    """A kind as `jax.jit`'s static argument: hashed and compared by the kind, and
    carrying what rebuilds the call."""

    def __init__(self, kind: Hashable, known: _Kind):
        self.kind, self.known = kind, known
        self._hash = hash(kind)

    def __hash__(self) -> int:
        return self._hash

    def __eq__(self, other: object) -> bool:
        return isinstance(other, _Key) and self.kind == other.kind


@functools.partial(jax.jit, static_argnums=0)
def _traced(key: _Key, arrays: list[jax.Array]) -> list[Any]:
    known = key.known
    leaves = list(known.leaves)
    for i, array in zip(known.positions, arrays):
        leaves[i] = array
    out = known.function(*jtu.tree_unflatten(known.treedef, leaves))
    out_leaves, out_treedef = jtu.tree_flatten(out)
    known.output = (out_treedef, [None if eqx.is_array(x) else x for x in out_leaves])
    return [x for x in out_leaves if eqx.is_array(x)]
