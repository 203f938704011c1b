"""The benchmark models, each written three ways: lazymod (no input sizes), Equinox
(every size by hand, as a user would write it) and Flax linen (where it is natural).

Every builder takes a key and a batch size and returns the initialized parameters (and
state) as a pytree of arrays, or of `jax.ShapeDtypeStruct`s for `init_shapes`; `block`
waits for them."""

from collections.abc import Callable
from typing import Any

import equinox as eqx
import jax
import jax.numpy as jnp

import lazymod as lm


# --- the models' sizes -----------------------------------------------------------------

MLP_IN, MLP_WIDTH, MLP_DEPTH, MLP_OUT = 784, 1024, 7, 10  # 7.1 M parameters
NARROW_WIDTH, DEEP_DEPTH = 32, 1000  # the deep, narrow MLPs: depth is a parameter
CNN_CHANNELS = (32, 64, 128, 256, 256)  # 5 blocks on 3x64x64
CNN_INPUT = (3, 64, 64)
TRANSFORMER = dict(blocks=12, width=512, heads=8, hidden=2048, seq_len=128)  # 38 M
BIG_TRANSFORMER = dict(blocks=20, width=2048, heads=16, hidden=8192, seq_len=128)  # 1.0 B


def block(tree: Any) -> Any:
    return jax.block_until_ready(eqx.filter(tree, eqx.is_array))


def _parameters(tree: Any) -> list:
    """The arrays of `tree`, or their shapes where it holds `jax.ShapeDtypeStruct`s."""
    return [
        leaf
        for leaf in jax.tree.leaves(tree)
        if eqx.is_array(leaf) or isinstance(leaf, jax.ShapeDtypeStruct)
    ]


def num_parameters(tree: Any) -> int:
    return sum(a.size for a in _parameters(tree))


def parameter_bytes(tree: Any) -> int:
    """The parameters' bytes, allocated or (for shapes) not."""
    return sum(a.size * a.dtype.itemsize for a in _parameters(tree))


def batched(module: Any, x: Any, *rest: Any) -> Any:
    """Calls an unbatched Equinox-style module on a batch."""
    return jax.vmap(module, in_axes=(0, *([None] * len(rest))))(x, *rest)


# --- MLPs ------------------------------------------------------------------------------


def lazymod_mlp(key, batch: int, depth=None, width=None, *, size=None):
    in_size, out = (MLP_IN, MLP_OUT) if size is None else (size, size)
    depth, width = depth or MLP_DEPTH, width or MLP_WIDTH
    spec = jax.ShapeDtypeStruct((batch, in_size), jnp.float32)
    return lm.init(lm.nn.MLP(out, width, depth), key, spec, method=batched)


def equinox_mlp(key, batch: int, depth=None, width=None, *, size=None):
    in_size, out = (MLP_IN, MLP_OUT) if size is None else (size, size)
    depth, width = depth or MLP_DEPTH, width or MLP_WIDTH
    return eqx.nn.MLP(in_size, out, width, depth, key=key)


def lazymod_deep_mlp(key, batch: int, depth=DEEP_DEPTH):
    return lazymod_mlp(key, batch, depth, NARROW_WIDTH, size=NARROW_WIDTH)


def equinox_deep_mlp(key, batch: int, depth=DEEP_DEPTH):
    return equinox_mlp(key, batch, depth, NARROW_WIDTH, size=NARROW_WIDTH)


def flax_mlp(depth=None, width=None, out=None):
    import flax.linen as nn

    depth, width, out = depth or MLP_DEPTH, width or MLP_WIDTH, out or MLP_OUT

    class MLP(nn.Module):
        @nn.compact
        def __call__(self, x):
            for _ in range(depth):
                x = jax.nn.relu(nn.Dense(width)(x))
            return nn.Dense(out)(x)

    return MLP()


# --- a list of layers, as a user writes it --------------------------------------------


def user_list_forward(self, x):
    for layer in self.layers[:-1]:
        x = jax.nn.relu(layer(x))
    return self.layers[-1](x)


class LazyUserList(lm.Module):
    """`depth` lazy `Linear`s of width 32 in a Python list, relu between them."""

    layers: list

    def __init__(self, depth: int):
        self.layers = [lm.nn.Linear(NARROW_WIDTH) for _ in range(depth)]

    __call__ = user_list_forward


class EquinoxUserList(eqx.Module):
    layers: list

    def __init__(self, depth: int, key):
        keys = jax.random.split(key, depth)
        self.layers = [eqx.nn.Linear(NARROW_WIDTH, NARROW_WIDTH, key=k) for k in keys]

    __call__ = user_list_forward


def lazymod_user_list(key, batch: int, depth=DEEP_DEPTH):
    """On one example, `float32[32]`, as the user calls the module (no batch)."""
    spec = jax.ShapeDtypeStruct((NARROW_WIDTH,), jnp.float32)
    return lm.init(LazyUserList(depth), key, spec)


def equinox_user_list(key, batch: int, depth=DEEP_DEPTH):
    return EquinoxUserList(depth, key)


# --- CNN with BatchNorm ----------------------------------------------------------------


def cnn_forward(self, x, state):
    for layer in self.layers:
        if isinstance(layer, eqx.nn.StatefulLayer) and layer.is_stateful():
            x, state = layer(x, state)
        else:
            x = layer(x)
    return x, state


class LazyCNN(lm.Module):
    layers: list

    def __init__(self):
        self.layers = []
        for channels in CNN_CHANNELS:
            self.layers += [
                lm.nn.Conv2d(channels, 3, padding=1),
                lm.nn.BatchNorm("batch", mode="batch"),
                eqx.nn.Lambda(jax.nn.relu),
                eqx.nn.MaxPool2d(2, 2),
            ]
        self.layers += [eqx.nn.Lambda(jnp.ravel), lm.nn.Linear(10)]

    __call__ = cnn_forward


class EquinoxCNN(eqx.Module):
    layers: list

    def __init__(self, key):
        keys = jax.random.split(key, len(CNN_CHANNELS) + 1)
        self.layers = []
        channels_in, size = CNN_INPUT[0], CNN_INPUT[1]
        for channels, k in zip(CNN_CHANNELS, keys):
            self.layers += [
                eqx.nn.Conv2d(channels_in, channels, 3, padding=1, key=k),
                eqx.nn.BatchNorm(channels, "batch", mode="batch"),
                eqx.nn.Lambda(jax.nn.relu),
                eqx.nn.MaxPool2d(2, 2),
            ]
            channels_in, size = channels, size // 2
        self.layers += [
            eqx.nn.Lambda(jnp.ravel),
            eqx.nn.Linear(channels_in * size * size, 10, key=keys[-1]),
        ]

    __call__ = cnn_forward


def cnn_batched(model, x, state):
    """The CNN on a batch, BatchNorm's statistics over the axis "batch". A function
    defined once: a later init with the same method reuses the first one's trace (a
    function made anew for each init is another method, traced again)."""
    return jax.vmap(model, (0, None), (0, None), axis_name="batch")(x, state)


def lazymod_cnn(key, batch: int):
    spec = jax.ShapeDtypeStruct((batch, *CNN_INPUT), jnp.float32)
    return lm.init_with_state(LazyCNN(), key, spec, method=cnn_batched)


def equinox_cnn(key, batch: int):
    return eqx.nn.make_with_state(EquinoxCNN)(key)


def flax_cnn():
    import flax.linen as nn

    class CNN(nn.Module):
        @nn.compact
        def __call__(self, x):  # NHWC
            for channels in CNN_CHANNELS:
                x = nn.Conv(channels, (3, 3), padding=1)(x)
                x = nn.BatchNorm(use_running_average=False)(x)
                x = nn.max_pool(jax.nn.relu(x), (2, 2), (2, 2))
            return nn.Dense(10)(x.reshape(x.shape[0], -1))

    return CNN()


# --- Transformer encoder ---------------------------------------------------------------


def block_forward(self, x):
    h = jax.vmap(self.norm1)(x)
    x = x + self.attention(h, h, h)
    h = jax.vmap(self.up)(jax.vmap(self.norm2)(x))
    return x + jax.vmap(self.down)(jax.nn.gelu(h))


class LazyBlock(lm.Module):
    norm1: Any
    attention: Any
    norm2: Any
    up: Any
    down: Any

    def __init__(self, sizes: dict | None = None):
        sizes = sizes or TRANSFORMER
        self.norm1, self.norm2 = lm.nn.LayerNorm(), lm.nn.LayerNorm()
        self.attention = lm.nn.MultiheadAttention(sizes["heads"])
        self.up = lm.nn.Linear(sizes["hidden"])
        self.down = lm.nn.Linear(sizes["width"])

    __call__ = block_forward


class EquinoxBlock(eqx.Module):
    norm1: Any
    attention: Any
    norm2: Any
    up: Any
    down: Any

    def __init__(self, key, sizes: dict | None = None):
        sizes = sizes or TRANSFORMER
        k1, k2, k3 = jax.random.split(key, 3)
        width, hidden = sizes["width"], sizes["hidden"]
        self.norm1, self.norm2 = eqx.nn.LayerNorm(width), eqx.nn.LayerNorm(width)
        self.attention = eqx.nn.MultiheadAttention(sizes["heads"], width, key=k1)
        self.up = eqx.nn.Linear(width, hidden, key=k2)
        self.down = eqx.nn.Linear(hidden, width, key=k3)

    __call__ = block_forward


def transformer_forward(blocks, x):
    for b in blocks:
        x = jax.vmap(b)(x)
    return x


def transformer_spec(batch: int, sizes: dict) -> jax.ShapeDtypeStruct:
    return jax.ShapeDtypeStruct((batch, sizes["seq_len"], sizes["width"]), jnp.float32)


def lazymod_transformer(key, batch: int, sizes: dict | None = None):
    sizes = sizes or TRANSFORMER
    blocks = [LazyBlock(sizes) for _ in range(sizes["blocks"])]
    return lm.init(blocks, key, transformer_spec(batch, sizes), method=transformer_forward)


def equinox_transformer(key, batch: int, sizes: dict | None = None):
    sizes = sizes or TRANSFORMER
    return [EquinoxBlock(k, sizes) for k in jax.random.split(key, sizes["blocks"])]


def lazymod_transformer_shapes(key, batch: int):
    """`lm.init_shapes` of the 1.0 B parameter Transformer: no key, nothing allocated."""
    sizes = BIG_TRANSFORMER
    blocks = [LazyBlock(sizes) for _ in range(sizes["blocks"])]
    return lm.init_shapes(blocks, transformer_spec(batch, sizes), method=transformer_forward)


def equinox_transformer_shapes(key, batch: int):
    """`eqx.filter_eval_shape` of the hand-written constructor of the same model."""
    return eqx.filter_eval_shape(equinox_transformer, key, batch, BIG_TRANSFORMER)


def flax_transformer():
    import flax.linen as nn

    class Encoder(nn.Module):
        @nn.compact
        def __call__(self, x):
            for _ in range(TRANSFORMER["blocks"]):
                h = nn.LayerNorm()(x)
                x = x + nn.MultiHeadDotProductAttention(TRANSFORMER["heads"])(h, h)
                h = nn.Dense(TRANSFORMER["hidden"])(nn.LayerNorm()(x))
                x = x + nn.Dense(TRANSFORMER["width"])(jax.nn.gelu(h))
            return x

    return Encoder()


# --- the registry ----------------------------------------------------------------------

FLAX_INPUTS = {
    "mlp": lambda batch: (batch, MLP_IN),
    "deep_mlp": lambda batch: (batch, NARROW_WIDTH),
    "cnn": lambda batch: (batch, CNN_INPUT[1], CNN_INPUT[2], CNN_INPUT[0]),
    "transformer": lambda batch: (batch, TRANSFORMER["seq_len"], TRANSFORMER["width"]),
}


BUILDERS = {  # model: (lazymod, Equinox)
    "mlp": (lazymod_mlp, equinox_mlp),
    "cnn": (lazymod_cnn, equinox_cnn),
    "transformer": (lazymod_transformer, equinox_transformer),
    "deep_mlp": (lazymod_deep_mlp, equinox_deep_mlp),
    "user_list": (lazymod_user_list, equinox_user_list),
    "init_shapes": (lazymod_transformer_shapes, equinox_transformer_shapes),
}


def builder(framework: str, model: str, depth: int | None = None) -> Callable[[Any, int], Any]:
    """`build(key, batch)` for one framework and model; `depth` for the deep ones
    (`deep_mlp`, `user_list`). Flax frameworks: `flax_lazy_init` (ShapeDtypeStruct),
    `flax_jit` (`jax.jit(model.init)`) and `flax_eager` (`model.init` on a real zero
    batch, Flax's default)."""
    if framework in ("lazymod", "equinox"):
        build = BUILDERS[model][framework == "equinox"]
        if depth is None:
            return build
        return lambda key, batch: build(key, batch, depth)
    flax_model = {
        "mlp": lambda: flax_mlp(),
        "deep_mlp": lambda: flax_mlp(depth or DEEP_DEPTH, NARROW_WIDTH, NARROW_WIDTH),
        "cnn": flax_cnn,
        "transformer": flax_transformer,
    }[model]()
    shape = FLAX_INPUTS[model]
    if framework == "flax_lazy_init":
        return lambda key, batch: flax_model.lazy_init(
            key, jax.ShapeDtypeStruct(shape(batch), jnp.float32)
        )
    if framework == "flax_jit":
        init = jax.jit(flax_model.init)
        return lambda key, batch: init(key, jnp.zeros(shape(batch)))
    if framework == "flax_eager":
        return lambda key, batch: flax_model.init(key, jnp.zeros(shape(batch)))
    raise ValueError(f"unknown framework {framework!r}")
