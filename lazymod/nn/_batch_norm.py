from collections.abc import Hashable, Sequence
from typing import Any, Literal

import equinox as eqx
from jaxtyping import Array, PRNGKeyArray

from .._stateful import with_layer_state
from ._lazy import LazyLayer


class BatchNorm(LazyLayer, eqx.nn.StatefulLayer):
    """A lazy `equinox.nn.BatchNorm`: `input_size` (the number of channels, the
    input's first axis) is inferred. After `lazymod.init` it is an `eqx.nn.BatchNorm`.

    Initialize a model holding it with [`lazymod.init_with_state`][], which returns
    `(model, state)` as `eqx.nn.make_with_state` does. While init runs, the layer
    normalizes with its initial running statistics (as with `inference=True`), so it
    needs no `jax.vmap` with `axis_name` around an unbatched spec.

    !!! example

        ```python
        import equinox as eqx
        import jax
        import jax.numpy as jnp
        import lazymod as lm

        norm = lm.nn.BatchNorm("batch", mode="batch")
        model, state = lm.init_with_state(norm, 0, jax.ShapeDtypeStruct((3, 8, 8), jnp.float32))
        assert isinstance(model, eqx.nn.BatchNorm) and model.input_size == 3
        x = jnp.ones((4, 3, 8, 8))
        batched = jax.vmap(model, axis_name="batch", in_axes=(0, None), out_axes=(0, None))
        out, state = batched(x, state)
        assert out.shape == (4, 3, 8, 8)
        ```
    """

    axis_name: Hashable | Sequence[Hashable] = eqx.field(static=True)
    eps: float = eqx.field(static=True)
    channelwise_affine: bool = eqx.field(static=True)
    momentum: float = eqx.field(static=True)
    inference: bool
    dtype: Any = eqx.field(static=True)
    mode: Literal["ema", "batch", "legacy"] = eqx.field(static=True)

    def __init__(
        self,
        axis_name: Hashable | Sequence[Hashable],
        eps: float = 1e-5,
        channelwise_affine: bool = True,
        momentum: float = 0.99,
        inference: bool = False,
        dtype: Any = None,
        mode: Literal["ema", "batch", "legacy"] = "legacy",
    ):
        """**Arguments:** as `equinox.nn.BatchNorm`, less `input_size`."""
        self.axis_name = axis_name
        self.eps = eps
        self.channelwise_affine = channelwise_affine
        self.momentum = momentum
        self.inference = inference
        self.dtype = dtype
        self.mode = mode

    def _build(self, x: Array, state: eqx.nn.State, **_: Any) -> eqx.nn.BatchNorm:
        if x.ndim < 1:
            raise self._bad_input("an array of shape (channels, *spatial)", x)
        return eqx.nn.BatchNorm(
            x.shape[0],
            self.axis_name,
            self.eps,
            self.channelwise_affine,
            self.momentum,
            self.inference,
            self.dtype,
            self.mode,
        )

    def __call__(
        self,
        x: Array,
        state: eqx.nn.State,
        *,
        key: PRNGKeyArray | None = None,
        inference: bool | None = None,
    ) -> tuple[Array, eqx.nn.State]:
        """As `equinox.nn.BatchNorm.__call__`."""
        if self.initializing():
            layer = self._layer_for(x, state)
            return layer(x, with_layer_state(state, layer), key=key, inference=True)
        return self._layer_for(x, state)(x, state, key=key, inference=inference)
