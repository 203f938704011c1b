"""Lazy wrappers of a layer: the wrapped layer may itself be lazy. While init runs,
the wrapper builds the wrapped layer first (by calling it on the input), then wraps the
Equinox layer it became, so after init the tree holds Equinox's own wrapper."""

from typing import Any

import equinox as eqx
import jax
from jaxtyping import Array, PRNGKeyArray

from .._errors import InitError
from .._module import Module
from .._running import describe
from .._sentinels import is_initialized, is_sentinel, lazy
from .._tree import init_result


class Wrapper(Module):
    """What `WeightNorm` and `SpectralNorm` share. `layer` is the wrapped layer (as in
    Equinox, so that paths and error messages read `WeightNorm.layer`), and `built` the
    Equinox wrapper built around it. (Not a `LazyLayer`, whose `layer` is the layer it
    built.)"""

    weight_name: eqx.AbstractVar[str]
    built: Any = lazy()

    def _wrap(self, inner: Any) -> eqx.Module:
        raise NotImplementedError

    def rng_init(self) -> None:
        # A wrapped layer that needs no input (an Equinox layer, or a lazy one already
        # built) is wrapped right away, so `lazymod.init(wrapper, key)` works too.
        inner = init_result(self.layer)
        if is_initialized(inner):
            self.built = self._checked_wrap(inner)

    def _wrapper_for(self, x: Array) -> Any:
        """The Equinox wrapper: built while init runs this layer, after the wrapped
        layer has been built by calling it on `x`."""
        if self.initializing() and is_sentinel(self.built):
            self.layer(x)
            self.built = self._checked_wrap(init_result(self.layer))
        return self.built

    def _checked_wrap(self, inner: Any) -> eqx.Module:
        weight = getattr(inner, self.weight_name, None)
        if not isinstance(weight, jax.Array):
            raise InitError(
                f"{describe(self)} ({type(self).__name__}): the wrapped "
                f"{type(inner).__name__} has no array field {self.weight_name!r} to "
                "normalize; pass `weight_name=` the name of its weight."
            )
        return self._wrap(inner)

    def _init_result(self) -> Any:
        return self if is_sentinel(self.built) else self.built


class WeightNorm(Wrapper):
    """A lazy `equinox.nn.WeightNorm`: it wraps a layer that may itself be lazy
    (such as [`lazymod.nn.Linear`][]). After `lazymod.init` it is an
    `eqx.nn.WeightNorm` around the Equinox layer the wrapped layer became.

    !!! example

        ```python
        import equinox as eqx
        import jax
        import jax.numpy as jnp
        import lazymod as lm

        layer = lm.nn.WeightNorm(lm.nn.Linear(3))
        layer = lm.init(layer, 0, jax.ShapeDtypeStruct((5,), jnp.float32))
        assert isinstance(layer, eqx.nn.WeightNorm)
        assert layer.layer.weight.shape == (3, 5) and layer.g.shape == (3, 1)
        ```
    """

    layer: Any
    weight_name: str = eqx.field(static=True)
    axis: int | None = eqx.field(static=True)

    def __init__(self, layer: Any, weight_name: str = "weight", axis: int | None = 0):
        """**Arguments:** as `equinox.nn.WeightNorm`.

        - `layer`: the layer to wrap: a lazy layer (its shapes are inferred first), an
            Equinox layer, or any module holding the array `weight_name`.
        - `weight_name`: the name of the layer's weight to normalize.
        - `axis`: the norm is computed over every axis but this one; over every axis if
            `None`.
        """
        self.layer = layer
        self.weight_name = weight_name
        self.axis = axis

    def _wrap(self, inner: Any) -> eqx.nn.WeightNorm:
        return eqx.nn.WeightNorm(inner, self.weight_name, self.axis)

    def __call__(self, x: Array, *, key: PRNGKeyArray | None = None) -> Array:
        """As `equinox.nn.WeightNorm.__call__`: the wrapped layer is called as
        `layer(x)`."""
        return self._wrapper_for(x)(x, key=key)
