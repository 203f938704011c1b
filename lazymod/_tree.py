"""Walks over a tree of modules that init and the lazy layers share: the lazy modules
with their paths, the check that no lazy module sits at two places, and what a tree
becomes in the result of init (`init_result`)."""

from collections.abc import Callable
from typing import Any

import equinox as eqx
import jax.tree_util as jtu

from ._errors import InitError
from ._methods import call_method
from ._paths import display_path, KeyPath
from ._sentinels import is_sentinel, lazy, sentinels_with_paths, TaggedPlaceholder


class LazyNode(eqx.Module):
    """The base of `lazymod.Module`, as init's engine sees it: a node of the tree that
    init tags with its path, runs the `rng_init()` of, and replaces by its
    `_init_result()` in the tree it returns. (It lets the engine recognise modules
    without importing `lazymod.Module`, whose `init` method calls the engine.)"""

    def _init_result(self) -> Any:
        """What this module becomes in the tree `lazymod.init` returns; by default
        itself. `lazymod.nn` layers override it to become the Equinox layer they built,
        so that a built layer *is* an `equinox.nn` layer. A module still holding
        placeholders (a partial init) should return itself."""
        return self


# Equinox layers that init swaps, in its working copy only, for a lazymod stand-in that
# becomes the same Equinox layer in the result: an `eqx.nn.Dropout` (one built by hand,
# or one a previous init returned) then draws its key at init as `lm.nn.Dropout` does.
# `lazymod.nn` registers them when it is imported.
STAND_INS: dict[type, Callable[[Any], Any]] = {}


def stand_in_during_init(cls: type, make: Callable[[Any], Any]) -> None:
    """Have init run `make(layer)` in place of every `cls` layer (exactly that type) of
    the tree it initializes; `make(layer)._init_result()` must equal `layer`."""
    STAND_INS[cls] = make


def lazy_modules(tree: Any) -> list[tuple[KeyPath, Any]]:
    """Every `lazymod.Module` in `tree` with its path, children before their parent
    and siblings in field order (the order `rng_init` runs in)."""
    found: list[tuple[KeyPath, Any]] = []

    def visit(node: Any, path: KeyPath) -> None:
        for child_path, child in _children(node):
            visit(child, path + child_path)
        if isinstance(node, LazyNode):
            found.append((path, node))

    visit(tree, ())
    return found


def _children(node: Any) -> list[tuple[KeyPath, Any]]:
    """The modules directly below `node` (through containers and plain fields)."""

    def stop(x: Any) -> bool:
        return x is not node and isinstance(x, eqx.Module)

    return [
        (path, child)
        for path, child in jtu.tree_leaves_with_path(node, is_leaf=stop)
        if isinstance(child, eqx.Module) and child is not node and not is_sentinel(child)
    ]


def is_lazy_layer(module: Any) -> bool:
    """Whether `module` is a `lazymod.nn` layer, which init replaces by the Equinox
    layer it builds (its one lazy field, `layer`, is internal)."""
    return getattr(type(module), "__lazymod_layer__", False)


def check_no_lazy_module_twice(root: Any) -> None:
    """A pytree holds a separate copy of a module at each place it appears, so a lazy
    module placed twice would silently become two layers with different weights."""
    seen: dict[int, KeyPath] = {}

    def visit(node: Any, path: KeyPath) -> None:
        for child_path, child in _children(node):
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


def _replaced(node: Any) -> bool:
    return isinstance(node, TaggedPlaceholder) or (
        isinstance(node, LazyNode) and type(node)._init_result is not LazyNode._init_result
    )


def init_result(tree: Any) -> Any:
    """`tree` as init returns it: every lazy layer replaced by the Equinox layer it
    built (its `_init_result()`, recursively), and every placeholder of a running init
    by a plain `lazymod.lazy()` (a partial init)."""

    def replace(node: Any) -> Any:
        if isinstance(node, TaggedPlaceholder):
            return lazy()
        if not _replaced(node):
            return node
        out = call_method(node, "_init_result")
        if out is not node:
            return init_result(out)
        return jtu.tree_map(replace, node, is_leaf=lambda x: x is not node and _replaced(x))

    return jtu.tree_map(replace, tree, is_leaf=_replaced)
