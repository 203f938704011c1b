from typing import Any

import equinox as eqx
from jaxtyping import Array, PRNGKeyArray

from .._running import run_built
from ._lazy import LazyLayer


class RotaryPositionalEmbedding(LazyLayer):
    """A lazy `equinox.nn.RotaryPositionalEmbedding`: `embedding_size` is inferred
    from the input, of shape `(seq_length, embedding_size)`. After `lazymod.init` it is
    an `eqx.nn.RotaryPositionalEmbedding`.

    !!! example

        ```python
        import equinox as eqx
        import jax
        import jax.numpy as jnp
        import lazymod as lm

        spec = jax.ShapeDtypeStruct((10, 32), jnp.float32)
        rope = lm.init(lm.nn.RotaryPositionalEmbedding(), 0, spec)
        assert type(rope) is eqx.nn.RotaryPositionalEmbedding and rope.embedding_size == 32
        ```
    """

    theta: float = eqx.field(static=True)
    dtype: Any = eqx.field(static=True)

    @staticmethod
    def rotate_half(x: Array) -> Array:
        """As `equinox.nn.RotaryPositionalEmbedding.rotate_half`: `[-x2, x1]` for the
        two halves `x1, x2` of the last axis."""
        return eqx.nn.RotaryPositionalEmbedding.rotate_half(x)

    @staticmethod
    def precompute_freqs_cis(
        embedding_size: int, end: int, theta: float, dtype: Any
    ) -> tuple[Array, Array]:
        """As `equinox.nn.RotaryPositionalEmbedding.precompute_freqs_cis`: the cosines
        and sines, of shape `(end, embedding_size // 2)` each, that the layer rotates
        by.

        !!! example

            ```python
            import jax.numpy as jnp
            import lazymod as lm

            rope = lm.nn.RotaryPositionalEmbedding
            cos, sin = rope.precompute_freqs_cis(8, 4, 10_000.0, jnp.float32)
            assert cos.shape == sin.shape == (4, 4)
            ```
        """
        return eqx.nn.RotaryPositionalEmbedding.precompute_freqs_cis(
            embedding_size, end, theta, dtype
        )

    def __init__(self, theta: float = 10_000.0, dtype: Any = None):
        """**Arguments:** as `equinox.nn.RotaryPositionalEmbedding`, less
        `embedding_size`.

        - `theta`: the base of the rotation frequencies.
        - `dtype`: the dtype of the sines and cosines (default: JAX's default float).
        """
        self.theta = theta
        self.dtype = dtype

    def _build(self, x: Array) -> eqx.nn.RotaryPositionalEmbedding:
        if x.ndim != 2:
            raise self._bad_input("an array of shape (seq_length, embedding_size)", x, rank=2)
        if x.shape[1] % 2 != 0:
            raise self._bad_input(
                "an even embedding_size (the last axis), as rotations act on pairs",
                x,
                f"Give the input an even last axis; {x.shape[1]} is odd.",
            )
        dtype = {} if self.dtype is None else {"dtype": self.dtype}
        return eqx.nn.RotaryPositionalEmbedding(x.shape[1], self.theta, **dtype)

    def __call__(self, x: Array, *, key: PRNGKeyArray | None = None) -> Array:
        """As `equinox.nn.RotaryPositionalEmbedding.__call__`: `x` of shape
        `(seq_length, embedding_size)`."""
        return run_built(self._layer_for(x), x, key=key)
