"""Stateful layers: lazy BatchNorm against eqx.nn.BatchNorm, lm.init_with_state, and a
CNN with lazy BatchNorm initialized from one example's spec and trained under
eqx.filter_jit with jax.vmap(..., axis_name="batch")."""

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import lazymod as lm

from .helpers import spec, tree_bit_equal


def apply(layer, x, state):
    return layer(x, state)


def arrays_of(tree):
    return jax.tree.map(lambda a: (a.shape, a.dtype), eqx.filter(tree, eqx.is_array))


STATIC = ("input_size", "axis_name", "eps", "channelwise_affine", "momentum", "mode")


# Equinox warns that "legacy" is the default mode; lazymod passes the warning on.
@pytest.mark.filterwarnings("ignore:When `eqx.nn.BatchNorm")
@pytest.mark.parametrize("shape", [(3,), (3, 5), (3, 4, 4)])
@pytest.mark.parametrize("mode", ["ema", "batch", "legacy"])
@pytest.mark.parametrize("affine", [True, False])
def test_batch_norm_matches_equinox(shape, mode, affine):
    ours, state = lm.init_with_state(
        lm.nn.BatchNorm("batch", channelwise_affine=affine, mode=mode),
        0,
        spec(*shape),
        method=apply,
    )
    theirs, their_state = eqx.nn.make_with_state(eqx.nn.BatchNorm)(
        shape[0], "batch", channelwise_affine=affine, mode=mode
    )
    assert type(ours) is eqx.nn.BatchNorm
    assert [getattr(ours, f) for f in STATIC] == [getattr(theirs, f) for f in STATIC]
    # Equinox's defaults are deterministic (ones, zeros): the values match exactly.
    assert tree_bit_equal(eqx.filter(ours, eqx.is_array), eqx.filter(theirs, eqx.is_array))
    assert tree_bit_equal(state, their_state)
    x = jax.random.normal(jax.random.key(1), (6, *shape))
    batched = jax.vmap(apply, axis_name="batch", in_axes=(None, 0, None), out_axes=(0, None))
    out, new_state = batched(ours, x, state)
    their_out, their_new_state = batched(theirs, x, their_state)
    np.testing.assert_array_equal(out, their_out)
    assert tree_bit_equal(new_state, their_new_state)


@pytest.mark.parametrize("dtype", [jnp.float16, jnp.bfloat16])
def test_batch_norm_dtype(dtype):
    ours, state = lm.init_with_state(
        lm.nn.BatchNorm("batch", dtype=dtype, mode="batch"), 0, spec(3, dtype=dtype), method=apply
    )
    theirs, their_state = eqx.nn.make_with_state(eqx.nn.BatchNorm)(
        3, "batch", dtype=dtype, mode="batch"
    )
    assert arrays_of(ours) == arrays_of(theirs)
    assert jax.tree.leaves(arrays_of(state)) == jax.tree.leaves(arrays_of(their_state))


def test_batch_norm_of_a_scalar_names_the_path():
    model = lm.nn.Sequential([lm.nn.Lambda(jnp.sum), lm.nn.BatchNorm("batch", mode="batch")])
    with pytest.raises(lm.InitError, match=r"Sequential\.layers\[1\] \(BatchNorm\).*shape \(\)"):
        lm.init_with_state(model, 0, spec(3))


class CNN(lm.Module):
    layers: list

    def __init__(self):
        self.layers = [
            lm.nn.Conv2d(8, kernel_size=3, padding=1),
            lm.nn.BatchNorm("batch", mode="ema"),
            lm.nn.Lambda(jax.nn.relu),
            lm.nn.Conv2d(8, kernel_size=3, stride=2),
            lm.nn.BatchNorm("batch", mode="ema"),
            lm.nn.Lambda(jax.nn.relu),
            lm.nn.Lambda(jnp.ravel),
            lm.nn.Linear(3),
        ]

    def __call__(self, x, state):
        for layer in self.layers:
            if isinstance(layer, eqx.nn.StatefulLayer) and layer.is_stateful():
                x, state = layer(x, state)
            else:
                x = layer(x)
        return x, state


def test_cnn_with_lazy_batch_norm_trains_and_its_running_statistics_change():
    model, state = lm.init_with_state(CNN(), 0, spec(2, 9, 9))  # one example, unbatched
    norms = [layer for layer in model.layers if isinstance(layer, eqx.nn.BatchNorm)]
    assert [layer.input_size for layer in norms] == [8, 8]
    assert model.layers[-1].weight.shape == (3, 8 * 4 * 4)
    initial_stats = [state.get(layer.ema_state_index) for layer in norms]

    x = jax.random.normal(jax.random.key(1), (16, 2, 9, 9)) * 2 + 1
    y = jnp.arange(16) % 3
    optimizer = optax.sgd(0.05)
    opt_state = optimizer.init(eqx.filter(model, eqx.is_array))

    @eqx.filter_jit
    def step(model, state, opt_state):
        def loss_fn(model, state):
            batched = jax.vmap(model, axis_name="batch", in_axes=(0, None), out_axes=(0, None))
            logits, state = batched(x, state)
            return optax.softmax_cross_entropy_with_integer_labels(logits, y).mean(), state

        (loss, state), grads = eqx.filter_value_and_grad(loss_fn, has_aux=True)(model, state)
        updates, opt_state = optimizer.update(grads, opt_state)
        return eqx.apply_updates(model, updates), state, opt_state, loss

    losses = []
    for _ in range(20):
        model, state, opt_state, loss = step(model, state, opt_state)
        losses.append(float(loss))
    assert losses[-1] < losses[0] / 2, losses
    for layer, (mean, var) in zip(norms, initial_stats):
        new_mean, new_var = state.get(layer.ema_state_index)
        assert not np.allclose(new_mean, mean) and not np.allclose(new_var, var)
    # Inference uses the running statistics: no axis name needed.
    inference_model = eqx.nn.inference_mode(model)
    logits, _ = jax.vmap(inference_model, in_axes=(0, None), out_axes=(0, None))(x, state)
    assert logits.shape == (16, 3) and bool(jnp.all(jnp.isfinite(logits)))


def test_init_with_state_eager_equals_filter_jit():
    eager = lm.init_with_state(CNN(), 3, spec(2, 9, 9))
    jitted = eqx.filter_jit(lm.init_with_state)(CNN(), 3, spec(2, 9, 9))
    assert tree_bit_equal(eqx.filter(eager, eqx.is_array), eqx.filter(jitted, eqx.is_array))
