"""The state of one running `lazymod.init`: its keys, the paths of the modules it is
initializing, and which of them is running. Kept in a `ContextVar`, so inits in
different threads (or asyncio tasks) never see each other's state."""

import contextlib
from collections.abc import Iterator
from contextvars import ContextVar
from typing import Any

import jax
from jax.extend import core as jex_core
from jaxtyping import PRNGKeyArray

from ._errors import InitError
from ._keys import DEFAULT_STREAM, derive_key
from ._paths import KeyPath, path_str
from ._sentinels import ClaimedPlaceholder, field_items, Placeholder


class InitContext:
    """Everything one call of `lazymod.init` shares with the modules it runs."""

    def __init__(self, keys: dict[str, PRNGKeyArray], capture: bool):
        self.keys = keys
        self.phase = "initializers"  # then "rng_init", then "call"
        self.paths: dict[int, KeyPath] = {}  # id(working module) -> its path
        self.modules: list[Any] = []  # keeps the ids above alive and unique
        self.owners: dict[int, Any] = {}  # id(placeholder token) -> the module it is in
        self.originals: dict[int, Any] = {}  # id(copy of a working module) -> the module
        self.stack: list[Any] = []  # the modules whose code is running, innermost last
        self.counters: dict[tuple[int, str, str], int] = {}
        self.intermediates: dict[str, Any] | None = {} if capture else None
        self.trace: Any = None  # the trace init runs in; set when it starts
        # Traces of transformations applied around init (eqx.filter_jit(lm.init),
        # jax.eval_shape, ...): their tracers may sit in the result.
        self.outer_traces: list[Any] = []
        self.root_name = "module"  # the type name of the tree being initialized

    def release(self) -> None:
        """Forget the working copies and captured outputs, which may hold tracers."""
        self.paths.clear()
        self.modules.clear()
        self.owners.clear()
        self.originals.clear()
        self.stack.clear()
        self.intermediates = None
        self.trace = None
        self.outer_traces = []

    def is_foreign_tracer(self, value: Any) -> bool:
        """True for a tracer of a transformation that the model itself applied during
        init (a `jax.vmap` or `jax.lax.scan` in its forward pass): it must not escape."""
        if not isinstance(value, jax.core.Tracer):
            return False
        trace = getattr(value, "_trace", self.trace)
        return trace is not self.trace and all(trace is not t for t in self.outer_traces)

    def note_outer_traces(self, inputs: Any) -> None:
        """Remember the traces around init: the current one and its parents, and those
        of any tracer among the inputs (the module's arrays under `jax.jit`)."""
        trace = current_trace()
        while trace is not None and all(trace is not t for t in self.outer_traces):
            self.outer_traces.append(trace)
            trace = getattr(trace, "parent_trace", None)
        for leaf in jax.tree.leaves(inputs):
            trace = getattr(leaf, "_trace", None)
            if isinstance(leaf, jax.core.Tracer) and all(trace is not t for t in self.outer_traces):
                self.outer_traces.append(trace)

    def add_module(self, module: Any, path: KeyPath) -> None:
        if id(module) not in self.paths:
            self.paths[id(module)] = path
            self.modules.append(module)

    def claim_placeholders(self, module: Any) -> None:
        """Mark the placeholders in `module`'s fields as this init's, so that a copy of
        `module` made during the forward pass is recognised (see `owns`)."""
        for name, value in field_items(module):
            if type(value) is Placeholder:
                token = object()
                self.owners[id(token)] = module
                self.modules.append(token)
                object.__setattr__(module, name, ClaimedPlaceholder(token))

    def owns(self, module: Any) -> bool:
        """True for a working module, and for a copy of one made while the forward pass
        runs (it is then an alias: what it is assigned is written to the original)."""
        if id(module) in self.paths:
            return True
        if self.phase != "call":
            return False
        for _, value in field_items(module):
            if isinstance(value, ClaimedPlaceholder) and id(value.token) in self.owners:
                original = self.owners[id(value.token)]
                if type(original) is type(module):
                    self.paths[id(module)] = self.paths[id(original)]
                    self.originals[id(module)] = original
                    self.modules.append(module)
                    return True
        return False

    def original(self, module: Any) -> Any:
        """The working module that `module` is (or is a copy of)."""
        return self.originals.get(id(module), module)

    def root_key(self, stream: str) -> PRNGKeyArray:
        try:
            return self.keys[stream]
        except KeyError:
            pass
        try:
            return self.keys[DEFAULT_STREAM]
        except KeyError:
            raise InitError(
                f"lazymod.init was given keys for the streams {sorted(self.keys)}, but a "
                f"key was drawn from the stream {stream!r} and there is no "
                f"{DEFAULT_STREAM!r} key to fall back to. Add {stream!r} or "
                f"{DEFAULT_STREAM!r} to the dict of keys."
            ) from None

    def next_key(self, stream: str) -> PRNGKeyArray:
        module = self.original(self.stack[-1])
        counter = (id(module), self.phase, stream)
        count = self.counters.get(counter, 0)
        self.counters[counter] = count + 1
        path = self.paths[id(module)]
        return derive_key(self.root_key(stream), stream, "next_key", path, self.phase, count)

    def capture(self, module: Any, output: Any) -> None:
        """Record the output of a submodule's `__call__` (the root is not recorded); a
        module called more than once gets `path#1`, `path#2`, ... for later calls."""
        assert self.intermediates is not None
        path = self.paths[id(module)]
        if not path:
            return
        name = base = path_str(path)
        count = 0
        while name in self.intermediates:
            count += 1
            name = f"{base}#{count}"
        if self.trace is not current_trace():
            output = jax.tree.map(
                lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype) if isinstance(x, jax.Array) else x,
                output,
            )
        self.intermediates[name] = output

    @contextlib.contextmanager
    def running(self, module: Any) -> Iterator[None]:
        self.stack.append(module)
        try:
            yield
        finally:
            self.stack.pop()


def current_trace() -> Any:
    """The JAX trace that operations are staged into right now."""
    with jex_core.take_current_trace() as trace:
        return trace


_current: ContextVar[InitContext | None] = ContextVar("lazymod_init", default=None)


def current_context() -> InitContext | None:
    return _current.get()


@contextlib.contextmanager
def active(context: InitContext) -> Iterator[InitContext]:
    token = _current.set(context)
    try:
        yield context
    finally:
        _current.reset(token)


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


def describe(module: Any) -> str:
    """Where `module` sits in the tree being initialized, as an error message names it
    (`Model.layers[0]`); its type name outside init."""
    context = _current.get()
    if context is None or not context.owns(module):
        return type(module).__name__
    return context.root_name + path_str(context.paths[id(module)], leading_dot=True)


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

    [`lazymod.InitError`][] when called outside `lazymod.init`.

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
    context = _current.get()
    if context is None or not context.stack:
        raise InitError(
            "lazymod.next_key() was called outside lazymod.init. It draws keys only "
            "while init runs, inside `rng_init` or an `if self.initializing():` block; "
            "elsewhere, pass a key explicitly (for example `key=` at call time)."
        )
    return context.next_key(stream)
