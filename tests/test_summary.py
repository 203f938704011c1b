"""lm.summary: a table of what init would build, computed from shapes only."""

from typing import Any

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import lazymod as lm

from .helpers import spec, WithNumPy


class Net(lm.Module):
    body: eqx.nn.Sequential
    head: Any

    def __init__(self):
        self.body = eqx.nn.Sequential(
            [lm.nn.Conv2d(8, 3), eqx.nn.Lambda(jax.nn.relu), lm.nn.Conv2d(4, 3)]
        )
        self.head = lm.nn.Linear(10, dtype=jnp.bfloat16)

    def __call__(self, x):
        return self.head(self.body(x).reshape(-1).astype(jnp.bfloat16))


def rows(table: str) -> dict[str, list[str]]:
    """path -> the row's cells, split on runs of two spaces or more."""
    lines = table.splitlines()[2:-2]
    return {line.split()[0]: [c.strip() for c in line.split("  ") if c.strip()] for line in lines}


def test_one_row_per_module_with_shapes_counts_and_totals():
    table = lm.summary(Net(), spec(3, 12, 12))
    by_path = rows(table)
    assert list(by_path) == [
        "(root)",
        "body",
        "body.layers[0]",
        "body.layers[1]",
        "body.layers[2]",
        "head",
    ]
    assert by_path["(root)"][:3] == ["(root)", "Net", "bf16[10]"]
    assert by_path["body.layers[0]"] == [
        "body.layers[0]",
        "Conv2d",
        "f32[8,10,10]",
        "weight f32[8,3,3,3], bias f32[8,1,1]",
        "224",
        "896 B",
    ]
    assert by_path["body.layers[1]"] == ["body.layers[1]", "Lambda", "-"]  # plain Equinox
    assert by_path["head"][2:] == [
        "bf16[10]",
        "weight bf16[10,256], bias bf16[10]",
        "2,570",
        "5.0 KiB",
    ]
    initialized = lm.init(Net(), 0, spec(3, 12, 12))
    count = sum(a.size for a in jax.tree.leaves(eqx.filter(initialized, eqx.is_array)))
    nbytes = sum(a.nbytes for a in jax.tree.leaves(eqx.filter(initialized, eqx.is_array)))
    assert count == 224 + 292 + 2570
    assert table.splitlines()[-1] == (
        f"Total: {count:,} parameters in 6 arrays, {nbytes / 1024:.1f} KiB"
    )


def test_allocates_and_computes_nothing_whatever_the_size():
    # 40 GB of float32 if it were built.
    table = lm.summary(lm.nn.Linear(100_000), spec(100_000))
    assert "weight f32[100000,100000]" in table and "10,000,100,000" in table
    assert "37.3 GiB" in table
    one = lm.summary(lm.nn.Linear(100_000, use_bias=False), spec(100_000))
    assert one.splitlines()[-1] == "Total: 10,000,000,000 parameters in 1 array, 37.3 GiB"


def test_works_on_an_initialized_model_and_does_not_modify_it():
    lazy = Net()
    model = lm.init(lazy, 0, spec(3, 12, 12))
    before = jax.tree.map(np.asarray, eqx.filter(model, eqx.is_array))
    table = lm.summary(model, spec(3, 12, 12))
    assert rows(table)["head"][3:] == ["weight bf16[10,256], bias bf16[10]", "2,570", "5.0 KiB"]
    assert rows(table)["(root)"][2] == "bf16[10]"
    # Without inputs: the parameters, no outputs.
    assert rows(lm.summary(model))["(root)"] == ["(root)", "Net", "-"]
    after = jax.tree.map(np.asarray, eqx.filter(model, eqx.is_array))
    assert jax.tree.all(jax.tree.map(np.array_equal, before, after))
    assert not lm.is_initialized(lazy)


def test_renders_in_a_notebook_and_prints_as_itself():
    table = lm.summary(lm.nn.Linear(3), spec(5))
    assert isinstance(table, str) and repr(table) == str(table)
    html = table._repr_html_()
    assert html.startswith("<table>") and "<td>weight f32[3,5], bias f32[3]</td>" in html


def test_method_kwargs_and_calls_more_than_once():
    class Twice(lm.Module):
        layer: lm.nn.Linear

        def __init__(self):
            self.layer = lm.nn.Linear(4)

        def encode(self, x, *, scale):
            return self.layer(self.layer(x * scale))

    table = lm.summary(Twice(), spec(4), method="encode", scale=2.0)
    assert rows(table)["layer"][2] == "f32[4]"
    assert rows(table)["(root)"][2] == "f32[4]"


def test_bad_input_raises_as_init_does():
    with pytest.raises(TypeError, match="method"):
        lm.summary(lm.nn.Linear(3), spec(5), method=3)
    with pytest.raises(lm.InitError, match=r"Linear"):
        lm.summary(lm.nn.Linear(3))  # nothing to infer in_features from


def test_numpy_arrays_show_in_their_own_dtype_and_their_values_are_read():
    table = lm.summary(WithNumPy(), spec(4))  # its forward pass branches on a NumPy value
    row = next(row for row in table.rows if row[0] == "(root)")
    assert "table f64[4]" in row[3] and "half bf16[2]" in row[3] and "scale f64[]" in row[3]
    assert "mask bool[4,4]" in row[3]
