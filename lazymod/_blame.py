"""Which module an exception came from: the innermost method, among the frames it
passed through, whose `self` is a module of the tree init runs (an Equinox layer
inside a `Sequential`, a built layer), for the note that names it."""

from types import TracebackType
from typing import Any, NamedTuple

import equinox as eqx
import jax.tree_util as jtu

from ._paths import describe_inputs, KeyPath


class Blame(NamedTuple):
    path: KeyPath  # inside the tree searched
    module: Any
    method: str
    inputs: str  # as describe_inputs gives them


def blame(error: BaseException, root: Any) -> Blame | None:
    """The innermost method call on a module inside `root` (by identity) that `error`
    passed through, or `None` when none did (a copy made by `jax.vmap` is not found)."""
    for frame in reversed(_frames(error.__traceback__)):
        module, name = frame.f_locals.get("self"), frame.f_code.co_name
        if not isinstance(module, eqx.Module) or _private(name):
            continue  # a private method is a layer's internals: name the public one
        path = _path_of(root, module)
        if path is None:
            continue
        code = frame.f_code
        names = code.co_varnames[1 : code.co_argcount + code.co_kwonlyargcount]
        inputs = [frame.f_locals.get(name) for name in names]
        return Blame(path, module, code.co_name, describe_inputs(inputs, {}))
    return None


def _private(name: str) -> bool:
    return name.startswith("_") and not (name.startswith("__") and name.endswith("__"))


def _frames(traceback: TracebackType | None) -> list[Any]:
    frames = []
    while traceback is not None:
        frames.append(traceback.tb_frame)
        traceback = traceback.tb_next
    return frames


def _path_of(root: Any, target: Any) -> KeyPath | None:
    if target is root:
        return ()
    leaves, _ = jtu.tree_flatten_with_path(root, is_leaf=lambda node: node is target)
    return next((path for path, leaf in leaves if leaf is target), None)
