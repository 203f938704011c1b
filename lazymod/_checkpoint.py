"""`lazymod.save_sharded` and `lazymod.restore_sharded`: Orbax checkpoints read straight
into each array's shards, with no initializer run and no host holding a full copy.

Orbax is an optional dependency (`pip install "lazymod[checkpoint]"`), imported only
when one of these functions runs."""

import os
from collections.abc import Callable
from typing import Any

import equinox as eqx
import jax
import jax.numpy as jnp
import jax.tree_util as jtu
import numpy as np

from ._checkpoint_metadata import check_matches, is_key, STATE, stored_arrays
from ._errors import InitError
from ._numpy_leaves import held_as, is_numpy, numpy_read
from ._paths import display_path, KeyPath, path_str
from ._restore import weak_as_made
from ._sentinels import is_initialized
from ._shapes import shapes_of
from ._sharding import Sharding
from ._stateful import state_paths


def save_sharded(
    directory: str | os.PathLike[str], model: Any, /, *, overwrite: bool = False
) -> None:
    """Save every array of an initialized model with Orbax, each process writing its own
    shards; returns once the checkpoint is complete on disk.

    The checkpoint is a flat dict keyed by each array's path, the string a `sharding=`
    rule receives (`"layers[0].weight"`). A pair `(model, state)` (from
    [`lazymod.init_with_state`][]) is saved whole: the state's arrays get keys of their
    own, `"state[...]"`. Only arrays are saved: Python numbers and flags in the model
    (a `float` field, BatchNorm's `inference`) come back from the lazy model given to
    [`lazymod.restore_sharded`][].

    In a multi-process run, every process calls `save_sharded` with the same directory
    (on storage they all see), after `jax.distributed.initialize()`; every array must
    then be a global `jax.Array` (sharded or replicated over the global mesh).

    **Arguments:**

    - `directory`: where to write the checkpoint (a path, relative to the working
        directory or absolute, or a URL such as `gs://bucket/run/step_100` that Orbax
        understands). It must not exist yet.
    - `model`: an initialized model, or the pair `(model, state)`.
    - `overwrite`: replace the checkpoint already at `directory`.

    !!! example

        ```python
        import tempfile
        import jax
        import jax.numpy as jnp
        import lazymod as lm

        spec = jax.ShapeDtypeStruct((784,), jnp.float32)
        model = lm.init(lm.nn.MLP(10, 64, 2), 0, spec)
        with tempfile.TemporaryDirectory() as tmp:
            lm.save_sharded(f"{tmp}/step_0", model)
            restored = lm.restore_sharded(lm.nn.MLP(10, 64, 2), f"{tmp}/step_0", spec)
        assert (restored.layers[0].weight == model.layers[0].weight).all()
        ```
    """
    ocp = _import_orbax("lazymod.save_sharded")
    is_pair = isinstance(model, tuple) and len(model) == 2 and isinstance(model[1], eqx.nn.State)
    if not is_initialized(model[0] if is_pair else model):
        raise InitError(
            f"lazymod.save_sharded: {type(model[0] if is_pair else model).__name__} is not "
            "initialized (it still holds lazy fields or Initializers); save the model "
            "lazymod.init returned."
        )
    arrays = {}
    for key, (where, leaf) in _arrays_by_key(model, is_pair=is_pair).items():
        if isinstance(leaf, jax.ShapeDtypeStruct):
            raise InitError(
                f"lazymod.save_sharded: {where} is a jax.ShapeDtypeStruct, not an array: "
                "save a model made by lazymod.init, not by lazymod.init_shapes."
            )
        if leaf.size == 0:
            raise InitError(
                f"lazymod.save_sharded: {where} has no elements (shape "
                f"{tuple(leaf.shape)}), and Orbax cannot save an empty array. Give it a "
                "size of at least 1."
            )
        if jax.process_count() > 1 and isinstance(leaf, jax.Array) and leaf.is_fully_addressable:
            raise InitError(
                f"lazymod.save_sharded: {where} is held by process {jax.process_index()} "
                "alone, but this run has several processes: every array must be a global "
                "jax.Array. Give it a sharding over the global mesh (replicated: "
                "NamedSharding(mesh, PartitionSpec())), in the `sharding=` of lazymod.init "
                "or lazymod.restore_sharded."
            )
        arrays[key] = leaf
    if not arrays:
        raise InitError(
            f"lazymod.save_sharded: {type(model).__name__} holds no arrays; there is "
            "nothing to save."
        )
    path = _as_epath(directory)
    if path.exists() and not overwrite:
        raise FileExistsError(
            f"lazymod.save_sharded: {str(directory)!r} already exists, and Orbax never "
            "writes over a checkpoint. Save to a new directory (one per step), or pass "
            "overwrite=True to replace it."
        )
    with ocp.StandardCheckpointer() as checkpointer:
        checkpointer.save(path, arrays, force=overwrite)
        checkpointer.wait_until_finished()  # the save runs in the background


def restore_sharded(
    model: Any,
    directory: str | os.PathLike[str],
    /,
    *args: Any,
    sharding: Sharding = None,
    method: str | Callable[..., Any] | None = None,
    with_state: bool = False,
    **kwargs: Any,
) -> Any:
    """Load a checkpoint written by [`lazymod.save_sharded`][] into a lazy model, every
    array read straight into its shards, without running a single initializer.

    The target is [`lazymod.init_shapes`][] of the model on the inputs, with
    `sharding=`: the shape, dtype and sharding of every array, found without computing
    anything. Each is checked against the checkpoint's metadata before any array is
    read; every mismatch (a missing array, another shape or dtype, arrays the model has
    no place for) is reported at once in one [`lazymod.InitError`][]. Then Orbax reads,
    for each array, only the slices of the devices of this process, and puts each on
    its device: in a multi-process run, each process reads its own shards and no host
    ever holds a whole sharded array.

    **Arguments:**

    - `model`: the lazy model (or an initialized one; its values are not used).
    - `directory`: the checkpoint, as passed to `save_sharded`.
    - `*args`, `**kwargs`, `method`: the inputs (or their `jax.ShapeDtypeStruct`s) and
        method, as for [`lazymod.init`][], less the key.
    - `sharding`: where each array goes, as for `lazymod.init`: a rule
        `rule(path, leaf) -> Sharding | None`, a `jax.sharding.Sharding` or a
        `jax.sharding.Mesh`. It need not be the sharding the checkpoint was saved with.
        An array with no sharding (`None`, the default, or a rule returning `None`)
        goes whole to the default device, uncommitted as init leaves it; restored
        into an initialized tree (a trained model, an optimizer state), an array the
        tree holds committed keeps that array's sharding.
    - `with_state`: restore the pair `(model, state)` saved by
        `save_sharded(directory, (model, state))`, as [`lazymod.init_with_state`][]
        builds it. The state's arrays are placed as init places them: as `sharding`
        says at their path in the model (`norm.batch_state_index.init[0]`; by a mesh or
        `AxisRules`, replicated).

    **Returns:** the model (or the pair), materialized with the checkpoint's arrays.

    !!! example

        ```python
        import tempfile
        import jax
        import jax.numpy as jnp
        import lazymod as lm
        from jax.sharding import NamedSharding, PartitionSpec as P

        mesh = jax.make_mesh((len(jax.devices()),), ("model",), (jax.sharding.AxisType.Auto,))
        spec = jax.ShapeDtypeStruct((16,), jnp.float32)
        trained = lm.init(lm.nn.Linear(8), 0, spec)
        with tempfile.TemporaryDirectory() as tmp:
            lm.save_sharded(f"{tmp}/ckpt", trained)
            layer = lm.restore_sharded(
                lm.nn.Linear(8), f"{tmp}/ckpt", spec, sharding=NamedSharding(mesh, P())
            )
        assert layer.weight.sharding == NamedSharding(mesh, P())
        assert (layer.weight == trained.weight).all()
        ```
    """
    if isinstance(model, (str, os.PathLike)) and isinstance(directory, eqx.Module):
        raise TypeError(
            "lazymod.restore_sharded takes the model first, then the directory: "
            "lazymod.restore_sharded(model, directory, *inputs, sharding=...)."
        )
    ocp = _import_orbax("lazymod.restore_sharded")
    path = _as_epath(directory)
    if not path.is_dir():
        what = "is a file, not a directory" if path.exists() else "does not exist"
        raise InitError(
            f"lazymod.restore_sharded: no checkpoint at {str(directory)!r}: it {what}. "
            "Pass the directory lazymod.save_sharded wrote."
        )
    skeleton = shapes_of(
        model,
        args=args,
        kwargs=kwargs,
        method=method,
        with_state=with_state,
        sharding=sharding,
        entry="lazymod.restore_sharded",
    )
    expected = _arrays_by_key(skeleton, is_pair=with_state)
    with ocp.StandardCheckpointer() as checkpointer:
        stored = stored_arrays(ocp, checkpointer, path, directory)
        check_matches(model, directory, expected, stored, with_state)
        device = _default_device()
        default, on_cpu = jax.sharding.SingleDeviceSharding(device), device.platform == "cpu"
        # An array sharding= places nowhere comes back as init makes it: uncommitted on
        # the default device, for JAX to move (`loose`). Into an initialized tree (a
        # trained model, an optimizer state), one the tree holds committed keeps its
        # sharding.
        held = _held(model) if is_initialized(model) else {}
        targets, loose = {}, set()
        for key, (_, leaf) in expected.items():
            array = held.get((key, np.shape(leaf)))
            kept = array.sharding if array is not None and array.committed else None
            placed = getattr(leaf, "sharding", None) or kept
            if placed is None and not is_numpy(leaf):
                loose.add(key)
            if key in loose and not on_cpu and not is_key(leaf):  # read to the host only
                targets[key] = np.empty(leaf.shape, leaf.dtype)
            else:
                targets[key] = _target(leaf, stored[key], placed or default)
        try:
            restored = checkpointer.restore(path, targets)
        except Exception as error:  # damaged files: name the directory
            raise InitError(
                f"lazymod.restore_sharded: Orbax could not read the checkpoint "
                f"{str(directory)!r} (its metadata matches the model; its data is damaged "
                f"or incomplete): {type(error).__name__}: {_first_line(error)}"
            ) from error
    leaves, treedef = jtu.tree_flatten_with_path(skeleton)
    for key in loose:  # on the default device, uncommitted
        restored[key] = _uncommitted(restored[key])
    values = [
        weak_as_made(restored[_key(path, with_state)], leaf)
        if isinstance(leaf, jax.ShapeDtypeStruct)
        # A NumPy array (which init leaves as it is): as saved.
        else numpy_read(restored[_key(path, with_state)], leaf)[0]
        if is_numpy(leaf)
        else leaf  # static, a Python number or a flag: as the lazy model has it
        for path, leaf in leaves
    ]
    return jtu.tree_unflatten(treedef, values)


def _arrays_by_key(tree: Any, *, is_pair: bool) -> dict[str, tuple[str, Any]]:
    """Every array (or `jax.ShapeDtypeStruct`) of `tree` by its checkpoint key, with
    where it is as a reader names it (`MLP.layers[0].weight`; a state's array by its
    layer: `the state Net.norm.batch_state_index.init[0]`)."""
    found: dict[str, tuple[str, Any]] = {}
    in_state = iter(state_paths(*tree) if is_pair else ())
    for path, leaf in jtu.tree_flatten_with_path(tree)[0]:
        if is_pair and path[0].idx == 1:
            in_model = next(in_state)
            where = _key(path, is_pair)
            where = where if in_model is None else "the state " + display_path(tree[0], in_model)
        else:
            where = display_path(tree[0], path[1:]) if is_pair else display_path(tree, path)
        if not (eqx.is_array(leaf) or isinstance(leaf, jax.ShapeDtypeStruct)):
            continue  # static, a Python number or a flag: not in the checkpoint
        key = _key(path, is_pair)
        if key in found:
            raise InitError(
                f"{found[key][0]} and {where} have the same path {key!r}, so a checkpoint "
                "cannot tell them apart. Rename one of the fields or dict keys."
            )
        found[key] = (where, leaf)
    return found


def _key(path: KeyPath, is_pair: bool) -> str:
    """The checkpoint key of the array at `path` (in the model, or the pair)."""
    if not is_pair:
        return path_str(path)
    if path[0].idx == 0:
        return path_str(path[1:])
    return STATE + path_str(path[1:], leading_dot=True)


def _target(
    leaf: jax.ShapeDtypeStruct | np.ndarray | np.generic,
    stored: Any,
    sharding: jax.sharding.Sharding,
) -> Any:
    """What Orbax restores the array into: its shape, dtype and `sharding` (one that
    fits: init_shapes refused any other). A NumPy array saved as init left it is read
    as NumPy; saved in the dtype JAX holds it in (after a jitted training step), as a
    JAX array in `sharding`."""
    if is_numpy(leaf):
        if jnp.dtype(stored.dtype) == leaf.dtype:
            return np.asarray(leaf)
        return jax.ShapeDtypeStruct(np.shape(leaf), held_as(leaf), sharding=sharding)
    return jax.ShapeDtypeStruct(leaf.shape, leaf.dtype, sharding=sharding)


def _held(tree: Any) -> dict[tuple[str, tuple[int, ...]], jax.Array]:
    """Each JAX array of `tree` by its checkpoint key and its shape."""
    return {
        (path_str(path), leaf.shape): leaf
        for path, leaf in jtu.tree_flatten_with_path(tree)[0]
        if isinstance(leaf, jax.Array) and not isinstance(leaf, jax.core.Tracer)
    }


def _uncommitted(value: Any) -> jax.Array:
    """`value` (NumPy, or an array on the default device) on the default device,
    uncommitted, for JAX to move. On the CPU, NumPy's view of a device buffer is
    put back without a copy."""
    if not is_key(value):
        return jax.device_put(np.asarray(value))
    data = jax.device_put(np.asarray(jax.random.key_data(value)))
    return jax.random.wrap_key_data(data, impl=jax.random.key_impl(value))


def _first_line(error: BaseException) -> str:
    return str(error).splitlines()[0] if str(error) else ""


def _default_device() -> jax.Device:
    device = jax.config.jax_default_device
    return device if isinstance(device, jax.Device) else jax.local_devices()[0]


def _as_epath(directory: str | os.PathLike[str]) -> Any:
    """`directory` as Orbax's path type (`etils.epath.Path`: local, or `gs://...`); a
    relative local path is made absolute (from the working directory), as Orbax needs."""
    from etils import epath

    local = "://" not in os.fspath(directory)
    return epath.Path(os.path.abspath(directory) if local else directory)


def _import_orbax(entry: str) -> Any:
    try:
        import orbax.checkpoint as ocp
    except ImportError as error:
        raise ImportError(
            f"{entry} saves and reads checkpoints with Orbax, which is not installed: "
            'pip install "lazymod[checkpoint]" (or pip install orbax-checkpoint).'
        ) from error
    return ocp
