"""lm.restore: load a checkpoint into a lazy model without running initializers, and
report every mismatch at once."""

import io

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import lazymod as lm

from .helpers import spec, tree_bit_equal, WithNumPy


class Net(lm.Module):
    layers: list
    scale: float  # a Python scalar leaf: saved by Equinox too
    table: jax.Array = lm.Initializer(lambda key: jax.random.normal(key, (4, 3)))

    def __init__(self, width: int = 16):
        self.layers = [lm.nn.Linear(width), lm.nn.LayerNorm(), lm.nn.Linear(2)]
        self.scale = 0.5

    def __call__(self, x):
        for layer in self.layers:
            x = layer(x)
        return x * self.scale + self.table[0, 0]


def saved(model) -> io.BytesIO:
    file = io.BytesIO()
    eqx.tree_serialise_leaves(file, model)
    file.seek(0)
    return file


def test_restores_every_array_bit_for_bit_from_a_file_or_a_path(tmp_path):
    trained = lm.init(Net(), 1, spec(5))
    trained = eqx.tree_at(lambda m: m.scale, trained, 0.25)
    restored = lm.restore(Net(), saved(trained), spec(5))
    assert tree_bit_equal(restored, trained) and restored.scale == 0.25
    assert type(restored.layers[0]) is eqx.nn.Linear and lm.is_initialized(restored)

    eqx.tree_serialise_leaves(tmp_path / "net.eqx", trained)
    for where in (tmp_path / "net.eqx", str(tmp_path / "net")):  # .eqx added, as Equinox does
        assert tree_bit_equal(lm.restore(Net(), where, spec(5)), trained)
    x = jnp.arange(5.0)
    np.testing.assert_array_equal(restored(x), trained(x))


def test_never_runs_an_initializer():
    calls = []

    def counted(key, shape, dtype=jnp.float32):
        def host():
            calls.append(1)
            return np.zeros(shape, dtype)

        return jax.pure_callback(host, jax.ShapeDtypeStruct(shape, dtype))

    class Counted(lm.Module):
        w: jax.Array = lm.Initializer(lambda key: counted(key, (3,)))

    file = saved(lm.init(Counted(), 0))
    assert len(calls) == 1  # the callback does run when init computes
    lm.restore(Counted(), file)
    assert len(calls) == 1


def test_reports_every_mismatch_at_once_with_paths():
    file = saved(lm.init(Net(width=16), 0, spec(5)))
    with pytest.raises(lm.InitError) as error:
        lm.restore(Net(width=8), file, spec(5))
    message = str(error.value)
    for line in (
        "Net.layers[0].weight: expected float32[8, 5], found float32[16, 5]",
        "Net.layers[0].bias: expected float32[8], found float32[16]",
        "Net.layers[1].weight: expected float32[8], found float32[16]",
        "Net.layers[1].bias: expected float32[8], found float32[16]",
        "Net.layers[2].weight: expected float32[2, 8], found float32[2, 16]",
    ):
        assert line in message
    assert "(5 mismatches)" in message and "layers[2].bias" not in message


def test_reports_a_checkpoint_that_is_too_short_or_too_long():
    class Deep(lm.Module):
        layers: list

        def __init__(self, depth):
            self.layers = [lm.nn.Linear(4) for _ in range(depth)]

        def __call__(self, x):
            for layer in self.layers:
                x = layer(x)
            return x

    file = saved(lm.init(Deep(2), 0, spec(4)))
    with pytest.raises(
        lm.InitError, match=r"Deep.layers\[2\].weight: .* ends before it \(2 values"
    ):
        lm.restore(Deep(3), file, spec(4))
    file.seek(0)
    with pytest.raises(lm.InitError, match="more arrays after the model's last one"):
        lm.restore(Deep(1), file, spec(4))


def test_dtype_mismatch_and_wrong_argument_types():
    file = saved(lm.init(lm.nn.Linear(3), 0, spec(4)))
    with pytest.raises(lm.InitError, match=r"weight: expected bfloat16\[3, 4\], found float32"):
        lm.restore(lm.nn.Linear(3, dtype=jnp.bfloat16), file, spec(4))
    with pytest.raises(Exception, match="path_or_file"):
        lm.restore(lm.nn.Linear(3), 42, spec(4))
    with pytest.raises(FileNotFoundError):
        lm.restore(lm.nn.Linear(3), "/nonexistent/checkpoint.eqx", spec(4))


def test_restore_keeps_weak_types_as_init_made_them():
    model = lm.init(lm.nn.PReLU(), 0, jax.ShapeDtypeStruct((3,), jnp.bfloat16))
    assert model.negative_slope.weak_type
    file = io.BytesIO()
    eqx.tree_serialise_leaves(file, model)
    file.seek(0)
    restored = lm.restore(lm.nn.PReLU(), file, jax.ShapeDtypeStruct((3,), jnp.bfloat16))
    assert restored.negative_slope.weak_type
    assert restored(jnp.ones(3, jnp.bfloat16)).dtype == jnp.bfloat16


@pytest.mark.parametrize(
    "damage",
    [
        lambda data: data[:60],  # a header cut short
        lambda data: bytes(range(256)) * 4,  # not a checkpoint at all
        lambda data: b"garbage" + data,  # bytes before the first array
    ],
    ids=["truncated-header", "random-bytes", "shifted"],
)
def test_restore_of_a_damaged_file_names_the_first_bad_array(damage, tmp_path):
    model = lm.init(lm.nn.Linear(3), 0, spec(4))
    file = io.BytesIO()
    eqx.tree_serialise_leaves(file, model)
    path = tmp_path / "damaged.eqx"
    path.write_bytes(damage(file.getvalue()))
    with pytest.raises(lm.InitError) as info:
        lm.restore(lm.nn.Linear(3), path, spec(4))
    message = str(info.value)
    assert "damaged.eqx" in message and "Linear.weight: expected float32[3, 4]" in message
    assert "not an array written by eqx.tree_serialise_leaves" in message
    assert "ends before" not in message and "more arrays" not in message


def test_numpy_arrays_restore_as_numpy_in_their_dtype_and_are_checked():
    """NumPy arrays come back as init leaves them: NumPy, in their own dtype. Read
    as JAX arrays, the float64 table came back float32, with other values."""
    trained = lm.init(WithNumPy(), 0, spec(4))
    restored = lm.restore(WithNumPy(), saved(trained), spec(4))
    assert tree_bit_equal(restored, trained)
    assert isinstance(restored.table, np.ndarray) and restored.table.dtype == np.float64
    assert type(restored.scale) is np.float64 and isinstance(restored.mask, np.ndarray)
    with pytest.raises(
        lm.InitError, match=r"WithNumPy.table: expected float64\[3\], found float64\[4\]"
    ):
        lm.restore(WithNumPy(size=3), saved(trained), spec(3))


def test_a_numpy_scalar_of_another_dtype_is_a_mismatch():
    file = saved(lm.init(WithNumPy(), 0, spec(4)))
    narrower = eqx.tree_at(lambda m: m.scale, WithNumPy(), np.float32(0.5))
    with pytest.raises(lm.InitError, match=r"WithNumPy.scale: expected float32\[\], found float64"):
        lm.restore(narrower, file, spec(4))  # Equinox's loader would cast it


def test_raw_bytes_are_a_numpy_dtype_only_for_a_dtype_numpy_lacks():
    """`.npy` keeps bfloat16 as raw bytes: they are read back as bfloat16 for a bfloat16
    field, and are a mismatch for a float16 one of the same width (not reinterpreted)."""
    file = saved(lm.init(WithNumPy(), 0, spec(4)))
    other = eqx.tree_at(lambda m: m.half, WithNumPy(), np.asarray([1.5, -2.0], np.float16))
    with pytest.raises(lm.InitError, match=r"WithNumPy.half: expected float16\[2\], found void"):
        lm.restore(other, file, spec(4))


def test_numpy_arrays_a_jitted_step_made_jax_arrays_restore_as_those():
    """An `eqx.filter_jit` training step returns a model's NumPy arrays as JAX arrays
    (float32 for float64): its checkpoint restores to what it held, not a mismatch."""
    stepped = eqx.filter_jit(lambda model: model)(lm.init(WithNumPy(), 0, spec(4)))
    assert isinstance(stepped.table, jax.Array) and stepped.table.dtype == jnp.float32
    restored = lm.restore(WithNumPy(), saved(stepped), spec(4))
    assert tree_bit_equal(restored, stepped) and isinstance(restored.table, jax.Array)
