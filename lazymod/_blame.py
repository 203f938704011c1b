"""Which module an exception came from: the innermost method, among the frames it
passed through, whose `self` is a module of the tree init runs (an Equinox layer
inside a `Sequential`, a built layer), for the note that names it."""

import dis
import functools
from types import CodeType, TracebackType
from typing import Any, NamedTuple

import equinox as eqx
import jax.tree_util as jtu

from ._paths import describe_inputs, KeyPath


class Blame(NamedTuple):
    path: KeyPath  # inside the tree searched
    module: Any
    method: str
    inputs: str  # as describe_inputs gives them
    # Whether `inputs` are those it was called with: not if the method rebinds an
    # argument (Equinox's Conv2d makes its `x` 4-d), as a frame shows only its locals.
    as_called: bool


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
        inputs = describe_inputs([frame.f_locals.get(name) for name in names], {})
        return Blame(path, module, code.co_name, inputs, not _rebinds(code, frozenset(names)))
    return None


@functools.lru_cache(maxsize=1024)
def _rebinds(code: CodeType, arguments: frozenset[str]) -> bool:
    """Whether the function of `code` assigns to (or deletes) one of its `arguments`,
    by any of CPython's store instructions: 3.12 adds `STORE_FAST_MAYBE_NULL`, 3.13
    `STORE_FAST_STORE_FAST` and `STORE_FAST_LOAD_FAST`, whose names are a pair."""
    for instruction in dis.get_instructions(code):
        if not instruction.opname.startswith(_STORES):
            continue
        names = instruction.argval
        names = names if isinstance(names, tuple) else (names,)
        if instruction.opname == "STORE_FAST_LOAD_FAST":
            names = names[:1]  # stores the first, loads the second
        if any(name in arguments for name in names):
            return True
    return False


_STORES = ("STORE_FAST", "STORE_DEREF", "DELETE_FAST", "DELETE_DEREF")


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
