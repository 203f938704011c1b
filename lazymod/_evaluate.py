"""Evaluate the jaxpr traced by `lazymod.init` without compiling one program per
parameter shape: the fast evaluator behind `_values.evaluate_constants`.

A value built only from `random_bits` (threefry), scalars and elementwise ops stays
`Symbolic` until needed, and is then computed in chunks (`_chunks.py`). Keys are derived
in NumPy (`_host_keys.py`). Everything else is evaluated as `jax.core.eval_jaxpr` would.
`record` walks the same way with keys known by their rows in a `KeyTable`, to give a
`Template` (`_replay.py`) that later inits of a kept trace replay without a walk.
The code relies on JAX internals (primitive names and parameters, equation contexts,
key implementations): anything in `UNSUPPORTED` that it raises means "this JAX is not
the one it knows", and the caller falls back to JAX's own evaluator.
"""

import dataclasses
import functools
from collections.abc import Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from jax.extend import core as jex_core

from . import _fragments as fragments, _host_keys
from ._chunks import compute, compute_all, PACK_LIMIT, plan_of, size_of, Symbolic, to_host
from ._host_keys import HostKeys
from ._key_table import KeySlots, KeyTable
from ._replay import Template
from ._shards import compute_sharded


# What the evaluator raises when JAX's internals are not what it expects.
UNSUPPORTED = (AttributeError, ImportError, KeyError, NotImplementedError, TypeError)

_ELEMENTWISE = frozenset(
    """abs acos acosh add and asin asinh atan atan2 atanh bitcast_convert_type cbrt ceil clamp clz
    convert_element_type copy copy_p cos cosh digamma div eq erf erf_inv erfc exp exp2
    expm1 floor ge gt integer_pow is_finite le lgamma log log1p logistic lt max min mul
    ne neg nextafter not or population_count pow reduce_precision rem round rsqrt
    select_n shift_left shift_right_arithmetic shift_right_logical sign sin sinh sqrt
    square stop_gradient sub tan tanh xor""".split()
)
_CALLS = frozenset({"jit", "pjit", "closed_call", "core_call", "custom_jvp_call"})
_RESHAPES = frozenset({"reshape", "squeeze"})


# Primitives whose large outputs the evaluator keeps symbolic (or derives keys with).
_SYMBOLIC = _ELEMENTWISE | _CALLS | _RESHAPES | {"random_bits", "broadcast_in_dim"}


def off_fast_path(jaxpr: jex_core.Jaxpr) -> list[bool]:
    """For each output of `jaxpr`, whether computing it needs a large value the fast
    evaluator cannot keep symbolic (a QR, a matrix product of draws): such a value is
    computed whole, so a sharded init computes it with a jitted program instead."""
    return _slow_outputs(jaxpr, [False] * len(jaxpr.invars))


def _slow_outputs(jaxpr: jex_core.Jaxpr, slow_in: list[bool]) -> list[bool]:
    slow = {v for v, s in zip(jaxpr.invars, slow_in) if s}
    for eqn in jaxpr.eqns:
        ins = [isinstance(v, jex_core.Var) and v in slow for v in eqn.invars]
        inner = eqn.params.get("jaxpr", eqn.params.get("call_jaxpr"))
        if eqn.primitive.name in _CALLS and isinstance(inner, jex_core.ClosedJaxpr):
            outs = _slow_outputs(inner.jaxpr, ins)
        else:
            big = any(size_of(v.aval.shape) > PACK_LIMIT for v in eqn.outvars)
            outs = [any(ins) or (big and eqn.primitive.name not in _SYMBOLIC)] * len(eqn.outvars)
        slow.update(v for v, s in zip(eqn.outvars, outs) if s)
    return [isinstance(v, jex_core.Var) and v in slow for v in jaxpr.outvars]


def evaluate(
    closed: jex_core.ClosedJaxpr,
    outvars: Sequence[Any],
    targets: Sequence[jax.sharding.Sharding | None] | None = None,
    inputs: Sequence[Any] | None = None,
) -> list[Any]:
    """The values of `outvars` (variables or literals of `closed.jaxpr`), which must
    not depend on the jaxpr's specs (their `inputs` are `None`; the last inputs may be
    root keys). A value bound for a sharding (`targets`) is computed in its shards
    where it can be (`_shards.py`): a global array; otherwise
    in host memory, as a NumPy array for the caller to place. Other values computed
    here go to the default device as soon as they are ready."""
    jaxpr = closed.jaxpr.replace(outvars=list(outvars))
    inputs = [None] * len(jaxpr.invars) if inputs is None else list(inputs)
    outs = _eval(jaxpr, closed.consts, inputs)
    targets = list(targets) if targets is not None else [None] * len(outs)
    symbolic = [(out, t) for out, t in zip(outs, targets) if isinstance(out, Symbolic)]
    compute_all([out for out, target in symbolic if target is None], on_device=True)
    for out, target in symbolic:  # small values: computed whole, side by side
        if target is not None and out.value is None and size_of(out.shape) > PACK_LIMIT:
            out.value = compute_sharded(out, target)
    compute_all([out for out, target in symbolic if target is not None], on_device=False)
    return [_concrete(out) for out in outs]


def record(
    closed: jex_core.ClosedJaxpr, outvars: Sequence[Any], inputs: Sequence[Any]
) -> Template | None:
    """The evaluation of `outvars` for any root keys (the inputs that are not `None`,
    concrete threefry keys), or `None` if a key's bits reach an operation not recorded
    (then `evaluate` walks the jaxpr each time)."""
    roots = tuple(i for i, x in enumerate(inputs) if x is not None)
    if not _host_keys.enabled() or not all(_host_keys.from_array(inputs[i]) for i in roots):
        return None
    table = KeyTable(len(roots))
    args: list[Any] = [None] * len(inputs)
    for row, i in enumerate(roots):
        args[i] = table.root(row, inputs[i].dtype)
    jaxpr = closed.jaxpr.replace(outvars=list(outvars))
    try:
        outs = _eval(jaxpr, closed.consts, args, table)
    except NeedsKeyBits:
        return None
    plans, plan_outputs, key_outputs, constants = [], [], [], []
    walked: dict[int, Any] = {}  # the plans of the originals of renumbered copies
    for i, out in enumerate(outs):
        if isinstance(out, Symbolic) and out.value is None:
            plans.append(plan_of(out, walked))
            plan_outputs.append(i)
        elif isinstance(out, KeySlots):
            key_outputs.append((i, out))
        else:
            constants.append((i, _concrete(out)))
    return Template(
        table,
        roots,
        tuple(plans),
        tuple(plan_outputs),
        tuple(key_outputs),
        tuple(constants),
        len(outs),
    )


def _eval(
    jaxpr: jex_core.Jaxpr,
    consts: Sequence[Any],
    args: Sequence[Any],
    table: KeyTable | None = None,
) -> list[Any]:
    """Evaluate `jaxpr`. With a `table` (recording a `Template`), keys are `KeySlots`
    of it, and a value that needs a key's bits raises `NeedsKeyBits`."""
    env: dict[Any, Any] = {}

    def read(v: Any) -> Any:
        if isinstance(v, jex_core.Literal):
            return np.asarray(v.val, v.aval.dtype) if np.ndim(v.val) == 0 else v.val
        return env[v]

    if table is not None:
        consts = [_as_slots(c, table) for c in consts]
    elif _host_keys.enabled():
        consts = [_host_keys.from_array(c) or c for c in consts]
        args = [_host_keys.from_array(a) or a for a in args]
    env.update(zip(jaxpr.constvars, consts))
    env.update(zip(jaxpr.invars, args))
    for eqn in jaxpr.eqns:
        outs = _eval_eqn(eqn, [read(v) for v in eqn.invars], table)
        for var, out in zip(eqn.outvars, outs):
            env[var] = out
    return [read(v) for v in jaxpr.outvars]


def _eval_call(closed: jex_core.ClosedJaxpr, ins: list[Any], table: KeyTable) -> list[Any]:
    """A call's body, recorded: walked once per kind of inputs (`_fragments.py`)."""
    kind = fragments.signature(closed, ins)
    walked = None if kind is None else table.calls_walked.get(kind)
    if walked is not None:
        return fragments.replay(walked, ins, table)
    start = table.size
    outs = _eval(closed.jaxpr, closed.consts, ins, table)
    if kind is not None:
        table.calls_walked[kind] = fragments.remember(closed, ins, start, table, outs)
    return outs


class NeedsKeyBits(Exception):
    """Raised while recording a `Template`: a value needs the bits of a key (a key
    given to a JAX operation the evaluator does not record), so its computation is
    not the same for every init."""


def _as_slots(x: Any, table: KeyTable) -> Any:
    """A concrete array of threefry keys as constant rows of `table`."""
    keys = _host_keys.from_array(x)
    return x if keys is None else table.constant(keys.data, keys.dtype)


def _eval_eqn(eqn: Any, ins: list[Any], table: KeyTable | None = None) -> list[Any]:
    name = eqn.primitive.name
    symbolic = any(isinstance(x, Symbolic | HostKeys | KeySlots) for x in ins)
    if name in _CALLS and _worth_inlining(eqn, symbolic):
        closed = eqn.params.get("jaxpr", eqn.params.get("call_jaxpr"))
        if table is None:
            return _eval(closed.jaxpr, closed.consts, ins)
        return _eval_call(closed, ins, table)
    if table is not None and ins and isinstance(ins[0], KeySlots):
        out = _apply_to_slots(name, eqn.params, ins, table)
        if out is not None:
            return [out]
    if name == "unstack" and ins and isinstance(ins[0], KeySlots | HostKeys):
        return _unstacked(ins[0], eqn.params["axis"])
    if len(eqn.outvars) != 1 or eqn.primitive.multiple_results:
        return _bind(eqn, ins, table)
    aval = eqn.outvars[0].aval
    shape, dtype = tuple(aval.shape), aval.dtype
    if name == "random_bits":
        if eqn.params["bit_width"] <= 32 and _is_threefry_key(ins[0]):
            key = ins[0]
            if isinstance(key, KeySlots):
                key = int(key.slots)  # a row of the table: its bits come later
            elif isinstance(key, HostKeys):
                key = key.data
            else:
                key = to_host(jax.random.key_data(key))
                if table is not None:  # a key the evaluation made: the same every init
                    key = int(table.constant(key, ins[0].dtype).slots)
            width = eqn.params["bit_width"]
            return [Symbolic(shape, dtype, "bits", True, key=key, width=width, keyed=True)]
        return _bind(eqn, ins, table)
    if ins and isinstance(ins[0], HostKeys):
        out = _host_keys.apply(name, eqn.params, ins)
        if out is not None:
            return [out]
    if name in ("slice", "squeeze") and _small_on_host(ins[0]):
        # The words a key is folded with (derive_key): indexing a few numbers, which
        # JAX would dispatch as an op each.
        return [_host_keys.slice_or_squeeze(name, eqn.params, np.asarray(ins[0]))]
    if name == "broadcast_in_dim" and _is_scalar(ins[0]):
        if size_of(shape) == 1:
            return [_reshaped(ins[0], shape)]
        keyed = isinstance(ins[0], Symbolic) and ins[0].keyed
        return [Symbolic(shape, dtype, "fill", True, inputs=(ins[0],), keyed=keyed)]
    if name in _RESHAPES and isinstance(ins[0], Symbolic):
        return [_reshaped(ins[0], shape)]
    if name in _ELEMENTWISE and _elementwise_inputs(eqn, ins):
        params = tuple(sorted(eqn.params.items()))
        try:
            hash(params)
        except TypeError:
            return _bind(eqn, ins, table)
        per_element = any(isinstance(x, Symbolic) and x.per_element for x in ins)
        node = Symbolic(
            shape,
            dtype,
            "op",
            per_element,
            primitive=eqn.primitive,
            params=params,
            inputs=tuple(ins),
            keyed=any(isinstance(x, Symbolic) and x.keyed for x in ins),
        )
        return [node]
    return _bind(eqn, ins, table)


def _apply_to_slots(name: str, params: dict[str, Any], ins: list[Any], table: KeyTable) -> Any:
    """The key primitive `name` on `KeySlots`, recorded in `table`; `None` if it is
    not one recorded (then no other operation may see the keys)."""
    keys = ins[0]
    if name == "random_split" and keys.shape == ():
        return table.split(keys, tuple(params["shape"]))
    if name == "random_fold_in" and keys.shape == ():
        word = ins[1]
        if isinstance(word, np.ndarray | np.generic) and np.size(word) == 1:
            return table.fold_in(keys, int(np.asarray(word).astype(np.uint32)))
        return None
    if name in ("slice", "squeeze"):
        return KeySlots(_host_keys.slice_or_squeeze(name, params, keys.slots), keys.dtype)
    if name == "reshape" and params.get("dimensions") is None:
        return KeySlots(keys.slots.reshape(params["new_sizes"]), keys.dtype)
    if name in ("copy", "copy_p"):
        return keys
    return None


def _unstacked(keys: KeySlots | HostKeys, axis: int) -> list[Any]:
    """JAX's `unstack` of keys along `axis` (a key axis: the key words come last)."""
    axis %= len(keys.shape)
    if isinstance(keys, KeySlots):
        return [KeySlots(np.asarray(s), keys.dtype) for s in np.moveaxis(keys.slots, axis, 0)]
    return [HostKeys(np.asarray(d), keys.dtype) for d in np.moveaxis(keys.data, axis, 0)]


def _small_on_host(x: Any) -> bool:
    return isinstance(x, np.ndarray | np.generic) and np.size(x) <= 64 and _plain_dtype(x)


def _is_scalar(x: Any) -> bool:
    """A size-1 value that a chunk program can take: symbolic and not per element, or
    an array (concrete, or a tracer of an enclosing transformation)."""
    if isinstance(x, Symbolic):
        return not x.per_element
    return np.size(x) == 1 and _plain_dtype(x)


def _plain_dtype(x: Any) -> bool:
    return not _is_extended(getattr(x, "dtype", np.float32))


@functools.cache
def _is_extended(dtype: Any) -> bool:
    return jnp.issubdtype(dtype, jax.dtypes.extended)


def _reshaped(x: Any, shape: tuple[int, ...]) -> Any:
    if isinstance(x, Symbolic):
        return (
            dataclasses.replace(x, shape=shape, value=None)
            if x.value is None
            else (x.value.reshape(shape))
        )
    return jnp.reshape(x, shape)


def _bind(eqn: Any, ins: list[Any], table: KeyTable | None = None) -> list[Any]:
    if table is not None and any(_keyed(x) for x in ins):
        raise NeedsKeyBits(eqn.primitive.name)
    ins = [_concrete(x) for x in ins]
    params = eqn.primitive.get_bind_params(eqn.params)
    with eqn.ctx.manager:
        out = eqn.primitive.bind(*ins, **params)
    return list(out) if eqn.primitive.multiple_results else [out]


def _worth_inlining(eqn: Any, symbolic: bool) -> bool:
    """Run a call's body here if it takes or makes a value worth keeping symbolic;
    otherwise bind it (small calls, like key derivation, compile once and are reused)."""
    closed = eqn.params.get("jaxpr", eqn.params.get("call_jaxpr"))
    if not isinstance(closed, jex_core.ClosedJaxpr):
        return False
    return symbolic or any(np.prod(v.aval.shape, dtype=int) > 1 for v in eqn.outvars)


def _keyed(x: Any) -> bool:
    return isinstance(x, KeySlots) or (isinstance(x, Symbolic) and x.keyed)


def _is_threefry_key(x: Any) -> bool:
    if isinstance(x, HostKeys | KeySlots):
        return x.shape == ()
    return _host_keys.is_threefry_keys(x) and x.shape == () and _host_keys.enabled()


def _elementwise_inputs(eqn: Any, ins: list[Any]) -> bool:
    """Every input is a scalar, or per element with the output's shape."""
    shape = tuple(eqn.outvars[0].aval.shape)
    for x in ins:
        if isinstance(x, Symbolic) and x.per_element:
            if x.shape != shape:
                return False
        elif not _is_scalar(x):
            return False
    if eqn.primitive.name == "bitcast_convert_type":
        old, new = np.dtype(ins[0].dtype), np.dtype(eqn.outvars[0].aval.dtype)
        return old.itemsize == new.itemsize
    return True


def _concrete(x: Any) -> Any:
    if isinstance(x, HostKeys):
        return x.to_jax()
    if not isinstance(x, Symbolic):
        return x
    if x.value is None:
        x.value = compute(x)
    return x.value
