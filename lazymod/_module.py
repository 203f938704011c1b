"""`lazymod.Module`: an `equinox.Module` that can be initialized lazily."""

import dataclasses
import functools
import sys
from collections.abc import Callable
from typing import Any, TYPE_CHECKING

import equinox as eqx
import jax.tree_util as jtu

from ._context import current_context
from ._errors import UninitializedError
from ._paths import display_path
from ._sentinels import field_items, is_sentinel


# Methods of `Module` itself, which must not be tracked (see `_track`).
_UNTRACKED = frozenset({"init", "initializing", "rng_init"})


class Module(eqx.Module):
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
        from ._init import init

        return init(self, key, *args, **kwargs)

    def initializing(self) -> bool:
        """True while `lazymod.init` runs this module's `rng_init` or its forward pass;
        False at every other time, including every call after init.

        Inside `if self.initializing():` the module may assign its own fields and draw
        keys with [`lazymod.next_key`][].
        """
        context = current_context()
        return context is not None and context.phase != "initializers" and context.owns(self)

    def __str__(self) -> str:
        # `jax.vmap(module)` and `jax.jit(module)` call `str()` on the module for their
        # debug info, and keep it only if it names a built-in function. During init a
        # module holds tracers, and pretty-printing them took a fifth of the trace of a
        # Transformer; JAX gets the same "<unknown>" for a short string.
        frame = sys._getframe(1)
        for _ in range(3):  # past a decorator (jaxtyping's import hook adds one)
            if frame is None:
                break
            if frame.f_code.co_name == "fun_sourceinfo":
                return f"<lazymod module {type(self).__name__}>"
            frame = frame.f_back
        return repr(self)

    def rng_init(self) -> None:
        """Hook run by `lazymod.init` after every field `Initializer` and before the
        forward pass, for values that need keys but no input shapes. Override it and
        assign fields here; [`lazymod.next_key`][] gives keys. It does nothing by
        default.

        Modules run it children first (in field order), then their parent, so a parent
        sees its submodules' `rng_init` results.
        """

    def _materialize(self) -> Any:
        """What this module becomes in the tree `lazymod.init` returns; by default
        itself. `lazymod.nn` layers override it to become the Equinox layer they built,
        so that a materialized layer *is* an `equinox.nn` layer. Called once init has
        run the forward pass, children first; a module still holding placeholders (a
        partial init) should return itself."""
        return self

    if not TYPE_CHECKING:  # type checkers keep treating modules as frozen

        def __setattr__(self, name: str, value: Any) -> None:
            context = current_context()
            if context is not None and context.phase != "initializers" and context.owns(self):
                if name not in _field_names(type(self)):
                    raise AttributeError(
                        f"{type(self).__name__} has no field {name!r}. Declare it in the "
                        f"class body (for example `{name}: jax.Array = lazymod.lazy()`) "
                        "before assigning it during init."
                    )
                object.__setattr__(self, name, value)
                original = context.original(self)
                if original is not self:  # a copy made during the forward pass
                    object.__setattr__(original, name, value)
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


@functools.cache
def _field_names(cls: type) -> frozenset[str]:
    return frozenset(f.name for f in dataclasses.fields(cls))


def _is_trackable(name: str, value: object) -> bool:
    if not callable(value) or isinstance(value, (staticmethod, classmethod, type)):
        return False
    if getattr(value, "__lazymod_tracked__", False) or name in _UNTRACKED:
        return False
    return name == "__call__" or not name.startswith("_")


def _track(fn: Callable[..., Any]) -> Callable[..., Any]:
    """Wrap a method so that, while `lazymod.init` runs it on a working copy, keys drawn
    inside belong to this module and its output can be captured; at any other time it
    refuses to run on a module that is not initialized."""

    @functools.wraps(fn)
    def method(self: Any, *args: Any, **kwargs: Any) -> Any:
        context = current_context()
        if context is None or not context.owns(self):
            _check_initialized(self)
            return fn(self, *args, **kwargs)
        with context.running(self):
            out = fn(self, *args, **kwargs)
        if context.intermediates is not None and fn.__name__ == "__call__":
            context.capture(self, out)
        return out

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
        names = ", ".join(repr(name) for name in pending)
        plural = "s" if len(pending) > 1 else ""
        raise UninitializedError(
            f"{_locate(module)} ({type(module).__name__}): field{plural} {names} "
            f"{'are' if plural else 'is'} not initialized; call "
            "`model = lazymod.init(model, key, *inputs)` first and use the model it "
            "returns."
        )


def _locate(module: Any) -> str:
    """The path of `module` in the outermost module that is running it, found from the
    calling frames (only ever used to write an error message)."""
    callers = []
    frame = sys._getframe(1)
    while frame is not None:
        candidate = frame.f_locals.get("self")
        if (
            isinstance(candidate, eqx.Module)
            and candidate is not module
            and not type(candidate).__module__.startswith("equinox._")  # BoundMethod
        ):
            callers.append(candidate)
        frame = frame.f_back
    for caller in reversed(callers):
        for path, leaf in jtu.tree_leaves_with_path(caller, is_leaf=lambda x: x is module):
            if leaf is module:
                return display_path(caller, path)
    return type(module).__name__
