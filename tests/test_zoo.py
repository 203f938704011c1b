"""The five models of examples/zoo.py, each through what a user does with a model:
init (and re-init), summary, init_shapes, a checkpoint round trip, gradients and a few
training steps. Each model is initialized once per module (the `built` fixture)."""

import dataclasses
import importlib.util
import sys
from pathlib import Path

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import lazymod as lm

from .helpers import tree_bit_equal


def load_zoo():
    path = Path(__file__).resolve().parent.parent / "examples" / "zoo.py"
    spec = importlib.util.spec_from_file_location("zoo", path)
    module = importlib.util.module_from_spec(spec)
    sys.modules["zoo"] = module  # dataclasses look their module up by name
    spec.loader.exec_module(module)
    return module


zoo = load_zoo()
BATCH = 4

# Lazy layers of each model and the Equinox class each must have become.
EXPECTED_TYPES = {
    "resnet": {
        "stem": eqx.nn.Conv2d,
        "stem_norm": eqx.nn.BatchNorm,
        "blocks[0].conv1": eqx.nn.Conv2d,
        "blocks[1].project": eqx.nn.Conv2d,
        "blocks[1].project_norm": eqx.nn.BatchNorm,
        "blocks[2].norm2": eqx.nn.BatchNorm,
        "head": eqx.nn.Linear,
    },
    "vit": {
        "embed": eqx.nn.Conv2d,
        "blocks[0].attention": eqx.nn.MultiheadAttention,
        "blocks[0].dropout": eqx.nn.Dropout,
        "blocks[1].attention_norm": eqx.nn.LayerNorm,
        "blocks[1].up": eqx.nn.Linear,
        "norm": eqx.nn.LayerNorm,
        "head": eqx.nn.Linear,
    },
    "gpt": {
        "embedding": eqx.nn.Embedding,
        "blocks[0].attention": eqx.nn.MultiheadAttention,
        "blocks[1].down": eqx.nn.Linear,
        "norm": eqx.nn.LayerNorm,
    },
    "lstm": {"embedding": eqx.nn.Embedding, "cell": eqx.nn.LSTMCell, "head": eqx.nn.Linear},
    "unet": {
        "encode1.conv1": eqx.nn.Conv2d,
        "down2": eqx.nn.Conv2d,
        "up2": eqx.nn.ConvTranspose2d,
        "up1": eqx.nn.ConvTranspose2d,
        "decode1.conv2": eqx.nn.Conv2d,
        "out": eqx.nn.Conv2d,
    },
}
assert set(EXPECTED_TYPES) == set(zoo.ZOO)

# Sizes each model must have inferred from its spec.
EXPECTED_SIZES = {
    "resnet": {"blocks[1].conv1.in_channels": 8, "head.in_features": 16},
    "vit": {"embed.in_channels": 3, "positions.shape": (17, 32), "head.in_features": 32},
    "gpt": {"embedding.weight.shape": (50, 32), "positions.shape": (16, 32)},
    "lstm": {"cell.input_size": 16, "head.in_features": 32},
    "unet": {
        "up2.in_channels": 32,
        "decode2.conv1.in_channels": 32,
        "decode1.conv1.in_channels": 16,
    },
}


def get(tree, path: str):
    for part in path.replace("]", "").replace("[", ".").split("."):
        tree = tree[int(part)] if part.isdigit() else getattr(tree, part)
    return tree


@dataclasses.dataclass
class Built:
    entry: zoo.Entry
    model: object
    state: object  # None for a stateless model
    x: jax.Array
    y: jax.Array

    @property
    def saved(self):
        """What a checkpoint holds: the model, or `(model, state)`."""
        return (self.model, self.state) if self.entry.stateful else self.model


@pytest.fixture(scope="module", params=list(zoo.ZOO))
def built(request) -> Built:
    entry = zoo.ZOO[request.param]
    model, state = entry.init_pair(jax.random.key(0))
    x, y = entry.batch(jax.random.key(1), BATCH)
    return Built(entry, model, state, x, y)


@eqx.filter_jit
def evaluate(model, state, x, entry):
    """The outputs on a batch, without dropout; one compilation per model."""
    outputs, _ = entry.forward(model, state, x, None)
    return outputs


def lazymod_objects(tree) -> list[str]:
    """The lazymod.nn objects left in `tree` (after init there should be none)."""

    def is_lazymod(node) -> bool:
        return type(node).__module__.startswith("lazymod")

    return [type(x).__name__ for x in jax.tree.leaves(tree, is_leaf=is_lazymod) if is_lazymod(x)]


def shape_leaves(tree) -> list:
    """Every leaf, an array (or spec) as its `(shape, dtype)`, others as they are."""
    return [
        (tuple(x.shape), x.dtype) if isinstance(x, (jax.Array, jax.ShapeDtypeStruct)) else x
        for x in jax.tree.leaves(tree)
    ]


def test_init_builds_equinox_layers(built):
    entry, model = built.entry, built.model
    assert lm.is_initialized(model)
    assert not lm.is_initialized(entry.make())
    assert lazymod_objects(model) == []
    assert lazymod_objects(entry.make()) != []
    assert type(model) is entry.make  # the user's own module stays
    for path, cls in EXPECTED_TYPES[entry.name].items():
        assert type(get(model, path)) is cls, path
    for path, size in EXPECTED_SIZES[entry.name].items():
        assert get(model, path) == size, path
    if entry.stateful:
        assert isinstance(built.state, eqx.nn.State)
        assert built.state.get(model.stem_norm.batch_state_index)[0].shape == (8,)
    again, again_state = entry.init_pair(jax.random.key(0))  # same key: same model
    assert tree_bit_equal(again, model) and tree_bit_equal(again_state, built.state)
    other, _ = entry.init_pair(jax.random.key(7))  # another key: other values
    assert not tree_bit_equal(other, model)


def test_reinit_keeps_every_array(built):
    entry = built.entry
    if entry.stateful:
        # An init_with_state result keeps its state apart: re-init is not for it.
        with pytest.raises(lm.InitError, match="no initial state"):
            lm.init_with_state(built.model, jax.random.key(7), entry.spec)
        return
    # The ViT's dropouts are eqx.nn.Dropout by now: they draw their keys at init too.
    again = lm.init(built.model, jax.random.key(7), entry.spec)
    assert tree_bit_equal(again, built.model)


def test_summary_names_every_top_level_field(built):
    entry = built.entry
    table = entry.summary()
    rows = table.splitlines()
    assert rows[2].split()[:2] == ["(root)", type(built.model).__name__]
    paths = {row.split()[0] for row in rows[2:-2]}
    for field in dataclasses.fields(built.model):
        value = getattr(built.model, field.name)
        if isinstance(value, eqx.Module):
            assert field.name in paths, field.name
        elif isinstance(value, list):  # a list of blocks: one row per block
            assert all(f"{field.name}[{i}]" in paths for i in range(len(value))), field.name
        elif eqx.is_array(value):  # an array of the root module: in the root row
            assert f"{field.name} f32[{','.join(map(str, value.shape))}]" in rows[2]
    total = f"Total: {zoo.count_parameters(built.model):,} parameters"
    assert total in rows[-1]
    if entry.stateful:  # the running statistics are state, counted apart
        assert "i32[], f32[8], f32[8]" in table and "state: 216 values" in rows[-1]
    assert total in lm.summary(built.model).splitlines()[-1]  # initialized: no inputs needed


def test_init_shapes_are_those_of_the_model(built):
    entry = built.entry
    shapes = lm.init_shapes(entry.make(), entry.spec, with_state=entry.stateful)
    assert all(not eqx.is_array(x) for x in jax.tree.leaves(shapes))  # nothing allocated
    assert shape_leaves(shapes) == shape_leaves(built.saved)
    # With state, the StateIndex markers (static) are those init_with_state gives too.
    assert jax.tree.structure(shapes) == jax.tree.structure(built.saved)


def test_checkpoint_round_trip(built, tmp_path):
    entry = built.entry
    path = tmp_path / f"{entry.name}.eqx"
    eqx.tree_serialise_leaves(path, built.saved)
    restored = lm.restore(entry.make(), path, entry.spec, with_state=entry.stateful)
    assert lazymod_objects(restored) == []
    assert tree_bit_equal(restored, built.saved)  # (model, state) for the ResNet
    model, state = restored if entry.stateful else (restored, None)
    expected = evaluate(built.model, built.state, built.x, built.entry)
    np.testing.assert_array_equal(evaluate(model, state, built.x, entry), expected)


def keep_gradients() -> optax.GradientTransformation:
    """An optax stage that passes the gradients on and keeps the last ones in its state,
    so that the test sees exactly what the example's training step computed."""
    return optax.GradientTransformation(
        init=lambda params: jax.tree.map(jnp.zeros_like, params),
        update=lambda grads, state, params=None: (grads, grads),
    )


@dataclasses.dataclass
class Trained:
    first_grads: object  # the gradients of the first step
    losses_before_after: tuple[float, float]  # without dropout, on the training batch
    step_losses: list[float]
    model: object


@pytest.fixture(scope="module")
def trained(built) -> Trained:
    """Three steps of examples/zoo.py's own jitted step (adam, lr 1e-2) on one batch;
    one compilation per model, shared by the gradient and the training test."""
    entry = built.entry
    optimizer = optax.chain(keep_gradients(), optax.adam(1e-2))
    step = zoo.make_step(entry, optimizer)
    model, state = built.model, built.state
    opt_state = optimizer.init(eqx.filter(model, eqx.is_array))

    def loss(model, state):
        return float(entry.objective(evaluate(model, state, built.x, entry), built.y))

    before, step_losses, first_grads = loss(model, state), [], None
    for key in jax.random.split(jax.random.key(4), 3):
        model, state, opt_state, step_loss = step(model, state, opt_state, built.x, built.y, key)
        step_losses.append(float(step_loss))
        first_grads = opt_state[0] if first_grads is None else first_grads
    return Trained(first_grads, (before, loss(model, state)), step_losses, model)


def test_gradients_are_finite_and_reach_every_array(built, trained):
    params = jax.tree.leaves_with_path(eqx.filter(built.model, eqx.is_array))
    grad_leaves = jax.tree.leaves_with_path(trained.first_grads)
    assert [path for path, _ in grad_leaves] == [path for path, _ in params]
    for (path, grad), (_, param) in zip(grad_leaves, params):
        name = jax.tree_util.keystr(path)
        assert grad.shape == param.shape and grad.dtype == param.dtype, name
        grad = np.asarray(grad)
        assert np.isfinite(grad).all(), f"{name}: not finite"
        assert (grad != 0).any(), f"{name}: no gradient reaches it"


def test_three_adam_steps_lower_the_loss(built, trained):
    before, after = trained.losses_before_after
    assert all(np.isfinite(trained.step_losses)) and np.isfinite(before), trained
    assert after < before, (before, after)
    assert jax.tree.structure(trained.model) == jax.tree.structure(built.model)
    assert not tree_bit_equal(trained.model, built.model)


def test_script_usage(capsys):
    with pytest.raises(SystemExit) as exit_info:
        zoo.main(["--help"])
    assert exit_info.value.code == 0
    usage = capsys.readouterr().out
    assert usage.startswith("usage:") and "--smoke" in usage and ", ".join(zoo.ZOO) in usage
    with pytest.raises(SystemExit) as exit_info:
        zoo.main(["--models", "resnet,alexnet"])
    assert exit_info.value.code == 2 and "alexnet" in capsys.readouterr().err
