"""lazymod.nn.WeightNorm and lazymod.nn.SpectralNorm: wrappers around a layer that may
itself be lazy, which become Equinox's own wrappers after init."""

from typing import Any

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import lazymod as lm
from lazymod._running import next_key
from lazymod.nn._lazy import LazyLayer
from lazymod.nn._linear import Linear
from lazymod.nn._spectral_norm import SpectralNorm
from lazymod.nn._weight_norm import WeightNorm

from .helpers import spec, tree_bit_equal


class LazyConv2d(LazyLayer):
    """A minimal lazy conv (in-channels inferred), to wrap a layer with a 4-D weight."""

    out_channels: int = eqx.field(static=True)

    def __init__(self, out_channels: int):
        self.out_channels = out_channels

    def _build(self, x: Any, **_: Any) -> eqx.nn.Conv2d:
        return eqx.nn.Conv2d(x.shape[0], self.out_channels, 3, key=next_key())

    def __call__(self, x: Any, *, key: Any = None) -> Any:
        return self._layer_for(x)(x)


def clone(state):
    """A copy of an `eqx.nn.State`, which Equinox lets be used once only."""
    leaves, treedef = jax.tree.flatten(state)
    return jax.tree.unflatten(treedef, leaves)


def arrays_of(module):
    return jax.tree.map(lambda x: (x.shape, x.dtype), eqx.filter(module, eqx.is_array))


def lazy_inner(kind):
    if kind == "linear":
        return Linear(3), (5,)
    if kind == "linear_nobias":
        return Linear(4, use_bias=False), (6,)
    if kind == "scalar_in":
        return Linear(3), ()
    assert kind == "conv"
    return LazyConv2d(4), (2, 6, 6)


def reference_inner(kind, key):
    """The Equinox layer the lazy one should become, built by hand."""
    if kind == "linear":
        return eqx.nn.Linear(5, 3, key=key)
    if kind == "linear_nobias":
        return eqx.nn.Linear(6, 4, use_bias=False, key=key)
    if kind == "scalar_in":
        return eqx.nn.Linear("scalar", 3, key=key)
    return eqx.nn.Conv2d(2, 4, 3, key=key)


def copy_inner(reference_layer, layer):
    """`reference_layer` with the arrays of `layer` (same structure)."""
    names = [n for n, v in vars(layer).items() if eqx.is_array(v)]
    return eqx.tree_at(
        lambda m: [getattr(m, n) for n in names],
        reference_layer,
        [getattr(layer, n) for n in names],
    )


# --- WeightNorm ----------------------------------------------------------------------


@pytest.mark.parametrize(
    "kind, axis",
    [("linear", 0), ("linear_nobias", None), ("scalar_in", 1), ("conv", 0), ("conv", None)],
)
def test_weight_norm_matches_equinox(kind, axis):
    inner, shape = lazy_inner(kind)
    model = lm.init(WeightNorm(inner, axis=axis), 0, spec(*shape))
    reference = eqx.nn.WeightNorm(reference_inner(kind, jax.random.key(1)), axis=axis)
    assert type(model) is eqx.nn.WeightNorm
    assert type(model.layer) is type(reference.layer)
    assert arrays_of(model) == arrays_of(reference)
    assert (model.weight_name, model.axis) == (reference.weight_name, reference.axis)
    # g is the norm of the wrapped layer's initial weight, as Equinox computes it.
    expected_g = eqx.nn.WeightNorm(model.layer, axis=axis).g
    np.testing.assert_allclose(model.g, expected_g, rtol=1e-6)
    # Same arrays in a hand-built Equinox wrapper: same outputs (perturb g so that it
    # is not the identity reparameterization).
    model = eqx.tree_at(lambda m: m.g, model, model.g * 1.5)
    same = eqx.tree_at(
        lambda m: (m.layer, m.g), reference, (copy_inner(reference.layer, model.layer), model.g)
    )
    x = jax.random.normal(jax.random.key(2), shape)
    np.testing.assert_array_equal(model(x), same(x))


def test_weight_norm_default_init_statistics_match_equinox():
    model = lm.init(WeightNorm(Linear(64)), 0, spec(256))
    reference = eqx.nn.WeightNorm(eqx.nn.Linear(256, 64, key=jax.random.key(7)))
    ours, theirs = model.layer.weight, reference.layer.weight
    assert abs(float(jnp.std(ours)) / float(jnp.std(theirs)) - 1) < 0.1
    assert abs(float(jnp.max(ours)) / float(jnp.max(theirs)) - 1) < 0.1
    assert abs(float(jnp.mean(ours))) < 0.05 * float(jnp.std(theirs))
    # g holds the row norms: about sqrt(fan_in) * std, so its mean checks the scale.
    assert abs(float(jnp.mean(model.g)) / float(jnp.mean(reference.g)) - 1) < 0.05


@pytest.mark.parametrize("dtype", [jnp.float16, jnp.bfloat16])
def test_weight_norm_dtype(dtype):
    model = lm.init(WeightNorm(Linear(3, dtype=dtype)), 0, spec(5, dtype=dtype))
    reference = eqx.nn.WeightNorm(eqx.nn.Linear(5, 3, dtype=dtype, key=jax.random.key(0)))
    assert arrays_of(model) == arrays_of(reference)
    assert model.g.dtype == dtype


def test_weight_norm_around_equinox_layer():
    linear = eqx.nn.Linear(5, 3, key=jax.random.key(3))
    expected = eqx.nn.WeightNorm(linear, axis=None)
    for model in [
        lm.init(WeightNorm(linear, axis=None), 0),  # no inputs needed
        lm.init(WeightNorm(linear, axis=None), 0, spec(5)),
    ]:
        assert type(model) is eqx.nn.WeightNorm
        assert tree_bit_equal(model.layer, linear)
        np.testing.assert_allclose(model.g, expected.g, rtol=1e-6)
        x = jnp.arange(5.0)
        np.testing.assert_allclose(model(x), expected(x), rtol=1e-6)


def test_weight_norm_bad_input_names_the_wrapped_layer():
    with pytest.raises(lm.InitError) as info:
        lm.init(eqx.nn.Sequential([WeightNorm(Linear(3))]), 0, spec(5, 2))
    message = str(info.value)
    assert "Sequential.layers[0].layer" in message
    assert "(in_features,)" in message and "(5, 2)" in message


def test_weight_norm_bad_weight_name():
    with pytest.raises(lm.InitError) as info:
        lm.init(WeightNorm(Linear(3), weight_name="kernel"), 0, spec(5))
    message = str(info.value)
    assert "WeightNorm" in message and "'kernel'" in message and "Linear" in message


def test_weight_norm_is_not_built_without_inputs_when_the_layer_is_lazy():
    with pytest.raises(lm.InitError, match="uninitialized"):
        lm.init(WeightNorm(Linear(3)), 0)
    partial = lm.init(WeightNorm(Linear(3)), 0, partial=True)
    assert type(partial) is WeightNorm
    assert type(lm.init(partial, 0, spec(5))) is eqx.nn.WeightNorm


# --- SpectralNorm --------------------------------------------------------------------


def largest_singular_value(weight):
    return float(np.linalg.svd(np.asarray(weight, np.float64).reshape(weight.shape[0], -1))[1][0])


def reference_spectral(kind, model, state, **kwargs):
    """An Equinox SpectralNorm built by hand, holding the arrays and state of ours."""
    inner = reference_inner(kind, jax.random.key(1))
    reference, reference_state = eqx.nn.make_with_state(eqx.nn.SpectralNorm)(
        inner, "weight", **kwargs, key=jax.random.key(2)
    )
    reference = eqx.tree_at(lambda m: m.layer, reference, copy_inner(reference.layer, model.layer))
    reference_state = reference_state.set(reference.uv_index, state.get(model.uv_index))
    return reference, reference_state


@pytest.mark.parametrize(
    "kind, num_power_iterations",
    [("linear", 1), ("linear_nobias", 3), ("scalar_in", 1), ("conv", 2)],
)
def test_spectral_norm_matches_equinox(kind, num_power_iterations):
    inner, shape = lazy_inner(kind)
    lazy_model = SpectralNorm(inner, "weight", num_power_iterations, eps=1e-10)
    model, state = lm.init_with_state(lazy_model, 0, spec(*shape))
    kwargs = dict(num_power_iterations=num_power_iterations, eps=1e-10)
    reference, reference_state = eqx.nn.make_with_state(eqx.nn.SpectralNorm)(
        reference_inner(kind, jax.random.key(1)), "weight", **kwargs, key=jax.random.key(2)
    )
    assert type(model) is eqx.nn.SpectralNorm
    assert type(model.layer) is type(reference.layer)
    assert arrays_of(model) == arrays_of(reference)
    assert arrays_of(state.get(model.uv_index)) == arrays_of(
        reference_state.get(reference.uv_index)
    )
    for name in ["weight_name", "num_power_iterations", "eps", "inference"]:
        assert getattr(model, name) == getattr(reference, name)
    # The initial u, v come from 15 power iterations on our weight: u W v estimates
    # its largest singular value.
    u, v = state.get(model.uv_index)
    weight = model.layer.weight.reshape(model.layer.weight.shape[0], -1)
    sigma = float(u @ weight @ v)
    assert abs(sigma / largest_singular_value(weight) - 1) < 0.1
    # Same arrays and state in a hand-built Equinox wrapper: same outputs and states,
    # in training and in inference mode.
    same, same_state = reference_spectral(kind, model, state, **kwargs)
    x = jax.random.normal(jax.random.key(3), shape)
    for inference in [None, True]:
        out, new_state = model(x, clone(state), inference=inference)
        expected, expected_state = same(x, clone(same_state), inference=inference)
        np.testing.assert_array_equal(out, expected)
        for a, b in zip(new_state.get(model.uv_index), expected_state.get(same.uv_index)):
            np.testing.assert_array_equal(a, b)


def test_spectral_norm_default_init_statistics_match_equinox():
    model, state = lm.init_with_state(SpectralNorm(Linear(64), "weight"), 0, spec(128))
    reference, reference_state = eqx.nn.make_with_state(eqx.nn.SpectralNorm)(
        eqx.nn.Linear(128, 64, key=jax.random.key(7)), "weight", key=jax.random.key(8)
    )
    ours, theirs = model.layer.weight, reference.layer.weight
    assert abs(float(jnp.std(ours)) / float(jnp.std(theirs)) - 1) < 0.1
    for a, b in zip(state.get(model.uv_index), reference_state.get(reference.uv_index)):
        np.testing.assert_allclose(float(jnp.linalg.norm(a)), float(jnp.linalg.norm(b)), rtol=1e-3)
    x = jax.random.normal(jax.random.key(3), (128,))
    # After normalization the largest singular value is about 1, for both.
    for m, s in [(model, state), (reference, reference_state)]:
        u, v = s.get(m.uv_index)
        sigma = float(u @ m.layer.weight @ v)
        normalized = m.layer.weight / sigma
        assert abs(largest_singular_value(normalized) - 1) < 0.1
        assert m(x, s)[0].shape == (64,)


@pytest.mark.parametrize("dtype", [jnp.float16, jnp.bfloat16])
def test_spectral_norm_dtype(dtype):
    model, state = lm.init_with_state(
        SpectralNorm(Linear(3, dtype=dtype), "weight"), 0, spec(5, dtype=dtype)
    )
    reference, reference_state = eqx.nn.make_with_state(eqx.nn.SpectralNorm)(
        eqx.nn.Linear(5, 3, dtype=dtype, key=jax.random.key(0)), "weight", key=jax.random.key(1)
    )
    assert arrays_of(model) == arrays_of(reference)
    assert arrays_of(state.get(model.uv_index)) == arrays_of(
        reference_state.get(reference.uv_index)
    )
    assert all(a.dtype == dtype for a in state.get(model.uv_index))


def test_spectral_norm_around_equinox_layer():
    conv = eqx.nn.Conv2d(2, 4, 3, key=jax.random.key(3))
    for args in [(), (spec(2, 6, 6),)]:
        model, state = lm.init_with_state(SpectralNorm(conv, "weight"), 0, *args)
        assert type(model) is eqx.nn.SpectralNorm
        assert tree_bit_equal(model.layer, conv)
        same, same_state = reference_spectral("conv", model, state)
        x = jax.random.normal(jax.random.key(4), (2, 6, 6))
        np.testing.assert_array_equal(model(x, state)[0], same(x, same_state)[0])


def test_spectral_norm_bad_inputs():
    with pytest.raises(lm.InitError) as info:
        lm.init_with_state(SpectralNorm(Linear(3), "weight"), 0, spec(5, 2))
    assert "SpectralNorm.layer" in str(info.value) and "(5, 2)" in str(info.value)
    with pytest.raises(lm.InitError) as info:
        lm.init_with_state(SpectralNorm(eqx.nn.LayerNorm(5), "weight"), 0, spec(5))
    message = str(info.value)
    assert "SpectralNorm" in message and "at least 2 dimensions" in message
    assert "(5,)" in message


def test_spectral_norm_inference():
    model, state = lm.init_with_state(SpectralNorm(Linear(3), "weight", inference=True), 0, spec(5))
    assert model.inference is True
    lazy = eqx.nn.inference_mode(SpectralNorm(Linear(3), "weight"))
    model, state = lm.init_with_state(lazy, 0, spec(5))
    assert model.inference is True
    x = jnp.arange(5.0)
    _, new_state = model(x, clone(state))
    for a, b in zip(new_state.get(model.uv_index), state.get(model.uv_index)):
        np.testing.assert_array_equal(a, b)
    training = eqx.nn.inference_mode(model, False)
    _, new_state = training(x, clone(state))
    assert not all(
        np.array_equal(a, b)
        for a, b in zip(new_state.get(model.uv_index), state.get(model.uv_index))
    )


def test_spectral_norm_training_step_under_filter_jit_updates_state():
    class Net(lm.Module):
        first: Linear
        norm: SpectralNorm

        def __init__(self):
            self.first = Linear(8)
            self.norm = SpectralNorm(Linear(8), "weight")

        def __call__(self, x, state):
            return self.norm(jax.nn.relu(self.first(x)), state)

    model, state = lm.init_with_state(Net(), 0, spec(4))
    assert type(model.norm) is eqx.nn.SpectralNorm
    x = jax.random.normal(jax.random.key(5), (4,))

    @eqx.filter_jit
    def step(model, state, x):
        def loss(model):
            out, new_state = model(x, state)
            return jnp.sum(out**2), new_state

        (value, new_state), grads = eqx.filter_value_and_grad(loss, has_aux=True)(model)
        model = eqx.apply_updates(model, jax.tree.map(lambda g: -0.1 * g, grads))
        return model, new_state, value

    new_model, new_state, value = step(model, clone(state), x)
    assert jnp.isfinite(value)
    old_uv, new_uv = state.get(model.norm.uv_index), new_state.get(model.norm.uv_index)
    assert not all(np.array_equal(a, b) for a, b in zip(old_uv, new_uv))
    # The new state is one power iteration on the old weight, as Equinox computes it.
    reference, reference_state = reference_spectral_for(model.norm, state)
    hidden = jax.nn.relu(model.first(x))
    _, expected_state = reference(hidden, reference_state)
    for a, b in zip(new_uv, expected_state.get(reference.uv_index)):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)
    assert not tree_bit_equal(new_model.norm.layer, model.norm.layer)


def reference_spectral_for(norm, state):
    reference, reference_state = eqx.nn.make_with_state(eqx.nn.SpectralNorm)(
        eqx.nn.Linear(8, 8, key=jax.random.key(1)), "weight", key=jax.random.key(2)
    )
    reference = eqx.tree_at(lambda m: m.layer, reference, norm.layer)
    return reference, reference_state.set(reference.uv_index, state.get(norm.uv_index))


def test_spectral_norm_in_equinox_sequential():
    lazy = eqx.nn.Sequential([Linear(6), SpectralNorm(Linear(3), "weight")])
    model, state = lm.init_with_state(lazy, 0, spec(4))
    assert type(model.layers[1]) is eqx.nn.SpectralNorm
    x = jnp.arange(4.0)
    out, new_state = model(x, clone(state))
    hidden = model.layers[0](x)
    expected, expected_state = model.layers[1](hidden, clone(state))
    np.testing.assert_array_equal(out, expected)
    uv_index = model.layers[1].uv_index
    for a, b in zip(new_state.get(uv_index), expected_state.get(uv_index)):
        np.testing.assert_array_equal(a, b)


# --- both: containers, jit, init_shapes ----------------------------------------------


class UserModule(lm.Module):
    weight_norm: WeightNorm
    spectral_norm: SpectralNorm

    def __init__(self):
        self.weight_norm = WeightNorm(Linear(4))
        self.spectral_norm = SpectralNorm(Linear(3), "weight")

    def __call__(self, x, state):
        return self.spectral_norm(self.weight_norm(x), state)


class PlainModule(eqx.Module):
    weight_norm: Any
    spectral_norm: Any

    def __call__(self, x, state):
        return self.spectral_norm(self.weight_norm(x), state)


def plain():
    return PlainModule(WeightNorm(Linear(4)), SpectralNorm(Linear(3), "weight"))


def in_list():
    return [WeightNorm(Linear(4)), SpectralNorm(Linear(3), "weight")]


def run_list(layers, x, state):
    return layers[1](layers[0](x), state)


@pytest.mark.parametrize("make, method", [(UserModule, None), (plain, None), (in_list, run_list)])
def test_wrappers_in_containers_and_under_jit(make, method):
    def init(module, key):
        return lm.init_with_state(module, key, spec(5), method=method)

    def wrappers(model):
        if isinstance(model, list):
            return model[0], model[1]
        return model.weight_norm, model.spectral_norm

    model, state = init(make(), jax.random.key(0))
    weight_norm, spectral_norm = wrappers(model)
    assert type(weight_norm) is eqx.nn.WeightNorm and weight_norm.layer.weight.shape == (4, 5)
    assert type(spectral_norm) is eqx.nn.SpectralNorm
    assert spectral_norm.layer.weight.shape == (3, 4)
    # Under jit the wrapped weights are the same bits; what is computed from them (g,
    # the power-iteration vectors) may differ in the last bit, as XLA fuses the ops.
    jit_model, jit_state = eqx.filter_jit(init)(make(), jax.random.key(0))
    jit_weight_norm, jit_spectral_norm = wrappers(jit_model)
    assert tree_bit_equal(jit_weight_norm.layer, weight_norm.layer)
    assert tree_bit_equal(jit_spectral_norm.layer, spectral_norm.layer)
    arrays = jax.tree.leaves(eqx.filter((model, state), eqx.is_array))
    jit_arrays = jax.tree.leaves(eqx.filter((jit_model, jit_state), eqx.is_array))
    assert len(arrays) == len(jit_arrays) == 7
    for a, b in zip(jit_arrays, arrays):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-7)
    x = jnp.arange(5.0)
    out, _ = (run_list if method else type(model).__call__)(model, x, clone(state))
    expected, _ = spectral_norm(weight_norm(x), clone(state))
    np.testing.assert_array_equal(out, expected)


def test_init_shapes():
    lazy = WeightNorm(LazyConv2d(4), axis=None)
    shapes = lm.init_shapes(lazy, spec(2, 6, 6))
    assert type(shapes) is eqx.nn.WeightNorm

    def leaves(tree):
        return [(x.shape, x.dtype) for x in jax.tree.leaves(tree) if hasattr(x, "shape")]

    assert leaves(shapes) == leaves(lm.init(lazy, 0, spec(2, 6, 6))) and len(leaves(shapes)) == 3
    lazy = SpectralNorm(Linear(3), "weight")
    shapes = lm.init_shapes(lazy, spec(5), eqx.nn.State(()))
    model = lm.init(lazy, 0, spec(5), eqx.nn.State(()))
    assert type(shapes) is eqx.nn.SpectralNorm
    assert leaves(shapes) == leaves(model) and len(leaves(model)) == 4


def test_intermediates_name_the_wrapped_layer():
    lazy = eqx.nn.Sequential([WeightNorm(Linear(3))])
    _, intermediates = lm.init(lazy, 0, spec(5), capture_intermediates=True)
    assert intermediates["layers[0].layer"].shape == (3,)
    assert intermediates["layers[0]"].shape == (3,)


def test_wrappers_built_under_the_models_own_vmap():
    class Batched(lm.Module):
        weight_norm: WeightNorm
        spectral_norm: SpectralNorm

        def __init__(self):
            self.weight_norm = WeightNorm(Linear(4))
            self.spectral_norm = SpectralNorm(Linear(3), "weight")

        def __call__(self, x, state):
            hidden = jax.vmap(self.weight_norm)(x)
            return jax.vmap(self.spectral_norm, in_axes=(0, None), out_axes=(0, None))(
                hidden, state
            )

    model, state = lm.init_with_state(Batched(), 0, spec(7, 5))
    assert type(model.weight_norm) is eqx.nn.WeightNorm
    assert model.weight_norm.layer.weight.shape == (4, 5)
    assert type(model.spectral_norm) is eqx.nn.SpectralNorm
    assert [a.shape for a in state.get(model.spectral_norm.uv_index)] == [(3,), (4,)]
    x = jax.random.normal(jax.random.key(1), (7, 5))
    out, _ = model(x, clone(state))
    expected, _ = model.spectral_norm(model.weight_norm(x[0]), clone(state))
    np.testing.assert_allclose(out[0], expected, rtol=1e-6)
