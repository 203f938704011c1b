"""lazymod quickstart: declare a model without input sizes, initialize it from a shape,
train it with plain Equinox + JAX.

Run it with `make demo` (or `python examples/quickstart.py`).
"""

import argparse

import equinox as eqx
import jax
import jax.numpy as jnp

import lazymod as lm


class Linear(lm.Module):
    """A dense layer that learns its input size from the first input it sees."""

    features_out: int
    weight: jax.Array = lm.lazy()
    bias: jax.Array = lm.lazy()

    def __call__(self, x: jax.Array) -> jax.Array:
        if self.initializing():
            bound = 1 / x.shape[-1] ** 0.5
            self.weight = jax.random.uniform(
                lm.next_key(), (self.features_out, x.shape[-1]), minval=-bound, maxval=bound
            )
            self.bias = jnp.zeros(self.features_out)
        return self.weight @ x + self.bias


class MLP(lm.Module):
    layers: list[Linear]

    def __init__(self, widths: list[int]):
        self.layers = [Linear(width) for width in widths]

    def __call__(self, x: jax.Array) -> jax.Array:
        for layer in self.layers[:-1]:
            x = jax.nn.tanh(layer(x))
        return self.layers[-1](x)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--steps", type=int, default=200, help="training steps")
    parser.add_argument("--smoke", action="store_true", help="a few steps, for CI")
    args = parser.parse_args()
    steps = 5 if args.smoke else args.steps

    # No in_features anywhere: the shapes come from this spec, by tracing.
    spec = jax.ShapeDtypeStruct((1,), jnp.float32)
    print(lm.summary(MLP([32, 32, 1]), spec))  # what init will build; allocates nothing
    model = lm.init(MLP([32, 32, 1]), jax.random.key(0), spec)
    print(f"initialized: {lm.is_initialized(model)}")

    # From here on it is a plain Equinox model: fit y = sin(3x) on [-1, 1].
    xs = jnp.linspace(-1, 1, 256)[:, None]
    ys = jnp.sin(3 * xs)

    @eqx.filter_jit
    def step(model: MLP) -> tuple[MLP, jax.Array]:
        def loss_fn(model: MLP) -> jax.Array:
            return jnp.mean((jax.vmap(model)(xs) - ys) ** 2)

        loss, grads = eqx.filter_value_and_grad(loss_fn)(model)
        model = eqx.apply_updates(model, jax.tree.map(lambda g: -0.1 * g, grads))
        return model, loss

    for i in range(steps):
        model, loss = step(model)
        if i % max(1, steps // 5) == 0 or i == steps - 1:
            print(f"step {i:4d}  loss {float(loss):.5f}")


if __name__ == "__main__":
    main()
