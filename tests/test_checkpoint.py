"""lm.save_sharded / lm.restore_sharded: Orbax checkpoints restored straight into each
array's sharding, checked against the checkpoint's metadata before anything is read,
without running an initializer."""

import os
import re
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import equinox as eqx
import jax
import jax.numpy as jnp
import jax.tree_util as jtu
import numpy as np
import orbax.checkpoint as ocp
import pytest
from jax.sharding import NamedSharding, PartitionSpec as P

import lazymod as lm

from .helpers import NormedHead, spec, tree_bit_equal, WithNumPy


ROOT = Path(__file__).resolve().parent.parent


class ConvNet(lm.Module):
    conv: lm.nn.Conv2d
    head: lm.nn.Linear

    def __init__(self, channels: int = 4):
        self.conv = lm.nn.Conv2d(channels, kernel_size=3)
        self.head = lm.nn.Linear(10)

    def __call__(self, x):
        return self.head(jax.nn.relu(self.conv(x)).reshape(-1))


def failing(key, shape):
    """An initializer that fails if it is ever computed (tracing it is fine)."""

    def host():
        raise AssertionError("an initializer ran during restore")

    return jax.pure_callback(host, jax.ShapeDtypeStruct(shape, jnp.float32))


class Table(lm.Module):
    """A field set by an Initializer and one set in an initializing() block."""

    table: jax.Array
    scale: jax.Array = lm.lazy()
    fn: object = eqx.field(static=True, default=None)

    def __init__(self, fn=lambda key, shape: jax.random.normal(key, shape)):
        self.table = lm.Initializer(lambda key: fn(key, (4, 3)))
        self.fn = fn

    def __call__(self, x):
        if self.initializing():
            self.scale = self.fn(lm.next_key(), x.shape)
        return self.table @ (x * self.scale)


@pytest.fixture
def no_reads(monkeypatch):
    """Fails the test if Orbax is asked to read any array."""

    def refuse(*args, **kwargs):
        raise AssertionError("restore_sharded read arrays from a checkpoint it should refuse")

    monkeypatch.setattr(ocp.StandardCheckpointer, "restore", refuse)


def flat(tree):
    return jtu.tree_flatten(tree, is_leaf=lambda x: x is None)


def test_mlp_round_trip_bit_for_bit(tmp_path):
    trained = lm.init(lm.nn.MLP(10, 32, 2), 0, spec(20))
    lm.save_sharded(tmp_path / "mlp", trained)
    restored = lm.restore_sharded(lm.nn.MLP(10, 32, 2), tmp_path / "mlp", spec(20))
    assert tree_bit_equal(restored, trained) and lm.is_initialized(restored)
    assert type(restored.layers[0]) is eqx.nn.Linear
    device = jax.sharding.SingleDeviceSharding(jax.devices()[0])
    assert all(
        leaf.sharding == device for leaf in jax.tree.leaves(eqx.filter(restored, eqx.is_array))
    )


def test_conv_and_linear_round_trip_with_a_str_path(tmp_path):
    trained = lm.init(ConvNet(), 3, spec(1, 8, 8))
    lm.save_sharded(str(tmp_path / "convnet"), trained)
    restored = lm.restore_sharded(ConvNet(), str(tmp_path / "convnet"), spec(1, 8, 8))
    assert tree_bit_equal(restored, trained)
    x = jnp.ones((1, 8, 8))
    np.testing.assert_array_equal(restored(x), trained(x))


def test_a_relative_directory_is_from_the_working_directory(tmp_path, monkeypatch):
    # Orbax takes absolute paths only; a relative one is the user's working directory.
    monkeypatch.chdir(tmp_path)
    trained = lm.init(lm.nn.Linear(3), 0, spec(2))
    lm.save_sharded("runs/step_1", trained)
    assert sorted(os.listdir(tmp_path / "runs")) == ["step_1"]  # no temporary left
    assert tree_bit_equal(lm.restore_sharded(lm.nn.Linear(3), "runs/step_1", spec(2)), trained)
    os.chdir(tmp_path / "runs")
    assert tree_bit_equal(lm.restore_sharded(lm.nn.Linear(3), Path("step_1"), spec(2)), trained)


def test_restore_into_another_sharding_than_saved(tmp_path):
    mesh = jax.make_mesh((len(jax.devices()),), ("model",), (jax.sharding.AxisType.Auto,))
    trained = lm.init(ConvNet(), 0, spec(1, 8, 8))  # saved from the default device
    lm.save_sharded(tmp_path / "ckpt", trained)

    def rule(path, leaf):  # the head on the mesh, the conv on the default device
        return NamedSharding(mesh, P()) if path.startswith("head") else None

    restored = lm.restore_sharded(ConvNet(), tmp_path / "ckpt", spec(1, 8, 8), sharding=rule)
    assert tree_bit_equal(restored, trained)
    assert restored.head.weight.sharding == NamedSharding(mesh, P())
    assert restored.conv.weight.sharding == jax.sharding.SingleDeviceSharding(jax.devices()[0])
    # ... uncommitted, as lm.init leaves an array it places nowhere: JAX may move it.
    assert not restored.conv.weight.committed and restored.head.weight.committed
    assert not lm.init(ConvNet(), 0, spec(1, 8, 8), sharding=rule).conv.weight.committed


def test_arrays_placed_nowhere_come_back_uncommitted_as_init_leaves_them(tmp_path):
    # As optimizer.init makes a step count: uncommitted, so a jitted step over a mesh
    # may move it. A key and a weakly typed scalar too.
    tree = {"key": jax.random.key(1), "scale": jnp.asarray(2.0), "count": jnp.zeros((), int)}
    assert not any(leaf.committed for leaf in tree.values())
    lm.save_sharded(tmp_path / "tree", tree)
    back = lm.restore_sharded(tree, tmp_path / "tree")
    assert not any(leaf.committed for leaf in back.values()), back
    assert back["scale"].weak_type and float(back["scale"]) == 2.0
    assert (jax.random.key_data(back["key"]) == jax.random.key_data(tree["key"])).all()
    placed = jax.device_put(tree, jax.devices()[0])  # committed: it keeps its place
    assert all(leaf.committed for leaf in lm.restore_sharded(placed, tmp_path / "tree").values())


def test_no_initializer_runs(tmp_path):
    trained = lm.init(Table(), 0, spec(3))
    lm.save_sharded(tmp_path / "table", trained)
    with pytest.raises(Exception, match="an initializer ran"):  # as a check of the check
        lm.init(Table(failing), 0, spec(3))
    restored = lm.restore_sharded(Table(failing), tmp_path / "table", spec(3))
    assert tree_bit_equal((restored.table, restored.scale), (trained.table, trained.scale))


def test_model_and_state_round_trip(tmp_path):
    pair = lm.init_with_state(NormedHead(), 0, spec(3))
    lm.save_sharded(tmp_path / "pair", pair)
    restored = lm.restore_sharded(NormedHead(), tmp_path / "pair", spec(3), with_state=True)
    assert tree_bit_equal(restored, pair)
    weak = [leaf.weak_type for leaf in jax.tree.leaves(pair[1])]
    assert [leaf.weak_type for leaf in jax.tree.leaves(restored[1])] == weak

    lm.save_sharded(tmp_path / "model", pair[0])
    with pytest.raises(lm.InitError) as error:
        lm.restore_sharded(NormedHead(), tmp_path / "model", spec(3), with_state=True)
    # Each state array is named by its layer, then by its key in the checkpoint.
    assert re.search(
        r"the state NormedHead\.norm\.batch_state_index\.init\[0\]: expected float32\[3\]; "
        r"the checkpoint has no array 'state\[",
        str(error.value),
    ), error.value
    assert "saved from the model alone" in str(error.value)

    # A state holding an entry for a layer swapped out since saves as it did.
    swapped = eqx.tree_at(lambda m: m.norm, pair[0], replace=eqx.nn.Identity())
    lm.save_sharded(tmp_path / "swapped", (swapped, pair[1]))

    # With sharding=, the state goes where init puts it (here: replicated on the mesh),
    # so that the restored pair runs in one jitted step.
    mesh = jax.make_mesh((len(jax.devices()),), ("model",), (jax.sharding.AxisType.Auto,))
    placed = lm.init_with_state(NormedHead(), 0, spec(3), sharding=mesh)
    restored = lm.restore_sharded(
        NormedHead(), tmp_path / "pair", spec(3), sharding=mesh, with_state=True
    )
    assert [a.sharding for a in jax.tree.leaves(eqx.filter(restored, eqx.is_array))] == [
        a.sharding for a in jax.tree.leaves(eqx.filter(placed, eqx.is_array))
    ]
    assert all(leaf.sharding == NamedSharding(mesh, P()) for leaf in jax.tree.leaves(restored[1]))


def test_a_missing_or_foreign_directory(tmp_path, no_reads):
    lazy = lm.nn.MLP(10, 32, 2)
    before = flat(lazy)
    with pytest.raises(lm.InitError, match=r"no checkpoint at '.*nowhere': it does not exist"):
        lm.restore_sharded(lazy, tmp_path / "nowhere", spec(20))
    (tmp_path / "foreign").mkdir()
    (tmp_path / "foreign" / "weights.npy").write_bytes(b"")
    with pytest.raises(lm.InitError, match=r"not an Orbax checkpoint \(it holds \['weights.npy'\]"):
        lm.restore_sharded(lazy, tmp_path / "foreign", spec(20))
    with ocp.StandardCheckpointer() as checkpointer:  # Orbax's, but a nested tree
        checkpointer.save(tmp_path / "nested", {"layers": {"weight": jnp.ones(3)}})
    with pytest.raises(lm.InitError, match="not one written by lazymod.save_sharded"):
        lm.restore_sharded(lazy, tmp_path / "nested", spec(20))
    interrupted = tmp_path / "step.orbax-checkpoint-tmp"  # what a killed save leaves
    shutil.copytree(tmp_path / "nested", interrupted)
    with pytest.raises(lm.InitError, match="is incomplete or damaged"):
        lm.restore_sharded(lazy, interrupted, spec(20))
    assert flat(lazy) == before and not lm.is_initialized(lazy)


def test_missing_arrays_other_shapes_and_dtypes_are_reported_before_any_read(tmp_path, no_reads):
    lm.save_sharded(tmp_path / "mlp", lm.init(lm.nn.MLP(10, 32, 2), 0, spec(20)))
    deeper = lm.nn.MLP(10, 32, 3)
    before = flat(deeper)
    with pytest.raises(lm.InitError) as error:
        lm.restore_sharded(deeper, tmp_path / "mlp", spec(20))
    message = str(error.value)
    assert (
        "does not match MLP as built from these inputs (4 mismatches); nothing was read" in message
    )
    assert "MLP.layers[2].weight: expected float32[32, 32], found float32[10, 32]" in message
    assert "MLP.layers[3].weight: expected float32[10, 32]; the checkpoint has no array " in message
    assert flat(deeper) == before and not lm.is_initialized(deeper)

    with pytest.raises(
        lm.InitError, match=r"layers\[0\].bias: expected bfloat16\[32\], found float32\[32\]"
    ):
        lm.restore_sharded(lm.nn.MLP(10, 32, 2, dtype=jnp.bfloat16), tmp_path / "mlp", spec(20))


def test_extra_arrays_in_the_checkpoint_are_named(tmp_path, no_reads):
    lm.save_sharded(tmp_path / "mlp", lm.init(lm.nn.MLP(10, 32, 2), 0, spec(20)))
    shallower = lm.nn.MLP(10, 32, 1)
    before = flat(shallower)
    with pytest.raises(lm.InitError) as error:
        lm.restore_sharded(shallower, tmp_path / "mlp", spec(20))
    message = str(error.value)
    assert "the model has no place for: 'layers[2].bias', 'layers[2].weight'" in message
    assert flat(shallower) == before


def test_save_refuses_what_it_cannot_write(tmp_path):
    lazy = lm.nn.MLP(10, 32, 2)
    with pytest.raises(lm.InitError, match="MLP is not initialized"):
        lm.save_sharded(tmp_path / "a", lazy)
    with pytest.raises(lm.InitError, match=r"layers\[0\].weight is a jax.ShapeDtypeStruct"):
        lm.save_sharded(tmp_path / "a", lm.init_shapes(lazy, spec(20)))
    model = lm.init(lazy, 0, spec(20))
    lm.save_sharded(tmp_path / "a", model)
    with pytest.raises(FileExistsError, match="already exists.*overwrite=True"):
        lm.save_sharded(tmp_path / "a", model)
    other = lm.init(lazy, 1, spec(20))
    lm.save_sharded(tmp_path / "a", other, overwrite=True)
    assert tree_bit_equal(lm.restore_sharded(lazy, tmp_path / "a", spec(20)), other)
    assert not list(tmp_path.glob("*tmp*"))  # Orbax left no half-written directory


def test_orbax_is_optional(monkeypatch, tmp_path):
    monkeypatch.setitem(sys.modules, "orbax.checkpoint", None)  # import fails
    with pytest.raises(ImportError, match=r'pip install "lazymod\[checkpoint\]"'):
        lm.save_sharded(tmp_path / "a", lm.init(lm.nn.Linear(2), 0, spec(3)))
    with pytest.raises(ImportError, match=r'pip install "lazymod\[checkpoint\]"'):
        lm.restore_sharded(lm.nn.Linear(2), tmp_path / "a", spec(3))


# --- 8 simulated CPU devices, in a fresh process --------------------------------------

EIGHT_DEVICES = """
import sys

import lazymod as lm

# Before anything else: importing lazymod must not import orbax.
assert not any(name.split(".")[0] == "orbax" for name in sys.modules), "lazymod imported orbax"

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import NamedSharding, PartitionSpec as P

from tests.helpers import NormedHead

assert len(jax.devices()) == 8
mesh = jax.make_mesh((2, 4), ("data", "model"), (jax.sharding.AxisType.Auto,) * 2)
spec = jax.ShapeDtypeStruct((32,), jnp.float32)
everywhere = ("data", "model")


class Block(lm.Module):
    expand: lm.nn.Linear
    project: lm.nn.Linear

    def __init__(self):
        self.expand = lm.nn.Linear(64)
        self.project = lm.nn.Linear(32)

    def __call__(self, x):
        return x + self.project(jax.nn.gelu(self.expand(x)))


def split(spec):
    return lambda path, leaf: NamedSharding(mesh, spec if leaf.ndim == 2 else P())


saved = lm.init(Block(), 0, spec, sharding=split(P("data", "model")))
lm.save_sharded(sys.argv[1], saved)
for name, layout in (("rows", P(everywhere, None)), ("columns", P(None, everywhere))):
    block = lm.restore_sharded(Block(), sys.argv[1], spec, sharding=split(layout))
    for layer, was in ((block.expand, saved.expand), (block.project, saved.project)):
        whole = np.asarray(was.weight)
        assert layer.weight.sharding == NamedSharding(mesh, layout)
        for shard in layer.weight.addressable_shards:
            rows, columns = whole.shape
            expected = (rows // 8, columns) if name == "rows" else (rows, columns // 8)
            assert shard.data.shape == expected, (name, shard.data.shape)
            assert np.array_equal(np.asarray(shard.data), whole[shard.index])
        assert layer.bias.sharding.is_fully_replicated
        assert np.array_equal(np.asarray(layer.bias), np.asarray(was.bias))

    @eqx.filter_jit
    def step(block, x):
        loss, grads = eqx.filter_value_and_grad(lambda b: jnp.mean(jax.vmap(b)(x) ** 2))(block)
        return eqx.apply_updates(block, jax.tree.map(lambda g: -0.1 * g, grads)), loss

    trained, loss = step(block, jnp.ones((8, 32)))
    assert bool(jnp.isfinite(loss)) and trained.expand.weight.sharding.spec == layout
    print(f"restored into {name}: ok")

# A sharding that does not divide an array is refused before anything is read.
lm.save_sharded(sys.argv[1] + "_small", lm.init(lm.nn.Linear(6), 0, spec))
try:
    lm.restore_sharded(lm.nn.Linear(6), sys.argv[1] + "_small", spec, sharding=split(P(everywhere)))
except lm.InitValueError as error:
    assert "Linear.weight: the sharding" in str(error), error
    assert "does not fit its shape (6, 32)" in str(error), error
    print("indivisible: refused")
try:  # and so does init_shapes, whose shapes restore_sharded reads into
    lm.init_shapes(lm.nn.Linear(6), spec, sharding=split(P(everywhere)))
except lm.InitValueError as error:
    assert "Linear.weight: the sharding" in str(error), error
    print("indivisible shapes: refused")


# A (model, state) restored on the mesh runs in one jitted step: its state is where
# init_with_state put it, not on one device.
pair = lm.init_with_state(NormedHead(), 0, spec, sharding=mesh)
saved = sys.argv[1] + "_pair"
lm.save_sharded(saved, pair)
model, state = lm.restore_sharded(NormedHead(), saved, spec, sharding=mesh, with_state=True)
assert all(leaf.sharding == NamedSharding(mesh, P()) for leaf in jax.tree.leaves(state))


@eqx.filter_jit
def run(model, state, x):
    batched = jax.vmap(model, axis_name="batch", in_axes=(0, None), out_axes=(0, None))
    return batched(x, state)


out, state = run(model, state, jnp.ones((4, 32)))
assert out.shape == (4, 2)
print("stateful pair: runs")

# An optimizer's state restored into a fresh one: moments sharded as the parameters
# are, the step count uncommitted as optimizer.init made it; it runs the next step.
import optax

optimizer = optax.adam(1e-2)
params = lambda block: eqx.filter(block, eqx.is_array)  # noqa: E731


@eqx.filter_jit
def train(block, opt_state, x):
    grads = eqx.filter_grad(lambda b: jnp.mean(jax.vmap(b)(x) ** 2))(block)
    updates, opt_state = optimizer.update(grads, opt_state, params(block))
    return eqx.apply_updates(block, updates), opt_state


block = lm.init(Block(), 0, spec, sharding=split(P("data", "model")))
block, opt_state = train(block, optimizer.init(params(block)), jnp.ones((8, 32)))
lm.save_sharded(sys.argv[1] + "_opt", opt_state)
fresh = optimizer.init(params(block))
restored = lm.restore_sharded(fresh, sys.argv[1] + "_opt")
assert restored[0].mu.expand.weight.sharding == NamedSharding(mesh, P("data", "model"))
assert not restored[0].count.committed and int(restored[0].count) == 1
for was, now in zip(jax.tree.leaves(opt_state), jax.tree.leaves(restored)):
    assert np.array_equal(np.asarray(was), np.asarray(now))
train(block, restored, jnp.ones((8, 32)))
print("optimizer state: restores and runs")
"""


def run_script(code: str, *args: str, devices: int = 8) -> subprocess.CompletedProcess:
    """Run `code` in a fresh Python process with `devices` simulated CPU devices."""
    env = {
        **os.environ,
        "JAX_PLATFORMS": "cpu",
        "XLA_FLAGS": f"--xla_force_host_platform_device_count={devices}",
    }
    return subprocess.run(
        [sys.executable, "-W", "error", "-c", textwrap.dedent(code), *args],
        capture_output=True,
        text=True,
        timeout=300,
        env=env,
        cwd=ROOT,
    )


def test_save_on_a_2x4_mesh_and_restore_into_rows_and_columns(tmp_path):
    result = run_script(EIGHT_DEVICES, str(tmp_path / "block"))
    assert result.returncode == 0, result.stderr
    assert "restored into rows: ok" in result.stdout
    assert "restored into columns: ok" in result.stdout
    assert "indivisible: refused" in result.stdout
    assert "indivisible shapes: refused" in result.stdout
    assert "stateful pair: runs" in result.stdout
    assert "optimizer state: restores and runs" in result.stdout


def test_numpy_arrays_restore_as_numpy_in_their_dtype(tmp_path):
    """A float64 NumPy table (which init leaves float64) restores as it was saved: its
    shapes used to say float32, and the checkpoint was refused as a mismatch."""
    trained = lm.init(WithNumPy(), 0, spec(4))
    lm.save_sharded(tmp_path / "numpy", trained)
    restored = lm.restore_sharded(WithNumPy(), tmp_path / "numpy", spec(4))
    assert tree_bit_equal(restored, trained)
    assert isinstance(restored.table, np.ndarray) and restored.table.dtype == np.float64
    assert type(restored.scale) is np.float64 and isinstance(restored.mask, np.ndarray)
    with pytest.raises(
        lm.InitError, match=r"WithNumPy.table: expected float64\[3\], found float64\[4\]"
    ):
        lm.restore_sharded(WithNumPy(size=3), tmp_path / "numpy", spec(3))


def test_numpy_arrays_a_jitted_step_made_jax_arrays_restore_as_those(tmp_path):
    stepped = eqx.filter_jit(lambda model: model)(lm.init(WithNumPy(), 0, spec(4)))
    lm.save_sharded(tmp_path / "stepped", stepped)
    restored = lm.restore_sharded(WithNumPy(), tmp_path / "stepped", spec(4))
    assert tree_bit_equal(restored, stepped) and isinstance(restored.table, jax.Array)
