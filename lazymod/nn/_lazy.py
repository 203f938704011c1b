"""What every lazy layer shares: it builds its Equinox counterpart from the first input
it sees during `lazymod.init`, runs it, and is replaced by it in the returned tree."""

import collections
import dataclasses
import threading
from collections.abc import Hashable, Sequence
from typing import Any, TypeVar

import equinox as eqx
import jax
import jax.numpy as jnp
import jax.tree_util as jtu
import numpy as np

from .._errors import InitError, InitTypeError, InitValueError
from .._kept_calls import call_kept, kind_of, on_forget
from .._methods import call_method
from .._module import Module, untracked
from .._running import (
    describe,
    in_init_trace,
    keys_drawn,
    keys_supplied,
    next_key,
    staged_init,
)
from .._sentinels import is_sentinel, lazy


_Layer = TypeVar("_Layer", bound="Partitioned")


class Partitioned(Module):
    """What lets a layer carry partition annotations for the arrays it builds."""

    # ((field of the built layer, partition), ...): read by `sharding=mesh` and
    # `sharding=lazymod.AxisRules(...)`; gone, like the lazy layer, after init.
    partition: tuple[tuple[str, tuple[Any, ...]], ...] | None = eqx.field(static=True, default=None)

    @untracked
    def partitioned(self: _Layer, **arrays: Sequence[Any]) -> _Layer:
        """A copy of this layer whose built arrays are sharded as given, one entry per
        array axis: a mesh axis name (with `sharding=mesh`), a logical axis name (with
        `sharding=lazymod.AxisRules(mesh, rules)`), or `None`. The keywords are the
        built Equinox layer's arrays: `weight` and `bias` for a `Linear`,
        `query_proj.weight` (as `**{"query_proj.weight": ...}`) for attention.

        ```python
        import jax, jax.numpy as jnp, lazymod as lm

        expand = lm.nn.Linear(64).partitioned(weight=("mlp", "embed"), bias=("mlp",))
        ```
        """
        for name, axes in arrays.items():
            if isinstance(axes, str) or not all(
                a is None or isinstance(a, str) or isinstance(a, tuple) for a in axes
            ):
                raise TypeError(
                    f"lazymod.nn.{type(self).__name__}.partitioned({name}=...) takes a "
                    f"sequence with one entry per array axis, like ('mlp', None); got {axes!r}."
                )
        merged = dict(self.partition or ())
        merged.update({name: tuple(axes) for name, axes in arrays.items()})
        copy = copy_module(self)
        object.__setattr__(copy, "partition", tuple(sorted(merged.items())))
        return copy


def copy_module(module: Module) -> Any:
    """A shallow copy of a frozen module (its fields are shared)."""
    copy = object.__new__(type(module))
    for field in dataclasses.fields(module):
        if hasattr(module, field.name):
            object.__setattr__(copy, field.name, getattr(module, field.name))
    return copy


class LazyLayer(Partitioned):
    """Base class of the `lazymod.nn` layers. A subclass stores the constructor
    arguments of an Equinox layer, less those it infers, and implements `_build`; its
    `__call__` gets the layer with `self._layer_for(...)` and calls it. After
    `lazymod.init` the lazy layer is gone: the tree holds the Equinox layer it built.
    """

    layer: Any = lazy()
    # Errors name a layer not built yet by its own path, not by this internal field.
    __lazymod_layer__ = True

    def _build(self, *args: Any, **kwargs: Any) -> eqx.Module:
        raise NotImplementedError

    def _layer_for(self, *args: Any, **kwargs: Any) -> Any:
        """The Equinox layer: built from the inputs' shapes while init runs this layer
        (in init's own trace, so also inside a `jax.lax.scan` of the forward pass)."""
        if is_sentinel(self.layer) and call_method(self, "initializing"):
            first = args[0] if args else None
            shape = getattr(first, "shape", None)
            if shape is None or not hasattr(first, "dtype"):
                raise self._bad_input(
                    "an array",
                    first,
                    "Pass a jax.Array or a jax.ShapeDtypeStruct (for a shape, "
                    f"jax.ShapeDtypeStruct((784,), jnp.float32), not the "
                    f"{type(first).__name__}).",
                    InitTypeError,
                )
            if 0 in shape:
                raise InitValueError(
                    f"{describe(self)} ({type(self).__name__}): got an input of shape "
                    f"{tuple(shape)}, with an empty axis, from which no size can be "
                    "inferred. Give an input (or spec) whose dimensions are at least 1; if "
                    "the spec has none, a layer before this one made the axis empty (a "
                    "kernel or a stride larger than its input?)."
                )
            with in_init_trace():
                self.layer = _build_traced_once(self, args, kwargs)
        return self.layer

    def _init_result(self) -> Any:
        return self if is_sentinel(self.layer) else self.layer

    def _bad_input(
        self,
        expected: str,
        got: Any,
        fix: str | None = None,
        kind: type[InitError] = InitValueError,
        rank: int | None = None,
    ) -> InitError:
        """An error naming this layer's path, the expected and the received shape, and
        the fix (by default, for a batched input: vmap; for an input with fewer axes
        than the `rank` the layer takes: the missing axis). It is an `InitValueError`
        (a shape problem) unless `kind` says otherwise."""
        shape = getattr(got, "shape", None)
        received = f"shape {tuple(shape)}" if shape is not None else type(got).__name__
        if fix is None and rank is not None and shape is not None and len(shape) < rank:
            axes = "1 axis" if len(shape) == 1 else f"{len(shape)} axes"
            fix = (
                f"It has {axes}, fewer than the {rank} the layer takes: give it the "
                "missing one (x[None] adds one of size 1); only a batch axis is left out, "
                "and jax.vmap maps over it."
            )
        fix = fix or (
            "lazymod.nn layers take unbatched inputs, as Equinox layers do: apply "
            "jax.vmap over the batch axis."
        )
        return kind(
            f"{describe(self)} ({type(self).__name__}): expected {expected}; got an input "
            f"of {received}. {fix}"
        )


def check_sizes(layer: str, minimum: int = 1, **sizes: Any) -> None:
    """Refuse, at construction, a size no layer can have: an int (or every int of a
    sequence) below `minimum`, or something that is not an int. `"scalar"` passes."""
    for name, value in sizes.items():
        for size in value if isinstance(value, (tuple, list)) else (value,):
            if size == "scalar":
                continue
            if isinstance(size, bool) or not isinstance(size, (int, np.integer)):
                raise TypeError(
                    f"lazymod.nn.{layer}: {name} must be an int; got "
                    f"{type(size).__name__} {size!r}."
                )
            if size < minimum:
                raise ValueError(
                    f"lazymod.nn.{layer}: {name} must be at least {minimum}; got {size}."
                )


def check_flags(layer: str, habit: tuple[str, str] | None, **flags: Any) -> None:
    """Refuse, at construction, a flag (`use_bias=`, ...) that is not a bool: most often
    an Equinox habit, the input size given first (`Linear(784, 10)` puts 10 in
    `use_bias`). `habit` is that mistake and its fix, `("Linear(784, 10)",
    "Linear(10)")`, for the message."""
    for name, value in flags.items():
        if not isinstance(value, bool | np.bool_):
            raise TypeError(
                f"lazymod.nn.{layer}: {name} must be a bool; got {type(value).__name__} "
                f"{value!r}.{_equinox_habit(layer, habit, value)}"
            )


def check_function(layer: str, habit: tuple[str, str], **functions: Any) -> None:
    """Refuse an activation (or other function argument) that cannot be called."""
    for name, value in functions.items():
        if not callable(value):
            raise TypeError(
                f"lazymod.nn.{layer}: {name} must be a function, such as jax.nn.relu; got "
                f"{type(value).__name__} {value!r}.{_equinox_habit(layer, habit, value)}"
            )


def check_eps(layer: str, eps: Any, habit: tuple[str, str]) -> None:
    """Refuse an `eps` that is not a number, or an int of 1 or more, as `LayerNorm(64)`
    (Equinox's `shape` given first) would make it."""
    number = isinstance(eps, float | np.floating | int | np.integer) and not isinstance(eps, bool)
    if not number or isinstance(eps, int | np.integer) and eps >= 1:
        raise TypeError(
            f"lazymod.nn.{layer}: eps must be a float (such as 1e-5); got "
            f"{type(eps).__name__} {eps!r}.{_equinox_habit(layer, habit, eps)}"
        )


def _equinox_habit(layer: str, habit: tuple[str, str] | None, value: Any) -> str:
    """The Equinox call `habit` names and its lazymod form, for a `value` that is an
    int (a size given where Equinox's order puts it); nothing for any other value."""
    size = isinstance(value, int | np.integer) and not isinstance(value, bool)
    if habit is None or not size:
        return ""
    equinox, lazy = habit
    return (
        f" lazymod.nn.{layer} infers its input size, so it takes Equinox's arguments "
        f"without it: equinox.nn.{equinox} is lazymod.nn.{lazy}."
    )


# Per kind of build (the lazy layer's type and fields, the inputs' shapes): the streams
# of the keys it draws, as its first build drew them. Bounded, least recent out.
_streams: collections.OrderedDict[Hashable, tuple[str, ...]] = collections.OrderedDict()
_streams_lock = threading.Lock()
_KINDS_KEPT = 4096
on_forget(_streams.clear)


def _build_traced_once(layer: LazyLayer, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
    """`layer._build(*args, **kwargs)`. In a staged init (only shapes flow), the build
    of each kind of layer is traced once (`_kept_calls.py`), and the kept trace builds
    every layer of that kind, each from keys drawn as its own build would draw them:
    a thousand alike layers pay for one trace of the Equinox constructor, not a
    thousand, and their values are the same bit for bit."""
    if not staged_init():
        return call_method(layer, "_build", *args, **kwargs)
    plain = copy_module(layer)  # without its tag (the path of this layer in the tree)
    object.__setattr__(plain, "layer", lazy())
    found = kind_of(_build_with_keys, (plain, args, kwargs))
    kind = None if found is None else found[0]
    with _streams_lock:
        streams = None if kind is None else _streams.get(kind)
    if streams is None:
        with keys_drawn() as drawn:
            built = call_method(layer, "_build", *args, **kwargs)
        if kind is not None:
            with _streams_lock:
                _streams[kind] = tuple(drawn)
                while len(_streams) > _KINDS_KEPT:
                    _streams.popitem(last=False)
        return built
    keys = [(stream, next_key(stream)) for stream in streams]
    # The build reads its inputs' shapes only: given as specs, the layer it builds
    # depends on no input of the trace.
    specs = jtu.tree_map(_spec_of, (args, kwargs))
    return call_kept(_build_with_keys, plain, keys, *specs)


def _spec_of(x: Any) -> Any:
    return jax.ShapeDtypeStruct(x.shape, x.dtype) if eqx.is_array(x) else x


def _array_of(x: Any) -> Any:
    return jnp.zeros(x.shape, x.dtype) if isinstance(x, jax.ShapeDtypeStruct) else x


def _build_with_keys(
    layer: LazyLayer, keys: list[tuple[str, Any]], args: tuple[Any, ...], kwargs: dict[str, Any]
) -> Any:
    args, kwargs = jtu.tree_map(_array_of, (args, kwargs))  # arrays of this trace
    with keys_supplied(keys):
        return call_method(layer, "_build", *args, **kwargs)
