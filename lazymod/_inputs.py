"""What init is given to run: the method, the input specs (checked at the door), and
notes on likely mistakes in them when the forward pass fails."""

import difflib
import io
import os
import re
from collections.abc import Callable
from typing import Any

import jax
import jax.tree_util as jtu
import numpy as np

from ._errors import InitTypeError, InitValueError
from ._sentinels import is_initialized


def resolve_method(
    module: Any,
    method: str | Callable[..., Any] | None,
    has_inputs: bool,
    entry: str = "lazymod.init",
) -> Callable[..., Any] | None:
    """The function init runs on the inputs: `__call__` by default, a method named by
    `method`, or `method` itself; `None` when there is nothing to run."""
    name = type(module).__name__
    if isinstance(module, (str, bytes, os.PathLike, io.IOBase)) or module is None:
        raise TypeError(
            f"{entry} takes the module first, as in {entry}(model, ...); got "
            f"{type(module).__name__}."
        )
    if isinstance(module, type):
        raise TypeError(
            f"{entry} got the class {module.__name__}, not a module: pass an instance, "
            f"as in {entry}({module.__name__}(), ...)."
        )
    if method is None:
        if not has_inputs:
            return None
        if not callable(module):
            raise TypeError(
                f"{entry} got inputs, but {name} is not callable; pass `method=` "
                "(a method name or a function f(module, *inputs)) to say what to run."
            )
        return type(module).__call__
    if isinstance(method, str):
        function = getattr(type(module), method, None)
        if not callable(function):
            names = [n for n in dir(type(module)) if callable(getattr(type(module), n, None))]
            close = difflib.get_close_matches(method, names, n=1)
            hint = f" Did you mean {close[0]!r}?" if close else ""
            raise AttributeError(f"{entry}: {name} has no method {method!r}.{hint}")
        return function
    if callable(method):
        bound_to = getattr(method, "__self__", None)
        if bound_to is None:
            return method
        if bound_to is module:
            return method.__func__  # pyright: ignore[reportFunctionMemberAccess]
        raise TypeError(
            f"{entry}: `method` is a method bound to another object; pass the "
            f"method's name, or an unbound function such as `{name}.<method>`."
        )
    raise TypeError(
        f"{entry}: `method` must be a method name, a function or None; got {type(method).__name__}."
    )


def check_specs(args: tuple[Any, ...], kwargs: dict[str, Any], entry: str) -> None:
    """Refuse a `jax.ShapeDtypeStruct` input whose shape no array can have."""
    for path, leaf in jtu.tree_leaves_with_path((args, kwargs)):
        if not isinstance(leaf, jax.ShapeDtypeStruct):
            continue
        where = f"the input {'args' if path[0].idx == 0 else 'kwargs'}{jtu.keystr(path[1:])}"
        for dim in leaf.shape:
            if isinstance(dim, bool) or not isinstance(dim, int | np.integer):
                raise InitTypeError(
                    f"{entry}: {where} is a jax.ShapeDtypeStruct of shape "
                    f"{leaf.shape}, with a dimension {dim!r} that is not an int; give "
                    "every dimension as an int, e.g. jax.ShapeDtypeStruct((784,), jnp.float32)."
                )
            if dim < 0:
                raise InitValueError(
                    f"{entry}: {where} is a jax.ShapeDtypeStruct of shape "
                    f"{leaf.shape}, with a negative dimension {dim}; every dimension "
                    "must be 0 or more."
                )


def note_likely_causes(
    error: Exception,
    args: tuple[Any, ...],
    with_state: bool,
    entry: str = "lazymod.init",
    module: Any = None,
) -> None:
    """Where lazymod can tell what went wrong, say what to do, in a note."""
    built = any(isinstance(leaf, jax.Array) for leaf in jax.tree.leaves(module))
    # JAX's shape errors name a shape or a dimension (a conv's "feature dimension size").
    names_a_shape = re.search(r"shape|dimension", str(error))
    if built and isinstance(error, TypeError | ValueError) and names_a_shape:
        error.add_note(
            f"(lazymod: {type(module).__name__} holds built layers, and init never "
            "rebuilds a layer: a layer built for inputs of one shape cannot take another. "
            "For inputs of other shapes, initialize a new lazy model.)"
        )
    too_many = isinstance(error, TypeError) and "positional argument" in str(error)
    too_many = too_many and "were given" in str(error)
    if with_state and too_many:
        error.add_note(
            f"(lazymod: {entry} passes the state after the inputs, as the last "
            "argument; a model whose method takes no state is initialized with "
            "lazymod.init"
            + (")" if entry == "lazymod.init_with_state" else ", or with_state=False.)")
        )
    first = args[0] if args else None
    is_key = isinstance(first, jax.Array) and jax.dtypes.issubdtype(
        first.dtype, jax.dtypes.prng_key
    )
    takes_no_key = entry in ("lazymod.init_shapes", "lazymod.summary", "lazymod.restore")
    if too_many and takes_no_key and (is_key or type(first) is int):
        given = "a key" if is_key else f"the int {first!r}"
        error.add_note(
            f"(lazymod: the input args[0] is {given}, but {entry} takes no key: "
            f"{entry}(model, {'path_or_file, ' if entry == 'lazymod.restore' else ''}"
            "*inputs).)"
        )
    if (
        not with_state
        and isinstance(error, TypeError)
        and "required positional argument: 'state'" in str(error)
    ):
        error.add_note(
            "(lazymod: the method takes a state: initialize a stateful model with "
            "lazymod.init_with_state(model, key, *inputs); lazymod.init_shapes, "
            "lazymod.summary and lazymod.restore take with_state=True.)"
        )
    if "ShapeDtypeStruct" in str(error) and _is_skeleton(module):
        restoring = entry in ("lazymod.restore", "lazymod.restore_sharded")
        error.add_note(
            f"(lazymod: {type(module).__name__} holds jax.ShapeDtypeStructs, as "
            "lazymod.init_shapes returns them, and the forward pass cannot compute with "
            f"them. Give {entry} the lazy model"
            + (
                "; or, to read the checkpoint into these shapes, pass no inputs.)"
                if restoring
                else ".)"
            )
        )
    if _read_a_placeholder(error):
        error.add_note(
            "(lazymod: a lazy field (lm.lazy()) was read before anything set it. Init sets "
            "fields in this order: every Initializer, then each rng_init (a submodule's "
            "before its parent's), then the forward pass, whose `if self.initializing():` "
            "blocks run as the pass reaches them. Read the field after what sets it, or "
            "set it earlier: with an Initializer, or in rng_init.)"
        )
    if "dtype" in str(error):
        dtypes = [
            (f"args{jtu.keystr(path)} has dtype {np.dtype(leaf.dtype).name}", leaf.dtype)
            for path, leaf in jtu.tree_leaves_with_path(args)
            if hasattr(leaf, "dtype")
            and not jax.dtypes.issubdtype(leaf.dtype, jax.dtypes.extended)  # keys
        ]
        # (jax.dtypes.issubdtype: bfloat16 is inexact, which NumPy's does not know)
        integers = [s for s, d in dtypes if not jax.dtypes.issubdtype(d, np.inexact)]
        default = jax.dtypes.canonicalize_dtype(np.float64)  # parameters unless dtype=
        floats = [s for s, d in dtypes if jax.dtypes.issubdtype(d, np.floating) and d != default]
        if "a float dtype such as" in str(error):
            pass  # lazymod's own message gives the fix already
        elif integers:
            error.add_note(
                f"(lazymod: the input {integers[0]}; layers compute in floating point: "
                "give the input (or spec) a float dtype such as jnp.float32, or, for "
                "token ids, an embedding first.)"
            )
        elif floats:
            error.add_note(
                f"(lazymod: the input {floats[0]}, and layers make their parameters in "
                f"{default.name} unless given dtype=: give the layers dtype= of the "
                f"input's dtype, or the input (or spec) the dtype {default.name}.)"
            )
    if isinstance(error, NameError) and "unbound axis name" in str(error):
        error.add_note(
            "(lazymod: init calls the forward pass on the inputs as given, and a layer "
            "in it reduces over a named axis that nothing binds there, as an "
            "eqx.nn.BatchNorm does in training mode. Initialize "
            "eqx.nn.inference_mode(model), and train eqx.nn.inference_mode(result, "
            "False); or pass method= a function that jax.vmaps the model with that "
            "axis_name over a batch of specs. A lazy lazymod.nn.BatchNorm needs "
            "neither: while init runs, it normalizes with its initial statistics.)"
        )
    for index, arg in enumerate(args):
        if isinstance(arg, tuple | list) and arg and all(isinstance(d, int) for d in arg):
            shape = tuple(arg)
            error.add_note(
                f"(lazymod: the input args[{index}] is the {type(arg).__name__} {arg!r}. To "
                f"pass a shape, pass a spec: jax.ShapeDtypeStruct({shape!r}, jnp.float32), "
                "or jnp.int32 for token ids.)"
            )


def _read_a_placeholder(error: BaseException) -> bool:
    """Whether `error` (or the error of the user's code it wraps) comes from using the
    placeholder of a lazy field as a value: Python names its type, JAX its repr."""
    for cause in (error, error.__cause__):
        if isinstance(cause, AttributeError | TypeError | IndexError) and re.search(
            r"'(Tagged)?Placeholder'|\blazy\(\)", str(cause)
        ):
            return True
    return False


def _is_skeleton(module: Any) -> bool:
    """Whether `module` is a tree `lazymod.init_shapes` returns: nothing lazy left, and
    `jax.ShapeDtypeStruct`s where the arrays go."""
    shapes = any(isinstance(leaf, jax.ShapeDtypeStruct) for leaf in jax.tree.leaves(module))
    return shapes and is_initialized(module)
