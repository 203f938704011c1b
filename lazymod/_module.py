"""`lazymod.Module`: an `equinox.Module` that can be initialized lazily."""

import dataclasses
import functools
import inspect
import types
from collections.abc import Callable
from typing import Any, TYPE_CHECKING

import jax.tree_util as jtu

from ._errors import UninitializedError
from ._init import init
from ._paths import display_path
from ._running import current_context
from ._sentinels import field_items, is_sentinel
from ._tree import is_lazy_layer, LazyNode


# Methods of `Module` itself, which must not be tracked (see `_track`).
_UNTRACKED = frozenset({"init", "initializing", "rng_init"})


class Module(LazyNode):
    """Base class for lazy modules. Subclass it as you would `equinox.Module`: it is a
    frozen dataclass and a pytree, and it stays one after `lazymod.init`.

    Fields may hold [`lazymod.lazy`][] placeholders or [`lazymod.Initializer`][]s until
    `lazymod.init` replaces them. Three mechanisms fill them, in this order: field
    `Initializer`s, the `rng_init` hook, then the forward pass with
    `if self.initializing():` blocks. Inside `rng_init` and those blocks, and only
    there, `self.field = value` is allowed: it writes to a working copy that init owns,
    never to the module you passed in.

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

        model = Linear(3).init(0, jax.ShapeDtypeStruct((4,), jnp.float32))
        assert model.w.shape == (4, 3)
        ```
    """

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        for name, value in list(vars(cls).items()):
            if _is_trackable(name, value):
                setattr(cls, name, _track(value))

    def init(self, key: Any, /, *args: Any, **kwargs: Any) -> Any:
        """`module.init(key, *args, **kwargs)` is `lazymod.init(module, key, *args,
        **kwargs)`: see [`lazymod.init`][]."""
        return init(self, key, *args, **kwargs)

    def initializing(self) -> bool:
        """True while `lazymod.init` runs this module's `rng_init` or its calls in the
        forward pass; False at every other time, including every call after init.

        Inside `if self.initializing():` the module may assign its own fields and draw
        keys with [`lazymod.next_key`][]; a call that never asks `initializing()` is
        frozen, during init as after it. A module is built once: what a later call in
        the same init assigns to a field an earlier call set is dropped, and init
        never replaces a field that held an array when it started.
        """
        context = current_context()
        if context is None:
            return False
        path = context.path_of(self)
        return path is not None and context.initializing(path)

    # `jax.vmap(module)` and `jax.jit(module)` read the source info of the function they
    # transform from `__code__` and `__name__`; without them JAX calls `str()` on the
    # module and keeps nothing of it, after pretty-printing the whole tree (during init,
    # full of tracers: a fifth of the trace of a Transformer).
    @property
    def __code__(self) -> types.CodeType:
        """The code of this module's `__call__`."""
        return inspect.unwrap(type(self).__call__).__code__  # pyright: ignore

    @property
    def __name__(self) -> str:  # pyright: ignore[reportIncompatibleVariableOverride]
        """The name of this module's class."""
        return type(self).__name__

    def rng_init(self) -> None:
        """Hook run by `lazymod.init` after every field `Initializer` and before the
        forward pass, for values that need keys but no input shapes. Override it and
        assign fields here; [`lazymod.next_key`][] gives keys. It does nothing by
        default.

        Modules run it children first (in field order), then their parent, so a parent
        sees its submodules' `rng_init` results.
        """

    if not TYPE_CHECKING:  # type checkers keep treating modules as frozen

        def __setattr__(self, name: str, value: Any) -> None:
            context = current_context()
            if context is not None:
                path = context.path_of(self)
                if path is not None and context.may_assign(path):
                    context.assign(self, path, name, value)
                    return
            try:
                super().__setattr__(name, value)
            except dataclasses.FrozenInstanceError:
                raise dataclasses.FrozenInstanceError(
                    f"cannot assign to field {name!r} of {type(self).__name__}: modules "
                    "are frozen. Fields can be assigned in `__init__`, and while "
                    "lazymod.init runs, in `rng_init` and in `if self.initializing():` "
                    "blocks. To change a field afterwards, build a new module with "
                    "`eqx.tree_at`."
                ) from None


def untracked(fn: Callable[..., Any]) -> Callable[..., Any]:
    """Mark a method that works on a module before init (it builds a new module, as
    `partitioned` does): it is not run as a part of init, nor refused on a lazy module."""
    fn.__lazymod_untracked__ = True  # pyright: ignore[reportFunctionMemberAccess]
    return fn


def _is_trackable(name: str, value: object) -> bool:
    if not callable(value) or isinstance(value, (staticmethod, classmethod, type)):
        return False
    if getattr(value, "__lazymod_untracked__", False):
        return False
    if getattr(value, "__lazymod_tracked__", False) or name in _UNTRACKED:
        return False
    return name == "__call__" or not name.startswith("_")


def _track(fn: Callable[..., Any]) -> Callable[..., Any]:
    """Wrap a method so that, while `lazymod.init` runs it on a module of its working
    copy, init knows which module runs (its keys, its first call, its output); at any
    other time it refuses to run on a module that is not initialized."""

    @functools.wraps(fn)
    def method(self: Any, *args: Any, **kwargs: Any) -> Any:
        context = current_context()
        path = None if context is None else context.path_of(self)
        if path is not None:
            assert context is not None
            return context.call(self, path, fn, args, kwargs)
        _check_initialized(self)
        try:
            return fn(self, *args, **kwargs)
        except UninitializedError as error:
            _locate(error, self)
            raise

    method.__lazymod_tracked__ = True  # pyright: ignore[reportFunctionMemberAccess]
    return method


def _pending_fields(module: Any) -> list[str]:
    pending = []
    for name, value in field_items(module):
        if isinstance(value, (list, tuple)):
            items = value
        elif isinstance(value, dict):
            items = value.values()
        else:
            items = (value,)
        if any(is_sentinel(item) for item in items):
            pending.append(name)
    return pending


def _check_initialized(module: Any) -> None:
    pending = _pending_fields(module)
    if pending:
        message = _uninitialized_message(type(module).__name__, module, pending)
        raise UninitializedError(message, module)


def _uninitialized_message(where: str, module: Any, pending: list[str]) -> str:
    if is_lazy_layer(module):
        return (
            f"{where} ({type(module).__name__}): this lazy layer is not initialized "
            "(no init has built it); call "
            "`model = lazymod.init(model, key, *inputs)` first (with inputs that reach "
            "this layer) and use the model it returns."
        )
    names = ", ".join(repr(name) for name in pending)
    plural = "s" if len(pending) > 1 else ""
    return (
        f"{where} ({type(module).__name__}): field{plural} {names} "
        f"{'are' if plural else 'is'} not initialized; call "
        "`model = lazymod.init(model, key, *inputs)` first and use the model it "
        "returns."
    )


def _locate(error: UninitializedError, caller: Any) -> None:
    """Name the uninitialized module by its path in `caller`, a module whose method
    was running when it was called. Each enclosing tracked call does this as the
    error passes, so the outermost one names the full path."""
    module = error.module
    if module is None:
        return
    for path, leaf in jtu.tree_leaves_with_path(caller, is_leaf=lambda x: x is module):
        if leaf is module and path:
            where = display_path(caller, path)
            error.args = (_uninitialized_message(where, module, _pending_fields(module)),)
            return
