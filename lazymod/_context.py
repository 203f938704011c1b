"""The state of one running `lazymod.init`, as data keyed by path.

Init works on a copy of the user's tree (the working copy), which it holds while it
runs. Each `lazymod.Module` in it is known by its path: the context maps the working
modules to their paths, and their placeholders are `TaggedPlaceholder`s, whose static
tag survives the copies a forward pass makes (`eqx.filter_vmap`, `eqx.tree_at`). What
`rng_init` and `if self.initializing():` blocks assign is recorded by (path, field);
the working module at that path, which parents read, holds the same value.
`_running.py` keeps the running one in a `ContextVar`, so inits in different threads
never meet.
"""

import contextlib
import dataclasses
import enum
import functools
import itertools
from collections.abc import Callable, Iterator
from typing import Any

import jax
import jax.tree_util as jtu
import numpy as np
from jax.extend import core as jex_core
from jaxtyping import PRNGKeyArray

from ._blame import blame
from ._errors import init_error_like, InitError, UninitializedError
from ._keys import DEFAULT_STREAM, derive_key
from ._paths import describe_inputs, KeyPath, path_str
from ._sentinels import field_items, Placeholder, Tag, TaggedPlaceholder


_numbers = itertools.count()


# How the note on an exception raised inside a module's call during init begins.
_RAISED_IN = "(raised in "

# `capture_intermediates`: `True`, or a filter `fn(module, method_name) -> bool`.
Capture = bool | Callable[[Any, str], bool]


def _calls_only(module: Any, method: str) -> bool:
    """The filter of `capture_intermediates=True`: every `__call__`, as Flax's."""
    del module
    return method == "__call__"


class Phase(enum.Enum):
    """Where a running init is; the values are part of every `next_key` derivation."""

    INITIALIZERS = "initializers"
    RNG_INIT = "rng_init"
    CALL = "call"
    DONE = "done"


class InitContext:
    """Everything one call of `lazymod.init` shares with the modules it runs."""

    def __init__(self, keys: dict[str, PRNGKeyArray], capture: Capture, root_name: str):
        self.number = next(_numbers)  # tells this init's tags from another's
        self.keys = keys
        self.root_name = root_name  # the type name of the tree being initialized
        self.phase = Phase.INITIALIZERS
        self.modules: dict[KeyPath, Any] = {}  # the working copy's lm.Modules
        # The same modules' paths by identity: `modules` holds them, so no id is reused.
        self.paths: dict[int, KeyPath] = {}
        self.record: dict[KeyPath, dict[str, Any]] = {}  # what init assigned
        self.assigned_in: dict[tuple[KeyPath, str], int] = {}  # by which call (0: rng_init)
        self.initializer_fields: set[tuple[KeyPath, str]] = set()  # filled by phase 1
        self.calls: dict[KeyPath, int] = {}  # outermost calls started, by path
        self.running_calls: dict[KeyPath, int] = {}  # calls running now, by path
        # Which outputs to capture: `__call__`'s (capture=True), or a filter's choice.
        self.capture_filter = capture if callable(capture) else _calls_only
        self.captured: dict[tuple[KeyPath, str], int] = {}  # outputs captured, by method
        # Modules whose current outermost call asked `initializing()`: only they may
        # assign in the forward pass, as in an `if self.initializing():` block.
        self.asked: set[KeyPath] = set()
        # The inputs of the first call of each method, by (path, method name).
        self.first_inputs: dict[tuple[KeyPath, str], Any] = {}
        self.stack: list[KeyPath] = []  # the modules whose code runs, innermost last
        self.counters: dict[tuple[KeyPath, Phase, str], int] = {}
        self.intermediates: dict[str, Any] | None = {} if capture else None
        self.raised_in: str | None = None  # the innermost module a call raised in
        self.trace: Any = None  # the trace init runs in; set when it starts
        self.staged = True  # False: values are computed op by op as they are traced
        # Staged, with specs for inputs (`only_specs`), the forward pass may leave out
        # calls whose outputs only shapes need, unless `exact`; `left_out` says
        # whether it did (see _shape_only.py).
        self.only_specs = False
        self.exact = False
        self.left_out = False
        # Traces of transformations applied around init (eqx.filter_jit(lm.init),
        # jax.eval_shape, ...): their tracers may sit in the result.
        self.outer_traces: list[Any] = []

    # --- the working copy ------------------------------------------------------------

    def register(self, module: Any, path: KeyPath) -> None:
        """Record a working module's path, and tag its placeholders with it."""
        self.modules[path] = module
        self.paths[id(module)] = path
        tag = Tag(self.number, path)
        for name, value in field_items(module):
            if isinstance(value, Placeholder):
                object.__setattr__(module, name, TaggedPlaceholder(tag))

    def path_of(self, module: Any) -> KeyPath | None:
        """The path of `module` if it is a module of this init's working copy, or a
        copy of one made while init runs (found by its tagged placeholders); `None`
        for any other object."""
        path = self.paths.get(id(module))
        if path is not None:
            return path
        for value in getattr(module, "__dict__", {}).values():
            if type(value) is TaggedPlaceholder and value.tag.init == self.number:
                return value.tag.path
        return None

    def initializing(self, path: KeyPath) -> bool:
        """What `self.initializing()` returns for the module at `path`: true while init
        runs its `rng_init` or any of its calls. (What a later call assigns to a field
        an earlier one set is dropped: see `assign`.) Asking opens the current call
        to assignments, as an `if self.initializing():` block does."""
        if self.phase is Phase.CALL:
            self.asked.add(path)
            return True
        return self.phase is Phase.RNG_INIT

    def may_assign(self, path: KeyPath) -> bool:
        """Whether the module at `path` may assign now: in `rng_init`, or in a call
        that asked `initializing()` (elsewhere, modules are frozen during init as
        after it)."""
        return self.phase is Phase.RNG_INIT or self.phase is Phase.CALL and path in self.asked

    def assign(self, module: Any, path: KeyPath, name: str, value: Any) -> None:
        """Record `module.name = value`. Two assignments are dropped: to a field that
        held an array when init started (init never replaces an array, so a trained
        model stays trained), and to a field that an earlier call of the module set
        (a module is built once, and later calls use what it built)."""
        if name not in _field_names(type(module)):
            raise AttributeError(
                f"{type(module).__name__} has no field {name!r}. Declare it in the "
                f"class body (for example `{name}: jax.Array = lazymod.lazy()`) "
                "before assigning it during init."
            )
        call = self.calls.get(path, 0) if self.phase is Phase.CALL else 0
        earlier = self.assigned_in.get((path, name))
        if earlier is None:
            if self._held_an_array(path, name):
                return
        elif 0 < earlier < call:
            return
        self.assigned_in[(path, name)] = call
        self.record.setdefault(path, {})[name] = value
        object.__setattr__(module, name, value)
        working = self.modules[path]
        if working is not module:  # a copy the forward pass made: parents read `working`
            object.__setattr__(working, name, value)

    def _held_an_array(self, path: KeyPath, name: str) -> bool:
        if (path, name) in self.initializer_fields:
            return False
        value = getattr(self.modules[path], name, None)
        return any(isinstance(leaf, jax.Array | np.ndarray) for leaf in jtu.tree_leaves(value))

    def sync(self, module: Any, path: KeyPath) -> None:
        """Give a copy made during the forward pass (before init assigned at its path)
        what init assigned there, in the fields where it still holds a placeholder:
        a field the forward pass itself replaced (`eqx.tree_at`) is left alone."""
        if module is self.modules[path]:
            return
        for name, value in self.record.get(path, {}).items():
            if isinstance(module.__dict__.get(name), Placeholder):
                object.__setattr__(module, name, value)

    # --- running modules -------------------------------------------------------------

    def call(
        self, module: Any, path: KeyPath, method: Callable[..., Any], args: Any, kwargs: Any
    ) -> Any:
        """Run `method(module, *args, **kwargs)` as init runs a module's method: the
        first call may build, later ones reuse; its output may be captured."""
        self.sync(module, path)
        outermost = self.running_calls.get(path, 0) == 0
        first = (path, method.__name__) not in self.first_inputs
        if outermost:
            self.asked.discard(path)
            self.calls[path] = self.calls.get(path, 0) + 1
            if first:
                self.first_inputs[(path, method.__name__)] = (args, kwargs)
        self.running_calls[path] = self.running_calls.get(path, 0) + 1
        self.stack.append(path)
        try:
            out = method(module, *args, **kwargs)
        except (InitError, UninitializedError):
            raise
        except Exception as error:
            if outermost and not first:
                self._raise_called_again(module, path, method.__name__, args, kwargs, error)
            self.note_raised_in(error, module, path, (method.__name__, args, kwargs))
            raise
        finally:
            self.stack.pop()
            self.running_calls[path] -= 1
        if self.intermediates is not None:
            self._capture(module, path, method.__name__, out)
        return out

    def note_raised_in(
        self, error: Exception, module: Any, path: KeyPath, call: tuple[str, Any, Any] | None
    ) -> None:
        """Name, in a note, the innermost module `error` came from, once (outer calls
        see the note): an Equinox layer inside `module` that raised (found by `blame`),
        else `module` itself, running `call` (its method's name, args and kwargs)."""
        if any(note.startswith(_RAISED_IN) for note in getattr(error, "__notes__", ())):
            return
        blamed = blame(error, module)
        if blamed is not None and (blamed.path or call is None):
            path, module, call_text = path + blamed.path, blamed.module, blamed.method
            inputs = (
                f"called with inputs {blamed.inputs}"
                if blamed.as_called
                else f"whose arguments were {blamed.inputs} when it raised"
            )
        elif call is not None:
            call_text, inputs = call[0], f"called with inputs {describe_inputs(*call[1:])}"
        else:
            return
        self.raised_in = f"{self.where(path)} ({type(module).__name__}.{call_text})"
        error.add_note(f"{_RAISED_IN}{self.raised_in}, {inputs})")

    def _raise_called_again(
        self, module: Any, path: KeyPath, name: str, args: Any, kwargs: Any, error: Exception
    ) -> None:
        first = describe_inputs(*self.first_inputs[(path, name)])
        now = describe_inputs(args, kwargs)
        if first == now:
            return
        raise init_error_like(error)(
            f"{self.where(path)} ({type(module).__name__}): called again during init "
            f"with inputs {now}, but it was built on its first call, for inputs {first}; "
            f"the second call raised {type(error).__name__}: {error}\nA layer is built "
            "once, from its first call, and every later call uses it. To apply layers "
            "to inputs of two shapes, use two layers."
        ) from error

    @contextlib.contextmanager
    def running(self, path: KeyPath) -> Iterator[None]:
        """Mark the module at `path` as the one whose code runs (for `next_key`)."""
        self.stack.append(path)
        try:
            yield
        finally:
            self.stack.pop()

    def _capture(self, module: Any, path: KeyPath, method: str, output: Any) -> None:
        """Record the output of a method call if the filter takes it, under
        `path` (`"__call__"` for the root's), or `path.method` for another method;
        later calls are `...#1`, `...#2`."""
        assert self.intermediates is not None
        try:
            wanted = self.capture_filter(module, method)
        except Exception as error:
            raise init_error_like(error)(
                f"{self.where(path)} ({type(module).__name__}): the capture_intermediates "
                f"filter raised {type(error).__name__}: {error}"
            ) from error
        if not wanted:
            return
        number = self.captured.get((path, method), 0)
        self.captured[(path, method)] = number + 1
        base = path_str(path)
        if method != "__call__":
            base = f"{base}.{method}" if base else method
        name = (base or "__call__") + (f"#{number}" if number else "")
        if self.trace is not current_trace():
            output = jax.tree.map(
                lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype) if isinstance(x, jax.Array) else x,
                output,
            )
        self.intermediates[name] = output

    # --- keys ----------------------------------------------------------------------

    def root_key(self, stream: str, path: KeyPath) -> PRNGKeyArray:
        """The key given for `stream`, or for `"params"` when there is none; `path` is
        the module (or field) that draws, for the error."""
        try:
            return self.keys[stream]
        except KeyError:
            pass
        try:
            return self.keys[DEFAULT_STREAM]
        except KeyError:
            missing = (
                f"from the stream {stream!r}, which has no key"
                if stream == DEFAULT_STREAM
                else f"from the stream {stream!r}, which has no key and none to fall "
                f"back to (a stream without a key uses {DEFAULT_STREAM!r})"
            )
            raise InitError(
                f"{self.where(path)}: drew a key {missing}; lazymod.init was given keys "
                f"for the streams {sorted(self.keys)} only. Add "
                + (f"{stream!r} or " if stream != DEFAULT_STREAM else "")
                + f"{DEFAULT_STREAM!r} to the dict of keys."
            ) from None

    def next_key(self, stream: str) -> PRNGKeyArray:
        """The next key of the running module: its path, phase, stream and count."""
        path = self.stack[-1]
        counter = (path, self.phase, stream)
        count = self.counters.get(counter, 0)
        self.counters[counter] = count + 1
        root = self.root_key(stream, path)
        return derive_key(root, stream, "next_key", path, self.phase.value, count)

    # --- the trace -----------------------------------------------------------------

    def where(self, path: KeyPath) -> str:
        """The path as an error message names it: `Model.layers[0]`."""
        return self.root_name + path_str(path, leading_dot=True)

    def release(self) -> None:
        """Forget the working copy, the record and the captured outputs, which hold
        tracers of the trace that has ended."""
        self.modules.clear()
        self.paths.clear()
        self.record.clear()
        self.assigned_in.clear()
        self.first_inputs.clear()
        self.stack.clear()
        self.intermediates = None
        self.trace = None
        self.outer_traces = []


@functools.cache
def _field_names(cls: type) -> frozenset[str]:
    return frozenset(f.name for f in dataclasses.fields(cls))


def current_trace() -> Any:
    """The JAX trace that operations are staged into right now."""
    with jex_core.take_current_trace() as trace:
        return trace


_TOP_LEVEL = type(current_trace())  # the trace outside every transformation


def at_top_level() -> bool:
    """Whether no transformation (`jax.jit`, `jax.vmap`, `jax.eval_shape`...) is being
    traced around this call."""
    return type(current_trace()) is _TOP_LEVEL
