from typing import Any

import equinox as eqx
import jax.numpy as jnp
from jaxtyping import Array

from .._running import run_built
from ._lazy import LazyLayer


class PReLU(LazyLayer):
    """A lazy `equinox.nn.PReLU`: with `channelwise=True` it learns one negative
    slope per channel of the input (its first axis), a shape that Equinox needs written
    by hand as `init_alpha=jnp.full((channels, 1, 1), 0.25)`. After `lazymod.init` it is
    an `eqx.nn.PReLU`.

    !!! example

        ```python
        import equinox as eqx
        import jax
        import jax.numpy as jnp
        import lazymod as lm

        spec = jax.ShapeDtypeStruct((16, 8, 8), jnp.float32)
        act = lm.init(lm.nn.PReLU(channelwise=True), 0, spec)
        assert type(act) is eqx.nn.PReLU and act.negative_slope.shape == (16, 1, 1)
        ```
    """

    init_alpha: float | Array  # an array is a leaf, as in Equinox, not a static field
    channelwise: bool = eqx.field(static=True)
    dtype: Any = eqx.field(static=True)

    def __init__(
        self, init_alpha: float | Array = 0.25, channelwise: bool = False, dtype: Any = None
    ):
        """**Arguments:** as `equinox.nn.PReLU`, with the slope's shape inferred.

        - `init_alpha`: the initial negative slope.
        - `channelwise`: if `False` (the default, as in Equinox), one slope for every
            element; if `True`, one per channel (the input's first axis).
        - `dtype`: the slope's dtype (default: a weakly typed float for one slope, as
            in Equinox; JAX's default float dtype per channel).
        """
        self.init_alpha = init_alpha
        self.channelwise = channelwise
        self.dtype = dtype

    def _build(self, x: Array) -> eqx.nn.PReLU:
        if not self.channelwise:
            alpha = (
                self.init_alpha if self.dtype is None else jnp.asarray(self.init_alpha, self.dtype)
            )
            return eqx.nn.PReLU(alpha)
        if x.ndim < 1:
            raise self._bad_input("an array of shape (channels, ...) for channelwise=True", x)
        shape = (x.shape[0],) + (1,) * (x.ndim - 1)
        dtype = self.dtype if self.dtype is not None else jnp.result_type(float)
        return eqx.nn.PReLU(jnp.full(shape, self.init_alpha, dtype))

    def __call__(self, x: Array) -> Array:
        """As `equinox.nn.PReLU.__call__`."""
        return run_built(self._layer_for(x), x)
