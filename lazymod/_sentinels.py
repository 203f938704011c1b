"""The two things a lazy module may hold in place of an array: `Initializer`s and
placeholders. Both are pytrees with no leaves, so a module holding them can still be
passed through `jax.jit`, `eqx.filter_jit` or `jax.tree_util` functions; they are
replaced when `lazymod.init` runs."""

import dataclasses
import functools
from collections.abc import Callable
from typing import Any

import equinox as eqx
import jax
import jax.tree_util as jtu

from ._paths import KeyPath


class Initializer(eqx.Module):
    """A field value that `lazymod.init` replaces with `fn(key)`.

    The key is drawn from the RNG stream `stream` and derived from the field's path in
    the tree, so adding or removing other fields never changes the value this one gets.
    Initializers run first, before any `rng_init` hook and before the forward pass.

    **Arguments:**

    - `fn`: a function `key -> array`, for example
        `lambda key: jax.random.uniform(key, (1,))`.
    - `stream`: the name of the RNG stream the key comes from (default `"params"`). A
        stream that `lazymod.init` was not given a key for falls back to `"params"`.
    - `partition`: optional, how to shard the array over a device mesh: one entry per
        axis, a mesh axis name, a tuple of names or `None` (as in
        `jax.sharding.PartitionSpec`). Read by `lazymod.init(..., sharding=mesh)`, as
        Flax's `with_partitioning` is; ignored otherwise.

    !!! example

        ```python
        import jax
        import lazymod as lm

        class Scale(lm.Module):
            a: jax.Array | lm.Initializer

            def __init__(self):
                self.a = lm.Initializer(lambda key: jax.random.uniform(key, shape=(1,)))

        module = Scale().init(42)
        assert module.a.shape == (1,)
        ```
    """

    fn: Callable[[Any], jax.Array] = eqx.field(static=True)
    stream: str = eqx.field(static=True, default="params")
    partition: tuple[str | tuple[str, ...] | None, ...] | None = eqx.field(
        static=True, default=None, converter=lambda p: _as_partition(p)
    )

    def __check_init__(self) -> None:
        if not callable(self.fn):
            raise TypeError(
                f"lazymod.Initializer(fn) needs a function key -> array; got "
                f"{type(self.fn).__name__}."
            )
        if not isinstance(self.stream, str):
            raise TypeError(
                f"lazymod.Initializer(..., stream=...) must be a str; got "
                f"{type(self.stream).__name__}."
            )
        if self.partition is not None and not isinstance(self.partition, tuple):
            raise TypeError(
                "lazymod.Initializer(..., partition=...) takes a sequence with one entry "
                "per array axis (a mesh axis name, a tuple of names, or None), like "
                f"('data', None); got {self.partition!r}."
            )
        if self.partition is not None and not all(
            axis is None
            or isinstance(axis, str)
            or (isinstance(axis, tuple) and all(isinstance(a, str) for a in axis))
            for axis in self.partition
        ):
            raise TypeError(
                "lazymod.Initializer(..., partition=...) takes one entry per array axis: a "
                f"mesh axis name, a tuple of names, or None; got {self.partition!r}."
            )


def _as_partition(partition: Any) -> Any:
    """`partition=` as a tuple; anything that is not a sequence is left for
    `Initializer.__check_init__` to refuse with a clear message."""
    if partition is None or isinstance(partition, str):
        return partition
    try:
        return tuple(partition)
    except TypeError:
        return partition


class Placeholder(eqx.Module):
    """The value of a field that will be set during `lazymod.init`. Made by
    [`lazymod.lazy`][]."""

    def __repr__(self) -> str:
        return "lazy()"


_PLACEHOLDER = Placeholder()


@dataclasses.dataclass(frozen=True)
class Tag:
    """Where a module sits in the working copy of one running `lazymod.init`: the
    number of that init and the module's path. Hashable, so it can be static."""

    init: int
    path: KeyPath


class TaggedPlaceholder(Placeholder):
    """A placeholder in the working copy of a running `lazymod.init`, tagged with its
    module's path. The tag is static, so it survives the copies a forward pass makes
    of the module (`eqx.tree_at`, `eqx.filter_vmap`, `eqx.nn.Shared`): init knows
    where such a copy sits without tracking objects."""

    tag: Tag = eqx.field(static=True)


def lazy() -> Any:
    """A placeholder for a field that is set during `lazymod.init`, by `rng_init` or by
    an `if self.initializing():` block. Use it as the field's default.

    **Returns:**

    A placeholder. Calling a module that still holds one raises
    [`lazymod.UninitializedError`][].

    !!! example

        ```python
        import jax
        import jax.numpy as jnp
        import lazymod as lm

        class Dense(lm.Module):
            features_out: int
            w: jax.Array = lm.lazy()

            def __call__(self, x):
                if self.initializing():
                    self.w = jax.random.uniform(
                        key=lm.next_key(), shape=[x.shape[-1], self.features_out]
                    )
                return x @ self.w

        dense = lm.init(Dense(3), 0, jax.ShapeDtypeStruct((5,), jnp.float32))
        assert dense.w.shape == (5, 3)
        ```
    """
    return _PLACEHOLDER


def field_items(module: Any) -> list[tuple[str, Any]]:
    """The `(name, value)` of every dataclass field of `module`, including a field left
    at its class-level default (which is not in the instance's `__dict__`)."""
    return [(f.name, getattr(module, f.name, None)) for f in dataclasses.fields(module)]


def is_sentinel(x: Any) -> bool:
    """True for an `Initializer` or a placeholder."""
    return isinstance(x, (Initializer, Placeholder))


def sentinels_with_paths(tree: Any) -> list[tuple[KeyPath, Any]]:
    """Every `Initializer` and placeholder in `tree`, with its path, including those
    a module holds as a class-level field default (`x: Array = lm.lazy()` left unset
    by a custom `__init__`), which flattening the module does not show."""
    return [(path, sentinel) for path, sentinel, _, _ in _sentinel_sites(tree)]


def default_sentinels_with_paths(tree: Any) -> list[tuple[KeyPath, Any, str, Any]]:
    """`(path, module, field name, sentinel)` for every sentinel that a module in `tree`
    holds as a class-level field default only."""
    return [
        (path, owner, name, sentinel)
        for path, sentinel, owner, name in _sentinel_sites(tree)
        if owner is not None
    ]


def _sentinel_sites(tree: Any) -> list[tuple[KeyPath, Any, Any, str]]:
    """`(path, sentinel, owner, field name)` for every sentinel in `tree`; `owner` is
    the module holding it as a class-level default, `None` for a sentinel that is a
    leaf of the tree."""
    found: list[tuple[KeyPath, Any, Any, str]] = []

    def visit(node: Any, path: KeyPath) -> None:
        def stop(x: Any) -> bool:
            return x is not node and (is_sentinel(x) or isinstance(x, eqx.Module))

        for child_path, leaf in jtu.tree_leaves_with_path(node, is_leaf=stop):
            if is_sentinel(leaf):
                found.append((path + child_path, leaf, None, ""))
            elif isinstance(leaf, eqx.Module) and leaf is not node:
                visit(leaf, path + child_path)
        for name, value in _default_sentinels(node):
            found.append((path + (jtu.GetAttrKey(name),), value, node, name))

    visit(tree, ())
    return found


def _default_sentinels(node: Any) -> list[tuple[str, Any]]:
    if not (isinstance(node, eqx.Module) and dataclasses.is_dataclass(node)):
        return []
    assigned = vars(node)
    return [(name, value) for name, value in _class_sentinels(type(node)) if name not in assigned]


@functools.cache
def _class_sentinels(cls: type) -> tuple[tuple[str, Any], ...]:
    """The fields of `cls` whose class-level default is a sentinel."""
    return tuple(
        (f.name, getattr(cls, f.name))
        for f in dataclasses.fields(cls)
        if is_sentinel(getattr(cls, f.name, None))
    )


def is_initialized(tree: Any) -> bool:
    """True if `tree` holds no `Initializer` and no placeholder anywhere: it is ready to
    be called, trained and serialised.

    **Arguments:**

    - `tree`: any pytree, usually a module.

    !!! example

        ```python
        import jax
        import jax.numpy as jnp
        import lazymod as lm

        class Bias(lm.Module):
            b: jax.Array = lm.lazy()

            def __call__(self, x):
                if self.initializing():
                    self.b = jnp.zeros(x.shape)
                return x + self.b

        assert not lm.is_initialized(Bias())
        assert lm.is_initialized(lm.init(Bias(), 0, jnp.ones(3)))
        ```
    """
    return not sentinels_with_paths(tree)
