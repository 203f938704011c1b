"""Lazy convolutions: `in_channels` is inferred from the input. `Convolution` holds
what they share with the transposed ones (`_conv_transpose.py`)."""

import dataclasses
from collections.abc import Sequence
from typing import Any, ClassVar

import equinox as eqx
import jax.numpy as jnp
from jaxtyping import Array, PRNGKeyArray

from .._errors import InitTypeError
from .._running import next_key, run_built
from ._lazy import check_flags, check_sizes, LazyLayer


# The types of the configuration fields once `_hashable` has turned lists into tuples
# (static fields must be hashable).
Size = int | tuple[int, ...]
Padding = str | int | tuple[int | tuple[int, int], ...]


def _hashable(value: Any) -> Any:
    """`value` with every list (or other sequence) turned into a tuple, recursively."""
    if isinstance(value, Sequence) and not isinstance(value, str):
        return tuple(_hashable(v) for v in value)
    return value


def _in_channels(layer: "Convolution", x: Array) -> int:
    """The input's channel count, after checking its rank and its divisibility by
    `groups`."""
    n = layer.num_spatial_dims
    if x.ndim != n + 1:
        spatial = ", ".join(f"dim_{i}" for i in range(1, n + 1))
        raise layer._bad_input(
            f"a rank-{n + 1} array of shape (in_channels, {spatial})", x, rank=n + 1
        )
    if not jnp.issubdtype(x.dtype, jnp.inexact):
        raise layer._bad_input(
            "a floating-point input",
            x,
            f"Its dtype is {x.dtype}: give the input (or spec) a float dtype such as "
            "jnp.float32; integers (token ids) need an embedding first.",
            InitTypeError,
        )
    if x.shape[0] % layer.groups != 0:
        raise layer._bad_input(
            f"in_channels (the input's first axis) divisible by groups={layer.groups}",
            x,
            f"Give groups= a divisor of {x.shape[0]}.",
        )
    return x.shape[0]


class Convolution(LazyLayer):
    """What the lazy convolutions share: the Equinox constructor's arguments, less
    `in_channels` and `key`, stored as static fields of the same names, and a `_build`
    that passes them on. A subclass names the Equinox class it builds."""

    num_spatial_dims: int = eqx.field(static=True)
    out_channels: int = eqx.field(static=True)
    kernel_size: Size = eqx.field(static=True)
    stride: Size = eqx.field(static=True)
    padding: Padding = eqx.field(static=True)
    dilation: Size = eqx.field(static=True)
    groups: int = eqx.field(static=True)
    use_bias: bool = eqx.field(static=True)
    padding_mode: str = eqx.field(static=True)
    dtype: Any = eqx.field(static=True)

    # The Equinox layer built, and whether its constructor takes `num_spatial_dims`.
    _equinox: ClassVar[type[eqx.Module]]
    _general: ClassVar[bool] = True

    def __init__(self, **arguments: Any):
        """Store the Equinox constructor's arguments, sequences as tuples (static
        fields must be hashable)."""
        sizes = ("out_channels", "kernel_size", "stride", "dilation", "groups")
        check_sizes(type(self).__name__, **{n: arguments[n] for n in sizes if n in arguments})
        if "use_bias" in arguments:
            check_flags(type(self).__name__, None, use_bias=arguments["use_bias"])
        for name, value in arguments.items():
            setattr(self, name, _hashable(value))
        groups, out_channels = arguments.get("groups", 1), arguments["out_channels"]
        if isinstance(groups, int) and groups > 0 and out_channels % groups != 0:
            raise ValueError(
                f"lazymod.nn.{type(self).__name__}: out_channels={out_channels} is not "
                f"divisible by groups={groups}; each group makes out_channels / groups "
                "channels. Give groups= a divisor of out_channels."
            )

    def _build(self, x: Array, **_: Any) -> eqx.Module:
        arguments = {
            field.name: getattr(self, field.name)
            for field in dataclasses.fields(self)
            if field.metadata.get("static", False) and field.name != "partition"
        }
        if not self._general:
            del arguments["num_spatial_dims"]
        return self._equinox(**arguments, in_channels=_in_channels(self, x), key=next_key())

    def __call__(self, x: Array, *, key: PRNGKeyArray | None = None) -> Array:
        """As the Equinox layer's `__call__`: `x` of shape
        `(in_channels, dim_1, ..., dim_N)`; returns `(out_channels, new_dim_1, ...,
        new_dim_N)`."""
        return run_built(self._layer_for(x), x, key=key)


class Conv(Convolution):
    """A lazy `equinox.nn.Conv`: `in_channels` is inferred from the input, which has
    shape `(in_channels, dim_1, ..., dim_N)`. After `lazymod.init` it is an
    `eqx.nn.Conv`.

    !!! example

        ```python
        import equinox as eqx
        import jax
        import jax.numpy as jnp
        import lazymod as lm

        conv = lm.nn.Conv(2, out_channels=8, kernel_size=3)
        conv = lm.init(conv, 0, jax.ShapeDtypeStruct((3, 16, 16), jnp.float32))
        assert type(conv) is eqx.nn.Conv and conv.weight.shape == (8, 3, 3, 3)
        ```
    """

    _equinox: ClassVar[type[eqx.Module]] = eqx.nn.Conv

    def __init__(
        self,
        num_spatial_dims: int,
        out_channels: int,
        kernel_size: int | Sequence[int],
        stride: int | Sequence[int] = 1,
        padding: str | int | Sequence[int] | Sequence[tuple[int, int]] = 0,
        dilation: int | Sequence[int] = 1,
        groups: int = 1,
        use_bias: bool = True,
        padding_mode: str = "ZEROS",
        dtype: Any = None,
    ):
        """**Arguments:** as `equinox.nn.Conv`, less `in_channels` and `key`.

        - `num_spatial_dims`: the number of spatial dimensions (`2` for images).
        - `out_channels`: the number of output channels.
        - `kernel_size`, `stride`, `padding`, `dilation`: an int for every spatial
            dimension, or one value per dimension; `padding` may also be `"SAME"`,
            `"SAME_LOWER"`, `"VALID"` or `(before, after)` pairs.
        - `groups`: the number of input channel groups; the inferred `in_channels` must
            be divisible by it.
        - `use_bias`: whether to add a bias.
        - `padding_mode`: `"ZEROS"`, `"REFLECT"`, `"REPLICATE"` or `"CIRCULAR"`.
        - `dtype`: the parameters' dtype (default: JAX's default float dtype).
        """
        super().__init__(
            num_spatial_dims=num_spatial_dims,
            out_channels=out_channels,
            kernel_size=kernel_size,
            stride=stride,
            padding=padding,
            dilation=dilation,
            groups=groups,
            use_bias=use_bias,
            padding_mode=padding_mode,
            dtype=dtype,
        )


class Conv1d(Conv):
    """A lazy `equinox.nn.Conv1d`: as [`lazymod.nn.Conv`][] with
    `num_spatial_dims=1`. After `lazymod.init` it is an `eqx.nn.Conv1d`.

    !!! example

        ```python
        import equinox as eqx
        import jax
        import jax.numpy as jnp
        import lazymod as lm

        conv = lm.init(lm.nn.Conv1d(8, 5, padding="SAME"), 0, jnp.ones((4, 100)))
        assert type(conv) is eqx.nn.Conv1d and conv.in_channels == 4
        assert conv(jnp.ones((4, 100))).shape == (8, 100)
        ```
    """

    _equinox: ClassVar[type[eqx.Module]] = eqx.nn.Conv1d
    _general: ClassVar[bool] = False

    def __init__(
        self,
        out_channels: int,
        kernel_size: int | Sequence[int],
        stride: int | Sequence[int] = 1,
        padding: str | int | Sequence[int] | Sequence[tuple[int, int]] = 0,
        dilation: int | Sequence[int] = 1,
        groups: int = 1,
        use_bias: bool = True,
        padding_mode: str = "ZEROS",
        dtype: Any = None,
    ):
        """**Arguments:** as `equinox.nn.Conv1d`, less `in_channels` and `key`; see
        [`lazymod.nn.Conv`][]."""
        super().__init__(
            1,
            out_channels,
            kernel_size,
            stride,
            padding,
            dilation,
            groups,
            use_bias,
            padding_mode,
            dtype,
        )


class Conv2d(Conv):
    """A lazy `equinox.nn.Conv2d`: as [`lazymod.nn.Conv`][] with
    `num_spatial_dims=2`. After `lazymod.init` it is an `eqx.nn.Conv2d`.

    !!! example

        ```python
        import equinox as eqx
        import jax
        import jax.numpy as jnp
        import lazymod as lm

        conv = lm.nn.Conv2d(16, kernel_size=3, stride=2, padding=1)
        conv = lm.init(conv, 0, jax.ShapeDtypeStruct((3, 32, 32), jnp.float32))
        assert type(conv) is eqx.nn.Conv2d and conv.weight.shape == (16, 3, 3, 3)
        assert conv(jnp.ones((3, 32, 32))).shape == (16, 16, 16)
        ```
    """

    _equinox: ClassVar[type[eqx.Module]] = eqx.nn.Conv2d
    _general: ClassVar[bool] = False

    def __init__(
        self,
        out_channels: int,
        kernel_size: int | Sequence[int],
        stride: int | Sequence[int] = (1, 1),
        padding: str | int | Sequence[int] | Sequence[tuple[int, int]] = (0, 0),
        dilation: int | Sequence[int] = (1, 1),
        groups: int = 1,
        use_bias: bool = True,
        padding_mode: str = "ZEROS",
        dtype: Any = None,
    ):
        """**Arguments:** as `equinox.nn.Conv2d`, less `in_channels` and `key`; see
        [`lazymod.nn.Conv`][]."""
        super().__init__(
            2,
            out_channels,
            kernel_size,
            stride,
            padding,
            dilation,
            groups,
            use_bias,
            padding_mode,
            dtype,
        )


class Conv3d(Conv):
    """A lazy `equinox.nn.Conv3d`: as [`lazymod.nn.Conv`][] with
    `num_spatial_dims=3`. After `lazymod.init` it is an `eqx.nn.Conv3d`.

    !!! example

        ```python
        import equinox as eqx
        import jax
        import jax.numpy as jnp
        import lazymod as lm

        conv = lm.init(lm.nn.Conv3d(4, 3), 0, jax.ShapeDtypeStruct((2, 8, 8, 8), jnp.float32))
        assert type(conv) is eqx.nn.Conv3d and conv.weight.shape == (4, 2, 3, 3, 3)
        ```
    """

    _equinox: ClassVar[type[eqx.Module]] = eqx.nn.Conv3d
    _general: ClassVar[bool] = False

    def __init__(
        self,
        out_channels: int,
        kernel_size: int | Sequence[int],
        stride: int | Sequence[int] = (1, 1, 1),
        padding: str | int | Sequence[int] | Sequence[tuple[int, int]] = (0, 0, 0),
        dilation: int | Sequence[int] = (1, 1, 1),
        groups: int = 1,
        use_bias: bool = True,
        padding_mode: str = "ZEROS",
        dtype: Any = None,
    ):
        """**Arguments:** as `equinox.nn.Conv3d`, less `in_channels` and `key`; see
        [`lazymod.nn.Conv`][]."""
        super().__init__(
            3,
            out_channels,
            kernel_size,
            stride,
            padding,
            dilation,
            groups,
            use_bias,
            padding_mode,
            dtype,
        )
