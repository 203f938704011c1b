import functools
import inspect
from collections.abc import Callable
from typing import Any, Literal

import equinox as eqx
import jax
from jaxtyping import Array, PRNGKeyArray

from .._running import next_key, staged_init
from ._lazy import check_sizes, LazyLayer


# Equinox's own default activations, so that the built MLP equals one made by hand.
_EQUINOX_DEFAULTS = inspect.signature(eqx.nn.MLP.__init__).parameters
_RELU = _EQUINOX_DEFAULTS["activation"].default
_IDENTITY = _EQUINOX_DEFAULTS["final_activation"].default


class MLP(LazyLayer):
    """A lazy `equinox.nn.MLP`: `in_size` is inferred from the input (`"scalar"` for
    a 0-d input). After `lazymod.init` it is an `eqx.nn.MLP`.

    !!! example

        ```python
        import equinox as eqx
        import jax
        import jax.numpy as jnp
        import lazymod as lm

        mlp = lm.nn.MLP(out_size=10, width_size=128, depth=2)
        mlp = lm.init(mlp, 0, jax.ShapeDtypeStruct((784,), jnp.float32))
        assert type(mlp) is eqx.nn.MLP and mlp.in_size == 784
        ```
    """

    out_size: int | Literal["scalar"] = eqx.field(static=True)
    width_size: int = eqx.field(static=True)
    depth: int = eqx.field(static=True)
    activation: Callable[..., Any]
    final_activation: Callable[..., Any]
    use_bias: bool = eqx.field(static=True)
    use_final_bias: bool = eqx.field(static=True)
    dtype: Any = eqx.field(static=True)
    scan: bool = eqx.field(static=True)

    def __init__(
        self,
        out_size: int | Literal["scalar"],
        width_size: int,
        depth: int,
        activation: Callable[..., Any] = _RELU,
        final_activation: Callable[..., Any] = _IDENTITY,
        use_bias: bool = True,
        use_final_bias: bool = True,
        dtype: Any = None,
        *,
        scan: bool = False,
    ):
        """**Arguments:** as `equinox.nn.MLP`, less `in_size` and `key`.

        - `out_size`: the output size; `"scalar"` for a 0-d output.
        - `width_size`: the size of each hidden layer.
        - `depth`: the number of hidden layers (`0` for a single linear layer).
        - `activation`, `final_activation`: the activations after each hidden layer and
            after the output layer (default: ReLU, identity).
        - `use_bias`, `use_final_bias`: whether the hidden and output layers have biases.
        - `dtype`: the parameters' dtype (default: JAX's default float dtype).
        - `scan`: whether the hidden layers run in a `jax.lax.scan` (as in Equinox).
        """
        check_sizes("MLP", 0, out_size=out_size, width_size=width_size, depth=depth)
        self.out_size = out_size
        self.width_size = width_size
        self.depth = depth
        self.activation = activation
        self.final_activation = final_activation
        self.use_bias = use_bias
        self.use_final_bias = use_final_bias
        self.dtype = dtype
        self.scan = scan

    def _build(self, x: Array) -> eqx.nn.MLP:
        if x.ndim > 1:
            raise self._bad_input("a vector of shape (in_size,) or a scalar", x)
        return eqx.nn.MLP(
            "scalar" if x.ndim == 0 else x.shape[0],
            self.out_size,
            self.width_size,
            self.depth,
            self.activation,
            self.final_activation,
            self.use_bias,
            self.use_final_bias,
            self.dtype,
            scan=self.scan,
            key=next_key(),
        )

    def __call__(self, x: Array, *, key: PRNGKeyArray | None = None) -> Array:
        """As `equinox.nn.MLP.__call__`: `x` of shape `(in_size,)`, or a scalar."""
        # Not `run_built`: called under `jax.vmap`, a kept trace is batched once more,
        # which for a deep MLP (usually called once) costs more than it saves.
        layer = self._layer_for(x)
        if staged_init():
            layer = _with_kept_activations(layer)
        return layer(x, key=key)


@functools.lru_cache(maxsize=64)  # activations by identity: a few per process
def _kept(activation: Callable[..., Any]) -> Callable[..., Any]:
    return jax.jit(activation)


def _with_kept_activations(mlp: eqx.nn.MLP) -> eqx.nn.MLP:
    """`mlp` for Equinox's forward pass at a staged init: with each activation that is
    a plain function jitted, so that its trace (a `jax.custom_jvp`'s, for ReLU) is made
    once and kept, not made again under each hidden layer's `vmap`. The same
    computation; the built MLP keeps the functions it was given."""
    names = [
        name
        for name in ("activation", "final_activation")
        if _is_plain_function(getattr(mlp, name))
    ]
    if not names:
        return mlp
    return eqx.tree_at(
        lambda m: [getattr(m, name) for name in names],
        mlp,
        [_kept(getattr(mlp, name)) for name in names],
    )


def _is_plain_function(x: Any) -> bool:
    if not callable(x) or isinstance(x, eqx.Module):
        return False
    try:
        hash(x)
    except TypeError:
        return False
    return True
