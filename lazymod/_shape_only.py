"""Calls of the forward pass that a staged init leaves out, when only their output's
shape and dtype matter.

A staged init (only shapes flow) computes no value of the forward pass from a spec:
the forward pass is traced for the shapes it gives the layers it builds. So where the
output of a run of alike calls is known without making them (`lazymod.nn.MLP`: once a
hidden layer gives its input's shape and dtype, so does every one after it), the
calls are left out and the last output made stands for theirs, through `stand_in`.

That output is wrong as a value. A value init does compute may still read it: a field
set from the forward pass on a constant input (a probe) rather than on a spec. The
stand-in marks it in the jaxpr, and `reads_stand_in` finds whether a computed output
needs it; if one does, init traces again with every call made (`exact`).
"""

from typing import Any

import jax
from jax.extend import core as jex_core


def lazymod_stand_in(x: Any) -> Any:
    """`x`, standing for the output of the calls left out (named for the jaxpr)."""
    return x


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
