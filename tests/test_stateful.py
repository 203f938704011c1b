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


# --- stateful models everywhere ---------------------------------------------------


class TwoNorms(lm.Module):
    """Equinox's own test_double_state, with one of the two layers lazy."""

    linear: lm.nn.Linear
    lazy_norm: lm.nn.BatchNorm
    norm: eqx.nn.BatchNorm

    def __init__(self):
        self.linear = lm.nn.Linear(4)
        self.lazy_norm = lm.nn.BatchNorm("batch", mode="batch")
        self.norm = eqx.nn.BatchNorm(4, "batch", mode="batch")

    def __call__(self, x, state):
        x, state = self.lazy_norm(self.linear(x), state)
        return self.norm(x, state)


def batched(model):
    return jax.vmap(model, in_axes=(0, None), out_axes=(0, None), axis_name="batch")


def init_two_norms():
    method = lambda m, x, state: batched(m)(x, state)  # noqa: E731
    return lm.init_with_state(TwoNorms(), 0, spec(2, 3), method=method), method


def test_hand_built_stateful_layers_beside_lazy_ones():
    (model, state), _ = init_two_norms()
    assert type(model.lazy_norm) is eqx.nn.BatchNorm and type(model.norm) is eqx.nn.BatchNorm
    out, state = batched(model)(jnp.ones((5, 3)), state)
    assert out.shape == (5, 4)


def test_shapes_and_restore_of_a_stateful_model(tmp_path):
    (model, state), method = init_two_norms()
    shapes, state_shapes = lm.init_shapes(TwoNorms(), spec(2, 3), method=method, with_state=True)

    # No initial state is left in the model, as in the one init_with_state returns.
    def layout(tree):
        leaves = jax.tree.leaves_with_path(
            tree, is_leaf=lambda x: isinstance(x, jax.ShapeDtypeStruct)
        )
        return [(p, x.shape, x.dtype) for p, x in leaves if hasattr(x, "shape")]

    assert layout(shapes) == layout(model)
    as_shapes = jax.tree.map(
        lambda a: jax.ShapeDtypeStruct(a.shape, a.dtype, weak_type=a.weak_type), state
    )
    assert jax.tree.leaves(state_shapes) == jax.tree.leaves(as_shapes)
    eqx.tree_serialise_leaves(tmp_path / "net.eqx", (model, state))
    restored, restored_state = lm.restore(
        TwoNorms(), tmp_path / "net.eqx", spec(2, 3), method=method, with_state=True
    )
    ours = jax.tree.leaves(eqx.filter((restored, restored_state), eqx.is_array))
    theirs = jax.tree.leaves(eqx.filter((model, state), eqx.is_array))
    assert len(ours) == len(theirs) and all(tree_bit_equal(a, b) for a, b in zip(ours, theirs))
    x = jax.random.normal(jax.random.key(0), (5, 3))
    assert tree_bit_equal(batched(restored)(x, restored_state)[0], batched(model)(x, state)[0])


def test_summary_of_a_stateful_model_reports_state_apart():
    _, method = init_two_norms()
    table = lm.summary(TwoNorms(), spec(2, 3), method=method, with_state=True)
    assert "32 parameters in 6 arrays" in table  # 4*3+4 + 2*(4+4); no running statistics
    assert "state: 18 values" in table  # two norms: a counter, mean and var of 4
    row = next(row for row in table.rows if row[0] == "norm")
    assert row[6] == "i32[], f32[4], f32[4]" and "weight f32[4]" in row[3]
    assert max(len(line) for line in table.splitlines()) < 120


def test_reinit_of_a_stateful_result_says_what_to_do():
    (model, _), method = init_two_norms()
    with pytest.raises(lm.InitError, match="no initial state any more"):
        lm.init_with_state(model, 0, spec(2, 3), method=method)


class WithHead(lm.Module):
    norm: lm.nn.BatchNorm
    head: lm.nn.Linear

    def __init__(self, features: int = 2):
        self.norm = lm.nn.BatchNorm("batch", mode="batch")
        self.head = lm.nn.Linear(features)

    def __call__(self, x, state):
        x, state = self.norm(x, state)
        return self.head(x), state


def test_a_new_layer_in_a_trained_stateful_model_is_initialized_with_its_state():
    model, state = lm.init_with_state(WithHead(), 0, spec(3))
    x = jax.random.normal(jax.random.key(1), (8, 3))
    _, state = batched(model)(x, state)  # a training step moves the statistics
    new = eqx.tree_at(lambda m: m.head, model, lm.nn.Linear(5))
    # A built BatchNorm in training mode needs its batch axis, which init does not bind.
    with pytest.raises(NameError, match="unbound axis name") as raised:
        lm.init(new, 1, spec(3), state)
    notes = "".join(raised.value.__notes__)
    assert "eqx.nn.inference_mode(model)" in notes
    assert "whose arguments were (float32[3], State)" in notes  # the state as one input
    built = lm.init(eqx.nn.inference_mode(new), 1, spec(3), state)
    assert built.head.weight.shape == (5, 3) and built.norm.inference
    assert tree_bit_equal(built.norm.weight, model.norm.weight)
    out, _ = batched(eqx.nn.inference_mode(built, False))(x, state)
    assert out.shape == (8, 5)
    # Through a batched method instead: the same new head, in training mode.
    method = lambda m, x, state: batched(m)(x, state)  # noqa: E731
    trained_mode = lm.init(new, 1, spec(2, 3), state, method=method)
    assert not trained_mode.norm.inference
    assert tree_bit_equal(trained_mode.head.weight, built.head.weight)
    with pytest.raises(lm.InitError, match=r"init_with_state\(model, key, \*inputs, state=state"):
        lm.init_with_state(new, 1, spec(3))


class Head(lm.Module):
    """A head called with the state, whether it holds stateful layers or not."""

    norm: lm.nn.BatchNorm | None
    linear: lm.nn.Linear

    def __init__(self, normed: bool):
        self.norm = lm.nn.BatchNorm("batch", mode="batch") if normed else None
        self.linear = lm.nn.Linear(2)

    def __call__(self, x, state):
        if self.norm is not None:
            x, state = self.norm(x, state)
        return self.linear(x), state


class Body(lm.Module):
    norm: lm.nn.BatchNorm
    head: Head

    def __init__(self):
        self.norm, self.head = lm.nn.BatchNorm("batch", mode="batch"), Head(normed=False)

    def __call__(self, x, state):
        x, state = self.norm(x, state)
        return self.head(x, state)


def test_a_new_stateful_layer_in_a_trained_model_gets_its_state_beside_the_trained_one():
    model, state = lm.init_with_state(Body(), 0, spec(3))
    x = jax.random.normal(jax.random.key(1), (8, 3))
    _, trained = batched(model)(x, state)
    new = eqx.tree_at(lambda m: m.head, model, Head(normed=True))
    built, merged = lm.init_with_state(eqx.nn.inference_mode(new), 1, spec(3), state=trained)
    built = eqx.nn.inference_mode(built, False)
    assert type(built.head.norm) is eqx.nn.BatchNorm and built.head.norm.input_size == 3
    assert tree_bit_equal(built.norm.weight, model.norm.weight)
    # The trained statistics are kept; the new layer starts from its initial ones.
    kept = jax.tree.leaves(trained.substate(model.norm))
    assert tree_bit_equal(jax.tree.leaves(merged.substate(built.norm)), kept)
    assert not tree_bit_equal(kept, jax.tree.leaves(state.substate(model.norm)))
    fresh = eqx.nn.make_with_state(eqx.nn.BatchNorm)(3, "batch", mode="batch")[1]
    assert tree_bit_equal(jax.tree.leaves(merged.substate(built.head)), jax.tree.leaves(fresh))
    out, _ = batched(built)(x, merged)  # a training step runs with every layer's state
    assert out.shape == (8, 2)
    with pytest.raises(TypeError, match="state= takes the eqx.nn.State|'state'"):
        lm.init_with_state(new, 1, spec(3), state={"norm": 0})
    # A state without the trained layer's entry (a substate) is named, not taken.
    with pytest.raises(lm.InitError, match=r"Body\.norm\.\w+: the state given as state= holds"):
        lm.init_with_state(new, 1, spec(3), state=trained.substate(model.head))


def test_a_lazy_layer_placed_twice_is_refused_with_a_state_too():
    model, state = lm.init_with_state(Body(), 0, spec(3))
    shared = Head(normed=False)
    twice = [model, shared, shared]  # one lazy object at two places
    with pytest.raises(lm.InitError, match=r"list\[1\] and list\[2\] are the same lazy Head"):
        lm.init_with_state(twice, 1, spec(3), state=state, method=lambda t, x, s: t[0](x, s))


class Counted(lm.Module):
    """States made from a Python int and a NumPy array, which `eqx.nn.State` holds as
    JAX arrays (a weak int32, a float32 without x64)."""

    steps: eqx.nn.StateIndex
    totals: eqx.nn.StateIndex
    layer: lm.nn.Linear

    def __init__(self):
        self.steps = eqx.nn.StateIndex(0)
        self.totals = eqx.nn.StateIndex(np.zeros(3))
        self.layer = lm.nn.Linear(3)

    def __call__(self, x, state):
        state = state.set(self.totals, state.get(self.totals) + x)
        return self.layer(x), state.set(self.steps, state.get(self.steps) + 1)


def test_states_from_python_and_numpy_values_are_described_as_the_state_holds_them(tmp_path):
    model, state = lm.init_with_state(Counted(), 0, spec(3))
    _, state_shapes = lm.init_shapes(Counted(), spec(3), with_state=True)
    held = jax.tree.map(
        lambda a: jax.ShapeDtypeStruct(a.shape, a.dtype, weak_type=a.weak_type), state
    )
    assert jax.tree.leaves(state_shapes) == jax.tree.leaves(held)  # was 0 and float64
    eqx.tree_serialise_leaves(tmp_path / "counted.eqx", (model, state))
    restored, restored_state = lm.restore(
        Counted(), tmp_path / "counted.eqx", spec(3), with_state=True
    )
    assert tree_bit_equal((restored, restored_state), (model, state))
    assert jax.tree.leaves(restored_state)[0].weak_type == jax.tree.leaves(state)[0].weak_type
