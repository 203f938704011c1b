"""Partition annotations and the rule of `sharding=mesh` (or `sharding=AxisRules`):
each array is sharded as the `partition` of the `Initializer` that made it, or of the
lazy layer that built it, says; an array the module holds already sharded over the
mesh (built by an earlier, partial init, whose lazy layer and annotation are gone)
keeps its sharding; every other array is replicated.

A partition names one entry per array axis: a mesh axis (or a tuple of them), or
`None`. With `AxisRules`, the entries are *logical* names (`"embed"`, `"mlp"`), which
the rules map to mesh axes, as Flax's logical partitioning and MaxText's
`logical_axis_rules` do: the model says what its axes mean, the launch script says
how they map to the mesh."""

import dataclasses
from collections.abc import Callable, Mapping
from typing import Any

import jax
import jax.tree_util as jtu

from ._errors import InitValueError
from ._paths import display_path, path_str
from ._sentinels import Initializer, sentinels_with_paths
from ._tree import lazy_modules


Axis = str | tuple[str, ...] | None
Partition = tuple[Axis, ...]


@dataclasses.dataclass(frozen=True)
class AxisRules:
    """`sharding=AxisRules(mesh, rules)`: shard every array as its partition
    annotation says, its logical axis names mapped to the mesh's axes by `rules`
    (`None`: not sharded). An annotation naming an axis that `rules` does not map
    is an error, so that a misspelt name cannot leave an array replicated.

    ```python
    import jax, jax.numpy as jnp, lazymod as lm

    mesh = jax.make_mesh((len(jax.devices()),), ("model",), (jax.sharding.AxisType.Auto,))
    layer = lm.nn.Linear(8).partitioned(weight=("mlp", "embed"), bias=("mlp",))
    rules = lm.AxisRules(mesh, {"mlp": "model", "embed": None})
    layer = lm.init(layer, 0, jax.ShapeDtypeStruct((4,), jnp.float32), sharding=rules)
    assert layer.weight.sharding.spec == jax.P("model", None)
    ```
    """

    mesh: jax.sharding.Mesh
    rules: Mapping[str, Axis]

    def __post_init__(self) -> None:
        if not isinstance(self.mesh, jax.sharding.Mesh):
            raise TypeError(f"lazymod.AxisRules takes a jax.sharding.Mesh; got {self.mesh!r}.")
        for name, axes in dict(self.rules).items():
            unknown = _off_mesh((axes,), self.mesh)
            if not isinstance(name, str) or unknown:
                raise ValueError(
                    f"lazymod.AxisRules: the rule {name!r} -> {axes!r} must map a str to "
                    f"mesh axes of {self.mesh.axis_names} (or None); {unknown} are not."
                )


def annotation_rule(
    module: Any,
    partitions: dict[str, tuple[str, Partition]],
    mesh: jax.sharding.Mesh,
    rules: Mapping[str, Axis] | None = None,
) -> Callable[[str, jax.ShapeDtypeStruct], jax.sharding.Sharding | None]:
    """The rule of `sharding=mesh` (`rules=None`: partitions name mesh axes) and of
    `sharding=AxisRules(mesh, rules)`, for a module's `partitions_of`."""
    replicated = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec())
    held = _held_on(module, mesh)

    def rule(path: str, leaf: jax.ShapeDtypeStruct) -> jax.sharding.Sharding | None:
        if path not in partitions:
            shape, sharding = held.get(path, (None, replicated))
            return sharding if shape == leaf.shape else replicated
        where, partition = partitions[path]
        if len(partition) != leaf.ndim:
            raise InitValueError(
                f"{where}: partition={partition!r} has {len(partition)} entries for an "
                f"array of shape {leaf.shape}; give one per axis (None for an axis not "
                "sharded)"
            )
        if rules is not None:
            partition = tuple(_to_mesh_axes(where, axis, rules) for axis in partition)
        unknown = _off_mesh(partition, mesh)
        if unknown:
            raise InitValueError(
                f"{where}: partition={partition!r} names the mesh axis {unknown[0]!r}, "
                f"which the mesh lacks: its axes are {mesh.axis_names}. Name one of "
                "them (or None), or map logical axes with lazymod.AxisRules."
            )
        return jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec(*partition))

    return rule


def _held_on(
    module: Any, mesh: jax.sharding.Mesh
) -> dict[str, tuple[tuple[int, ...], jax.sharding.NamedSharding | None]]:
    """`{path: (shape, sharding)}` of the arrays `module` holds already sharded over
    `mesh`: what an earlier init placed (a partial one's built layers have lost their
    annotations), to stay where it is. A traced array (inside `jax.jit`) on `mesh`
    keeps the sharding its type carries over Explicit axes; over Auto axes, whose
    shardings a trace does not know, it is left as it comes in (`None`)."""
    held = {}
    explicit = all(kind == jax.sharding.AxisType.Explicit for kind in mesh.axis_types)
    for path, leaf in jtu.tree_flatten_with_path(module)[0]:
        if isinstance(leaf, jax.core.Tracer):
            sharding = jax.typeof(leaf).sharding
            if isinstance(sharding, jax.sharding.NamedSharding) and (
                sharding.mesh == mesh.abstract_mesh
            ):
                kept = jax.sharding.NamedSharding(mesh, sharding.spec) if explicit else None
                held[path_str(path)] = (leaf.shape, kept)
        elif isinstance(leaf, jax.Array):
            sharding = leaf.sharding
            if isinstance(sharding, jax.sharding.NamedSharding) and sharding.mesh == mesh:
                held[path_str(path)] = (leaf.shape, sharding)
    return held


def partitions_of(module: Any) -> dict[str, tuple[str, Partition]]:
    """`{path of the array: (its display path, partition)}` for every annotated array
    init will make: the `Initializer`s' and the lazy layers' annotations."""
    found = {
        path_str(path): (display_path(module, path), leaf.partition)
        for path, leaf in sentinels_with_paths(module)
        if isinstance(leaf, Initializer) and leaf.partition is not None
    }
    for path, node in lazy_modules(module):
        for field, partition in getattr(node, "partition", None) or ():
            at = path_str(path) + ("." if path else "") + field
            found[at] = (f"{display_path(module, path)}.{field}", partition)
    return found


def _off_mesh(partition: tuple[Axis, ...], mesh: jax.sharding.Mesh) -> list[str]:
    """The names in `partition` (entries of mesh axes: a name, a tuple of them, or
    `None`) that are not axes of `mesh`."""
    named = [a for axes in partition for a in (axes if isinstance(axes, tuple) else (axes,))]
    return [a for a in named if a is not None and a not in mesh.axis_names]


def _to_mesh_axes(where: str, axis: Axis, rules: Mapping[str, Axis]) -> Axis:
    if axis is None:
        return None
    names = axis if isinstance(axis, tuple) else (axis,)
    missing = [name for name in names if name not in rules]
    if missing:
        raise InitValueError(
            f"{where}: the logical axis {missing[0]!r} has no rule; add it to "
            f"lazymod.AxisRules(mesh, rules) (map it to None to replicate that axis)."
        )
    mapped = [rules[name] for name in names]
    flat = tuple(a for m in mapped for a in (m if isinstance(m, tuple) else (m,)) if a)
    return None if not flat else flat[0] if len(flat) == 1 else flat
