import contextlib
import io
import os
import pathlib
from collections.abc import Callable, Iterator
from typing import Any, Protocol, runtime_checkable

import equinox as eqx
import jax
import jax.numpy as jnp
import jax.tree_util as jtu
import numpy as np

from ._errors import InitError
from ._numpy_leaves import is_numpy, numpy_read
from ._paths import display_path
from ._shapes import shapes_of


@runtime_checkable
class Readable(Protocol):
    """A binary file open for reading, such as `open(path, "rb")` or `io.BytesIO`."""

    def read(self, size: int = -1, /) -> bytes: ...


def restore(
    model: Any,
    path_or_file: str | os.PathLike[str] | Readable,
    /,
    *args: Any,
    method: str | Callable[..., Any] | None = None,
    with_state: bool = False,
    **kwargs: Any,
) -> Any:
    """Load a checkpoint saved with `eqx.tree_serialise_leaves` into a lazy model,
    without running a single initializer.

    The shapes come from [`lazymod.init_shapes`][] on the inputs (the same arguments as
    [`lazymod.init`][], less the key); then every array is read from the file and
    checked against them. Every mismatch (path, expected shape and dtype, what the file
    holds) is reported at once, in one [`lazymod.InitError`][]; a checkpoint with fewer
    or more arrays than the model is an error too.

    **Arguments:**

    - `model`: the lazy model (or an initialized one).
    - `path_or_file`: a path (`.eqx` is added when it has no suffix, as Equinox does)
        or a binary file opened for reading.
    - `*args`, `**kwargs`, `method`: the inputs (or their `jax.ShapeDtypeStruct`s) and
        method, as for [`lazymod.init`][].
    - `with_state`: for a stateful model, read the pair `(model, state)` that
        `eqx.tree_serialise_leaves(file, (model, state))` wrote, with the skeleton
        [`lazymod.init_with_state`][] would build, and return that pair. `model` is
        then the lazy model (one that `init_with_state` returned keeps its initial
        state apart, so its shapes cannot be traced again without that state).

    **Returns:** the model, materialized with the checkpoint's arrays.

    !!! example

        ```python
        import io
        import equinox as eqx
        import jax
        import jax.numpy as jnp
        import lazymod as lm

        spec = jax.ShapeDtypeStruct((784,), jnp.float32)
        trained = lm.init(lm.nn.MLP(10, 64, 2), 0, spec)
        file = io.BytesIO()
        eqx.tree_serialise_leaves(file, trained)

        file.seek(0)
        restored = lm.restore(lm.nn.MLP(10, 64, 2), file, spec)
        assert (restored.layers[0].weight == trained.layers[0].weight).all()
        ```
    """
    if isinstance(model, (str, pathlib.Path, io.IOBase)) and isinstance(path_or_file, eqx.Module):
        raise TypeError(
            "lazymod.restore takes the model first, then the file: "
            "lazymod.restore(model, path_or_file, *inputs)."
        )
    _check_file(path_or_file)
    skeleton = shapes_of(
        model,
        args=args,
        kwargs=kwargs,
        method=method,
        with_state=with_state,
        entry="lazymod.restore",
    )
    leaves, treedef = jtu.tree_flatten_with_path(skeleton)
    values: list[Any] = []
    mismatches: list[str] = []
    damaged = False
    read_any = False  # whether the file has given a value yet
    # Read in the order eqx.tree_serialise_leaves wrote: the leaves' flattening order,
    # arrays with numpy's format, Python scalars too, everything else not at all.
    with _opened(path_or_file) as file:
        for index, (path, like) in enumerate(leaves):
            is_array = isinstance(like, jax.ShapeDtypeStruct) or is_numpy(like)
            if not is_array and not eqx.is_array_like(like):
                values.append(like)  # static, or a function: not in the file
                continue
            where = _where(skeleton, path, with_state)
            try:
                if is_numpy(like):  # a NumPy array init leaves as it is: as saved
                    found, fits = numpy_read(np.load(file), like)
                elif is_array:
                    found = jnp.load(file)
                    fits = found.shape == like.shape and found.dtype == like.dtype
                else:
                    found, fits = eqx.default_deserialise_filter_spec(file, like), True
            except EOFError:  # NumPy: no data left
                missing = sum(
                    isinstance(leaf, jax.ShapeDtypeStruct) or eqx.is_array_like(leaf)
                    for _, leaf in leaves[index:]
                )
                if with_state and path[0].idx == 1:
                    mismatches.append(
                        "the state: the checkpoint ends before it. Was it saved from the "
                        "model alone? Save eqx.tree_serialise_leaves(file, (model, state)), "
                        "or restore the model alone (with_state=False)"
                    )
                    damaged = True
                elif not read_any:
                    mismatches.append(
                        f"{where}: expected {describe_leaf(like)}; the checkpoint is empty (it "
                        f"holds none of the model's {missing} values: an interrupted save?)"
                    )
                    damaged = True
                else:
                    mismatches.append(
                        f"{where}: expected {describe_leaf(like)}; the checkpoint ends before "
                        f"it ({missing} value{'s' if missing > 1 else ''} missing)"
                    )
                break
            except Exception as error:  # a damaged or foreign file: NumPy cannot read on
                first_line = str(error).splitlines()[0] if str(error) else ""
                mismatches.append(
                    f"{where}: expected {describe_leaf(like)}; what the file holds there is not "
                    "an array written by eqx.tree_serialise_leaves (the file is damaged, "
                    f"or of another format): {type(error).__name__}: {first_line}"
                )
                damaged = True
                break
            read_any = True
            if not fits:
                mismatches.append(
                    f"{where}: expected {describe_leaf(like)}, found {describe_leaf(found)}"
                )
            elif isinstance(like, jax.ShapeDtypeStruct):
                found = weak_as_made(found, like)
            values.append(found)
        left_over = not damaged and (not mismatches or "ends before" not in mismatches[-1])
        left_over = left_over and file.read(1) != b""
    if left_over:
        mismatches.append(
            "the checkpoint holds more arrays after the model's last one (a model with "
            "more layers?)"
        )
    if mismatches:
        name = getattr(path_or_file, "name", path_or_file)
        source = f"{str(name)!r}" if isinstance(name, (str, pathlib.Path)) else "file"
        listing = "\n".join(f"  - {line}" for line in mismatches)
        raise InitError(
            f"lazymod.restore: the checkpoint {source} does not match "
            f"{type(model).__name__} as built from these inputs ({len(mismatches)} "
            f"mismatch{'es' if len(mismatches) > 1 else ''}):\n{listing}\n"
            + (
                "Restore from an intact file written by eqx.tree_serialise_leaves."
                if damaged
                else "Pass the inputs (shapes) and constructor arguments the checkpoint "
                "was saved with."
            )
        )
    return jtu.tree_unflatten(treedef, values)


def _where(skeleton: Any, path: Any, with_state: bool) -> str:
    """`Model.head.weight`, or with `with_state`, the model's or the state's part."""
    if not with_state:
        return display_path(skeleton, path)
    model, _ = skeleton
    if path[0].idx == 0:
        return display_path(model, path[1:])
    return "the state"


def weak_as_made(found: jax.Array, like: jax.ShapeDtypeStruct) -> jax.Array:
    """A weakly typed scalar (`jnp.array(1.0)`, PReLU's default slope, a state's
    counter) as init makes it: weakly typed again, in its sharding, so that it
    promotes in the forward pass as it did (a checkpoint keeps only its dtype)."""
    if not getattr(like, "weak_type", False) or like.shape != () or found.weak_type:
        return found
    if not found.is_fully_addressable:  # across processes, init makes it strong too
        return found
    weak = jnp.asarray(found.item())  # a Python scalar: weakly typed, uncommitted
    if weak.dtype != found.dtype:
        return found
    return jax.device_put(weak, found.sharding) if found.committed else weak


def describe_leaf(leaf: Any) -> str:
    """`float32[2, 5]`, `key<fry>[]` or `a Python int`, for a mismatch message."""
    if not hasattr(leaf, "dtype"):
        return f"a Python {type(leaf).__name__}"
    key = jnp.issubdtype(leaf.dtype, jax.dtypes.prng_key)
    return f"{leaf.dtype if key else jnp.dtype(leaf.dtype).name}{list(leaf.shape)}"


def _check_file(path_or_file: Any) -> None:
    """Refuse, before any trace, what cannot be the file of `eqx.tree_serialise_leaves`."""
    if isinstance(path_or_file, io.TextIOBase):
        raise TypeError(
            "lazymod.restore: the file is open in text mode; checkpoints are binary: "
            "open it with open(path, 'rb'), or pass the path."
        )
    if isinstance(path_or_file, str | os.PathLike):
        given = pathlib.Path(path_or_file)
        if given.is_dir() and not _file_path(path_or_file).is_file():
            raise IsADirectoryError(
                f"lazymod.restore: {str(path_or_file)!r} is a directory; lazymod.restore "
                "reads the file eqx.tree_serialise_leaves writes. For a checkpoint "
                "lazymod.save_sharded wrote (an Orbax directory), use "
                "lazymod.restore_sharded(model, directory, *inputs)."
            )
    elif not isinstance(path_or_file, Readable):
        key = isinstance(path_or_file, int) or (
            isinstance(path_or_file, jax.Array)
            and jnp.issubdtype(path_or_file.dtype, jax.dtypes.prng_key)
        )
        raise TypeError(
            "lazymod.restore: the file must be a path or a binary file open for reading; "
            f"got {type(path_or_file).__name__}"
            + (" (a key? lazymod.restore takes none)" if key else "")
            + ". Call lazymod.restore(model, path_or_file, *inputs)."
        )


@contextlib.contextmanager
def _opened(path_or_file: str | os.PathLike[str] | Readable) -> Iterator[Readable]:
    if isinstance(path_or_file, str | os.PathLike):
        with open(_file_path(path_or_file), "rb") as file:
            yield file
    else:
        yield path_or_file


def _file_path(path: str | os.PathLike[str]) -> pathlib.Path:
    """The file Equinox reads for `path`: `.eqx` is added to a name without a suffix."""
    path = pathlib.Path(path)
    return path.with_suffix(".eqx") if path.suffix == "" else path
