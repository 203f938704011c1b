"""The init running now: the `InitContext` of this thread (or asyncio task), and what
modules and layers ask of it: `next_key`, `describe`, `in_init_trace`."""

import contextlib
from collections.abc import Iterator
from contextvars import ContextVar
from typing import Any

import jax
from jax.extend import core as jex_core
from jaxtyping import PRNGKeyArray

from ._context import current_trace, InitContext, Phase
from ._errors import InitError
from ._kept_calls import call_kept
from ._keys import DEFAULT_STREAM
from ._shape_only import staged_here, stand_in


_current: ContextVar[InitContext | None] = ContextVar("lazymod_init", default=None)


def current_context() -> InitContext | None:
    """The init running in this thread (or task), if any."""
    return _current.get()


@contextlib.contextmanager
def _setting(variable: ContextVar[Any], value: Any) -> Iterator[Any]:
    """`variable` set to `value` inside the block (yielded), and reset after it."""
    token = variable.set(value)
    try:
        yield value
    finally:
        variable.reset(token)


def active(context: InitContext) -> contextlib.AbstractContextManager[InitContext]:
    return _setting(_current, context)


@contextlib.contextmanager
def in_init_trace() -> Iterator[None]:
    """Stage operations into init's own trace, even inside a transformation that the
    forward pass applies (`jax.lax.scan`, `jax.vmap`, ...). A layer built from shapes
    and keys only can then be built where it is first called, and its arrays do not
    belong to that transformation."""
    context = _current.get()
    if context is None or context.trace is None or context.trace is current_trace():
        yield
        return
    with jex_core.set_current_trace(context.trace):
        yield


def run_built(layer: Any, *args: Any, **kwargs: Any) -> Any:
    """`layer(*args, **kwargs)`, for a layer init has built. In a staged init (where
    only shapes flow) the call is traced once per layer structure and input shapes
    (`_kept_calls.py`), and the kept trace serves every other layer like it: a model
    of many alike layers pays for one trace of each kind of layer, not of each layer.
    Otherwise, and outside init, it is the plain call."""
    if not staged_init():
        return layer(*args, **kwargs)
    return call_kept(_call_traced_once, layer, args, kwargs)


def _call_traced_once(layer: Any, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
    return layer(*args, **kwargs)


def describe(module: Any) -> str:
    """Where `module` sits in the tree being initialized, as an error message names it
    (`Model.layers[0]`); its type name outside init."""
    context = _current.get()
    path = None if context is None else context.path_of(module)
    if path is None:
        return type(module).__name__
    assert context is not None
    return context.where(path)


def next_key(stream: str = DEFAULT_STREAM) -> PRNGKeyArray:
    """A fresh random key, for use inside `rng_init` or an `if self.initializing():`
    block while `lazymod.init` runs.

    The key is derived from the key given to `lazymod.init` for `stream` (falling back
    to `"params"`), the path of the module that asks, and how many keys that module has
    drawn so far in this phase. Modules elsewhere in the tree never change it.

    **Arguments:**

    - `stream`: the RNG stream to draw from (default `"params"`).

    **Returns:**

    A typed key array, as made by `jax.random.key`.

    **Raises:**

    [`lazymod.InitError`][] when called outside `lazymod.init`, or in a module's
    forward pass while no running call asked `self.initializing()` (the initialized
    model would draw at every call, where there is no key: take `key=` at call time).

    !!! example

        ```python
        import jax
        import lazymod as lm

        class Noise(lm.Module):
            a: jax.Array = lm.lazy()

            def rng_init(self):
                self.a = jax.random.normal(lm.next_key(), shape=(2,))

        assert Noise().init(0).a.shape == (2,)
        ```
    """
    if not isinstance(stream, str):
        raise TypeError(f"lazymod.next_key(stream) takes a str; got {type(stream).__name__}.")
    supplied = _supplied.get()
    if supplied:  # a build traced once, given the keys its first build drew
        drawn_stream, key = supplied.pop(0)
        assert drawn_stream == stream, (drawn_stream, stream)
        return key
    context = _current.get()
    if context is not None and context.phase is Phase.INITIALIZERS:
        raise InitError(
            "lazymod.next_key() was called inside an Initializer's function, which "
            "gets its key as its argument: write lazymod.Initializer(lambda key: ...) "
            "and use that key (or draw several with jax.random.split(key))."
        )
    if context is None or not context.stack:
        raise InitError(
            "lazymod.next_key() was called outside lazymod.init. It draws keys only "
            "while init runs, inside `rng_init` or an `if self.initializing():` block; "
            "elsewhere, pass a key explicitly (for example `key=` at call time)."
        )
    path = context.stack[-1]
    # In a module's method (the stack holds init's own `method` run at the root, then
    # the module calls) that no running call opened with `initializing()`: init could
    # give a key here, but the initialized model, running the same code at every
    # call, could not. Refuse it now rather than at the model's first call.
    if (
        context.phase is Phase.CALL
        and len(context.stack) > 1
        and not any(map(context.may_assign, context.stack))
    ):
        raise InitError(
            f"{context.where(path)}: lazymod.next_key() was called in the forward pass "
            "outside an `if self.initializing():` block, so the initialized model would "
            "call it again at every call, where no key can be drawn. Draw the keys that "
            "build fields inside `if self.initializing():`; for a key that every call "
            "needs (dropout), take a `key=` argument at call time, as Equinox layers do "
            "(lazymod.nn.Dropout draws one from the 'dropout' stream only while init "
            "runs it without one)."
        )
    drawn = _drawn.get()
    if drawn is not None:
        drawn.append(stream)
    return context.next_key(stream)


# The streams of the keys drawn by the code running in `keys_drawn`, in order; the
# keys `next_key` returns, in order, in `keys_supplied`.
_drawn: ContextVar[list[str] | None] = ContextVar("lazymod_drawn", default=None)
_supplied: ContextVar[list[tuple[str, Any]] | None] = ContextVar("lazymod_supplied", default=None)


def keys_drawn() -> contextlib.AbstractContextManager[list[str]]:
    """The streams of the keys `next_key` draws inside this block, in order."""
    return _setting(_drawn, [])


def keys_supplied(keys: list[tuple[str, Any]]) -> contextlib.AbstractContextManager[Any]:
    """Inside this block, `next_key(stream)` returns these `(stream, key)` in order
    (a build traced once for many layers, each drawing its own keys outside it)."""
    return _setting(_supplied, list(keys))


def staged_init() -> bool:
    """Whether an init runs here whose values are staged (only shapes flow)."""
    context = _current.get()
    return context is not None and context.staged


def may_leave_out() -> bool:
    """Whether the forward pass may leave out, here, calls whose outputs are known by
    their shapes and dtypes alone: in a staged init of specs only, not traced again for
    values, in init's own trace or a `jax.vmap` of it, with `jax.jit` on (the stand-in
    is a jitted call, found by its name: `_shape_only.py`)."""
    context = _current.get()
    return (
        context is not None
        and context.staged
        and context.only_specs
        and not context.exact
        and not jax.config.jax_disable_jit  # pyright: ignore[reportAttributeAccessIssue]
        and staged_here(context.trace)
    )


def left_out(output: Any) -> Any:
    """The output of calls that the forward pass left out (`may_leave_out()`), given
    the output of the last call it made, of the same shape and dtype. Init traces again
    with every call made if a value it computes reads this output."""
    assert may_leave_out()
    context = _current.get()
    assert context is not None
    context.left_out = True
    return stand_in(output)
