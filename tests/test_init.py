import dataclasses
import subprocess
import sys
import textwrap
from typing import Any

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import lazymod as lm

from .helpers import EncoderDecoder, Linear, MLP, spec, tree_bit_equal, WithNumPy


class Pair(lm.Module):
    """Fields in two orders, to check that reordering changes no value."""

    first: Linear
    second: Linear

    def __call__(self, x):
        return self.first(x) + self.second(x)


class PairSwapped(lm.Module):
    second: Linear
    first: Linear

    def __call__(self, x):
        return self.first(x) + self.second(x)


class PairPlus(lm.Module):
    first: Linear
    extra: Linear
    second: Linear

    def __call__(self, x):
        return self.first(x) + self.second(x) + self.extra(x)


# --- keys ----------------------------------------------------------------------------


def test_key_forms_agree():
    model = MLP([Linear(3), Linear(2)])
    reference = lm.init(model, jax.random.key(7), spec(4))
    for key in (7, np.int64(7), jax.random.PRNGKey(7), {"params": jax.random.key(7)}):
        assert tree_bit_equal(lm.init(model, key, spec(4)), reference), key


@pytest.mark.parametrize(
    "key",
    [
        "seed",
        1.5,
        True,
        None,
        jnp.zeros((2,), jnp.float32),
        jnp.zeros((3, 2), jnp.uint32),
        jax.random.split(jax.random.key(0), 2),
        {},
        {0: jax.random.key(0)},
        {"params": "seed"},
    ],
    ids=repr,
)
def test_bad_keys_are_type_errors(key):
    with pytest.raises(TypeError, match="must be|stream names|empty dict"):
        lm.init(MLP([Linear(3)]), key, spec(4))


def test_stream_without_params_fallback_is_init_error():
    with pytest.raises(lm.InitError, match="'params'"):
        lm.init(Linear(2), {"dropout": jax.random.key(0)}, spec(3))


# --- path-derived keys -----------------------------------------------------------------


def test_identical_siblings_get_different_values():
    model = lm.init(MLP([Linear(3), Linear(3)]), 0, spec(3))
    assert not jnp.array_equal(model.layers[0].w, model.layers[1].w)
    # and the two draws inside one module differ too
    assert not jnp.array_equal(model.layers[0].w[0, :], model.layers[0].b)


def test_appending_a_layer_changes_no_existing_value():
    short = lm.init(MLP([Linear(3), Linear(3)]), 0, spec(3))
    long = lm.init(MLP([Linear(3), Linear(3), Linear(5)]), 0, spec(3))
    assert tree_bit_equal(short.layers, long.layers[:2])


def test_adding_and_reordering_fields_changes_no_existing_value():
    base = lm.init(Pair(Linear(2), Linear(2)), 0, spec(3))
    swapped = lm.init(PairSwapped(Linear(2), Linear(2)), 0, spec(3))
    plus = lm.init(PairPlus(Linear(2), Linear(2), Linear(2)), 0, spec(3))
    for other in (swapped, plus):
        assert tree_bit_equal(base.first, other.first)
        assert tree_bit_equal(base.second, other.second)


def test_no_path_hash_collision_between_joined_names():
    # Flax joined path names without a separator, so ("ab", "c") and ("a", "bc")
    # collided (google/flax#2157). Here the two get different values.
    model = {"ab": {"c": Linear(4)}, "a": {"bc": Linear(4)}}

    def run(tree, x):
        return tree["ab"]["c"](x) + tree["a"]["bc"](x)

    out = lm.init(model, 0, spec(4), method=run)
    assert not jnp.array_equal(out["ab"]["c"].w, out["a"]["bc"].w)


def test_initializer_keys_depend_on_path_and_stream():
    def draw(key):
        return jax.random.normal(key, (4,))

    tree = {
        "a": lm.Initializer(draw),
        "b": lm.Initializer(draw),
        "c": lm.Initializer(draw, stream="noise"),
    }
    out = lm.init(tree, jax.random.key(0))
    assert not jnp.array_equal(out["a"], out["b"])
    # A stream falls back to the 'params' key but draws independently of 'params'.
    assert not jnp.array_equal(out["a"], out["c"])
    same_root = lm.init(tree, {"params": jax.random.key(0), "noise": jax.random.key(0)})
    assert tree_bit_equal(out, same_root)
    other_noise = lm.init(tree, {"params": jax.random.key(0), "noise": jax.random.key(1)})
    assert jnp.array_equal(other_noise["a"], out["a"])
    assert not jnp.array_equal(other_noise["c"], out["c"])


def test_same_key_is_bit_identical_eager_jit_and_another_process(tmp_path):
    model = MLP([Linear(8), Linear(3)])
    eager = lm.init(model, 123, spec(5))
    jitted = eqx.filter_jit(lm.init)(model, jax.random.key(123), spec(5))
    assert tree_bit_equal(eager, jitted)

    path = tmp_path / "eager.eqx"
    eqx.tree_serialise_leaves(path, eager)
    script = textwrap.dedent(
        f"""
        import jax, equinox as eqx, lazymod as lm
        from tests.test_init import MLP, Linear
        from tests.helpers import spec, tree_bit_equal
        model = lm.init(MLP([Linear(8), Linear(3)]), 123, spec(5))
        saved = eqx.tree_deserialise_leaves({str(path)!r}, model)
        assert tree_bit_equal(model, saved)
        print("same")
        """
    )
    result = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, cwd=_repo_root()
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "same"


def _repo_root() -> str:
    import pathlib

    return str(pathlib.Path(__file__).resolve().parent.parent)


# --- inputs, shapes only ---------------------------------------------------------------


def test_spec_batch_size_is_never_allocated():
    # 2**24 x 1024 float32 is 64 GiB, more than this machine has: computing anything
    # on it would fail. Tracing it costs nothing.
    class Batched(lm.Module):
        inner: Linear

        def __call__(self, x):
            return jax.vmap(self.inner)(x)

    huge = spec(2**24, 1024)
    model, intermediates = lm.init(Batched(Linear(3)), 0, huge, capture_intermediates=True)
    assert model.inner.w.shape == (1024, 3)
    assert intermediates["inner"] == jax.ShapeDtypeStruct((3,), jnp.float32)
    # On real inputs too: a value inside the vmap cannot leave it; the root's output can.
    _, values = lm.init(Batched(Linear(3)), 0, jnp.ones((5, 4)), capture_intermediates=True)
    assert values["inner"] == jax.ShapeDtypeStruct((3,), jnp.float32)
    assert isinstance(values["__call__"], jax.Array) and values["__call__"].shape == (5, 3)


def test_pytrees_of_inputs_and_kwargs():
    class TwoInputs(lm.Module):
        w: jax.Array = lm.lazy()

        def __call__(self, inputs, *, scale):
            a, b = inputs["a"], inputs["b"]
            if self.initializing():
                self.w = jnp.zeros((a.shape[-1] + b.shape[-1],)) + scale
            return jnp.concatenate([a, b]) * self.w

    model = lm.init(TwoInputs(), 0, {"a": spec(2), "b": jnp.ones(3)}, scale=2.0)
    np.testing.assert_array_equal(model.w, jnp.full((5,), 2.0))


def test_data_dependent_init_needs_real_arrays():
    class ActNorm(lm.Module):
        shift: jax.Array = lm.lazy()

        def __call__(self, x):
            if self.initializing():
                self.shift = -x.mean(axis=0)
            return x + self.shift

    x = jnp.arange(6.0).reshape(3, 2)
    model = lm.init(ActNorm(), 0, x)
    np.testing.assert_allclose(model.shift, -x.mean(axis=0))
    with pytest.raises(lm.InitError, match=r"ActNorm\.shift: this value depends on the values"):
        lm.init(ActNorm(), 0, spec(3, 2))


def test_data_dependent_init_may_use_python_control_flow_on_real_arrays():
    class Scaled(lm.Module):
        scale: float = 0.0

        def __call__(self, x):
            if self.initializing():
                self.scale = 1.0 / float(jnp.std(x))
            return x * self.scale

    model = lm.init(Scaled(), 0, jnp.array([1.0, 3.0]))
    assert model.scale == pytest.approx(1.0)


# --- method=, partial=, capture_intermediates= ----------------------------------------


def test_method_by_name_function_and_bound_method():
    model = EncoderDecoder(Linear(2), Linear(4))
    by_name = lm.init(model, 0, spec(4), method="encode", partial=True)
    by_function = lm.init(model, 0, spec(4), method=EncoderDecoder.encode, partial=True)
    by_bound = lm.init(model, 0, spec(4), method=model.encode, partial=True)
    by_lambda = lm.init(model, 0, spec(4), method=lambda m, x: m.encoder(x), partial=True)
    for other in (by_function, by_bound, by_lambda):
        assert tree_bit_equal(by_name, other)
    assert by_name.encoder.w.shape == (4, 2)
    assert not lm.is_initialized(by_name)


def test_partial_false_lists_every_path_left():
    with pytest.raises(lm.InitError) as info:
        lm.init(EncoderDecoder(Linear(2), Linear(4)), 0, spec(4), method="encode")
    message = str(info.value)
    assert "EncoderDecoder.decoder.w" in message and "EncoderDecoder.decoder.b" in message
    assert "partial=True" in message


def test_incremental_init_equals_full_init():
    model = EncoderDecoder(Linear(2), Linear(4))
    full = lm.init(model, 0, spec(4))
    half = lm.init(model, 0, spec(4), method="encode", partial=True)
    rest = lm.init(half, 0, spec(2), method="decode")
    assert tree_bit_equal(full, rest)
    assert rest.encoder.w is half.encoder.w or jnp.array_equal(rest.encoder.w, half.encoder.w)


def test_capture_intermediates():
    model = MLP([Linear(3), Linear(2)])
    _, shapes = lm.init(model, 0, spec(4), capture_intermediates=True)
    assert shapes == {
        "layers[0]": jax.ShapeDtypeStruct((3,), jnp.float32),
        "layers[1]": jax.ShapeDtypeStruct((2,), jnp.float32),
        "__call__": jax.ShapeDtypeStruct((2,), jnp.float32),  # the root's, as in Flax
    }
    initialized, values = lm.init(model, 0, jnp.ones(4), capture_intermediates=True)
    expected = jnp.ones(4) @ initialized.layers[0].w + initialized.layers[0].b
    np.testing.assert_allclose(values["layers[0]"], expected)


def test_capture_names_repeated_calls():
    class Twice(lm.Module):
        inner: Linear

        def __call__(self, x):
            return self.inner(self.inner(x))

    _, shapes = lm.init(Twice(Linear(3)), 0, spec(3), capture_intermediates=True)
    assert set(shapes) == {"__call__", "inner", "inner#1"}


def test_capture_filter_chooses_modules_and_methods():
    class Coder(lm.Module):
        encoder: Linear
        decoder: Linear

        def encode(self, x):
            return self.encoder(x)

        def __call__(self, x):
            return self.decoder(self.encode(x))

    def only_encoding(module, method):
        return method == "encode" or isinstance(module, Linear) and method == "__call__"

    _, shapes = lm.init(
        Coder(Linear(2), Linear(4)), 0, spec(3), capture_intermediates=only_encoding
    )
    assert set(shapes) == {"encode", "encoder", "decoder"}
    assert shapes["encode"] == jax.ShapeDtypeStruct((2,), jnp.float32)
    with pytest.raises(TypeError, match="bool or a function|parameter 'capture_intermediates'"):
        lm.init(Coder(Linear(2), Linear(4)), 0, spec(3), capture_intermediates="yes")


def test_no_inputs_runs_only_initializers_and_rng_init():
    model = lm.init(MLP([Linear(3)]), 0, partial=True)
    assert not lm.is_initialized(model)
    with pytest.raises(lm.InitError, match="MLP.layers\\[0\\].w"):
        lm.init(MLP([Linear(3)]), 0)


# --- any Equinox tree ----------------------------------------------------------------


class PlainHolder(eqx.Module):
    inner: Linear
    scale: Any

    def __call__(self, x):
        return self.inner(x) * self.scale


def test_lazy_parts_inside_plain_equinox_modules_and_containers():
    tree = PlainHolder(Linear(2), lm.Initializer(lambda key: jnp.ones(2)))
    model = lm.init(tree, 0, spec(3))
    assert type(model) is PlainHolder and model.inner.w.shape == (3, 2)
    np.testing.assert_array_equal(model.scale, jnp.ones(2))

    containers = (
        [lm.Initializer(lambda k: jnp.zeros(1))],
        {"x": lm.Initializer(lambda k: jnp.zeros(2))},
    )
    out = lm.init(containers, 0)
    assert out[0][0].shape == (1,) and out[1]["x"].shape == (2,)


def test_inputs_to_a_non_callable_tree_need_method():
    with pytest.raises(TypeError, match="method="):
        lm.init([Linear(2)], 0, spec(3))


# --- misuse ----------------------------------------------------------------------------


def test_calling_an_uninitialized_module_names_path_and_field():
    model = MLP([Linear(3)])
    calls = {
        "direct": lambda: model(jnp.ones(4)),
        "jax.jit": lambda: jax.jit(lambda x: model(x))(jnp.ones(4)),
        "jax.vmap": lambda: jax.vmap(model)(jnp.ones((2, 4))),
        "eqx.filter_jit": lambda: eqx.filter_jit(model)(jnp.ones(4)),
    }
    for name, call in calls.items():
        with pytest.raises(lm.UninitializedError, match=r"MLP\.layers\[0\] \(Linear\).*'w', 'b'"):
            call()
    with pytest.raises(
        lm.UninitializedError, match=r"^Linear \(Linear\): fields 'w', 'b'.*lazymod.init"
    ):
        Linear(3)(jnp.ones(4))


def test_next_key_outside_init():
    with pytest.raises(lm.InitError, match="outside lazymod.init"):
        lm.next_key()


def test_assignment_outside_init_is_frozen():
    model = lm.init(Linear(2), 0, spec(3))
    with pytest.raises(dataclasses.FrozenInstanceError, match="eqx.tree_at"):
        model.w = jnp.zeros((3, 2))
    assert not model.initializing()


def test_input_module_is_never_modified_and_can_be_reinitialized():
    model = MLP([Linear(3), Linear(2)])
    before = repr(model)
    first = lm.init(model, 0, spec(4))
    assert repr(model) == before
    assert all(isinstance(layer.w, type(lm.lazy())) for layer in model.layers)
    second = lm.init(model, 0, spec(4))
    assert tree_bit_equal(first, second)
    # A different key gives different values: init redraws.
    assert not tree_bit_equal(first, lm.init(model, 1, spec(4)))


def test_initializer_errors_name_the_field():
    with pytest.raises(lm.InitError, match=r"list\[0\]: its Initializer raised ValueError"):
        lm.init([lm.Initializer(lambda key: (_ for _ in ()).throw(ValueError("boom")))], 0)
    with pytest.raises(lm.InitError, match=r"dict\['a'\]: its Initializer returned float"):
        lm.init({"a": lm.Initializer(lambda key: 1.0)}, 0)


# --- transforms and plain pytrees out -------------------------------------------------


def test_filter_eval_shape_and_init_shapes_agree_with_init():
    model = MLP([Linear(3), Linear(2)])
    real = lm.init(model, 0, spec(4))
    abstract = eqx.filter_eval_shape(lm.init, model, jax.random.key(0), spec(4))
    shapes = lm.init_shapes(model, spec(4))
    expected = jax.tree.map(
        lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype) if eqx.is_array(x) else x, real
    )
    assert eqx.tree_equal(abstract, expected) and eqx.tree_equal(shapes, expected)


def test_init_shapes_allocates_nothing():
    big = lm.init_shapes(Linear(100_000), spec(100_000))
    assert big.w == jax.ShapeDtypeStruct((100_000, 100_000), jnp.float32)


def test_result_is_a_plain_pytree_that_trains_and_serialises(tmp_path):
    model = lm.init(MLP([Linear(8), Linear(1)]), 0, spec(2))
    leaves = jax.tree.leaves(model, is_leaf=lambda x: True)
    assert all(not isinstance(leaf, jax.core.Tracer) for leaf in leaves)
    assert lm.is_initialized(model)

    xs = jax.random.normal(jax.random.key(1), (32, 2))
    ys = xs[:, :1] * xs[:, 1:]
    optimizer = optax.adam(1e-2)
    state = optimizer.init(eqx.filter(model, eqx.is_array))

    @eqx.filter_jit
    def step(model, state):
        loss, grads = eqx.filter_value_and_grad(lambda m: jnp.mean((jax.vmap(m)(xs) - ys) ** 2))(
            model
        )
        updates, state = optimizer.update(grads, state)
        return eqx.apply_updates(model, updates), state, loss

    losses = []
    for _ in range(30):
        model, state, loss = step(model, state)
        losses.append(float(loss))
    assert losses[-1] < losses[0]

    path = tmp_path / "model.eqx"
    eqx.tree_serialise_leaves(path, model)
    skeleton = lm.init_shapes(MLP([Linear(8), Linear(1)]), spec(2))
    loaded = eqx.tree_deserialise_leaves(path, skeleton)
    assert tree_bit_equal(loaded, model)


def test_vmap_of_init_builds_an_ensemble():
    keys = jax.random.split(jax.random.key(0), 3)
    ensemble = jax.vmap(lambda k: lm.init(Linear(2), k, spec(3)))(keys)
    assert ensemble.w.shape == (3, 3, 2)
    single = lm.init(Linear(2), keys[1], spec(3))
    np.testing.assert_array_equal(ensemble.w[1], single.w)


def test_jit_of_init_with_spec_input_agrees():
    model = MLP([Linear(3), Linear(2)])
    jitted = eqx.filter_jit(lambda m, k: lm.init(m, k, spec(4)))(model, jax.random.key(0))
    assert tree_bit_equal(jitted, lm.init(model, 0, spec(4)))


def test_data_dependent_init_under_jit_with_spec_is_still_an_error():
    class Mean(lm.Module):
        m: jax.Array = lm.lazy()

        def __call__(self, x):
            if self.initializing():
                self.m = x.mean()
            return x - self.m

    with pytest.raises(lm.InitError, match="depends on the values"):
        eqx.filter_jit(lambda k: lm.init(Mean(), k, spec(3)))(jax.random.key(0))


# --- the engine's edges -----------------------------------------------------------------


def test_rng_init_runs_children_before_parents():
    order = []

    class Leaf(lm.Module):
        name: str = eqx.field(static=True)

        def rng_init(self):
            order.append(self.name)

    class Parent(lm.Module):
        left: Leaf
        right: Leaf
        name: str = eqx.field(static=True, default="parent")

        def rng_init(self):
            order.append(self.name)

    lm.init(Parent(Leaf("left"), Leaf("right")), 0)
    assert order == ["left", "right", "parent"]


def test_rng_init_may_be_a_staticmethod_or_a_classmethod():
    # Init calls rng_init through the class when it is a plain function; any other
    # kind of method is called as the module would call it.
    calls = []

    class Static(lm.Module):
        @staticmethod
        def rng_init():
            calls.append("static")

    class Class(lm.Module):
        @classmethod
        def rng_init(cls):
            calls.append(cls.__name__)

    lm.init([Static(), Class()], 0)
    assert calls == ["static", "Class"]


def test_rng_init_errors_name_the_module():
    class Broken(lm.Module):
        def rng_init(self):
            raise ValueError("bad")

    with pytest.raises(
        lm.InitError, match=r"list\[1\] \(Broken\): rng_init raised ValueError: bad"
    ):
        lm.init([Linear(2), Broken()], 0)


def test_assigning_an_undeclared_field_during_init():
    class Typo(lm.Module):
        w: jax.Array = lm.lazy()

        def __call__(self, x):
            if self.initializing():
                self.weight = jnp.zeros(3)
            return x

    with pytest.raises(AttributeError, match="Typo has no field 'weight'"):
        lm.init(Typo(), 0, spec(3))


def test_tracer_in_a_static_field_is_an_error():
    class StaticShift(lm.Module):
        shift: Any = eqx.field(static=True, default=None)

        def __call__(self, x):
            if self.initializing():
                self.shift = x.sum()
            return x

    with pytest.raises(lm.InitError, match=r"StaticShift\.shift: a traced array"):
        lm.init(StaticShift(), 0, spec(3))


def test_field_assigned_inside_a_forward_vmap_from_data_is_an_error():
    class PerExample(lm.Module):
        shift: jax.Array = lm.lazy()

        def __call__(self, x):
            def one(row):
                if self.initializing():
                    self.shift = row * 2
                return row

            return jax.vmap(one)(x)

    with pytest.raises(lm.InitError, match=r"PerExample\.shift: assigned a value traced inside"):
        lm.init(PerExample(), 0, jnp.ones((2, 3)))


def test_a_failed_init_leaves_no_state_behind():
    class Fails(lm.Module):
        def __call__(self, x):
            if self.initializing():
                lm.next_key()
            raise RuntimeError("forward failed")

    with pytest.raises(RuntimeError, match="forward failed") as info:
        lm.init(Fails(), 0, spec(2))
    assert any("lazymod.init ran Fails" in note for note in info.value.__notes__)
    with pytest.raises(lm.InitError, match="outside lazymod.init"):
        lm.next_key()
    assert lm.init(Linear(2), 0, spec(3)).w.shape == (3, 2)


def test_no_tracer_leaks():
    model = MLP([Linear(3), Linear(2)])
    with jax.checking_leaks():
        lm.init(model, 0, spec(4))
        eqx.filter_jit(lm.init)(model, jax.random.key(0), spec(4))
        lm.init_shapes(model, spec(4))


def test_typed_keys_of_another_impl():
    key = jax.random.key(0, impl="rbg")
    model = lm.init(Linear(2), key, spec(3))
    assert model.w.shape == (3, 2)
    assert tree_bit_equal(model, lm.init(Linear(2), key, spec(3)))


def test_constant_scalars_are_arrays_and_keep_their_weak_type():
    # jnp.array(1.0) is weakly typed: it must not promote a bfloat16 input to float32,
    # as it would not in a module built by hand.
    class Scaled(lm.Module):
        scale: jax.Array = lm.lazy()
        count: jax.Array = lm.lazy()
        strong: jax.Array = lm.lazy()

        def __call__(self, x):
            if self.initializing():
                self.scale, self.count = jnp.array(1.0), jnp.array(0)
                self.strong = jnp.array(2.0, dtype=jnp.float32)
            return x * self.scale

    x = jax.ShapeDtypeStruct((2,), jnp.bfloat16)
    for model in (lm.init(Scaled(), 0, x), eqx.filter_jit(lm.init)(Scaled(), 0, x)):
        for name, weak in (("scale", True), ("count", True), ("strong", False)):
            value = getattr(model, name)
            assert isinstance(value, jax.Array) and value.weak_type is weak, name
        assert model(jnp.ones(2, jnp.bfloat16)).dtype == jnp.bfloat16


def test_initializer_left_as_a_class_default_runs_like_one_set_in_init():
    make = lm.Initializer(lambda key: jax.random.normal(key, (3,)))

    class Default(lm.Module):
        n: int
        w: jax.Array = make

        def __init__(self):
            self.n = 1  # w is never assigned: the class-level default stands

    class Assigned(lm.Module):
        n: int
        w: jax.Array

        def __init__(self):
            self.n = 1
            self.w = make

    assert not lm.is_initialized(Default())
    default, assigned = lm.init(Default(), 0), lm.init(Assigned(), 0)
    assert isinstance(default.w, jax.Array) and lm.is_initialized(default)
    assert (default.w == assigned.w).all()
    assert isinstance(Default().w, lm.Initializer)  # the class is untouched


def test_jax_does_not_pretty_print_modules_it_transforms():
    # jax.vmap(module) asks for str(module) for its debug info and keeps only built-in
    # function names; a module full of tracers costs milliseconds to pretty-print.
    printed = []

    class Loud:
        def __repr__(self):
            printed.append(True)
            return "Loud()"

    class Scale(lm.Module):
        note: Any = eqx.field(static=True)
        w: jax.Array = lm.lazy()

        def __call__(self, x):
            if self.initializing():
                self.w = jnp.ones(x.shape)
            return x * self.w

    model = lm.init(
        Scale(Loud()),
        0,
        jax.ShapeDtypeStruct((2, 3), jnp.float32),
        method=lambda m, x: jax.vmap(m)(x),
    )
    jax.vmap(model)(jnp.ones((2, 3)))
    assert not printed
    assert str(model) == repr(model) and printed


@pytest.mark.parametrize("held", [True, False], ids=["numpy fields", "numpy assigned only"])
def test_init_shapes_keeps_numpy_arrays_in_their_dtype_and_unplaced(held):
    """init leaves a NumPy array as it is (float64 without x64, on no device): so do
    its shapes. Made abstract, the table read float32, and restore failed on it."""
    model = lm.init(WithNumPy(held), 0, spec(4))
    assert isinstance(model.mask, np.ndarray) and (not held or model.table.dtype == np.float64)
    expected = jax.tree.map(
        lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype) if eqx.is_array(x) else x, model
    )
    assert eqx.tree_equal(lm.init_shapes(WithNumPy(held), spec(4)), expected)
    device = jax.sharding.SingleDeviceSharding(jax.devices()[0])
    placed = lm.init_shapes(WithNumPy(held), spec(4), sharding=device)
    assert placed.w.sharding == device and placed.mask.sharding is None
    unplaced = jax.tree.map(
        lambda x: (
            jax.ShapeDtypeStruct(x.shape, x.dtype) if isinstance(x, jax.ShapeDtypeStruct) else x
        ),
        placed,
    )
    assert eqx.tree_equal(unplaced, expected)


def test_next_key_in_a_call_that_an_enclosing_initializing_block_makes():
    # The child's method runs only inside the parent's `if self.initializing():` block,
    # and a `method=` function runs only at init: both may draw.
    class Child(lm.Module):
        def sample(self, shape):
            return jax.random.normal(lm.next_key(), shape)

        def __call__(self, x):
            return x

    class Parent(lm.Module):
        child: Child
        w: jax.Array = lm.lazy()

        def __call__(self, x):
            if self.initializing():
                self.w = self.child.sample(x.shape)
            return self.child(x) * self.w

    model = lm.init(Parent(Child()), 0, spec(3))
    assert model.w.shape == (3,) and model(jnp.ones(3)).shape == (3,)

    class Noisy(lm.Module):
        def __call__(self, x, *, key):
            return x + jax.random.normal(key, x.shape)

    lm.init(Noisy(), 0, spec(3), method=lambda m, x: m(x, key=lm.next_key("dropout")))
