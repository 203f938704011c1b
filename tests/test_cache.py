"""A later init of the same structure reuses the first one's trace (keys are its
inputs): the forward pass runs once, the values are those of a fresh trace bit for
bit, and anything the trace could see that differs makes a new trace."""

import math
from typing import Any

import equinox as eqx
import jax
import jax.numpy as jnp
import pytest

import lazymod as lm
import lazymod._cache as _cache
import lazymod._values as _values
import lazymod.nn._multilayer as multilayer

from .helpers import spec, tree_bit_equal


RUNS: list[str] = []


class Counted(lm.Module):
    """Records every run of its forward pass (a Python side effect: once per trace)."""

    layer: lm.nn.Linear
    width: int = eqx.field(static=True)

    def __init__(self, width: int = 3):
        self.layer = lm.nn.Linear(width)
        self.width = width

    def __call__(self, x):
        RUNS.append("call")
        return self.layer(x)


class ReluStack(lm.Module):
    """`depth` lazy Linears of `width` in a list, a relu after each, as a user writes it."""

    layers: list

    def __init__(self, width: int, depth: int):
        self.layers = [lm.nn.Linear(width) for _ in range(depth)]

    def __call__(self, x):
        for layer in self.layers:
            x = jax.nn.relu(layer(x))
        return x


@pytest.fixture(autouse=True)
def fresh():
    lm.clear_caches()
    RUNS.clear()
    yield
    lm.clear_caches()


def test_a_later_init_reuses_the_trace_with_its_own_keys():
    first = lm.init(Counted(), 0, spec(4))
    second = lm.init(Counted(), 1, spec(4))
    assert RUNS == ["call"]  # traced once
    lm.clear_caches()
    assert tree_bit_equal(second, lm.init(Counted(), 1, spec(4)))  # a fresh trace
    assert RUNS == ["call", "call"]
    assert not tree_bit_equal(first, second)


def test_whatever_the_trace_sees_makes_a_new_trace():
    lm.init(Counted(), 0, spec(4))
    lm.init(Counted(), 0, spec(5))  # another input shape
    lm.init(Counted(), 0, spec(4, dtype=jnp.float16))  # another dtype
    lm.init(Counted(width=2), 0, spec(4))  # another static field
    lm.init(Counted(), {"params": 0, "dropout": 1}, spec(4))  # other streams
    lm.init(Counted(), 0, spec(4), method=Counted.__call__)  # the same method
    assert len(RUNS) == 5


def test_inits_that_could_see_values_are_traced_every_time():
    built = lm.init(Counted(), 0, spec(4))
    RUNS.clear()
    lm.init(built, 0, spec(4))  # a re-init: the module holds arrays
    lm.init(built, 0, spec(4))
    lm.init(Counted(), 0, jnp.ones(4))  # a real array as input
    lm.init(Counted(), 0, jnp.ones(4))
    eqx.filter_jit(lambda: lm.init(Counted(), 0, spec(4)))()  # inside a transformation
    assert len(RUNS) == 5
    lm.init(Counted(), 0, spec(4))  # the first init's trace, kept
    assert len(RUNS) == 5


def test_functions_made_per_instance_are_not_mistaken_for_one_another():
    def model(scale):
        class Holder(lm.Module):
            w: jax.Array

            def __init__(self):
                self.w = lm.Initializer(lambda key: scale * jnp.ones(2))

        return Holder()

    assert (lm.init(model(1.0), 0).w == 1.0).all()
    assert (lm.init(model(2.0), 0).w == 2.0).all()


def test_init_shapes_and_init_share_the_trace():
    shapes = lm.init_shapes(Counted(), spec(4))
    model = lm.init(Counted(), 0, spec(4))
    assert RUNS == ["call"]
    assert shapes.layer.weight.shape == model.layer.weight.shape == (3, 4)


def test_a_kept_trace_holds_no_equation_of_the_forward_pass_alone():
    # A relu between layers is only traced for shapes: keeping its equations would
    # make the kept trace of a deep model larger for nothing.
    model = lm.init(ReluStack(4, 3), 0, spec(4))
    (kept,) = _cache._traces.values()
    names = {eqn.primitive.name for eqn in kept.jaxpr.jaxpr.eqns}
    assert names and "custom_jvp_call" not in names
    assert tree_bit_equal(model, lm.init(ReluStack(4, 3), 0, spec(4)))  # and it still serves


def test_an_effect_of_the_forward_pass_alone_leaves_the_fast_evaluator_on(monkeypatch):
    # A jax.debug.print in the forward pass computes no value: its equation is dropped
    # from the kept trace, and so is its effect, which would turn the fast evaluator off.
    class Printing(lm.Module):
        layer: lm.nn.Linear

        def __init__(self):
            self.layer = lm.nn.Linear(3)

        def __call__(self, x):
            jax.debug.print("x = {}", x)
            return self.layer(x)

    monkeypatch.setenv("LAZYMOD_EVALUATOR", "fast")
    lm.init(Printing(), 0, spec(4))
    (kept,) = _cache._traces.values()
    assert not kept.jaxpr.jaxpr.effects
    assert _values._templates.get(kept) is not None  # the fast evaluator recorded it


def test_clear_caches_traces_again():
    lm.init(Counted(), 0, spec(4))
    lm.clear_caches()
    lm.init(Counted(), 0, spec(4))
    assert RUNS == ["call", "call"]


def test_later_inits_share_no_mutable_or_constant_object():
    import numpy as np

    class Masked(lm.Module):
        mask: object = lm.lazy()
        table: object = lm.lazy()

        def __call__(self, x):
            if self.initializing():
                self.mask = np.tril(np.ones((3, 3), np.float32))  # a NumPy array
                with jax.ensure_compile_time_eval():
                    self.table = jnp.sin(jnp.arange(6.0))  # computed while tracing
            return x

    a = lm.init(Masked(), 0, spec(3))
    a.mask[:] = 0
    b = lm.init(Masked(), 1, spec(3))
    assert b.mask is not a.mask and b.mask.sum() == 6
    assert b.table is not a.table


def test_equal_values_of_other_types_or_signs_are_not_the_same_structure():
    class Fill(lm.Module):
        value: float = eqx.field(static=True)
        w: jax.Array = lm.lazy()

        def __call__(self, x):
            if self.initializing():
                self.w = jnp.full(x.shape, self.value)
            return x

    assert lm.init(Fill(1), 0, spec(2)).w.dtype == jnp.int32
    assert lm.init(Fill(1.0), 0, spec(2)).w.dtype == jnp.float32
    assert not jnp.signbit(lm.init(Fill(0.0), 0, spec(2)).w).any()
    assert jnp.signbit(lm.init(Fill(-0.0), 0, spec(2)).w).all()


def count_linear_calls(monkeypatch) -> list:
    """The input shapes of every run of `eqx.nn.Linear.__call__` (once per trace)."""
    calls = []
    forward = eqx.nn.Linear.__call__

    def counted(self, x, *, key=None):
        calls.append(x.shape)
        return forward(self, x, key=key)

    monkeypatch.setattr(eqx.nn.Linear, "__call__", counted)
    return calls


def count_linear_builds(monkeypatch) -> list:
    """The sizes of every run of `eqx.nn.Linear.__init__` (once per trace)."""
    builds = []
    build = eqx.nn.Linear.__init__

    def counted(self, *args, **kwargs):
        builds.append(args[:2])
        build(self, *args, **kwargs)

    monkeypatch.setattr(eqx.nn.Linear, "__init__", counted)
    return builds


def test_alike_built_layers_trace_their_forward_pass_and_constructor_once(monkeypatch):
    calls = count_linear_calls(monkeypatch)
    builds = count_linear_builds(monkeypatch)

    # A width no other test uses: the traces are kept for the whole process.
    built = lm.init(ReluStack(13, 10), 0, spec(13))
    assert calls == [(13,)]  # ten alike layers: one trace of eqx.nn.Linear.__call__
    assert builds == [(13, 13), (13, 13)]  # the first built as it is, then kept
    lm.init(ReluStack(13, 10), 1, jnp.ones(13))  # another init: traced already, but for
    assert len(calls) == 2  # the first layer, which is given a real array

    class Branching(ReluStack):
        def __call__(self, x):
            if float(x.sum()) > 0:  # needs the input's value: traced op by op
                return super().__call__(x)
            return x

    real = jnp.ones(13)
    data_dependent = lm.init(Branching(13, 10), 0, real)
    assert len(calls) == 12  # every layer runs, on values
    assert tree_bit_equal(built.layers, data_dependent.layers)  # the same values either way


def _to_half(x):
    return jax.nn.relu(x).astype(jnp.float16)


class ReadsValues(lm.Module):
    """Reads its input's value, so that init is data-dependent: every layer is built
    by its Equinox constructor and run by Equinox's forward pass."""

    mlp: lm.nn.MLP

    def __call__(self, x):
        assert float(jnp.sum(x)) > -1e9
        return self.mlp(x)


@pytest.mark.parametrize(
    "args, kwargs, shape",
    [
        ((3, 8, 2), {}, (5,)),
        ((3, 8, 1), {"use_bias": False, "use_final_bias": False}, (5,)),
        (("scalar", 8, 3), {}, ()),
        ((3, 8, 2), {"dtype": jnp.float16}, (5,)),
        ((3, 8, 2), {"activation": jnp.tanh, "final_activation": jax.nn.sigmoid}, (5,)),
        ((3, 8, 2), {"activation": eqx.nn.PReLU()}, (5,)),  # an activation with arrays
        ((3, 8, 0), {}, (5,)),
        ((3, 8, 6), {}, (5,)),  # hidden layers left out of the staged forward pass
        ((3, 8, 6), {"activation": _to_half}, (5,)),  # which changes the dtype first
    ],
)
def test_a_staged_mlp_is_the_mlp_equinox_builds_and_runs(monkeypatch, args, kwargs, shape):
    # From shapes, lm.nn.MLP builds its Linears with kept constructor traces and runs
    # each layer and activation as a kept call; from values, Equinox does it all. The
    # same tree, the same values, the same output.
    calls = count_linear_calls(monkeypatch)
    run = lambda m, x: m.mlp(x)  # noqa: E731
    x = jnp.linspace(-1.0, 1.0, math.prod(shape)).reshape(shape)
    staged = lm.init(ReadsValues(lm.nn.MLP(*args, **kwargs)), 0, spec(*shape), method=run).mlp
    staged_calls = len(calls)
    by_equinox = lm.init(ReadsValues(lm.nn.MLP(*args, **kwargs)), 0, x).mlp
    assert len(calls) - staged_calls == len(by_equinox.layers)  # Equinox ran every layer
    assert type(staged) is eqx.nn.MLP
    assert jax.tree.structure(staged) == jax.tree.structure(by_equinox)
    assert tree_bit_equal(staged, by_equinox)
    assert eqx.tree_equal(
        eqx.filter(staged, eqx.is_array, inverse=True),
        eqx.filter(by_equinox, eqx.is_array, inverse=True),
    )
    assert tree_bit_equal(staged(x), by_equinox(x))


def test_a_deep_staged_mlp_traces_three_linear_constructors(monkeypatch):
    builds = count_linear_builds(monkeypatch)
    calls = count_linear_calls(monkeypatch)
    mlp = lm.init(lm.nn.MLP(3, 19, 30), 0, spec(7))  # widths no other test uses
    assert len(mlp.layers) == 31
    assert builds == [(7, 19), (19, 19), (19, 3)]  # one per kind of layer
    assert calls == [(7,), (19,), (19,)]  # (the output layer's is another kind, too)


def test_a_deep_staged_mlp_calls_one_hidden_layer(monkeypatch):
    # Only shapes flow: once a hidden layer's output has its input's shape and dtype,
    # the hidden layers after it are left out (each would give the same again).
    made = []
    call_kept = multilayer.call_kept

    def counted(function, *args):
        made.append(function.__name__)
        return call_kept(function, *args)

    monkeypatch.setattr(multilayer, "call_kept", counted)
    lm.init(lm.nn.MLP(3, 17, 40), 0, spec(7))
    lm.init(lm.nn.MLP(3, 17, 40), 0, spec(2, 7), method=lambda m, x: jax.vmap(m)(x))
    forward = [name for name in made if name != "_linear"]
    assert forward == ["_layer_per_neuron"] * 6  # input, one hidden, output; twice
    assert made.count("_linear") == 82


@eqx.filter_jit
def _jitted_call(mlp, x):
    return mlp(x)


PROBES = {  # ways to run the MLP on a constant, for a field init computes
    "call": lambda mlp, c: mlp(c),
    "vjp": lambda mlp, c: jax.vjp(mlp, c)[0],
    "linearize": lambda mlp, c: jax.linearize(mlp, c)[0],
    "value_and_grad": lambda mlp, c: jax.value_and_grad(lambda v: mlp(v).sum())(c)[0],
    "scan": lambda mlp, c: jax.lax.scan(lambda _, v: (None, mlp(v)), None, c[None])[1][0],
    "filter_jit": _jitted_call,
}


class Probed(lm.Module):
    """Sets a field from its MLP run on a constant: a value init computes, which the
    hidden layers left out of a staged forward pass would make wrong."""

    mlp: lm.nn.MLP
    probe: Any = eqx.field(static=True)
    probed: jax.Array = lm.lazy()

    def __init__(self, probe):
        self.mlp = lm.nn.MLP(3, 8, 6)
        self.probe = probe

    def __call__(self, x):
        y = self.mlp(x)
        if self.initializing():
            self.probed = self.probe(self.mlp, jnp.linspace(-1.0, 1.0, x.shape[0]))
        return y


@pytest.mark.parametrize("name", sorted(PROBES))
def test_a_value_read_from_a_left_out_layer_is_exact(name):
    probe = PROBES[name]
    for seed in (0, 1):  # the first trace, then the kept one
        probed = lm.init(Probed(probe), seed, spec(5))
        assert tree_bit_equal(probed.probed, probe(probed.mlp, jnp.linspace(-1.0, 1.0, 5)))


def test_a_value_read_from_a_left_out_layer_is_exact_without_jit():
    with jax.disable_jit():  # no named jit call in the trace, so no layer is left out
        probed = lm.init(Probed(PROBES["call"]), 0, spec(5))
    assert tree_bit_equal(probed.probed, probed.mlp(jnp.linspace(-1.0, 1.0, 5)))
    again = lm.init(Probed(PROBES["call"]), 0, spec(5))  # with jit on again
    assert tree_bit_equal(again.probed, again.mlp(jnp.linspace(-1.0, 1.0, 5)))


class Scaled(lm.Module):
    """Scales its output by a statistic of its MLP's output, run by a jitted function
    (LSUV-like): a data-dependent init with real inputs."""

    mlp: lm.nn.MLP
    scale: jax.Array = lm.lazy()

    def __init__(self):
        self.mlp = lm.nn.MLP(3, 8, 6)

    def __call__(self, x):
        self.mlp(x)  # built
        y = _jitted_call(self.mlp, x)
        if self.initializing():
            self.scale = 1.0 / jnp.std(y)
        return y * self.scale


class Jitted(lm.Module):
    mlp: lm.nn.MLP

    def __init__(self):
        self.mlp = lm.nn.MLP(3, 8, 6)

    def __call__(self, x):
        self.mlp(x)  # built
        return _jitted_call(self.mlp, x)


def test_no_trace_with_layers_left_out_is_kept_by_a_jitted_function():
    lm.init(Jitted(), 0, spec(5))  # a staged init traces `_jitted_call` first
    x = jnp.linspace(-1.0, 1.0, 5)
    scaled = lm.init(Scaled(), 0, x)
    assert tree_bit_equal(scaled.scale, 1.0 / jnp.std(scaled.mlp(x)))


def test_a_built_mlp_keeps_the_activations_it_was_given():
    def swish(x):
        return x * jax.nn.sigmoid(x)

    mlp = lm.init(lm.nn.MLP(3, 8, 2, activation=swish, final_activation=jnp.tanh), 0, spec(5))
    assert mlp.activation is swish and mlp.final_activation is jnp.tanh
    by_hand = eqx.nn.MLP(5, 3, 8, 2, swish, jnp.tanh, key=jax.random.key(1))
    by_hand = eqx.tree_at(lambda m: m.layers, by_hand, mlp.layers)
    x = jnp.linspace(-1.0, 1.0, 5)
    assert tree_bit_equal(mlp(x), by_hand(x))


def test_clear_caches_also_forgets_the_kept_layer_traces(monkeypatch):
    calls = count_linear_calls(monkeypatch)
    stack = [lm.nn.Linear(11) for _ in range(3)]
    run = lambda layers, x: [x := layer(x) for layer in layers][-1]  # noqa: E731
    lm.init(stack, 0, spec(11), method=run)
    lm.clear_caches()
    lm.init(stack, 0, spec(11), method=run)
    assert calls == [(11,), (11,)]  # traced again after clear_caches, once per init
