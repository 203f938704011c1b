from typing import Any

import equinox as eqx
import jax.numpy as jnp
from jaxtyping import Array, PRNGKeyArray

from .._errors import InitTypeError, InitValueError
from .._running import describe, next_key
from .._sentinels import is_sentinel, lazy
from ._lazy import Partitioned


class Embedding(Partitioned):
    """`equinox.nn.Embedding` seeded by `lazymod.init`: it takes no `key`; its table is
    drawn in `rng_init` with [`lazymod.next_key`][], exactly as Equinox draws it, or
    comes from `weight=` (an array or a [`lazymod.Initializer`][]). After
    `lazymod.init` it is an `eqx.nn.Embedding`. While init runs the forward pass,
    `self.embedding.weight` already holds the table, so output weights can be tied to it.

    !!! example

        ```python
        import equinox as eqx
        import jax
        import jax.numpy as jnp
        import lazymod as lm

        class LanguageModel(lm.Module):
            embedding: lm.nn.Embedding

            def __init__(self):
                self.embedding = lm.nn.Embedding(100, 16)

            def __call__(self, tokens):
                hidden = jax.vmap(self.embedding)(tokens)
                return hidden @ self.embedding.weight.T  # tied output weights

        model = lm.init(LanguageModel(), 0, jax.ShapeDtypeStruct((8,), jnp.int32))
        assert type(model.embedding) is eqx.nn.Embedding
        assert model.embedding.weight.shape == (100, 16)
        ```
    """

    num_embeddings: int | None = eqx.field(static=True)
    embedding_size: int | None = eqx.field(static=True)
    weight: Any
    dtype: Any = eqx.field(static=True)

    def __init__(
        self,
        num_embeddings: int | None = None,
        embedding_size: int | None = None,
        weight: Any = None,
        dtype: Any = None,
        *,
        key: PRNGKeyArray | None = None,
    ):
        """**Arguments:** as `equinox.nn.Embedding`, with `key` optional: either

        - `num_embeddings`: the size of the vocabulary (non-negative);
        - `embedding_size`: the size of each embedding vector (non-negative);
        - `dtype`: the table's dtype (default: JAX's default float dtype);
        - `key`: optional; given, the table is drawn now, as Equinox does, and init
            keeps it; by default `lazymod.init` draws it;

        or `weight`: the table, of shape `(num_embeddings, embedding_size)`, as an
        array or a `lazymod.Initializer`.
        """
        if weight is None and (num_embeddings is None or embedding_size is None):
            raise ValueError(
                "lazymod.nn.Embedding needs num_embeddings and embedding_size (the table "
                "is drawn at init), or weight= (an array or a lazymod.Initializer)."
            )
        for name, size in (("num_embeddings", num_embeddings), ("embedding_size", embedding_size)):
            if size is not None and size < 0:
                raise ValueError(f"lazymod.nn.Embedding: {name} must not be negative; got {size}.")
        self.num_embeddings = num_embeddings
        self.embedding_size = embedding_size
        if weight is None and key is not None:
            weight = eqx.nn.Embedding(num_embeddings, embedding_size, dtype=dtype, key=key).weight
        self.weight = lazy() if weight is None else weight
        self.dtype = dtype

    def rng_init(self) -> None:
        if is_sentinel(self.weight):
            table = eqx.nn.Embedding(
                self.num_embeddings, self.embedding_size, dtype=self.dtype, key=next_key()
            )
            self.weight = table.weight

    def _init_result(self) -> Any:
        if is_sentinel(self.weight):
            return self
        return eqx.nn.Embedding(self.num_embeddings, self.embedding_size, weight=self.weight)

    def __call__(self, x: Array, *, key: PRNGKeyArray | None = None) -> Array:
        """As `equinox.nn.Embedding.__call__`: `x` an integer index (a 0-d array);
        returns its embedding vector."""
        if self.initializing():
            if not jnp.issubdtype(getattr(x, "dtype", int), jnp.integer):
                raise InitTypeError(
                    f"{describe(self)} (Embedding): expected an integer index (a token "
                    f"id); got an input of dtype {jnp.dtype(x.dtype).name} and shape "
                    f"{tuple(x.shape)}. Give the input (or spec) an integer dtype such as "
                    "jnp.int32; for a sequence, jax.vmap the embedding over it."
                )
            if getattr(x, "ndim", 0) != 0:
                raise InitValueError(
                    f"{describe(self)} (Embedding): expected an integer index (a 0-d "
                    f"array: one token id); got an input of shape {tuple(x.shape)}. "
                    "lazymod.nn layers take unbatched inputs, as Equinox layers do: "
                    "jax.vmap the embedding over the sequence (and again over a batch "
                    "of sequences)."
                )
        return self._init_result()(x, key=key)
