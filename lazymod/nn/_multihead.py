from collections.abc import Callable
from typing import Any

import equinox as eqx
from jaxtyping import Array, PRNGKeyArray

from .._running import next_key, run_built
from ._lazy import check_flags, check_sizes, LazyLayer


class MultiheadAttention(LazyLayer):
    """A lazy `equinox.nn.MultiheadAttention`: `query_size`, `key_size` and
    `value_size` are inferred from the last axis of `query`, `key_` and `value`;
    `output_size`, `qk_size` and `vo_size` default as in Equinox. After `lazymod.init`
    it is an `eqx.nn.MultiheadAttention`.

    !!! example

        ```python
        import equinox as eqx
        import jax
        import jax.numpy as jnp
        import lazymod as lm

        spec = jax.ShapeDtypeStruct((10, 64), jnp.float32)  # (seq_length, query_size)
        attention = lm.nn.MultiheadAttention(num_heads=4)
        attention = lm.init(attention, 0, spec, spec, spec)  # self-attention
        assert type(attention) is eqx.nn.MultiheadAttention
        assert attention.query_proj.weight.shape == (64, 64)
        ```
    """

    num_heads: int = eqx.field(static=True)
    output_size: int | None = eqx.field(static=True)
    qk_size: int | None = eqx.field(static=True)
    vo_size: int | None = eqx.field(static=True)
    use_query_bias: bool = eqx.field(static=True)
    use_key_bias: bool = eqx.field(static=True)
    use_value_bias: bool = eqx.field(static=True)
    use_output_bias: bool = eqx.field(static=True)
    dropout_p: float = eqx.field(static=True)
    inference: bool
    dtype: Any = eqx.field(static=True)

    def __init__(
        self,
        num_heads: int,
        output_size: int | None = None,
        qk_size: int | None = None,
        vo_size: int | None = None,
        use_query_bias: bool = False,
        use_key_bias: bool = False,
        use_value_bias: bool = False,
        use_output_bias: bool = False,
        dropout_p: float = 0.0,
        inference: bool = False,
        dtype: Any = None,
    ):
        """**Arguments:** as `equinox.nn.MultiheadAttention`, less `query_size`,
        `key_size`, `value_size` and `key`.

        - `num_heads`: the number of attention heads.
        - `output_size`: the output's size (default: the query's size).
        - `qk_size`, `vo_size`: the per-head sizes of the query-key and value-output
            projections (default: `query_size // num_heads`; the query's size must then
            be divisible by `num_heads`).
        - `use_query_bias`, `use_key_bias`, `use_value_bias`, `use_output_bias`: whether
            each projection has a bias.
        - `dropout_p`: the dropout probability on the attention weights.
        - `inference`: if `True`, no dropout; toggled by `equinox.nn.inference_mode`.
        - `dtype`: the parameters' dtype (default: JAX's default float dtype).
        """
        check_sizes("MultiheadAttention", num_heads=num_heads)
        check_flags(
            "MultiheadAttention",
            None,
            use_query_bias=use_query_bias,
            use_key_bias=use_key_bias,
            use_value_bias=use_value_bias,
            use_output_bias=use_output_bias,
        )
        self.num_heads = num_heads
        self.output_size = output_size
        self.qk_size = qk_size
        self.vo_size = vo_size
        self.use_query_bias = use_query_bias
        self.use_key_bias = use_key_bias
        self.use_value_bias = use_value_bias
        self.use_output_bias = use_output_bias
        self.dropout_p = dropout_p
        self.inference = inference
        self.dtype = dtype

    def _build(self, query: Array, key_: Array, value: Array) -> eqx.nn.MultiheadAttention:
        for name, x in (("query", query), ("key_", key_), ("value", value)):
            if x.ndim != 2:
                raise self._bad_input(f"`{name}` of shape (seq_length, {name}_size)", x, rank=2)
        if key_.shape[0] != value.shape[0]:
            raise self._bad_input(
                f"`value` of the sequence length of `key_`, which has shape {tuple(key_.shape)}",
                value,
                "Give key_ and value one entry per position of the same sequence.",
            )
        query_size = query.shape[1]
        if (self.qk_size is None or self.vo_size is None) and query_size % self.num_heads:
            raise self._bad_input(
                f"a query size divisible by num_heads={self.num_heads} (or give qk_size "
                "and vo_size explicitly)",
                query,
                f"Give num_heads= a divisor of {query_size}, or qk_size= and vo_size=.",
            )
        return eqx.nn.MultiheadAttention(
            self.num_heads,
            query_size,
            key_.shape[1],
            value.shape[1],
            self.output_size,
            self.qk_size,
            self.vo_size,
            self.use_query_bias,
            self.use_key_bias,
            self.use_value_bias,
            self.use_output_bias,
            self.dropout_p,
            self.inference,
            self.dtype,
            key=next_key(),
        )

    def __call__(
        self,
        query: Array,
        key_: Array,
        value: Array,
        mask: None | Array = None,
        *,
        key: PRNGKeyArray | None = None,
        inference: bool | None = None,
        deterministic: bool | None = None,
        process_heads: None | Callable[..., Any] = None,
    ) -> Array:
        """As `equinox.nn.MultiheadAttention.__call__`: `query` of shape
        `(query_seq_length, query_size)`, `key_` and `value` of shapes
        `(kv_seq_length, key_size)` and `(kv_seq_length, value_size)`."""
        layer = self._layer_for(query, key_, value)
        if key is None and self.initializing():  # as Dropout: the "dropout" stream
            key = next_key("dropout")
        return run_built(
            layer,
            query,
            key_,
            value,
            mask,
            key=key,
            inference=inference,
            deterministic=deterministic,
            process_heads=process_heads,
        )
