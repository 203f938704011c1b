from typing import Any

import equinox as eqx
from jaxtyping import Array, PRNGKeyArray

from .._module import Module
from .._running import next_key
from .._tree import stand_in_during_init


class Dropout(Module, eqx.nn.Dropout):
    """`equinox.nn.Dropout` that `lazymod.init` can run without a key: while init runs
    it, a call without `key=` draws one from the `"dropout"` RNG stream (which falls
    back to `"params"`), as Flax's init does. It is an `eqx.nn.Dropout` (a subclass),
    and after `lazymod.init` it is a plain `eqx.nn.Dropout`, which needs `key=` in
    training as usual. A `key=` passed through init to the forward pass is used too.

    !!! example

        ```python
        import equinox as eqx
        import jax
        import jax.numpy as jnp
        import lazymod as lm

        class Net(lm.Module):
            linear: lm.nn.Linear
            dropout: lm.nn.Dropout

            def __init__(self):
                self.linear, self.dropout = lm.nn.Linear(8), lm.nn.Dropout(0.1)

            def __call__(self, x, *, key=None):
                return self.dropout(self.linear(x), key=key)

        model = lm.init(Net(), 0, jax.ShapeDtypeStruct((4,), jnp.float32))  # no key=
        assert type(model.dropout) is eqx.nn.Dropout
        out = model(jnp.ones(4), key=jax.random.key(1))  # training: a key, as in Equinox
        ```
    """

    p: float
    inference: bool

    def __init__(self, p: float = 0.5, inference: bool = False, *, deterministic: Any = None):
        """**Arguments:** as `equinox.nn.Dropout`.

        - `p`: the fraction of entries to set to zero (on average).
        - `inference`: whether to skip dropout; toggled by `eqx.nn.inference_mode`.
        - `deterministic`: Equinox's deprecated alternative to `inference`.
        """
        if isinstance(p, int | float) and not 0 <= p <= 1:
            raise ValueError(
                f"lazymod.nn.Dropout: p is the fraction of entries set to zero, between 0 "
                f"and 1; got {p}."
            )
        layer = eqx.nn.Dropout(p, inference, deterministic=deterministic)
        self.p = layer.p
        self.inference = layer.inference

    def _init_result(self) -> eqx.nn.Dropout:
        return eqx.nn.Dropout(self.p, self.inference)

    def __call__(
        self,
        x: Array,
        *,
        key: PRNGKeyArray | None = None,
        inference: bool | None = None,
        deterministic: bool | None = None,
    ) -> Array:
        """As `equinox.nn.Dropout.__call__`; while `lazymod.init` runs it, `key`
        defaults to one drawn from the `"dropout"` stream."""
        if key is None and self.initializing():
            key = next_key("dropout")
        return self._init_result()(x, key=key, inference=inference, deterministic=deterministic)


# An eqx.nn.Dropout built by hand, or returned by an earlier init, draws its key at init
# too: init runs this class in its place.
stand_in_during_init(eqx.nn.Dropout, lambda layer: Dropout(layer.p, layer.inference))
