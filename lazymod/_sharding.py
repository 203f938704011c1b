"""`lazymod.init(..., sharding=...)`: where each computed array goes."""

from collections.abc import Callable
from typing import Any

import jax
import numpy as np

from ._errors import init_error_like, InitError
from ._paths import display_path, KeyPath, path_str
from ._sentinels import Initializer, sentinels_with_paths


# `rule(path, leaf) -> Sharding | None`, as `lazymod.init(..., sharding=rule)` takes it.
ShardingRule = Callable[[str, jax.ShapeDtypeStruct], jax.sharding.Sharding | None]
Sharding = ShardingRule | jax.sharding.Sharding | jax.sharding.Mesh | None


def place(
    module: Any, values: list[Any], array_paths: list[KeyPath], sharding: Sharding
) -> list[Any]:
    """Put every computed array on its device(s): host arrays from the evaluator go
    straight to their shards. `values` holds the parameters (at `array_paths`) first,
    then the captured intermediates, which go to the default device."""
    if isinstance(sharding, jax.sharding.Mesh):
        sharding = _annotation_rule(module, sharding)
    elif not (
        sharding is None or isinstance(sharding, jax.sharding.Sharding) or _is_rule(sharding)
    ):
        raise TypeError(
            "lazymod.init: `sharding` must be a jax.sharding.Mesh, a "
            "jax.sharding.Sharding, a function rule(path, leaf) -> Sharding | None, or "
            f"None; got {type(sharding).__name__}. For one device, pass "
            "jax.sharding.SingleDeviceSharding(device)."
        )
    placed = list(values)
    host: list[int] = []  # host arrays bound for the default device: one transfer
    for i, value in enumerate(values):
        target = None
        if i < len(array_paths) and sharding is not None:
            target = _sharding_for(module, array_paths[i], value, sharding)
        if target is not None:
            placed[i] = _put(module, array_paths[i], value, target)
        elif isinstance(value, np.ndarray):
            host.append(i)
    for i, value in zip(host, jax.device_put([values[i] for i in host])):
        placed[i] = value
    return placed


def _is_rule(sharding: Any) -> bool:
    return callable(sharding) and not isinstance(sharding, (str, jax.Device))


def _put(module: Any, path: KeyPath, value: Any, target: jax.sharding.Sharding) -> Any:
    """`jax.device_put` (inside jit: a sharding constraint), naming the array when the
    sharding does not fit it."""
    try:
        return jax.device_put(value, target)
    except (ValueError, TypeError) as error:
        raise init_error_like(error)(
            f"{display_path(module, path)}: the sharding {target} does not fit its "
            f"shape {tuple(value.shape)}: {type(error).__name__}: "
            f"{str(error).splitlines()[0]} Give this array a sharding with one entry per "
            "axis, each dividing its size (a rule can look at leaf.shape)."
        ) from error


def _annotation_rule(module: Any, mesh: jax.sharding.Mesh) -> ShardingRule:
    """The rule of `sharding=mesh`: the `partition` of the Initializer that made the
    array, replicated when there is none."""
    partitions = {
        path_str(path): leaf.partition
        for path, leaf in sentinels_with_paths(module)
        if isinstance(leaf, Initializer) and leaf.partition is not None
    }

    def rule(path: str, leaf: jax.ShapeDtypeStruct) -> jax.sharding.Sharding:
        if path not in partitions:
            return jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec())
        partition = partitions[path]
        if len(partition) != leaf.ndim:
            raise ValueError(
                f"partition={partition!r} has {len(partition)} entries for an array of "
                f"shape {leaf.shape}; give one per axis (None for an axis not sharded)"
            )
        return jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec(*partition))

    return rule


def _sharding_for(
    module: Any,
    path: KeyPath,
    value: Any,
    sharding: ShardingRule | jax.sharding.Sharding,
) -> jax.sharding.Sharding | None:
    if isinstance(sharding, jax.sharding.Sharding):
        return sharding
    leaf = jax.ShapeDtypeStruct(value.shape, value.dtype)
    try:
        target = sharding(path_str(path), leaf)
    except Exception as error:
        raise init_error_like(error)(
            f"{display_path(module, path)}: the sharding rule raised "
            f"{type(error).__name__}: {error}"
        ) from error
    if target is not None and not isinstance(target, jax.sharding.Sharding):
        raise InitError(
            f"{display_path(module, path)}: the sharding rule returned "
            f"{type(target).__name__}; it must return a jax.sharding.Sharding or None."
        )
    return target
