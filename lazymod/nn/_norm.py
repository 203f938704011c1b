from typing import Any, ClassVar

import equinox as eqx
from jaxtyping import Array, PRNGKeyArray

from .._running import run_built
from ._lazy import check_eps, check_flags, check_sizes, LazyLayer


# `state` is optional in the normalisation layers' `__call__`, as in Equinox: given, the
# layer returns `(output, state)`, for interchangeability with `BatchNorm`.
_NO_STATE: Any = object()


def _call(layer: Any, x: Array, state: Any, key: PRNGKeyArray | None) -> Any:
    if state is _NO_STATE:
        return run_built(layer, x, key=key)
    return layer(x, state, key=key)


class LayerNorm(LazyLayer):
    """A lazy `equinox.nn.LayerNorm`: `shape` is inferred, as the whole shape of the
    (unbatched) input. After `lazymod.init` it is an `eqx.nn.LayerNorm`.

    !!! example

        ```python
        import equinox as eqx
        import jax
        import jax.numpy as jnp
        import lazymod as lm

        norm = lm.init(lm.nn.LayerNorm(), 0, jax.ShapeDtypeStruct((64,), jnp.float32))
        assert type(norm) is eqx.nn.LayerNorm and norm.shape == (64,)
        ```

    To normalise each token of a `(seq_len, width)` input, `jax.vmap` the layer over the
    sequence, as with Equinox.
    """

    eps: float = eqx.field(static=True)
    use_weight: bool = eqx.field(static=True)
    use_bias: bool = eqx.field(static=True)
    dtype: Any = eqx.field(static=True)

    _equinox: ClassVar[type[eqx.Module]] = eqx.nn.LayerNorm

    def __init__(
        self, eps: float = 1e-5, use_weight: bool = True, use_bias: bool = True, dtype: Any = None
    ):
        """**Arguments:** as `equinox.nn.LayerNorm`, less `shape`.

        - `eps`: added to the variance, for numerical stability.
        - `use_weight`, `use_bias`: whether to learn an elementwise scale and shift.
        - `dtype`: the parameters' dtype (default: JAX's default float dtype).
        """
        name = type(self).__name__
        habit = (f"{name}(64)", f"{name}()")
        check_eps(name, eps, habit)
        check_flags(name, habit, use_weight=use_weight, use_bias=use_bias)
        self.eps = eps
        self.use_weight = use_weight
        self.use_bias = use_bias
        self.dtype = dtype

    def _build(self, x: Array, *_: Any) -> eqx.Module:
        return type(self)._equinox(x.shape, self.eps, self.use_weight, self.use_bias, self.dtype)

    def __call__(
        self, x: Array, state: eqx.nn.State = _NO_STATE, *, key: PRNGKeyArray | None = None
    ) -> Array | tuple[Array, eqx.nn.State]:
        """As `equinox.nn.LayerNorm.__call__`: `x` of the shape seen at init;
        `(output, state)` if a state is given."""
        return _call(self._layer_for(x), x, state, key)


class RMSNorm(LayerNorm):
    """A lazy `equinox.nn.RMSNorm`: `shape` is inferred, as the whole shape of the
    (unbatched) input. After `lazymod.init` it is an `eqx.nn.RMSNorm`.

    !!! example

        ```python
        import equinox as eqx
        import jax
        import jax.numpy as jnp
        import lazymod as lm

        norm = lm.init(lm.nn.RMSNorm(), 0, jax.ShapeDtypeStruct((64,), jnp.float32))
        assert type(norm) is eqx.nn.RMSNorm and norm.shape == (64,)
        ```
    """

    _equinox: ClassVar[type[eqx.Module]] = eqx.nn.RMSNorm

    def __init__(
        self, eps: float = 1e-5, use_weight: bool = True, use_bias: bool = True, dtype: Any = None
    ):
        """**Arguments:** as `equinox.nn.RMSNorm`, less `shape`.

        - `eps`: added to the mean square, for numerical stability.
        - `use_weight`, `use_bias`: whether to learn an elementwise scale and shift.
        - `dtype`: the parameters' dtype (default: JAX's default float dtype).
        """
        super().__init__(eps, use_weight, use_bias, dtype)

    def __call__(
        self, x: Array, state: eqx.nn.State = _NO_STATE, *, key: PRNGKeyArray | None = None
    ) -> Array | tuple[Array, eqx.nn.State]:
        """As `equinox.nn.RMSNorm.__call__`: `x` of the shape seen at init;
        `(output, state)` if a state is given."""
        return _call(self._layer_for(x), x, state, key)


class GroupNorm(LazyLayer):
    """A lazy `equinox.nn.GroupNorm`: `channels` is inferred from the input, of shape
    `(channels, ...)`. After `lazymod.init` it is an `eqx.nn.GroupNorm`.

    !!! example

        ```python
        import equinox as eqx
        import jax
        import jax.numpy as jnp
        import lazymod as lm

        spec = jax.ShapeDtypeStruct((32, 8, 8), jnp.float32)
        norm = lm.init(lm.nn.GroupNorm(groups=4), 0, spec)
        assert type(norm) is eqx.nn.GroupNorm and norm.channels == 32
        ```
    """

    groups: int = eqx.field(static=True)
    eps: float = eqx.field(static=True)
    channelwise_affine: bool = eqx.field(static=True)
    dtype: Any = eqx.field(static=True)

    def __init__(
        self,
        groups: int,
        eps: float = 1e-5,
        channelwise_affine: bool = True,
        dtype: Any = None,
    ):
        """**Arguments:** as `equinox.nn.GroupNorm`, less `channels`.

        - `groups`: the number of groups the channels are split into; it must divide the
            inferred number of channels.
        - `eps`: added to the variance, for numerical stability.
        - `channelwise_affine`: whether to learn a scale and shift per channel.
        - `dtype`: the parameters' dtype (default: JAX's default float dtype).
        """
        check_sizes("GroupNorm", groups=groups)
        habit = ("GroupNorm(8, 32)", "GroupNorm(8)")
        check_eps("GroupNorm", eps, habit)
        check_flags("GroupNorm", habit, channelwise_affine=channelwise_affine)
        self.groups = groups
        self.eps = eps
        self.channelwise_affine = channelwise_affine
        self.dtype = dtype

    def _build(self, x: Array, *_: Any) -> eqx.nn.GroupNorm:
        if x.ndim < 1:
            raise self._bad_input("an array of shape (channels, ...)", x)
        if x.shape[0] % self.groups != 0:
            raise self._bad_input(
                f"channels (the input's first axis) divisible by groups={self.groups}",
                x,
                f"Give groups= a divisor of {x.shape[0]}.",
            )
        return eqx.nn.GroupNorm(
            self.groups, x.shape[0], self.eps, self.channelwise_affine, self.dtype
        )

    def __call__(
        self, x: Array, state: eqx.nn.State = _NO_STATE, *, key: PRNGKeyArray | None = None
    ) -> Array | tuple[Array, eqx.nn.State]:
        """As `equinox.nn.GroupNorm.__call__`: `x` of shape `(channels, ...)`;
        `(output, state)` if a state is given."""
        return _call(self._layer_for(x), x, state, key)
