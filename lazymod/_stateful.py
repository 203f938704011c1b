"""Models with `eqx.nn.State`: the state init passes to the forward pass, and the
`(model, state)` pair it returns, as `eqx.nn.make_with_state` builds it."""

from typing import Any

import equinox as eqx
import jax
import jax.numpy as jnp
import jax.tree_util as jtu

from ._errors import InitValueError
from ._paths import KeyPath


def initial_state(module: Any, entry: str = "lazymod.init_with_state") -> eqx.nn.State:
    """The state the forward pass gets during init: the initial state of every stateful
    layer already built (an `eqx.nn.BatchNorm` written by hand beside lazy layers);
    lazy layers add their own when they are built (`with_layer_state`)."""
    try:
        return eqx.nn.State(module)
    except ValueError as error:  # Equinox: an initial state was deleted
        raise InitValueError(  # Equinox raises ValueError
            f"{type(module).__name__}: a stateful layer in it has no initial state any "
            "more (a model returned by lazymod.init_with_state or eqx.nn.make_with_state "
            "keeps its state apart). "
            + (
                "Initialize the lazy model instead, or use the (model, state) pair you "
                "have; to initialize lazy layers added to it, pass its state: "
                "lazymod.init_with_state(model, key, *inputs, state=state)."
                if entry == "lazymod.init_with_state"
                else f"Give {entry} the lazy model: with_state=True describes the pair "
                "lazymod.init_with_state builds from it."
            )
        ) from error


def continued(module: Any, state: eqx.nn.State) -> Any:
    """`module` with the value `state` holds for each of its `eqx.nn.StateIndex`es as
    that index's initial value (a trained model's running statistics, where
    `eqx.nn.make_with_state` deleted the initial ones); an index `state` does not
    hold (a layer added since) keeps its own."""
    if not isinstance(state, eqx.nn.State):
        raise TypeError(
            "lazymod.init_with_state: state= takes the eqx.nn.State of the model's "
            f"layers built already (as init_with_state returned it); got {type(state).__name__}."
        )

    def fill(path: Any, leaf: Any) -> Any:
        if not _is_index(leaf):
            return leaf
        try:
            value = state.get(leaf)
        except KeyError:
            if _has_initial_state(leaf):
                return leaf  # a layer added since: its own initial state
            raise InitValueError(
                f"{type(module).__name__}{jtu.keystr(path)}: the state given as state= "
                "holds no value for this stateful layer, whose initial state was deleted. "
                "Pass the whole state init_with_state returned with this model (as "
                "training moved it), not a substate or another model's."
            ) from None
        return eqx.tree_at(lambda index: index.init, leaf, value)

    return jtu.tree_map_with_path(fill, module, is_leaf=_is_index)


def state_paths(model: Any, state: eqx.nn.State) -> list[KeyPath | None]:
    """Where each leaf of `state` (in the order it flattens) was in the model before
    init split off the state: at its layer's `eqx.nn.StateIndex`, in its `init`
    (`norm.batch_state_index.init[0]`), as a sharding rule sees that array and as
    messages name it; `None` for an entry of no index of the model (a layer swapped
    out since)."""
    indexes: dict[Any, KeyPath] = {}
    for path, leaf in jtu.tree_flatten_with_path(model, is_leaf=_is_index)[0]:
        if _is_index(leaf):
            indexes.setdefault(leaf.marker, path)
    markers = jtu.tree_structure(state).node_data()[1]  # as State flattens: its keys
    paths: list[KeyPath | None] = []
    for path, _ in jtu.tree_flatten_with_path(state)[0]:
        index = indexes.get(markers[path[0].key])
        paths.append(None if index is None else (*index, jtu.GetAttrKey("init"), *path[1:]))
    return paths


def _has_initial_state(index: eqx.nn.StateIndex) -> bool:
    try:
        eqx.nn.State(index)  # Equinox refuses an index whose initial state was deleted
    except ValueError:
        return False
    return True


def split_state(tree: Any, abstract: bool = False) -> tuple[Any, eqx.nn.State]:
    """`(model, state)` as `eqx.nn.make_with_state` returns them: the state of every
    `eqx.nn.StateIndex`, and the model with its initial states deleted. With
    `abstract`, the initial states are `jax.ShapeDtypeStruct`s, which
    `eqx.nn.State` cannot hold as it is built, so the state is assembled here."""
    if not abstract:
        return eqx.nn.make_with_state(lambda: tree)()
    # As make_with_state does: each index's marker becomes its path, so that the
    # skeleton fits the (model, state) that init_with_state returns.
    leaves, treedef = jtu.tree_flatten_with_path(tree, is_leaf=_is_index)
    entries, renamed = {}, []
    for path, leaf in leaves:
        if _is_index(leaf):
            leaf = eqx.nn.StateIndex(leaf.init)
            marker = type(tree).__name__ + jtu.keystr(path)
            object.__setattr__(leaf, "marker", marker)
            entries[marker] = jtu.tree_map(_as_state_holds_it, leaf.init)
        renamed.append(leaf)
    model = jtu.tree_unflatten(treedef, renamed)
    return eqx.nn.delete_init_state(model), _state_of(entries)


def _as_state_holds_it(value: Any) -> Any:
    """The shape of an initial state's leaf as `eqx.nn.State` holds it, through
    `jnp.asarray`: a NumPy float64 array is float32 without x64, a Python int a weakly
    typed int32. Only described: no array is made."""
    if isinstance(value, jax.ShapeDtypeStruct) or not eqx.is_array_like(value):
        return value
    dtype, weak = jax.dtypes.result_type(value, return_weak_type_flag=True)
    return jax.ShapeDtypeStruct(jnp.shape(value), dtype, weak_type=weak)


def _is_index(x: Any) -> bool:
    return isinstance(x, eqx.nn.StateIndex)


def _state_of(entries: dict[Any, Any]) -> eqx.nn.State:
    # eqx.nn.State offers no public way to build one from entries; it is a dict
    # underneath, in the order the model flattens (which de/serialisation relies on).
    state = object.__new__(eqx.nn.State)
    state._state = entries  # pyright: ignore[reportAttributeAccessIssue]
    return state


def with_layer_state(state: eqx.nn.State, layer: Any) -> eqx.nn.State:
    """`state` plus the initial state of `layer`'s `StateIndex`es, for a stateful layer
    that was built during init and has to run before `lazymod.init_with_state` can
    collect the final state."""
    added = eqx.nn.State(layer)
    return _state_of({**state._state, **added._state})  # pyright: ignore[reportAttributeAccessIssue]
