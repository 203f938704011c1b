"""The lazy convolutions of lazymod.nn._conv, each checked against the Equinox layer
built by hand with the inferred `in_channels`."""

import dataclasses
import inspect
import math

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import lazymod as lm
from lazymod.nn import (
    Conv,
    Conv1d,
    Conv2d,
    Conv3d,
    ConvTranspose,
    ConvTranspose1d,
    ConvTranspose2d,
    ConvTranspose3d,
)

from .helpers import spec, tree_bit_equal


# The general classes are tested with 2 spatial dimensions here.
SPATIAL_DIMS = {Conv: 2, Conv1d: 1, Conv2d: 2, Conv3d: 3}
SPATIAL_DIMS.update({ConvTranspose: 2, ConvTranspose1d: 1, ConvTranspose2d: 2, ConvTranspose3d: 3})

PAIRS = [
    (Conv, eqx.nn.Conv),
    (Conv1d, eqx.nn.Conv1d),
    (Conv2d, eqx.nn.Conv2d),
    (Conv3d, eqx.nn.Conv3d),
    (ConvTranspose, eqx.nn.ConvTranspose),
    (ConvTranspose1d, eqx.nn.ConvTranspose1d),
    (ConvTranspose2d, eqx.nn.ConvTranspose2d),
    (ConvTranspose3d, eqx.nn.ConvTranspose3d),
]

# (lazy class, Equinox class, constructor keywords less in_channels, input shape).
# Between them they cover every class, groups, strides, dilation, string / int /
# per-dimension / per-side padding (given as lists too), output_padding and every
# padding mode.
CASES = [
    (Conv, eqx.nn.Conv, dict(num_spatial_dims=1, out_channels=4, kernel_size=3), (6, 11)),
    (
        Conv,
        eqx.nn.Conv,
        dict(num_spatial_dims=2, out_channels=4, kernel_size=3, stride=2, padding="SAME", groups=2),
        (4, 9, 9),
    ),
    (Conv1d, eqx.nn.Conv1d, dict(out_channels=3, kernel_size=3, padding=1), (2, 10)),
    (
        Conv1d,
        eqx.nn.Conv1d,
        dict(out_channels=4, kernel_size=3, padding=2, dilation=2, padding_mode="REFLECT"),
        (2, 10),
    ),
    (
        Conv2d,
        eqx.nn.Conv2d,
        dict(out_channels=6, kernel_size=[3, 2], padding=[(1, 0), (0, 2)], groups=3),
        (6, 8, 7),
    ),
    (
        Conv2d,
        eqx.nn.Conv2d,
        dict(out_channels=2, kernel_size=3, padding="SAME_LOWER", padding_mode="CIRCULAR"),
        (3, 6, 6),
    ),
    (
        Conv3d,
        eqx.nn.Conv3d,
        dict(out_channels=2, kernel_size=(1, 2, 3), stride=(1, 2, 1), padding=[0, 1, 1]),
        (3, 4, 5, 6),
    ),
    (
        ConvTranspose,
        eqx.nn.ConvTranspose,
        dict(
            num_spatial_dims=2,
            out_channels=3,
            kernel_size=3,
            stride=2,
            padding=1,
            output_padding=1,
            groups=1,
        ),
        (4, 5, 5),
    ),
    (
        ConvTranspose1d,
        eqx.nn.ConvTranspose1d,
        dict(out_channels=4, kernel_size=3, padding="SAME", padding_mode="CIRCULAR", groups=2),
        (2, 9),
    ),
    (
        ConvTranspose2d,
        eqx.nn.ConvTranspose2d,
        dict(out_channels=3, kernel_size=[2, 3], stride=[2, 1], output_padding=[1, 0]),
        (4, 5, 6),
    ),
    (
        ConvTranspose3d,
        eqx.nn.ConvTranspose3d,
        dict(out_channels=2, kernel_size=2, stride=2, dilation=(1, 2, 1), groups=2),
        (4, 3, 3, 3),
    ),
]

CASE_IDS = [f"{lazy.__name__}-{i}" for i, (lazy, *_) in enumerate(CASES)]


def arrays_of(module):
    """The shape and dtype of every array (or `jax.ShapeDtypeStruct`) in `module`."""
    return jax.tree.map(lambda x: (x.shape, x.dtype), module)


def static_fields(module):
    return {
        f.name: getattr(module, f.name)
        for f in dataclasses.fields(module)
        if f.metadata.get("static", False)
    }


def reference(eqx_cls, kwargs, in_channels, key=1):
    return eqx_cls(**kwargs, in_channels=in_channels, key=jax.random.key(key))


def with_arrays_of(layer, reference_layer):
    """`reference_layer` holding `layer`'s weight and bias."""
    return eqx.tree_at(
        lambda m: (m.weight, m.bias),
        reference_layer,
        (layer.weight, layer.bias),
        is_leaf=lambda x: x is None,
    )


@pytest.mark.parametrize("lazy_cls, eqx_cls", PAIRS, ids=[p[0].__name__ for p in PAIRS])
def test_constructor_mirrors_equinox(lazy_cls, eqx_cls):
    # Same argument names, order and defaults as Equinox's, less in_channels and key.
    ours = inspect.signature(lazy_cls.__init__).parameters
    theirs = inspect.signature(eqx_cls.__init__).parameters
    expected = [(n, p.default) for n, p in theirs.items() if n not in ("in_channels", "key")]
    assert [(n, p.default) for n, p in ours.items()] == expected


@pytest.mark.parametrize("use_bias", [True, False])
@pytest.mark.parametrize("lazy_cls, eqx_cls, kwargs, in_shape", CASES, ids=CASE_IDS)
def test_matches_equinox(lazy_cls, eqx_cls, kwargs, in_shape, use_bias):
    kwargs = {**kwargs, "use_bias": use_bias}
    layer = lm.init(lazy_cls(**kwargs), 0, spec(*in_shape))
    ref = reference(eqx_cls, kwargs, in_shape[0])
    # 1. The Equinox layer itself, with the same fields, shapes, dtypes and config.
    assert type(layer) is eqx_cls
    assert [f.name for f in dataclasses.fields(layer)] == [f.name for f in dataclasses.fields(ref)]
    assert arrays_of(layer) == arrays_of(ref)
    assert static_fields(layer) == static_fields(ref)
    assert jax.tree.structure(layer) == jax.tree.structure(ref)
    assert (layer.bias is None) == (not use_bias)
    # 2. The same outputs as Equinox's layer holding the same arrays.
    x = jax.random.normal(jax.random.key(2), in_shape)
    expected = with_arrays_of(layer, ref)(x)
    np.testing.assert_array_equal(layer(x), expected)
    # ... and not by accident: a layer with other arrays gives other outputs.
    assert not np.array_equal(ref(x), expected)
    # 7. init_shapes agrees.
    shapes = lm.init_shapes(lazy_cls(**kwargs), spec(*in_shape))
    assert arrays_of(shapes) == arrays_of(ref)
    assert static_fields(shapes) == static_fields(ref)


def test_positional_arguments_land_where_equinox_puts_them():
    # ConvTranspose{1,2,3}d take output_padding before padding, ConvTranspose after.
    general = lm.init(ConvTranspose(1, 2, 3, 2, 1, 1), 0, spec(3, 5))
    assert general.padding == ((1, 1),) and general.output_padding == (1,)
    specific = lm.init(ConvTranspose1d(2, 3, 2, 1, 0), 0, spec(3, 5))
    assert specific.output_padding == (1,) and specific.padding == ((0, 0),)
    conv = Conv2d(4, 3, 2, 1, 2, 2, False, "REPLICATE", jnp.float16)
    conv = lm.init(conv, 0, spec(6, 9, 9, dtype=jnp.float16))
    assert (conv.stride, conv.padding, conv.dilation) == ((2, 2), ((1, 1), (1, 1)), (2, 2))
    assert (conv.groups, conv.use_bias, conv.padding_mode) == (2, False, "REPLICATE")
    assert conv.weight.dtype == jnp.float16


def uniform_bound(layer):
    """Equinox's default bound, computed here from the layer's configuration:
    weight and bias ~ U(-lim, lim) with lim = 1 / sqrt(fan_in), and
    fan_in = (in_channels / groups) * prod(kernel_size)."""
    fan_in = layer.in_channels // layer.groups * math.prod(layer.kernel_size)
    return 1 / math.sqrt(fan_in)


def sample_stats(a):
    a = np.asarray(a, np.float64).reshape(-1)
    return a.size, a.mean(), a.std(), a.min(), a.max()


def assert_same_uniform(ours, theirs, bound):
    """`ours` and `theirs` look like samples of the same U(-bound, bound). Every
    tolerance is five standard errors for the sample size (or, for the extremes, a
    margin that a sample of this size misses with probability below e^-20), so the
    check cannot flake, yet a bound off by 10% in scale fails it for these sizes."""
    n, mean_o, std_o, min_o, max_o = sample_stats(ours)
    _, mean_t, std_t, min_t, max_t = sample_stats(theirs)
    std = bound / math.sqrt(3)
    mean_tol = 5 * math.sqrt(2) * std / math.sqrt(n)  # a difference of two means
    rel_std_tol = 5 * math.sqrt(2) * math.sqrt(0.8 / (4 * n))  # kurtosis of U is 1.8
    edge = bound * min(1.0, 40 / n)  # P(max < bound - edge) = (1 - edge/2b)^n < e^-20
    assert abs(mean_o - mean_t) < mean_tol
    assert abs(std_o / std_t - 1) < rel_std_tol
    for value in (max_o, max_t, -min_o, -min_t):
        assert bound - edge <= value <= bound
    # The reference itself agrees with the bound computed above.
    assert abs(std_t / std - 1) < rel_std_tol


STATS_CASES = [
    (Conv, eqx.nn.Conv, dict(num_spatial_dims=2, out_channels=64, kernel_size=3), (16, 5, 5)),
    (Conv1d, eqx.nn.Conv1d, dict(out_channels=64, kernel_size=5, groups=4), (32, 9)),
    (Conv2d, eqx.nn.Conv2d, dict(out_channels=64, kernel_size=3, groups=2), (16, 5, 5)),
    (Conv3d, eqx.nn.Conv3d, dict(out_channels=48, kernel_size=(3, 3, 2)), (8, 4, 4, 4)),
    (
        ConvTranspose,
        eqx.nn.ConvTranspose,
        dict(num_spatial_dims=1, out_channels=64, kernel_size=4),
        (48, 5),
    ),
    (ConvTranspose1d, eqx.nn.ConvTranspose1d, dict(out_channels=64, kernel_size=3), (32, 5)),
    (
        ConvTranspose2d,
        eqx.nn.ConvTranspose2d,
        dict(out_channels=64, kernel_size=3, groups=4),
        (32, 5, 5),
    ),
    (ConvTranspose3d, eqx.nn.ConvTranspose3d, dict(out_channels=48, kernel_size=2), (16, 3, 3, 3)),
]


@pytest.mark.parametrize(
    "lazy_cls, eqx_cls, kwargs, in_shape", STATS_CASES, ids=[c[0].__name__ for c in STATS_CASES]
)
def test_default_init_statistics_match_equinox(lazy_cls, eqx_cls, kwargs, in_shape):
    ours = lm.init(lazy_cls(**kwargs), 0, spec(*in_shape))
    theirs = reference(eqx_cls, kwargs, in_shape[0], key=5)
    bound = uniform_bound(theirs)
    assert ours.weight.size >= 2000
    assert_same_uniform(ours.weight, theirs.weight, bound)
    assert_same_uniform(ours.bias, theirs.bias, bound)


def test_statistics_check_catches_a_wrong_fan_in():
    # What the check above would see if groups were left out of the fan-in.
    kwargs = dict(out_channels=64, kernel_size=3, groups=4)
    grouped = reference(eqx.nn.Conv2d, kwargs, 32)
    ungrouped = reference(eqx.nn.Conv2d, {**kwargs, "groups": 1}, 32)
    with pytest.raises(AssertionError):
        assert_same_uniform(ungrouped.weight[:, :8], grouped.weight, uniform_bound(grouped))


@pytest.mark.parametrize("dtype", [jnp.float16, jnp.bfloat16])
@pytest.mark.parametrize("lazy_cls, eqx_cls, kwargs, in_shape", CASES[::2], ids=CASE_IDS[::2])
def test_dtype(lazy_cls, eqx_cls, kwargs, in_shape, dtype):
    layer = lm.init(lazy_cls(**kwargs, dtype=dtype), 0, spec(*in_shape, dtype=dtype))
    assert type(layer) is eqx_cls
    assert layer.weight.dtype == dtype and layer.bias.dtype == dtype
    assert layer(jnp.ones(in_shape, dtype)).dtype == dtype


@pytest.mark.parametrize("lazy_cls, eqx_cls", PAIRS, ids=[p[0].__name__ for p in PAIRS])
def test_wrong_rank_names_path_expected_and_received(lazy_cls, eqx_cls):
    n = SPATIAL_DIMS[lazy_cls]
    model = lm.nn.Sequential([make(lazy_cls, n, out_channels=4, kernel_size=1)])
    bad = (2,) * (n + 2)  # a batched input
    with pytest.raises(lm.InitError) as info:
        lm.init(model, 0, spec(*bad))
    message = str(info.value)
    assert f"Sequential.layers[0] ({lazy_cls.__name__})" in message
    spatial = ", ".join(f"dim_{i}" for i in range(1, n + 1))
    assert f"rank-{n + 1} array of shape (in_channels, {spatial})" in message
    assert f"shape {bad}" in message and "jax.vmap" in message


@pytest.mark.parametrize("lazy_cls, eqx_cls", PAIRS, ids=[p[0].__name__ for p in PAIRS])
def test_channels_not_divisible_by_groups(lazy_cls, eqx_cls):
    n = SPATIAL_DIMS[lazy_cls]
    layer = make(lazy_cls, n, out_channels=4, kernel_size=1, groups=2)
    bad = (3,) + (4,) * n
    with pytest.raises(lm.InitError) as info:
        lm.init(layer, 0, spec(*bad))
    message = str(info.value)
    assert message.startswith(f"{lazy_cls.__name__} ({lazy_cls.__name__})")
    assert "in_channels (the input's first axis) divisible by groups=2" in message
    assert f"shape {bad}" in message
    # A channel count that divides is fine.
    ok = lm.init(layer, 0, spec(4, *bad[1:]))
    assert ok.in_channels == 4 and ok.weight.shape[:2] == (4, 2)


def make(lazy_cls, n, **kwargs):
    if lazy_cls in (Conv, ConvTranspose):
        kwargs["num_spatial_dims"] = n
    return lazy_cls(**kwargs)


# --- in models, containers and under jit ----------------------------------------------


class Autoencoder(lm.Module):
    down: Conv2d
    mid: Conv
    up: ConvTranspose2d

    def __init__(self):
        self.down = Conv2d(8, 3, stride=2, padding=1)
        self.mid = Conv(2, 8, 3, padding="SAME", groups=4)
        self.up = ConvTranspose2d(3, 3, stride=2, output_padding=1, padding=1)

    def __call__(self, x):
        return self.up(jax.nn.relu(self.mid(jax.nn.relu(self.down(x)))))


class PlainStack(eqx.Module):
    layers: tuple

    def __call__(self, x):
        for layer in self.layers:
            x = layer(x)
        return x


def run_list(layers, x):
    for layer in layers:
        x = layer(x)
    return x


MODELS = {
    "lm.Module": (Autoencoder, None, (3, 8, 8)),
    "eqx.Module": (lambda: PlainStack((Conv1d(4, 3), ConvTranspose1d(2, 3))), None, (3, 10)),
    "list": (lambda: [Conv3d(4, 2), ConvTranspose(3, 2, 2)], run_list, (3, 4, 4, 4)),
}


@pytest.mark.parametrize("name", MODELS)
def test_in_models_and_under_filter_jit(name):
    make_model, method, in_shape = MODELS[name]
    model = make_model()
    eager = lm.init(model, jax.random.key(0), spec(*in_shape), method=method)
    jitted = eqx.filter_jit(lambda m, k: lm.init(m, k, spec(*in_shape), method=method))(
        model, jax.random.key(0)
    )
    assert tree_bit_equal(eager, jitted)
    assert lm.is_initialized(eager)
    shapes = lm.init_shapes(model, spec(*in_shape), method=method)
    assert arrays_of(shapes) == arrays_of(eager)
    # Each lazy layer became its Equinox layer, built with the channels reaching it.
    is_conv = lambda x: isinstance(x, eqx.nn.Conv | eqx.nn.ConvTranspose)  # noqa: E731
    layers = [x for x in jax.tree.leaves(eager, is_leaf=is_conv) if is_conv(x)]
    assert len(layers) >= 2
    for layer in layers:
        assert layer.weight.shape[1] == layer.in_channels // layer.groups
    forward = method if method is not None else type(eager).__call__
    y = forward(eager, jax.random.normal(jax.random.key(3), in_shape))
    if name == "lm.Module":
        assert type(eager.down) is eqx.nn.Conv2d and eager.mid.in_channels == 8
        assert type(eager.up) is eqx.nn.ConvTranspose2d and eager.up.in_channels == 8
        assert y.shape == (3, 8, 8)
    elif name == "eqx.Module":
        assert [type(x) for x in eager.layers] == [eqx.nn.Conv1d, eqx.nn.ConvTranspose1d]
        assert eager.layers[1].in_channels == 4 and y.shape == (2, 10)
    else:
        assert [type(x) for x in eager] == [eqx.nn.Conv3d, eqx.nn.ConvTranspose]
        assert eager[1].in_channels == 4 and y.shape == (2, 4, 4, 4)


def test_distinct_layers_get_distinct_weights_and_the_key_matters():
    model = [Conv1d(4, 3), Conv1d(4, 3)]
    a = lm.init(model, 0, spec(4, 8), method=run_list)
    b = lm.init(model, 1, spec(4, 8), method=run_list)
    assert not np.array_equal(a[0].weight, a[1].weight)
    assert not np.array_equal(a[0].weight, b[0].weight)


def test_calling_before_init_says_to_init():
    with pytest.raises(lm.UninitializedError, match=r"Conv2d.*lazymod.init"):
        Conv2d(4, 3)(jnp.ones((3, 8, 8)))
