from typing import Any

import equinox as eqx
from jaxtyping import Array, PRNGKeyArray

from .._errors import InitValueError
from .._running import describe, next_key
from .._stateful import with_layer_state
from ._weight_norm import Wrapper


class SpectralNorm(Wrapper, eqx.nn.StatefulLayer):
    """A lazy `equinox.nn.SpectralNorm`: it wraps a layer that may itself be lazy
    (such as [`lazymod.nn.Linear`][]). After `lazymod.init` it is an
    `eqx.nn.SpectralNorm` around the Equinox layer the wrapped layer became; its
    power-iteration vectors are drawn with [`lazymod.next_key`][].

    It is stateful: initialize a model holding it with [`lazymod.init_with_state`][],
    which returns `(model, state)` as `eqx.nn.make_with_state` does.

    !!! example

        ```python
        import equinox as eqx
        import jax
        import jax.numpy as jnp
        import lazymod as lm

        layer = lm.nn.SpectralNorm(lm.nn.Linear(3), weight_name="weight")
        spec = jax.ShapeDtypeStruct((5,), jnp.float32)
        layer, state = lm.init_with_state(layer, 0, spec)
        assert isinstance(layer, eqx.nn.SpectralNorm)
        u, v = state.get(layer.uv_index)
        assert u.shape == (3,) and v.shape == (5,)
        out, state = layer(jnp.ones(5), state)
        assert out.shape == (3,)
        ```
    """

    layer: Any
    weight_name: str = eqx.field(static=True)
    num_power_iterations: int = eqx.field(static=True)
    eps: float = eqx.field(static=True)
    inference: bool

    def __init__(
        self,
        layer: Any,
        weight_name: str,
        num_power_iterations: int = 1,
        eps: float = 1e-12,
        inference: bool = False,
    ):
        """**Arguments:** as `equinox.nn.SpectralNorm`, less `key`.

        - `layer`: the layer to wrap: a lazy layer (its shapes are inferred first), an
            Equinox layer, or any module holding the array `weight_name`.
        - `weight_name`: the name of the layer's weight (at least 2-dimensional).
        - `num_power_iterations`: power iterations per call in training mode.
        - `eps`: epsilon for numerical stability when computing norms.
        - `inference`: whether to skip the power iterations; toggled by
            `eqx.nn.inference_mode`.
        """
        self.layer = layer
        self.weight_name = weight_name
        self.num_power_iterations = num_power_iterations
        self.eps = eps
        self.inference = inference

    def _wrap(self, inner: Any) -> eqx.nn.SpectralNorm:
        weight = getattr(inner, self.weight_name)
        if weight.ndim < 2:
            raise InitValueError(
                f"{describe(self)} ({type(self).__name__}): expected the weight "
                f"{self.weight_name!r} of the wrapped {type(inner).__name__} to have at "
                f"least 2 dimensions; got shape {tuple(weight.shape)}."
            )
        return eqx.nn.SpectralNorm(
            inner,
            self.weight_name,
            self.num_power_iterations,
            self.eps,
            self.inference,
            key=next_key(),
        )

    def __call__(
        self,
        x: Array,
        state: eqx.nn.State,
        *,
        key: PRNGKeyArray | None = None,
        inference: bool | None = None,
    ) -> tuple[Array, eqx.nn.State]:
        """As `equinox.nn.SpectralNorm.__call__`: returns `(output, state)`."""
        wrapper = self._wrapper_for(x)
        if self.initializing():
            state = with_layer_state(state, wrapper)
        return wrapper(x, state, key=key, inference=inference)
