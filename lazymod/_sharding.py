"""`lazymod.init(..., sharding=...)`: where each computed array goes."""

from collections.abc import Callable, Sequence
from typing import Any

import jax
import jax.tree_util as jtu
import numpy as np

from ._errors import init_error_like, InitError, InitValueError
from ._partitions import annotation_rule, AxisRules, partitions_of
from ._paths import display_path, KeyPath, path_str
from ._stateful import state_paths


# `rule(path, leaf) -> Sharding | None`, as `lazymod.init(..., sharding=rule)` takes it.
ShardingRule = Callable[[str, jax.ShapeDtypeStruct], jax.sharding.Sharding | None]
Sharding = ShardingRule | jax.sharding.Sharding | jax.sharding.Mesh | AxisRules | None


def targets_for(
    module: Any,
    shapes: Sequence[jax.ShapeDtypeStruct],
    paths: Sequence[KeyPath],
    sharding: Sharding,
    partial: bool = False,
) -> list[jax.sharding.Sharding | None]:
    """The sharding of every array (`shapes`, at `paths` in the tree init returns), as
    `sharding=` says, before any is computed: the evaluator computes each array's
    shards where they go. With `partial`, an annotation may name an array not made
    yet."""
    if sharding is None:
        return [None] * len(shapes)
    if isinstance(sharding, jax.sharding.Mesh | AxisRules):
        partitions = partitions_of(module)
        if not partial:
            _check_annotations(partitions, paths)
        if isinstance(sharding, AxisRules):
            sharding = annotation_rule(module, partitions, sharding.mesh, dict(sharding.rules))
        else:
            sharding = annotation_rule(module, partitions, sharding)
    elif not (isinstance(sharding, jax.sharding.Sharding) or _is_rule(sharding)):
        raise TypeError(
            "lazymod.init: `sharding` must be a jax.sharding.Mesh, a lazymod.AxisRules, a "
            "jax.sharding.Sharding, a function rule(path, leaf) -> Sharding | None, or "
            f"None; got {type(sharding).__name__}. For one device, pass "
            "jax.sharding.SingleDeviceSharding(device)."
        )
    return [_sharding_for(module, path, leaf, sharding) for path, leaf in zip(paths, shapes)]


def place(
    module: Any,
    values: list[Any],
    array_paths: list[KeyPath],
    targets: list[jax.sharding.Sharding | None],
) -> list[Any]:
    """Put every computed array on its device(s). `values` holds the parameters (at
    `array_paths`, bound for `targets`) first, then the captured intermediates, which
    go to the default device. Arrays the evaluator made in their shards already stay
    as they are; host arrays bound for the default device go in one transfer."""
    placed = list(values)
    host: list[int] = []
    for i, value in enumerate(values):
        target = targets[i] if i < len(targets) else None
        if target is not None and not _placed_as(value, target):
            placed[i] = _put(module, array_paths[i], value, target)
        elif target is None and isinstance(value, np.ndarray):
            host.append(i)
    for i, value in zip(host, jax.device_put([values[i] for i in host])):
        placed[i] = value
    return placed


def with_shardings(
    module: Any, tree: Any, sharding: Sharding, with_state: bool, partial: bool = False
) -> Any:
    """The tree of `jax.ShapeDtypeStruct`s `init_shapes` returns, each carrying the
    sharding init would give its array. The state's arrays (of the pair `(model,
    state)`) are sharded as init shards them, at their path in the model
    (`norm.batch_state_index.init[0]`); an initial state the module holds as NumPy or
    a Python number init places nowhere, and neither does this. A sharding that does
    not fit its array's shape is refused here, as init refuses it."""
    leaves, treedef = jtu.tree_flatten_with_path(tree)
    paths: list[KeyPath | None] = [path for path, _ in leaves]
    if with_state:  # the pair: paths into the model lose the [0]; the state's, as init
        model, state = tree
        in_state = iter(state_paths(model, state))
        paths = [path[1:] if path[0].idx == 0 else next(in_state) for path, _ in leaves]
        held = {path_str(path): leaf for path, leaf in jtu.tree_flatten_with_path(module)[0]}
        for i, path in enumerate(paths):
            value = held.get(path_str(path)) if path is not None else None
            if value is not None and not isinstance(value, jax.Array):
                paths[i] = None  # (init traces only JAX arrays; it leaves these as held)
    arrays = [
        i
        for i, (_, leaf) in enumerate(leaves)
        if isinstance(leaf, jax.ShapeDtypeStruct) and paths[i] is not None
    ]
    found = targets_for(
        module, [leaves[i][1] for i in arrays], [paths[i] for i in arrays], sharding, partial
    )
    out = [leaf for _, leaf in leaves]
    for i, target in zip(arrays, found):
        leaf = leaves[i][1]
        try:  # (the struct checks the rank; shard_shape, that each axis divides)
            out[i] = jax.ShapeDtypeStruct(
                leaf.shape, leaf.dtype, sharding=target, weak_type=leaf.weak_type
            )
            if target is not None:
                target.shard_shape(leaf.shape)
        except (ValueError, TypeError) as error:
            raise _misfit(module, paths[i], leaf.shape, target, error) from error
    return jtu.tree_unflatten(treedef, out)


def _placed_as(value: Any, target: jax.sharding.Sharding) -> bool:
    return (
        isinstance(value, jax.Array)
        and not isinstance(value, jax.core.Tracer)
        and (value.sharding == target)
    )


def _check_annotations(partitions: dict[str, Any], paths: Sequence[KeyPath]) -> None:
    """Refuse a partition annotation (of `partitions_of`) that names no array init
    makes (a misspelt field of a lazy layer would otherwise leave its array
    replicated)."""
    made = {path_str(path) for path in paths}
    for path, (where, _) in partitions.items():
        if path not in made:
            parent, _, _ = path.rpartition(".")
            prefix = parent + "." if parent else ""
            names = [m[len(prefix) :] for m in made if m.startswith(prefix)]
            siblings = sorted(name for name in names if "." not in name)
            there = f"; there it makes {', '.join(siblings)}" if siblings else ""
            raise InitValueError(
                f"{where}: a partition is given for it, but init makes no array there{there}. "
                "Name the built layer's arrays."
            )


def _is_rule(sharding: Any) -> bool:
    return callable(sharding) and not isinstance(sharding, (str, jax.Device))


def _put(module: Any, path: KeyPath, value: Any, target: jax.sharding.Sharding) -> Any:
    """`jax.device_put` (inside jit: a sharding constraint), naming the array when the
    sharding does not fit it."""
    try:
        if isinstance(value, jax.core.Tracer):  # inside jit: a sharding constraint
            try:
                return jax.lax.with_sharding_constraint(value, target)
            except ValueError:  # a mesh of explicit axes takes device_put instead
                return jax.device_put(value, target)
        if target.is_fully_addressable:
            return jax.device_put(value, target)
        # Across processes: each takes its own devices' slices, with no communication
        # (device_put would check that every process holds the same value).
        host = np.asarray(value)
        return jax.make_array_from_callback(host.shape, target, lambda index: host[index])
    except (ValueError, TypeError) as error:
        raise _misfit(module, path, value.shape, target, error) from error


def _misfit(
    module: Any,
    path: KeyPath,
    shape: tuple[int, ...],
    target: jax.sharding.Sharding,
    error: ValueError | TypeError,
) -> InitError:
    """The error of a sharding that does not fit the shape of the array at `path`."""
    return init_error_like(error)(
        f"{display_path(module, path)}: the sharding {target} does not fit its "
        f"shape {tuple(shape)}: {type(error).__name__}: "
        f"{str(error).splitlines()[0]} Give this array a sharding with one entry per "
        "axis, each dividing its size: a rule can look at leaf.shape; an annotation "
        "(.partitioned, Initializer(partition=)) or a lazymod.AxisRules mapping can "
        "name another mesh axis, or None."
    )


def _sharding_for(
    module: Any,
    path: KeyPath,
    leaf: jax.ShapeDtypeStruct,
    sharding: ShardingRule | jax.sharding.Sharding,
) -> jax.sharding.Sharding | None:
    if isinstance(sharding, jax.sharding.Sharding):
        return sharding
    leaf = jax.ShapeDtypeStruct(leaf.shape, leaf.dtype)
    try:
        target = sharding(path_str(path), leaf)
    except InitError:  # from an annotation: it names the array already
        raise
    except Exception as error:
        raise init_error_like(error)(
            f"{display_path(module, path)}: the sharding rule raised "
            f"{type(error).__name__}: {error}"
        ) from error
    if target is not None and not isinstance(target, jax.sharding.Sharding):
        spec = isinstance(target, jax.sharding.PartitionSpec)
        what = f"the PartitionSpec {target}" if spec else f"{target!r} (a {type(target).__name__})"
        raise InitError(
            f"{display_path(module, path)}: the sharding rule returned {what}; it must "
            "return a jax.sharding.Sharding or None."
            + (" Return jax.sharding.NamedSharding(mesh, spec) instead." if spec else "")
        )
    return target
