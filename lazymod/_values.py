"""The values of a traced init: which outputs of the jaxpr depend on the input specs,
and the computation of the others, by one of two evaluators behind `evaluate_constants`.

- `"fast"` (the default, `_evaluate.py`): computes random values in chunks with one
  compiled program per structure, and keys in NumPy. It relies on JAX internals
  (primitive names, key implementations); if it meets anything it does not know, it
  warns once and the JAX evaluator takes over.
- `"jax"`: JAX's own `jax.core.eval_jaxpr` on the same pruned jaxpr, op by op.

The environment variable `LAZYMOD_EVALUATOR` (`fast` or `jax`) chooses.
"""

import functools
import os
import warnings
import weakref
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from jax.extend import core as jex_core

from ._context import at_top_level
from ._errors import InitTypeError
from ._paths import display_path
from ._shape_only import reads_stand_in
from ._trace import needed_only, Traced


try:  # the fast evaluator depends on JAX internals that may move
    from . import _evaluate as fast_evaluator
except ImportError as error:  # pragma: no cover - depends on the JAX version
    fast_evaluator = None
    _import_problem: str | None = f"{type(error).__name__}: {error}"
else:
    _import_problem = None

EVALUATOR_VARIABLE = "LAZYMOD_EVALUATOR"
EVALUATORS = ("fast", "jax")
_warned = False


def compute(
    module: Any,
    traced: Traced,
    *,
    abstract: bool,
    targets: list[jax.sharding.Sharding | None],
    keys: dict[str, Any],
) -> list[Any]:
    """The value of every output of the trace, for the root `keys`: computed where it
    does not depend on a spec, a `ShapeDtypeStruct` (intermediates) or an error
    (fields) where it does; with
    `abstract`, a `ShapeDtypeStruct` everywhere. `targets` gives the sharding of the
    first outputs (the parameters; `None`: the default device): the fast evaluator
    computes such an array in its shards where it can, else leaves it in host memory
    for the caller to place. Other computed arrays go to the default device."""
    jaxpr = traced.jaxpr.jaxpr
    depends, pruned = _analysis(traced)
    leaked = [i for i in range(traced.skeleton.num_params) if depends[i]]
    if leaked:
        _raise_data_dependent(module, traced, leaked)
    if abstract:
        return [
            jax.ShapeDtypeStruct(
                var.aval.shape,
                var.aval.dtype,
                weak_type=getattr(var.aval, "weak_type", False) and var.aval.shape == (),
            )
            for var in jaxpr.outvars
        ]
    keep = [not d for d in depends]
    bound = [*targets, *[None] * (len(keep) - len(targets))]
    kept_targets = [t for t, k in zip(bound, keep) if k]
    inputs = traced.inputs(keys)
    template = None if any(t is not None for t in kept_targets) else _template(traced, inputs)
    if template is not None:
        computed = iter(template.run(inputs))
    else:
        computed = iter(evaluate_constants(pruned, targets=kept_targets, inputs=inputs))
    return [
        _as_array(next(computed), var.aval) if k else jax.ShapeDtypeStruct(shape.shape, shape.dtype)
        for k, shape, var in zip(keep, traced.out_shapes, jaxpr.outvars)
    ]


# Per trace: which outputs depend on a spec, and the jaxpr pruned to the others. The
# same for every init a kept trace serves, so found once per trace.
_analyses: weakref.WeakKeyDictionary[Traced, tuple[list[bool], jex_core.ClosedJaxpr]]
_analyses = weakref.WeakKeyDictionary()


def _analysis(traced: Traced) -> tuple[list[bool], jex_core.ClosedJaxpr]:
    found = _analyses.get(traced)
    if found is None:
        jaxpr = traced.jaxpr.jaxpr
        depends = depends_on_inputs(jaxpr, len(jaxpr.invars) - len(traced.streams))
        kept = [v for v, d in zip(jaxpr.outvars, depends) if not d]
        found = _analyses[traced] = (depends, needed_only(traced.jaxpr, kept))
    return found


# Per trace: its evaluation recorded for any root keys (`_replay.py`), or `None` where
# it cannot be (then every init walks the jaxpr).
_templates: weakref.WeakKeyDictionary[Traced, Any] = weakref.WeakKeyDictionary()


def _template(traced: Traced, inputs: list[Any]) -> Any:
    """The recorded evaluation of `traced`'s values, recorded on its first init; `None`
    when the fast evaluator does not run, or inside a transformation."""
    if traced in _templates:
        return _templates[traced]
    _, pruned = _analysis(traced)
    if fast_evaluator is None or not _runs_fast(pruned) or not at_top_level():
        return None
    try:
        template = fast_evaluator.record(pruned, pruned.jaxpr.outvars, inputs)
    except fast_evaluator.UNSUPPORTED:
        template = None  # evaluate_constants warns, and falls back
    _templates[traced] = template
    return template


def reads_left_out(traced: Traced) -> bool:
    """Whether a value init computes from `traced` reads the output of calls that its
    forward pass left out (`_shape_only.py`): then the trace must make them all."""
    _, pruned = _analysis(traced)
    return reads_stand_in(pruned.jaxpr)


def depends_on_inputs(jaxpr: jex_core.Jaxpr, specs: int | None = None) -> list[bool]:
    """For each output of `jaxpr`, whether it depends on one of its first `specs`
    inputs (by default all; the others are root keys)."""
    tainted = set(jaxpr.invars[:specs])
    for eqn in jaxpr.eqns:
        if any(isinstance(v, jex_core.Var) and v in tainted for v in eqn.invars):
            tainted.update(eqn.outvars)
    return [isinstance(v, jex_core.Var) and v in tainted for v in jaxpr.outvars]


def evaluate_constants(
    pruned: jex_core.ClosedJaxpr,
    *,
    targets: list[jax.sharding.Sharding | None] | None = None,
    inputs: list[Any] | None = None,
) -> list[Any]:
    """The outputs of `pruned`, a jaxpr with only the equations they need (none may
    depend on its specs: their `inputs` are `None`, the root keys' are keys), with the
    evaluator `LAZYMOD_EVALUATOR` names."""
    jaxpr = pruned.jaxpr
    inputs = [None] * len(jaxpr.invars) if inputs is None else inputs
    outvars = list(jaxpr.outvars)
    if not jaxpr.eqns:  # every value is already a constant (or a root key)
        env = dict(zip(jaxpr.constvars, pruned.consts)) | dict(zip(jaxpr.invars, inputs))
        return [v.val if isinstance(v, jex_core.Literal) else env[v] for v in outvars]
    if _runs_fast(pruned):
        if targets and any(t is not None for t in targets) and fast_evaluator is not None:
            return _evaluate_sharded(pruned, outvars, targets, inputs)
        values = _evaluate_fast(pruned, outvars, targets, inputs)
        if values is not None:
            return values
    return jax.core.eval_jaxpr(pruned.jaxpr, pruned.consts, *inputs)


def _runs_fast(pruned: jex_core.ClosedJaxpr) -> bool:
    """Whether the fast evaluator is the one to compute `pruned`: it is chosen, and
    `pruned` has equations to walk and no effects."""
    return chosen_evaluator() == "fast" and bool(pruned.jaxpr.eqns) and not pruned.jaxpr.effects


def chosen_evaluator() -> str:
    """`"fast"` or `"jax"`, as the environment variable `LAZYMOD_EVALUATOR` says
    (default `"fast"`)."""
    name = os.environ.get(EVALUATOR_VARIABLE, "fast").strip().lower() or "fast"
    if name not in EVALUATORS:
        raise ValueError(
            f"{EVALUATOR_VARIABLE}={name!r}: the evaluator must be one of {EVALUATORS}."
        )
    return name


def _evaluate_sharded(
    pruned: jex_core.ClosedJaxpr,
    outvars: list[Any],
    targets: list[jax.sharding.Sharding | None],
    inputs: list[Any],
) -> list[Any]:
    """The fast evaluator for the values it computes in their shards; a program jitted
    with the targets as `out_shardings` for sharded values it would compute whole (a
    QR, a product of draws), so that no device computes more than XLA must."""
    slow = fast_evaluator.off_fast_path(pruned.jaxpr)
    jitted = [i for i, (s, t) in enumerate(zip(slow, targets)) if s and t is not None]
    rest = [i for i in range(len(outvars)) if i not in set(jitted)]
    values: list[Any] = [None] * len(outvars)
    if jitted:
        sub = pruned.jaxpr.replace(outvars=[outvars[i] for i in jitted])
        run = functools.partial(jax.core.eval_jaxpr, sub, pruned.consts)
        shardings = [targets[i] for i in jitted]
        for i, value in zip(jitted, jax.jit(run, out_shardings=shardings)(*inputs)):
            values[i] = value
    if rest:  # without the equations only the jitted values need (a QR...)
        sub = needed_only(pruned, [outvars[i] for i in rest])
        rest_targets = [targets[i] for i in rest]
        computed = _evaluate_fast(sub, sub.jaxpr.outvars, rest_targets, inputs)
        if computed is None:
            computed = jax.core.eval_jaxpr(sub.jaxpr, sub.consts, *inputs)
        for i, value in zip(rest, computed):
            values[i] = value
    return values


def _evaluate_fast(
    pruned: jex_core.ClosedJaxpr,
    outvars: list[Any],
    targets: list[jax.sharding.Sharding | None] | None,
    inputs: list[Any],
) -> list[Any] | None:
    """The fast evaluator's values, or `None` (after one warning per process) if it
    cannot run on this JAX or meets something it does not know."""
    problem = _import_problem
    if fast_evaluator is not None:
        try:
            return fast_evaluator.evaluate(pruned, outvars, targets, inputs)
        except fast_evaluator.UNSUPPORTED as error:
            problem = f"{type(error).__name__}: {error}"
    _warn_once(problem)
    return None


def _warn_once(problem: str | None) -> None:
    global _warned
    if _warned:
        return
    _warned = True
    warnings.warn(
        f"lazymod's fast evaluator cannot run here ({problem}); computing initial values "
        f"with JAX's own evaluator instead, which is slower. Set {EVALUATOR_VARIABLE}=jax "
        "to choose it and silence this warning, and please report the problem.",
        RuntimeWarning,
        stacklevel=4,
    )


def _as_array(value: Any, aval: Any) -> Any:
    """`value` as the array its trace made: a constant output of the jaxpr may come back
    as a Python or NumPy scalar, and a weakly typed scalar (`jnp.array(1.0)`) must stay
    weakly typed, so that it promotes in the forward pass as it did when it was made."""
    if isinstance(value, jax.Array | jax.core.Tracer):
        return value
    if getattr(aval, "weak_type", False) and aval.shape == ():
        return jnp.asarray(np.asarray(value).item())  # a Python scalar: weakly typed
    if not isinstance(value, np.ndarray):
        return np.asarray(value, dtype=aval.dtype)  # placed on a device later
    return value


def _raise_data_dependent(module: Any, traced: Traced, leaked: list[int]) -> None:
    names = [display_path(module, traced.skeleton.array_paths[i]) for i in leaked]
    raise InitTypeError(  # JAX's error for a tracer where a value is needed is a TypeError
        f"{', '.join(names)}: "
        f"{'these values depend' if len(names) > 1 else 'this value depends'} "
        "on the values of an input that lazymod.init only knows as a "
        "jax.ShapeDtypeStruct (its shape and dtype). For a data-dependent "
        "initialization, pass real arrays to lazymod.init; otherwise compute the value "
        "from shapes and keys only."
    )
