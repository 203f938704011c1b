"""Paths of fields and submodules inside a pytree, as text and as stable hashes, and a
call's inputs as text, for error messages."""

import hashlib
import struct
from collections.abc import Sequence
from typing import Any

import equinox as eqx
import jax.tree_util as jtu


KeyPath = tuple[Any, ...]


def path_str(path: Sequence[Any], leading_dot: bool = False) -> str:
    """`(GetAttrKey('layers'), SequenceKey(0), GetAttrKey('weight'))` -> `layers[0].weight`
    (or `.layers[0].weight`, to append to a name)."""
    text = "".join(_entry_str(entry) for entry in path)
    return text if leading_dot or not text.startswith(".") else text[1:]


def display_path(root: Any, path: Sequence[Any]) -> str:
    """The path as a user reads it in an error message: `Model.layers[0].weight`."""
    return type(root).__name__ + "".join(_entry_str(entry) for entry in path)


def _entry_str(entry: Any) -> str:
    if isinstance(entry, jtu.GetAttrKey):
        return f".{entry.name}"
    if isinstance(entry, jtu.SequenceKey):
        return f"[{entry.idx}]"
    if isinstance(entry, jtu.DictKey):
        return f"[{entry.key!r}]"
    if isinstance(entry, jtu.FlattenedIndexKey):
        return f"[<flat index {entry.key}>]"
    return f"[{entry!r}]"


def _entry_token(entry: Any) -> tuple[str, str]:
    # Every entry is encoded with its kind and the repr of its name, so no two distinct
    # paths share an encoding (unlike joining names without a separator, which makes
    # ("ab", "c") and ("a", "bc") collide: google/flax#2157).
    if isinstance(entry, jtu.GetAttrKey):
        return ("attr", entry.name)
    if isinstance(entry, jtu.SequenceKey):
        return ("index", repr(entry.idx))
    if isinstance(entry, jtu.DictKey):
        return ("key", repr(entry.key))
    if isinstance(entry, jtu.FlattenedIndexKey):
        return ("flat", repr(entry.key))
    return ("other", repr(entry))


def path_hash(stream: str, kind: str, path: Sequence[Any], *extra: object) -> tuple[int, int]:
    """64 bits (as two uint32 words) that identify a draw: the stream, the kind of draw,
    the path and any extra parts. Stable across processes (no salted `hash()`)."""
    tokens = (stream, kind, tuple(_entry_token(entry) for entry in path), extra)
    digest = hashlib.blake2b(repr(tokens).encode(), digest_size=8).digest()
    high, low = struct.unpack("<II", digest)
    return high, low


def describe_inputs(args: Any, kwargs: Any) -> str:
    """The shapes and dtypes of the arrays among a call's inputs, an `eqx.nn.State` as
    one: `(float32[5], State)`."""
    shapes = [
        "State" if _is_state(leaf) else f"{leaf.dtype}[{','.join(str(d) for d in leaf.shape)}]"
        for leaf in jtu.tree_leaves((args, kwargs), is_leaf=_is_state)
        if _is_state(leaf) or (hasattr(leaf, "shape") and hasattr(leaf, "dtype"))
    ]
    return "(" + ", ".join(shapes) + ")"


def _is_state(x: Any) -> bool:
    return isinstance(x, eqx.nn.State)
