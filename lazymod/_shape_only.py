"""Calls of the forward pass that a staged init leaves out, when only their output's
shape and dtype matter.

A staged init whose inputs are all specs computes no value of the forward pass from
them: the forward pass is traced for the shapes it gives the layers it builds. So where
the output of a run of alike calls is known without making them (`lazymod.nn.MLP`: once
a hidden layer gives its input's shape and dtype, so does every one after it), the
calls are left out and the last output made stands for theirs, through `stand_in`.

That output is wrong as a value, and two things keep it from reaching one:

- calls are left out only where operations go straight into init's own trace, or
  through `jax.vmap`s of it (`staged_here`): not inside a `jax.jit` (whose trace JAX
  keeps, and would give to a later, exact init), a `jax.vjp`, a `jax.lax.scan` or a
  `jax.checkpoint` of the forward pass; nor under `jax.disable_jit()`, where the
  stand-in would not be a named call;
- a value init computes may still read it: a field set from the forward pass on a
  constant input (a probe) rather than on a spec. The stand-in is an equation of
  init's jaxpr, and `reads_stand_in` finds whether a computed output needs it; if one
  does, init traces again with every call made (`exact`).
"""

from typing import Any

import jax
from jax import lax
from jax.extend import core as jex_core

from ._context import current_trace


try:  # the trace of a `jax.vmap`, to look through (JAX does not export its type)
    from jax._src.interpreters.batching import BatchTrace as _VmapTrace
except ImportError:  # pragma: no cover - depends on the JAX version
    _VmapTrace = ()  # then calls are left out in init's own trace only


def staged_here(init_trace: Any) -> bool:
    """Whether operations here go into `init_trace`, directly or through `jax.vmap`s."""
    trace = current_trace()
    while isinstance(trace, _VmapTrace):
        trace = trace.parent_trace
    return trace is init_trace


def lazymod_stand_in(x: Any) -> Any:
    """`x`, standing for the output of the calls left out (named for the jaxpr; the
    barrier keeps JAX from forwarding `x` past the equation)."""
    return lax.optimization_barrier(x)


stand_in = jax.jit(lazymod_stand_in)
_NAME = lazymod_stand_in.__name__


def reads_stand_in(jaxpr: jex_core.Jaxpr) -> bool:
    """Whether an equation of `jaxpr`, or of a jaxpr inside it, is a stand-in."""
    seen: set[int] = set()

    def visit(jaxpr: jex_core.Jaxpr) -> bool:
        if id(jaxpr) in seen:
            return False
        seen.add(id(jaxpr))
        for eqn in jaxpr.eqns:
            if eqn.params.get("name") == _NAME:
                return True
            for inner in jex_core.jaxprs_in_params(eqn.params):
                if visit(inner):
                    return True
        return False

    return visit(jaxpr)
