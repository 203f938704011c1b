import dataclasses
import inspect
from collections.abc import Callable
from typing import Any, Literal

import equinox as eqx
import jax
import jax.numpy as jnp
from equinox import filter_vmap
from jaxtyping import Array, PRNGKeyArray

from .._kept_calls import call_kept
from .._running import left_out, may_leave_out, next_key, staged_init
from ._lazy import check_flags, check_function, check_sizes, LazyLayer


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
        habit = ("MLP(784, 10, 64, 2)", "MLP(10, 64, 2)")
        check_function("MLP", habit, activation=activation, final_activation=final_activation)
        check_flags("MLP", habit, use_bias=use_bias, use_final_bias=use_final_bias, scan=scan)
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
        in_size = "scalar" if x.ndim == 0 else x.shape[0]
        if staged_init() and not self.scan and self.depth > 0 and _ASSEMBLES_AS_EQUINOX:
            return self._build_from_kept_linears(in_size)
        return eqx.nn.MLP(
            in_size,
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

    def _build_from_kept_linears(self, in_size: int | Literal["scalar"]) -> eqx.nn.MLP:
        """What `eqx.nn.MLP(...)` builds, bit for bit, at a staged init: the same keys
        and layers, but each `eqx.nn.Linear` built by a kept trace of its constructor
        (`_kept_calls.py`), so a 1000-layer MLP traces three constructors, not 1001.
        The fields are set as Equinox's `__init__` sets them."""
        # Equinox's `keys[i]`: one `unstack` equation gives them all.
        keys = jnp.unstack(jax.random.split(next_key(), self.depth + 1))
        width = self.width_size
        sizes = [
            (in_size, width, self.use_bias),
            *[(width, width, self.use_bias)] * (self.depth - 1),
            (width, self.out_size, self.use_final_bias),
        ]
        layers = tuple(
            call_kept(_linear, n_in, n_out, bias, self.dtype, keys[i])
            for i, (n_in, n_out, bias) in enumerate(sizes)
        )
        # As Equinox's `__init__`: a copy of a learnt activation per neuron and layer.
        activation = filter_vmap(
            filter_vmap(lambda: self.activation, axis_size=width), axis_size=self.depth
        )()
        final_activation = self.final_activation
        if self.out_size != "scalar":
            final_activation = filter_vmap(lambda: final_activation, axis_size=self.out_size)()
        mlp = object.__new__(eqx.nn.MLP)
        fields = dict(
            layers=layers,
            activation=activation,
            final_activation=final_activation,
            use_bias=self.use_bias,
            use_final_bias=self.use_final_bias,
            in_size=in_size,
            out_size=self.out_size,
            width_size=width,
            depth=self.depth,
            scan=False,
        )
        for name, value in fields.items():
            object.__setattr__(mlp, name, value)
        return mlp

    def __call__(self, x: Array, *, key: PRNGKeyArray | None = None) -> Array:
        """As `equinox.nn.MLP.__call__`: `x` of shape `(in_size,)`, or a scalar."""
        layer = self._layer_for(x)
        plain = _is_plain_function(self.activation) and _is_plain_function(self.final_activation)
        if staged_init() and not layer.scan and layer.depth > 0 and plain:
            return _staged_forward(layer, x, self.activation, self.final_activation)
        return layer(x, key=key)


# The fields `_build_from_kept_linears` sets. An `eqx.nn.MLP` with other fields, a field
# converter or a `__check_init__` (another Equinox version) is built by its own `__init__`.
_ASSEMBLED = {
    "layers",
    "activation",
    "final_activation",
    "use_bias",
    "use_final_bias",
    "in_size",
    "out_size",
    "width_size",
    "depth",
    "scan",
}
_ASSEMBLES_AS_EQUINOX = (
    {field.name for field in dataclasses.fields(eqx.nn.MLP)} == _ASSEMBLED
    and not any("converter" in field.metadata for field in dataclasses.fields(eqx.nn.MLP))
    and not hasattr(eqx.nn.MLP, "__check_init__")
)


def _linear(
    in_size: int | Literal["scalar"],
    out_size: int | Literal["scalar"],
    use_bias: bool,
    dtype: Any,
    key: PRNGKeyArray,
) -> eqx.nn.Linear:
    """One of the MLP's layers, as Equinox's `MLP.__init__` builds it."""
    return eqx.nn.Linear(in_size, out_size, use_bias, dtype=dtype, key=key)


def _staged_forward(
    mlp: eqx.nn.MLP,
    x: Array,
    activation: Callable[..., Any],
    final_activation: Callable[..., Any],
) -> Array:
    """`mlp(x)` at a staged init, for plain-function activations: Equinox's
    computation (each layer, then its activation vmapped over the neurons), each layer
    with its activation one kept call (`_kept_calls.py`). A deep MLP then traces each
    kind of layer once, not a `filter_vmap` per layer.

    The hidden layers are alike (width to width): once one of them gives an output of
    its input's shape and dtype, each one after it would give the same again. Where
    only that shape and dtype matter (`may_leave_out`), they are not called, and a
    thousand hidden layers are one kept call."""
    first, *hidden, last = mlp.layers
    x = call_kept(_layer_per_neuron, first, activation, x)
    for i, layer in enumerate(hidden):
        y = call_kept(_layer_per_neuron, layer, activation, x)
        unchanged = _shape_and_dtype(y) == _shape_and_dtype(x)
        x = y
        if unchanged and i + 1 < len(hidden) and may_leave_out():
            x = left_out(x)
            break
    scalar = mlp.out_size == "scalar"
    return call_kept(_layer_applied if scalar else _layer_per_neuron, last, final_activation, x)


def _shape_and_dtype(x: Array) -> tuple[Any, ...]:
    return (x.shape, x.dtype, getattr(x, "weak_type", False))


def _layer_per_neuron(layer: eqx.nn.Linear, activation: Callable[..., Any], x: Array) -> Array:
    """A layer, then its activation on each neuron: Equinox's
    `filter_vmap(lambda a, b: a(b))(activation, layer(x))` for a plain function."""
    return jax.vmap(activation)(layer(x))


def _layer_applied(layer: eqx.nn.Linear, activation: Callable[..., Any], x: Array) -> Array:
    """The output layer of a scalar MLP, then its activation (as Equinox applies it)."""
    return activation(layer(x))


def _is_plain_function(x: Any) -> bool:
    if not callable(x) or isinstance(x, eqx.Module):
        return False
    try:
        hash(x)
    except TypeError:
        return False
    return True
