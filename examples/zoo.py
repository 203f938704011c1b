"""A model zoo: five small models written with lazymod, none given an input size.

Each is declared with `lazymod.nn` layers, initialized from the spec of one unbatched
input, summarized, and trained with `eqx.filter_jit` and optax like any Equinox model.

- `resnet`: residual blocks of Conv2d + BatchNorm (state through `lm.init_with_state`);
- `vit`: a Vision Transformer with attention and MLP dropout (keys drawn at init);
- `gpt`: a causal decoder whose output logits are tied to the token embedding;
- `lstm`: a language model scanning an `LSTMCell` with `jax.lax.scan`;
- `unet`: a UNet, ConvTranspose2d up path with skips concatenated on the channel axis.

    python examples/zoo.py [--models resnet,vit,...] [--steps N] [--smoke]

tests/test_zoo.py checks init, re-init, summary, shapes, checkpoints, gradients and
training for every model here.
"""

import argparse
import dataclasses
import time
from collections.abc import Callable
from typing import Any

import equinox as eqx
import jax
import jax.numpy as jnp
import optax
from jaxtyping import Array, Float, Int, PRNGKeyArray

import lazymod as lm


VOCAB = 50  # the language models' vocabulary
SEQ_LEN = 16  # their sequence length
CLASSES = 10  # the image classifiers' classes
IMAGE = jax.ShapeDtypeStruct((3, 16, 16), jnp.float32)  # one image, channels first
TOKENS = jax.ShapeDtypeStruct((SEQ_LEN,), jnp.int32)  # one sequence of token ids


def _split(key: PRNGKeyArray | None, num: int) -> list[PRNGKeyArray | None]:
    """`num` keys from `key`, or `num` times `None` (inference, or init drawing its own)."""
    return [None] * num if key is None else list(jax.random.split(key, num))


# --- 1. ResNet: BatchNorm state ------------------------------------------------------


class ResidualBlock(lm.Module):
    """conv-norm-relu-conv-norm, plus the input (through a strided 1x1 projection when
    the block changes the width or the resolution), then relu."""

    conv1: lm.nn.Conv2d
    norm1: lm.nn.BatchNorm
    conv2: lm.nn.Conv2d
    norm2: lm.nn.BatchNorm
    project: lm.nn.Conv2d | None
    project_norm: lm.nn.BatchNorm | None

    def __init__(self, width: int, stride: int = 1, project: bool = False):
        # No bias before a BatchNorm: it would be subtracted away with the batch mean.
        self.conv1 = lm.nn.Conv2d(width, 3, stride=stride, padding=1, use_bias=False)
        self.norm1 = lm.nn.BatchNorm(axis_name="batch", mode="batch")
        self.conv2 = lm.nn.Conv2d(width, 3, padding=1, use_bias=False)
        self.norm2 = lm.nn.BatchNorm(axis_name="batch", mode="batch")
        if project:
            self.project = lm.nn.Conv2d(width, 1, stride=stride, use_bias=False)
            self.project_norm = lm.nn.BatchNorm(axis_name="batch", mode="batch")
        else:
            self.project = self.project_norm = None

    def __call__(self, x: Float[Array, "c h w"], state: eqx.nn.State):
        h, state = self.norm1(self.conv1(x), state)
        h, state = self.norm2(self.conv2(jax.nn.relu(h)), state)
        if self.project is not None:
            x, state = self.project_norm(self.project(x), state)
        return jax.nn.relu(h + x), state


class ResNet(lm.Module):
    stem: lm.nn.Conv2d
    stem_norm: lm.nn.BatchNorm
    blocks: list[ResidualBlock]
    head: lm.nn.Linear

    def __init__(self, classes: int = CLASSES, width: int = 8):
        self.stem = lm.nn.Conv2d(width, 3, padding=1, use_bias=False)
        self.stem_norm = lm.nn.BatchNorm(axis_name="batch", mode="batch")
        self.blocks = [
            ResidualBlock(width),  # identity skip
            ResidualBlock(2 * width, stride=2, project=True),  # 16x16 -> 8x8, 8 -> 16 wide
            ResidualBlock(2 * width),
        ]
        self.head = lm.nn.Linear(classes)

    def __call__(self, x: Float[Array, "c h w"], state: eqx.nn.State):
        x, state = self.stem_norm(self.stem(x), state)
        x = jax.nn.relu(x)
        for block in self.blocks:
            x, state = block(x, state)
        return self.head(x.mean(axis=(1, 2))), state  # global average pool


def init_resnet(key: Any) -> tuple[ResNet, eqx.nn.State]:
    return lm.init_with_state(ResNet(), key, IMAGE)


# --- 2. ViT: dropout keys at init ----------------------------------------------------


class EncoderBlock(lm.Module):
    """Pre-norm Transformer encoder block, with dropout in the attention and the MLP."""

    attention_norm: lm.nn.LayerNorm
    attention: lm.nn.MultiheadAttention
    mlp_norm: lm.nn.LayerNorm
    up: lm.nn.Linear
    down: lm.nn.Linear
    dropout: lm.nn.Dropout

    def __init__(self, width: int, num_heads: int, dropout: float):
        self.attention_norm = lm.nn.LayerNorm()
        self.attention = lm.nn.MultiheadAttention(num_heads, dropout_p=dropout)
        self.mlp_norm = lm.nn.LayerNorm()
        self.up, self.down = lm.nn.Linear(2 * width), lm.nn.Linear(width)
        self.dropout = lm.nn.Dropout(dropout)

    def __call__(self, x: Float[Array, "seq width"], *, key: PRNGKeyArray | None = None):
        attention_key, mlp_key = _split(key, 2)
        h = jax.vmap(self.attention_norm)(x)
        x = x + self.attention(h, h, h, key=attention_key)
        h = jax.nn.gelu(jax.vmap(self.up)(jax.vmap(self.mlp_norm)(x)))  # (seq, 2 width)
        return x + jax.vmap(self.down)(self.dropout(h, key=mlp_key))


class ViT(lm.Module):
    embed: lm.nn.Conv2d
    cls_token: Float[Array, " width"] | lm.Initializer
    positions: Float[Array, "tokens width"] = lm.lazy()
    blocks: list[EncoderBlock]
    norm: lm.nn.LayerNorm
    head: lm.nn.Linear

    def __init__(self, classes: int = CLASSES, width: int = 32, depth: int = 2, patch: int = 4):
        self.embed = lm.nn.Conv2d(width, kernel_size=patch, stride=patch)  # one per patch
        self.cls_token = lm.Initializer(lambda key: 0.02 * jax.random.normal(key, (width,)))
        self.blocks = [EncoderBlock(width, num_heads=4, dropout=0.1) for _ in range(depth)]
        self.norm = lm.nn.LayerNorm()
        self.head = lm.nn.Linear(classes)

    def __call__(self, x: Float[Array, "c h w"], *, key: PRNGKeyArray | None = None):
        patches = self.embed(x)  # (width, h / patch, w / patch)
        tokens = patches.reshape(patches.shape[0], -1).T  # (patches, width)
        tokens = jnp.concatenate([self.cls_token[None], tokens])
        if self.initializing():  # the table's length comes from the image size
            self.positions = 0.02 * jax.random.normal(lm.next_key(), tokens.shape)
        tokens = tokens + self.positions
        for block, block_key in zip(self.blocks, _split(key, len(self.blocks))):
            tokens = block(tokens, key=block_key)
        return self.head(self.norm(tokens[0]))


def init_vit(key: Any) -> ViT:
    return lm.init(ViT(), key, IMAGE)  # no key=: dropout draws from the "dropout" stream


# --- 3. GPT: embedding and tied output weights ---------------------------------------


class DecoderBlock(lm.Module):
    attention_norm: lm.nn.LayerNorm
    attention: lm.nn.MultiheadAttention
    mlp_norm: lm.nn.LayerNorm
    up: lm.nn.Linear
    down: lm.nn.Linear

    def __init__(self, width: int, num_heads: int):
        self.attention_norm = lm.nn.LayerNorm()
        self.attention = lm.nn.MultiheadAttention(num_heads)
        self.mlp_norm = lm.nn.LayerNorm()
        self.up, self.down = lm.nn.Linear(4 * width), lm.nn.Linear(width)

    def __call__(self, x: Float[Array, "seq width"]):
        causal = jnp.tril(jnp.ones((x.shape[0], x.shape[0]), dtype=bool))
        h = jax.vmap(self.attention_norm)(x)
        x = x + self.attention(h, h, h, mask=causal)
        h = jax.vmap(self.up)(jax.vmap(self.mlp_norm)(x))
        return x + jax.vmap(self.down)(jax.nn.gelu(h))


class GPT(lm.Module):
    embedding: lm.nn.Embedding
    positions: Float[Array, "seq width"] = lm.lazy()
    blocks: list[DecoderBlock]
    norm: lm.nn.LayerNorm

    def __init__(self, vocab: int = VOCAB, width: int = 32, depth: int = 2):
        # GPT-2's small initial table (Equinox draws N(0, 1)); it is the output layer too.
        table = lm.Initializer(lambda key: 0.02 * jax.random.normal(key, (vocab, width)))
        self.embedding = lm.nn.Embedding(weight=table)
        self.blocks = [DecoderBlock(width, num_heads=4) for _ in range(depth)]
        self.norm = lm.nn.LayerNorm()

    def __call__(self, ids: Int[Array, " seq"]) -> Float[Array, "seq vocab"]:
        x = jax.vmap(self.embedding)(ids)
        if self.initializing():
            self.positions = 0.02 * jax.random.normal(lm.next_key(), x.shape)
        x = x + self.positions
        for block in self.blocks:
            x = block(x)
        return jax.vmap(self.norm)(x) @ self.embedding.weight.T  # tied to the embedding


def init_gpt(key: Any) -> GPT:
    return lm.init(GPT(), key, TOKENS)


# --- 4. LSTM language model: a cell under jax.lax.scan -------------------------------


class LSTMLanguageModel(lm.Module):
    hidden_size: int = eqx.field(static=True)
    embedding: lm.nn.Embedding
    cell: lm.nn.LSTMCell
    head: lm.nn.Linear

    def __init__(self, vocab: int = VOCAB, width: int = 16, hidden_size: int = 32):
        self.hidden_size = hidden_size
        self.embedding = lm.nn.Embedding(vocab, width)
        self.cell = lm.nn.LSTMCell(hidden_size)
        self.head = lm.nn.Linear(vocab)

    def __call__(self, ids: Int[Array, " seq"]) -> Float[Array, "seq vocab"]:
        def step(carry, x):
            carry = self.cell(x, carry)
            return carry, carry[0]

        zeros = jnp.zeros(self.hidden_size)
        _, hidden = jax.lax.scan(step, (zeros, zeros), jax.vmap(self.embedding)(ids))
        return jax.vmap(self.head)(hidden)


def init_lstm(key: Any) -> LSTMLanguageModel:
    return lm.init(LSTMLanguageModel(), key, TOKENS)


# --- 5. UNet: ConvTranspose2d and concatenated skips ---------------------------------


class ConvPair(lm.Module):
    conv1: lm.nn.Conv2d
    conv2: lm.nn.Conv2d

    def __init__(self, width: int):
        self.conv1 = lm.nn.Conv2d(width, 3, padding=1)
        self.conv2 = lm.nn.Conv2d(width, 3, padding=1)

    def __call__(self, x: Float[Array, "c h w"]) -> Float[Array, "width h w"]:
        return jax.nn.relu(self.conv2(jax.nn.relu(self.conv1(x))))


class UNet(lm.Module):
    encode1: ConvPair
    down1: lm.nn.Conv2d
    encode2: ConvPair
    down2: lm.nn.Conv2d
    bottleneck: ConvPair
    up2: lm.nn.ConvTranspose2d
    decode2: ConvPair
    up1: lm.nn.ConvTranspose2d
    decode1: ConvPair
    out: lm.nn.Conv2d

    def __init__(self, out_channels: int = 1, width: int = 8):
        self.encode1 = ConvPair(width)
        self.down1 = lm.nn.Conv2d(2 * width, 3, stride=2, padding=1)
        self.encode2 = ConvPair(2 * width)
        self.down2 = lm.nn.Conv2d(4 * width, 3, stride=2, padding=1)
        self.bottleneck = ConvPair(4 * width)
        self.up2 = lm.nn.ConvTranspose2d(2 * width, kernel_size=2, stride=2)
        self.decode2 = ConvPair(2 * width)
        self.up1 = lm.nn.ConvTranspose2d(width, kernel_size=2, stride=2)
        self.decode1 = ConvPair(width)
        self.out = lm.nn.Conv2d(out_channels, 1)

    def __call__(self, x: Float[Array, "c h w"]) -> Float[Array, "out h w"]:
        skip1 = self.encode1(x)  # (width, H, W)
        skip2 = self.encode2(jax.nn.relu(self.down1(skip1)))  # (2 width, H/2, W/2)
        x = self.bottleneck(jax.nn.relu(self.down2(skip2)))  # (4 width, H/4, W/4)
        # Up, then the skip concatenated on the channel axis (axis 0, unbatched):
        x = self.decode2(jnp.concatenate([self.up2(x), skip2], axis=0))  # (2 width, H/2, W/2)
        x = self.decode1(jnp.concatenate([self.up1(x), skip1], axis=0))  # (width, H, W)
        return self.out(x)


def init_unet(key: Any) -> UNet:
    return lm.init(UNet(), key, IMAGE)


# --- Specs, losses and one table of the five -----------------------------------------


def cross_entropy(logits: Array, labels: Array) -> Array:
    return optax.softmax_cross_entropy_with_integer_labels(logits, labels).mean()


# The forward passes on a batch: `(model, state, x, key) -> (outputs, state)`, where
# `state` is `None` for a stateless model and `key` feeds dropout (`None`: no dropout).


def resnet_forward(model: ResNet, state: eqx.nn.State, x: Array, key: Any = None):
    # BatchNorm normalizes over the batch axis named "batch" (in training mode, as
    # here); its running statistics are in the state, shared by the whole batch.
    batched = jax.vmap(model, axis_name="batch", in_axes=(0, None), out_axes=(0, None))
    return batched(x, state)


def vit_forward(model: ViT, state: None, x: Array, key: PRNGKeyArray | None = None):
    if key is None:  # evaluation: no dropout
        return jax.vmap(eqx.nn.inference_mode(model))(x), state
    keys = jax.random.split(key, x.shape[0])
    return jax.vmap(lambda x, k: model(x, key=k))(x, keys), state


def plain_forward(model: Any, state: None, x: Array, key: Any = None):
    return jax.vmap(model)(x), state


def image_batch(key: PRNGKeyArray, size: int) -> tuple[Array, Array]:
    images = jax.random.normal(key, (size, *IMAGE.shape))
    return images, jnp.arange(size) % CLASSES


def token_batch(key: PRNGKeyArray, size: int) -> tuple[Array, Array]:
    # Sequences that count up mod VOCAB from a random start: learnable next tokens.
    starts = jax.random.randint(key, (size, 1), 0, VOCAB)
    ids = (starts + jnp.arange(SEQ_LEN + 1)) % VOCAB
    return ids[:, :-1], ids[:, 1:]


def denoising_batch(key: PRNGKeyArray, size: int) -> tuple[Array, Array]:
    clean_key, noise_key = jax.random.split(key)
    clean = jax.random.normal(clean_key, (size, 1, *IMAGE.shape[1:]))
    noisy = jnp.concatenate([clean, clean, clean], axis=1)
    noisy = noisy + 0.5 * jax.random.normal(noise_key, noisy.shape)
    return noisy, clean


def mse(prediction: Array, target: Array) -> Array:
    return jnp.mean((prediction - target) ** 2)


@dataclasses.dataclass(frozen=True)
class Entry:
    """One model of the zoo, with what it takes to build, feed and train it."""

    name: str
    make: Callable[[], Any]  # a fresh lazy model
    spec: jax.ShapeDtypeStruct  # one unbatched input
    init: Callable[[Any], Any]  # key -> model, or (model, state) when stateful
    forward: Callable[..., tuple[Array, Any]]  # (model, state, x, key) -> (outputs, state)
    batch: Callable[[PRNGKeyArray, int], tuple[Array, Array]]  # (key, size) -> (x, y)
    objective: Callable[[Array, Array], Array]  # (outputs, targets) -> scalar loss
    stateful: bool = False

    def init_pair(self, key: Any) -> tuple[Any, eqx.nn.State | None]:
        """`(model, state)` for every entry; `state` is `None` for a stateless model."""
        return self.init(key) if self.stateful else (self.init(key), None)

    def summary(self, model: Any = None) -> str:
        """What init builds for this entry (of `model`, by default a fresh one)."""
        model = self.make() if model is None else model
        return lm.summary(model, self.spec, with_state=self.stateful)


ZOO: dict[str, Entry] = {
    "resnet": Entry(
        "resnet", ResNet, IMAGE, init_resnet, resnet_forward, image_batch, cross_entropy, True
    ),  # True: stateful, initialized with lm.init_with_state
    "vit": Entry("vit", ViT, IMAGE, init_vit, vit_forward, image_batch, cross_entropy),
    "gpt": Entry("gpt", GPT, TOKENS, init_gpt, plain_forward, token_batch, cross_entropy),
    "lstm": Entry(
        "lstm", LSTMLanguageModel, TOKENS, init_lstm, plain_forward, token_batch, cross_entropy
    ),
    "unet": Entry("unet", UNet, IMAGE, init_unet, plain_forward, denoising_batch, mse),
}


def loss_fn(
    model: Any, state: Any, x: Array, y: Array, key: Any, *, entry: Entry
) -> tuple[Array, Any]:
    """The entry's objective on a batch; returns `(loss, new_state)`."""
    outputs, state = entry.forward(model, state, x, key)
    return entry.objective(outputs, y), state


def make_step(entry: Entry, optimizer: optax.GradientTransformation):
    """A jitted training step: `(model, state, opt_state, x, y, key) -> (model, state,
    opt_state, loss)`."""

    @eqx.filter_jit
    def step(model, state, opt_state, x, y, key):
        grad_fn = eqx.filter_value_and_grad(loss_fn, has_aux=True)
        (loss, state), grads = grad_fn(model, state, x, y, key, entry=entry)
        updates, opt_state = optimizer.update(grads, opt_state, eqx.filter(model, eqx.is_array))
        return eqx.apply_updates(model, updates), state, opt_state, loss

    return step


def count_parameters(model: Any) -> int:
    return sum(a.size for a in jax.tree.leaves(eqx.filter(model, eqx.is_array)))


def train(entry: Entry, steps: int, batch_size: int = 8, seed: int = 0, log=print):
    """Initialize `entry`'s model and train it `steps` steps on one fixed batch."""
    start = time.perf_counter()
    model, state = entry.init_pair(jax.random.key(seed))
    init_seconds = time.perf_counter() - start
    x, y = entry.batch(jax.random.key(seed + 1), batch_size)
    optimizer = optax.adam(1e-2)
    opt_state = optimizer.init(eqx.filter(model, eqx.is_array))
    step = make_step(entry, optimizer)
    losses = []
    for key in jax.random.split(jax.random.key(seed + 2), steps):
        model, state, opt_state, loss = step(model, state, opt_state, x, y, key)
        losses.append(float(loss))
    progress = f"-> {losses[-1]:.3f} after {steps} steps" if steps > 1 else "(1 step)"
    log(
        f"{entry.name:7s} {count_parameters(model):7,d} parameters  init {init_seconds:.2f} s  "
        f"loss {losses[0]:.3f} {progress}"
    )
    return model, state, losses


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--models", default=",".join(ZOO), help=f"comma-separated, of {', '.join(ZOO)}"
    )
    parser.add_argument("--steps", type=int, default=50, help="training steps per model")
    parser.add_argument("--summary", action="store_true", help="print each model's summary")
    parser.add_argument("--smoke", action="store_true", help="one step per model (for CI)")
    options = parser.parse_args(argv)
    names = options.models.split(",")
    unknown = [name for name in names if name not in ZOO]
    if unknown:
        parser.error(f"unknown models {unknown}; choose from {list(ZOO)}")
    for name in names:
        entry = ZOO[name]
        table = entry.summary()  # what init will build; allocates nothing
        if options.summary:
            print(table)
        train(entry, 1 if options.smoke else options.steps)


if __name__ == "__main__":
    main()
