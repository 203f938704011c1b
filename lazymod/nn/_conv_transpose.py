"""Lazy transposed convolutions: `in_channels` is inferred from the input."""

from collections.abc import Sequence
from typing import Any, ClassVar

import equinox as eqx

from ._conv import Convolution, Size


class ConvTranspose(Convolution):
    """A lazy `equinox.nn.ConvTranspose`: `in_channels` is inferred from the input,
    which has shape `(in_channels, dim_1, ..., dim_N)`. After `lazymod.init` it is an
    `eqx.nn.ConvTranspose`.

    !!! example

        ```python
        import equinox as eqx
        import jax
        import jax.numpy as jnp
        import lazymod as lm

        up = lm.nn.ConvTranspose(2, out_channels=3, kernel_size=4, stride=2, padding=1)
        up = lm.init(up, 0, jax.ShapeDtypeStruct((8, 16, 16), jnp.float32))
        assert type(up) is eqx.nn.ConvTranspose and up.weight.shape == (3, 8, 4, 4)
        assert up(jnp.ones((8, 16, 16))).shape == (3, 32, 32)
        ```
    """

    output_padding: Size = eqx.field(static=True)

    _equinox: ClassVar[type[eqx.Module]] = eqx.nn.ConvTranspose

    def __init__(
        self,
        num_spatial_dims: int,
        out_channels: int,
        kernel_size: int | Sequence[int],
        stride: int | Sequence[int] = 1,
        padding: str | int | Sequence[int] | Sequence[tuple[int, int]] = 0,
        output_padding: int | Sequence[int] = 0,
        dilation: int | Sequence[int] = 1,
        groups: int = 1,
        use_bias: bool = True,
        padding_mode: str = "ZEROS",
        dtype: Any = None,
    ):
        """**Arguments:** as `equinox.nn.ConvTranspose`, less `in_channels` and
        `key`.

        - `num_spatial_dims`: the number of spatial dimensions (`2` for images).
        - `out_channels`: the number of output channels.
        - `kernel_size`, `stride`, `padding`, `output_padding`, `dilation`: an int for
            every spatial dimension, or one value per dimension; `stride` and `padding`
            are those of the equivalent `equinox.nn.Conv`.
        - `groups`: the number of input channel groups; the inferred `in_channels` must
            be divisible by it.
        - `use_bias`: whether to add a bias.
        - `padding_mode`: `"ZEROS"` or `"CIRCULAR"`.
        - `dtype`: the parameters' dtype (default: JAX's default float dtype).
        """
        super().__init__(
            num_spatial_dims=num_spatial_dims,
            out_channels=out_channels,
            kernel_size=kernel_size,
            stride=stride,
            padding=padding,
            output_padding=output_padding,
            dilation=dilation,
            groups=groups,
            use_bias=use_bias,
            padding_mode=padding_mode,
            dtype=dtype,
        )


class ConvTranspose1d(ConvTranspose):
    """A lazy `equinox.nn.ConvTranspose1d`: as [`lazymod.nn.ConvTranspose`][] with
    `num_spatial_dims=1`. After `lazymod.init` it is an `eqx.nn.ConvTranspose1d`.

    !!! example

        ```python
        import equinox as eqx
        import jax
        import jax.numpy as jnp
        import lazymod as lm

        up = lm.init(lm.nn.ConvTranspose1d(2, 3, stride=2), 0, jnp.ones((6, 10)))
        assert type(up) is eqx.nn.ConvTranspose1d and up.weight.shape == (2, 6, 3)
        assert up(jnp.ones((6, 10))).shape == (2, 21)
        ```
    """

    _equinox: ClassVar[type[eqx.Module]] = eqx.nn.ConvTranspose1d
    _general: ClassVar[bool] = False

    # As in Equinox, `output_padding` comes before `padding` here, unlike in
    # `ConvTranspose`.
    def __init__(
        self,
        out_channels: int,
        kernel_size: int | Sequence[int],
        stride: int | Sequence[int] = 1,
        output_padding: int | Sequence[int] = 0,
        padding: str | int | Sequence[int] | Sequence[tuple[int, int]] = 0,
        dilation: int | Sequence[int] = 1,
        groups: int = 1,
        use_bias: bool = True,
        padding_mode: str = "ZEROS",
        dtype: Any = None,
    ):
        """**Arguments:** as `equinox.nn.ConvTranspose1d`, less `in_channels` and
        `key`; see [`lazymod.nn.ConvTranspose`][]. As in Equinox, `output_padding`
        comes before `padding`."""
        super().__init__(
            1,
            out_channels,
            kernel_size,
            stride,
            padding,
            output_padding,
            dilation,
            groups,
            use_bias,
            padding_mode,
            dtype,
        )


class ConvTranspose2d(ConvTranspose):
    """A lazy `equinox.nn.ConvTranspose2d`: as [`lazymod.nn.ConvTranspose`][] with
    `num_spatial_dims=2`. After `lazymod.init` it is an `eqx.nn.ConvTranspose2d`.

    !!! example

        ```python
        import equinox as eqx
        import jax
        import jax.numpy as jnp
        import lazymod as lm

        up = lm.nn.ConvTranspose2d(3, kernel_size=2, stride=2)
        up = lm.init(up, 0, jax.ShapeDtypeStruct((8, 16, 16), jnp.float32))
        assert type(up) is eqx.nn.ConvTranspose2d and up.in_channels == 8
        assert up(jnp.ones((8, 16, 16))).shape == (3, 32, 32)
        ```
    """

    _equinox: ClassVar[type[eqx.Module]] = eqx.nn.ConvTranspose2d
    _general: ClassVar[bool] = False

    def __init__(
        self,
        out_channels: int,
        kernel_size: int | Sequence[int],
        stride: int | Sequence[int] = (1, 1),
        output_padding: int | Sequence[int] = (0, 0),
        padding: str | int | Sequence[int] | Sequence[tuple[int, int]] = (0, 0),
        dilation: int | Sequence[int] = (1, 1),
        groups: int = 1,
        use_bias: bool = True,
        padding_mode: str = "ZEROS",
        dtype: Any = None,
    ):
        """**Arguments:** as `equinox.nn.ConvTranspose2d`, less `in_channels` and
        `key`; see [`lazymod.nn.ConvTranspose`][]. As in Equinox, `output_padding`
        comes before `padding`."""
        super().__init__(
            2,
            out_channels,
            kernel_size,
            stride,
            padding,
            output_padding,
            dilation,
            groups,
            use_bias,
            padding_mode,
            dtype,
        )


class ConvTranspose3d(ConvTranspose):
    """A lazy `equinox.nn.ConvTranspose3d`: as [`lazymod.nn.ConvTranspose`][] with
    `num_spatial_dims=3`. After `lazymod.init` it is an `eqx.nn.ConvTranspose3d`.

    !!! example

        ```python
        import equinox as eqx
        import jax
        import jax.numpy as jnp
        import lazymod as lm

        up = lm.nn.ConvTranspose3d(2, 2, stride=2)
        up = lm.init(up, 0, jax.ShapeDtypeStruct((4, 5, 5, 5), jnp.float32))
        assert type(up) is eqx.nn.ConvTranspose3d and up.weight.shape == (2, 4, 2, 2, 2)
        assert up(jnp.ones((4, 5, 5, 5))).shape == (2, 10, 10, 10)
        ```
    """

    _equinox: ClassVar[type[eqx.Module]] = eqx.nn.ConvTranspose3d
    _general: ClassVar[bool] = False

    def __init__(
        self,
        out_channels: int,
        kernel_size: int | Sequence[int],
        stride: int | Sequence[int] = (1, 1, 1),
        output_padding: int | Sequence[int] = (0, 0, 0),
        padding: str | int | Sequence[int] | Sequence[tuple[int, int]] = (0, 0, 0),
        dilation: int | Sequence[int] = (1, 1, 1),
        groups: int = 1,
        use_bias: bool = True,
        padding_mode: str = "ZEROS",
        dtype: Any = None,
    ):
        """**Arguments:** as `equinox.nn.ConvTranspose3d`, less `in_channels` and
        `key`; see [`lazymod.nn.ConvTranspose`][]. As in Equinox, `output_padding`
        comes before `padding`."""
        super().__init__(
            3,
            out_channels,
            kernel_size,
            stride,
            padding,
            output_padding,
            dilation,
            groups,
            use_bias,
            padding_mode,
            dtype,
        )
