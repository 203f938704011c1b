"""What a checkpoint of `lazymod.save_sharded` holds, read from its metadata alone, and
whether it matches the model `lazymod.restore_sharded` is given: every mismatch is
reported before a single array is read."""

from typing import Any

import jax
import jax.numpy as jnp

from ._errors import InitError
from ._numpy_leaves import held_as, is_numpy
from ._restore import describe_leaf


STATE = "state"  # the prefix of the state's arrays in a checkpoint of (model, state)
_LISTED = 8  # at most this many names (of arrays, of files) in an error message


def stored_arrays(ocp: Any, checkpointer: Any, path: Any, directory: Any) -> dict[str, Any]:
    """The checkpoint's metadata: each array's shape and dtype, by key. Reads no array."""
    if not (path / "_METADATA").exists():  # (Orbax would only log warnings)
        children = sorted(path.iterdir())
        inside = [child for child in children if (child / "_METADATA").exists()]
        raise InitError(
            f"lazymod.restore_sharded: {str(directory)!r} is not an Orbax checkpoint (it "
            f"holds {[child.name for child in children][:_LISTED] or 'nothing'}). "
            + (
                f"Pass the checkpoint inside it: {str(inside[0])!r}."
                if inside
                else "Pass the directory lazymod.save_sharded wrote."
            )
        )
    finished = ocp.utils.is_checkpoint_finalized(path)
    tree = getattr(checkpointer.metadata(path).item_metadata, "tree", None) if finished else None
    if tree is None:
        raise InitError(
            f"lazymod.restore_sharded: the checkpoint {str(directory)!r} is incomplete or "
            "damaged (Orbax finds no finished metadata in it: a save that was "
            "interrupted?). Restore an earlier checkpoint, or save again."
        )
    if not isinstance(tree, dict) or not all(
        isinstance(key, str) and hasattr(meta, "shape") and hasattr(meta, "dtype")
        for key, meta in tree.items()
    ):
        kind = type(tree).__name__ if not isinstance(tree, dict) else "nested dict"
        raise InitError(
            f"lazymod.restore_sharded: {str(directory)!r} is an Orbax checkpoint, but not "
            f"one written by lazymod.save_sharded: it holds a {kind}, not a flat dict of "
            "arrays keyed by path. Restore it with Orbax itself, then load the arrays "
            "into the model with lazymod.init_shapes and jax.tree_util."
        )
    return tree


def check_matches(
    model: Any,
    directory: Any,
    expected: dict[str, tuple[str, Any]],
    stored: dict[str, Any],
    with_state: bool,
) -> None:
    """Raise one `InitError` listing every array the checkpoint lacks or holds with
    another shape or dtype, and the arrays it holds that the model has no place for."""
    mismatches = []
    for key, (where, like) in expected.items():
        if key not in stored:
            mismatches.append(
                f"{where}: expected {describe_leaf(like)}; the checkpoint has no array {key!r}"
            )
            continue
        raw = jax.eval_shape(jax.random.key_data, like) if is_key(like) else like
        meta = stored[key]
        dtypes = {raw.dtype, held_as(like)} if is_numpy(like) else {raw.dtype}
        if tuple(meta.shape) != tuple(raw.shape) or jnp.dtype(meta.dtype) not in dtypes:
            mismatches.append(
                f"{where}: expected {describe_leaf(like)}, found {describe_leaf(meta)}"
            )
    extra = sorted(set(stored) - set(expected))
    if extra:
        names = ", ".join(repr(key) for key in extra[:_LISTED])
        more = f" and {len(extra) - _LISTED} more" if len(extra) > _LISTED else ""
        mismatches.append(
            f"the checkpoint holds {len(extra)} array{'s' if len(extra) > 1 else ''} the "
            f"model has no place for: {names}{more}"
        )
    if not mismatches:
        return
    hint = "Pass the inputs (shapes) and constructor arguments the checkpoint was saved with."
    state_keys = [key for key in stored if key.startswith(STATE + "[")]
    if not with_state and extra and set(extra) == set(state_keys):
        hint = "It holds a state too (saved from (model, state)): pass with_state=True."
    elif with_state and not state_keys and any(k.startswith(STATE + "[") for k in expected):
        hint = (
            "It holds no state (saved from the model alone): save (model, state), or "
            "restore the model alone (with_state=False)."
        )
    listing = "\n".join(f"  - {line}" for line in mismatches)
    raise InitError(
        f"lazymod.restore_sharded: the checkpoint {str(directory)!r} does not match "
        f"{type(model).__name__} as built from these inputs ({len(mismatches)} "
        f"mismatch{'es' if len(mismatches) > 1 else ''}); nothing was read:\n{listing}\n" + hint
    )


def is_key(leaf: Any) -> bool:
    return jnp.issubdtype(leaf.dtype, jax.dtypes.prng_key)
