from typing import Any, ClassVar

import equinox as eqx
from jaxtyping import Array, PRNGKeyArray

from .._errors import InitTypeError
from .._running import next_key, run_built
from ._lazy import LazyLayer


class GRUCell(LazyLayer):
    """A lazy `equinox.nn.GRUCell`: `input_size` is inferred from the input, of shape
    `(input_size,)`. After `lazymod.init` it is an `eqx.nn.GRUCell`. It may be first
    called inside a `jax.lax.scan` over a sequence.

    !!! example

        ```python
        import equinox as eqx
        import jax
        import jax.numpy as jnp
        import lazymod as lm

        class Encoder(lm.Module):
            cell: lm.nn.GRUCell

            def __init__(self):
                self.cell = lm.nn.GRUCell(hidden_size=16)

            def __call__(self, xs):  # (seq_length, features)
                step = lambda h, x: (self.cell(x, h), None)
                return jax.lax.scan(step, jnp.zeros(16), xs)[0]

        encoder = lm.init(Encoder(), 0, jax.ShapeDtypeStruct((20, 3), jnp.float32))
        assert type(encoder.cell) is eqx.nn.GRUCell and encoder.cell.input_size == 3
        ```
    """

    hidden_size: int = eqx.field(static=True)
    use_bias: bool = eqx.field(static=True)
    dtype: Any = eqx.field(static=True)

    _equinox: ClassVar[type[eqx.Module]] = eqx.nn.GRUCell

    def __init__(self, hidden_size: int, use_bias: bool = True, dtype: Any = None):
        """**Arguments:** as `equinox.nn.GRUCell`, less `input_size` and `key`.

        - `hidden_size`: the size of the hidden state.
        - `use_bias`: whether to add biases.
        - `dtype`: the parameters' dtype (default: JAX's default float dtype).
        """
        self.hidden_size = hidden_size
        self.use_bias = use_bias
        self.dtype = dtype

    def _check_hidden(self, hidden: Any) -> None:
        if getattr(hidden, "shape", None) != (self.hidden_size,):
            raise self._bad_input(
                f"a hidden state of shape ({self.hidden_size},) (hidden_size={self.hidden_size})",
                hidden,
                f"Give a hidden state of shape ({self.hidden_size},), or a cell whose "
                "hidden_size= is its size; for a batch, jax.vmap the cell over both.",
            )

    def _build(self, input: Array, hidden: Any) -> eqx.Module:
        if input.ndim != 1:
            raise self._bad_input("an input of shape (input_size,)", input, rank=1)
        self._check_hidden(hidden)
        return type(self)._equinox(
            input.shape[0], self.hidden_size, self.use_bias, self.dtype, key=next_key()
        )

    def __call__(self, input: Array, hidden: Array, *, key: PRNGKeyArray | None = None) -> Array:
        """As `equinox.nn.GRUCell.__call__`: `input` of shape `(input_size,)`,
        `hidden` of shape `(hidden_size,)`; returns the new hidden state."""
        return run_built(self._layer_for(input, hidden), input, hidden, key=key)


class LSTMCell(GRUCell):
    """A lazy `equinox.nn.LSTMCell`: `input_size` is inferred from the input, of
    shape `(input_size,)`. After `lazymod.init` it is an `eqx.nn.LSTMCell`.

    !!! example

        ```python
        import equinox as eqx
        import jax
        import jax.numpy as jnp
        import lazymod as lm

        cell = lm.nn.LSTMCell(hidden_size=8)
        hidden = (jax.ShapeDtypeStruct((8,), jnp.float32),) * 2
        cell = lm.init(cell, 0, jax.ShapeDtypeStruct((3,), jnp.float32), hidden)
        assert type(cell) is eqx.nn.LSTMCell and cell.weight_ih.shape == (32, 3)
        ```
    """

    _equinox: ClassVar[type[eqx.Module]] = eqx.nn.LSTMCell

    def __init__(self, hidden_size: int, use_bias: bool = True, dtype: Any = None):
        """**Arguments:** as `equinox.nn.LSTMCell`, less `input_size` and `key`.

        - `hidden_size`: the size of the hidden and cell states.
        - `use_bias`: whether to add biases.
        - `dtype`: the parameters' dtype (default: JAX's default float dtype).
        """
        super().__init__(hidden_size, use_bias, dtype)

    def _check_hidden(self, hidden: Any) -> None:
        if not (isinstance(hidden, tuple) and len(hidden) == 2):
            raise self._bad_input(
                f"a (hidden, cell) tuple of two arrays of shape ({self.hidden_size},)",
                hidden,
                "Pass the state as a tuple: cell(x, (hidden, cell_state)).",
                InitTypeError,
            )
        for state in hidden:
            super()._check_hidden(state)

    def __call__(
        self, input: Array, hidden: tuple[Array, Array], *, key: PRNGKeyArray | None = None
    ) -> tuple[Array, Array]:
        """As `equinox.nn.LSTMCell.__call__`: `input` of shape `(input_size,)`,
        `hidden` a `(hidden, cell)` tuple of shape `(hidden_size,)` each; returns the
        new tuple."""
        return run_built(self._layer_for(input, hidden), input, hidden, key=key)
