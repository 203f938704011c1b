from typing import Any, Literal

import equinox as eqx
from jaxtyping import Array, PRNGKeyArray

from .._running import next_key, run_built
from ._lazy import check_flags, check_sizes, LazyLayer


class Linear(LazyLayer):
    """A lazy `equinox.nn.Linear`: `in_features` is inferred from the input
    (`"scalar"` for a 0-d input). After `lazymod.init` it is an `eqx.nn.Linear`.

    !!! example

        ```python
        import equinox as eqx
        import jax
        import jax.numpy as jnp
        import lazymod as lm

        layer = lm.init(lm.nn.Linear(10), 0, jax.ShapeDtypeStruct((784,), jnp.float32))
        assert isinstance(layer, eqx.nn.Linear) and layer.weight.shape == (10, 784)
        ```
    """

    out_features: int | Literal["scalar"] = eqx.field(static=True)
    use_bias: bool = eqx.field(static=True)
    dtype: Any = eqx.field(static=True)

    def __init__(
        self, out_features: int | Literal["scalar"], use_bias: bool = True, dtype: Any = None
    ):
        """**Arguments:** as `equinox.nn.Linear`, less `in_features` and `key`.

        - `out_features`: the output size; `"scalar"` for a 0-d output.
        - `use_bias`: whether to add a bias.
        - `dtype`: the parameters' dtype (default: JAX's default float dtype).
        """
        check_sizes("Linear", 0, out_features=out_features)
        check_flags("Linear", ("Linear(784, 10)", "Linear(10)"), use_bias=use_bias)
        self.out_features = out_features
        self.use_bias = use_bias
        self.dtype = dtype

    def _build(self, x: Array, **_: Any) -> eqx.nn.Linear:
        if x.ndim > 1:
            raise self._bad_input("a vector of shape (in_features,) or a scalar", x)
        in_features = "scalar" if x.ndim == 0 else x.shape[0]
        return eqx.nn.Linear(
            in_features, self.out_features, self.use_bias, self.dtype, key=next_key()
        )

    def __call__(self, x: Array, *, key: PRNGKeyArray | None = None) -> Array:
        """As `equinox.nn.Linear.__call__`: `x` of shape `(in_features,)`, or a
        scalar if the input was one."""
        return run_built(self._layer_for(x), x, key=key)
