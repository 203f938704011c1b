"""Train a lazy CNN with BatchNorm and Dropout on scikit-learn's 8x8 digits.

No download: the digits ship with scikit-learn. Nowhere below is an input size
written by hand; `lazymod.init_with_state` infers every one from a single-example
spec. Needs the examples extra: `pip install -e ".[examples]"`.

    python examples/digits_cnn.py [--epochs N] [--plot digits.png] [--smoke]
"""

import argparse
import time

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import optax
from sklearn.datasets import load_digits
from sklearn.model_selection import train_test_split
from tqdm import tqdm

import lazymod as lm


class CNN(lm.Module):
    layers: list

    def __init__(self, dropout: float = 0.25):
        self.layers = [
            lm.nn.Conv2d(32, kernel_size=3, padding=1),
            lm.nn.BatchNorm("batch", mode="batch"),
            lm.nn.Lambda(jax.nn.relu),
            lm.nn.Conv2d(64, kernel_size=3, padding=1),
            lm.nn.BatchNorm("batch", mode="batch"),
            lm.nn.Lambda(jax.nn.relu),
            lm.nn.MaxPool2d(kernel_size=2, stride=2),
            lm.nn.Lambda(jnp.ravel),
            lm.nn.Dropout(dropout),
            lm.nn.Linear(128),
            lm.nn.Lambda(jax.nn.relu),
            lm.nn.Dropout(dropout),
            lm.nn.Linear(10),
        ]

    def __call__(self, x, state, *, key=None):
        keys = iter(jax.random.split(key, 2) if key is not None else [None, None])
        for layer in self.layers:
            if isinstance(layer, (lm.nn.BatchNorm, eqx.nn.BatchNorm)):
                x, state = layer(x, state)
            elif isinstance(layer, eqx.nn.Dropout):
                x = layer(x, key=next(keys))
            else:
                x = layer(x)
        return x, state


def load(seed: int):
    digits = load_digits()
    images = (digits.images / 16.0).astype(np.float32)[:, None]  # (n, 1, 8, 8)
    return train_test_split(
        images, digits.target, test_size=0.2, random_state=seed, stratify=digits.target
    )


def loss_fn(model, state, x, y, key):
    keys = jax.random.split(key, x.shape[0])
    batched = jax.vmap(
        lambda x, key: model(x, state, key=key), axis_name="batch", out_axes=(0, None)
    )
    logits, state = batched(x, keys)
    loss = optax.softmax_cross_entropy_with_integer_labels(logits, y).mean()
    return loss, state


@eqx.filter_jit
def train_step(model, state, opt_state, x, y, key, optimizer):
    (loss, state), grads = eqx.filter_value_and_grad(loss_fn, has_aux=True)(model, state, x, y, key)
    updates, opt_state = optimizer.update(grads, opt_state, eqx.filter(model, eqx.is_array))
    return eqx.apply_updates(model, updates), state, opt_state, loss


@eqx.filter_jit
def accuracy(model, state, x, y):
    model = lm.nn.inference_mode(model)
    logits, _ = jax.vmap(model, axis_name="batch", in_axes=(0, None), out_axes=(0, None))(x, state)
    return jnp.mean(jnp.argmax(logits, axis=-1) == y)


def train(epochs: int = 25, batch_size: int = 64, seed: int = 0, progress: bool = True):
    """Trains the CNN; returns the model, its state and `(mean loss, test accuracy)` per
    epoch."""
    x_train, x_test, y_train, y_test = load(seed)
    spec = jax.ShapeDtypeStruct(x_train.shape[1:], jnp.float32)  # one example: (1, 8, 8)
    # The forward pass runs once, on the spec, so Dropout needs a key as in training.
    key, init_key, dropout_key = jax.random.split(jax.random.key(seed), 3)
    model, state = lm.init_with_state(CNN(), init_key, spec, key=dropout_key)
    count = sum(a.size for a in jax.tree.leaves(eqx.filter(model, eqx.is_array)))
    print(f"initialized {type(model).__name__}: {count:,} parameters")

    optimizer = optax.adam(1e-3)
    opt_state = optimizer.init(eqx.filter(model, eqx.is_array))
    rng = np.random.default_rng(seed)
    history = []
    for epoch in (bar := tqdm(range(epochs), desc="epochs", disable=not progress)):
        order = rng.permutation(len(x_train))
        losses = []
        for i in range(0, len(order) - batch_size + 1, batch_size):
            batch = order[i : i + batch_size]
            key, step_key = jax.random.split(key)
            model, state, opt_state, loss = train_step(
                model, state, opt_state, x_train[batch], y_train[batch], step_key, optimizer
            )
            losses.append(float(loss))
        test_accuracy = float(accuracy(model, state, x_test, y_test))
        history.append((float(np.mean(losses)), test_accuracy))
        bar.set_postfix(loss=f"{history[-1][0]:.3f}", test_accuracy=f"{test_accuracy:.3f}")
    return model, state, history


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=25)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--plot", default="digits_cnn.png", help="where to save the plot")
    parser.add_argument("--smoke", action="store_true", help="2 epochs, no plot (for CI)")
    options = parser.parse_args()
    epochs = 2 if options.smoke else options.epochs

    start = time.perf_counter()
    _, _, history = train(epochs, options.batch_size, options.seed)
    elapsed = time.perf_counter() - start
    print(f"test accuracy {history[-1][1]:.4f} after {epochs} epochs in {elapsed:.1f} s")
    if not options.smoke:
        save_plot(history, options.plot)
        print(f"saved {options.plot}")


def save_plot(history, path: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    losses, accuracies = zip(*history)
    figure, (left, right) = plt.subplots(1, 2, figsize=(9, 3.5))
    left.plot(range(1, len(losses) + 1), losses)
    left.set(xlabel="epoch", ylabel="training loss", title="loss")
    right.plot(range(1, len(accuracies) + 1), accuracies)
    right.set(xlabel="epoch", ylabel="test accuracy", title="accuracy")
    figure.tight_layout()
    figure.savefig(path, dpi=100)


if __name__ == "__main__":
    main()
